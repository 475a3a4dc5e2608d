"""Atomic, safe saving and loading of model weights.

Weights are written to a temporary file in the target folder (``.NAME.XXXX.tmp``), flushed to
disk and moved into place with ``os.replace``, so a crash or a kill mid-write leaves the previous
file intact. Loading reads the target name only, never a temporary file; temporary files that a
killed writer left behind are removed by the next successful save of the same file. Loading uses
``torch.load(..., weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import pickle
import re
import secrets
import shutil
import stat
import struct
import time
from pathlib import Path

import torch

from .errors import OutputWriteError, RunFolderError
from .limits import check_regular_file, memory_bytes

#: A temporary file of a save untouched for this long belongs to a writer that was killed (a
#: live writer keeps changing its file); the next save of the same target removes it.
STALE_TEMPORARY_S = 60.0


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.*.tmp`` files next to ``path`` not modified for :data:`STALE_TEMPORARY_S`."""
    cutoff = time.time() - STALE_TEMPORARY_S
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to delete
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new temporary file ``.NAME.XXXXXXXX.tmp`` next to ``path``, opened for writing.

    Created with mode 0666 less the user's umask (``tempfile.mkstemp`` would make it 0600), so
    the final file can be read by whoever the user's umask lets read it, e.g. a shared group.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _write_failure(path: Path, exc: BaseException) -> OutputWriteError:
    """One line for a failed write: the disk is full, or the OS/torch reason."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file is larger than allowed",
        }[exc.errno]
    elif not isinstance(exc, OSError):  # torch's zip writer raises RuntimeError
        with contextlib.suppress(OSError):
            if shutil.disk_usage(path.parent).free < 2**20:
                reason = "the disk is full"
    return OutputWriteError(f"cannot write {path}: {reason}; the previous file, if any, is kept")


def _atomic_write(path: Path, write) -> None:
    """Call ``write(handle)`` on a temp file next to ``path``, fsync, then ``os.replace`` it.

    Raises
    ------
    OutputWriteError
        If the folder or the file cannot be written (e.g. a full disk: an ``OSError``, or the
        ``RuntimeError`` of torch's zip writer); ``path`` is then unchanged.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as exc:
        raise _write_failure(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_failure(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    _atomic_write(Path(path), lambda handle: handle.write(payload))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_torch_save(obj: object, path: str | Path) -> None:
    # serialised in memory first: torch's zip writer turns a full disk into an opaque
    # RuntimeError, a plain write keeps the OS's reason (ENOSPC, EFBIG, EDQUOT)
    buffer = io.BytesIO()
    try:
        torch.save(_to_cpu(obj), buffer)
    except (RuntimeError, MemoryError) as exc:
        raise _write_failure(Path(path), exc) from exc
    _atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()))


#: What torch.load raises for a truncated or damaged file (found by loading randomly corrupted
#: and truncated checkpoints: the zip reader and the weights-only unpickler fail in many ways).
_LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    AssertionError,
    ArithmeticError,
    MemoryError,
    struct.error,
)


def _one_line(exc: BaseException) -> str:
    """The gist of a torch loading error in one line, without terminal colour codes.

    torch's refusal to unpickle spans many lines and suggests ``weights_only=False``, which
    would run the file's code; only the reason (``WeightsUnpickler error: ...``) is kept.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = [reason[1]] if reason else [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    sentence = re.match(r"(.*?\.)(?:\s|$)", lines[0])  # the first sentence, without advice
    return sentence[1] if sentence else lines[0]


def _safe_torch_load(path: Path, what: str, max_bytes: int | None = None) -> object:
    """``torch.load(weights_only=True)`` of a regular file of at most ``max_bytes``; a FIFO or a
    device (or a link to one) is refused before it is read."""
    info = check_regular_file(path, what)
    if max_bytes is not None and info.st_size > max_bytes:
        raise RunFolderError(
            f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} that a {what} of "
            "this model can have; it was not read"
        )
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        handle = os.fdopen(fd, "rb")
    except FileNotFoundError:
        raise RunFolderError(f"{what} {path} not found") from None
    except OSError as exc:
        raise RunFolderError(f"cannot open {what} {path} ({exc.strerror or exc})") from exc
    with handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise RunFolderError(f"{what} {path} is not a regular file; it was not read")
        return _torch_load(handle, path, what)


def _torch_load(handle, path: Path, what: str) -> object:
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunFolderError(
            f"{path} is not a plain {what}: it holds pickled objects or code, so it was refused "
            f"({_one_line(exc)})"
        ) from exc
    except _LOAD_ERRORS as exc:
        raise RunFolderError(f"{path} is not a readable {what}: {_one_line(exc)}") from exc


def save_state_dict(state: dict, path: str | Path) -> None:
    """Save a model ``state`` dict (tensors moved to the CPU) to ``path`` atomically."""
    _atomic_torch_save(dict(state), path)


def load_state_dict(path: str | Path, *, max_bytes: int | None = None) -> dict:
    """Load weights saved by :func:`save_state_dict` without running pickled code.

    ``max_bytes`` bounds the file's size (e.g. what the run's config implies), checked before
    anything is read.

    Raises
    ------
    RunFolderError
        If the file is missing, not a regular file, larger than ``max_bytes``, corrupt, or
        carries anything but tensors.
    """
    path = Path(path)
    state = _safe_torch_load(path, "weights file", max_bytes)
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
    memory = memory_bytes()  # weights, optimiser state and best weights: bounded by the memory
    state = _safe_torch_load(path, "training checkpoint", memory // 2 if memory else None)
    required = {
        "epoch",
        "model",
        "optimiser",
        "best_model",
        "best_val_mse",
        "best_epoch",
        "history",
    }
    if not isinstance(state, dict) or not required <= set(state):
        raise RunFolderError(f"{path} is not a training checkpoint (missing fields)")
    problem = _training_state_problem(state)
    if problem:
        raise RunFolderError(f"{path} is not a valid training checkpoint: {problem}")
    return state


#: Fields of one history row of a training checkpoint (those of training.EpochReport).
HISTORY_FIELDS = (
    "epoch",
    "epochs",
    "train_mse",
    "val_mse",
    "seconds",
    "best_epoch",
    "best_val_mse",
)
#: Fields a history row may also have (measured since; absent from older checkpoints).
OPTIONAL_HISTORY_FIELDS = ("val_nmse", "spread")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_weights(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _training_state_problem(state: dict) -> str:
    """What is wrong with the fields of a loaded training state ("" if nothing)."""
    if not _is_int(state["epoch"]) or state["epoch"] < 0:
        return f"epoch is {state['epoch']!r}, not a whole number"
    if not _is_int(state["best_epoch"]) or not _is_number(state["best_val_mse"]):
        return "best_epoch or best_val_mse is not a number"
    if not (_is_weights(state["model"]) and _is_weights(state["best_model"])):
        return "model or best_model is not a dict of weight tensors"
    optimiser = state["optimiser"]
    if not (isinstance(optimiser, dict) and {"state", "param_groups"} <= set(optimiser)):
        return "optimiser is not an optimiser state"
    history = state["history"]
    if not isinstance(history, list) or not all(
        isinstance(row, dict)
        and set(HISTORY_FIELDS) <= set(row) <= set(HISTORY_FIELDS + OPTIONAL_HISTORY_FIELDS)
        and all(_is_number(v) for v in row.values())
        for row in history
    ):
        return f"history is not a list of rows with the fields {', '.join(HISTORY_FIELDS)}"
    return ""
