"""Shared pytest fixtures: where the real datasets are, and skipping when they are absent."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from age_estimation.data.datasets import default_data_dir

# Tests must never try to download model weights (set before any test imports timm / the hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder ($AGE_ESTIMATION_DATA, else ../shared/data from the repo root)."""
    return default_data_dir()


@pytest.fixture(scope="session")
def real_dataset(data_root: Path) -> Callable[[str], Path]:
    """`real_dataset("utkface")` → the dataset's folder, or skip the test when it is absent."""

    def find(name: str) -> Path:
        folder = data_root / name
        if not folder.is_dir():
            pytest.skip(f"real data not found at {folder}; set AGE_ESTIMATION_DATA")
        return folder

    return find
