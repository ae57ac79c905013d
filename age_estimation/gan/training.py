"""One GAN training step, DiffAugment, losses, sample grids, and the checkpoint contents.

Every random draw of a step (batch order, flips, latents, augmentation) comes from generators
seeded by (TRAIN.SEED, step), so a resumed run repeats an uninterrupted one's data and noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode

from age_estimation.data.build import EpochBatchSampler
from age_estimation.data.records import Record
from age_estimation.gan.models import EMA, attribute_classes, build_networks
from age_estimation.hardware import amp_enabled
from age_estimation.models.attributes import attribute_vocab, encode_attributes

DECADE_AGES = tuple(range(5, 100, 10))  # rows of a sample grid: 5, 15, ..., 95 years


def diff_augment(images: Tensor, policy: str, generator: torch.Generator) -> Tensor:
    """Differentiable translation (up to 1/8 of the size, zero fill) and colour (brightness,
    saturation, contrast) jitter, the same ops for real and fake images (Zhao et al. 2020)."""
    b, _, h, w = images.shape

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator).to(images.device, images.dtype)

    if "color" in policy:
        images = images + (rand(b, 1, 1, 1) - 0.5)
        mean = images.mean(dim=1, keepdim=True)
        images = (images - mean) * (rand(b, 1, 1, 1) * 2) + mean
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * (rand(b, 1, 1, 1) + 0.5) + mean
    if "translation" in policy:
        shift = max(1, round(h / 8))
        ty, tx = (torch.randint(-shift, shift + 1, (2, b, 1, 1), generator=generator)
                  .to(images.device))
        rows = (torch.arange(h, device=images.device).view(1, h, 1) + ty + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=images.device).view(1, 1, w) + tx + 1).clamp(0, w + 1)
        padded = F.pad(images, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # zero border for the fill
        batch = torch.arange(b, device=images.device).view(b, 1, 1)
        images = padded[batch, rows, cols].permute(0, 3, 1, 2)
    return images


def d_loss(real: Tensor, fake: Tensor, kind: str) -> Tensor:
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss(fake: Tensor, kind: str) -> Tensor:
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def gan_labels(records: list[Record], attributes: list[str]) -> tuple[np.ndarray, dict]:
    """Label matrix [N, 1 + A] (age, attribute class indices; -1 unknown) and the vocabulary."""
    vocab = attribute_vocab(records, attributes)
    ages = np.array([[r.age] for r in records], dtype=np.float32).reshape(-1, 1)
    classes = encode_attributes(records, vocab).numpy().astype(np.float32)
    return np.concatenate([ages, classes], axis=1), vocab


def to_signed(images: Tensor) -> Tensor:
    """uint8 NCHW -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


class GanTrainer:
    """Networks, optimisers and EMA of one GAN run over in-memory uint8 faces [N, R, R, 3]."""

    def __init__(self, cfg: CfgNode, images: np.ndarray, labels: np.ndarray, vocab: dict,
                 device: str | torch.device = "cpu") -> None:
        if images.shape[1:] != (cfg.MODEL.RESOLUTION, cfg.MODEL.RESOLUTION, 3):
            raise ValueError(f"images are {images.shape[1:]}, the config wants "
                             f"{cfg.MODEL.RESOLUTION} px RGB")
        self.cfg, self.images, self.labels, self.vocab = cfg, images, labels, vocab
        self.device = torch.device(device)
        torch.manual_seed(cfg.TRAIN.SEED)
        classes = attribute_classes(vocab, cfg.MODEL.ATTRIBUTES)
        self.generator, self.discriminator = (net.to(self.device)
                                              for net in build_networks(cfg, classes))
        self.ema = EMA(self.generator, cfg.TRAIN.EMA_DECAY)
        betas = tuple(cfg.TRAIN.BETAS)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), cfg.TRAIN.LR_G, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), cfg.TRAIN.LR_D,
                                      betas=betas)
        self.batch_size = min(cfg.TRAIN.BATCH_SIZE, len(images))
        self.steps_per_epoch = max(1, len(images) // self.batch_size)
        self.step = 0
        # Never on the CPU: even with native bf16 it was slower there for these small convs.
        self.amp = self.device.type == "cuda" and amp_enabled(cfg.TRAIN.AMP, self.device)

    def _real_batch(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step `step`'s real faces (the shuffled epoch order of the age models' sampler)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        sampler = EpochBatchSampler(len(self.images), self.batch_size, self.cfg.TRAIN.SEED,
                                    epoch, within + 1, start=within)
        index = np.sort(next(iter(sampler)))  # sorted: memmap reads in file order
        images = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(0, 3, 1, 2)
        if self.cfg.DATA.FLIP:
            flip = torch.rand(len(index), generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return (to_signed(images.to(self.device)),
                torch.from_numpy(self.labels[index]).to(self.device))

    def train_step(self) -> dict[str, float]:
        """D_STEPS discriminator updates and one generator update; returns the losses."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.TRAIN.SEED * 1_000_003 + self.step)
        policy = cfg.TRAIN.DIFFAUG

        def augment(x: Tensor) -> Tensor:
            return diff_augment(x, policy, generator) if policy else x

        def latents(n: int) -> Tensor:
            return torch.randn(n, cfg.MODEL.Z_DIM, generator=generator).to(self.device)

        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)
        for k in range(cfg.TRAIN.D_STEPS):
            real, labels = self._real_batch(self.step * cfg.TRAIN.D_STEPS + k, generator)
            with autocast:
                with torch.no_grad():
                    fake = self.generator(latents(len(real)), labels)
                loss_d = d_loss(self.discriminator(augment(real), labels).float(),
                                self.discriminator(augment(fake), labels).float(),
                                cfg.TRAIN.LOSS)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        # The generator is asked for the last real batch's labels: fake labels then follow the
        # data's joint distribution of age and attributes.
        with autocast:
            fake = self.generator(latents(len(labels)), labels)
            loss_g = g_loss(self.discriminator(augment(fake), labels).float(), cfg.TRAIN.LOSS)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.ema.update(self.generator, self.step)
        self.step += 1
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    def metadata(self) -> dict[str, Any]:
        """What a sampler needs besides the weights (plain data, stored in checkpoints and
        TorchScript exports): latent size, label columns, vocabulary, the training ages."""
        ages = np.clip(np.round(self.labels[:, 0]), 0, 130).astype(int)
        attribute_counts = []
        for i, name in enumerate(self.cfg.MODEL.ATTRIBUTES):
            known = self.labels[:, 1 + i][self.labels[:, 1 + i] >= 0].astype(int)
            attribute_counts.append(np.bincount(known, minlength=len(self.vocab[name])).tolist())
        return {"z_dim": self.cfg.MODEL.Z_DIM, "resolution": self.cfg.MODEL.RESOLUTION,
                "label_columns": ["age", *self.cfg.MODEL.ATTRIBUTES], "vocab": self.vocab,
                "age_counts": np.bincount(ages, minlength=131).tolist(),
                "attribute_counts": attribute_counts}

    def state_dict(self) -> dict[str, Any]:
        """weights_only-safe checkpoint contents; `model` is the EMA generator (what samples)."""
        return {"model": self.ema.module.state_dict(),
                "generator": self.generator.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "step": self.step, "config": self.cfg.dump(), "kind": "gan",
                "meta": self.metadata()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["model"])
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])

    @torch.no_grad()
    def sample_grid(self, per_decade: int) -> np.ndarray:
        """uint8 HxWx3 grid from the EMA generator: one row per age decade (5, 15, ..., 95),
        the same `per_decade` latents in every row, attributes drawn as in the data."""
        generator = torch.Generator().manual_seed(self.cfg.TRAIN.SEED)
        z = torch.randn(per_decade, self.cfg.MODEL.Z_DIM, generator=generator)
        picks = torch.randint(len(self.labels), (per_decade,), generator=generator).numpy()
        base = torch.from_numpy(self.labels[picks])
        rows = []
        for age in DECADE_AGES:
            labels = base.clone()
            labels[:, 0] = age
            rows.append(self.ema.module(z.to(self.device), labels.to(self.device)).float().cpu())
        return make_grid(torch.cat(rows), per_decade)


def make_grid(images: Tensor, columns: int) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> one uint8 HxWx3 image, `columns` per row, 2 px gaps."""
    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(pixels):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = image
    return grid
