"""Ensemble selection (age_estimation/engine/ensemble_selection.py, scripts/select_ensemble.py):
greedy weights, cross-fitting, and the script's test.py command reproducing its mixture."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, load_script, write_checkpoint, write_csv_dataset

from age_estimation.engine.ensemble_selection import (
    cross_fit,
    fold_ids,
    greedy_selection,
    mixture,
    mixture_mae,
)

AGES = np.arange(10, 70, dtype=np.float64)  # 60 images


def candidate(centres: np.ndarray, spread: float = 2.0) -> dict[str, np.ndarray]:
    """predict_outputs-like arrays: a peaked distribution over 0..100 around each centre."""
    grid = np.arange(101, dtype=np.float64)
    logits = -(grid[None, :] - centres[:, None]) ** 2 / (2 * spread ** 2)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    mean = (probs * grid).sum(axis=1)
    std = np.sqrt((probs * (grid - mean[:, None]) ** 2).sum(axis=1))
    n = len(centres)
    return {"index": np.arange(n), "id": np.array([f"img{i}" for i in range(n)], dtype=object),
            "mean": mean.astype(np.float32), "median": mean.astype(np.float32),
            "std": std.astype(np.float32), "std_aleatoric": std.astype(np.float32),
            "std_epistemic": np.zeros(n, np.float32), "probs": probs.astype(np.float32)}


def test_greedy_selection_keeps_the_right_member_and_drops_the_wrong_ones():
    right, high, low = candidate(AGES), candidate(AGES + 10), candidate(AGES - 12)
    selection = greedy_selection([high, right, low], AGES, steps=5)
    assert selection.counts.tolist() == [0, 1, 0]  # step 1 is best; later picks only tie it
    assert selection.best_step == 0 and selection.mae < 0.5
    assert len(selection.mae_by_step) == 5
    assert selection.weights.tolist() == [0.0, 1.0, 0.0]


def test_greedy_selection_mixes_members_whose_errors_cancel():
    """Two members off by +4 and -4 years: equal weights give the true mean; one alone is 4 off."""
    over, under = candidate(AGES + 4), candidate(AGES - 4)
    selection = greedy_selection([over, under], AGES, steps=6, point="mean")
    assert selection.counts[0] == selection.counts[1] > 0
    assert selection.mae < 0.1
    assert mixture_mae([over, under], [1, 0], AGES, "mean") == pytest.approx(4.0, abs=0.05)
    # weights 3:1 -> the mean is 2 years over, the median (of the mixed distribution: a quarter
    # of the mass near -4, three quarters near +4) is inside the heavier peak
    mixed = mixture([over, under], [3, 1])
    assert np.allclose(mixed["mean"], AGES + 2, atol=0.05)
    assert np.all(np.abs(mixed["median"] - (AGES + 3.5)) <= 1)


def test_cross_fit_predicts_each_fold_with_weights_chosen_without_it():
    rng = np.random.default_rng(0)
    noisy = [candidate(AGES + rng.normal(0, 3, len(AGES))) for _ in range(3)]
    pooled, selections = cross_fit(noisy, AGES, folds=4, seed=1, steps=4)
    assert len(selections) == 4
    assert pooled["id"].tolist() == noisy[0]["id"].tolist()  # the candidates' order
    folds = fold_ids(len(AGES), 4, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [15, 15, 15, 15]
    for fold, selection in enumerate(selections):
        others, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        refit = greedy_selection([{k: v[others] for k, v in c.items()} for c in noisy],
                                 AGES[others], steps=4)
        assert refit.counts.tolist() == selection.counts.tolist()
        expected = mixture([{k: v[held] for k, v in c.items()} for c in noisy], refit.counts)
        assert np.allclose(pooled["median"][held], expected["median"])
    assert not np.array_equal(fold_ids(60, 4, seed=1), fold_ids(60, 4, seed=2))


def test_selection_refuses_mismatched_candidates_and_bad_settings():
    a, b = candidate(AGES), candidate(AGES[:-1])
    with pytest.raises(ValueError, match="candidate 1 predicts other images"):
        greedy_selection([a, b], AGES)
    with pytest.raises(ValueError, match="59 ages for 60 predicted images"):
        greedy_selection([a], AGES[:-1])
    with pytest.raises(ValueError, match="steps = 0"):
        greedy_selection([a], AGES, steps=0)
    with pytest.raises(ValueError, match="folds = 61"):
        fold_ids(60, 61)
    with pytest.raises(ValueError, match="point estimate 'mode'"):
        greedy_selection([a], AGES, point="mode")


def test_select_ensemble_script_writes_a_mixture_that_test_py_reproduces(tmp_path, capsys):
    """Three members at two input sizes on a tiny valid split: the selected mixture is never
    worse than the best member alone on the selection images, the cross-fitted file covers
    every image, and the printed test.py command (with --ensemble-weights) gives the selected
    predictions back."""
    labels = write_csv_dataset(tmp_path, {"valid": 24}, size=48)
    members = [str(write_checkpoint(tmp_path / f"m{i}.pth", size=size, seed=i))
               for i, size in enumerate((32, 40, 32))]
    out = tmp_path / "selection"
    data = f"csv:{labels}"
    env_cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env_cache.items():
            patch.setenv(key, value)
        assert load_script("select_ensemble").main(
            [*members, "--out-dir", str(out), "--data", data, "--tta", "flip", "--steps", "6",
             "--folds", "3", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "selection.json").read_text())
    alone = min(c["mae_alone"] for c in report["candidates"])
    assert report["mae_selected_in_sample"] <= alone + 1e-9
    assert report["mae_by_step"][0] == pytest.approx(alone)
    assert sum(c["weight"] for c in report["candidates"]) == pytest.approx(1.0)
    assert len(report["fold_weights"]) == 3
    selected = pd.read_csv(out / "selected_valid.csv")
    crossfit = pd.read_csv(out / "crossfit_valid.csv")
    assert len(selected) == len(crossfit) == 24
    assert sorted(crossfit["id"]) == sorted(selected["id"])
    assert json.loads((out / "crossfit_valid.json").read_text())["mae"] == pytest.approx(
        report["mae_crossfit"])
    assert report["command"] in printed
    command = shlex.split(report["command"])[1:]  # drop "python"
    again = tmp_path / "again.csv"
    result = subprocess.run([sys.executable, *command, "--data", data, "--split", "valid",
                             "--workers", "0", "--out", str(again)], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env_cache, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    reproduced = pd.read_csv(again)
    assert reproduced["id"].tolist() == selected["id"].tolist()
    assert np.array_equal(reproduced["pred"], selected["pred"])
    assert np.allclose(reproduced["mean"], selected["mean"], atol=1e-4)


def test_select_ensemble_script_names_a_missing_checkpoint(tmp_path, capsys):
    assert load_script("select_ensemble").main(
        [str(tmp_path / "nope.pth"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert load_script("select_ensemble").main(
        [str(tmp_path / "nope.pth"), "--out-dir", str(tmp_path / "out"), "--folds", "1"]) == 2
    assert "--folds 1: expected at least 1 step and 2 folds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
