"""scripts/generalization.py on a small csv dataset standing in for FG-NET."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import load_script, write_checkpoint, write_csv_dataset

from age_estimation.metrics import AGE_GROUPS


def test_conditions_fair_halves_and_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the image cache
    labels = write_csv_dataset(tmp_path, {"test": 12}, size=64, seed=1)
    ckpt = write_checkpoint(tmp_path / "model.pth")
    out = tmp_path / "gen"
    script = load_script("generalization")
    assert script.main([str(ckpt), "--data", f"csv:{labels}", "--out", str(out)]) == 0

    table = pd.read_csv(out / "generalization.csv")
    assert list(zip(table["condition"], table["images"])) == [
        ("plain", "all"), ("tta", "all"), ("plain", "eval half"), ("tta", "eval half"),
        ("adabn", "eval half"), ("adabn+tta", "eval half")]
    assert list(table["n"]) == [12, 12, 6, 6, 6, 6]
    groups = [g[0] for g in AGE_GROUPS]
    assert (table[[f"n_{g}" for g in groups]].sum(axis=1) == table["n"]).all()
    rows = table.set_index(["condition", "images"])
    # The change vs plain is measured on the same images: plain against itself is no change.
    assert np.isnan(rows.loc[("plain", "eval half"), "delta_vs_plain"])
    plain_half = rows.loc[("plain", "eval half"), "mae"]
    for condition in ("tta", "adabn", "adabn+tta"):
        row = rows.loc[(condition, "eval half")]
        assert np.isclose(row["delta_vs_plain"], row["mae"] - plain_half)
        assert row["delta_ci_low"] <= row["delta_vs_plain"] <= row["delta_ci_high"]
    # AdaBN re-estimates BatchNorm on these brightness-coded images: predictions move.
    assert not np.isclose(rows.loc[("adabn", "eval half"), "mae"], plain_half)
    text = (out / "generalization.md").read_text()
    assert "| adabn+tta | eval half | 6 |" in text and all(g in text for g in groups)
