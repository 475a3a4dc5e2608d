"""Latent explorer: one slider per latent feature, decoded live into a phase Labels layer.

Sliders start at the selected window's code (``state.latents[state.selected_window]``) and span
the distribution of all encoded windows. Moving one decodes the vector with an eval snapshot of
the model and writes the snapped phases into the ``_layers.DECODED_LAYER`` Labels layer in
place, placed at the selected window so it shows up in the Results panel's side-by-side grid
next to the original and reconstruction.

Where the decode runs depends on what it costs (:attr:`LatentPanel.decodes_inline`):

* cheap decodes (estimated below :data:`INLINE_DECODE_MAX_S`, or :data:`DRAG_INLINE_MAX_S`
  while a slider is held down) run on the GUI thread, in the turn of the slider move: nothing
  repaints meanwhile, so slider → decoded array is the bare decode time. In a worker the same
  decode would compete for the 2 cores and the GIL with napari repainting the previous result
  (software OpenGL) and take several times as long. Moves made while an inline decode's turn
  is not over only replace the pending vector, which the next turn decodes: latest wins, one
  decode per event-loop turn;
* expensive ones (and a model's first decode, which builds oneDNN's kernels, and every decode
  while a model is being trained: the estimate is CPU time, and training then competes for the
  cores) run in a background runner, latest-wins (see :mod:`.live_decoder`), so that a drag
  stays fluid. Torch's thread count is the user's: no decode changes it.

The layer keeps its array (:func:`update_labels_in_place`): the decoded values are copied into
it and it is handed back through napari's public ``layer.data`` setter.

Latest wins on the GUI side too: decoded volumes finished while the GUI thread paints do not
pile up (the runner hands over only the newest), and a runner result overtaken by a newer
inline decode is dropped. A new model's first decode runs at once, even while the panel is
hidden: the decoded layer then exists before the Results panel builds its side-by-side grid,
which is built once with three cells. (Made later, when the Latents tab is first shown, the
layer would force napari to rebuild the grid: a second expensive GUI-thread call and repaint,
250-350 ms on a busy 2-core CPU with software OpenGL, measured with
``benchmarks/gui_stall_training.py``.)
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core import DEFAULT_VOXEL_SIZE_UM, ElectrodeCAEError
from ..core.model import ConvAutoEncoder3d
from .latent_names import SpreadLabels
from .latent_output import export_latents, show_decoded_labels, update_labels_in_place
from .latent_sliders import LatentSliders
from .latent_sliders import latent_ranges as latent_ranges  # re-exported (tests)
from .live_decoder import (
    RUNNERS,
    DecodedVolume,
    decode_latent,
    model_snapshot,
)
from .panel_base import Panel
from .prediction_view import PredictionView
from .results_panel import MODEL_PENDING_MESSAGE, NO_MODEL_MESSAGE, window_translate
from .turns import TurnQueue, TurnScheduler

if TYPE_CHECKING:
    import napari

    from .state import CAEState

#: Runner used for live decoding. ``benchmarks/live_decode.py`` compares "thread" and "chained":
#: in a 60 Hz drag the long-lived worker decodes about twice as many slider positions and shows
#: the last one sooner, because it decodes the next vector while the main thread updates the
#: layer, where a chained worker waits for the main thread to start it.
DEFAULT_RUNNER = "thread"
#: Decodes estimated to take less than this many seconds run on the GUI thread, in the turn of
#: the slider move (see :class:`LatentPanel`); slower ones run in the background runner.
INLINE_DECODE_MAX_S = 0.030
#: While a slider is held down (dragged), only decodes estimated below this run inline. Such a
#: turn also carries napari's layer update (3-5 ms) and then the window's repaint (20-45 ms
#: with software OpenGL on 2 cores), and the GUI thread must not block for more than 50 ms.
DRAG_INLINE_MAX_S = 0.010
#: The decode-time estimate is the lowest CPU time of this many recent decodes of the model.
ESTIMATE_WINDOW = 8


class LatentPanel(Panel):
    """Sliders for the latent features and a live decoded volume.

    Reads ``state.model``, ``model_version``, ``latents``, ``dataset``, ``split`` and
    ``selected_window``; writes nothing to the state. A new ``state.model`` is used once
    ``model_version`` is bumped (until then it is still being trained or evaluated).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the decoded Labels layer is drawn into.
    state : CAEState
        The plugin's shared state.
    runner : {"thread", "chained"}
        Background runner for the decoder (see :mod:`.live_decoder`).
    turns : TurnQueue, optional
        Event-loop turns shared with other panels for expensive layer work (see
        :mod:`.turns`); by default the panel's own.
    inline_max_s, drag_inline_max_s : float
        Decode on the GUI thread when the decode-time estimate is below ``inline_max_s``, or
        below ``drag_inline_max_s`` while a slider is held down (see :attr:`decodes_inline`);
        0 sends every decode to the runner.

    Attributes
    ----------
    decoded : Signal(DecodedVolume)
        Emitted after a decoded volume has been written into the decoded layer.
    inline_decodes : int
        Number of decodes run on the GUI thread so far.
    latency_log : list or None
        If a list, each shown decode appends ``(result, delivered_at, layer_updated_at)`` with
        ``time.perf_counter()`` times (for benchmarks); ``delivered_at`` is when the result
        reached the main thread, ``layer_updated_at`` when the layer's data was replaced.
    """

    decoded = Signal(object)

    def __init__(
        self,
        viewer: napari.Viewer,
        state: CAEState,
        parent: QWidget | None = None,
        runner: str = DEFAULT_RUNNER,
        turns: TurnQueue | None = None,
        inline_max_s: float = INLINE_DECODE_MAX_S,
        drag_inline_max_s: float = DRAG_INLINE_MAX_S,
    ) -> None:
        super().__init__(viewer, state, parent)
        self.decoder = RUNNERS[runner](self._on_decoded, self._on_decode_error)
        self.inline_max_s = inline_max_s
        self.drag_inline_max_s = drag_inline_max_s
        self.inline_decodes = 0
        self._decode_times: deque[float] = deque(maxlen=ESTIMATE_WINDOW)
        self._inline_pending: tuple[np.ndarray, float] | None = None  # (latent, requested at)
        self._snapshot_taken_at = 0.0  # perf_counter() when the current snapshot was taken
        self._shown_requested_at = 0.0  # request time of the newest decode shown
        # Runs once the events queued behind an inline decode are handled: while it is active,
        # slider moves only replace the pending vector (one decode per event-loop turn).
        self._inline_turn = QTimer(self)
        self._inline_turn.setSingleShot(True)
        self._inline_turn.setInterval(0)
        self._inline_turn.timeout.connect(self._on_inline_turn)
        self._snapshot: ConvAutoEncoder3d | None = None
        self._snapshot_source: ConvAutoEncoder3d | None = None  # state.model it was copied from
        self.latency_log: list | None = None
        self._to_add: tuple[DecodedVolume, float] | None = None  # (result, delivered at)
        self._steps = TurnScheduler(self._add_decoded_layer, self, turns)
        self._build_ui()
        self.connect_events(
            (state.events.model_version, self._on_model_version_changed),
            (state.events.model, self._on_model_changed),
            (state.events.latents, self._on_latents_changed),
            (state.events.selected_window, self._on_selected_window_changed),
            (state.events.dataset, self._update_enabled),
            (state.events.run_dir, self._name_sliders),  # the run's correlations name them
            (state.events.correlation_study, self._name_sliders),  # or the Physics tab's
        )
        self._on_model_version_changed()

    # ----------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self.status_label = QLabel(NO_MODEL_MESSAGE)
        self.status_label.setWordWrap(True)
        self.reset_button = QPushButton("Reset to window")
        self.reset_button.setToolTip("Move the sliders back to the selected window's code")
        self.reset_button.clicked.connect(self.reset_to_window)
        self.export_button = QPushButton("Export latents CSV…")
        self.export_button.setToolTip("One row per window: split, stack, tag, origin, z1..zk")
        self.export_button.clicked.connect(self._on_export_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reset_button)
        buttons.addWidget(self.export_button)
        self.slider_box = LatentSliders()
        self.slider_box.moved.connect(self._on_slider_moved)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.slider_box)
        self.fractions_label = QLabel("")
        self.fractions_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.fractions_label)
        self.prediction_view = PredictionView(self.state)  # predicted vs measured metrics
        layout.addWidget(self.prediction_view)
        self._update_enabled()

    def _snapshot_is_current(self) -> bool:
        """True if the sliders decode with (a copy of) the current, final ``state.model``."""
        return self._snapshot is not None and self._snapshot_source is self.state.model

    def _update_enabled(self, _event: Any = None) -> None:
        current = self._snapshot_is_current()
        self.slider_box.setEnabled(current)
        self.reset_button.setEnabled(current and self._window_code() is not None)
        self.export_button.setEnabled(
            self.state.latents is not None and self.state.dataset is not None
        )

    @property
    def sliders(self) -> list:
        """One ``QLabeledDoubleSlider`` per latent feature (see :class:`.LatentSliders`)."""
        return self.slider_box.sliders

    @property
    def slider_names(self) -> list[QLabel]:
        """Each slider's name label."""
        return self.slider_box.names

    @property
    def spread_labels(self) -> SpreadLabels:
        """Each slider's value in the encoded windows' spread."""
        return self.slider_box.spread_labels

    def _name_sliders(self, _event: Any = None) -> None:
        """Name each slider by what its feature tracks, once the run's correlations say."""
        self.slider_box.name_sliders(self.state.run_dir, self.state.correlation_study)

    # ------------------------------------------------------------------------- state events
    def _on_model_changed(self, _event: Any = None) -> None:
        """A new model object without a version bump is not final yet: wait for the bump."""
        if self.state.model is None:
            if self._snapshot is not None:
                self._on_model_version_changed()
            return
        if not self._snapshot_is_current():
            self.status_label.setText(MODEL_PENDING_MESSAGE)
        elif self.sliders:
            self.status_label.setText("")
        self._update_enabled()

    def _on_model_version_changed(self, _event: Any = None) -> None:
        model = self.state.model
        self._snapshot = None if model is None else model_snapshot(model)
        self._snapshot_source = model
        self._decode_times.clear()  # the first decode of the new model runs in the worker
        self._snapshot_taken_at = time.perf_counter()
        self._inline_pending = None
        k = 0 if model is None else model.config.latent_dim
        self.slider_box.rebuild(k, self.state.run_dir, self.state.correlation_study)
        if model is None:
            self.status_label.setText(NO_MODEL_MESSAGE)
            self.fractions_label.setText("")
            self._update_enabled()
            return
        self.slider_box.apply_ranges(self.state.latents)
        self._update_enabled()
        self.reset_to_window()

    def _on_latents_changed(self, _event: Any = None) -> None:
        if not self._snapshot_is_current():
            return
        self.slider_box.apply_ranges(self.state.latents)
        self._update_enabled()
        self.reset_to_window()

    def _on_selected_window_changed(self, _event: Any = None) -> None:
        if self._snapshot_is_current():
            self.reset_to_window()

    # ------------------------------------------------------------------------------ sliders
    def latent_vector(self) -> np.ndarray:
        """The sliders' current values as a float32 (k,) vector."""
        return self.slider_box.values()

    def set_latent_vector(self, latent: np.ndarray) -> None:
        """Move all sliders at once (one decode, not k) and decode the result."""
        self.slider_box.set_values(latent)
        self._request_decode()

    def _window_code(self) -> np.ndarray | None:
        """The selected window's latent vector, or None if there are no matching latents."""
        latents, k = self.state.latents, len(self.sliders)
        index = self.state.selected_window
        if latents is None or latents.ndim != 2 or latents.shape[1] != k or k == 0:
            return None
        if not 0 <= index < len(latents):
            return None
        return latents[index]

    def reset_to_window(self) -> None:
        """Set the sliders to the selected window's code (zeros without latents) and decode."""
        if not self._snapshot_is_current():
            return
        code = self._window_code()
        index = self.state.selected_window
        if code is None:
            code = np.zeros(len(self.sliders), dtype=np.float32)
            self.status_label.setText("no encoded windows for this model: sliders start at 0")
        else:
            self.status_label.setText(f"sliders start at the code of window {index}")
        self.reset_button.setText(f"Reset to window {index}")
        self.set_latent_vector(code)

    def _on_slider_moved(self, _value: float) -> None:
        self._request_decode()

    def _request_decode(self) -> None:
        if self.closed or not self._snapshot_is_current() or not self.sliders:
            return
        latent, requested = self.latent_vector(), time.perf_counter()
        self.prediction_view.set_latent(latent)
        if self._inline_turn.isActive():  # decoded inline in this turn: the newest waits
            self._inline_pending = (latent, requested)
        elif self.decodes_inline:
            self._decode_inline(latent, requested)
        else:
            self.decoder.submit(decode_latent, self._snapshot, latent, requested)

    @property
    def decode_estimate_s(self) -> float | None:
        """Expected GUI-thread time of a decode of the current model, in seconds.

        The lowest CPU time of the decoding thread over the last :data:`ESTIMATE_WINDOW`
        decodes; None before the model's first decode. CPU time, not wall time: a worker's
        decode during a drag waits for a core and for the GIL while napari repaints and takes
        up to 5× its CPU time, and other work on the CPU only ever makes a decode slower.
        """
        return min(self._decode_times) if self._decode_times else None

    @property
    def dragging(self) -> bool:
        """True while a slider is held down."""
        return self.slider_box.dragging

    @property
    def decodes_inline(self) -> bool:
        """True if the next slider move is decoded on the GUI thread, in its own turn.

        A decode estimated to take less than ``inline_max_s`` (``drag_inline_max_s`` during a
        drag) is cheaper there than in a worker, where it would compete for the CPU and the GIL
        with napari repainting the previous result and take several times as long. A model's
        first decode (oneDNN builds its kernels then) always runs in the runner, and so does
        every decode while a model is being trained (``state.training``): the estimate is CPU
        time, and with training on the other cores a GUI-thread decode would take longer. A
        runner result requested before an inline decode that is already shown is dropped (see
        :meth:`_on_decoded`).
        """
        if self.state.training:
            return False
        estimate = self.decode_estimate_s
        limit = self.drag_inline_max_s if self.dragging else self.inline_max_s
        return estimate is not None and estimate < limit

    def _decode_inline(self, latent: np.ndarray, requested: float) -> None:
        """Decode ``latent`` now and show it; later moves in this turn wait for the next one."""
        self._inline_turn.start()
        self.inline_decodes += 1
        try:
            result = decode_latent(self._snapshot, latent, requested)
        except (ElectrodeCAEError, RuntimeError) as exc:  # as the runner reports them
            self._on_decode_error(exc)
            return
        self._on_decoded(result)

    def _on_inline_turn(self) -> None:
        """The turn after an inline decode: decode the newest vector that waited for it."""
        pending, self._inline_pending = self._inline_pending, None
        if (
            pending is None
            or self.closed
            or not self._snapshot_is_current()
            or len(pending[0]) != len(self.sliders)
        ):
            return
        if self.decodes_inline:
            self._decode_inline(*pending)
        else:
            self.decoder.submit(decode_latent, self._snapshot, *pending)

    @property
    def idle(self) -> bool:
        """True when no decode is running or waiting and the layer shows the newest one."""
        return self.decoder.idle and self._to_add is None and self._inline_pending is None

    # ------------------------------------------------------------------------------ results
    def _on_decoded(self, result: DecodedVolume) -> None:
        """Main thread: write the decoded phases into the decoded layer, in place.

        Called with a runner's result or right after an inline decode. Records the decode's
        CPU time for :attr:`decode_estimate_s`, drops a runner result that a newer inline
        decode overtook or that was requested before the current model snapshot was taken (an
        older model's, even of the same latent size), and updates the layer with
        :func:`update_labels_in_place` (the translate only if the window moved). Making the
        layer (the first time, or when the window shape changed) is expensive: it waits for an
        event-loop turn of its own.
        """
        delivered = time.perf_counter()
        if self._snapshot is None or len(result.latent) != len(self.sliders):
            return  # decoded with a model that has since been replaced
        if result.requested_at < self._snapshot_taken_at:
            return  # requested before the current snapshot: an older model (same latent size)
        self._decode_times.append(result.cpu_seconds)  # timed with the current model
        if result.requested_at < self._shown_requested_at:
            return  # a runner result overtaken by a newer inline decode
        self._shown_requested_at = result.requested_at
        name = _layers.DECODED_LAYER
        if (
            name not in self.viewer.layers
            or self.viewer.layers[name].data.shape != result.labels.shape
        ):
            self._to_add = (result, delivered)
            self._steps.schedule()
            return
        self._to_add = None
        self._show_decoded(result, delivered)

    def _add_decoded_layer(self) -> bool:
        """Turn step: make the decoded layer with the newest decoded volume."""
        if self._to_add is not None:
            result, delivered = self._to_add
            self._to_add = None
            if (
                self._snapshot is not None
                and len(result.latent) == len(self.sliders)
                and result.requested_at >= self._snapshot_taken_at
            ):  # not an older model's
                self._show_decoded(result, delivered)
        return False

    def _show_decoded(self, result: DecodedVolume, delivered: float) -> None:
        """Write ``result`` into the decoded layer (made if missing) and the fractions line."""
        dataset, index = self.state.dataset, self.state.selected_window
        if dataset is not None and self.state.model_matches_dataset() and index < len(dataset):
            voxel, translate = dataset.voxel_size_um, window_translate(dataset, index)
        else:
            voxel, translate = DEFAULT_VOXEL_SIZE_UM, (0.0, 0.0, 0.0)
        show_decoded_labels(self.viewer, result.labels, voxel, translate, update_labels_in_place)
        if self.latency_log is not None:
            self.latency_log.append((result, delivered, time.perf_counter()))
        f = result.fractions
        self.fractions_label.setText(
            f"Decoded: pore {f['pore']:.1%} · CBD {f['cbd']:.1%} · active {f['active']:.1%} "
            f"(decode {result.decode_seconds * 1e3:.0f} ms)"
        )
        self.prediction_view.set_decoded(result.labels, voxel)
        self.decoded.emit(result)

    def _on_decode_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"error: {exc}")
        show_error(str(exc))

    # ------------------------------------------------------------------------------- export
    def export_latents(self, path: str | Path) -> Path:
        """Write the latents of every window as CSV; see :func:`.latent_output.export_latents`."""
        return export_latents(self.state, path)

    def _on_export_clicked(self) -> None:
        from napari.utils.notifications import show_error, show_info

        path, _ = QFileDialog.getSaveFileName(
            self, "Export latents", "latents.csv", "CSV files (*.csv)"
        )
        if not path:
            return
        try:
            written = self.export_latents(path)
        except (ElectrodeCAEError, OSError) as exc:
            self.status_label.setText(f"error: {exc}")
            show_error(str(exc))
            return
        self.status_label.setText(f"latents written to {written}")
        show_info(f"latents written to {written}")

    # ------------------------------------------------------------------------------ cleanup
    def stop_work(self) -> None:
        """At shutdown: no more turns or decodes; the decoder worker is stopped and waited for
        (:meth:`.Panel.shutdown` then disconnects from the state)."""
        self._steps.stop()
        self._to_add = None
        self._inline_turn.stop()
        self._inline_pending = None
        self.decoder.shutdown()
        self.prediction_view.shutdown()
