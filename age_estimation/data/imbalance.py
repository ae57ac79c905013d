"""Imbalanced ages: loss re-weighting (inverse frequency, LDS), feature distribution smoothing
(FDS), a balanced sampler, and the many/medium/few-shot breakdown of the DIR benchmark.

LDS and FDS follow Yang et al., "Delving into Deep Imbalanced Regression" (ICML 2021) and their
reference code (YyzHarry/imbalanced-regression); bins are integer ages (floor of the label).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor, nn
from torch.utils.data import Sampler

from age_estimation.metrics import mae_by

REWEIGHTS = ("none", "inverse", "sqrt_inverse", "lds", "sqrt_lds")
KERNELS = ("gaussian", "triang", "laplace")
# DIR benchmark shot groups: training images of a test image's integer age.
MANY_SHOT_MIN, FEW_SHOT_MAX = 100, 20  # many: > 100, medium: 20..100, few: < 20
SHOTS = ("many", "medium", "few")


def age_bins(ages: ArrayLike) -> np.ndarray:
    """Integer age bin (floor, at least 0) of each label; non-integer labels such as APPA-REAL's
    mean apparent age share their floor's bin, as in `stratified_fraction`."""
    return np.maximum(np.floor(np.asarray(ages, dtype=np.float64)), 0).astype(np.int64)


def age_histogram(ages: ArrayLike, num_bins: int | None = None) -> np.ndarray:
    """Number of labels per integer age 0..num_bins-1 (default: up to the oldest label)."""
    bins = age_bins(ages)
    return np.bincount(bins, minlength=num_bins or 0).astype(np.float64)


def ages_from_histogram(counts: ArrayLike) -> np.ndarray:
    """The integer ages an age_histogram stands for, each repeated by its count (the inverse of
    age_histogram: checkpoints store the training labels this way)."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(np.arange(len(counts)), counts)


def smoothing_kernel(kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0) -> np.ndarray:
    """Symmetric window of `ks` (odd) taps, peak 1: exp(-x²/2σ²), the triangle 1 - |x|/(h+1)
    (scipy's `triang(ks)`), or exp(-|x|/σ), for x = -h..h with h = (ks - 1) / 2.

    The reference code builds its Gaussian with gaussian_filter1d on a delta, whose reflected
    tails make the outer taps slightly larger than the sampled Gaussian used here.
    """
    if kernel not in KERNELS:
        raise ValueError(f"LDS/FDS kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    if ks < 1 or ks % 2 == 0:
        raise ValueError(f"kernel size {ks}: expected an odd number >= 1")
    if sigma <= 0:
        raise ValueError(f"kernel sigma {sigma}: expected > 0")
    half = (ks - 1) // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    if kernel == "gaussian":
        return np.exp(-(x**2) / (2 * sigma**2))
    if kernel == "triang":
        return 1 - np.abs(x) / (half + 1)
    return np.exp(-np.abs(x) / sigma)


def smoothed_density(ages: ArrayLike, kernel: str = "gaussian", ks: int = 5,
                     sigma: float = 2.0, sqrt: bool = False) -> np.ndarray:
    """LDS: the per-age label histogram (its square root when `sqrt`) convolved with the kernel,
    zero beyond the ends (the reference's `convolve1d(mode="constant")`). Indexed by age."""
    counts = age_histogram(ages)
    if sqrt:
        counts = np.sqrt(counts)
    return np.convolve(counts, smoothing_kernel(kernel, ks, sigma), mode="same")


def sample_weights(ages: ArrayLike, method: str = "inverse", kernel: str = "gaussian",
                   ks: int = 5, sigma: float = 2.0) -> np.ndarray:
    """Per-sample loss weights from the training labels, normalised to mean 1.

    method: none (all 1) | inverse (1 / n_age) | sqrt_inverse (1 / sqrt(n_age)) | lds (1 / the
    LDS-smoothed count) | sqrt_lds (1 / the smoothed square-root count: the reference code's
    `--reweight sqrt_inv --lds`). n_age counts the training labels of the sample's integer age.
    """
    if method not in REWEIGHTS:
        raise ValueError(f"LOSS.REWEIGHT = {method!r}: expected one of {', '.join(REWEIGHTS)}")
    bins = age_bins(ages)
    if bins.size == 0:
        raise ValueError("no training labels to compute weights from")
    if method == "none":
        return np.ones(bins.size, dtype=np.float32)
    if method in ("inverse", "sqrt_inverse"):
        density = age_histogram(bins)
        if method == "sqrt_inverse":
            density = np.sqrt(density)
    else:
        density = smoothed_density(bins, kernel, ks, sigma, sqrt=method == "sqrt_lds")
    # Every training label's own bin has count >= 1, so its (smoothed) density is > 0.
    weights = 1.0 / density[bins]
    return (weights * (bins.size / weights.sum())).astype(np.float32)


class BalancedSampler(Sampler[int]):
    """`len(weights)` indices drawn with replacement, index i with probability ∝ weights[i]
    (e.g. `sample_weights(ages, "inverse")` for a flat age histogram).

    The draw depends on (seed, epoch) only, so it is reproducible, the same on every rank, and a
    resumed run redraws the epoch it stopped in; call `set_epoch` before each epoch.
    """

    def __init__(self, weights: ArrayLike, seed: int = 0, epoch: int = 0) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.ndim != 1 or not len(self.weights):
            raise ValueError("BalancedSampler needs a non-empty 1-D array of weights")
        if not bool(torch.isfinite(self.weights).all()) or bool((self.weights < 0).any()):
            raise ValueError("BalancedSampler weights must be finite and >= 0")
        self.seed, self.epoch = seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        """This epoch's indices (LongTensor [len(weights)]); EpochBatchSampler can cut it into
        batches in place of its random permutation."""
        # A stream of its own, distinct from the (seed * 100_003 + epoch) shuffle of build.py.
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch, 0xBA1]).generate_state(1)[0]))
        return torch.multinomial(self.weights, len(self.weights), replacement=True,
                                 generator=generator)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())


class FeatureSmoothing(nn.Module):
    """FDS: recalibrates training features with statistics smoothed across neighbouring ages.

    During training, `forward(features, ages)` accumulates each age bin's feature sum and sum
    of squares (from the features as they come in, before recalibration) and, once statistics
    exist, maps every feature of bin b to (f - μ_b) · sqrt(clip(σ̃²_b / σ²_b)) + μ̃_b: whitened
    by the bin's running statistics μ, σ², re-coloured by their kernel-smoothed versions μ̃, σ̃².
    `end_epoch(epoch)` folds the epoch's statistics into the running ones (old weighted by
    `momentum`, as in the reference code) and re-smooths. Identity in eval mode.

    All state is in buffers, so checkpoints (mid-epoch ones included) carry it.
    """

    # Buffers holding the current epoch's sums: under DDP, sum them over ranks before end_epoch
    # (and keep DDP from broadcasting rank 0's copies over them at every forward).
    ACCUMULATORS = ("epoch_count", "epoch_sum", "epoch_sumsq")

    def __init__(self, feature_dim: int, max_age: int = 100, start_epoch: int = 1,
                 momentum: float = 0.9, kernel: str = "gaussian", ks: int = 5,
                 sigma: float = 2.0, clip: tuple[float, float] = (0.1, 10.0)) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"FDS momentum {momentum}: expected a value in [0, 1)")
        bins = max_age + 1
        if (ks - 1) // 2 >= bins:  # reflect padding needs more bins than half the kernel
            raise ValueError(f"FDS kernel size {ks} is too wide for {bins} age bins")
        self.start_epoch, self.momentum, self.clip = start_epoch, momentum, clip
        window = torch.tensor(smoothing_kernel(kernel, ks, sigma), dtype=torch.float32)
        # Sum 1, so smoothing a constant profile leaves it unchanged.
        self.register_buffer("kernel", window / window.sum(), persistent=False)
        self.register_buffer("running_mean", torch.zeros(bins, feature_dim))
        self.register_buffer("running_var", torch.ones(bins, feature_dim))
        self.register_buffer("smoothed_mean", torch.zeros(bins, feature_dim))
        self.register_buffer("smoothed_var", torch.ones(bins, feature_dim))
        self.register_buffer("tracked", torch.zeros(bins, dtype=torch.bool))  # bin has stats
        self.register_buffer("epoch_count", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("epoch_sum", torch.zeros(bins, feature_dim, dtype=torch.float64))
        self.register_buffer("epoch_sumsq", torch.zeros(bins, feature_dim, dtype=torch.float64))

    def _bins(self, ages: Tensor) -> Tensor:
        return ages.detach().floor().clamp(0, len(self.tracked) - 1).long()

    def forward(self, features: Tensor, ages: Tensor) -> Tensor:
        if not self.training:
            return features
        bins = self._bins(ages)
        with torch.no_grad():
            detached = features.detach().double()
            # A diverging batch (skipped by TRAIN.SKIP_NONFINITE) must not poison the sums.
            finite = torch.isfinite(detached).all(dim=1)
            kept, detached = bins[finite], detached[finite]
            self.epoch_count.index_add_(0, kept, torch.ones_like(detached[:, 0]))
            self.epoch_sum.index_add_(0, kept, detached)
            self.epoch_sumsq.index_add_(0, kept, detached.square())
        if not bool(self.tracked.any()):
            return features
        features = features.float()
        scale = (self.smoothed_var[bins] / self.running_var[bins].clamp_min(1e-12)).clamp(
            *self.clip).sqrt()
        calibrated = (features - self.running_mean[bins]) * scale + self.smoothed_mean[bins]
        # Bins never seen in an update (and zero-variance dimensions) pass through unchanged.
        keep = self.tracked[bins, None] & (self.running_var[bins] > 0)
        return torch.where(keep, calibrated, features)

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        """Fold the accumulated epoch statistics into the running ones and re-smooth them, so
        epoch `epoch + 1` is recalibrated; epochs before `start_epoch - 1` only reset the sums.
        """
        if epoch + 1 >= self.start_epoch:
            self._fold_epoch()
        for name in self.ACCUMULATORS:
            getattr(self, name).zero_()

    def _fold_epoch(self) -> None:
        count = self.epoch_count
        seen = count > 0
        if not bool(seen.any()):
            return
        n = count[seen, None]
        mean = self.epoch_sum[seen] / n
        # Unbiased variance, 0 for a bin with a single sample (as the reference code).
        var = ((self.epoch_sumsq[seen] - n * mean.square()) / (n - 1).clamp_min(1)).clamp_min(0)
        old = self.tracked[seen, None].double() * self.momentum  # first update: no history
        self.running_mean[seen] = (old * self.running_mean[seen] + (1 - old) * mean).float()
        self.running_var[seen] = (old * self.running_var[seen] + (1 - old) * var).float()
        self.tracked |= seen
        self.smoothed_mean.copy_(self._smooth(self.running_mean))
        self.smoothed_var.copy_(self._smooth(self.running_var))

    def _smooth(self, stats: Tensor) -> Tensor:
        """Convolve [bins, F] statistics along the bins with the kernel, reflecting at the ends
        (the reference's padding); bins without statistics count with their initial values."""
        half = (len(self.kernel) - 1) // 2
        signal = stats.t()[:, None, :]  # [F, 1, bins]
        if half:
            signal = F.pad(signal, (half, half), mode="reflect")
        return F.conv1d(signal, self.kernel.view(1, 1, -1))[:, 0, :].t()


def shot_counts(train_ages: ArrayLike, ages: ArrayLike) -> np.ndarray:
    """Number of training labels with each label's integer age."""
    bins = age_bins(ages)
    histogram = age_histogram(train_ages, num_bins=int(bins.max(initial=0)) + 1)
    return histogram[bins].astype(np.int64)


def age_shot_groups(train_ages: ArrayLike, ages: ArrayLike) -> np.ndarray:
    """'many' (> 100 training images of that integer age), 'medium' (20..100) or 'few' (< 20)
    for each of `ages`, as in the DIR benchmark of Yang et al. (object array)."""
    counts = shot_counts(train_ages, ages)
    return np.where(counts > MANY_SHOT_MIN, "many",
                    np.where(counts >= FEW_SHOT_MAX, "medium", "few")).astype(object)


def mae_by_shot(df: pd.DataFrame, train_ages: ArrayLike) -> pd.DataFrame:
    """Rows many, medium, few (always all three, n = 0 and NaN errors when empty) with columns
    ``shot, n, mae, bias`` for a predictions frame (columns age, pred)."""
    shots = df.assign(shot=age_shot_groups(train_ages, df["age"].to_numpy(dtype=float)))
    table = mae_by(shots, "shot").set_index("shot").reindex(list(SHOTS))
    table["n"] = table["n"].fillna(0).astype(int)
    return table.rename_axis("shot").reset_index()


def shot_summary(df: pd.DataFrame, train_ages: Sequence[float]) -> dict[str, float]:
    """{'mae_many': .., 'mae_medium': .., 'mae_few': .., 'n_many': .., ...} for metrics.json."""
    table = mae_by_shot(df, train_ages).set_index("shot")
    out: dict[str, float] = {}
    for shot in SHOTS:
        out[f"mae_{shot}"] = float(table.loc[shot, "mae"])
        out[f"n_{shot}"] = int(table.loc[shot, "n"])
    return out
