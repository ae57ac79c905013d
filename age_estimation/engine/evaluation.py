"""Per-image prediction tables: records + model outputs -> a DataFrame (one row per image)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from yacs.config import CfgNode

from age_estimation.data.build import eval_loader
from age_estimation.data.records import Record
from age_estimation.engine.inference import predict_loader
from age_estimation.models.model import AgeModel


def predictions_frame(records: Sequence[Record], outputs: dict[str, np.ndarray]) -> pd.DataFrame:
    """Columns id, path, age, age_std, pred, std, std_aleatoric, std_epistemic, then attributes."""
    rows = [records[i] for i in outputs["index"]]
    frame = pd.DataFrame({
        "id": [r.id for r in rows],
        "path": [r.path for r in rows],
        "age": [r.age for r in rows],
        "age_std": [r.age_std for r in rows],
        **{k: outputs[k] for k in ("pred", "std", "std_aleatoric", "std_epistemic")},
    })
    attributes = pd.DataFrame([r.attrs for r in rows], index=frame.index)
    return pd.concat([frame, attributes], axis=1) if len(attributes.columns) else frame


def predict_records(models: Sequence[AgeModel], cfg: CfgNode, records: Sequence[Record],
                    images: np.ndarray, views: Sequence[str] = ("identity",),
                    mc_samples: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Predict every cached image with the given model(s) and inference options."""
    loader = eval_loader(cfg, list(records), images)
    outputs = predict_loader(models, loader, views, mc_samples, amp=cfg.TRAIN.AMP, device=device)
    return predictions_frame(records, outputs)
