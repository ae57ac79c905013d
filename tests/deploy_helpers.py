"""Shared by the demo / export / bundle tests: a small random-weight checkpoint (no training
needed: they check plumbing and numerical parity, not accuracy) and in-process script loading."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from age_estimation.config import load_config
from age_estimation.models.model import AgeModel

IMG_SIZE = 64
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "utkface_resnet18_dex.yaml"


def write_checkpoint(path: Path, head: str = "dex") -> Path:
    """A ResNet-18 checkpoint in the trainer's format (model, config, epoch, best_mae)."""
    cfg = load_config(str(CONFIG), ["MODEL.IMG_SIZE", str(IMG_SIZE), "MODEL.HEAD", head])
    torch.manual_seed(0)
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
