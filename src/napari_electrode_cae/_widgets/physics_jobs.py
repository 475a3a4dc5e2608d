"""The Physics tab's work off the GUI thread: metrics of volumes and windows, correlations.

Plain functions of core objects (no Qt, no viewer), run by the panel's workers: the metrics of
a window, of its reconstruction and of a decoded volume (the cheap ones first, the pore
tortuosity separately), and the latent-metric correlation study over non-overlapping windows
(:func:`~napari_electrode_cae.core.analysis.correlation_study`: FDR-corrected, against a
random encoder, with partial correlations given the phase fractions).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core import DEFAULT_VOXEL_SIZE_UM, ElectrodeCAEError, WindowDataset
from ..core.analysis import (
    CorrelationStudy,
    correlation_study,
    iter_window_metrics,
    metric_columns,
    random_encoder_latents,
    volume_metrics,
)
from ..core.model import ConvAutoEncoder3d
from ..core.physics import tortuosity

TORTUOSITY_KEY = "tortuosity_pore_z"
#: Solver of the pore tortuosity: "auto" is the torch solver on a CUDA GPU when there is one
#: (70-80 ms instead of 0.8-1.4 s for a 24×224×224 window on an H200), else scipy's on the CPU
#: (both agree to 2e-5, tested).
TORTUOSITY_DEVICE = "auto"
#: Extra per-window variables correlated with the latents besides the metrics.
DEPTH_COLUMN = "depth z"
TAG_COLUMN = "CAL tag"


class PhysicsPanelError(ElectrodeCAEError):
    """A physics computation of the panel failed or cannot run (no model, no latents, …)."""


@dataclass(frozen=True)
class VolumeMetrics:
    """Metrics of one volume made in a worker thread.

    Attributes
    ----------
    generation : int
        Request number (results of superseded requests are dropped).
    metrics : dict
        Metric name -> value (see :data:`METRIC_ROWS`; units there).
    seconds : float
        Time the computation took, in seconds.
    labels : numpy.ndarray or None
        uint8 (Z, Y, X) phase ids the metrics were computed from (kept for the tortuosity stage).
    voxel_size_um : float
        Voxel edge length in µm.
    """

    generation: int
    metrics: dict
    seconds: float
    labels: np.ndarray | None = None
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM


@dataclass(frozen=True)
class WindowPhysics:
    """Cheap metrics of a window and of its snapped reconstruction (worker result)."""

    generation: int
    dataset: WindowDataset
    index: int
    original: VolumeMetrics
    reconstruction: VolumeMetrics


@dataclass(frozen=True)
class TortuosityPair:
    """Pore tortuosity along Z of a window and its reconstruction (worker result)."""

    generation: int
    original: VolumeMetrics
    reconstruction: VolumeMetrics


@dataclass(frozen=True)
class CorrelationResult:
    """Per-window metrics of non-overlapping windows and their honest correlation study.

    Attributes
    ----------
    dataset : WindowDataset
        The windows analysed (to drop results of a replaced dataset).
    indices : numpy.ndarray
        int64 (n,) window indices analysed (no two share a voxel).
    rows : list of dict
        :func:`~napari_electrode_cae.core.analysis.window_metrics` rows, one per window.
    extra : dict
        ``{"depth z": (n,), "CAL tag": (n,)}`` float arrays (tag 1 CAL, 0 UNCAL, NaN unknown).
    study : CorrelationStudy
        Spearman rho, p, Benjamini-Hochberg q, partial rho given the phase fractions, the random
        encoder's strongest |rho| per variable, which pairs survive and the note for the user.
    random_latents : numpy.ndarray
        (n, k) features of the same windows from a never-trained encoder of the model's
        configuration (kept to redo the study when the latents change).
    seconds : float
        Time taken by the metrics and the study, in seconds.
    tortuosity : bool
        Whether the pore tortuosity was computed.
    """

    dataset: WindowDataset
    indices: np.ndarray
    rows: list
    extra: dict
    study: CorrelationStudy
    random_latents: np.ndarray
    seconds: float
    tortuosity: bool

    @property
    def names(self) -> list[str]:
        """The m correlated variables (metrics, then depth and tag)."""
        return self.study.names

    @property
    def rho(self) -> np.ndarray:
        """(k, m) Spearman rho of every pair (survivors or not)."""
        return self.study.rho

    @property
    def p_values(self) -> np.ndarray:
        return self.study.p_values


def study_columns(rows: list, extra: dict) -> dict[str, np.ndarray]:
    """The per-window variables of ``rows`` (original's metrics) plus ``extra``, as arrays."""
    columns = {name: np.array([float(r[name]) for r in rows]) for name in metric_columns(rows)}
    columns.update({name: np.asarray(values, dtype=float) for name, values in extra.items()})
    return columns


def study_of(latents: np.ndarray, result: CorrelationResult) -> CorrelationStudy:
    """The correlation study of new ``latents`` of ``result``'s windows (cheap: no metrics, the
    random encoder's features reused)."""
    return _checked(
        correlation_study,
        latents,
        study_columns(result.rows, result.extra),
        random_latents=result.random_latents,
    )


def _checked(function, *args, **kwargs):
    """Call ``function``; numeric and torch errors become :class:`PhysicsPanelError`."""
    try:
        return function(*args, **kwargs)
    except ElectrodeCAEError:
        raise
    except (ValueError, RuntimeError, ArithmeticError, MemoryError) as exc:
        raise PhysicsPanelError(f"{type(exc).__name__}: {exc}") from exc


def measure_volume(
    labels: np.ndarray, voxel_size_um: float, generation: int = 0, with_tortuosity: bool = False
) -> VolumeMetrics:
    """Metrics of one phase volume (worker thread).

    Parameters
    ----------
    labels : numpy.ndarray
        uint8 (Z, Y, X) phase ids 0/1/2.
    voxel_size_um : float
        Voxel edge length in µm.
    generation : int
        Request number passed through.
    with_tortuosity : bool
        Also solve the pore tortuosity along Z (~1 s for 24×224×224).
    """
    start = time.perf_counter()
    metrics = _checked(volume_metrics, labels, voxel_size_um, tortuosity=with_tortuosity)
    return VolumeMetrics(generation, metrics, time.perf_counter() - start, labels, voxel_size_um)


def measure_tortuosity(volume: VolumeMetrics, generation: int | None = None) -> VolumeMetrics:
    """The pore tortuosity along Z of ``volume.labels`` (worker thread); only that key."""
    start = time.perf_counter()
    tau = _checked(tortuosity, volume.labels, "pore", 0, device=TORTUOSITY_DEVICE)
    return VolumeMetrics(
        volume.generation if generation is None else generation,
        {TORTUOSITY_KEY: tau},
        time.perf_counter() - start,
        volume.labels,
        volume.voxel_size_um,
    )


def window_physics(
    model: ConvAutoEncoder3d, dataset: WindowDataset, index: int, generation: int = 0
) -> WindowPhysics:
    """Cheap metrics of window ``index`` and of its reconstruction snapped to phases.

    Runs in a worker with an eval snapshot of the model (see :func:`.live_decoder.
    model_snapshot`); the tortuosity is left to :func:`window_tortuosity`.
    """
    voxel = dataset.voxel_size_um
    original = np.array(dataset.view(index), dtype=np.uint8)
    device = next(model.parameters()).device

    def reconstruct_labels() -> np.ndarray:
        with torch.inference_mode():  # snapped by the model's phase rule, as in Results
            return model.phase_labels(model(dataset[index][None].to(device)))[0]

    start = time.perf_counter()
    recon_labels = _checked(reconstruct_labels)
    infer_seconds = time.perf_counter() - start
    recon = measure_volume(recon_labels, voxel, generation)
    recon = VolumeMetrics(
        generation, recon.metrics, recon.seconds + infer_seconds, recon_labels, voxel
    )
    return WindowPhysics(
        generation, dataset, int(index), measure_volume(original, voxel, generation), recon
    )


def window_tortuosity(result: WindowPhysics) -> TortuosityPair:
    """Pore tortuosity along Z of a :func:`window_physics` result's two volumes."""
    return TortuosityPair(
        result.generation,
        measure_tortuosity(result.original),
        measure_tortuosity(result.reconstruction),
    )


def tag_value(calendered: bool | None) -> float:
    """The CAL tag as a number for correlations: 1 CAL, 0 UNCAL, NaN unknown."""
    return math.nan if calendered is None else float(bool(calendered))


class WorkerGuard:
    """Lets the main thread wait until a generator worker is not computing.

    A generator suspended at a ``yield`` is not computing: after ``quit()`` superqt never
    resumes it (and does not close it either), so "running" covers only the stretches between
    :meth:`enter` and :meth:`leave`. Once :meth:`close_and_wait` has run, :meth:`enter` refuses.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()

    def enter(self) -> bool:
        """Worker thread: start (or resume) computing; False once the panel shut down."""
        with self._lock:
            if self._closed:
                return False
            self._idle.clear()
            return True

    def leave(self) -> None:
        """Worker thread: stop computing (before a ``yield`` and at the end)."""
        self._idle.set()

    @property
    def running(self) -> bool:
        return not self._idle.is_set()

    def close_and_wait(self, timeout_s: float) -> bool:
        """Main thread: refuse further work and wait for the current stretch to end."""
        with self._lock:
            self._closed = True
        return self._idle.wait(timeout_s)


def correlation_job(
    guard: WorkerGuard,
    dataset: WindowDataset,
    indices: np.ndarray,
    latents: np.ndarray,
    with_tortuosity: bool,
    splits: dict,
    model: ConvAutoEncoder3d,
    seed: int = 0,
):
    """Generator run by the correlation worker: yields progress, returns a CorrelationResult.

    ``indices`` should share no voxel (:func:`~napari_electrode_cae.core.analysis.
    independent_windows`): the study's p-values assume independent windows. ``model`` gives only
    its configuration, for the random encoder of the baseline (``seed``).

    Every error is raised as an :class:`~napari_electrode_cae.core.ElectrodeCAEError` (a
    RuntimeError would end superqt's generator worker without a ``finished`` signal).
    """
    if not guard.enter():
        return None
    try:
        start = time.perf_counter()
        rows: list[dict] = []
        metrics = iter_window_metrics(
            dataset, indices, tortuosity=with_tortuosity, splits=splits, device=TORTUOSITY_DEVICE
        )
        while True:
            progress = _checked(next, metrics, None)
            if progress is None:
                break
            rows.append(progress.row)
            guard.leave()
            yield progress
            if not guard.enter():
                return None
        depth = np.array([float(r["z"]) for r in rows])
        tags = np.array([tag_value(dataset.stacks[int(r["stack"])].calendered) for r in rows])
        extra = {DEPTH_COLUMN: depth, TAG_COLUMN: tags}
        chosen = [int(r["window"]) for r in rows]
        random_latents = _checked(random_encoder_latents, model, dataset, chosen, seed)
        study = _checked(
            correlation_study, latents, study_columns(rows, extra), random_latents=random_latents
        )
        return CorrelationResult(
            dataset,
            np.asarray(indices, dtype=np.int64),
            rows,
            extra,
            study,
            random_latents,
            time.perf_counter() - start,
            with_tortuosity,
        )
    finally:
        guard.leave()
