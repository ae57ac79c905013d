"""Per-image prediction tables: records + model outputs -> a DataFrame (one row per image),
the attribute heads' predictions, and AdaBN adaptation to the evaluated images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from age_estimation.cli import POINT_ESTIMATES
from age_estimation.data.build import AgeDataset, eval_loader
from age_estimation.data.records import Record
from age_estimation.engine.adabn import adapt_batchnorm, adaptation_split
from age_estimation.engine.inference import (
    PREDICTION_COLUMNS,
    combine,
    predict_attribute_logits,
    predict_loader,
    prediction_columns,
    prediction_from_columns,
)
from age_estimation.hardware import amp_enabled
from age_estimation.models.attributes import attribute_accuracy, encode_attributes
from age_estimation.models.model import AgeModel


def predictions_frame(records: Sequence[Record], outputs: dict[str, np.ndarray],
                      point: str = "mean") -> pd.DataFrame:
    """Columns id, path, age, age_std, pred (the `point` estimate), mean, median, std,
    std_aleatoric, std_epistemic, then the records' attributes."""
    if point not in POINT_ESTIMATES:
        raise ValueError(f"point estimate {point!r}: expected one of {', '.join(POINT_ESTIMATES)}")
    rows = [records[i] for i in outputs["index"]]
    frame = pd.DataFrame({
        "id": [r.id for r in rows],
        "path": [r.path for r in rows],
        "age": [r.age for r in rows],
        "age_std": [r.age_std for r in rows],
        "pred": outputs[point],
        **{k: outputs[k] for k in PREDICTION_COLUMNS},
    })
    attributes = pd.DataFrame([r.attrs for r in rows], index=frame.index)
    return pd.concat([frame, attributes], axis=1) if len(attributes.columns) else frame


def predict_outputs(models: Sequence[AgeModel], cfg: CfgNode, records: Sequence[Record],
                    images: np.ndarray, views: Sequence[str] = ("identity",),
                    mc_samples: int = 0, device: str = "cpu",
                    weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """predict_loader's arrays for every cached image with the given model(s) (mixed with
    `weights`, default equal) and inference options, plus `id` (the records' ids, so that
    outputs of several caches can be matched)."""
    loader = eval_loader(cfg, list(records), images)
    outputs = predict_loader(models, loader, views, mc_samples,
                             amp=amp_enabled(cfg.TRAIN.AMP, device), device=device,
                             weights=weights)
    outputs["id"] = np.array([records[i].id for i in outputs["index"]], dtype=object)
    return outputs


def predict_records(models: Sequence[AgeModel], cfg: CfgNode, records: Sequence[Record],
                    images: np.ndarray, views: Sequence[str] = ("identity",),
                    mc_samples: int = 0, device: str = "cpu", point: str = "mean"
                    ) -> pd.DataFrame:
    """The predictions table of every cached image (see predict_outputs, predictions_frame)."""
    outputs = predict_outputs(models, cfg, records, images, views, mc_samples, device)
    return predictions_frame(records, outputs, point)


def combine_outputs(outputs: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
                    ) -> dict[str, np.ndarray]:
    """One set of predict_outputs arrays from several of the same images (e.g. ensemble members
    at their own input sizes, each the mixture of `weights[i]` members), through `combine`: the
    age distributions are mixed too, so the median is the mixture's."""
    if len(outputs) == 1:
        return outputs[0]
    ids = outputs[0]["id"]
    for other in outputs[1:]:
        if not np.array_equal(other["id"], ids):
            raise ValueError("predictions to combine cover different images (a member's cache "
                             "skipped or reordered some); expected the same ids in one order")
    prediction = combine([prediction_from_columns(o) for o in outputs], weights)
    return {"index": outputs[0]["index"], "id": ids, **prediction_columns(prediction)}


def adapt_to_target(models: Sequence[AgeModel], cfg: CfgNode, records: Sequence[Record],
                    images: np.ndarray, fraction: float = 0.0, seed: int = 0,
                    device: str = "cpu") -> tuple[list[Record], np.ndarray]:
    """AdaBN: re-estimate every model's BatchNorm statistics on the target images (no labels)
    and return the (records, images) to evaluate. `fraction` in (0, 1) adapts on a seeded
    share and returns the rest; 0 adapts on, and returns, all of them."""
    adapt = evaluate = np.arange(len(records))
    if fraction:
        adapt, evaluate = adaptation_split(len(records), fraction, seed)
    # Shuffled: BN's variance is averaged over batches (splits may be age-sorted).
    loader = DataLoader(AgeDataset([records[i] for i in adapt], images[adapt]),
                        batch_size=cfg.TEST.BATCH_SIZE, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for model in models:
        adapt_batchnorm(model, loader, device=device)
    return [records[i] for i in evaluate], images[evaluate]


def predict_attributes(model: AgeModel, cfg: CfgNode, records: Sequence[Record],
                       images: np.ndarray, device: str = "cpu"
                       ) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """The attribute heads' predictions, as `pred_<name>` columns in record order, and their
    top-1 accuracy {name: {"accuracy", "n"}} over the images whose label is a training class."""
    index, logits = predict_attribute_logits(model, eval_loader(cfg, list(records), images),
                                             amp=amp_enabled(cfg.TRAIN.AMP, device), device=device)
    order = np.argsort(index)
    logits = {name: values[order] for name, values in logits.items()}
    vocab = model.attributes.vocab
    labels = encode_attributes(records, vocab)
    accuracy = attribute_accuracy(logits, labels, list(vocab))
    summary = {name: {"accuracy": accuracy[name], "n": int((labels[:, t] >= 0).sum())}
               for t, name in enumerate(vocab)}
    columns = pd.DataFrame({f"pred_{name}": values
                            for name, values in model.attributes.predict(logits).items()})
    return columns, summary
