"""Training tricks of the recipe search: mixup's batch blending (deterministic, convex),
knowledge distillation from a teacher's per-image predictions, and the fused optimizer."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import write_csv_dataset

from age_estimation.config import ConfigError, load_config
from age_estimation.data.datasets import read_dataset
from age_estimation.engine.trainer import build_optimizer, mixup, teacher_ages

REPO = Path(__file__).resolve().parents[1]


def test_mixup_blends_each_image_with_a_shuffled_partner_deterministically():
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    mixed, lam, order = mixup(images, 0.4, (0, 1, 2, 0))
    assert 0.0 < lam < 1.0 and sorted(order.tolist()) == list(range(8))
    assert mixed.dtype == torch.float32 and mixed.min() >= 0.0 and mixed.max() <= 1.0
    expected = (lam * images.float() + (1 - lam) * images[order].float()) / 255.0
    torch.testing.assert_close(mixed, expected)
    again, lam_again, order_again = mixup(images, 0.4, (0, 1, 2, 0))
    assert lam_again == lam and torch.equal(order_again, order) and torch.equal(again, mixed)
    _, other_lam, _ = mixup(images, 0.4, (0, 1, 3, 0))  # the next step draws anew
    assert other_lam != lam
    # Float input in [0, 1] (what AgeModel also takes) gives the same blend.
    from_float, _, _ = mixup(images.float() / 255.0, 0.4, (0, 1, 2, 0))
    torch.testing.assert_close(from_float, mixed)


def test_mixup_alpha_shapes_the_blend_weight():
    lams = [mixup(torch.zeros(4, 3, 2, 2), 0.1, (s,))[1] for s in range(200)]
    # Beta(0.1, 0.1) puts most weight near 0 and 1: most blends are mild.
    assert sum(min(lam, 1 - lam) < 0.1 for lam in lams) > 120
    assert pytest.approx(sum(lams) / len(lams), abs=0.1) == 0.5


# ------------------------------------------------------------------------------ optimizer
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_fused_optimizer_makes_the_same_update_as_the_default_one(name):
    updated, cfgs = {}, {}
    for fused in (True, False):
        cfg = cfgs[fused] = load_config(str(REPO / "configs/utkface_resnet18_dex.yaml"), [
            "TRAIN.OPTIMIZER", name, "TRAIN.FUSED_OPTIMIZER", str(fused)])
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
        optimizer = build_optimizer(cfg, model, torch.device("cpu"))
        assert all(g["fused"] is fused for g in optimizer.param_groups)
        # timm's grouping: no weight decay on the bias and the norm's parameters
        assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.05]
        for step in range(3):
            loss = model(torch.randn(8, 6, generator=torch.Generator().manual_seed(step))).pow(2)
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
        updated[fused] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(updated[True], updated[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # ...and a device without a fused kernel gets the default implementation
    meta = build_optimizer(cfgs[True], model, torch.device("meta"))
    assert meta.param_groups[0]["fused"] is False


# ------------------------------------------------------------------------------ distillation


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("csvdata"), {"train": 12, "valid": 4})


def teacher_csv(path: Path, data: Path, shift: float) -> Path:
    """Predictions as test.py writes them: the true train ages + shift, plus a duplicate row."""
    records = read_dataset("csv", str(data), "train")
    frame = pd.DataFrame({"id": [r.id for r in records], "pred": [r.age + shift for r in records]})
    pd.concat([frame, frame.head(1)]).to_csv(path, index=False)
    return path


def test_teacher_ages_follow_the_ids_and_a_missing_image_is_named(csv_dataset, tmp_path):
    records = read_dataset("csv", str(csv_dataset), "train")
    ages = teacher_ages(teacher_csv(tmp_path / "t.csv", csv_dataset, 2.5), records[::-1])
    np.testing.assert_allclose(ages, [r.age + 2.5 for r in records[::-1]])
    pd.read_csv(tmp_path / "t.csv").iloc[1:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ConfigError, match=rf"1 of 12 training images \(e.g. '{records[0].id}'\)"):
        teacher_ages(tmp_path / "short.csv", records)
    with pytest.raises(ConfigError, match=r"LOSS\.DISTILL_PREDICTIONS = .*nope\.csv"):
        teacher_ages(tmp_path / "nope.csv", records)
    pd.DataFrame({"id": [r.id for r in records]}).to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(ConfigError, match=r"ids\.csv: expected .* mean \(or pred\), found id"):
        teacher_ages(tmp_path / "ids.csv", records)


def test_teacher_ages_are_the_predictive_mean_whatever_the_point_estimate(csv_dataset, tmp_path):
    """A teacher file made with test.py --point median has whole-year `pred`s; the teacher's
    mean (its `mean` column) is what is distilled."""
    records = read_dataset("csv", str(csv_dataset), "train")
    frame = pd.read_csv(teacher_csv(tmp_path / "t.csv", csv_dataset, 0.3))
    frame["mean"], frame["pred"] = frame["pred"], frame["pred"].round() + 1.0
    frame.to_csv(tmp_path / "median.csv", index=False)
    ages = teacher_ages(tmp_path / "median.csv", records)
    np.testing.assert_allclose(ages, [r.age + 0.3 for r in records])


def train_losses(out: Path, data: Path, *extra: str) -> list[float]:
    result = subprocess.run(
        [sys.executable, "train.py", "--cfg", "configs/utkface_resnet18_dex.yaml",
         "OUTPUT_DIR", str(out), "DATA.DATASET", "csv", "DATA.ROOT", str(data),
         "DATA.CACHE_DIR", str(out.parent / "cache"), "DATA.NUM_WORKERS", "0",
         "MODEL.BACKBONE", "test_resnet", "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "2",
         "TRAIN.BATCH_SIZE", "4", "TRAIN.THREADS", "1", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_csv(out / "metrics.csv")["train_loss"].tolist()


def test_distillation_blends_the_loss_for_the_teachers_ages(csv_dataset, tmp_path):
    # L1 head: the loss is the distance to the target age, so a shifted target shows in it.
    plain = train_losses(tmp_path / "plain", csv_dataset, "MODEL.HEAD", "l1")
    same = teacher_csv(tmp_path / "same.csv", csv_dataset, 0.0)
    # A teacher that predicts the true ages leaves training exactly as it was, at any weight...
    assert train_losses(tmp_path / "same", csv_dataset, "MODEL.HEAD", "l1",
                        "LOSS.DISTILL_PREDICTIONS", str(same),
                        "LOSS.DISTILL_WEIGHT", "1.0") == plain
    # ...and one that is 30 years off changes the targets, hence the loss.
    older = teacher_csv(tmp_path / "older.csv", csv_dataset, 30.0)
    shifted = train_losses(tmp_path / "older", csv_dataset, "MODEL.HEAD", "l1",
                           "LOSS.DISTILL_PREDICTIONS",
                           str(older), "LOSS.DISTILL_WEIGHT", "1.0")
    assert shifted[0] > plain[0] + 10.0


# ------------------------------------------------------------------------ progressive resizing
def test_downsample_resizes_a_uint8_batch_in_uint8_like_the_float_resize():
    from age_estimation.engine.trainer import downsample

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    small = downsample(images, 24)
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 24, 24)
    from_float = downsample(images.float() / 255.0, 24)
    assert from_float.dtype == torch.float32
    assert (small.float() - from_float * 255.0).abs().max() < 1.01  # uint8 rounding only
    # off the CPU (no uint8 kernel there) the batch becomes float in [0, 1]
    elsewhere = downsample(torch.empty(2, 3, 32, 32, dtype=torch.uint8, device="meta"), 24)
    assert elsewhere.dtype == torch.float32 and elsewhere.shape == (2, 3, 24, 24)
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(downsample(flat, 8), torch.full((1, 3, 8, 8), 77, dtype=torch.uint8))


@pytest.mark.parametrize("size, epochs", [(24, 0), (0, 2), (32, 2), (40, 2), (24, 3), (-8, 2)])
def test_progressive_resizing_refuses_settings_that_never_reach_the_model_size(size, epochs):
    with pytest.raises(ConfigError, match=r"TRAIN\.PROGRESSIVE_SIZE = .*MODEL\.IMG_SIZE \(32\) "
                                          r"for 1 to TRAIN\.EPOCHS - 1 \(2\) epochs"):
        load_config(str(REPO / "configs/utkface_resnet18_dex.yaml"), [
            "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "3", "TRAIN.PROGRESSIVE_SIZE", str(size),
            "TRAIN.PROGRESSIVE_EPOCHS", str(epochs)])


def test_progressive_resizing_trains_the_first_epochs_smaller_and_validates_at_full_size(
        csv_dataset, tmp_path):
    from age_estimation.engine.trainer import Trainer

    cfg = load_config(str(REPO / "configs/utkface_resnet18_dex.yaml"), [
        "OUTPUT_DIR", str(tmp_path / "run"), "DATA.DATASET", "csv", "DATA.ROOT", str(csv_dataset),
        "DATA.CACHE_DIR", str(tmp_path / "cache"), "DATA.NUM_WORKERS", "0",
        "MODEL.BACKBONE", "test_resnet", "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "3",
        "TRAIN.BATCH_SIZE", "4", "TRAIN.PROGRESSIVE_SIZE", "24", "TRAIN.PROGRESSIVE_EPOCHS", "2"])
    trainer = Trainer(cfg)
    inputs: list[tuple[bool, int]] = []
    trainer.model.backbone.register_forward_pre_hook(
        lambda module, args: inputs.append((module.training, args[0].shape[-1])))
    trainer.fit()
    # 12 train images in 3 steps per epoch, then one validation batch of the 4 valid images
    epoch = [(True, 24)] * 3 + [(False, 32)]
    assert inputs == epoch + epoch + [(True, 32)] * 3 + [(False, 32)]
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3] and metrics["valid_mae"].notna().all()
