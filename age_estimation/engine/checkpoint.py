"""Atomic checkpoint writes and safe (weights_only) loads."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from yacs.config import CfgNode

from age_estimation.config import config_from_string


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded safely or is not one of this toolkit's."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a kill at
    any moment leaves either the previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only, so a crafted file
    cannot run code while loading; anything else is refused with a clear message."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        with open(path, "rb") as handle:
            head = handle.read(2)
        # torch.save writes a zip (PK); before that format, a bare pickle (protocol byte 0x80).
        if head != b"PK" and head[:1] != b"\x80":
            raise CheckpointError(f"{path} is not a readable checkpoint: neither a torch.save "
                                  f"file nor a pickle (corrupt, or another kind of file)") from err
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, and "
            f"loading it could run arbitrary code (torch.load weights_only=True said: "
            f"{str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an age_estimation checkpoint (no model/config)")
    return state


def load_model(path: str | Path) -> tuple[torch.nn.Module, CfgNode]:
    """The model (eval mode, float32) and config stored in a checkpoint."""
    from age_estimation.models.model import AgeModel

    state = load_checkpoint(path)
    cfg = config_from_string(state["config"])
    if cfg.MODEL.PRETRAINED != "none":
        # The checkpoint carries all weights: never fetch or read the initial ones again.
        cfg.defrost()
        cfg.MODEL.PRETRAINED = "none"
        cfg.freeze()
    model = AgeModel(cfg, state.get("attribute_vocab"))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    model.eval()
    return model, cfg
