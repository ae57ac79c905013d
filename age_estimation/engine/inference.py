"""Inference: every way of getting several predictions per image (test-time views, MC-Dropout
samples, ensemble members) ends in one Prediction through one mixture rule, `combine`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from age_estimation.models.heads import Prediction
from age_estimation.models.model import AgeModel


def combine(members: Sequence[Prediction], weights: Sequence[float] | None = None) -> Prediction:
    """Mixture of member distributions (law of total variance), equal-weight unless `weights`
    (normalised to sum 1) are given: mean = weighted mean of means; aleatoric var = weighted
    mean of member aleatoric vars (NaN if members have none); epistemic var = weighted variance
    of member means + weighted mean of member epistemic vars (so nested combinations, e.g. an
    ensemble of TTA'd models, or groups of members weighted by their size, add up correctly);
    probs = weighted mean of member probs, the mixture's exact distribution over ages, when
    every member has them (a member with a lower MODEL.MAX_AGE puts zero on the older ages),
    else None."""
    if not members:
        raise ValueError("combine() needs at least one member")
    if weights is not None and (len(weights) != len(members) or min(weights) < 0
                                or sum(weights) <= 0):
        raise ValueError(f"combine(): {len(weights)} weights for {len(members)} members; "
                         f"expected one non-negative weight per member, not all zero")
    if len(members) == 1:
        return members[0]
    means = torch.stack([m.mean for m in members])
    w = torch.full((len(members),), 1.0 / len(members)) if weights is None else (
        torch.as_tensor(weights, dtype=torch.float64) / sum(weights)).float()
    w = w.to(means).view(-1, *[1] * (means.dim() - 1))
    mean = (w * means).sum(dim=0)
    aleatoric_var = (w * torch.stack([m.std_aleatoric for m in members]).square()).sum(dim=0)
    inner_epistemic_var = (w * torch.stack([m.std_epistemic for m in members]).square()).sum(dim=0)
    epistemic_var = (w * (means - mean).square()).sum(dim=0) + inner_epistemic_var
    return Prediction(mean, aleatoric_var.sqrt(), epistemic_var.sqrt(),
                      _mixture_probs([m.probs for m in members], w))


def member_weights(weights: Sequence[float] | None, checkpoints: Sequence[object]
                   ) -> list[float] | None:
    """Validated ensemble weights (test.py / demo.py --ensemble-weights): None (equal weights),
    or one positive weight per checkpoint (--resume first). Raises ValueError naming the option
    and, for a bad weight, its checkpoint."""
    if not weights:
        return None
    if len(weights) != len(checkpoints):
        raise ValueError(f"--ensemble-weights: {len(weights)} weights for {len(checkpoints)} "
                         f"checkpoints (--resume, then --ensemble); expected one per checkpoint")
    for weight, path in zip(weights, checkpoints):
        if not (0 < weight < float("inf")):  # also refuses NaN
            raise ValueError(f"--ensemble-weights: {weight} for {path}: expected a weight > 0 "
                             f"(leave a checkpoint out rather than weighting it 0)")
    return [float(w) for w in weights]


def _mixture_probs(member_probs: Sequence[Tensor | None], w: Tensor) -> Tensor | None:
    """Weighted mean of the members' [B, K_i] age distributions, zero-padded to the largest K;
    None unless every member has one. `w` is combine's [M, 1, ...] weight tensor."""
    if any(p is None for p in member_probs):
        return None
    classes = max(p.shape[-1] for p in member_probs)
    padded = torch.stack([F.pad(p.float(), (0, classes - p.shape[-1])) for p in member_probs])
    return (w.view(-1, *[1] * (padded.dim() - 1)).to(padded) * padded).sum(dim=0)


def _zoom(images: Tensor, scale: float) -> Tensor:
    """Centre crop of relative size 1/scale resized back to the input size (scale > 1 zooms in)
    or the image shrunk inside a replicated border (scale < 1)."""
    size = images.shape[-1]
    if scale >= 1.0:
        crop = round(size / scale)
        start = (size - crop) // 2
        patch = images[..., start:start + crop, start:start + crop]
    else:
        pad = round(size * (1 / scale - 1) / 2)
        patch = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    out = F.interpolate(patch.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=scale < 1.0)
    return out.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else out


# Test-time views, in order: the first N are used for `--tta N`.
TTA_VIEWS = ("identity", "flip", "zoom_in", "zoom_in_flip", "zoom_out", "zoom_out_flip")
TTA_ZOOM = 1.1
# Named view sets for `--tta POLICY`.
TTA_POLICIES: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flip": ("identity", "flip"),
    "zoom": ("identity", "zoom_in", "zoom_out"),
    "all": TTA_VIEWS,
}


def tta_view(images: Tensor, name: str) -> Tensor:
    """One named deterministic view of a batch [B, 3, H, W] (see TTA_VIEWS)."""
    if name not in TTA_VIEWS:
        raise ValueError(f"unknown TTA view {name!r}: expected one of {', '.join(TTA_VIEWS)}")
    base = name.removesuffix("flip").removesuffix("_") or "identity"
    if name.endswith("flip"):
        images = images.flip(-1)
    if base == "zoom_in":
        return _zoom(images, TTA_ZOOM)
    if base == "zoom_out":
        return _zoom(images, 1 / TTA_ZOOM)
    return images


def parse_tta(spec: str | int | None) -> tuple[str, ...]:
    """The views of a `--tta` value: None/0/1 -> identity only; an int N -> the first N of
    TTA_VIEWS; a TTA_POLICIES name; or a comma-separated list of distinct TTA_VIEWS names."""
    if spec is None or str(spec).strip() == "":
        return ("identity",)
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        n = int(text)
        if not 0 <= n <= len(TTA_VIEWS):
            raise ValueError(f"--tta {n}: expected 0..{len(TTA_VIEWS)} views "
                             f"({', '.join(TTA_VIEWS)})")
        return TTA_VIEWS[:max(n, 1)]
    if text in TTA_POLICIES:
        return TTA_POLICIES[text]
    views = tuple(v.strip() for v in text.split(","))
    for view in views:
        if view not in TTA_VIEWS:
            raise ValueError(f"unknown TTA view {view!r}: expected a number, a policy "
                             f"({', '.join(TTA_POLICIES)}) or views from {', '.join(TTA_VIEWS)}")
    if len(set(views)) != len(views):
        # A repeated view would silently weigh itself twice in the mixture.
        raise ValueError(f"--tta {text}: a view is listed twice")
    return views


@contextmanager
def mc_dropout_mode(model: AgeModel, enabled: bool) -> Iterator[None]:
    """Eval mode everywhere (BatchNorm uses running statistics) except the dropout before the
    head, which stays stochastic when `enabled`."""
    was_training = model.training
    model.eval()
    model.dropout.train(enabled)
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_batch(model: AgeModel, images: Tensor, views: Sequence[str] = ("identity",),
                  mc_samples: int = 0, amp: bool = False) -> Prediction:
    """One Prediction for a batch from one model: for each view the backbone runs once, then the
    head runs `mc_samples` times with dropout on (MC-Dropout) or once without."""
    if mc_samples < 0:
        raise ValueError(f"mc_samples must be >= 0, got {mc_samples}")
    if mc_samples and model.dropout.p == 0:
        raise ValueError("MC-Dropout needs a model trained with MODEL.DROPOUT > 0 "
                         "(this checkpoint has no dropout before its head)")
    members = []
    device_type = images.device.type
    with mc_dropout_mode(model, enabled=mc_samples > 0):
        for view in views:
            x = tta_view(images, view)
            if x.dim() == 4 and device_type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                features = model.features(x)
            samples = [model.head.predict(model.head_outputs(features))
                       for _ in range(max(1, mc_samples))]
            members.append(combine(samples))
    return combine(members)


PREDICTION_COLUMNS = ("mean", "median", "std", "std_aleatoric", "std_epistemic")


def prediction_columns(prediction: Prediction) -> dict[str, np.ndarray]:
    """A Prediction as numpy arrays: PREDICTION_COLUMNS, plus `probs` [B, K] where it has one."""
    columns = {k: getattr(prediction, k).float().cpu().numpy() for k in PREDICTION_COLUMNS}
    if prediction.probs is not None:
        columns["probs"] = prediction.probs.float().cpu().numpy()
    return columns


def prediction_from_columns(columns: dict[str, np.ndarray]) -> Prediction:
    """The inverse of prediction_columns (the total std and median are derived again)."""
    # torch.tensor copies: pandas and numpy may hand out read-only views, which torch warns about.
    fields = [torch.tensor(columns[k]) for k in ("mean", "std_aleatoric", "std_epistemic")]
    probs = columns.get("probs")
    return Prediction(*fields, None if probs is None else torch.tensor(probs))


@torch.no_grad()
def predict_loader(models: Sequence[AgeModel], batches: Iterable[dict[str, Tensor]],
                   views: Sequence[str] = ("identity",), mc_samples: int = 0,
                   amp: bool = False, device: str = "cpu",
                   weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Run every model (ensemble members, mixed with `weights`, default equal) over every batch;
    returns arrays keyed index and PREDICTION_COLUMNS (+ probs, see prediction_columns), one row
    per image, in loader order."""
    index, parts = [], []
    for batch in batches:
        images = batch["image"].to(device)
        prediction = combine([predict_batch(m, images, views, mc_samples, amp) for m in models],
                             weights)
        index.append(batch["index"].numpy())
        parts.append(prediction_columns(prediction))
    if not parts:
        return {k: np.empty(0) for k in ("index", *PREDICTION_COLUMNS)}
    return {"index": np.concatenate(index),
            **{k: np.concatenate([part[k] for part in parts]) for k in parts[0]}}


@torch.no_grad()
def predict_attribute_logits(model: AgeModel, batches: Iterable[dict[str, Tensor]],
                             amp: bool = False, device: str = "cpu"
                             ) -> tuple[np.ndarray, dict[str, Tensor]]:
    """(index, {attribute: logits [N, classes]}) of a model with attribute heads over every
    batch (identity view, eval mode), in loader order."""
    if model.attributes is None:
        raise ValueError("the model has no attribute heads (MODEL.ATTRIBUTES is empty)")
    model.eval()
    index, logits = [], {name: [] for name in model.attributes.names}
    for batch in batches:
        images = batch["image"].to(device)
        if device == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            features = model.features(images)
        for name, values in model.attributes(features).items():
            logits[name].append(values.float().cpu())
        index.append(batch["index"].numpy())
    return np.concatenate(index), {name: torch.cat(v) for name, v in logits.items()}
