"""The "Model & training" panel: model and training settings, Train / Stop, runs on disk.

Training runs :func:`napari_electrode_cae.core.train` in a napari ``GeneratorWorker``. Before
the first batch the panel says how many windows and batches the run has (the progress bar's
maximum is the real total from the start) and, from the first batches and then from finished
epochs, how long it will take (``core.training.TimeEstimate``). The progress bar follows the
batches (at most ten repaints a second); every epoch extends ``state.history`` (the loss plot
and the status line, with NMSE and spread, follow it), and a model that diverges, or has
collapsed to the mean after a few epochs, gets a warning in orange or red below the bar.
napari's activity-dock progress bar (``napari.utils.progress``) is not used: creating the
first one blocked the GUI thread for 80-190 ms when Train was pressed, and every update of it
runs a nested ``processEvents`` inside the slot.

When training ends (finished, stopped or failed after at least one epoch) a second worker fits
the phase rule (thresholds fitted to the training fractions, or the paper's nearest value),
encodes every window and evaluates the model off the GUI thread, the progress bar counting the
windows; its result sets ``state.latents`` and ``state.report`` and bumps
``state.model_version``, and the warning follows the evaluation's verdict over all validation
windows. Open run… reads the run folder (weights, stacks, windows) in a worker too; its result
is applied on the GUI thread. Worker jobs and text helpers live in :mod:`.training_jobs`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from napari.utils.theme import get_theme
from qtpy.QtCore import QCoreApplication, QEventLoop, Qt, QTimer
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .scrolling import fill_with_scrolling
from .. import core
from .._layers import add_stack_labels
from ..core import ElectrodeCAEError, EpochReport, TrainConfigError
from ..core.health import Health
from ..core.losses import PHASE_LOSS_CHOICES
from ..core.model import CONV_LAYER_CHOICES, NORM_CHOICES
from ..core.training import SCHEDULE_CHOICES, TimeEstimate, format_duration, history_health
from ..core.windows import resolve_split
from .loss_plot import LossPlot
from .state import CAEState, ModelSettings
from .training_jobs import (  # noqa: F401 (re-exported: tests and benchmarks use these names)
    CUSTOM_PRESET,
    PHASE_RULE_CHOICES,
    EvaluationProgress,
    LoadedRun,
    TrainedRun,
    TrainingPlan,
    TrainingRunError,
    drive,
    epoch_warning,
    estimate_text,
    format_epoch_status,
    format_report_status,
    gui_torch_threads,
    history_from_rows,
    load_run_folder,
    matching_preset,
    open_run_error_message,
    run_health,
    same_labels,
    save_run_job,
    settings_of_preset,
    training_steps,
    warning_text,
)
from .training_jobs import evaluate_model as _evaluate_model
from .window_close import WindowCloseWatcher

if TYPE_CHECKING:
    import napari

#: Shortest time between two progress-bar updates while training, in seconds. Each update
#: repaints the window (with software OpenGL 10-30 ms on a busy CPU), and batches of the quick
#: preset come 20-30 times a second.
PROGRESS_INTERVAL_S = 0.1
#: How often the evaluation's window count is shown, in milliseconds.
EVALUATION_POLL_MS = 200
#: How long shutdown() waits for one running worker to reach its next stopping point.
SHUTDOWN_TIMEOUT_S = 60.0
_ERROR_STYLE = "color: #e8655a;"
#: Warning colours: a collapsed model (orange) and a diverged one (red).
_WARNING_STYLES = {
    "collapsed": "color: #f0a030; font-weight: bold;",
    "diverged": "color: #ff5a4e; font-weight: bold;",
}
#: Output kinds: value and label.
OUTPUT_CHOICES: tuple[tuple[str, str], ...] = (
    ("value", "one value (paper, MSE)"),
    ("phases", "three phases (cross-entropy)"),
)
#: Losses of three-phase models: value and label.
PHASE_LOSS_LABELS = {"ce": "cross-entropy", "weighted_ce": "weighted cross-entropy",
                     "ce_dice": "cross-entropy + Dice"}


@dataclass(frozen=True, eq=False)
class _StateSnapshot:
    """What Train replaces; restored when training ends before its first epoch."""

    model: Any
    history: tuple
    latents: Any
    report: Any


class LearningRateSpinBox(QDoubleSpinBox):
    """A learning-rate field: shows ``0.0001`` as ``1e-04``, steps 1-2-5 per decade."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(1e-8, 1.0)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt name)
        return f"{value:.3g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802 (Qt name)
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        try:
            value = float(text)
        except ValueError:
            return QValidator.State.Intermediate, text, pos
        if self.minimum() <= value <= self.maximum():
            return QValidator.State.Acceptable, text, pos
        return QValidator.State.Intermediate, text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802 (Qt name)
        """Move along 1, 2, 5, 10, 20, ... times a power of ten."""
        ladder = (1.0, 2.0, 5.0)
        exponent = math.floor(math.log10(self.value()) + 1e-9)
        mantissa = self.value() / 10**exponent
        position = 3 * exponent + min(range(3), key=lambda i: abs(ladder[i] - mantissa))
        position += steps
        self.setValue(ladder[position % 3] * 10 ** (position // 3))


class _WorkerWatch:
    """Thread-safe started/finished flags of a worker (set in the worker's own thread)."""

    def __init__(self, worker) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        worker.started.connect(self.started.set, Qt.ConnectionType.DirectConnection)
        worker.finished.connect(self.finished.set, Qt.ConnectionType.DirectConnection)

    def wait(self, timeout_s: float) -> bool:
        """Wait until a started worker has finished; True if it did (or never started)."""
        deadline = time.monotonic() + timeout_s
        while not self.finished.is_set() and time.monotonic() < deadline:
            if self.started.is_set():
                self.finished.wait(0.05)
            else:
                # A worker whose start is still queued on the event loop aborts at once once it
                # runs (quit() was called); let the loop start it so it does not outlive us.
                QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        return self.finished.is_set()


# --------------------------------------------------------------------------------------------


class TrainingPanel(QWidget):
    """Model and training settings, Train / Stop, live loss plot, Save run… / Open run….

    Reads ``state.dataset``, ``state.split``, ``state.window``, ``state.window_error``,
    ``state.val_fraction``, ``state.seed`` and ``state.split_mode``; writes
    ``state.model_settings``, ``state.train_config``, ``state.model``, ``state.history``,
    ``state.training``, ``state.latents``, ``state.report``, ``state.model_version`` and
    ``state.run_dir`` (and, when a run is opened, the data and window fields too).

    Parameters
    ----------
    viewer : napari.Viewer
        Receives the stacks of an opened run as Labels layers.
    state : CAEState
        The plugin's shared state.
    parent : QWidget, optional
        Qt parent.
    """

    def __init__(self, viewer: napari.Viewer, state: CAEState,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self._closed = False
        self._workers: dict[Any, _WorkerWatch] = {}
        self._training_worker = None
        self._training_job: TrainedRun | None = None
        self._before_training: _StateSnapshot | None = None
        self._training_failed = False
        self._training_error = ""
        self._stop_requested = False
        self._evaluating_model = None
        self._saving = False
        self._opening: object | None = None  # the Open run request whose worker runs
        self._progress_value = 0
        self._progress_shown_at = 0.0
        self._training_result: core.TrainResult | None = None
        self._plan: TrainingPlan | None = None
        self._estimate: TimeEstimate | None = None
        #: Where the newest evaluation is; polled by _evaluation_timer.
        self._evaluation_progress: EvaluationProgress | None = None
        self._evaluations: list[EvaluationProgress] = []  # all running (cancelled on shutdown)
        self._bar_before_evaluation: tuple[int, int, str] | None = None
        #: The current model with what it was trained on (set after training or opening a run).
        self.trained_run: TrainedRun | None = None

        self._build_widgets()
        self._show_model_settings(state.model_settings)
        self._show_train_config(state.train_config)
        self._update_model_summary()
        self._update_preset_combo()
        self._update_buttons()
        self.loss_plot.set_history(state.history)
        self._update_plan_preview()
        self._state_connections = [
            (state.events.model_settings, self._on_state_model_settings),
            (state.events.train_config, self._on_state_train_config),
            (state.events.window, self._on_state_window),
            (state.events.training, self._on_state_training),
            (state.events.history, self._on_state_history),
            (state.events.converting_layers, self._on_state_converting_layers),
            (state.events.dataset, self._update_plan_preview),
            (state.events.split, self._update_plan_preview),
        ]
        for signal, slot in self._state_connections:
            signal.connect(slot)
        # a docked panel gets no close event when the viewer closes: stop training then
        self._close_watcher = WindowCloseWatcher(self, self.shutdown)

    # ---------------------------------------------------------------------------- widgets

    def _build_widgets(self) -> None:
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current batch; the best weights are kept")
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("%v / %m batches")  # the real total: _update_plan_preview
        self.progress_bar.setValue(0)
        # _set_status/_report_error keep the text; _show_status adds the Data-panel note.
        self._status_text, self._status_error = "Choose settings and press Train.", False
        self.status_label = QLabel(self._status_text)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # windows, batches and the time estimate of the running (or last) training
        self.plan_label = QLabel()
        self.plan_label.setWordWrap(True)
        self.plan_label.setVisible(False)
        # a diverged or collapsed model: message and advice, orange or red
        self.health_label = QLabel()
        self.health_label.setWordWrap(True)
        self.health_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.health_label.setVisible(False)
        self._evaluation_timer = QTimer(self)
        self._evaluation_timer.setInterval(EVALUATION_POLL_MS)
        self._evaluation_timer.timeout.connect(self._show_evaluation_progress)
        theme = get_theme(self.viewer.theme if self.viewer.theme != "system" else "dark")
        self.loss_plot = LossPlot(theme.background.as_hex(), theme.text.as_hex())
        self.save_button = QPushButton("Save run…")
        self.open_button = QPushButton("Open run…")
        self.run_label = QLabel()
        self.run_label.setWordWrap(True)

        # in a scroll area: with the advanced settings, a warning and a long status the tab can
        # be taller than the dock, and Qt would squeeze rows into each other instead
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._build_model_box())
        layout.addWidget(self._build_training_box())
        layout.addLayout(_row(self.train_button, self.stop_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plan_label)
        layout.addWidget(self.health_label)
        layout.addWidget(self.status_label)
        layout.addWidget(self.loss_plot, stretch=1)
        layout.addLayout(_row(self.save_button, self.open_button))
        layout.addWidget(self.run_label)
        fill_with_scrolling(self, content)
        self._connect_widgets()

    def _build_model_box(self) -> QGroupBox:
        self.preset_combo = QComboBox()
        self.preset_combo.addItems([*core.PRESETS, CUSTOM_PRESET])
        self.preset_combo.setToolTip("\n".join(
            f"{p.name}: {p.description}" for p in core.PRESETS.values()
        ) + "\ncustom: your own settings")
        self.conv_layers_combo = QComboBox()
        for layers in CONV_LAYER_CHOICES:
            self.conv_layers_combo.addItem(str(layers), layers)
        self.conv_layers_combo.setToolTip("Convolution layers of the encoder (Table 2)")
        self.hidden_spin = _int_spin(1, 100_000, "Neurons of the fully connected hidden layer")
        self.latent_spin = _int_spin(1, 4096, "Number of latent features")
        self.norm_combo = QComboBox()
        for norm in NORM_CHOICES:
            self.norm_combo.addItem({"none": "none (paper)", "batch": "batch norm",
                                     "group": "group norm"}.get(norm, norm), norm)
        self.norm_combo.setToolTip(
            "Normalisation after each convolution. The paper has none; batch norm keeps a "
            "larger learning rate from collapsing the model to the mean on real electrodes")
        self.output_combo = QComboBox()
        for output, label in OUTPUT_CHOICES:
            self.output_combo.addItem(label, output)
        self.output_combo.setToolTip(
            "one value: the paper's single network value per voxel (pore -1, CBD 0, active "
            "+1), trained with MSE and cut into phases after training.\nthree phases: one "
            "logit per phase, trained with cross-entropy; the most likely phase wins, after "
            "offsets fitted to the training fractions when the phase rule is fitted")
        self.phase_rule_combo = QComboBox()
        for rule, label in PHASE_RULE_CHOICES:
            self.phase_rule_combo.addItem(label, rule)
        self.model_summary_label = QLabel()
        self.model_summary_label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Preset", self.preset_combo)
        form.addRow("Conv layers", self.conv_layers_combo)
        form.addRow("Hidden neurons", self.hidden_spin)
        form.addRow("Latent features", self.latent_spin)
        form.addRow("Normalisation", self.norm_combo)
        form.addRow("Output", self.output_combo)
        form.addRow("Phase rule", self.phase_rule_combo)
        form.addRow(self.model_summary_label)
        box = QGroupBox("Model")
        box.setLayout(form)
        return box

    def _build_training_box(self) -> QGroupBox:
        self.epochs_spin = _int_spin(1, 10_000_000, "Passes over the training windows")
        self.batch_spin = _int_spin(1, 65_536, "Windows per optimiser step")
        self.lr_spin = LearningRateSpinBox()
        self.lr_spin.setToolTip("Adam learning rate (type e.g. 1e-4; arrows step 1-2-5)")
        self.device_combo = QComboBox()
        auto = core.resolve_device("auto").type
        self.device_combo.addItem(f"auto ({auto})", "auto")
        for device in core.available_devices():
            self.device_combo.addItem(device, device)
        self.device_combo.setToolTip("Where to train; auto picks CUDA, then MPS, then the CPU")
        self.precision_combo = QComboBox()
        self.precision_combo.addItem("fp32 (as the paper)", "fp32")
        self.precision_combo.addItem("bf16 mixed precision", "bf16")
        self.precision_combo.setToolTip(
            "fp32: plain float32. bf16: convolutions and linear layers in bfloat16 with float32 "
            "weights and validation; 1.3-1.4x faster on CPUs with AVX512-BF16 or AMX, no faster "
            "for this model on an H200 (TF32 is already on)")
        form = QFormLayout()
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow(self._build_advanced())
        box = QGroupBox("Training")
        box.setLayout(form)
        return box

    def _build_advanced(self) -> QWidget:
        """Windows per epoch, warm-up, schedule, clipping and the three-phase loss (folded)."""
        self.windows_per_epoch_spin = _int_spin(
            0, 100_000_000, "Training windows sampled for each epoch (seeded); 'all' visits "
            "every training window every epoch, as in the paper. Bounds an epoch's time on a "
            "large stack")
        self.windows_per_epoch_spin.setSpecialValueText("all")
        self.warmup_spin = _int_spin(
            0, 10_000_000, "Epochs over which the learning rate rises from a tenth of its value "
                           "to its value (0: none, as in the paper)")
        self.warmup_spin.setSpecialValueText("none")
        self.schedule_combo = QComboBox()
        for schedule in SCHEDULE_CHOICES:
            self.schedule_combo.addItem({"constant": "constant (paper)",
                                         "cosine": "cosine decay"}.get(schedule, schedule),
                                        schedule)
        self.schedule_combo.setToolTip(
            "After the warm-up the learning rate stays (the paper) or decays along a cosine "
            "to 0 at the last epoch")
        self.grad_clip_spin = QDoubleSpinBox()
        self.grad_clip_spin.setRange(0.0, 1e6)
        self.grad_clip_spin.setDecimals(2)
        self.grad_clip_spin.setSingleStep(0.5)
        self.grad_clip_spin.setKeyboardTracking(False)
        self.grad_clip_spin.setSpecialValueText("off")
        self.grad_clip_spin.setToolTip(
            "Largest gradient norm; larger gradients are scaled down to it before each step "
            "(off: as in the paper)")
        self.phase_loss_combo = QComboBox()
        for loss in PHASE_LOSS_CHOICES:
            self.phase_loss_combo.addItem(PHASE_LOSS_LABELS.get(loss, loss), loss)
        self.phase_loss_combo.setToolTip(
            "Loss of three-phase models (one-value models use MSE): weighted cross-entropy "
            "weighs the thin CBD up, Dice adds an overlap term per phase")
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Windows per epoch", self.windows_per_epoch_spin)
        form.addRow("Warm-up epochs", self.warmup_spin)
        form.addRow("Schedule", self.schedule_combo)
        form.addRow("Gradient clipping", self.grad_clip_spin)
        form.addRow("Phase loss", self.phase_loss_combo)
        # A plain toggle that shows or hides the rows: hidden rows take no room, shown rows
        # keep their full height in a crowded tab (an animated collapsible gets squeezed).
        self.advanced_content = QWidget()
        self.advanced_content.setLayout(form)
        self.advanced_content.setVisible(False)
        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced: epoch size, schedule, clipping")
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.setCheckable(True)
        self.advanced_button.setAutoRaise(True)
        self.advanced_button.toggled.connect(self.show_advanced)
        self.advanced_content.setSizePolicy(QSizePolicy.Policy.Preferred,
                                            QSizePolicy.Policy.Fixed)
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.advanced_button)
        layout.addWidget(self.advanced_content)
        return box

    def show_advanced(self, shown: bool = True) -> None:
        """Show (or hide) the advanced training settings."""
        with _signals_blocked(self.advanced_button):
            self.advanced_button.setChecked(shown)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if shown
                                          else Qt.ArrowType.RightArrow)
        self.advanced_content.setVisible(shown)

    def _connect_widgets(self) -> None:
        self.preset_combo.activated.connect(self._on_preset_activated)
        self.conv_layers_combo.currentIndexChanged.connect(self._on_model_field_changed)
        self.hidden_spin.valueChanged.connect(self._on_model_field_changed)
        self.latent_spin.valueChanged.connect(self._on_model_field_changed)
        for combo in (self.norm_combo, self.output_combo, self.phase_rule_combo):
            combo.currentIndexChanged.connect(self._on_model_field_changed)
        for spin in (self.epochs_spin, self.batch_spin, self.lr_spin,
                     self.windows_per_epoch_spin, self.warmup_spin, self.grad_clip_spin):
            spin.valueChanged.connect(self._on_train_field_changed)
        for combo in (self.device_combo, self.precision_combo, self.schedule_combo,
                      self.phase_loss_combo):
            combo.currentIndexChanged.connect(self._on_train_field_changed)
        self.train_button.clicked.connect(self._on_train_clicked)
        self.stop_button.clicked.connect(self._on_stop_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.open_button.clicked.connect(self._on_open_clicked)

    # --------------------------------------------------------------- fields <-> state

    def model_settings_from_fields(self) -> ModelSettings:
        """The model settings the fields show."""
        return ModelSettings(int(self.conv_layers_combo.currentData()),
                             self.hidden_spin.value(), self.latent_spin.value(),
                             self.norm_combo.currentData(), self.output_combo.currentData(),
                             self.phase_rule_combo.currentData())

    def train_config_from_fields(self) -> core.TrainConfig:
        """The training settings the fields show, with the state's split settings.

        Raises
        ------
        TrainConfigError
            If a value is invalid.
        """
        s = self.state
        return core.TrainConfig(
            epochs=self.epochs_spin.value(), batch_size=self.batch_spin.value(),
            lr=float(self.lr_spin.value()), val_fraction=float(s.val_fraction),
            seed=int(s.seed), split=s.split_mode, device=self.device_combo.currentData(),
            precision=self.precision_combo.currentData(),
            windows_per_epoch=self.windows_per_epoch_spin.value(),
            warmup_epochs=self.warmup_spin.value(),
            schedule=self.schedule_combo.currentData(),
            grad_clip=float(self.grad_clip_spin.value()),
            phase_loss=self.phase_loss_combo.currentData(),
        )

    def _show_model_settings(self, settings: ModelSettings) -> None:
        widgets = (self.conv_layers_combo, self.hidden_spin, self.latent_spin, self.norm_combo,
                   self.output_combo, self.phase_rule_combo)
        with _signals_blocked(*widgets):
            _select_data(self.conv_layers_combo, settings.conv_layers)
            self.hidden_spin.setValue(settings.hidden)
            self.latent_spin.setValue(settings.latent_dim)
            _select_data(self.norm_combo, settings.norm)
            _select_data(self.output_combo, settings.output)
            _select_data(self.phase_rule_combo, settings.phase_rule)
        self._update_output_dependent_fields()

    def _update_output_dependent_fields(self) -> None:
        """The unfitted phase rule is named after the output kind; the phase loss applies to
        three-phase models only."""
        phases = self.output_combo.currentData() == "phases"
        training = self._training_worker is not None
        self.phase_rule_combo.setItemText(
            self.phase_rule_combo.findData("nearest"),
            "plain argmax" if phases else "nearest value (paper)")
        self.phase_rule_combo.setEnabled(not training)
        self.phase_rule_combo.setToolTip(
            "How the output becomes phases after training. Fitted to the training fractions: "
            "per-phase offsets added to the logits before the argmax, chosen so that the "
            "phase fractions match the training windows' (the plain argmax all but drops a "
            "thin phase such as CBD)." if phases else
            "How the one value per voxel becomes phases after training: thresholds fitted so "
            "that the phase fractions match the training windows', or the paper's nearest "
            "value (-1 / 0 / +1), which puts CBD on every blurred pore/active boundary")
        self.phase_loss_combo.setEnabled(phases and not training)

    def _show_train_config(self, config: core.TrainConfig) -> None:
        widgets = (self.epochs_spin, self.batch_spin, self.lr_spin, self.device_combo,
                   self.precision_combo, self.windows_per_epoch_spin, self.warmup_spin,
                   self.schedule_combo, self.grad_clip_spin, self.phase_loss_combo)
        with _signals_blocked(*widgets):
            self.epochs_spin.setValue(config.epochs)
            self.batch_spin.setValue(config.batch_size)
            self.lr_spin.setValue(config.lr)
            _select_data(self.device_combo, config.device)
            _select_data(self.precision_combo, config.precision)
            self.windows_per_epoch_spin.setValue(config.windows_per_epoch)
            self.warmup_spin.setValue(config.warmup_epochs)
            _select_data(self.schedule_combo, config.schedule)
            self.grad_clip_spin.setValue(config.grad_clip)
            _select_data(self.phase_loss_combo, config.phase_loss)

    def _update_preset_combo(self) -> None:
        name = matching_preset(self.state.model_settings, self.state.train_config,
                               self.state.window)
        with _signals_blocked(self.preset_combo):
            self.preset_combo.setCurrentText(name)

    def _update_model_summary(self) -> None:
        """Parameter count of the model the fields describe (built on torch's meta device)."""
        window = self.state.window
        try:
            config = self.model_settings_from_fields().model_config(window)
            with torch.device("meta"):
                model = core.build_model(config)
        except ElectrodeCAEError as exc:
            self.model_summary_label.setStyleSheet(_ERROR_STYLE)
            self.model_summary_label.setText(str(exc))
            return
        self.model_summary_label.setStyleSheet("")
        self.model_summary_label.setText(
            f"{core.count_parameters(model):,} parameters · input 1×{window.length}×"
            f"{window.crop}×{window.crop}"
        )

    def _on_preset_activated(self, index: int) -> None:
        name = self.preset_combo.itemText(index)
        if name == CUSTOM_PRESET:
            return
        self.apply_preset(name)

    def apply_preset(self, name: str) -> None:
        """Fill the model, training and window settings from the preset ``name``.

        The device, the precision and the Windows tab's split settings stay as they are.
        """
        preset = core.get_preset(name)
        s = self.state
        s.model_settings = settings_of_preset(preset)
        try:
            s.train_config = dataclasses.replace(
                preset.train, val_fraction=s.val_fraction, seed=s.seed, split=s.split_mode,
                device=self.device_combo.currentData(),
                precision=self.precision_combo.currentData(),
            )
        except TrainConfigError as exc:
            self._report_error(str(exc))
        s.window = preset.window
        s.rebuild_dataset()
        self._update_preset_combo()

    def _on_model_field_changed(self, *_: Any) -> None:
        self.state.model_settings = self.model_settings_from_fields()

    def _on_train_field_changed(self, *_: Any) -> None:
        try:
            self.state.train_config = self.train_config_from_fields()
        except TrainConfigError as exc:
            self._report_error(str(exc))

    def _on_state_model_settings(self, settings: ModelSettings) -> None:
        self._show_model_settings(settings)
        self._update_model_summary()
        self._update_preset_combo()

    def _on_state_train_config(self, config: core.TrainConfig) -> None:
        self._show_train_config(config)
        self._update_preset_combo()
        self._update_plan_preview()

    def _update_plan_preview(self, *_: Any) -> None:
        """Until the first training: the planned windows and batches, and the bar's total.

        The bar never shows a placeholder total; once a run has trained (or been opened) the
        bar and the plan describe that run until the next one starts.
        """
        if (self._closed or self._training_worker is not None or self._plan is not None
                or self.trained_run is not None or self._evaluation_progress is not None):
            return
        s, plan = self.state, None
        if s.dataset is not None and s.split is not None:
            try:
                plan = TrainingPlan.of(s.dataset, s.split.train, s.split.val,
                                       self.train_config_from_fields(),
                                       self.model_settings_from_fields().norm)
            except ElectrodeCAEError:
                plan = None
        bar = self.progress_bar
        if plan is None:
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setFormat("no windows to train on yet")
            self.plan_label.setVisible(False)
            return
        bar.setRange(0, plan.total_batches)
        bar.setValue(0)
        bar.setFormat("%v / %m batches")
        self.plan_label.setText(f"planned: {plan.describe()}")
        self.plan_label.setVisible(True)

    def _on_state_window(self, _window: core.WindowSpec) -> None:
        self._update_model_summary()
        self._update_preset_combo()

    def _on_state_training(self, _training: bool) -> None:
        self._update_buttons()

    def _on_state_history(self, history: tuple) -> None:
        self.loss_plot.set_history(history)

    def _on_state_converting_layers(self, _names: tuple) -> None:
        self._update_buttons()
        self._show_status()

    # ------------------------------------------------------------------------ status

    @property
    def is_busy(self) -> bool:
        """True while a training, evaluation, saving or run-opening worker is running."""
        return bool(self._workers)

    @property
    def opening(self) -> bool:
        """True while a run folder is being read (see :meth:`open_run`)."""
        return self._opening is not None

    def _set_status(self, text: str) -> None:
        self._status_text, self._status_error = text, False
        self._show_status()

    def _report_error(self, message: str) -> None:
        self._status_text, self._status_error = message, True
        self._show_status()
        show_error(message)

    def _conversion_wait_message(self, action: str = "Train") -> str:
        """Why ``action`` (Train, Open run) waits for the Data panel ("" if it does not)."""
        names = self.state.converting_layers
        if not names:
            return ""
        return (f"{action} waits for the Data tab to finish converting {', '.join(names)} in "
                "the background …")

    def _show_status(self) -> None:
        """The last status (or error), and below it why Train waits, while it does."""
        text, wait = self._status_text, self._conversion_wait_message()
        if wait:
            text = f"{text}\n{wait}" if text else wait
        self.status_label.setStyleSheet(_ERROR_STYLE if self._status_error else "")
        self.status_label.setText(text)

    def _update_buttons(self) -> None:
        training = self._training_worker is not None
        opening = self._opening is not None
        # A conversion finishing during training would rebuild the dataset under it.
        converting = bool(self.state.converting_layers)
        self.train_button.setEnabled(not training and not opening and not converting)
        self.train_button.setToolTip(self._conversion_wait_message())
        self.stop_button.setEnabled(training and not self._stop_requested)
        # an opened run would be overwritten by the conversion's result too
        self.open_button.setEnabled(not training and not opening and not converting)
        self.open_button.setToolTip(self._conversion_wait_message("Open run"))
        self.save_button.setEnabled(
            not training and not opening and not self._saving
            and self._evaluating_model is None and self.trained_run is not None
        )
        for widget in (self.preset_combo, self.conv_layers_combo, self.hidden_spin,
                       self.latent_spin, self.norm_combo, self.output_combo, self.epochs_spin,
                       self.batch_spin, self.lr_spin, self.device_combo, self.precision_combo,
                       self.windows_per_epoch_spin, self.warmup_spin, self.schedule_combo,
                       self.grad_clip_spin):
            widget.setEnabled(not training)
        self._update_output_dependent_fields()

    def _start_worker(self, function, *args, on_yielded=None, on_returned=None,
                      on_errored=None, on_finished=None):
        """Create, connect and start a napari worker running ``function(*args)``."""
        worker = create_worker(function, *args, _ignore_errors=True)
        self._workers[worker] = _WorkerWatch(worker)
        for signal, slot in (("yielded", on_yielded), ("returned", on_returned),
                             ("errored", on_errored)):
            if slot is not None:
                getattr(worker, signal).connect(slot)
        worker.finished.connect(lambda: self._on_worker_finished(worker, on_finished))
        return worker

    def _on_worker_finished(self, worker, on_finished) -> None:
        self._workers.pop(worker, None)
        if not self._closed and on_finished is not None:
            on_finished()

    # ---------------------------------------------------------------------- training

    def _on_train_clicked(self) -> None:
        if self._training_worker is not None or self._opening is not None \
                or self.state.converting_layers:
            return
        try:
            job = self._prepare_training()
        except ElectrodeCAEError as exc:
            self._report_error(str(exc))
            return
        self._start_training(job)

    def _missing_data_message(self) -> str:
        if self.state.stacks and self.state.window_error:
            return f"cannot train: {self.state.window_error}"
        return "no electrode stacks selected: select stacks first (Data tab)"

    def _prepare_training(self) -> TrainedRun:
        """Validate the settings and build a freshly seeded model (nothing is changed yet).

        Raises
        ------
        ElectrodeCAEError
            If there are no windows, or a model or training setting is invalid.
        """
        s = self.state
        if s.dataset is None or s.split is None:
            raise core.WindowSpecError(self._missing_data_message())
        config = self.train_config_from_fields()
        core.resolve_device(config.device)
        train_idx, val_idx = np.asarray(s.split.train), np.asarray(s.split.val)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise TrainConfigError(
                f"training needs windows on both sides: {len(train_idx)} training, "
                f"{len(val_idx)} validation windows"
            )
        settings = self.model_settings_from_fields()
        model_config = settings.model_config(s.dataset.spec)
        core.training.check_trainable(model_config, config)
        core.seed_everything(config.seed)
        model = core.build_model(model_config)
        return TrainedRun(model, s.dataset, config, train_idx, val_idx,
                          phase_rule=settings.phase_rule)

    def _start_training(self, job: TrainedRun) -> None:
        s = self.state
        self._before_training = _StateSnapshot(s.model, s.history, s.latents, s.report)
        self._training_job = job
        self._training_failed = False
        self._training_error = ""
        self._stop_requested = False
        s.train_config = job.config
        s.model = job.model
        s.history = ()
        s.latents = None
        s.report = None
        self._training_result = None
        plan = self._plan = TrainingPlan.of(job.dataset, job.train_idx, job.val_idx, job.config,
                                            job.model.config.norm)
        self._estimate = TimeEstimate(plan.batches_per_epoch, plan.epochs, plan.val_windows,
                                      plan.batch_size)
        self._show_plan("estimating the time from the first batches…")
        self._show_health(None)
        device = core.resolve_device(job.config.device)
        reports = core.train(job.model, job.dataset, job.config, train_idx=job.train_idx,
                             val_idx=job.val_idx, yield_batches=True)
        steps = training_steps(reports, gui_torch_threads(device))
        worker = self._start_worker(
            drive, steps, on_yielded=self._on_training_report,
            on_returned=self._on_training_returned,
            on_errored=self._on_training_errored, on_finished=self._on_training_finished,
        )
        # On Stop the worker abandons the generator; closing it in the worker thread makes
        # core.train's `finally` restore the best weights before `finished` is emitted.
        worker.aborted.connect(lambda: _close_generator(steps),
                               Qt.ConnectionType.DirectConnection)
        self._training_worker = worker
        # the real total from the start: never a placeholder before the first batch
        self.progress_bar.setFormat("%v / %m batches")
        self.progress_bar.setRange(0, plan.total_batches)
        self._progress_value = 0
        self._show_progress(0)
        where = device.type + (" in bf16" if job.config.precision == "bf16" else "")
        self._set_status(f"training on {where}…")  # windows and batches: the plan above
        s.training = True
        self._update_buttons()
        worker.start()

    def _on_training_report(self, report: core.BatchReport | EpochReport) -> None:
        if self._closed:
            return
        if isinstance(report, core.BatchReport):
            self._progress_value = (report.epoch - 1) * report.batches + report.batch
            if self._estimate is not None and self._estimate.batch_done() \
                    and not self.state.history:
                self._show_plan(estimate_text(self._estimate, 0))
            if time.monotonic() - self._progress_shown_at >= PROGRESS_INTERVAL_S:
                self._show_progress(self._progress_value)
            return
        self._show_progress(self._progress_value)
        history = (*self.state.history, report)
        self.state.history = history
        if self._estimate is not None:
            self._estimate.epoch_done(report.seconds)
            self._show_plan(estimate_text(self._estimate, len(history)))
        job = self._training_job
        self._show_health(epoch_warning(report, job.config if job is not None else None))
        if not self._stop_requested:
            self._set_status(format_epoch_status(history))

    def _on_training_returned(self, result: core.TrainResult | None) -> None:
        self._training_result = result

    def _show_plan(self, time_text: str = "") -> None:
        """The training plan (windows, batches) and below it ``time_text``."""
        if self._plan is None:
            self.plan_label.setVisible(False)
            return
        self.plan_label.setText(self._plan.describe() + (f"\n{time_text}" if time_text else ""))
        self.plan_label.setVisible(True)

    def _show_health(self, health: Health | None) -> None:
        """Show the warning of an unhealthy model (orange: collapsed, red: diverged); hide it
        for None or a healthy one."""
        if health is None or health.ok:
            self.health_label.setVisible(False)
            self.health_label.setText("")
            return
        self.health_label.setStyleSheet(_WARNING_STYLES.get(health.state,
                                                            _WARNING_STYLES["diverged"]))
        self.health_label.setText(warning_text(health))
        self.health_label.setVisible(True)

    @property
    def health_warning(self) -> str:
        """The warning the Train tab shows now ("" if none)."""
        return self.health_label.text() if not self.health_label.isHidden() else ""

    def _show_progress(self, value: int) -> None:
        """Show ``value`` in the progress bar with an ordinary, coalesced repaint.

        ``QProgressBar.setValue`` repaints at once (inside this slot) whenever the shown
        percentage changes; with updates disabled meanwhile, re-enabling them schedules the
        repaint for the event loop instead.
        """
        bar = self.progress_bar
        bar.setUpdatesEnabled(False)
        bar.setValue(value)
        bar.setUpdatesEnabled(True)
        self._progress_shown_at = time.monotonic()

    def _on_stop_clicked(self) -> None:
        if self._training_worker is None:
            return
        self._stop_requested = True
        self._training_worker.quit()
        self._set_status("stopping after the current batch…")
        self._update_buttons()

    def _on_training_errored(self, exc: Exception) -> None:
        self._training_failed = True
        if self._closed:
            return
        if isinstance(exc, ElectrodeCAEError):
            self._training_error = str(exc)
        else:
            self._training_error = f"training failed: {type(exc).__name__}: {exc}"
        self._report_error(self._training_error)

    def _on_training_finished(self) -> None:
        job = self._training_job
        self._training_worker = None
        self._training_job = None
        s = self.state
        s.training = False
        history = s.history
        if not history:
            snapshot = self._before_training
            self._restore(snapshot)
            self._estimate = None
            self._show_plan()  # no time to tell
            if s.report is not None and self.trained_run is not None:
                self._show_health(run_health(self.trained_run, s.report))
            kept = "stopped before the first epoch finished; the previous model is kept"
            if not self._training_failed:
                self._set_status(kept)
            self._evaluate_restored(
                snapshot, f"{self._training_error}\n{kept}" if self._training_error else kept)
            self._update_buttons()
            return
        result = self._training_result
        health = (result.health if result is not None
                  else history_health(history, job.config))
        job = job.with_health(health)
        self.trained_run = job
        self._before_training = None
        last = history[-1]
        if health.state == "diverged":
            kept = (f"best val {last.best_val_mse:.3g} @ epoch {last.best_epoch} (weights kept)"
                    if last.best_epoch else "no finite epoch: the initial weights are kept")
            summary = f"diverged at epoch {last.epoch}/{last.epochs} · {kept}"
        else:
            ended = "stopped" if last.epoch < last.epochs else "finished"
            summary = (f"{ended} after {last.epoch}/{last.epochs} epochs · best val "
                       f"{last.best_val_mse:.3g} @ epoch {last.best_epoch} (weights kept)")
        if health.state == "diverged":
            self._show_health(health)
        if self._estimate is not None:
            self._show_plan(f"took {format_duration(sum(r.seconds for r in history))}")
        self._estimate = None
        if self._training_error:  # keep the reason in the status once the evaluation is in
            summary = f"{self._training_error}\n{summary}"
        if not self._training_failed:
            self._set_status(summary + " · evaluating…")
        self._start_evaluation(job, summary)

    def _evaluate_restored(self, snapshot: _StateSnapshot | None, summary: str) -> None:
        """Evaluate a restored model again if Train cut its evaluation short.

        Train pressed while the previous model was still being evaluated replaces that model,
        so its evaluation result is dropped; when the new training stops before its first
        epoch, the previous model comes back without latents or report.
        """
        run = self.trained_run
        if (snapshot is None or snapshot.model is None or snapshot.report is not None
                or run is None or run.model is not snapshot.model
                or self._evaluating_model is snapshot.model):
            return
        self._start_evaluation(run, summary)

    def _restore(self, snapshot: _StateSnapshot | None) -> None:
        if snapshot is None:
            return
        s = self.state
        s.model = snapshot.model
        s.history = snapshot.history
        s.latents = snapshot.latents
        s.report = snapshot.report
        self._before_training = None

    # -------------------------------------------------------------------- evaluation

    def _start_evaluation(self, run: TrainedRun, summary: str) -> None:
        """Fit the phase rule, encode all windows and evaluate ``run.model`` in a worker, then
        bump model_version. The progress bar counts the windows meanwhile."""
        model = run.model
        self._evaluating_model = model
        progress = EvaluationProgress()
        worker = self._start_worker(
            _evaluate_model, model, run.dataset, run.train_idx, run.val_idx, run.config.seed,
            run.phase_rule, run.diverged, progress,
            on_returned=lambda result: self._on_evaluation_returned(run, summary, result),
            on_errored=self._on_evaluation_errored,
            on_finished=lambda: self._on_evaluation_finished(model, progress),
        )
        if self._evaluation_progress is None and self._training_worker is None:
            bar = self.progress_bar
            self._bar_before_evaluation = (bar.maximum(), bar.value(), bar.format())
        self._evaluation_progress = progress
        self._evaluations.append(progress)
        self._evaluation_timer.start()
        self._update_buttons()
        worker.start()

    def _show_evaluation_progress(self) -> None:
        """Timer slot: the running evaluation's window count in the progress bar (unless a new
        training has the bar)."""
        progress = self._evaluation_progress
        if progress is None or self._training_worker is not None or self._closed:
            return
        bar = self.progress_bar
        bar.setUpdatesEnabled(False)
        if progress.total:
            bar.setRange(0, progress.total)
            bar.setValue(min(progress.done, progress.total))
            bar.setFormat(f"{progress.stage} %v / %m windows")
        else:
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setFormat(f"{progress.stage}…")
        bar.setUpdatesEnabled(True)

    def _on_evaluation_returned(self, run: TrainedRun, summary: str, result) -> None:
        if self._closed or result is None or run.model is not self.state.model:
            return  # closed, cancelled, or a newer model replaced this one meanwhile
        latents, report = result
        s = self.state
        if s.dataset is not run.dataset:
            # The windows were rebuilt while the model trained or was evaluated (e.g. a Data
            # panel conversion finished): latents and report describe the old windows.
            s.model_version += 1  # the weights are final all the same
            self._set_status(f"{summary}\nthe windows changed meanwhile: latents and "
                             "evaluation of the old windows dropped (train again)")
            return
        s.latents = latents
        s.report = report
        s.model_version += 1
        self._set_status(f"{summary}\n{format_report_status(report)}")
        self._show_health(run_health(run, report))

    def _on_evaluation_errored(self, exc: Exception) -> None:
        if self._closed:
            return
        if isinstance(exc, ElectrodeCAEError):
            self._report_error(str(exc))
        else:
            self._report_error(f"evaluating the model failed: {type(exc).__name__}: {exc}")

    def _on_evaluation_finished(self, model, progress: EvaluationProgress) -> None:
        if self._evaluating_model is model:
            self._evaluating_model = None
        if progress in self._evaluations:
            self._evaluations.remove(progress)
        if self._evaluation_progress is progress:
            self._evaluation_progress = None
            self._evaluation_timer.stop()
            saved, self._bar_before_evaluation = self._bar_before_evaluation, None
            if saved is not None and self._training_worker is None:
                maximum, value, text = saved
                self.progress_bar.setRange(0, maximum)
                self.progress_bar.setValue(value)
                self.progress_bar.setFormat(text)
        self._update_buttons()

    # --------------------------------------------------------------------------- runs

    def _on_save_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save run to folder",
                                                self.state.run_dir or str(Path.home()))
        if path:
            self.save_run(path)

    def save_run(self, path: str | Path):
        """Save the current model, its windows, split, history and report to ``path``.

        Runs in a worker (latents of every window are encoded and written); returns the worker,
        or None if there is nothing to save. ``state.run_dir`` is set once it is written.
        """
        run = self.trained_run
        if run is None or run.model is not self.state.model or self.state.training:
            self._report_error("nothing to save: train a model or open a run first")
            return None
        path = Path(path)
        history = self.state.history
        report = self.state.report
        self._saving = True
        worker = self._start_worker(
            save_run_job, path, run, history, report, run_health(run, report),
            on_returned=lambda _path: self._on_run_saved(path),
            on_errored=self._on_save_errored, on_finished=self._on_save_finished,
        )
        self._set_status(f"saving run to {path}…")
        self._update_buttons()
        worker.start()
        return worker

    def _on_run_saved(self, path: Path) -> None:
        if self._closed:
            return
        self.state.run_dir = str(path)
        self.run_label.setText(f"run: {path}")
        self._set_status(f"run saved to {path}")
        show_info(f"run saved to {path}")

    def _on_save_errored(self, exc: Exception) -> None:
        if not self._closed:
            self._report_error(str(exc) if isinstance(exc, ElectrodeCAEError)
                               else f"saving failed: {type(exc).__name__}: {exc}")

    def _on_save_finished(self) -> None:
        self._saving = False
        self._update_buttons()

    def _on_open_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open run folder",
                                                self.state.run_dir or str(Path.home()))
        if path:
            self.open_run(path)

    def open_run(self, path: str | Path):
        """Open the run folder ``path``: its stacks, windows, model, settings and history.

        The folder is read in a worker (weights and stacks: seconds for big stacks); Train,
        Save and Open are disabled meanwhile. Its result is then applied on the GUI thread:
        stacks not yet in the viewer are added as Labels layers, the state is set, and the
        latents and the report are computed in another worker, after which
        ``state.model_version`` is bumped. On a bad folder an error notification is shown and
        neither the viewer nor the state change. A run opened while another is being read
        replaces it (the older result is dropped), as does closing the panel.

        Returns
        -------
        napari.qt.threading.FunctionWorker or None
            The started worker (tests wait for :attr:`is_busy` to clear), or None if training
            runs or the Data tab still converts a layer (an error is shown).
        """
        if self._training_worker is not None:
            self._report_error("stop training before opening a run")
            return None
        if self.state.converting_layers:
            self._report_error(
                "wait until the Data tab has converted "
                f"{', '.join(self.state.converting_layers)} before opening a run")
            return None
        request = object()
        # Layer data are taken here, on the GUI thread; the worker only compares arrays.
        layer_data = {layer.name: layer.data for layer in self.viewer.layers
                      if not getattr(layer, "multiscale", False)}
        worker = self._start_worker(
            load_run_folder, path, layer_data,
            on_returned=lambda loaded: self._on_run_loaded(request, loaded),
            on_errored=lambda exc: self._on_open_errored(request, path, exc),
            on_finished=lambda: self._on_open_finished(request),
        )
        self._opening = request
        self._set_status(f"opening run {path} …")
        self._update_buttons()
        worker.start()
        return worker

    def _on_run_loaded(self, request: object, loaded: LoadedRun) -> None:
        if self._closed or request is not self._opening:
            return  # closed, or another run was opened meanwhile
        if self._training_worker is not None:
            self._report_error("stop training before opening a run")
            return
        self._apply_run(loaded.run, loaded.dataset, loaded.history, loaded.same_layers)

    def _on_open_errored(self, request: object, path: str | Path, exc: BaseException) -> None:
        if not self._closed and request is self._opening:
            self._report_error(open_run_error_message(path, exc))

    def _on_open_finished(self, request: object) -> None:
        if request is self._opening:
            self._opening = None
        self._update_buttons()

    def _apply_run(self, run: core.Run, dataset: core.WindowDataset,
                   history: tuple[EpochReport, ...],
                   same_layers: dict[str, Any] | None = None) -> None:
        s, c = self.state, run.train_config
        layer_names = tuple(self._ensure_stack_layer(stack, same_layers or {})
                            for stack in dataset.stacks)
        s.stacks = tuple(dataset.stacks)
        s.stack_layers = layer_names
        # the Windows tab offers random and blocked: a run saved with "auto" opens resolved
        s.split_mode = resolve_split(c.split, run.window)
        s.val_fraction = c.val_fraction
        s.seed = c.seed
        s.window = run.window
        s.rebuild_dataset()
        if s.dataset is not None:
            dataset = s.dataset
        mc = run.model.config
        # "fitted", or the unfitted rule (the paper's nearest value, the plain argmax)
        rule = "fitted" if run.model.phase_rule.name == "fitted" else "nearest"
        s.model_settings = ModelSettings(mc.conv_layers, mc.hidden, mc.latent_dim, mc.norm,
                                         mc.output, rule)
        s.train_config = c
        s.model = run.model
        s.history = history
        s.latents = None
        s.report = None
        s.run_dir = str(run.path)
        health = Health(**{key: str(value) for key, value in run.health.items()
                            if key in ("state", "message", "advice")})
        # the run's saved phase rule is kept (rule None): its evaluation is the saved one's
        self.trained_run = TrainedRun(run.model, dataset, c, run.train_idx, run.val_idx,
                                      health=health, phase_rule=None)
        self._plan = None
        self._show_plan()
        self._show_health(health if health.state == "diverged" else None)
        self.run_label.setText(f"run: {run.path}")
        summary = f"opened run “{run.path.name}”: {len(history)} epochs"
        if history:
            last = history[-1]
            summary += f" · best val {last.best_val_mse:.3g} @ epoch {last.best_epoch}"
        self._set_status(summary + " · evaluating…")
        bar = self.progress_bar  # what the run trained
        bar.setRange(0, max(c.epochs, len(history)))
        bar.setValue(len(history))
        bar.setFormat("%v / %m epochs trained")
        self._start_evaluation(self.trained_run, summary)

    def _ensure_stack_layer(self, stack: core.ElectrodeStack,
                            same_layers: dict[str, Any]) -> str:
        """Name of a viewer layer holding ``stack``; adds a Labels layer if there is none.

        ``same_layers`` (layer name -> data found equal in the worker) spares comparing again.
        """
        name = stack.name or "electrode"
        if name in self.viewer.layers:
            data = self.viewer.layers[name].data
            if same_layers.get(name) is data or same_labels(data, stack.labels):
                return name
        return add_stack_labels(self.viewer, stack).name

    # ------------------------------------------------------------------------ closing

    def shutdown(self) -> None:
        """Stop every worker of this panel and wait for it; disconnect from the state."""
        if self._closed:
            return
        self._closed = True
        self._evaluation_timer.stop()
        for progress in self._evaluations:
            progress.cancelled = True  # stops at the next window batch, not at the end
        for worker in list(self._workers):
            worker.quit()
        for worker, watch in list(self._workers.items()):
            if not watch.wait(SHUTDOWN_TIMEOUT_S):
                warnings.warn(f"a worker of the training panel did not stop within "
                              f"{SHUTDOWN_TIMEOUT_S:.0f} s", RuntimeWarning, stacklevel=2)
        self._workers.clear()
        self.loss_plot.stop()
        if self._training_worker is not None:
            self._training_worker = None
            if not self.state.history:
                self._restore(self._before_training)
            self.state.training = False
        for signal, slot in self._state_connections:
            signal.disconnect(slot)
        self._state_connections = []


# --------------------------------------------------------------------------------------------


def _close_generator(generator) -> None:
    generator.close()


def _select_data(combo: QComboBox, value: Any) -> None:
    """Select the item of ``combo`` whose data is ``value`` (the first item if none is)."""
    combo.setCurrentIndex(max(combo.findData(value), 0))


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def _int_spin(minimum: int, maximum: int, tooltip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setKeyboardTracking(False)
    spin.setGroupSeparatorShown(True)
    spin.setToolTip(tooltip)
    return spin


class _signals_blocked:  # noqa: N801 (used like a function: `with _signals_blocked(a, b):`)
    """Context manager blocking the Qt signals of some widgets."""

    def __init__(self, *widgets: QWidget) -> None:
        self._widgets = widgets
        self._previous: list[bool] = []

    def __enter__(self) -> None:
        self._previous = [w.blockSignals(True) for w in self._widgets]

    def __exit__(self, *exc: object) -> None:
        for widget, previous in zip(self._widgets, self._previous):
            widget.blockSignals(previous)
