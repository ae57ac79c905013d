"""timm backbones with hub or local-file pretrained weights."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn


def create_backbone(name: str, pretrained: str = "none") -> nn.Module:
    """A timm model without its classifier (pooled features out, `num_features` wide).

    pretrained: "none" (random init), "hub" (timm's published weights, needs the network or a
    populated Hugging Face cache), or the path of a local weights file (.pth/.safetensors/.bin)
    in timm's format for that architecture, e.g. a hub file copied by hand to an offline machine.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"MODEL.BACKBONE = {name!r} is not a timm model name")
    if pretrained == "none":
        return timm.create_model(name, pretrained=False, num_classes=0)
    if pretrained == "hub":
        return timm.create_model(name, pretrained=True, num_classes=0)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"MODEL.PRETRAINED = {pretrained!r}: expected none, hub, or an existing weights file")
    # timm loads the file through its own pretrained path, adapting the classifier/stem as usual.
    return timm.create_model(name, pretrained=True, num_classes=0,
                             pretrained_cfg_overlay={"file": str(path)})
