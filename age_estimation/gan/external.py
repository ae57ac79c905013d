"""Generators as image sources: the toolkit's own GAN checkpoints and external TorchScript ones.

An external generator is any TorchScript module (saved with `torch.jit.save`) with

    forward(z: Tensor[B, Z]) -> images                       # unconditional, or
    forward(z: Tensor[B, Z], labels: Tensor[B, 1 + A]) -> images   # conditional

* z: float32 standard normal latents;
* labels: float32; column 0 the wanted age in years, then one class index per conditioning
  attribute (e.g. gender, race; -1 = unknown);
* images: RGB, NCHW [B, 3, H, W], square, either float in [-1, 1] or uint8 in 0..255.

Optional metadata travels inside the archive as the extra file `age_estimation_gan.json`
(`torch.jit.save(module, path, _extra_files={"age_estimation_gan.json": json_text})`):
`{"z_dim": int, "label_columns": ["age", ...], "vocab": {attr: [classes]}, "age_counts":
[count of age 0, 1, ...], "attribute_counts": [[...] per attribute], "resolution": int,
"training": {"generator_steps": int, "generator_minutes": float}}`.
`label_columns` present means conditional. Without the file, pass `z_dim` (and `conditional`)
to `load_generator`. `scripts/export_gan.py` writes the toolkit's EMA generator this way.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint

META_FILE = "age_estimation_gan.json"
FALLBACK_AGES = (1, 90)  # ages drawn uniformly when a generator does not say what it learnt


def to_uint8(images: Tensor) -> Tensor:
    """A generator's output as uint8 NCHW faces (float [-1, 1] is mapped to 0..255)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"a generator must return RGB NCHW images [B, 3, H, W], got "
                         f"{tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """uint8 NCHW faces at `size` px (antialiased when shrinking; no-op at the same size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < images.shape[-1])
    return out.round().clamp(0, 255).to(torch.uint8)


@dataclass
class SyntheticFaces:
    """A loaded generator plus what is needed to ask it for faces of given ages."""

    module: torch.nn.Module
    z_dim: int
    label_columns: list[str] = field(default_factory=list)  # empty: unconditional
    vocab: dict[str, list[str]] = field(default_factory=dict)
    age_counts: list[int] = field(default_factory=list)
    attribute_counts: list[list[int]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # How far it was trained ({"generator_steps", "generator_minutes"}), where it says.
    training: dict[str, float] = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return bool(self.label_columns)

    def draw_ages(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Ages distributed as in the generator's training data (uniform when unknown)."""
        if self.age_counts and sum(self.age_counts):
            p = np.asarray(self.age_counts, dtype=np.float64)
            return rng.choice(len(p), size=n, p=p / p.sum()).astype(np.float32)
        return rng.integers(FALLBACK_AGES[0], FALLBACK_AGES[1] + 1, n).astype(np.float32)

    def labels_for(self, ages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[N, 1 + A] labels: the ages, then attributes drawn from the training frequencies."""
        columns = [np.asarray(ages, dtype=np.float32)]
        for i, name in enumerate(self.label_columns[1:]):
            counts = np.asarray(self.attribute_counts[i] if i < len(self.attribute_counts)
                                else np.ones(len(self.vocab[name])), dtype=np.float64)
            columns.append(rng.choice(len(counts), size=len(ages), p=counts / counts.sum())
                           .astype(np.float32))
        return np.stack(columns, axis=1)

    @torch.no_grad()
    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """uint8 NCHW faces for latents `z` (and labels, when conditional)."""
        z = z.to(self.device)
        if self.conditional:
            if labels is None:
                raise ValueError("this generator is conditional: give labels [B, 1 + A]")
            out = self.module(z, labels.to(self.device, torch.float32))
        else:
            out = self.module(z)
        return to_uint8(out).cpu()


def is_torchscript(path: str | Path) -> bool:
    """TorchScript archives hold compiled code (`*/code/...`); torch.save files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _from_meta(module: torch.nn.Module, meta: dict[str, Any], device: torch.device,
               z_dim: int | None, conditional: bool | None) -> SyntheticFaces:
    z_dim = z_dim or meta.get("z_dim")
    if not z_dim:
        raise ValueError(f"the generator does not say its latent size ({META_FILE} missing): "
                         f"pass z_dim")
    columns = list(meta.get("label_columns") or (["age"] if conditional else []))
    if conditional is False:
        columns = []
    return SyntheticFaces(module.to(device).eval(), int(z_dim), columns, meta.get("vocab", {}),
                          meta.get("age_counts", []), meta.get("attribute_counts", []), device,
                          meta.get("training", {}))


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   z_dim: int | None = None, conditional: bool | None = None) -> SyntheticFaces:
    """A GAN checkpoint of scripts/train_gan.py (its EMA generator) or a TorchScript file."""
    device = torch.device(device)
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if path.is_file() and is_torchscript(path):
        extra = {META_FILE: ""}
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        meta = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
        return _from_meta(module, meta, device, z_dim, conditional)
    module, meta = generator_from_checkpoint(path)
    return _from_meta(module, meta, device, z_dim, conditional)


def generator_from_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The EMA generator (eval mode) and metadata of a scripts/train_gan.py checkpoint."""
    from age_estimation.gan.defaults import gan_config_from_string
    from age_estimation.gan.models import attribute_classes, build_networks

    state = load_checkpoint(path)
    if state.get("kind") != "gan":
        raise CheckpointError(f"{path} is not a GAN checkpoint of scripts/train_gan.py")
    cfg = gan_config_from_string(state["config"])
    meta = state["meta"]
    generator, _ = build_networks(cfg, attribute_classes(meta["vocab"], cfg.MODEL.ATTRIBUTES))
    generator.load_state_dict(state["model"])
    meta = {**meta, "training": {"generator_steps": int(state["step"]),
                                 "generator_minutes": round(state.get("elapsed_s", 0.0) / 60, 1)}}
    return generator.eval(), meta


def export_torchscript(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a GAN checkpoint's EMA generator as a TorchScript file with its metadata."""
    generator, meta = generator_from_checkpoint(checkpoint)
    z = torch.zeros(2, meta["z_dim"])
    labels = torch.zeros(2, len(meta["label_columns"]))
    labels[:, 0] = 30.0
    with torch.no_grad():
        traced = torch.jit.trace(generator, (z, labels))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out), _extra_files={META_FILE: json.dumps(meta)})
    return out
