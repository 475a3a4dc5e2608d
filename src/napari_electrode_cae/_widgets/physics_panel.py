"""Physics panel: microstructure metrics of a window, its reconstruction and the decoded volume,
and which latent features track which physical metric.

Top: a table with one column per volume — the selected window (``state.selected_window`` of
``state.dataset``), its reconstruction by ``state.model`` snapped to phases, and the Latent
panel's live decoded volume (the ``_layers.DECODED_LAYER`` Labels layer, followed through its
``data`` event, so this panel needs no reference to the Latent panel). Rows: phase fractions,
specific surface areas, triple-phase-boundary density, the percolating fraction of each phase
along Z and the pore tortuosity factor along Z
(:func:`napari_electrode_cae.core.analysis.volume_metrics`).

Every computation runs off the GUI thread, latest-wins (:mod:`.live_decoder` runners), in two
stages: the cheap metrics (a few ms to ~60 ms for 24×224×224) first, then the tortuosity (~1 s
for 24×224×224) in a runner of its own, so a slow solve never delays the cheap metrics of a newer
volume. For the decoded volume the tortuosity is solved only once the slider has been still for
:data:`TORTUOSITY_DEBOUNCE_MS` (or at every change with "live tortuosity" on). Results are
tagged with a generation number and dropped when a newer volume has arrived meanwhile.

Bottom: "Compute correlations" runs :func:`~napari_electrode_cae.core.analysis.
iter_window_metrics` over all windows (or a seeded subset) in a stoppable generator worker, then
:func:`~napari_electrode_cae.core.analysis.latent_metric_correlations` of ``state.latents`` with
the metrics, the window depth and the CAL tag, drawn as a heat map (rows: latent features; also
available in a dock of its own, large enough to read).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .scrolling import fill_with_scrolling
from .. import _layers
from ..core import DEFAULT_VOXEL_SIZE_UM, ElectrodeCAEError, WindowDataset
from ..core.analysis import (
    WindowMetricsProgress,
    iter_window_metrics,
    latent_metric_correlations,
    select_windows,
    strongest_correlations,
    volume_metrics,
    write_correlations_csv,
    write_metrics_csv,
)
from ..core.model import ConvAutoEncoder3d
from ..core.physics import tortuosity
from .live_decoder import ChainedRunner, model_snapshot
from .results_panel import MODEL_PENDING_MESSAGE, NO_MODEL_MESSAGE

if TYPE_CHECKING:
    import napari

    from .state import CAEState

#: Metric key, row label and kind ("pct", "num" or "tau") of the metrics table, in order.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("pore_fraction", "Pore fraction", "pct"),
    ("cbd_fraction", "CBD fraction", "pct"),
    ("active_fraction", "Active fraction", "pct"),
    ("ssa_active_per_um", "SSA active (µm⁻¹)", "num"),
    ("ssa_pore_solid_per_um", "SSA pore/solid (µm⁻¹)", "num"),
    ("tpb_density_per_um2", "TPB density (µm⁻²)", "num"),
    ("pore_connected_fraction_z", "Pore connected (Z)", "pct"),
    ("cbd_connected_fraction_z", "CBD connected (Z)", "pct"),
    ("active_connected_fraction_z", "Active connected (Z)", "pct"),
    ("tortuosity_pore_z", "Pore tortuosity (Z)", "tau"),
)
TORTUOSITY_KEY = "tortuosity_pore_z"
TIME_ROW_LABEL = "Compute time"
#: Table columns.
COLUMNS: tuple[str, ...] = ("Original", "Reconstruction", "Decoded (slider)")
#: Their titles in the table header (short, to fit a narrow dock).
COLUMN_TITLES: tuple[str, ...] = ("Original", "Recon.", "Decoded")
ORIGINAL, RECONSTRUCTION, DECODED = range(3)
#: Solver of the pore tortuosity: "auto" is the torch solver on a CUDA GPU when there is one
#: (70-80 ms instead of 0.8-1.4 s for a 24×224×224 window on an H200), else scipy's on the CPU
#: (both agree to 2e-5, tested).
TORTUOSITY_DEVICE = "auto"

#: Quiet time after the last decoded-volume change before its tortuosity is solved (ms).
TORTUOSITY_DEBOUNCE_MS = 300
#: Default cap on the number of windows analysed for the correlations.
DEFAULT_MAX_WINDOWS = 200
#: The correlation progress bar's text before the first run, and while one runs.
NOT_MEASURED_FORMAT = "no windows measured yet"
PROGRESS_FORMAT = "%v / %m windows"
#: |rho| from which a heat-map cell is annotated with its value.
ANNOTATE_ABS_RHO = 0.5
#: Extra per-window variables correlated with the latents besides the metrics.
DEPTH_COLUMN = "depth z"
TAG_COLUMN = "CAL tag"
#: Short heat-map labels of the metric columns.
SHORT_NAMES = {
    "pore_fraction": "pore",
    "cbd_fraction": "CBD",
    "active_fraction": "active",
    "ssa_active_per_um": "SSA act",
    "ssa_pore_solid_per_um": "SSA p/s",
    "tpb_density_per_um2": "TPB",
    "pore_connected_fraction_z": "conn pore",
    "cbd_connected_fraction_z": "conn CBD",
    "active_connected_fraction_z": "conn act",
    "tortuosity_pore_z": "τ pore",
}
#: How long :meth:`PhysicsPanel.shutdown` waits for the correlation worker (s).
SHUTDOWN_TIMEOUT_S = 60.0
BACKGROUND = "#262930"
FOREGROUND = "#f0f1f2"


class PhysicsPanelError(ElectrodeCAEError):
    """A physics computation of the panel failed or cannot run (no model, no latents, …)."""


# --------------------------------------------------------------------------------- jobs
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
    """Per-window metrics and their Spearman correlation with the latent features.

    Attributes
    ----------
    dataset : WindowDataset
        The windows analysed (to drop results of a replaced dataset).
    indices : numpy.ndarray
        int64 (n,) window indices analysed.
    rows : list of dict
        :func:`~napari_electrode_cae.core.analysis.window_metrics` rows, one per window.
    extra : dict
        ``{"depth z": (n,), "CAL tag": (n,)}`` float arrays (tag 1 CAL, 0 UNCAL, NaN unknown).
    names : list of str
        The m correlated variables (metrics, then depth and tag).
    rho, p_values : numpy.ndarray
        (k, m) Spearman coefficients and p-values.
    strongest : list of tuple
        Top 5 ``(latent j (0-based), name, rho, p)`` by |rho|.
    seconds : float
        Time taken by the metrics and correlations, in seconds.
    tortuosity : bool
        Whether the pore tortuosity was computed.
    """

    dataset: WindowDataset
    indices: np.ndarray
    rows: list
    extra: dict
    names: list
    rho: np.ndarray
    p_values: np.ndarray
    strongest: list
    seconds: float
    tortuosity: bool


def _checked(function, *args, **kwargs):
    """Call ``function``; numeric and torch errors become :class:`PhysicsPanelError`."""
    try:
        return function(*args, **kwargs)
    except ElectrodeCAEError:
        raise
    except (ValueError, RuntimeError, ArithmeticError, MemoryError) as exc:
        raise PhysicsPanelError(f"{type(exc).__name__}: {exc}") from exc


def measure_volume(labels: np.ndarray, voxel_size_um: float, generation: int = 0,
                   with_tortuosity: bool = False) -> VolumeMetrics:
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
    return VolumeMetrics(volume.generation if generation is None else generation,
                         {TORTUOSITY_KEY: tau}, time.perf_counter() - start, volume.labels,
                         volume.voxel_size_um)


def window_physics(model: ConvAutoEncoder3d, dataset: WindowDataset, index: int,
                   generation: int = 0) -> WindowPhysics:
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
    recon = VolumeMetrics(generation, recon.metrics, recon.seconds + infer_seconds, recon_labels,
                          voxel)
    return WindowPhysics(generation, dataset, int(index),
                         measure_volume(original, voxel, generation), recon)


def window_tortuosity(result: WindowPhysics) -> TortuosityPair:
    """Pore tortuosity along Z of a :func:`window_physics` result's two volumes."""
    return TortuosityPair(result.generation, measure_tortuosity(result.original),
                          measure_tortuosity(result.reconstruction))


def tag_value(calendered: bool | None) -> float:
    """The CAL tag as a number for correlations: 1 CAL, 0 UNCAL, NaN unknown."""
    return math.nan if calendered is None else float(bool(calendered))


class _WorkerGuard:
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


def correlation_job(guard: _WorkerGuard, dataset: WindowDataset, indices: np.ndarray,
                    latents: np.ndarray, with_tortuosity: bool, splits: dict):
    """Generator run by the correlation worker: yields progress, returns a CorrelationResult.

    Every error is raised as an :class:`~napari_electrode_cae.core.ElectrodeCAEError` (a
    RuntimeError would end superqt's generator worker without a ``finished`` signal).
    """
    if not guard.enter():
        return None
    try:
        start = time.perf_counter()
        rows: list[dict] = []
        metrics = iter_window_metrics(dataset, indices, tortuosity=with_tortuosity,
                                      splits=splits, device=TORTUOSITY_DEVICE)
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
        names, rho, p = _checked(latent_metric_correlations, latents, rows, extra=extra)
        strongest = strongest_correlations(names, rho, p, top=5)
        return CorrelationResult(dataset, np.asarray(indices, dtype=np.int64), rows, extra,
                                 names, rho, p, strongest, time.perf_counter() - start,
                                 with_tortuosity)
    finally:
        guard.leave()


class _WorkerTracker:
    """Waits, at shutdown, until every running worker of the panel has left its pool thread.

    Started from a slot, a superqt worker enters the thread pool only on the next turn of the
    event loop (a 1 ms timer); such a worker has not started when the panel shuts down, and the
    guards of the runners make it return at once when it does. Every worker that has started is
    waited for until it has emitted its last signal (both connected directly, so the events are
    set in the worker thread).
    """

    def __init__(self) -> None:
        self._workers: dict[int, tuple[Any, threading.Event, threading.Event]] = {}

    def track(self, worker: Any) -> None:
        """Call before ``worker.start()``."""
        started, done = threading.Event(), threading.Event()
        key = id(worker)
        self._workers[key] = (worker, started, done)
        direct = Qt.ConnectionType.DirectConnection
        worker.started.connect(lambda: started.set(), direct)
        worker.finished.connect(lambda *_: done.set(), direct)  # its last public signal
        worker.finished.connect(lambda: self._workers.pop(key, None))

    def wait(self, timeout_s: float) -> bool:
        """Wait for the started workers; False if one is still running after ``timeout_s``."""
        from qtpy import sip

        deadline = time.monotonic() + timeout_s
        finished = True
        for worker, started, done in list(self._workers.values()):
            if not started.is_set():
                continue
            finished &= done.wait(max(0.0, deadline - time.monotonic()))
            # The last signal is out; the pool deletes the runnable once run() has returned.
            # Let the worker thread get that far (it needs the GIL), briefly.
            settle = min(deadline, time.monotonic() + 1.0)
            while not sip.isdeleted(worker) and time.monotonic() < settle:
                time.sleep(0.001)
        return finished


class _TrackedChainedRunner(ChainedRunner):
    """A :class:`.live_decoder.ChainedRunner` whose workers a :class:`_WorkerTracker` follows."""

    def __init__(self, tracker: _WorkerTracker, on_result, on_error=None) -> None:
        super().__init__(on_result, on_error)
        self._tracker = tracker

    def _start(self, function, args) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(self._guarded_job, function, args, _start_thread=False)
        worker.returned.connect(self._deliver)
        worker.errored.connect(self._on_worker_errored)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self._tracker.track(worker)
        worker.start()


# ------------------------------------------------------------------------------ formatting
def format_metric(value: float | None, kind: str) -> str:
    """Table text of one metric value (percent, number or tortuosity factor)."""
    if value is None:
        return "–"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if kind == "tau":
        return "∞ (no path)" if math.isinf(value) else f"{value:.3f}"
    if kind == "pct":
        return f"{value:.1%}"
    return f"{value:.4g}"


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1.0 else f"{seconds:.2f} s"


def _item(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
    return item


class MetricsTable(QTableWidget):
    shown = Signal()

    """Read-only metrics table: :data:`METRIC_ROWS` plus a compute-time row, 3 columns.

    Always as tall as its rows (no vertical scroll bar); short column titles (the full names of
    :data:`COLUMNS` are their tooltips) so that it fits a ~400 px dock.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        labels = [label for _, label, _ in METRIC_ROWS] + [TIME_ROW_LABEL]
        super().__init__(len(labels), len(COLUMNS), parent)
        for column, (title, full) in enumerate(zip(COLUMN_TITLES, COLUMNS)):
            header = QTableWidgetItem(title)
            header.setToolTip(full)
            self.setHorizontalHeaderItem(column, header)
        self.setVerticalHeaderLabels(labels)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.horizontalHeader().setMinimumSectionSize(40)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setWordWrap(False)
        for row in range(self.rowCount()):
            for column in range(self.columnCount()):
                self.setItem(row, column, _item("–"))
        self.fit_height()

    def fit_height(self) -> None:
        """Make the table exactly as tall as its header and rows."""
        header = self.horizontalHeader()
        height = max(header.height(), header.sizeHint().height()) + 2 * self.frameWidth()
        height += self.verticalHeader().length()
        if height != self.height() or self.minimumHeight() != height:
            self.setFixedHeight(height)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.fit_height()  # the theme's style sheet may have changed the row heights
        self.shown.emit()

    def set_text(self, row: int, column: int, text: str) -> None:
        item = self.item(row, column)
        if item.text() != text:
            item.setText(text)
            item.setToolTip(text.replace("\n", " + ") if row == self.rowCount() - 1 else "")
            if row == self.rowCount() - 1:
                self.fit_height()  # the time row has one or two lines

    def column_texts(self, column: int) -> list[str]:
        return [self.item(r, column).text() for r in range(self.rowCount())]


class CorrelationHeatmap(QWidget):
    """Latent features (rows) × variables (columns) Spearman rho, diverging colours −1..1.

    Cells with |rho| ≥ :data:`ANNOTATE_ABS_RHO` are annotated with their value; NaN cells
    (constant variable, e.g. one tag only) are grey.

    Attributes
    ----------
    data : numpy.ndarray or None
        (k, m) rho currently shown.
    """

    def __init__(self, min_height: int = 240, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data: np.ndarray | None = None
        self.names: list[str] = []
        self.figure = Figure(figsize=(4.0, 3.0), dpi=90, facecolor=BACKGROUND,
                             layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(min_height)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._draw_empty()

    def _draw(self) -> None:
        """Draw now: rare (once per analysis), and a deferred draw could outlive the canvas."""
        self.canvas.draw()

    def _draw_empty(self) -> None:
        self.figure.clear()
        self.figure.text(0.5, 0.5, "no correlations yet", ha="center", va="center",
                         color=FOREGROUND, fontsize=9, alpha=0.6)
        self._draw()

    def clear(self) -> None:
        self.data, self.names = None, []
        self._draw_empty()

    def set_correlations(self, names: list[str], rho: np.ndarray) -> None:
        """Draw (k, m) ``rho`` for the m variables ``names``."""
        rho = np.asarray(rho, dtype=float)
        self.data, self.names = rho, list(names)
        k, m = rho.shape
        fig = self.figure
        fig.clear()
        ax = fig.add_subplot()
        ax.set_facecolor(BACKGROUND)
        from matplotlib import colormaps

        cmap = colormaps["RdBu_r"].with_extremes(bad="#55585f")
        image = ax.imshow(np.ma.masked_invalid(rho), cmap=cmap, vmin=-1.0, vmax=1.0,
                          aspect="auto", interpolation="nearest")
        ax.set_xticks(range(m))
        ax.set_xticklabels([SHORT_NAMES.get(n, n) for n in names], rotation=55, ha="right",
                           rotation_mode="anchor", fontsize=7, color=FOREGROUND)
        ax.set_yticks(range(k))
        ax.set_yticklabels([f"z{j + 1}" for j in range(k)], fontsize=7, color=FOREGROUND)
        ax.tick_params(colors=FOREGROUND, length=2)
        for spine in ax.spines.values():
            spine.set_color(FOREGROUND)
        font = 7 if m <= 14 and k <= 12 else 5
        for j in range(k):
            for c in range(m):
                value = rho[j, c]
                if np.isfinite(value) and abs(value) >= ANNOTATE_ABS_RHO:
                    ax.text(c, j, f"{value:.2f}".replace("0.", "."), ha="center",
                            va="center", fontsize=font,
                            color="white" if abs(value) > 0.75 else "black")
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, aspect=25)
        bar.set_ticks([-1, -0.5, 0, 0.5, 1])
        bar.ax.tick_params(labelsize=6, colors=FOREGROUND, length=2)
        bar.outline.set_edgecolor(FOREGROUND)
        bar.set_label("Spearman ρ", fontsize=7, color=FOREGROUND)
        self._draw()


# ---------------------------------------------------------------------------------- panel
class PhysicsPanel(QWidget):
    """Metrics of window / reconstruction / decoded volume, and latent–metric correlations.

    Reads ``state.model``, ``model_version``, ``dataset``, ``split``, ``seed``,
    ``selected_window`` and ``latents``; writes nothing to the state. Follows the
    ``_layers.DECODED_LAYER`` layer of the viewer (added, replaced or removed at any time).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose decoded layer is measured (and which hosts the pop-out docks).
    state : CAEState
        The plugin's shared state.

    Attributes
    ----------
    metrics_table : MetricsTable
        The table in the panel (a popped-out copy shows the same texts).
    heatmap : CorrelationHeatmap
        The heat map in the panel.
    correlation : CorrelationResult or None
        The last finished correlation analysis.
    """

    def __init__(self, viewer: napari.Viewer, state: CAEState,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self._snapshot: ConvAutoEncoder3d | None = None
        self._snapshot_source: ConvAutoEncoder3d | None = None
        self._window_gen = 0
        self._decoded_gen = 0
        self._decoded_volume: VolumeMetrics | None = None  # latest cheap decoded result
        self._decoded_labels: np.ndarray | None = None  # latest decoded data (copy)
        self._decoded_voxel = DEFAULT_VOXEL_SIZE_UM
        self._decoded_layer: Any = None
        self._last_error = ""
        self._tracker = _WorkerTracker()
        runner = _TrackedChainedRunner
        self._window_runner = runner(self._tracker, self._on_window_physics, self._on_job_error)
        self._window_tau_runner = runner(self._tracker, self._on_window_tortuosity,
                                         self._on_job_error)
        self._decoded_runner = runner(self._tracker, self._on_decoded_metrics,
                                      self._on_job_error)
        self._decoded_tau_runner = runner(self._tracker, self._on_decoded_tortuosity,
                                          self._on_job_error)
        self._times: list[str] = ["", "", ""]
        self._tau_times: list[str] = ["", "", ""]
        self._corr_worker: Any = None
        self._corr_guard = _WorkerGuard()
        self.correlation: CorrelationResult | None = None
        self._tables: list[MetricsTable] = []
        self._heatmaps: list[CorrelationHeatmap] = []
        self._table_dock: Any = None
        self._heatmap_dock: Any = None
        self._window_dirty = False
        self._decoded_dirty = False
        self._tau_timer = QTimer(self)
        self._tau_timer.setSingleShot(True)
        self._tau_timer.setInterval(TORTUOSITY_DEBOUNCE_MS)
        self._tau_timer.timeout.connect(self._solve_decoded_tortuosity)
        self._build_ui()
        self._connections = [
            (state.events.model_version, self._on_model_version_changed),
            (state.events.model, self._on_model_changed),
            (state.events.selected_window, self._on_selected_window_changed),
            (state.events.dataset, self._on_dataset_changed),
            (state.events.latents, self._on_latents_changed),
            (viewer.layers.events.inserted, self._watch_decoded_layer),
            (viewer.layers.events.removed, self._watch_decoded_layer),
        ]
        for signal, slot in self._connections:
            signal.connect(slot)
        self._on_model_version_changed()
        self._watch_decoded_layer()

    # ----------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self.status_label = QLabel(NO_MODEL_MESSAGE)
        self.status_label.setWordWrap(True)
        self.window_title = QLabel("<b>Selected window</b>")
        self.window_title.setWordWrap(True)
        self.metrics_table = MetricsTable()
        self.metrics_table.shown.connect(self._on_table_shown)
        self._tables.append(self.metrics_table)
        self.live_tau_check = QCheckBox("Live tortuosity")
        self.live_tau_check.setToolTip(
            "Solve the decoded volume's tortuosity at every slider change (~1 s for "
            "24×224×224); otherwise once the slider has been still for "
            f"{TORTUOSITY_DEBOUNCE_MS} ms")
        self.live_tau_check.toggled.connect(self._on_live_tau_toggled)
        self.table_dock_button = QPushButton("Table beside viewer")
        self.table_dock_button.setToolTip(
            "Show a copy of this table in a dock of its own, to watch the decoded column while "
            "moving the sliders of the Latents tab")
        self.table_dock_button.clicked.connect(self.show_table_dock)
        table_row = QHBoxLayout()
        table_row.addWidget(self.live_tau_check)
        table_row.addStretch(1)
        table_row.addWidget(self.table_dock_button)

        self.max_windows_spin = QSpinBox()
        self.max_windows_spin.setRange(3, 1_000_000)
        self.max_windows_spin.setValue(DEFAULT_MAX_WINDOWS)
        self.max_windows_spin.setToolTip(
            "Analyse at most this many windows (a seeded random subset when there are more)")
        self.corr_tau_check = QCheckBox("Tortuosity")
        self.corr_tau_check.setToolTip("Include the pore tortuosity (slow: ~1 s per big window)")
        self.compute_button = QPushButton("Compute correlations")
        self.compute_button.clicked.connect(self.compute_correlations)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_correlations)
        corr_settings = QHBoxLayout()
        corr_settings.addWidget(QLabel("Windows ≤"))
        corr_settings.addWidget(self.max_windows_spin, 1)
        corr_settings.addWidget(self.corr_tau_check)
        corr_buttons = QHBoxLayout()
        corr_buttons.addWidget(self.compute_button, 1)
        corr_buttons.addWidget(self.stop_button)
        self.progress_bar = QProgressBar()
        self._show_no_count()
        self.corr_label = QLabel("")
        self.corr_label.setWordWrap(True)
        self.heatmap = CorrelationHeatmap()
        self._heatmaps.append(self.heatmap)
        self.strongest_label = QLabel("")
        self.strongest_label.setWordWrap(True)
        self.strongest_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse)
        self.heatmap_dock_button = QPushButton("Heat map in own dock")
        self.heatmap_dock_button.setToolTip("Show the heat map large, below the viewer")
        self.heatmap_dock_button.clicked.connect(self.show_heatmap_dock)
        self.export_button = QPushButton("Export metrics CSV…")
        self.export_button.setToolTip(
            "Per-window metrics (one row per window) and, next to it, <name>_correlations.csv")
        self.export_button.clicked.connect(self._on_export_clicked)
        out_row = QHBoxLayout()
        out_row.addWidget(self.heatmap_dock_button)
        out_row.addWidget(self.export_button)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.status_label)
        layout.addWidget(self.window_title)
        layout.addWidget(self.metrics_table)
        layout.addLayout(table_row)
        corr_title = QLabel("<b>Latent features vs physics</b> (Spearman ρ over windows)")
        corr_title.setWordWrap(True)
        layout.addWidget(corr_title)
        layout.addLayout(corr_settings)
        layout.addLayout(corr_buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.corr_label)
        layout.addWidget(self.heatmap, 1)
        layout.addWidget(self.strongest_label)
        layout.addLayout(out_row)
        fill_with_scrolling(self, content)
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self._corr_worker is not None
        self.compute_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.export_button.setEnabled(self.correlation is not None and not running)

    # --------------------------------------------------------------------- table contents
    def _set_cell(self, row: int, column: int, text: str) -> None:
        for table in self._tables:
            table.set_text(row, column, text)

    def _set_column(self, column: int, metrics: dict | None, keep_tau: bool = False) -> None:
        """Show ``metrics`` in ``column`` (None: dashes); ``keep_tau`` leaves the τ cell."""
        for row, (key, _, kind) in enumerate(METRIC_ROWS):
            if key == TORTUOSITY_KEY and (keep_tau or metrics is None or key not in metrics):
                if metrics is None:
                    self._set_cell(row, column, "–")
                continue
            self._set_cell(row, column, format_metric(metrics.get(key) if metrics else None,
                                                      kind))

    def _set_tau(self, column: int, text: str) -> None:
        self._set_cell(len(METRIC_ROWS) - 1, column, text)

    def _set_time(self, column: int, cheap: str | None = None, tau: str | None = None) -> None:
        if cheap is not None:
            self._times[column] = cheap
        if tau is not None:
            self._tau_times[column] = tau
        parts = [p for p in (self._times[column], self._tau_times[column]) if p]
        self._set_cell(len(METRIC_ROWS), column, "\n".join(parts) or "–")

    def column_texts(self, column: int) -> list[str]:
        """Texts of one column of the metrics table, top to bottom (for tests and copying)."""
        return self.metrics_table.column_texts(column)

    # ------------------------------------------------------------------------- state events
    def _problem(self) -> str:
        """Why no window can be measured now ("" if one can)."""
        state = self.state
        if state.model is None:
            return NO_MODEL_MESSAGE
        if self._snapshot is None or self._snapshot_source is not state.model:
            return MODEL_PENDING_MESSAGE
        if state.dataset is None:
            return f"no windows: {state.window_error or 'pick stacks in the Data panel'}"
        if not state.model_matches_dataset():
            c, spec = self._snapshot.config, state.dataset.spec
            return (f"the model takes windows of {c.window_length} slices × {c.crop}² but the "
                    f"current windows are {spec.length} × {spec.crop}²; retrain or change the "
                    "window settings")
        return ""

    def _on_model_version_changed(self, _event: Any = None) -> None:
        model = self.state.model
        self._snapshot = None if model is None else model_snapshot(model)
        self._snapshot_source = model
        self._request_window()
        self._update_buttons()

    def _on_model_changed(self, _event: Any = None) -> None:
        self._request_window()

    def _on_selected_window_changed(self, _event: Any = None) -> None:
        self._request_window()

    def _on_dataset_changed(self, _event: Any = None) -> None:
        if self.correlation is not None and self.correlation.dataset is not self.state.dataset:
            self._clear_correlation("windows changed: compute the correlations again")
        self._request_window()

    def _on_latents_changed(self, _event: Any = None) -> None:
        """New latents of the same windows: correlate them with the metrics already computed."""
        result = self.correlation
        if result is None:
            return
        latents = self._latents_for(result.indices, quiet=True)
        if latents is None:
            self._clear_correlation("latents changed: compute the correlations again")
            return
        try:
            names, rho, p = _checked(latent_metric_correlations, latents, result.rows,
                                     extra=result.extra)
        except ElectrodeCAEError as exc:
            self._report_error(exc)
            return
        self._show_correlation(CorrelationResult(
            result.dataset, result.indices, result.rows, result.extra, names, rho, p,
            strongest_correlations(names, rho, p, top=5), result.seconds, result.tortuosity))

    # ------------------------------------------------------------------- window columns
    def _request_window(self) -> None:
        self._window_gen += 1
        problem = self._problem()
        if problem:
            self.status_label.setText(problem)
            self.window_title.setText("<b>Selected window</b>")
            for column in (ORIGINAL, RECONSTRUCTION):
                self._set_column(column, None)
                self._set_time(column, "", "")
            return
        dataset = self.state.dataset
        index = int(np.clip(self.state.selected_window, 0, len(dataset) - 1))
        if not self.table_visible:
            self._window_dirty = True  # measured when a table is shown
            self.status_label.setText(f"window {index}")
            return
        self._window_dirty = False
        self.status_label.setText(f"measuring window {index} …")
        for column in (ORIGINAL, RECONSTRUCTION):
            self._set_tau(column, "…")
        self._window_runner.submit(window_physics, self._snapshot, dataset, index,
                                   self._window_gen)

    def _on_window_physics(self, result: WindowPhysics) -> None:
        """Main thread: show the cheap metrics; start the tortuosity stage."""
        if result.generation != self._window_gen or result.dataset is not self.state.dataset:
            return
        stack_index, z, y, x = result.dataset.origin(result.index)
        stack = result.dataset.stacks[stack_index]
        self.window_title.setText(
            f"<b>Window {result.index}</b>: {stack.name or stack_index} [{stack.tag}] at "
            f"z {z}, y {y}, x {x}")
        for column, volume in ((ORIGINAL, result.original),
                               (RECONSTRUCTION, result.reconstruction)):
            self._set_column(column, volume.metrics, keep_tau=True)
            self._set_tau(column, "solving …")
            self._set_time(column, format_seconds(volume.seconds), "")
        self.status_label.setText(f"window {result.index}: solving the pore tortuosity …")
        self._window_tau_runner.submit(window_tortuosity, result)

    def _on_window_tortuosity(self, result: TortuosityPair) -> None:
        if result.generation != self._window_gen:
            return
        for column, volume in ((ORIGINAL, result.original),
                               (RECONSTRUCTION, result.reconstruction)):
            self._set_tau(column, format_metric(volume.metrics[TORTUOSITY_KEY], "tau"))
            self._set_time(column, tau=f"τ {format_seconds(volume.seconds)}")
        self.status_label.setText(f"window {self.state.selected_window}: done")

    # ------------------------------------------------------------------- decoded column
    def _watch_decoded_layer(self, _event: Any = None) -> None:
        """Follow the decoded layer's data events (the layer may come and go)."""
        name = _layers.DECODED_LAYER
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is self._decoded_layer:
            return
        self._unwatch_decoded_layer()
        self._decoded_layer = layer
        if layer is None:
            self._decoded_gen += 1
            self._decoded_labels = None
            self._tau_timer.stop()
            self._set_column(DECODED, None)
            self._set_time(DECODED, "", "")
            return
        layer.events.data.connect(self._on_decoded_data)
        self._on_decoded_data()

    def _unwatch_decoded_layer(self) -> None:
        if self._decoded_layer is not None:
            self._decoded_layer.events.data.disconnect(self._on_decoded_data)
            self._decoded_layer = None

    def _on_decoded_data(self, _event: Any = None) -> None:
        """The decoded layer changed: measure a copy of its data (latest wins)."""
        layer = self._decoded_layer
        if layer is None:
            return
        self._decoded_gen += 1
        data = np.asarray(layer.data)
        if data.ndim != 3:
            self._decoded_labels = None
            self._set_column(DECODED, None)
            self._set_time(DECODED, "", "")
            return
        if not self.table_visible:
            self._decoded_dirty = True  # measured when a table is shown
            self._tau_timer.stop()
            return
        self._decoded_dirty = False
        self._decoded_labels = np.array(data, copy=True)
        dataset = self.state.dataset
        self._decoded_voxel = (dataset.voxel_size_um if dataset is not None
                               else float(np.asarray(layer.scale)[-1]))
        live = self.live_tau_check.isChecked()
        self._set_tau(DECODED, "…")
        self._set_time(DECODED, tau="")
        self._decoded_runner.submit(measure_volume, self._decoded_labels, self._decoded_voxel,
                                    self._decoded_gen, live)
        if live:
            self._tau_timer.stop()
        else:
            self._tau_timer.start()  # restarts: solve once the slider is still

    @property
    def table_visible(self) -> bool:
        """True if a metrics table is on screen (hidden tables are not kept up to date)."""
        return any(table.isVisible() for table in self._tables)

    def _on_table_shown(self) -> None:
        """A table came on screen: measure what changed while none was."""
        if self._window_dirty:
            self._request_window()
        if self._decoded_dirty and self._decoded_layer is not None:
            self._on_decoded_data()

    def _on_decoded_metrics(self, result: VolumeMetrics) -> None:
        # Results come in request order; show every one that arrives (it is the newest done).
        self._decoded_volume = result
        live_tau = TORTUOSITY_KEY in result.metrics
        self._set_column(DECODED, result.metrics, keep_tau=not live_tau)
        suffix = " incl. τ" if live_tau else ""
        self._set_time(DECODED, format_seconds(result.seconds) + suffix)

    def _solve_decoded_tortuosity(self) -> None:
        if self._decoded_labels is None or self.live_tau_check.isChecked():
            return
        self._set_tau(DECODED, "solving …")
        volume = VolumeMetrics(self._decoded_gen, {}, 0.0, self._decoded_labels,
                               self._decoded_voxel)
        self._decoded_tau_runner.submit(measure_tortuosity, volume)

    def _on_decoded_tortuosity(self, result: VolumeMetrics) -> None:
        if result.generation != self._decoded_gen:
            return  # the slider moved on meanwhile; a newer solve follows
        self._set_tau(DECODED, format_metric(result.metrics[TORTUOSITY_KEY], "tau"))
        self._set_time(DECODED, tau=f"τ {format_seconds(result.seconds)}")

    def _on_live_tau_toggled(self, checked: bool) -> None:
        if self._decoded_layer is not None:
            self._on_decoded_data()

    @property
    def idle(self) -> bool:
        """True when no metrics job is running or pending (the correlation worker aside)."""
        return all(r.idle for r in (self._window_runner, self._window_tau_runner,
                                    self._decoded_runner, self._decoded_tau_runner)) \
            and not self._tau_timer.isActive()

    # ------------------------------------------------------------------------- correlations
    def _latents_for(self, indices: np.ndarray, quiet: bool = False) -> np.ndarray | None:
        latents, dataset = self.state.latents, self.state.dataset
        problem = ""
        if self.state.model is None:
            problem = NO_MODEL_MESSAGE
        elif latents is None or dataset is None:
            problem = f"no encoded windows: {NO_MODEL_MESSAGE}"
        elif latents.ndim != 2 or len(latents) != len(dataset):
            problem = (f"the latents cover {len(latents)} windows but the current windows are "
                       f"{len(dataset)}; retrain or reopen the run")
        if problem:
            if not quiet:
                raise PhysicsPanelError(problem)
            return None
        return np.asarray(latents)[np.asarray(indices, dtype=np.int64)]

    def compute_correlations(self) -> None:
        """Start the metrics-and-correlations worker (errors go to the status label)."""
        if self._corr_worker is not None:
            return
        try:
            self._start_correlations()
        except ElectrodeCAEError as exc:
            self._report_error(exc)

    def _start_correlations(self) -> None:
        from napari.qt.threading import create_worker

        dataset = self.state.dataset
        if self.state.model is None or dataset is None:
            raise PhysicsPanelError(NO_MODEL_MESSAGE if self.state.model is None else
                                    f"no windows: {self.state.window_error}")
        indices = select_windows(np.arange(len(dataset)), self.max_windows_spin.value(),
                                 seed=self.state.seed)
        if len(indices) < 3:
            raise PhysicsPanelError(f"correlations need at least 3 windows, there are "
                                    f"{len(indices)}")
        latents = self._latents_for(indices)
        split = self.state.split
        splits = {}
        if split is not None:
            splits.update({int(i): "train" for i in split.train})
            splits.update({int(i): "val" for i in split.val})
        with_tau = self.corr_tau_check.isChecked()
        worker = create_worker(correlation_job, self._corr_guard, dataset, indices, latents,
                               with_tau, splits, _start_thread=False)
        worker.yielded.connect(self._on_corr_progress)
        worker.returned.connect(self._on_corr_returned)
        worker.errored.connect(self._on_corr_errored)
        worker.aborted.connect(self._on_corr_aborted)
        worker.finished.connect(self._on_corr_finished)
        self._corr_worker = worker
        self._corr_done = 0
        self.progress_bar.setRange(0, len(indices))
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(PROGRESS_FORMAT)
        subset = "" if len(indices) == len(dataset) else (
            f" (seeded subset of {len(dataset)})")
        self.corr_label.setText(f"measuring {len(indices)} windows{subset}"
                                + (" with tortuosity" if with_tau else "") + " …")
        self._update_buttons()
        self._tracker.track(worker)
        worker.start()

    def stop_correlations(self) -> None:
        """Ask the correlation worker to stop after the current window."""
        if self._corr_worker is not None:
            self._corr_worker.quit()
            self.corr_label.setText("stopping after the current window …")

    @property
    def correlation_running(self) -> bool:
        """True while a correlation worker exists (started, running or finishing)."""
        return self._corr_worker is not None

    def _on_corr_progress(self, progress: WindowMetricsProgress) -> None:
        self._corr_done = progress.done
        self.progress_bar.setRange(0, progress.total)
        self.progress_bar.setValue(progress.done)

    def _on_corr_returned(self, result: CorrelationResult | None) -> None:
        if result is None:
            return
        if result.dataset is not self.state.dataset:
            self.corr_label.setText("windows changed meanwhile: compute the correlations again")
            return
        self._show_correlation(result)

    def _on_corr_errored(self, exc: Exception) -> None:
        self._report_error(exc)

    def _on_corr_aborted(self) -> None:
        self.corr_label.setText(f"stopped after {self._corr_done} of "
                                f"{self.progress_bar.maximum()} windows; nothing changed")

    def _on_corr_finished(self) -> None:
        self._corr_worker = None
        self._update_buttons()

    def _show_correlation(self, result: CorrelationResult) -> None:
        self.correlation = result
        for heatmap in self._heatmaps:
            heatmap.set_correlations(result.names, result.rho)
        n = len(result.indices)
        self.corr_label.setText(
            f"{n} windows, {len(result.names)} variables, {format_seconds(result.seconds)}"
            + ("" if result.tortuosity else "; tortuosity left out"))
        lines = [f"z{j + 1} ~ {name}: ρ = {rho:+.2f} (p {p:.2g})"
                 for j, name, rho, p in result.strongest]
        self.strongest_label.setText("<b>Strongest</b><br>" + "<br>".join(lines)
                                     if lines else "no finite correlation")
        self._update_buttons()

    def _show_no_count(self) -> None:
        """An empty progress bar that says so ("0 / 1 windows" would read as a count)."""
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(NOT_MEASURED_FORMAT)

    def _clear_correlation(self, message: str) -> None:
        self.correlation = None
        for heatmap in self._heatmaps:
            heatmap.clear()
        if self._corr_worker is None:  # the old count no longer describes anything shown
            self._show_no_count()
        self.strongest_label.setText("")
        self.corr_label.setText(message)
        self._update_buttons()

    def strongest_texts(self) -> list[str]:
        """The strongest-correlation lines under the heat map."""
        text = self.strongest_label.text().replace("<b>Strongest</b><br>", "")
        return [line for line in text.split("<br>") if line]

    # ------------------------------------------------------------------------------- export
    def export_metrics(self, path: str | Path) -> tuple[Path, Path]:
        """Write the per-window metrics and the correlations of the last analysis as CSV.

        Parameters
        ----------
        path : str or Path
            The metrics CSV (one row per analysed window); the correlations go next to it as
            ``<stem>_correlations.csv`` (one row per latent feature and variable).

        Returns
        -------
        (Path, Path)
            The metrics and correlations files.

        Raises
        ------
        PhysicsPanelError
            If no correlations have been computed yet.
        """
        result = self.correlation
        if result is None:
            raise PhysicsPanelError("no per-window metrics yet: press Compute correlations "
                                    "first")
        path = Path(path)
        metrics_path = write_metrics_csv(path, result.rows)
        corr_path = write_correlations_csv(path.with_name(f"{path.stem}_correlations.csv"),
                                           result.names, result.rho, result.p_values)
        return metrics_path, corr_path

    def _on_export_clicked(self) -> None:
        from napari.utils.notifications import show_info

        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv",
                                              "CSV files (*.csv)")
        if not path:
            return
        try:
            metrics_path, corr_path = self.export_metrics(path)
        except (ElectrodeCAEError, OSError) as exc:
            self._report_error(exc)
            return
        message = f"metrics written to {metrics_path} and {corr_path.name}"
        self.corr_label.setText(message)
        show_info(message)

    # ----------------------------------------------------------------------------- docks
    def show_table_dock(self) -> Any:
        """Show a copy of the metrics table in a dock of its own (right of the viewer)."""
        if self._table_dock is not None:
            self._table_dock.show()
            self._table_dock.raise_()
            return self._table_dock
        table = MetricsTable()
        for row in range(table.rowCount()):
            for column in range(table.columnCount()):
                table.set_text(row, column, self.metrics_table.item(row, column).text())
        table.shown.connect(self._on_table_shown)
        self._tables.append(table)
        dock = self.viewer.window.add_dock_widget(table, name="Physics: metrics", area="right")
        self._table_dock = dock
        table.destroyed.connect(lambda *_: self._forget_dock("table"))
        return dock

    def show_heatmap_dock(self) -> Any:
        """Show a large copy of the heat map in a dock of its own, below the viewer."""
        if self._heatmap_dock is not None:
            self._heatmap_dock.show()
            self._heatmap_dock.raise_()
            return self._heatmap_dock
        heatmap = CorrelationHeatmap(min_height=300)
        if self.correlation is not None:
            heatmap.set_correlations(self.correlation.names, self.correlation.rho)
        self._heatmaps.append(heatmap)
        dock = self.viewer.window.add_dock_widget(heatmap, name="Physics: latent correlations",
                                                  area="bottom")
        self._heatmap_dock = dock
        heatmap.destroyed.connect(lambda *_: self._forget_dock("heatmap"))
        return dock

    def _forget_dock(self, which: str) -> None:
        if which == "table":
            self._tables = [self.metrics_table]
            self._table_dock = None
        else:
            self._heatmaps = [self.heatmap]
            self._heatmap_dock = None

    # ------------------------------------------------------------------------------ errors
    def _report_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        message = str(exc)
        self.status_label.setText(f"error: {message}")
        if message != self._last_error:  # a slider drag must not stack notifications
            self._last_error = message
            show_error(message)

    def _on_job_error(self, exc: Exception) -> None:
        self._report_error(exc)

    # ------------------------------------------------------------------------------ cleanup
    def shutdown(self) -> None:
        """Stop every worker of the panel, wait for them and disconnect from state and viewer."""
        self._tau_timer.stop()
        for runner in (self._window_runner, self._window_tau_runner, self._decoded_runner,
                       self._decoded_tau_runner):
            runner.shutdown()
        if self._corr_worker is not None:
            self._corr_worker.quit()
        self._corr_guard.close_and_wait(SHUTDOWN_TIMEOUT_S)
        self._tracker.wait(SHUTDOWN_TIMEOUT_S)
        self._unwatch_decoded_layer()
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._connections = []
