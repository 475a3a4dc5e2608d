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


def _atomic_torch_save(obj: object, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(_to_cpu(obj), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe_torch_load(path: Path, what: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunFolderError(f"{what} {path} not found") from None
    except pickle.UnpicklingError as exc:
        raise RunFolderError(
            f"{path} is not a plain {what} (refused to unpickle it: {exc})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is not a readable {what}: {exc}") from exc


def save_state_dict(state: dict, path: str | Path) -> None:
    """Save a model ``state`` dict (tensors moved to the CPU) to ``path`` atomically."""
    _atomic_torch_save(dict(state), path)


def load_state_dict(path: str | Path) -> dict:
    """Load weights saved by :func:`save_state_dict` without running pickled code.

    Raises
    ------
    RunFolderError
        If the file is missing, corrupt, or carries anything but tensors.
    """
    path = Path(path)
    state = _safe_torch_load(path, "weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunFolderError(f"{path} does not hold a dict of weight tensors")
    return state


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_training_state(path: str | Path, state: dict) -> None:
    """Save a resumable training state (tensors, numbers, lists, dicts) atomically."""
    _atomic_torch_save(state, path)


def load_training_state(path: str | Path) -> dict:
    """Load a state written by :func:`save_training_state` (``weights_only=True``).

    Raises
    ------
    RunFolderError
        If the file is missing, corrupt, carries pickled code or lacks a field.
    """
    path = Path(path)
    state = _safe_torch_load(path, "training checkpoint")
    required = {"epoch", "model", "optimiser", "best_model", "best_val_mse", "best_epoch",
                "history"}
    if not isinstance(state, dict) or not required <= set(state):
        raise RunFolderError(f"{path} is not a training checkpoint (missing fields)")
    return state
