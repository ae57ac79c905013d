"""AdaBN (Li et al., 2016): adapt a trained model to a target domain by re-estimating every
BatchNorm layer's running statistics on unlabelled target images; no weight changes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d) that keeps
    running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _model_name(model: nn.Module) -> str:
    """The timm architecture name of the model's backbone when there is one."""
    backbone = getattr(model, "backbone", model)
    config = getattr(backbone, "pretrained_cfg", None) or {}
    return config.get("architecture") or type(backbone).__name__


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches: Iterable[dict[str, Tensor] | Tensor],
                    max_batches: int | None = None, device: str | torch.device | None = None
                    ) -> int:
    """Reset every BatchNorm layer's running mean/var and re-estimate them as the cumulative
    average over `batches` (dicts with "image", e.g. a DataLoader's, or image tensors).

    Only the BN layers run in training mode (dropout stays off) and no gradient is taken, so
    parameters are untouched. The model is left in eval mode. Returns the number of images seen.
    Shuffle the target images: the variance is averaged over batches, so batches each holding
    one age range would underestimate it.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"AdaBN needs BatchNorm layers, but backbone {_model_name(model)!r} has "
                         f"none (it normalises with LayerNorm/GroupNorm or nothing): nothing "
                         f"to adapt")
    if device is None:
        device = next(model.parameters()).device
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts equally
        layer.train()
    seen = 0
    try:
        for step, batch in enumerate(batches):
            if max_batches is not None and step >= max_batches:
                break
            images = batch["image"] if isinstance(batch, dict) else batch
            model(images.to(device))
            seen += len(images)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    if not seen:
        raise ValueError("AdaBN got no target images: the BatchNorm statistics were reset")
    return seen


def adaptation_split(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (adapt, evaluate) of a seeded random split of n target images, `fraction`
    of them (at least one, at most n - 1) for adaptation and the rest for evaluation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"adaptation fraction {fraction}: expected a value in (0, 1)")
    if n < 2:
        raise ValueError(f"cannot split {n} target image(s) into adaptation and evaluation parts")
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(1, round(fraction * n)), n - 1)
    return np.sort(order[:cut]), np.sort(order[cut:])
