"""test.py on a model with attribute heads: accuracy per attribute and pred_<name> columns."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import torch
from helpers import REPO, write_csv_dataset

import train


@pytest.fixture
def quiet_main(monkeypatch):
    """Run a CLI's main() in this process (imports already paid for), logging left to pytest
    and torch's thread count restored afterwards."""
    threads = torch.get_num_threads()
    # test.py is loaded from its path: `import test` would find the standard library's package.
    spec = importlib.util.spec_from_file_location("test_cli", REPO / "test.py")
    test_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_cli)
    for module in (train, test_cli):
        monkeypatch.setattr(module, "setup_logging", lambda *_, **__: None)
    yield train.main, test_cli.main
    torch.set_num_threads(threads)


def test_attribute_accuracy_and_predictions(tmp_path, quiet_main, capsys):
    train_main, test_main = quiet_main
    labels = write_csv_dataset(tmp_path, {"train": 8, "valid": 4, "test": 6}, size=32,
                               gender=True)
    out = tmp_path / "run"
    assert train_main([
        "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
        "DATA.DATASET", "csv", "DATA.ROOT", str(labels), "DATA.CACHE_DIR", str(tmp_path / "c"),
        "DATA.NUM_WORKERS", "0", "MODEL.BACKBONE", "test_resnet", "MODEL.IMG_SIZE", "32",
        "MODEL.ATTRIBUTES", "['gender']", "TRAIN.EPOCHS", "1", "TRAIN.BATCH_SIZE", "4",
        "TRAIN.THREADS", "1"]) == 0
    capsys.readouterr()
    preds = tmp_path / "preds.csv"
    assert test_main(["--resume", str(out / "best.pth"), "--out", str(preds),
                      "--workers", "0"]) == 0
    printed = capsys.readouterr().out

    frame = pd.read_csv(preds)
    assert len(frame) == 6 and set(frame["pred_gender"]) <= {"f", "m"}
    accuracy = float((frame["pred_gender"] == frame["gender"]).mean())
    summary = json.loads(preds.with_suffix(".json").read_text())
    assert summary["attribute_accuracy"] == {"gender": {"accuracy": accuracy, "n": 6}}
    assert f"Attribute accuracy gender {accuracy:.3f} (n=6)" in printed
    # The heads' output is not a subgroup of the data: no MAE breakdown by pred_gender.
    assert set(summary["by_attribute"]) == {"gender"}
