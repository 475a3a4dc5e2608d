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
iter_window_metrics` over the windows that share no voxel (or a seeded subset of them) in a
stoppable generator worker, then :func:`~napari_electrode_cae.core.analysis.correlation_study`
of ``state.latents`` with the metrics, the window depth and the CAL tag (FDR-corrected, against a
random encoder, partial rho given the phase fractions). The heat map colours only the pairs that
survive (rows: latent features; also in a dock of its own, large enough to read); the list
under it gives their q and partial rho, or the study's note when nothing survives.

The jobs are in :mod:`.physics_jobs`, the table and heat map in :mod:`.physics_views`, and the
correlations, CSV export and docks in :mod:`.physics_correlations`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core import DEFAULT_VOXEL_SIZE_UM, ElectrodeCAEError
from ..core.model import ConvAutoEncoder3d
from .live_decoder import ChainedRunner, model_snapshot
from .panel_base import SHUTDOWN_TIMEOUT_S, Panel, WorkerSet
from .physics_correlations import (  # noqa: F401 (re-exported: tests use these names)
    DEFAULT_MAX_WINDOWS,
    NOT_MEASURED_FORMAT,
    PROGRESS_FORMAT,
    PhysicsCorrelations,
)
from .physics_jobs import (  # noqa: F401 (re-exported: tests and benchmarks use these names)
    DEPTH_COLUMN,
    TAG_COLUMN,
    TORTUOSITY_DEVICE,
    TORTUOSITY_KEY,
    CorrelationResult,
    PhysicsPanelError,
    TortuosityPair,
    VolumeMetrics,
    WindowPhysics,
    WorkerGuard,
    _checked,
    correlation_job,
    measure_tortuosity,
    measure_volume,
    study_of,
    tag_value,
    window_physics,
    window_tortuosity,
)
from .physics_views import (  # noqa: F401 (re-exported: tests use these names)
    ANNOTATE_ABS_RHO,
    BACKGROUND,
    COLUMN_TITLES,
    COLUMNS,
    DECODED,
    FOREGROUND,
    METRIC_ROWS,
    ORIGINAL,
    RECONSTRUCTION,
    TIME_ROW_LABEL,
    CorrelationHeatmap,
    MetricsTable,
    format_metric,
    format_seconds,
)
from .results_panel import MODEL_PENDING_MESSAGE, NO_MODEL_MESSAGE
from .scrolling import fill_with_scrolling

if TYPE_CHECKING:
    import napari

    from .state import CAEState

#: Quiet time after the last decoded-volume change before its tortuosity is solved (ms).
TORTUOSITY_DEBOUNCE_MS = 300


class _TrackedChainedRunner(ChainedRunner):
    """A :class:`.live_decoder.ChainedRunner` whose workers the panel's :class:`WorkerSet`
    follows (so that shutdown waits for them)."""

    def __init__(self, workers: WorkerSet, on_result, on_error=None) -> None:
        super().__init__(on_result, on_error)
        self._workers = workers

    def _start(self, function, args) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(self._guarded_job, function, args, _start_thread=False)
        worker.returned.connect(self._deliver)
        worker.errored.connect(self._on_worker_errored)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self._workers.track(worker)
        worker.start()


# ---------------------------------------------------------------------------------- panel
class PhysicsPanel(PhysicsCorrelations, Panel):
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

    def __init__(
        self, viewer: napari.Viewer, state: CAEState, parent: QWidget | None = None
    ) -> None:
        super().__init__(viewer, state, parent)
        self._snapshot: ConvAutoEncoder3d | None = None
        self._snapshot_source: ConvAutoEncoder3d | None = None
        self._window_gen = 0
        self._decoded_gen = 0
        self._decoded_volume: VolumeMetrics | None = None  # latest cheap decoded result
        self._decoded_labels: np.ndarray | None = None  # latest decoded data (copy)
        self._decoded_voxel = DEFAULT_VOXEL_SIZE_UM
        self._decoded_layer: Any = None
        self._last_error = ""
        runner = _TrackedChainedRunner
        self._window_runner = runner(self.workers, self._on_window_physics, self._on_job_error)
        self._window_tau_runner = runner(
            self.workers, self._on_window_tortuosity, self._on_job_error
        )
        self._decoded_runner = runner(self.workers, self._on_decoded_metrics, self._on_job_error)
        self._decoded_tau_runner = runner(
            self.workers, self._on_decoded_tortuosity, self._on_job_error
        )
        self._times: list[str] = ["", "", ""]
        self._tau_times: list[str] = ["", "", ""]
        self._corr_worker: Any = None
        self._corr_guard = WorkerGuard()
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
        self.connect_events(
            (state.events.model_version, self._on_model_version_changed),
            (state.events.model, self._on_model_changed),
            (state.events.selected_window, self._on_selected_window_changed),
            (state.events.dataset, self._on_dataset_changed),
            (state.events.latents, self._on_latents_changed),
            (viewer.layers.events.inserted, self._watch_decoded_layer),
            (viewer.layers.events.removed, self._watch_decoded_layer),
        )
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
            f"{TORTUOSITY_DEBOUNCE_MS} ms"
        )
        self.live_tau_check.toggled.connect(self._on_live_tau_toggled)
        self.table_dock_button = QPushButton("Table beside viewer")
        self.table_dock_button.setToolTip(
            "Show a copy of this table in a dock of its own, to watch the decoded column while "
            "moving the sliders of the Latents tab"
        )
        self.table_dock_button.clicked.connect(self.show_table_dock)
        table_row = QHBoxLayout()
        table_row.addWidget(self.live_tau_check)
        table_row.addStretch(1)
        table_row.addWidget(self.table_dock_button)

        self.max_windows_spin = QSpinBox()
        self.max_windows_spin.setRange(3, 1_000_000)
        self.max_windows_spin.setValue(DEFAULT_MAX_WINDOWS)
        self.max_windows_spin.setToolTip(
            "Analyse at most this many windows that share no voxel (a seeded random subset "
            "when there are more); overlapping windows are near copies and would fake "
            "significance"
        )
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
        self.strongest_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.heatmap_dock_button = QPushButton("Heat map in own dock")
        self.heatmap_dock_button.setToolTip("Show the heat map large, below the viewer")
        self.heatmap_dock_button.clicked.connect(self.show_heatmap_dock)
        self.export_button = QPushButton("Export metrics CSV…")
        self.export_button.setToolTip(
            "Per-window metrics (one row per window) and, next to it, <name>_correlations.csv"
        )
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
        corr_title = QLabel(
            "<b>Latent features vs physics</b> (Spearman ρ over non-overlapping windows; only "
            "pairs that survive FDR and a random encoder)"
        )
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
            self._set_cell(row, column, format_metric(metrics.get(key) if metrics else None, kind))

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
            return (
                f"the model takes windows of {c.window_length} slices × {c.crop}² but the "
                f"current windows are {spec.length} × {spec.crop}²; retrain or change the "
                "window settings"
            )
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
        if latents is None or latents.shape[1] != result.random_latents.shape[1]:
            # (another latent size: the random-encoder baseline is another model's)
            self._clear_correlation("latents changed: compute the correlations again")
            return
        try:
            study = study_of(latents, result)
        except ElectrodeCAEError as exc:
            self._report_error(exc)
            return
        self._show_correlation(replace(result, study=study))

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
        self._window_runner.submit(window_physics, self._snapshot, dataset, index, self._window_gen)

    def _on_window_physics(self, result: WindowPhysics) -> None:
        """Main thread: show the cheap metrics; start the tortuosity stage."""
        if result.generation != self._window_gen or result.dataset is not self.state.dataset:
            return
        stack_index, z, y, x = result.dataset.origin(result.index)
        stack = result.dataset.stacks[stack_index]
        self.window_title.setText(
            f"<b>Window {result.index}</b>: {stack.name or stack_index} [{stack.tag}] at "
            f"z {z}, y {y}, x {x}"
        )
        for column, volume in (
            (ORIGINAL, result.original),
            (RECONSTRUCTION, result.reconstruction),
        ):
            self._set_column(column, volume.metrics, keep_tau=True)
            self._set_tau(column, "solving …")
            self._set_time(column, format_seconds(volume.seconds), "")
        self.status_label.setText(f"window {result.index}: solving the pore tortuosity …")
        self._window_tau_runner.submit(window_tortuosity, result)

    def _on_window_tortuosity(self, result: TortuosityPair) -> None:
        if result.generation != self._window_gen:
            return
        for column, volume in (
            (ORIGINAL, result.original),
            (RECONSTRUCTION, result.reconstruction),
        ):
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
        self._decoded_voxel = (
            dataset.voxel_size_um if dataset is not None else float(np.asarray(layer.scale)[-1])
        )
        live = self.live_tau_check.isChecked()
        self._set_tau(DECODED, "…")
        self._set_time(DECODED, tau="")
        self._decoded_runner.submit(
            measure_volume, self._decoded_labels, self._decoded_voxel, self._decoded_gen, live
        )
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
        volume = VolumeMetrics(
            self._decoded_gen, {}, 0.0, self._decoded_labels, self._decoded_voxel
        )
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
        return (
            all(
                r.idle
                for r in (
                    self._window_runner,
                    self._window_tau_runner,
                    self._decoded_runner,
                    self._decoded_tau_runner,
                )
            )
            and not self._tau_timer.isActive()
        )

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
    def stop_work(self) -> None:
        """Before the workers are waited for: runners closed, the correlation asked to stop."""
        self._tau_timer.stop()
        for runner in (
            self._window_runner,
            self._window_tau_runner,
            self._decoded_runner,
            self._decoded_tau_runner,
        ):
            runner.shutdown()
        if self._corr_worker is not None:
            self._corr_worker.quit()
        self._corr_guard.close_and_wait(SHUTDOWN_TIMEOUT_S)

    def after_workers_stopped(self) -> None:
        self._unwatch_decoded_layer()
