"""train.py / test.py end to end: on a tiny CSV fixture (fast) and on real UTKFace (learning)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_csv_dataset

from age_estimation.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("csvdata"),
                             {"train": 16, "valid": 4, "test": 4}, gender=True)


@pytest.fixture(scope="module")
def tiny_run(csv_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run("train.py", "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
        "DATA.DATASET", "csv", "DATA.ROOT", str(csv_dataset), "DATA.CACHE_DIR", str(out / "c"),
        "DATA.NUM_WORKERS", "0", "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "2",
        "TRAIN.BATCH_SIZE", "8")
    return out


def test_train_writes_the_run_folder(tiny_run):
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.csv", "predictions_valid.csv",
                 "train.log"):
        assert (tiny_run / name).is_file(), name
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["valid_mae"].notna().all()
    state = load_checkpoint(tiny_run / "last.pth")  # weights_only load
    assert state["epoch"] == 2 and "MODEL:" in state["config"] and "csv" in state["config"]
    assert list(tiny_run.glob(".*.tmp")) == []  # no leftover temporary checkpoint files


def test_test_cli_prints_metrics_and_writes_predictions(tiny_run, csv_dataset):
    result = run("test.py", "--resume", str(tiny_run / "best.pth"), "--workers", "0")
    first = result.stdout.splitlines()[0]
    assert first.startswith("MAE ")
    preds = pd.read_csv(tiny_run / "predictions_test.csv")
    assert len(preds) == 4 and {"id", "age", "pred", "std", "gender"} <= set(preds.columns)
    mae = (preds["pred"] - preds["age"]).abs().mean()
    assert float(first.split()[1]) == pytest.approx(mae, abs=1e-3)
    summary = json.loads((tiny_run / "predictions_test.json").read_text())
    assert summary["n"] == 4
    # The training-age histogram travels with the summary (the report's per-image shots).
    counts = summary["train_age_counts"]
    assert counts == load_checkpoint(tiny_run / "best.pth")["train_age_counts"]
    assert sum(counts) == 16 and sum(e["n"] for e in summary["by_shot"]) == 4
    # --data KIND:PATH and --split all on the same CSV
    out = tiny_run / "all.csv"
    run("test.py", "--resume", str(tiny_run), "--data", f"csv:{csv_dataset}", "--split", "all",
        "--out", str(out), "--workers", "0", "--tta", "2")
    assert len(pd.read_csv(out)) == 24


def test_test_cli_perturbs_and_adapts_batchnorm(tiny_run, csv_dataset):
    out = tiny_run / "adapted.csv"
    run("test.py", "--resume", str(tiny_run / "best.pth"), "--data", f"csv:{csv_dataset}",
        "--split", "all", "--perturb", "blur:3", "--adapt-bn", "--adapt-split", "0.5",
        "--out", str(out), "--workers", "0")
    assert len(pd.read_csv(out)) == 12  # evaluated on the half not used for adaptation
    inference = json.loads(out.with_suffix(".json").read_text())["inference"]
    assert inference["perturb"] == "blur:3" and inference["adapt_bn"] is True
    bad = subprocess.run([sys.executable, "test.py", "--resume", str(tiny_run / "best.pth"),
                          "--perturb", "sharpen:2"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "sharpen" in bad.stderr


def test_resume_continues_to_more_epochs(tiny_run):
    run("train.py", "--resume", str(tiny_run), "TRAIN.EPOCHS", "3")
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert load_checkpoint(tiny_run / "last.pth")["epoch"] == 3


def test_test_cli_refuses_a_missing_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "test.py", "--resume", str(tmp_path / "x.pth")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "checkpoint not found" in result.stderr


@pytest.mark.slow
def test_short_training_on_real_utkface_beats_the_mean_baseline(real_dataset, tmp_path):
    """15 % of the UTKFace train split (stratified), 48 px, 4 short epochs (about a minute on
    2 cores): the valid MAE must beat predicting the train mean by a clear margin (measured
    when written: 10.2 vs 15.2)."""
    root = real_dataset("utkface")
    out = tmp_path / "run"
    run("train.py", "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
        "DATA.ROOT", str(root), "DATA.FRACTION", "0.15", "DATA.CACHE_DIR", str(tmp_path / "c"),
        "MODEL.IMG_SIZE", "48", "TRAIN.EPOCHS", "4", "TRAIN.BATCH_SIZE", "32",
        "TRAIN.LR", "0.003", "TRAIN.WARMUP_EPOCHS", "0.3", timeout=1200)
    preds = pd.read_csv(out / "predictions_valid.csv")
    splits = pd.read_csv(root / "splits.csv")
    train_mean = splits.loc[splits["split"] == "train", "age"].mean()
    baseline = (preds["age"] - train_mean).abs().mean()
    model_mae = (preds["pred"] - preds["age"]).abs().mean()
    print(f"valid MAE {model_mae:.2f} vs mean baseline {baseline:.2f}")
    assert len(preds) == 1500
    assert model_mae < 0.8 * baseline


def test_data_side_research_knobs_train_end_to_end(csv_dataset, tmp_path):
    """LDS loss weights, the balanced sampler, FDS and gender as an extra task, all at once."""
    out = tmp_path / "run"
    run("train.py", "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
        "DATA.DATASET", "csv", "DATA.ROOT", str(csv_dataset), "DATA.CACHE_DIR", str(out / "c"),
        "DATA.NUM_WORKERS", "0", "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "2",
        "TRAIN.BATCH_SIZE", "8", "LOSS.REWEIGHT", "lds", "SAMPLER.BALANCED", "True",
        "MODEL.FDS.ENABLED", "True", "MODEL.FDS.START_EPOCH", "1",
        "MODEL.ATTRIBUTES", "['gender']", "AUG.PERTURB", "['blur:1-3', 'jpeg']")
    state = load_checkpoint(out / "last.pth")
    assert state["attribute_vocab"] == {"gender": ["f", "m"]}
    assert any(k.startswith("fds.") for k in state["model"])
    assert any(k.startswith("attributes.") for k in state["model"])
    assert pd.read_csv(out / "metrics.csv")["valid_mae"].notna().all()
