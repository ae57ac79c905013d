"""TRAIN.AMP asks for bf16 autocast only where the device computes bf16 natively: emulated bf16
was measured ~12x slower than fp32 on an AVX2 CPU (results/bench/train_avx2.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from age_estimation import hardware
from age_estimation.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs/utkface_resnet18_dex.yaml"


@pytest.mark.parametrize("avx512_bf16, amx, native", [
    (False, False, False), (True, False, True), (False, True, True), (True, True, True)])
def test_cpu_bf16_is_native_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert hardware.native_bf16("cpu") is native
    assert hardware.amp_enabled(True, torch.device("cpu")) is native
    assert hardware.amp_enabled(False, "cpu") is False
    assert hardware.precision_name(False, "cpu") == "fp32"
    assert hardware.precision_name(True, "cpu") == (
        "bf16 autocast" if native else "fp32 (TRAIN.AMP True, but this device has no native bf16)")


def test_a_torch_without_the_probe_counts_as_no_feature(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert hardware.cpu_has("amx_tile") is False
    assert hardware.cpu_has("no_such_feature") is False


def test_cuda_follows_torchs_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.amp_enabled(True, "cuda") is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.amp_enabled(True, "cuda") is True


@pytest.mark.parametrize("native", [False, True])
def test_training_and_validation_run_in_the_resolved_precision(monkeypatch, tmp_path, native):
    from helpers import write_csv_dataset

    from age_estimation.engine.trainer import Trainer

    monkeypatch.setattr(hardware, "native_bf16", lambda device: native)
    labels = write_csv_dataset(tmp_path, {"train": 8, "valid": 4})
    cfg = load_config(str(CONFIG), [
        "OUTPUT_DIR", str(tmp_path / "run"), "DATA.DATASET", "csv", "DATA.ROOT", str(labels),
        "DATA.CACHE_DIR", str(tmp_path / "cache"), "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "1",
        "TRAIN.BATCH_SIZE", "4", "TRAIN.AMP", "True"])
    trainer = Trainer(cfg)
    dtypes = []  # the backbone's output dtype at each training and validation batch
    trainer.model.backbone.register_forward_hook(
        lambda module, inputs, output: dtypes.append((module.training, output.dtype)))
    trainer.fit()
    expected = torch.bfloat16 if native else torch.float32
    assert {training for training, _ in dtypes} == {True, False}  # both phases were seen
    assert {dtype for _, dtype in dtypes} == {expected}
