"""Run-folder ownership and locking: the tool never deletes or overwrites what it did not write.

A run folder carries a marker, ``.electrode-cae-run.json``, written when the tool creates or
claims the folder; it records the folder's state (``training``, ``saving``, ``complete``). A
folder is the tool's own if it has the marker, or a ``config.json`` of a run (folders written
before the marker existed), or only the checkpoints of a training. A non-empty folder that is
none of these is refused. A run folder whose first save did not complete (state ``training`` or
``saving``, never ``completed``) is refused by :func:`.runs.load_run`.

While a process writes a run folder it holds an exclusive lock on ``.electrode-cae.lock``
(``flock`` on POSIX, ``msvcrt.locking`` on Windows; released by the kernel when the process dies,
so a killed run never leaves a stale lock). A second process refuses with one line.

Resuming compares the settings recorded in ``last.pt`` (see :func:`run_settings`) with the ones
given, and refuses naming the first field that differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import RunFolderBusyError, RunFolderError
from .limits import read_bounded_text

MARKER = ".electrode-cae-run.json"
LOCK = ".electrode-cae.lock"
MARKER_FORMAT = "napari-electrode-cae run folder"
RUN_FORMAT = "napari-electrode-cae run"  # config.json's "format" (see runs.RUN_FORMAT)
STATES = ("training", "saving", "complete")
#: Files and folders the tool writes into a run folder; ``--overwrite`` removes only these.
OWN_FILES = (
    "config.json",
    "weights.pt",
    "history.csv",
    "latents.csv",
    "report.json",
    "report.md",
    "best.pt",
    "last.pt",
    "metrics.csv",
    "physics.json",
    "physics.md",
    "correlations.csv",
    "prediction.json",
)
OWN_FOLDERS = ("stacks",)
HIDDEN_OWN = (MARKER, LOCK)


def read_marker(run_dir: str | Path) -> dict | None:
    """The run folder's marker as a dict, or None if it has none (or an unreadable one)."""
    path = Path(run_dir) / MARKER
    if not path.exists() and not path.is_symlink():
        return None
    try:
        marker = json.loads(read_bounded_text(path, "run folder marker", max_bytes=2**16))
    except (RunFolderError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    return marker


def write_marker(run_dir: str | Path, state: str, **extra) -> None:
    """Record that the tool owns ``run_dir`` and its ``state`` (one of :data:`STATES`)."""
    from .checkpoint import atomic_write_text

    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    previous = read_marker(run_dir) or {}
    marker = {**previous, **extra, "format": MARKER_FORMAT, "state": state}
    if state == "complete":  # a later re-save that is cut short leaves a loadable mix
        marker["completed"] = True
    atomic_write_text(Path(run_dir) / MARKER, json.dumps(marker, indent=1))


def _has_run_config(run_dir: Path) -> bool:
    path = run_dir / "config.json"
    try:
        config = json.loads(read_bounded_text(path, "config", max_bytes=2**26))
    except (RunFolderError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == RUN_FORMAT


def _has_only_training_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but checkpoints of this tool's training (``train(...,
    checkpoint_dir=)`` from Python or the GUI): a ``last.pt`` that loads as one.

    Raises :class:`RunFolderError` saying why, if its ``last.pt`` does not load."""
    from .checkpoint import load_training_state

    entries = set(_entries(run_dir)) - set(HIDDEN_OWN)
    if "last.pt" not in entries or not entries <= {"last.pt", "best.pt"}:
        return False
    try:
        load_training_state(run_dir / "last.pt")
    except RunFolderError as exc:
        raise RunFolderError(
            f"{run_dir} holds a last.pt that is not a checkpoint of this tool "
            f"({exc}); nothing was written"
        ) from exc
    return True


def is_own_folder(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a run folder of this tool: its marker, a run's config.json, or
    only the checkpoints of a training of this tool (a ``last.pt`` that loads as one)."""
    run_dir = Path(run_dir)
    return (
        read_marker(run_dir) is not None
        or _has_run_config(run_dir)
        or _has_only_training_checkpoints(run_dir)
    )


def _entries(run_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in run_dir.iterdir())
    except OSError as exc:
        raise RunFolderError(f"cannot list {run_dir} ({exc.strerror or exc})") from exc


def check_output_folder(run_dir: str | Path, *, what: str = "--out") -> str:
    """Whether ``run_dir`` may receive a run: ``"new"`` (missing or empty) or ``"own"`` (a run
    folder of this tool).

    Raises
    ------
    RunFolderError
        If ``run_dir`` is a file, or a non-empty folder that this tool did not write.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{what} {run_dir} is a file, not a folder; choose a folder")
    if not run_dir.exists():
        return "new"
    entries = [e for e in _entries(run_dir) if e != LOCK]
    if not entries:
        return "new"
    if is_own_folder(run_dir):
        return "own"
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    raise RunFolderError(
        f"{what} {run_dir} is not empty and not a run folder of this tool ({len(entries)} "
        f"entr{'ies' if len(entries) > 1 else 'y'}: {shown}); nothing was written: choose a "
        "new or empty folder"
    )


def remove_own_files(run_dir: str | Path) -> list[str]:
    """Delete the files this tool writes in a run folder of its own (see :data:`OWN_FILES`);
    anything else stays. Returns the names removed."""
    run_dir = Path(run_dir)
    if not is_own_folder(run_dir):
        raise RunFolderError(f"{run_dir} is not a run folder of this tool; nothing was removed")
    removed = []
    for name in OWN_FILES:
        path = run_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    for folder in OWN_FOLDERS:  # only the stack copies the tool wrote (NN_name.tif)
        path = run_dir / folder
        if path.is_dir() and not path.is_symlink():
            for child in path.glob("[0-9][0-9]_*.tif"):
                if child.is_file():
                    child.unlink()
                    removed.append(f"{folder}/{child.name}")
            with contextlib.suppress(OSError):
                path.rmdir()  # only if nothing else is left in it
    return removed


class RunFolderLock:
    """An exclusive, non-blocking lock on a run folder, held until :meth:`release`.

    Use as a context manager. The lock is advisory and per open file: a second lock on the same
    folder fails even within one process.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        path = self.run_dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise RunFolderError(
                f"cannot lock run folder {self.run_dir} ({exc.strerror or exc})"
            ) from exc
        try:
            _lock_fd(fd)
        except OSError:
            os.close(fd)
            marker = read_marker(self.run_dir) or {}
            pid = marker.get("pid")
            raise RunFolderBusyError(
                f"run folder {self.run_dir} is in use by another electrode-cae process"
                + (f" (pid {pid})" if isinstance(pid, int) else "")
                + "; wait for it to finish or choose another folder"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                _unlock_fd(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def lock_existing(run_dir: str | Path) -> RunFolderLock:
    """Lock an existing run folder of this tool for writing (evaluate, physics): a context
    manager. A folder that is not the tool's own is not touched (no lock file is made in it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not is_own_folder(run_dir):
        raise RunFolderError(
            f"{run_dir} is not a run folder of this tool (no config.json of a "
            "run); nothing was written"
        )
    return RunFolderLock(run_dir)


@contextlib.contextmanager
def claim_for_training(
    run_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> Iterator[str]:
    """Check, lock and mark ``run_dir`` for a training run; yields what it found.

    Yields ``"new"`` (a new or empty folder), ``"resume"`` (an interrupted run with a
    ``last.pt``, and ``resume`` given) or ``"replace"`` (a run of this tool, ``overwrite`` given:
    its own files were removed, nothing else).

    Raises
    ------
    RunFolderError
        If the folder holds files this tool did not write; holds a finished run (without
        ``overwrite``); holds an interrupted run and neither ``resume`` nor ``overwrite`` is
        given; or ``resume`` is given for a finished run.
    RunFolderBusyError
        If another process holds the folder.
    """
    run_dir = Path(run_dir)
    check_output_folder(run_dir)  # before the folder is made or locked: nothing written
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create {run_dir} ({exc.strerror or exc})") from exc
    try:
        with RunFolderLock(run_dir):
            yield from _claimed(run_dir, resume, overwrite)
    finally:
        _remove_if_unused(run_dir, created)


def _remove_if_unused(run_dir: Path, created: bool) -> None:
    """Remove the marker and lock of a run that wrote nothing else (it failed or was stopped
    before its first epoch), and the folder if this claim created it."""
    with contextlib.suppress(OSError):
        if set(_entries(run_dir)) <= set(HIDDEN_OWN):
            for name in HIDDEN_OWN:
                (run_dir / name).unlink(missing_ok=True)
            if created:
                run_dir.rmdir()


def _claimed(run_dir: Path, resume: bool, overwrite: bool) -> Iterator[str]:
    """The body of :func:`claim_for_training`, with the lock held."""
    found = check_output_folder(run_dir)  # again, now that no one else can change it
    outcome = "new"
    if found == "own":
        marker = read_marker(run_dir) or {}
        interrupted = (run_dir / "last.pt").exists()
        finished = (
            not interrupted
            and (run_dir / "config.json").exists()
            and marker.get("state", "complete") == "complete"
        )
        if resume and interrupted:
            outcome = "resume"
        elif overwrite:
            remove_own_files(run_dir)
            outcome = "replace"
        elif resume and finished:
            raise RunFolderError(
                f"{run_dir} holds a finished run: there is nothing to resume (its last.pt is "
                "removed when a run finishes); train into a new folder, or pass --overwrite "
                "to replace it"
            )
        elif finished:
            raise RunFolderError(
                f"{run_dir} already holds a finished run; nothing was written: choose a new "
                "folder, or pass --overwrite to replace it"
            )
        elif interrupted:
            raise RunFolderError(
                f"{run_dir} holds an interrupted run (last.pt); nothing was written: "
                "continue it with --resume, or pass --overwrite to start again"
            )
        else:
            remove_own_files(run_dir)  # a run that ended before its first epoch
    write_marker(run_dir, "training", pid=os.getpid(), completed=False)
    yield outcome


# ----------------------------------------------------------------------------------------------
# What a run was trained with, to compare on resume
# ----------------------------------------------------------------------------------------------

#: Training settings that may change when a run is resumed (they do not change what is learnt,
#: or, for epochs, are checked separately).
RESUMABLE_CHANGES = ("device", "precision", "epochs")


def stack_fingerprint(labels: np.ndarray) -> str:
    """A digest of a stack's phase ids and shape (at most 64 evenly spaced slices are hashed)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr(tuple(int(n) for n in labels.shape)).encode())
    step = max(1, -(-labels.shape[0] // 64))
    for z in range(0, labels.shape[0], step):
        digest.update(np.ascontiguousarray(labels[z]).tobytes())
    return digest.hexdigest()


def _index_digest(indices: Sequence[int]) -> str:
    return hashlib.blake2b(
        np.asarray(indices, dtype=np.int64).tobytes(), digest_size=12
    ).hexdigest()


def run_settings(model_config, data, config, train_idx, val_idx) -> dict:
    """What a training run is, for a resume to compare: model, windows, training settings (less
    :data:`RESUMABLE_CHANGES`), the stacks' contents and the split."""
    spec = data.spec
    return {
        "model": model_config.to_dict(),
        "window": {
            "length": spec.length,
            "stride": spec.stride,
            "crop": spec.crop,
            "tile_stride": spec.tile_stride,
        },
        "train": {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES},
        "stacks": [
            {
                "name": s.name,
                "shape": [int(n) for n in s.shape],
                "content": stack_fingerprint(s.labels),
            }
            for s in data.stacks
        ],
        "split": {"train": _index_digest(train_idx), "val": _index_digest(val_idx)},
    }


def settings_difference(saved: Mapping, current: Mapping) -> str:
    """The first field that differs between two :func:`run_settings` ("" if none), e.g.
    ``"train lr: the run has 0.001, now 0.5"``."""
    for section in ("model", "window", "train"):
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{section} {key}: the run has {old.get(key)!r}, now {new.get(key)!r}"
    old_stacks, new_stacks = saved.get("stacks", []), current.get("stacks", [])
    if len(old_stacks) != len(new_stacks):
        return f"stacks: the run has {len(old_stacks)}, now {len(new_stacks)}"
    for i, (old, new) in enumerate(zip(old_stacks, new_stacks)):
        if old.get("shape") != new.get("shape") or old.get("content") != new.get("content"):
            return (
                f"stack {i + 1}: the run was trained on {old.get('name')!r} "
                f"({'x'.join(map(str, old.get('shape', [])))}), now {new.get('name')!r} "
                f"({'x'.join(map(str, new.get('shape', [])))}) with other contents"
            )
    if saved.get("split") != current.get("split"):
        return "split: the training/validation windows differ"
    return ""
