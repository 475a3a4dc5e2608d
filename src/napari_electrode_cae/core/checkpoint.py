"""Atomic, safe saving and loading of model weights.

Weights are written to a temporary file in the target folder and moved into place with
``os.replace``, so a crash mid-write leaves the previous file intact. Loading uses
``torch.load(..., weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from .errors import RunFolderError


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_state_dict(state: dict, path: str | Path) -> None:
    """Save a model ``state`` dict (tensors moved to the CPU) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_state = {k: v.detach().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(cpu_state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state_dict(path: str | Path) -> dict:
    """Load weights saved by :func:`save_state_dict` without running pickled code.

    Raises
    ------
    RunFolderError
        If the file is missing, corrupt, or carries anything but tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunFolderError(
            f"{path} is not a plain weights file (refused to unpickle it: {exc})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is not a readable weights file: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunFolderError(f"{path} does not hold a dict of weight tensors")
    return state
