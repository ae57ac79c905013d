"""Age-conditional DCGAN-style generator and discriminator.

Labels are a float tensor [B, 1 + A]: column 0 the age in years, then one class index per
conditioning attribute (MODEL.ATTRIBUTES, in order; -1 = unknown). The generator maps
(z [B, Z_DIM], labels) to images in [-1, 1], [B, 3, R, R]; conditioning enters every block
through conditional batch norm. The discriminator is normalised by spectral norm on every layer
(SN-GAN), by batch norm after its inner convolutions (DCGAN) or not at all, and sees the
condition by projection (inner product of a label embedding with its pooled features) or as
extra input channels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm
from yacs.config import CfgNode


class ConditionEmbedding(nn.Module):
    """labels [B, 1 + A] -> [B, dim]: an embedding of the normalised age (MLP, or `age_bins`
    learnt vectors interpolated linearly) plus one embedding per attribute."""

    def __init__(self, dim: int, max_age: float, age_bins: int,
                 attribute_classes: Sequence[int]) -> None:
        super().__init__()
        self.max_age, self.age_bins = float(max_age), int(age_bins)
        if self.age_bins:
            self.age = nn.Parameter(torch.randn(self.age_bins, dim) * 0.1)
        else:
            self.age_mlp = nn.Sequential(nn.Linear(1, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))
        # One extra row per attribute for "unknown" (index -1). Initialised at the age path's
        # scale: nn.Embedding's N(0, 1) rows made gender and race ~7x louder than 5 vs 95
        # years, and a one-hour run then ignored the age entirely.
        self.attributes = nn.ModuleList(nn.Embedding(k + 1, dim) for k in attribute_classes)
        for embedding in self.attributes:
            nn.init.normal_(embedding.weight, std=0.1)

    def forward(self, labels: Tensor) -> Tensor:
        age = (labels[:, 0] / self.max_age).clamp(0.0, 1.0)
        if self.age_bins:
            position = age * (self.age_bins - 1)
            low = position.floor().long().clamp(max=self.age_bins - 2)
            weight = (position - low).unsqueeze(1)
            out = self.age[low] * (1 - weight) + self.age[low + 1] * weight
        else:
            out = self.age_mlp(age.unsqueeze(1))
        for i, embedding in enumerate(self.attributes):
            index = labels[:, 1 + i].long()
            out = out + embedding(torch.where(index < 0, embedding.num_embeddings - 1, index))
        return out


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are functions of the condition embedding."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)
        # Start as plain BN (gain 1, shift 0) so early training is not dominated by labels.
        for layer in (self.gain, self.bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale = 1 + self.gain(cond)[:, :, None, None]
        return self.norm(x) * scale + self.bias(cond)[:, :, None, None]


class _GeneratorBlock(nn.Module):
    """CBN -> ReLU -> nearest 2x upsampling -> 3x3 conv (no transposed-conv checkerboards)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = ConditionalBatchNorm(c_in, cond_dim)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = F.interpolate(F.relu(self.norm(x, cond)), scale_factor=2.0, mode="nearest")
        return self.conv(x)


def _widths(resolution: int, width: int) -> list[int]:
    """Channels from the 4x4 stage up to `resolution`: width * 2^k, capped at 8 * width."""
    stages = int(math.log2(resolution)) - 2
    return [width * min(8, 2 ** (stages - i)) for i in range(stages + 1)]


def attribute_classes(vocab: dict[str, list[str]], names: Sequence[str]) -> list[int]:
    return [len(vocab[name]) for name in names]


class Generator(nn.Module):
    """(z, labels) -> images in [-1, 1], [B, 3, R, R]."""

    def __init__(self, resolution: int, z_dim: int, width: int, embed_dim: int, max_age: float,
                 age_bins: int, attribute_classes: Sequence[int] = ()) -> None:
        super().__init__()
        self.z_dim, self.resolution = z_dim, resolution
        self.embed = ConditionEmbedding(embed_dim, max_age, age_bins, attribute_classes)
        widths = _widths(resolution, width)
        self.fc = nn.Linear(z_dim + embed_dim, widths[0] * 16)
        self.blocks = nn.ModuleList(_GeneratorBlock(a, b, embed_dim)
                                    for a, b in pairwise(widths))
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        cond = self.embed(labels)
        # shape[0], not len(): a traced export must keep the batch size dynamic.
        x = self.fc(torch.cat([z, cond], dim=1)).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            x = block(x, cond)
        return torch.tanh(self.to_rgb(F.relu(self.out_norm(x))))


class Discriminator(nn.Module):
    """(images in [-1, 1], labels) -> one real/fake logit per image [B]."""

    def __init__(self, resolution: int, width: int, max_age: float, age_bins: int,
                 attribute_classes: Sequence[int] = (), cond: str = "projection",
                 norm: str = "spectral") -> None:
        super().__init__()
        self.cond = cond
        widths = _widths(resolution, width)[::-1]  # R x R (narrow) down to 4 x 4 (wide)
        c_label = 1 + len(attribute_classes) if cond == "input" else 0
        wrap = spectral_norm if norm == "spectral" else (lambda layer: layer)

        def after(channels: int) -> nn.Module:
            # DCGAN's batch norm: never on the input layer, where it would erase colour shifts.
            return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()

        self.from_rgb = wrap(nn.Conv2d(3 + c_label, widths[0], 3, padding=1))
        self.blocks = nn.ModuleList(
            nn.Sequential(wrap(nn.Conv2d(a, b, 3, padding=1)), after(b), nn.LeakyReLU(0.2),
                          wrap(nn.Conv2d(b, b, 4, stride=2, padding=1)), after(b),
                          nn.LeakyReLU(0.2))
            for a, b in pairwise(widths))
        self.linear = wrap(nn.Linear(widths[-1], 1))
        self.embed = (ConditionEmbedding(widths[-1], max_age, age_bins, attribute_classes)
                      if cond == "projection" else None)
        self.max_age = float(max_age)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        x = images
        if self.embed is None:
            # Label maps: normalised age and attribute indices, broadcast over the image.
            maps = torch.cat([labels[:, :1] / self.max_age, labels[:, 1:]], dim=1)
            x = torch.cat([x, maps[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        x = F.leaky_relu(self.from_rgb(x), 0.2)
        for block in self.blocks:
            x = block(x)
        features = x.sum(dim=(2, 3))
        out = self.linear(features).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * features).sum(dim=1)
        return out


def build_networks(cfg: CfgNode, classes: Sequence[int]) -> tuple[Generator, Discriminator]:
    """The generator and discriminator a GAN config describes (`classes`: per attribute)."""
    m = cfg.MODEL
    generator = Generator(m.RESOLUTION, m.Z_DIM, m.G_WIDTH, m.EMBED_DIM, m.MAX_AGE, m.AGE_BINS,
                          classes)
    discriminator = Discriminator(m.RESOLUTION, m.D_WIDTH, m.MAX_AGE, m.AGE_BINS, classes,
                                  m.D_COND, m.D_NORM)
    return generator, discriminator


class EMA:
    """Exponential moving average of a module's weights (buffers such as BN statistics are
    copied): the averaged generator gives visibly smoother, more stable samples."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, source: nn.Module, step: int) -> None:
        """Fold in the weights after update number `step` (0-based). The decay ramps up as
        (1 + step) / (10 + step): a short CPU run of a few thousand steps would otherwise
        average in the random initial weights for its whole length."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, new in zip(self.module.parameters(), source.parameters()):
            ema.lerp_(new.detach(), 1.0 - decay)
        for ema, new in zip(self.module.buffers(), source.buffers()):
            ema.copy_(new)
