"""The benchmark's naive baseline loop does the same per-sample work as train.py's loop."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from helpers import load_script

bench = load_script("bench_train")


def test_naive_dataset_decodes_resizes_augments_and_normalises_each_jpeg(tmp_path):
    # A left-dark, right-bright face so that a flip is visible.
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 200
    cv2.imwrite(str(tmp_path / "face.png"), image)
    plain = bench.NaiveJPEGDataset([str(tmp_path / "face.png")], [33.0], 16)
    flipped = bench.NaiveJPEGDataset([str(tmp_path / "face.png")], [33.0], 16,
                                     A.Compose([A.HorizontalFlip(p=1.0)]))
    x, age = plain[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and age == np.float32(33.0)
    # ImageNet normalisation of the dark (0) and bright (200) halves, red channel
    assert x[0, 0, 0].item() == np.float32((0 - 0.485) / 0.229)
    assert abs(x[0, 0, -1].item() - (200 / 255 - 0.485) / 0.229) < 1e-5
    assert torch.equal(flipped[0][0], x.flip(-1))


def test_naive_dataset_applies_the_configured_policy(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "face.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    transform = bench.build_train_transform("basic")
    dataset = bench.NaiveJPEGDataset([str(tmp_path / "face.png")], [20.0], 32, transform)
    none = bench.NaiveJPEGDataset([str(tmp_path / "face.png")], [20.0], 32,
                                  bench.build_train_transform("none"))
    assert none.transform is None
    # the basic policy changes the face on most draws; the unaugmented one never does
    views = [dataset[0][0] for _ in range(6)]
    assert sum(not torch.equal(v, none[0][0]) for v in views) >= 3
    assert torch.equal(none[0][0], none[0][0])


def test_matmul_rate_counts_n_cubed_multiply_adds_per_product(monkeypatch):
    clock = iter([10.0, 12.0])  # the timed products take 2 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    rate = bench.matmul_gmac_s(torch.float32, n=64, repeats=3)
    assert rate == pytest.approx(64**3 * 3 / 2.0 / 1e9)


def test_backbone_cost_reports_the_training_step_rate():
    cfg = bench.load_config(str(bench.REPO / "configs/utkface_resnet18_dex.yaml"),
                            ["MODEL.IMG_SIZE", "32", "MODEL.BACKBONE", "resnet18"])
    row = bench.backbone_cost(cfg, "resnet18", batch=2, amp=False)
    assert row["backbone"] == "resnet18" and abs(row["params_M"] - 11.2) < 0.2
    assert row["train_gmac_s"] == 3 * row["GFLOPs"] * row["train_img_s"]
    # ResNet-18's forward pass at 32 px: 1.82 GMAC at 224 px scaled by (32 / 224)^2
    assert 0.02 < row["GFLOPs"] < 0.06


def test_conv_table_times_each_distinct_convolution_both_ways():
    cfg = bench.load_config(str(bench.REPO / "configs/utkface_resnet18_dex.yaml"),
                            ["MODEL.IMG_SIZE", "32"])
    rows = bench.conv_table(cfg, batch=2, dtype=torch.float32)
    # ResNet-18's distinct convolutions: stem, 2 per stage after the first's 1, plus 3 shortcuts
    assert [r["conv"] for r in rows][:2] == ["3->64 k7 s2", "64->64 k3 s1"]
    assert len(rows) == 11
    assert rows[0]["input"] == "32x32" and rows[0]["output"] == "16x16"
    assert rows[-1]["output"] == "1x1"  # layer4's shortcut at 32 px
    assert all(r["onednn_ms"] > 0 and r["matmul_ms"] > 0 for r in rows)
