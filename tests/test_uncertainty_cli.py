"""test.py's uncertainty options and scripts/bench_inference.py end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A Gaussian-head resnet18 with dropout, trained 1 epoch on 20 random 32 px images."""
    root = tmp_path_factory.mktemp("uncertainty")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        age = float(rng.integers(5, 80))
        cv2.imwrite(str(root / f"f{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        rows.append({"path": f"f{i}.png", "age": age,
                     "split": "train" if i < 12 else ("valid" if i < 16 else "test")})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
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
                 "--synthetic", "--n", "8", "--batch-size", "4", "--repeats", "1")
    table = result.stdout
    for mode in ("plain", "tta-2", "tta-6", "mc-dropout-20", "ensemble-3"):
        assert mode in table, mode
    assert "same checkpoint" in table  # an ensemble of one checkpoint repeated says so
