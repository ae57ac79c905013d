"""Test helpers: a tiny csv dataset written on the fly, a small random-weight checkpoint (no
training needed where tests check plumbing and numerical parity, not accuracy) and in-process
script loading."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from age_estimation.config import load_config
from age_estimation.models.model import AgeModel

IMG_SIZE = 64
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "utkface_resnet18_dex.yaml"


def write_csv_dataset(root: Path, splits: dict[str, int], size: int = 48, seed: int = 0,
                      gender: bool = False) -> Path:
    """`splits` images per split (e.g. {"train": 16, "valid": 4}) whose brightness encodes the
    age (noisy), as a `csv` dataset: root/*.png + root/labels.csv; returns the CSV's path."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in splits.items():
        for _ in range(count):
            i = len(rows)
            age = float(rng.integers(5, 80))
            image = np.clip(rng.normal(age * 3, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"face{i}.png"), image)
            rows.append({"path": f"face{i}.png", "age": age, "split": split,
                         **({"gender": ("f", "m")[i % 2]} if gender else {})})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def write_checkpoint(path: Path, head: str = "dex", size: int = IMG_SIZE, seed: int = 0) -> Path:
    """A ResNet-18 checkpoint in the trainer's format (model, config, epoch, best_mae)."""
    cfg = load_config(str(CONFIG), ["MODEL.IMG_SIZE", str(size), "MODEL.HEAD", head])
    torch.manual_seed(seed)
    model = AgeModel(cfg)
    # Default init gives a near-uniform softmax (every face ~50 years): spread the head's
    # weights so the outputs depend on the image and a parity test can tell images apart.
    with torch.no_grad():
        model.head.fc.weight.normal_(0.0, 1.0)
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "epoch": 2,
                "best_mae": 12.5}, path)
    return path


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module, so tests call its main(argv) without a new interpreter
    (each one re-imports torch: seconds per call on a busy machine)."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Batches of a few 64 px faces gain nothing from intra-op threads, and with 2 cores shared
    with a training job torch's spinning worker threads made each forward pass ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
