"""Where bf16 autocast (TRAIN.AMP) pays, and where it does not.

bf16 autocast speeds up training and inference only on hardware that computes in bf16: a CPU
with AVX-512-BF16 or AMX, or a CUDA GPU with bf16 support. Elsewhere PyTorch emulates it, and
the same ResNet-18 training step ran about 12x slower than in fp32 on a 2-core AVX2 CPU
(`python scripts/bench_train.py --precision-table`, results/bench/train_avx2.md). So
TRAIN.AMP True asks for bf16 where it is native and falls back to fp32 elsewhere; False is
fp32 everywhere."""

from __future__ import annotations

import torch


def cpu_has(feature: str) -> bool:
    """Whether this CPU has `feature` as torch reports it ("amx_tile", "avx512_bf16", ...);
    False where this torch build cannot tell."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe()) if probe is not None else False


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 in hardware (AVX-512-BF16 or AMX CPU; bf16 CUDA GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has("avx512_bf16") or cpu_has("amx_tile")
    return False


def amp_enabled(requested: bool, device: torch.device | str) -> bool:
    """TRAIN.AMP for this run: bf16 autocast when asked for and native on `device`."""
    return bool(requested) and native_bf16(device)


def precision_name(requested: bool, device: torch.device | str) -> str:
    """What TRAIN.AMP resolves to on `device`, in words, for logs and benchmark headers."""
    if amp_enabled(requested, device):
        return "bf16 autocast"
    if requested:
        return "fp32 (TRAIN.AMP True, but this device has no native bf16)"
    return "fp32"
