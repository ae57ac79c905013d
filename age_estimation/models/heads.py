"""One Head class per formulation, registered by name (config key MODEL.HEAD).

A head maps pooled backbone features to raw outputs and owns the two things that define a
formulation: `loss(outputs, batch)` (one value per image, so callers can weight samples) and
`predict(outputs) -> Prediction` (the predictive mean in years and the head's own aleatoric std).
A new formulation is one subclass here + `@register_head("name")` + a config file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

HEADS: dict[str, type[Head]] = {}

# Regression outputs are expressed as AGE_CENTER + AGE_SCALE * raw: with a zero-initialised
# output the first predictions already sit in the middle of human ages, at a unit-ish scale.
AGE_CENTER, AGE_SCALE = 35.0, 20.0


def register_head(name: str):
    """Class decorator adding a Head subclass to HEADS under `name`."""

    def decorator(cls: type[Head]) -> type[Head]:
        HEADS[name] = cls
        return cls

    return decorator


@dataclass
class Prediction:
    """A predictive distribution per image: tensors of shape [B] in years, and `probs`."""

    mean: Tensor
    std_aleatoric: Tensor  # the head's own spread; NaN for heads without one (l1, l2)
    std_epistemic: Tensor  # spread across members (views, dropout samples, models); 0 for one
    # [B, K]: probabilities of the integer ages 0..K-1, for the heads that classify over them
    # (dex, dldl, ordinal); None for the others. Kept so that mixtures have an exact median.
    probs: Tensor | None = None

    @property
    def median(self) -> Tensor:
        """The point estimate that minimises the expected absolute error: a median of the
        predictive distribution. With `probs`, the smallest integer age whose cumulative
        probability reaches 1/2 (exactly a median for whole-year labels such as UTKFace's and
        FG-NET's); without, the mean, which is the median of one l1/l2/gaussian/laplace head
        (symmetric) and only an approximation for a mixture of them."""
        if self.probs is None:
            return self.mean
        below_half = (self.probs.float().cumsum(dim=1) < 0.5).sum(dim=1)
        return below_half.clamp_max(self.probs.shape[1] - 1).to(self.mean.dtype)

    @property
    def std(self) -> Tensor:
        """Total std: sqrt(aleatoric^2 + epistemic^2); per image, a missing (NaN) aleatoric part
        counts as 0 where there is an epistemic one, so l1/l2 ensembles still get a spread."""
        aleatoric_var = self.std_aleatoric.square()
        missing = torch.isnan(aleatoric_var) & (self.std_epistemic > 0)
        aleatoric_var = torch.where(missing, torch.zeros_like(aleatoric_var), aleatoric_var)
        return (aleatoric_var + self.std_epistemic.square()).sqrt()


def distribution_prediction(probs: Tensor, values: Tensor) -> Prediction:
    """Mean and std of a discrete distribution `probs` [B, K] over `values`: [K], the integer
    ages 0..K-1 (then `probs` is kept for the median), or [B, K], a support of each image's own
    (residual DEX: ages + residuals, no grid shared by images or members to mix on)."""
    mean = (probs * values).sum(dim=1)
    var = (probs * (values - mean[:, None]).square()).sum(dim=1)
    return Prediction(mean, var.clamp_min(0).sqrt(), torch.zeros_like(mean),
                      probs if values.dim() == 1 else None)


class Head(nn.Module):
    """Base class: subclasses define `forward`, `loss` and `predict`."""

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__()
        self.in_features = in_features

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Per-image loss [B] for the targets in batch["age"]."""
        raise NotImplementedError

    def predict(self, outputs: Tensor) -> Prediction:
        raise NotImplementedError


class _ScalarRegression(Head):
    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.fc = nn.Linear(in_features, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Tensor) -> Tensor:
        return AGE_CENTER + AGE_SCALE * self.fc(features)[:, 0]

    def predict(self, outputs: Tensor) -> Prediction:
        nan = torch.full_like(outputs, math.nan)
        return Prediction(outputs, nan, torch.zeros_like(outputs))


@register_head("l1")
class L1Head(_ScalarRegression):
    """Direct regression with the mean absolute error (the metric itself)."""

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (outputs - batch["age"]).abs()


@register_head("l2")
class L2Head(_ScalarRegression):
    """Direct regression with the squared error."""

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (outputs - batch["age"]).square()


class _AgeClasses(Head):
    """Shared by the heads that classify over integer ages 0..MODEL.MAX_AGE."""

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.num_classes = cfg.MODEL.MAX_AGE + 1
        self.label_smoothing = cfg.MODEL.LABEL_SMOOTHING
        self.register_buffer("ages", torch.arange(self.num_classes, dtype=torch.float32),
                             persistent=False)

    def soft_targets(self, age: Tensor) -> Tensor:
        """Two-hot targets whose expectation is exactly the (clamped, possibly non-integer) age,
        mixed with a uniform distribution by MODEL.LABEL_SMOOTHING; rows sum to 1."""
        age = age.clamp(0, self.num_classes - 1)
        low = age.floor().long()
        high = (low + 1).clamp_max(self.num_classes - 1)
        frac = age - low
        targets = torch.zeros(age.shape[0], self.num_classes, device=age.device)
        targets.scatter_add_(1, low[:, None], (1 - frac)[:, None])
        targets.scatter_add_(1, high[:, None], frac[:, None])
        eps = self.label_smoothing
        return (1 - eps) * targets + eps / self.num_classes


@register_head("dex")
class DEXHead(_AgeClasses):
    """DEX (Rothe et al.): softmax over ages; the prediction is the expectation."""

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.fc = nn.Linear(in_features, self.num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        targets = self.soft_targets(batch["age"])
        return -(targets * F.log_softmax(outputs, dim=1)).sum(dim=1)

    def predict(self, outputs: Tensor) -> Prediction:
        return distribution_prediction(outputs.softmax(dim=1), self.ages)


@register_head("dldl")
class DLDLHead(DEXHead):
    """DLDL-v2 (Gao et al., IJCAI 2018): the softmax over ages is fitted to a Gaussian label
    distribution N(age, MODEL.DLDL_SIGMA^2) discretised on 0..MAX_AGE (KL divergence), plus
    MODEL.DLDL_L1_WEIGHT x |expectation - age|, which ties the trained quantity to the metric.
    Prediction: the expectation, as DEX."""

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.sigma, self.l1_weight = cfg.MODEL.DLDL_SIGMA, cfg.MODEL.DLDL_L1_WEIGHT

    def soft_targets(self, age: Tensor) -> Tensor:
        """The Gaussian label distribution of each (clamped) age, rows summing to 1."""
        age = age.clamp(0, self.num_classes - 1)
        log_density = -0.5 * ((self.ages[None, :] - age[:, None]) / self.sigma).square()
        return log_density.softmax(dim=1)

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        targets = self.soft_targets(batch["age"])
        log_probs = F.log_softmax(outputs, dim=1)
        kl = (torch.special.xlogy(targets, targets) - targets * log_probs).sum(dim=1)
        expectation = (log_probs.exp() * self.ages).sum(dim=1)
        return kl + self.l1_weight * (expectation - batch["age"]).abs()


@register_head("residual_dex")
class ResidualDEXHead(_AgeClasses):
    """DEX plus a regressed residual per age bin: prediction = sum_k p_k (k + r_k).

    The residual target is age - bin computed from the *unrounded* age (rounding the age first,
    as some implementations do, makes the target identically zero).
    """

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.fc = nn.Linear(in_features, 2 * self.num_classes)
        self.residual_weight = cfg.MODEL.RESIDUAL_WEIGHT

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)

    def split(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, residuals), residuals bounded to (-1, 1) years."""
        logits, raw_residuals = outputs.split(self.num_classes, dim=1)
        return logits, torch.tanh(raw_residuals)

    def residual_target(self, age: Tensor) -> tuple[Tensor, Tensor]:
        """(bin index, residual age - bin) of each (clamped) age."""
        age = age.clamp(0, self.num_classes - 1)
        bins = age.round().long()
        return bins, age - bins

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        logits, residuals = self.split(outputs)
        bins, target_residual = self.residual_target(batch["age"])
        one_hot = F.one_hot(bins, self.num_classes).float()
        targets = (1 - self.label_smoothing) * one_hot + self.label_smoothing / self.num_classes
        ce = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
        predicted_residual = residuals.gather(1, bins[:, None])[:, 0]
        return ce + self.residual_weight * (predicted_residual - target_residual).abs()

    def predict(self, outputs: Tensor) -> Prediction:
        logits, residuals = self.split(outputs)
        return distribution_prediction(logits.softmax(dim=1), self.ages + residuals)


@register_head("ordinal")
class OrdinalHead(_AgeClasses):
    """Rank-consistent ordinal regression over ages: CORAL (Cao et al. 2020: one shared weight
    vector, one bias per threshold) or CORN (Shi et al. 2023: conditional binary tasks).

    Outputs are the logits of P(age > k) (CORAL) or P(age > k | age > k-1) (CORN), k=0..K-2.
    """

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.method = cfg.MODEL.ORDINAL
        thresholds = self.num_classes - 1
        if self.method == "coral":
            self.fc = nn.Linear(in_features, 1, bias=False)
            self.biases = nn.Parameter(torch.linspace(2.0, -2.0, thresholds))
        else:
            self.fc = nn.Linear(in_features, thresholds)

    def forward(self, features: Tensor) -> Tensor:
        if self.method == "coral":
            return self.fc(features) + self.biases
        return self.fc(features)

    def exceedance(self, outputs: Tensor) -> Tensor:
        """P(age > k) for k = 0..K-2, non-increasing in k."""
        if self.method == "corn":
            return torch.sigmoid(outputs).cumprod(dim=1)
        # CORAL's biases are ordered at the optimum; the running minimum guarantees monotone
        # probabilities even before training has got there.
        return torch.sigmoid(outputs).cummin(dim=1).values

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        age = batch["age"].clamp(0, self.num_classes - 1)
        thresholds = self.ages[:-1]
        # Level k is 1 where age >= k + 1, 0 where age <= k, the fractional part between; a
        # fractional age n + f is age n with weight 1 - f and n + 1 with weight f, and the BCE is
        # linear in its target, so soft levels are its expected loss.
        levels = (age[:, None] - thresholds).clamp(0, 1)
        bce = F.binary_cross_entropy_with_logits(outputs, levels, reduction="none")
        if self.method == "coral":
            return bce.sum(dim=1)
        # CORN trains task k only on images with age > k - 1; for n + f, task n + 1 is active
        # with weight f. So distillation keeps the teacher's fraction instead of rounding it
        # away; whole ages give the paper's hard levels and task subsets.
        active = (age[:, None] - thresholds + 1).clamp(0, 1)
        return (bce * active).sum(dim=1)

    def predict(self, outputs: Tensor) -> Prediction:
        above = self.exceedance(outputs)
        ones = torch.ones_like(above[:, :1])
        zeros = torch.zeros_like(above[:, :1])
        # P(age = k) = P(age > k-1) - P(age > k); the mean equals sum_k P(age > k).
        probs = torch.cat([ones, above], dim=1) - torch.cat([above, zeros], dim=1)
        return distribution_prediction(probs.clamp_min(0), self.ages)


class _Likelihood(Head):
    """Mean and scale of a location-scale likelihood; the scale is predicted per image
    (MODEL.VARIANCE hetero) or one learned parameter (homo)."""

    def __init__(self, in_features: int, cfg: CfgNode) -> None:
        super().__init__(in_features, cfg)
        self.heteroscedastic = cfg.MODEL.VARIANCE == "hetero"
        self.fc = nn.Linear(in_features, 2 if self.heteroscedastic else 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        if not self.heteroscedastic:
            self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, features: Tensor) -> Tensor:
        """[B, 2]: mean in years and log scale (log years), clamped for numerical safety."""
        raw = self.fc(features)
        mean = AGE_CENTER + AGE_SCALE * raw[:, 0]
        log_scale = raw[:, 1] if self.heteroscedastic else self.log_scale.expand_as(mean)
        # Start at a scale of ~10 years rather than 1, closer to a fresh model's errors.
        log_scale = (log_scale + math.log(10.0)).clamp(-4.0, 6.0)
        return torch.stack([mean, log_scale], dim=1)

    def predict(self, outputs: Tensor) -> Prediction:
        mean, log_scale = outputs.unbind(dim=1)
        return Prediction(mean, self.std_from_scale(log_scale.exp()), torch.zeros_like(mean))

    @staticmethod
    def std_from_scale(scale: Tensor) -> Tensor:
        raise NotImplementedError


@register_head("gaussian")
class GaussianHead(_Likelihood):
    """Gaussian negative log-likelihood; scale = standard deviation."""

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        mean, log_sigma = outputs.unbind(dim=1)
        z = (batch["age"] - mean) / log_sigma.exp()
        return 0.5 * math.log(2 * math.pi) + log_sigma + 0.5 * z.square()

    @staticmethod
    def std_from_scale(scale: Tensor) -> Tensor:
        return scale


@register_head("laplace")
class LaplaceHead(_Likelihood):
    """Laplace negative log-likelihood; scale b, standard deviation sqrt(2) b."""

    def loss(self, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
        mean, log_b = outputs.unbind(dim=1)
        return math.log(2.0) + log_b + (batch["age"] - mean).abs() / log_b.exp()

    @staticmethod
    def std_from_scale(scale: Tensor) -> Tensor:
        return math.sqrt(2.0) * scale
