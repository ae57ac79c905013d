"""AgeModel = timm backbone -> dropout -> head (see heads.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from age_estimation.data.imbalance import FeatureSmoothing
from age_estimation.models.attributes import AttributeHeads
from age_estimation.models.backbone import create_backbone
from age_estimation.models.heads import HEADS, Prediction


class AgeModel(nn.Module):
    """Takes uint8 (or already float 0..1) RGB batches [B, 3, H, W]; normalises them itself so
    data loaders move compact uint8 tensors and exported models take raw pixels."""

    def __init__(self, cfg: CfgNode,
                 attribute_vocab: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        self.backbone = create_backbone(cfg.MODEL.BACKBONE, cfg.MODEL.PRETRAINED)
        data_cfg = self.backbone.pretrained_cfg
        mean = torch.tensor(data_cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        std = torch.tensor(data_cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean * 255, persistent=False)
        self.register_buffer("pixel_std", std * 255, persistent=False)
        self.dropout = nn.Dropout(cfg.MODEL.DROPOUT)
        # Width of the pooled output: some timm models (MobileNetV3) add a hidden head layer
        # after `num_features`, reported as `head_hidden_size`.
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.head = HEADS[cfg.MODEL.HEAD](width, cfg)
        fds = cfg.MODEL.FDS
        self.fds = FeatureSmoothing(
            width, cfg.MODEL.MAX_AGE, fds.START_EPOCH, fds.MOMENTUM,
            fds.KERNEL, fds.KS, fds.SIGMA) if fds.ENABLED else None
        if cfg.MODEL.ATTRIBUTES and not attribute_vocab:
            raise ValueError("MODEL.ATTRIBUTES needs the attributes' classes (attribute_vocab)")
        self.attributes = AttributeHeads(width, attribute_vocab,
                                         cfg.LOSS.ATTRIBUTE_WEIGHTS) if attribute_vocab else None

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features [B, F] (runs under the caller's autocast, if any)."""
        images = images.float() if images.dtype == torch.uint8 else images * 255.0
        images = (images - self.pixel_mean) / self.pixel_std
        return self.backbone(images)

    def head_outputs(self, features: Tensor) -> Tensor:
        """Dropout + head, always in float32: a bf16 head would round ages to ~0.25 years."""
        with torch.autocast(features.device.type, enabled=False):
            return self.head(self.dropout(features.float()))

    def forward(self, images: Tensor, ages: Tensor | None = None,
                with_attributes: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Head outputs; in training, `ages` feed FDS (when enabled) and `with_attributes`
        also returns the attribute logits (one forward, so DDP sees every parameter used)."""
        features = self.features(images)
        smoothed = features if self.fds is None or ages is None else self.fds(features, ages)
        outputs = self.head_outputs(smoothed)
        if with_attributes:
            return outputs, self.attributes(features)
        return outputs

    def predict(self, images: Tensor) -> Prediction:
        return self.head.predict(self(images))
