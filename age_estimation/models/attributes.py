"""Multi-task attributes: one linear classifier per record attribute (gender, race, makeup, ...)
next to the age head, trained with cross-entropy that skips images missing that attribute."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from age_estimation.data.records import Record

MISSING = -1  # label of an image without that attribute (or with a value unseen in training)
_MISSING_VALUES = frozenset({"", "nan", "none", "na", "n/a"})  # case-insensitive


def _present(value: object) -> str | None:
    """The attribute value as a stripped string, or None when it is missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text.lower() in _MISSING_VALUES else text


def _class_order(value: str) -> tuple[int, float, str]:
    """Numeric codes in numeric order ("2" < "10"), then strings alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def attribute_vocab(records: Sequence[Record], names: Sequence[str]) -> dict[str, list[str]]:
    """The classes of each named attribute, as they occur in (training) records: UTKFace gives
    gender ["0", "1"] and race ["0", ..., "4"]; APPA-REAL strings such as "female", "male"."""
    vocab = {}
    for name in names:
        values = {_present(r.attrs.get(name)) for r in records} - {None}
        if not values:
            raise ValueError(f"MODEL.ATTRIBUTES: no training record has attribute {name!r}")
        vocab[name] = sorted(values, key=_class_order)
    return vocab


def encode_attributes(records: Sequence[Record], vocab: Mapping[str, Sequence[str]]) -> Tensor:
    """LongTensor [N, T] of class indices in vocab order; MISSING (-1) where a record lacks the
    attribute or has a value outside the vocabulary (e.g. a test-only class)."""
    index = {name: {c: i for i, c in enumerate(classes)} for name, classes in vocab.items()}
    rows = [[index[name].get(_present(r.attrs.get(name)), MISSING) for name in vocab]
            for r in records]
    return torch.tensor(rows, dtype=torch.long).view(len(records), len(vocab))


class AttributeHeads(nn.Module):
    """One linear classifier per attribute on the pooled features.

    `forward` returns {name: logits [B, classes]}; `loss(logits, labels)` is per image [B]:
    Σ_t weight_t · CE_t over the attributes the image has (label >= 0), so the trainer can add
    it to the per-image age loss (and weight samples) before averaging.
    """

    def __init__(self, in_features: int, vocab: Mapping[str, Sequence[str]],
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.vocab = {name: list(classes) for name, classes in vocab.items()}
        weights = [1.0] * len(self.vocab) if not weights else list(weights)
        if len(weights) != len(self.vocab):
            raise ValueError(f"LOSS.ATTRIBUTE_WEIGHTS has {len(weights)} values for "
                             f"{len(self.vocab)} attributes {list(self.vocab)}")
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32),
                             persistent=False)
        self.classifiers = nn.ModuleDict(
            {name: nn.Linear(in_features, len(classes)) for name, classes in self.vocab.items()})

    @property
    def names(self) -> list[str]:
        return list(self.vocab)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            return {name: layer(features) for name, layer in self.classifiers.items()}

    def loss(self, logits: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """Per-image weighted sum of the attributes' cross-entropies; missing labels add 0."""
        total = torch.zeros(labels.shape[0], device=labels.device)
        for t, name in enumerate(self.vocab):
            target = labels[:, t]
            present = target >= 0
            ce = F.cross_entropy(logits[name], target.clamp_min(0), reduction="none")
            total = total + self.weights[t] * torch.where(present, ce, torch.zeros_like(ce))
        return total

    def predict(self, logits: Mapping[str, Tensor]) -> dict[str, list[str]]:
        """The most likely class of each attribute, as its string value."""
        return {name: [self.vocab[name][i] for i in logits[name].argmax(dim=1).tolist()]
                for name in self.vocab}


def attribute_accuracy(logits: Mapping[str, Tensor], labels: Tensor,
                       names: Sequence[str]) -> dict[str, float]:
    """Top-1 accuracy per attribute over the images that have it (NaN when none has it)."""
    accuracy = {}
    for t, name in enumerate(names):
        present = labels[:, t] >= 0
        hits = logits[name].argmax(dim=1)[present] == labels[present, t]
        accuracy[name] = float(hits.float().mean()) if bool(present.any()) else math.nan
    return accuracy
