"""Shared bits of the command-line entry points (train.py, test.py, demo.py, scripts/)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Never reach a model hub at run time unless the user asked for it explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The point estimates of the age that test.py, demo.py and compare_peers.py report (--point):
# the predictive mean, or its median (heads.Prediction.median).
POINT_ESTIMATES = ("mean", "median")


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to a file (appending, so resumed runs keep history)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)
