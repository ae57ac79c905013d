"""Synthetic faces mixed into training (DATA.SYNTHETIC): batch composition, per-image tables,
validation on real faces only, resume-compatible batches and config checks."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import write_csv_dataset

from age_estimation.config import ConfigError, load_config
from age_estimation.data.build import AgeDataset, train_loader
from age_estimation.data.records import Record
from age_estimation.data.transforms import build_train_transform

REPO = Path(__file__).resolve().parents[1]
N_REAL, N_SYNTH, BATCH = 16, 12, 4

TINY = ["DATA.DATASET", "csv", "DATA.NUM_WORKERS", "0", "MODEL.BACKBONE", "test_resnet",
        "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "2", "TRAIN.BATCH_SIZE", str(BATCH),
        "TRAIN.THREADS", "1"]


@pytest.fixture(scope="module")
def real_csv(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("real"), {"train": N_REAL, "valid": 4},
                             size=32, gender=True)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """A folder shaped like scripts/synthesize.py's: images/*.png + labels.csv (no split)."""
    root = tmp_path_factory.mktemp("synthetic")
    (root / "images").mkdir()
    labels = write_csv_dataset(root / "images", {"all": N_SYNTH}, size=32, seed=1, gender=True)
    frame = pd.read_csv(labels).drop(columns="split")
    labels.unlink()
    frame["path"] = "images/" + frame["path"]
    frame["age_std"] = 3.0
    frame["conditioned_age"] = frame["age"]
    frame.to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture
def train_main(monkeypatch):
    """train.py's main() in this process, logging left to pytest, thread count restored."""
    import train

    monkeypatch.setattr(train, "setup_logging", lambda *_, **__: None)
    threads = torch.get_num_threads()
    yield train.main
    torch.set_num_threads(threads)


@pytest.fixture
def batch_indices(monkeypatch) -> list[list[int]]:
    """The "index" of every image of every training batch, as the dex loss receives them."""
    from age_estimation.models.heads import HEADS

    dex_loss, seen = HEADS["dex"].loss, []

    def recording_loss(self, outputs, batch):
        if self.training:
            seen.append(batch["index"].tolist())
        return dex_loss(self, outputs, batch)

    monkeypatch.setattr(HEADS["dex"], "loss", recording_loss)
    return seen


def args(out: Path, real: Path, *extra: str) -> list[str]:
    return ["--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
            "DATA.ROOT", str(real), "DATA.CACHE_DIR", str(out.parent / "cache"), *TINY, *extra]


def test_half_synthetic_batches_train_and_validate_on_real_faces(
        real_csv, synthetic_dir, tmp_path, train_main, batch_indices):
    out = tmp_path / "run"
    code = train_main(args(out, real_csv, "DATA.SYNTHETIC.ROOT", str(synthetic_dir),
                           "DATA.SYNTHETIC.RATIO", "0.5", "DATA.SYNTHETIC.LABEL_JITTER", "True",
                           "LOSS.REWEIGHT", "inverse", "MODEL.ATTRIBUTES", "['gender']"))
    assert code == 0
    # Epoch length is the real split's (16 / 4 = 4 steps), each batch exactly 2 synthetic.
    assert len(batch_indices) == 2 * N_REAL // BATCH
    for batch in batch_indices:
        assert len(batch) == BATCH
        assert sum(i >= N_REAL for i in batch) == round(0.5 * BATCH)
        assert max(batch) < N_REAL + N_SYNTH
    assert pd.read_csv(out / "metrics.csv")["valid_mae"].notna().all()
    real = pd.read_csv(real_csv)
    valid_ids = pd.read_csv(out / "predictions_valid.csv")["id"]
    assert sorted(valid_ids) == sorted(real.loc[real["split"] == "valid", "path"])


def test_synthetic_only_batches_train(real_csv, synthetic_dir, tmp_path, train_main,
                                      batch_indices):
    out = tmp_path / "run"
    assert train_main(args(out, real_csv,
                           "DATA.SYNTHETIC.ROOT", str(synthetic_dir / "labels.csv"),
                           "DATA.SYNTHETIC.RATIO", "1.0", "TRAIN.EPOCHS", "1")) == 0
    assert len(batch_indices) == N_REAL // BATCH
    assert all(min(batch) >= N_REAL for batch in batch_indices)
    assert (out / "best.pth").is_file()


def test_mixed_batches_resume_mid_epoch_and_synthetic_images_get_their_own_seeds(tmp_path):
    cfg = load_config(None, ["DATA.SYNTHETIC.ROOT", "x", "DATA.SYNTHETIC.RATIO", "0.25",
                             "TRAIN.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0"])
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    records = [Record(path=f"{i}.png", age=30.0, id=f"{i}.png") for i in range(8)]
    transform = build_train_transform("basic", [], 0.0, donors=images)
    real = AgeDataset(records, images, transform)
    synthetic = AgeDataset(records, images, transform, index_offset=8)
    full = list(train_loader(cfg, real, 3, synthetic=synthetic).batch_sampler)
    resumed = list(train_loader(cfg, real, 3, start_step=1, synthetic=synthetic).batch_sampler)
    assert len(full) == 2 and resumed == full[1:]
    assert all(sum(i >= 8 for i in batch) == 1 for batch in full)
    # Same pixels at the same local index, but its own index and its own augmentation draw.
    assert synthetic[0]["index"].item() == 8 and real[0]["index"].item() == 0
    assert not torch.equal(synthetic[0]["image"], real[0]["image"])


@pytest.mark.parametrize("overrides, message", [
    (["DATA.SYNTHETIC.RATIO", "1.5", "DATA.SYNTHETIC.ROOT", "x"], "DATA.SYNTHETIC.RATIO = 1.5"),
    (["DATA.SYNTHETIC.RATIO", "0.5"], "needs DATA.SYNTHETIC.ROOT"),
    (["DATA.SYNTHETIC.RATIO", "0.5", "DATA.SYNTHETIC.ROOT", "x", "SAMPLER.BALANCED", "True"],
     "SAMPLER.BALANCED"),
])
def test_bad_synthetic_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_train_cli_reports_a_missing_synthetic_root(real_csv, tmp_path, train_main, capsys):
    assert train_main(args(tmp_path / "run", real_csv, "DATA.SYNTHETIC.RATIO", "0.5")) == 2
    assert "DATA.SYNTHETIC.ROOT" in capsys.readouterr().err
