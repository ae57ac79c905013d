"""test.py's uncertainty options and scripts/bench_inference.py end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import write_checkpoint, write_csv_dataset

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 300, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    # One thread: 32 px models gain nothing from more, and spinning threads slow a busy machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A Gaussian-head resnet18 with dropout, trained 1 epoch on 20 random 32 px images."""
    root = tmp_path_factory.mktemp("uncertainty")
    write_csv_dataset(root, {"train": 12, "valid": 4, "test": 4}, size=32)
    out = root / "run"
    run("train.py", "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
        "DATA.DATASET", "csv", "DATA.ROOT", str(root / "labels.csv"),
        "DATA.CACHE_DIR", str(root / "cache"), "DATA.NUM_WORKERS", "0", "MODEL.IMG_SIZE", "32",
        "MODEL.HEAD", "gaussian", "MODEL.DROPOUT", "0.3", "TRAIN.EPOCHS", "1",
        "TRAIN.BATCH_SIZE", "6", "TRAIN.AMP", "False")
    return out


def test_tta_mc_dropout_ensemble_and_sigma_scaling(tiny_run):
    out = tiny_run / "combo.csv"
    result = run("test.py", "--resume", str(tiny_run / "best.pth"), "--ensemble",
                 str(tiny_run / "last.pth"), "--tta", "2", "--mc-dropout", "5",
                 "--sigma-scale-from", "valid", "--workers", "0", "--out", str(out))
    preds = pd.read_csv(out)
    assert len(preds) == 4
    assert {"pred", "std", "std_aleatoric", "std_epistemic", "std_scaled"} <= set(preds.columns)
    assert (preds["std_epistemic"] > 0).all() and (preds["std_aleatoric"] > 0).all()
    total = np.sqrt(preds["std_aleatoric"] ** 2 + preds["std_epistemic"] ** 2)
    assert np.allclose(preds["std"], total, rtol=1e-4)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["inference"]["tta"] == ["identity", "flip"]
    assert summary["inference"]["mc_dropout"] == 5
    assert len(summary["inference"]["checkpoints"]) == 2
    assert summary["uncertainty"]["n_uncertainty"] == 4
    # The scale is fitted on valid: the same inference on the valid split gives it back.
    valid = tiny_run / "valid.csv"
    run("test.py", "--resume", str(tiny_run / "best.pth"), "--ensemble",
        str(tiny_run / "last.pth"), "--tta", "2", "--mc-dropout", "5", "--split", "valid",
        "--workers", "0", "--out", str(valid))
    fitted = json.loads(valid.with_suffix(".json").read_text())["uncertainty"]["sigma_scale"]
    scale = summary["sigma_scale"]["value"]
    assert scale == pytest.approx(fitted, rel=1e-4)
    assert np.allclose(preds["std_scaled"], preds["std"] * scale, rtol=1e-4)
    assert summary["uncertainty_scaled"]["mean_std"] == pytest.approx(
        summary["uncertainty"]["mean_std"] * scale, rel=1e-4)
    assert "Sigma-scaled" in result.stdout
    for suffix in (".reliability.png", ".reliability_scaled.png"):
        png = out.with_suffix(suffix)
        assert png.read_bytes()[:4] == b"\x89PNG", suffix


def test_ensemble_of_members_at_different_input_sizes(tiny_run, tmp_path):
    """Each member sees the images at its own MODEL.IMG_SIZE; the mixture weighs every member
    equally (two 32 px checkpoints and one 40 px one: the mean of the three predictions), or
    by --ensemble-weights."""
    root = tiny_run.parent
    other = tmp_path / "run40"
    run("train.py", "--cfg", str(tiny_run / "config.yaml"), "OUTPUT_DIR", str(other),
        "MODEL.IMG_SIZE", "40", "TRAIN.SEED", "1")
    members = [tiny_run / "best.pth", other / "best.pth", tiny_run / "last.pth"]
    singles = []
    for i, ckpt in enumerate(members):
        run("test.py", "--resume", str(ckpt), "--workers", "0", "--out", str(tmp_path / f"{i}.csv"))
        singles.append(pd.read_csv(tmp_path / f"{i}.csv"))
    out = tmp_path / "mixed.csv"
    run("test.py", "--resume", str(members[0]), "--ensemble", *map(str, members[1:]),
        "--workers", "0", "--out", str(out))
    mixed = pd.read_csv(out)
    assert mixed["id"].tolist() == singles[0]["id"].tolist()
    means = np.stack([s["pred"].to_numpy() for s in singles])
    assert np.allclose(mixed["pred"], means.mean(axis=0), atol=1e-3)
    assert np.allclose(mixed["std_epistemic"], means.std(axis=0), atol=1e-3)
    aleatoric = np.stack([s["std_aleatoric"].to_numpy() for s in singles])
    assert np.allclose(mixed["std_aleatoric"], np.sqrt((aleatoric ** 2).mean(axis=0)), atol=1e-3)
    assert not np.allclose(singles[1]["pred"], singles[0]["pred"], atol=1e-2)
    # --ensemble-weights: members mixed 1:2:3 across the two input sizes
    weighted = tmp_path / "weighted.csv"
    run("test.py", "--resume", str(members[0]), "--ensemble", *map(str, members[1:]),
        "--ensemble-weights", "1", "2", "3", "--workers", "0", "--out", str(weighted))
    w = np.array([1, 2, 3])[:, None] / 6
    assert np.allclose(pd.read_csv(weighted)["pred"], (w * means).sum(axis=0), atol=1e-3)
    summary = json.loads(weighted.with_suffix(".json").read_text())
    assert summary["inference"]["weights"] == [1, 2, 3]
    refused = subprocess.run([sys.executable, "test.py", "--resume", str(members[0]),
                              "--ensemble", str(members[1]), "--ensemble-weights", "1", "-2"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert f"--ensemble-weights: -2.0 for {members[1]}: expected a weight > 0" in refused.stderr
    # the test split was cached at both sizes
    sizes = {p.name.split("_")[1] for p in (root / "cache").glob("*-test_*.json")}
    assert sizes >= {"32px", "40px"}


def test_point_median_of_an_ensemble_at_two_input_sizes(tmp_path):
    """--point median scores the median of the members' mixed age distribution (DEX heads at
    32 and 40 px); the default scores the mean; both columns are always written."""
    labels = write_csv_dataset(tmp_path, {"test": 6}, size=48)
    members = [str(write_checkpoint(tmp_path / f"{size}.pth", size=size, seed=size))
               for size in (32, 40)]
    frames, summaries = {}, {}
    for point in ("median", "mean"):
        out = tmp_path / f"{point}.csv"
        result = run("test.py", "--resume", members[0], "--ensemble", members[1], "--data",
                     f"csv:{labels}", "--point", point, "--workers", "0", "--out", str(out),
                     env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
        assert "warning" not in result.stderr
        frames[point] = pd.read_csv(out)
        summaries[point] = json.loads(out.with_suffix(".json").read_text())
    median, mean = frames["median"], frames["mean"]
    assert np.array_equal(median["pred"], median["median"])
    assert np.array_equal(mean["pred"], mean["mean"])
    assert np.allclose(median["mean"], mean["mean"]) and np.array_equal(median["median"],
                                                                        mean["median"])
    assert np.array_equal(median["median"], median["median"].round())  # whole-year ages
    assert not np.allclose(median["median"], median["mean"], atol=0.5)
    assert summaries["median"]["inference"]["point"] == "median"
    for point, frame in frames.items():
        expected = (frame[point] - frame["age"]).abs().mean()
        assert summaries[point]["mae"] == pytest.approx(expected, rel=1e-6), point


def test_point_median_of_a_head_without_a_distribution_warns(tiny_run, tmp_path):
    out = tmp_path / "gaussian.csv"
    result = run("test.py", "--resume", str(tiny_run / "best.pth"), "--point", "median",
                 "--workers", "0", "--out", str(out))
    assert "the median reported is the mean" in result.stderr
    preds = pd.read_csv(out)
    assert np.array_equal(preds["pred"], preds["mean"])
    assert np.array_equal(preds["median"], preds["mean"])


def test_bad_inference_options_exit_with_a_message(tiny_run, capsys):
    # In process (the options are refused before any model loads): `test` is a stdlib name.
    spec = importlib.util.spec_from_file_location("test_cli", REPO / "test.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    for option in (["--tta", "rotate"], ["--mc-dropout", "-2"]):
        assert cli.main(["--resume", str(tiny_run), *option]) == 2, option
        assert "error:" in capsys.readouterr().err, option


def test_bench_inference_prints_every_mode(tiny_run):
    result = run("scripts/bench_inference.py", "--resume", str(tiny_run / "best.pth"),
                 "--synthetic", "--n", "4", "--batch-size", "4", "--repeats", "1")
    table = result.stdout
    for mode in ("plain", "tta-2", "tta-6", "mc-dropout-20", "ensemble-3"):
        assert mode in table, mode
    assert "same checkpoint" in table  # an ensemble of one checkpoint repeated says so


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_results_claim_a_difference_only_when_its_ci_excludes_zero():
    script = load_script("uncertainty_results")
    verdict = lambda **row: script.sentence(pd.Series({"a": "x", "b": "y", **row}))  # noqa: E731
    assert "no significant" in verdict(metric="mae", diff=-0.3, low=-0.6, high=0.01)
    assert "better" in verdict(metric="mae", diff=-0.3, low=-0.6, high=-0.01)
    assert "worse" in verdict(metric="nll", diff=0.2, low=0.1, high=0.3)
    assert "better" in verdict(metric="spearman", diff=0.2, low=0.1, high=0.3)


def test_results_bootstrap_is_paired_and_averages_seeds():
    script = load_script("uncertainty_results")
    rng = np.random.default_rng(0)
    age = rng.uniform(10, 70, 200)
    frames = [pd.DataFrame({"age": age, "pred": age + rng.normal(0, s, 200),
                            "std": np.full(200, s)}) for s in (3.0, 5.0)]
    draws = rng.integers(0, 200, size=(50, 200))
    both = script.bootstrap(frames, "std", draws)
    singles = [script.bootstrap([f], "std", draws) for f in frames]
    assert len(both) == 51  # all images, then one row per resample
    assert np.allclose(both["mae"], (singles[0]["mae"] + singles[1]["mae"]) / 2)
    assert both["mae"].iloc[0] == pytest.approx(
        np.mean([np.abs(f["pred"] - f["age"]).mean() for f in frames]))
    # the same resamples for every method: a method minus itself is exactly 0 everywhere
    again = script.bootstrap([frames[0]], "std", draws)
    assert script.interval(again["nll"] - singles[0]["nll"]) == (0.0, 0.0, 0.0)
