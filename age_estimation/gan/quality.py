"""GAN quality without a downloaded network: a Fréchet distance in the pooled-feature space of
the toolkit's own age model (an "FID" whose Inception is an age estimator, so it weighs what
matters for age), the spread of the generated faces in that space against the real faces'
(mode collapse), and how well a teacher's predicted age follows the conditioning age."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from age_estimation.engine.inference import predict_batch
from age_estimation.gan.external import resize_uint8
from age_estimation.models.model import AgeModel


@torch.no_grad()
def age_features(model: AgeModel, images: Tensor | np.ndarray, size: int,
                 batch_size: int = 128, device: str | torch.device = "cpu") -> np.ndarray:
    """Pooled backbone features [N, F] (float64) of uint8 faces, NCHW tensor or NHWC array,
    resized to `size` (the model's MODEL.IMG_SIZE) when needed."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = resize_uint8(images[start:start + batch_size], size).to(device)
        out.append(model.features(batch).double().cpu().numpy())
    return np.concatenate(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, F] and b [M, F]:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S_a S_b)^1/2) = sum of sqrt(eig(S_a^1/2 S_b S_a^1/2)): symmetric PSD, so eigh is stable
    # (scipy's sqrtm of the non-symmetric product returns complex noise on rank-deficient sets).
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


def spread(features: np.ndarray) -> float:
    """Mean Euclidean distance of feature vectors [N, F] to their centroid: how different the
    faces of a set are from one another (a collapsed generator scores far below real faces)."""
    return float(np.linalg.norm(features - features.mean(axis=0), axis=1).mean())


@torch.no_grad()
def predict_ages(model: AgeModel, images: Tensor, size: int, batch_size: int = 128,
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The teacher's predicted age and its std for uint8 NCHW faces (resized to `size`)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        batch = resize_uint8(images[start:start + batch_size], size).to(device)
        prediction = predict_batch(model, batch)
        means.append(prediction.mean.float().cpu().numpy())
        stds.append(prediction.std.float().cpu().numpy())
    return np.concatenate(means), np.concatenate(stds)


def age_fidelity(conditioned: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """How well predicted ages follow the conditioning ages: MAE, Pearson r and the mean bias
    (predicted - conditioned)."""
    conditioned = np.asarray(conditioned, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    r = (float(np.corrcoef(conditioned, predicted)[0, 1])
         if conditioned.std() > 0 and predicted.std() > 0 else float("nan"))
    return {"mae": float(np.abs(predicted - conditioned).mean()), "pearson_r": r,
            "bias": float((predicted - conditioned).mean())}


def label_summary(table: pd.DataFrame) -> dict:
    """What the teacher made of the drawn faces: its ages' mean, quantiles and share per decade,
    and their correlation with the conditioning ages (when the generator is conditional)."""
    ages = table["age"]
    if ages.empty:
        return {"n": 0}
    decades = (ages // 10 * 10).astype(int).value_counts(normalize=True).sort_index()
    summary = {"n": len(ages), "mean": round(float(ages.mean()), 3),
               "quantiles": {f"q{int(q * 100)}": round(float(ages.quantile(q)), 3)
                             for q in (0.05, 0.5, 0.95)},
               "share_by_decade": {f"{d}-{d + 9}": round(float(v), 4)
                                   for d, v in decades.items()}}
    if "conditioned_age" in table and table["conditioned_age"].std() > 0 and ages.std() > 0:
        summary["pearson_r_with_conditioned_age"] = round(
            float(ages.corr(table["conditioned_age"])), 4)
    return summary
