"""scripts/robustness.py: one row per kind x level plus clean, a plot, perturbations that bite."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import load_script, write_checkpoint, write_csv_dataset


def test_table_plot_and_a_destructive_perturbation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the image cache
    labels = write_csv_dataset(tmp_path, {"test": 12}, size=64)
    ckpt = write_checkpoint(tmp_path / "model.pth")
    out = tmp_path / "robustness"
    script = load_script("robustness")
    assert script.main([str(ckpt), "--data", f"csv:{labels}", "--kinds", "contrast", "blur",
                        "--levels", "1", "5", "--limit", "10", "--out", str(out)]) == 0

    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns) == ["kind", "level", "n", "mae", "mae_ci_low", "mae_ci_high",
                                   "bias"]
    assert len(table) == 2 * 2 + 1
    assert list(zip(table["kind"], table["level"])) == [
        ("clean", 0), ("contrast", 1), ("contrast", 5), ("blur", 1), ("blur", 5)]
    assert (table["n"] == 10).all()  # --limit: a subset of the 12 images
    assert (table["mae_ci_low"] <= table["mae"]).all()
    assert (table["mae"] <= table["mae_ci_high"]).all()
    assert (out / "robustness.png").stat().st_size > 1000
    clean = table.iloc[0]
    contrast5 = table[(table["kind"] == "contrast") & (table["level"] == 5)].iloc[0]
    # The fixture's ages are encoded in brightness and contrast: level 5 keeps 20 % of it.
    assert abs(contrast5["bias"] - clean["bias"]) > 0.1


def test_seeded_subset_is_reproducible_and_in_split_order():
    script = load_script("robustness")
    records, images = list(range(20)), np.arange(20)
    a, image_a = script.seeded_subset(records, images, 5, seed=3)
    b, _ = script.seeded_subset(records, images, 5, seed=3)
    assert a == b == sorted(a) and list(image_a) == a and len(set(a)) == 5
    assert script.seeded_subset(records, images, 0, seed=3)[0] == records
