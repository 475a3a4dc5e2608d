"""Results panel: one window and its reconstruction side by side, with the paper's statistics.

The user picks a window (spin box bound to ``state.selected_window``, a random validation
window, or a click in a stack layer). A background worker reconstructs it with an eval snapshot
of the model and compares it with the original (``core.compare_window``); a main-thread slot then
writes the original, the reconstruction snapped to phases and, optionally, the continuous
reconstruction into three layers that are created once and updated in place. "Side by side"
turns on napari's grid mode (linked cameras and slice) and hides the full-stack layers while it
is on. Each expensive napari call (adding a layer, switching the grid on or re-shaping it, a
name overlay) gets an event-loop turn of its own (:class:`.turns.TurnScheduler`), so showing the
first result never freezes the viewer for the sum of them; later results only replace the
layers' data. The statistics tables show, first, the phase judgement of all validation
windows from ``state.report`` (phase fractions, IoU, voxel accuracy, NMSE, TPB, by the model's
phase rule) with a warning banner when the model collapsed to the mean or diverged, then the
paper's set-level MSE statistics (Tables 6 and 8) and the shown window's comparison (Table 7
plus phase checks).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core.model import ConvAutoEncoder3d
from .live_decoder import ChainedRunner, model_snapshot
from .panel_base import Panel
from .results_tables import (  # noqa: F401 (re-exported)
    BANNER_STYLES,
    PHASE_LABELS,
    ReportTables,
    StatisticsTable,
    comparison_rows,
    health_banner_text,
    mse_rows,
    phase_rows,
    phases_title,
)
from .results_view import (  # noqa: F401 (re-exported)
    VIEW_3D_ANGLES,
    WINDOW_LAYER_NAMES,
    WindowResult,
    WindowViews,
    grid_shape,
    reconstruct_window,
    reset_view_to,
    viewer_camera,
    window_at,
    window_translate,
)
from .scrolling import fill_with_scrolling
from .turns import TurnQueue, TurnScheduler

if TYPE_CHECKING:
    import napari

    from .state import CAEState

NO_MODEL_MESSAGE = "train a model or open a run first"
#: Shown while ``state.model`` is a model whose weights are not final yet (training started or a
#: run is being evaluated; ``model_version`` is bumped when it is ready).
MODEL_PENDING_MESSAGE = "a new model is being trained or evaluated; results appear when it is ready"


class ResultsPanel(WindowViews, ReportTables, Panel):
    """Pick a window and see it next to its reconstruction, with the paper's statistics.

    Reads ``state.model``, ``model_version``, ``dataset``, ``split``, ``report``,
    ``stack_layers``; reads and writes ``state.selected_window``. A new ``state.model`` is used
    once ``model_version`` is bumped (until then it is still being trained or evaluated).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the window layers are drawn into.
    state : CAEState
        The plugin's shared state.
    turns : TurnQueue, optional
        Event-loop turns shared with other panels for expensive layer work (see
        :mod:`.turns`); by default the panel's own.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        state: CAEState,
        parent: QWidget | None = None,
        turns: TurnQueue | None = None,
    ) -> None:
        super().__init__(viewer, state, parent)
        self._snapshot: ConvAutoEncoder3d | None = None
        self._snapshot_source: ConvAutoEncoder3d | None = None  # state.model it was copied from
        self._runner = ChainedRunner(self._on_window_result, self._on_job_error)
        self._rng = np.random.default_rng()
        self._hidden_layers: list[str] = []  # full-stack layers hidden by side-by-side
        self._watched_outline: Any = None  # outline layer kept hidden while side by side
        self._shown_origin: tuple | None = None
        self._last_result: WindowResult | None = None  # the result the layers show
        self._pending_result: WindowResult | None = None  # arrived, not shown yet
        self._enter_pending = False  # go side by side once the window layers exist
        self._focus_pending = False  # fit the camera / slice to the window
        self._tilt_pending = self.viewer.dims.ndisplay == 3  # next 3D fit: VIEW_3D_ANGLES
        self._collected = False  # the garbage collector ran before this burst of layer work
        self._steps = TurnScheduler(self._apply_step, self, turns)
        self._build_ui()
        self.connect_events(
            (state.events.model_version, self._on_model_version_changed),
            (state.events.model, self._on_model_changed),
            (state.events.selected_window, self._on_selected_window_changed),
            (state.events.dataset, self._on_dataset_changed),
            (state.events.split, self._on_split_changed),
            (state.events.report, self._on_report_changed),
            (viewer.dims.events.ndisplay, self._on_ndisplay_changed),
            (viewer.canvas.grid.events.enabled, self._on_grid_enabled_changed),
            (viewer.layers.events.inserted, self._on_layers_changed),
            (viewer.layers.events.removed, self._on_layers_changed),
        )
        viewer.mouse_drag_callbacks.append(self._on_mouse_drag)
        self._on_dataset_changed()
        self._on_report_changed()
        self._on_model_version_changed()

    # ----------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self.status_label = QLabel(NO_MODEL_MESSAGE)
        self.status_label.setWordWrap(True)
        self.window_spin = QSpinBox()
        self.window_spin.setToolTip("Index of the window shown (shared with the Windows panel)")
        self.window_spin.setKeyboardTracking(False)
        self.window_spin.valueChanged.connect(self._on_spin_changed)
        self.random_val_button = QPushButton("Random validation window")
        self.random_val_button.clicked.connect(self._on_random_val_clicked)
        pick_row = QHBoxLayout()
        pick_row.addWidget(self.window_spin, 1)
        pick_row.addWidget(self.random_val_button)
        self.window_label = QLabel("")
        self.window_label.setWordWrap(True)
        hint = QLabel("Or click a voxel in a stack layer to show the window around it.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray")

        self.side_by_side_check = QCheckBox("Side by side")
        self.side_by_side_check.setChecked(True)
        self.side_by_side_check.setToolTip(
            "Grid view with linked cameras and slice; hides the full-stack layers meanwhile"
        )
        self.side_by_side_check.toggled.connect(self._on_side_by_side_toggled)
        self.three_d_check = QCheckBox("3D")
        self.three_d_check.setChecked(self.viewer.dims.ndisplay == 3)
        self.three_d_check.toggled.connect(self._on_three_d_toggled)
        self.values_check = QCheckBox("Continuous values")
        self.values_check.setToolTip(
            "Also show the reconstruction before snapping to phases (pore -1, CBD 0, active +1)"
        )
        self.values_check.toggled.connect(self._on_values_toggled)
        view_row = QHBoxLayout()
        for check in (self.side_by_side_check, self.three_d_check, self.values_check):
            view_row.addWidget(check)
        view_row.addStretch(1)
        # in 2D the Z slider spans the whole stack (napari counts every layer, hidden or not):
        # say which slices hold the window, since its panels are black outside them
        self.slice_hint = QLabel()
        self.slice_hint.setWordWrap(True)
        self.slice_hint.setStyleSheet("color: gray")
        self.slice_hint.hide()

        # an unhealthy model is never shown without this banner
        self.health_banner = QLabel()
        self.health_banner.setWordWrap(True)
        self.health_banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.health_banner.setVisible(False)
        self.phases_title = QLabel()
        self.phases_title.setWordWrap(True)
        self.phases_table = StatisticsTable(("Original", "Reconstr.", "IoU"))
        self.phases_table.setToolTip(
            "Phases of all validation windows, original against reconstruction snapped by the "
            "model's phase rule: volume fractions, intersection over union per phase, the "
            "share of voxels whose phase is right, NMSE (validation MSE over the data's "
            "variance; 1 for a model that outputs the mean) and the spread of the "
            "reconstruction (its standard deviation over the data's), and the triple phase "
            "boundary density"
        )
        self.mse_title = QLabel(
            "<b>The paper's statistics</b>: training vs validation windows "
            "(per-window MSE, Tables 6 and 8)"
        )
        self.mse_title.setWordWrap(True)
        self.mse_table = StatisticsTable(("Training", "Validation"))
        self.mse_table.setToolTip(
            "Per-window MSE of the training and validation windows (Table 6), and Welch's "
            "t-test between them (Table 8). The Table 7 window is the validation window the "
            "evaluation report compares in detail (drawn with the run's seed, so the same for "
            "every reader of the report); the table below compares the window shown now."
        )
        self.window_table = StatisticsTable(("Original", "Reconstruction"))
        form = QFormLayout()
        form.addRow("Window", pick_row)
        # in a scroll area: with the warning banner and three tables the tab can be taller
        # than the dock
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.status_label)
        layout.addWidget(self.health_banner)
        layout.addLayout(form)
        layout.addWidget(self.window_label)
        layout.addWidget(hint)
        layout.addLayout(view_row)
        layout.addWidget(self.slice_hint)
        layout.addWidget(self.phases_title)
        layout.addWidget(self.phases_table)
        layout.addWidget(self.mse_title)
        layout.addWidget(self.mse_table)
        self.window_title = QLabel("<b>Shown window</b>")
        layout.addWidget(self.window_title)
        layout.addWidget(self.window_table)
        layout.addStretch(1)
        fill_with_scrolling(self, content)

    # ------------------------------------------------------------------------- state events
    def _on_model_changed(self, _event: Any = None) -> None:
        """A new model object without a version bump is not final yet: wait for the bump."""
        self._request_window()

    def _on_model_version_changed(self, _event: Any = None) -> None:
        model = self.state.model
        self._snapshot = None if model is None else model_snapshot(model)
        self._snapshot_source = model
        self._request_window()

    def _on_selected_window_changed(self, _event: Any = None) -> None:
        self._sync_spin()
        self._request_window()

    def _on_dataset_changed(self, _event: Any = None) -> None:
        dataset = self.state.dataset
        self.window_spin.blockSignals(True)
        self.window_spin.setRange(0, max(len(dataset) - 1, 0) if dataset is not None else 0)
        self.window_spin.blockSignals(False)
        self._sync_spin()
        self._on_split_changed()
        self._request_window()

    def _on_split_changed(self, _event: Any = None) -> None:
        split = self.state.split
        self.random_val_button.setEnabled(split is not None and len(split.val) > 0)

    def _sync_spin(self) -> None:
        self.window_spin.blockSignals(True)
        self.window_spin.setValue(self.state.selected_window)
        self.window_spin.blockSignals(False)

    # ------------------------------------------------------------------------ user actions
    def _on_spin_changed(self, value: int) -> None:
        if value != self.state.selected_window:
            self.state.selected_window = int(value)

    def _on_random_val_clicked(self) -> None:
        split = self.state.split
        if split is None or len(split.val) == 0:
            return
        self.state.selected_window = int(self._rng.choice(split.val))

    def _on_three_d_toggled(self, checked: bool) -> None:
        self.viewer.dims.ndisplay = 3 if checked else 2

    def _on_ndisplay_changed(self, _event: Any = None) -> None:
        self.three_d_check.blockSignals(True)
        self.three_d_check.setChecked(self.viewer.dims.ndisplay == 3)
        self.three_d_check.blockSignals(False)
        self._tilt_pending = self.viewer.dims.ndisplay == 3
        if self.viewer.canvas.grid.enabled:
            self._focus_on_window()
        self._update_slice_hint()

    def _on_grid_enabled_changed(self, _event: Any = None) -> None:
        """napari's own grid button turned the grid off: leave side by side properly."""
        if (
            not self.viewer.canvas.grid.enabled
            and self.side_by_side_check.isChecked()
            and self._hidden_layers
        ):
            self.side_by_side_check.setChecked(False)
        self._update_slice_hint()

    def _on_side_by_side_toggled(self, checked: bool) -> None:
        if checked and self._window_layers():
            self._enter_pending = True
            self._steps.schedule()
        elif not checked:
            self._enter_pending = False
            self._leave_side_by_side()

    def _on_values_toggled(self, checked: bool) -> None:
        name = _layers.RECONSTRUCTION_VALUES_LAYER
        if not checked and name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self._steps.schedule()  # adds the layer when checked; the grid shape follows

    def _on_layers_changed(self, _event: Any = None) -> None:
        if self._hidden_layers or self.viewer.canvas.grid.enabled:
            self._watch_outline()
        self._steps.schedule()  # grid shape and name overlays follow, each in a turn of its own

    # -------------------------------------------------------------------- reconstruction job
    def _problem(self) -> str:
        """Why no window can be shown now ("" if one can)."""
        state = self.state
        if state.model is None:
            return NO_MODEL_MESSAGE
        if self._snapshot is None or self._snapshot_source is not state.model:
            return MODEL_PENDING_MESSAGE
        if state.dataset is None:
            return f"no windows: {state.window_error or 'pick stacks in the Data panel'}"
        c = self._snapshot.config
        if (c.window_length, c.crop) != (state.dataset.spec.length, state.dataset.spec.crop):
            spec = state.dataset.spec
            return (
                f"the model takes windows of {c.window_length} slices × {c.crop}² but the "
                f"current windows are {spec.length} × {spec.crop}²; retrain or change the "
                "window settings"
            )
        return ""

    def _request_window(self) -> None:
        problem = self._problem()
        self.window_spin.setEnabled(self.state.dataset is not None)
        self._update_report_visibility()
        self.window_table.setVisible(not problem)
        self.window_title.setVisible(not problem)
        if problem:
            self.status_label.setText(problem)
            return
        index = int(np.clip(self.state.selected_window, 0, len(self.state.dataset) - 1))
        self.status_label.setText(f"reconstructing window {index} …")
        self._runner.submit(reconstruct_window, self._snapshot, self.state.dataset, index)

    def _on_job_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"error: {exc}")
        show_error(str(exc))

    def _on_window_result(self, result: WindowResult) -> None:
        """Main thread: a reconstruction is ready; shown now, or over the next turns.

        When the window layers exist, its data replace theirs now (cheap); otherwise layers,
        grid and name overlays follow, one expensive call per event-loop turn. Dropped if the
        dataset was replaced meanwhile; replaces a result not shown yet.
        """
        if result.dataset is not self.state.dataset or self._problem():
            return
        if _layers.ORIGINAL_LAYER not in self.viewer.layers and self.side_by_side_check.isChecked():
            # the first window (the Latents panel's decoded layer may exist already): side by
            # side once the window layers exist
            self._enter_pending = True
        self._pending_result = result
        if self._next_piece() is None:
            self._steps.run_now()
        else:
            self._steps.schedule()

    @property
    def idle(self) -> bool:
        """True when no reconstruction is running or waiting and the layers show the newest."""
        return self._runner.idle and self._pending_result is None and not self._steps.pending

    # ------------------------------------------------------------------------------- layers
    def _current(self, result: WindowResult | None) -> WindowResult | None:
        """``result`` if it still belongs to the current dataset and model, else None."""
        if result is None or result.dataset is not self.state.dataset or self._problem():
            return None
        return result

    def _next_piece(self) -> Callable[[], Any] | None:
        """The next expensive call towards showing the newest result; None if only cheap work
        (the layers' data, the tables, the camera) is left.

        In order: a missing window layer, going side by side (stack layers hidden, grid on),
        the grid shape, one name overlay.
        """
        result = self._pending_result = self._current(self._pending_result)
        source = result if result is not None else self._current(self._last_result)
        if source is not None:
            name = self._missing_layer(source)
            if name is not None:
                if not self._collected:
                    return self._collect_garbage
                return lambda: self._add_window_layer(name, source)
        if self._enter_pending:
            if self.side_by_side_check.isChecked() and self._window_layers():
                return self._enter_side_by_side
            self._enter_pending = False
        grid = self.viewer.canvas.grid
        if grid.enabled:
            shape = grid_shape(sum(1 for layer in self.viewer.layers if layer.visible))
            if tuple(grid.shape) != shape:
                return lambda: self._set_grid_shape(shape)
        for layer in self._window_layers():
            if layer.name_overlay.visible != grid.enabled:
                return lambda: setattr(layer.name_overlay, "visible", grid.enabled)
        return None

    def _apply_step(self) -> bool:
        """Do the next piece of showing the newest result; True if more remains.

        One expensive napari call (see :meth:`_next_piece`), or else the new data of all window
        layers at once (in place), or else the camera.
        """
        piece = self._next_piece()
        if piece is not None:
            piece()
            return True
        self._collected = False  # the layers exist: the next burst collects again
        result = self._pending_result
        if result is not None:
            self._pending_result = None
            self._show_result(result)
            return self._focus_pending
        if self._focus_pending:
            self._focus_pending = False
            self._focus_on_window()
        return False

    def _collect_garbage(self) -> None:
        """A full collection in a turn of its own, before the window layers are made.

        Making the layers, the grid and the overlays creates tens of thousands of objects,
        enough to start a full collection (40-60 ms with the GIL held) in the middle of them,
        on top of a layer insert and its repaint. Collecting first resets the collector's
        counts, so the burst runs without one.
        """
        self._collected = True
        gc.collect()

    def _missing_layer(self, source: WindowResult) -> str | None:
        """Name of the first window layer that is missing or has another shape."""
        wanted = [
            (_layers.ORIGINAL_LAYER, source.original),
            (_layers.RECONSTRUCTION_LAYER, source.labels),
        ]
        if self.values_check.isChecked():
            wanted.append((_layers.RECONSTRUCTION_VALUES_LAYER, source.values))
        for name, data in wanted:
            if name not in self.viewer.layers or self.viewer.layers[name].data.shape != data.shape:
                return name
        return None

    def _show_result(self, result: WindowResult) -> None:
        """Write ``result`` into the existing window layers (in place) and the tables."""
        self._last_result = result
        translate = window_translate(result.dataset, result.index)
        for name, data in (
            (_layers.ORIGINAL_LAYER, result.original),
            (_layers.RECONSTRUCTION_LAYER, result.labels),
            (_layers.RECONSTRUCTION_VALUES_LAYER, result.values),
        ):
            if name not in self.viewer.layers:
                continue
            layer = self.viewer.layers[name]
            if layer.data is not data:
                layer.data = data
            if not np.allclose(layer.translate, translate):
                layer.translate = translate
        origin = result.dataset.origin(result.index)
        if origin != self._shown_origin:
            self._shown_origin = origin
            self._focus_pending = True
        self._show_comparison(result)
        pending = "" if self._runner.idle else " (newer window pending …)"
        self.status_label.setText(f"showing window {result.index}{pending}")

    # ------------------------------------------------------------------------------ cleanup
    def stop_work(self) -> None:
        """At shutdown: no more turns; the reconstruction worker is stopped and waited for,
        and the mouse callback removed (:meth:`.Panel.shutdown` then disconnects from the
        state and the viewer)."""
        self._steps.stop()
        self._runner.shutdown()
        self._unwatch_outline()
        if self._on_mouse_drag in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse_drag)
