"""Worker jobs and pure helpers of the Train tab (no Qt widgets, no viewer).

The functions that run in napari workers (training, evaluation, saving, opening a run) live
here, so that :mod:`.training_panel` holds only widgets and their wiring; the pure helpers the
panel formats its texts with are in :mod:`.training_texts`. Nothing here touches a Qt object
or the viewer (convention 3): a worker reports progress by yielding, or, inside a long core
call that cannot yield, by writing into an :class:`EvaluationProgress` that the panel reads
with a timer on the GUI thread.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import core
from ..core import ElectrodeCAEError, EpochReport, RunFolderError
from ..core.health import Health
from .training_texts import (
    TrainingPlan,  # noqa: F401 (re-exported: tests use it)
    matching_preset,  # noqa: F401 (re-exported: tests use it)
    settings_of_preset,  # noqa: F401 (re-exported: tests use it)
)


class TrainingRunError(ElectrodeCAEError):
    """Training, evaluation or saving failed inside torch or the file system.

    Examples: CUDA out of memory, a disk that is full. Raised in a worker thread and shown as a
    notification; the GUI leaves its busy state.
    """


class EvaluationCancelled(Exception):
    """Raised inside an evaluation by its progress callback once the panel cancelled it."""


# --------------------------------------------------------------------------------------------
# Work done in worker threads: plain functions of core objects, no Qt, no viewer.


def gui_torch_threads(device: torch.device) -> int:
    """Intra-op torch threads for training from the GUI: on the CPU, leave one core free.

    The GUI thread needs a core to stay fluid; torch's default uses every core.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu":
        return threads
    return max(1, min(threads, (os.cpu_count() or 1) - 1))


#: Serialises the read-compare-set steps below (two trainings' workers, say).
_TORCH_THREADS_LOCK = threading.Lock()


def set_torch_threads(threads: int) -> int:
    """Set torch's intra-op thread count to ``threads`` and return the count before.

    Not called when the count is already ``threads``: every ``torch.set_num_threads`` also
    clears the thread's oneDNN convolution cache.
    """
    with _TORCH_THREADS_LOCK:
        previous = torch.get_num_threads()
        if threads != previous:
            torch.set_num_threads(threads)
        return previous


def restore_torch_threads(threads: int, previous: int) -> None:
    """Undo :func:`set_torch_threads` (which set ``threads``): back to ``previous``, unless the
    count is no longer ``threads`` (someone set another meanwhile: that one stays)."""
    with _TORCH_THREADS_LOCK:
        if threads != previous and torch.get_num_threads() == threads:
            torch.set_num_threads(previous)


def training_steps(reports, threads: int):
    """Re-yield the reports of a ``core.train`` generator, with ``threads`` torch threads.

    Runs in the worker thread: torch's thread count applies to the thread that sets it (and
    becomes the default of threads started later; with a non-OpenMP torch, to every thread),
    so it is set here, for the run the user started, and restored at the end, unless another
    count was set meanwhile (see :func:`restore_torch_threads`; the Latents panel's decodes
    never change it). Closing this generator closes ``reports`` (core.train
    then restores the best weights). superqt's GeneratorWorker swallows a RuntimeError raised
    by its generator (emitting neither ``errored`` nor ``finished``), so torch errors (e.g.
    CUDA out of memory, or batch norm given a batch of one window) are re-raised as
    TrainingRunError.

    Returns
    -------
    TrainResult
        The return value of ``reports``.
    """
    previous = set_torch_threads(threads)
    try:
        return (yield from reports)
    except (RuntimeError, ValueError) as exc:
        raise TrainingRunError(f"training failed: {exc}") from exc
    finally:
        restore_torch_threads(threads, previous)


def drive(steps):
    """Generator function around an existing generator (a GeneratorWorker needs a function)."""
    return (yield from steps)


class EvaluationProgress:
    """Where an evaluation running in a worker is; read by the panel on the GUI thread.

    The worker writes plain attributes (``stage``, ``done``, ``total``); the panel polls them
    with a timer, since ``core.evaluate`` reports progress through a callback from inside one
    long call that its generator cannot yield from. Setting :attr:`cancelled` makes the next
    callback raise :class:`EvaluationCancelled` (the panel does so when it shuts down).
    """

    def __init__(self) -> None:
        self.stage = "starting"
        self.done = 0
        self.total = 0
        self.cancelled = False

    def update(self, done: int, total: int) -> None:
        """Progress callback of ``core.evaluate`` (``done`` of ``total`` windows)."""
        if self.cancelled:
            raise EvaluationCancelled
        self.done, self.total = int(done), int(total)

    def start(self, stage: str, total: int) -> None:
        if self.cancelled:
            raise EvaluationCancelled
        self.stage, self.done, self.total = stage, 0, int(total)

    def text(self) -> str:
        """E.g. ``"evaluating 120 / 900 windows"``."""
        if self.total:
            return f"{self.stage} {self.done:,} / {self.total:,} windows"
        return f"{self.stage} …"


@torch.inference_mode()
def encode_with_progress(
    model: core.ConvAutoEncoder3d, dataset: core.WindowDataset, progress: EvaluationProgress
) -> np.ndarray:
    """Latents of every window, as ``core.encode_windows``, counting the windows encoded.

    Returns
    -------
    numpy.ndarray
        float32 (n_windows, latent_dim), the same as ``core.encode_windows(model, dataset)``.
    """
    progress.start("encoding", len(dataset))
    return core.encode_windows(model, dataset, progress=progress.update)


def evaluate_model(
    model,
    dataset,
    train_idx,
    val_idx,
    seed,
    rule="fitted",
    diverged=False,
    progress: EvaluationProgress | None = None,
):
    """Fit the phase rule, encode every window and evaluate (a generator for a worker).

    Yields a stage name between the steps (the worker can stop there); inside a step
    ``progress`` counts the windows. ``rule`` is the user's rule ("fitted" to the training
    fractions, or "nearest" for the unfitted one: the paper's nearest value, the plain
    argmax of a three-phase model), or None to keep the model's rule (an opened run's); a
    diverged run gets the unfitted rule and is judged diverged.

    Returns
    -------
    tuple of (numpy.ndarray, EvaluationReport) or None
        float32 (n_windows, latent_dim) latents and the evaluation report; None if cancelled.
    """
    progress = progress if progress is not None else EvaluationProgress()
    try:
        if rule is not None or diverged:
            progress.start("fitting the phase rule", 0)
            core.evaluation.fit_phase_rule(
                model, dataset, train_idx, "nearest" if diverged else rule
            )
            yield "fitted"
        latents = encode_with_progress(model, dataset, progress)
        yield "encoded"
        progress.start("evaluating", len(train_idx) + len(val_idx))
        report = core.evaluate(
            model,
            dataset,
            train_idx,
            val_idx,
            seed=seed,
            progress=progress.update,
            diverged=diverged,
        )
    except EvaluationCancelled:
        return None
    except RuntimeError as exc:
        raise TrainingRunError(f"evaluating the model failed: {exc}") from exc
    return latents, report


def save_run_job(path, trained, history, report, health):
    """Write ``trained`` (a TrainedRun) with its history, report and health to ``path``."""
    yield "saving"
    try:
        return core.save_run(
            path,
            trained.model,
            trained.dataset,
            trained.config,
            trained.train_idx,
            trained.val_idx,
            history,
            report,
            health=health,
        )
    except (OSError, RuntimeError) as exc:
        raise TrainingRunError(f"could not save the run to {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """The current model together with the windows, settings and split it was trained on.

    ``health``: the training's verdict (or a loaded run's); ``phase_rule``: the rule the user
    chose ("fitted", or "nearest" for the unfitted one), or None to keep the model's own (an
    opened run's saved rule).
    """

    model: core.ConvAutoEncoder3d
    dataset: core.WindowDataset
    config: core.TrainConfig
    train_idx: np.ndarray
    val_idx: np.ndarray
    health: Health = dataclasses.field(default_factory=lambda: Health("ok"))
    phase_rule: str | None = "fitted"

    @property
    def diverged(self) -> bool:
        return self.health.state == "diverged"

    def with_health(self, health: Health) -> TrainedRun:
        return dataclasses.replace(self, health=health)


def run_health(trained: TrainedRun, report: core.EvaluationReport | None) -> Health:
    """What a saved run records: the divergence of its training, else the evaluation's verdict
    over all validation windows, else the training's."""
    if trained.diverged or report is None or report.phases is None:
        return trained.health
    p = report.phases
    return Health(p.health, p.message, p.advice)


@dataclass(frozen=True)
class LoadedRun:
    """A run folder read by :func:`load_run_folder` (in a worker), ready to be applied."""

    run: core.Run
    dataset: core.WindowDataset
    history: tuple[EpochReport, ...]
    #: Viewer layer name -> the data object (as it was when Open started) found equal to the
    #: run's stack of that name: such a layer is reused, not added again.
    same_layers: dict[str, Any]


def load_run_folder(path: str | Path, layer_data: dict[str, Any]) -> LoadedRun:
    """Read the run folder ``path`` with its stacks and check them (runs in a worker).

    ``layer_data`` maps the viewer's layer names to their data; the stacks equal to a layer of
    their name are listed in ``same_layers``.

    Raises
    ------
    RunFolderError
        And other ElectrodeCAEError, KeyError, TypeError or ValueError for a bad folder (as
        :func:`napari_electrode_cae.core.load_run`).
    """
    run = core.load_run(path)
    dataset = run.load_dataset()
    check_split_fits(run, len(dataset))
    history = history_from_rows(run.history, run.train_config.epochs)
    same = {}
    for stack in dataset.stacks:
        name = stack.name or "electrode"
        data = layer_data.get(name)
        if data is not None and same_labels(data, stack.labels):
            same[name] = data
    return LoadedRun(run, dataset, history, same)


def same_labels(data: Any, labels: np.ndarray) -> bool:
    """Whether layer ``data`` holds ``labels``; compared slab by slab (little extra memory).

    False for data that are not one array of that shape (multiscale, shapes, unreadable).
    """
    if getattr(data, "shape", None) != labels.shape:
        return False
    step = max(1, (1 << 22) // max(1, math.prod(labels.shape[1:])))
    try:
        for start in range(0, labels.shape[0], step):
            if not np.array_equal(
                np.asarray(data[start : start + step]), labels[start : start + step]
            ):
                return False
    except Exception:  # noqa: BLE001 (a layer we cannot compare is simply not reused)
        return False
    return True


def check_split_fits(run: core.Run, n_windows: int) -> None:
    """Raise RunFolderError if the run's split refers to windows the stacks do not give."""
    indices = np.concatenate([run.train_idx, run.val_idx])
    if len(run.val_idx) == 0 or len(run.train_idx) == 0:
        raise RunFolderError(f"run {run.path} has an empty training or validation split")
    if indices.min() < 0 or indices.max() >= n_windows:
        raise RunFolderError(
            f"run {run.path} refers to window {int(indices.max())} but its stacks give only "
            f"{n_windows} windows"
        )


def open_run_error_message(path: str | Path, exc: BaseException) -> str:
    """What Open run says about a folder it could not open."""
    if isinstance(exc, ElectrodeCAEError):
        return str(exc)
    if isinstance(exc, (KeyError, TypeError, ValueError)):
        return f"invalid run folder {path}: {type(exc).__name__}: {exc}"
    return f"could not open run {path}: {type(exc).__name__}: {exc}"


def history_from_rows(rows: Sequence[dict], epochs: int) -> tuple[EpochReport, ...]:
    """EpochReports from history.csv rows (epoch, train_mse, val_mse, seconds, best_val_mse,
    and val_nmse and spread where the run recorded them).

    The best epoch is recomputed: the first epoch with the lowest validation MSE so far.
    """
    reports, best_val, best_epoch = [], math.inf, 0
    for row in rows:
        if row["val_mse"] < best_val:
            best_val, best_epoch = row["val_mse"], row["epoch"]
        reports.append(
            EpochReport(
                int(row["epoch"]),
                max(int(epochs), int(row["epoch"])),
                row["train_mse"],
                row["val_mse"],
                row["seconds"],
                best_epoch,
                row["best_val_mse"],
                row.get("val_nmse", math.nan),
                row.get("spread", math.nan),
            )
        )
    return tuple(reports)
