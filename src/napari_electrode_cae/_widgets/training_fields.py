"""The settings of the Train tab: model and training fields, presets, the planned run.

:class:`TrainingFields` is the part of :class:`.training_panel.TrainingPanel` that builds the
model and training group boxes, keeps them and ``state.model_settings`` /
``state.train_config`` in step (either may change first), names the matching preset, and
shows, until the first training, the planned windows and batches (the progress bar's real
total). Small field widgets and helpers live here too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from qtpy.QtCore import Qt
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .. import core
from ..core import ElectrodeCAEError, TrainConfigError
from ..core.losses import PHASE_LOSS_CHOICES
from ..core.model import CONV_LAYER_CHOICES, NORM_CHOICES
from ..core.training import SCHEDULE_CHOICES
from .state import ModelSettings
from .training_texts import (
    CUSTOM_PRESET,
    PHASE_RULE_CHOICES,
    TrainingPlan,
    matching_preset,
    settings_of_preset,
)

ERROR_STYLE = "color: #e8655a;"
#: Output kinds: value and label.
OUTPUT_CHOICES: tuple[tuple[str, str], ...] = (
    ("value", "one value (paper, MSE)"),
    ("phases", "three phases (cross-entropy)"),
)
#: Losses of three-phase models: value and label.
PHASE_LOSS_LABELS = {
    "ce": "cross-entropy",
    "weighted_ce": "weighted cross-entropy",
    "ce_dice": "cross-entropy + Dice",
}


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


class TrainingFields:
    """Model and training fields of the Train tab, in step with the shared state.

    A mixin of :class:`.training_panel.TrainingPanel` (which owns ``state``, the buttons and
    the progress bar, and calls :meth:`_build_model_box`, :meth:`_build_training_box`).
    """

    def _build_model_box(self) -> QGroupBox:
        self.preset_combo = QComboBox()
        self.preset_combo.addItems([*core.PRESETS, CUSTOM_PRESET])
        self.preset_combo.setToolTip(
            "\n".join(f"{p.name}: {p.description}" for p in core.PRESETS.values())
            + "\ncustom: your own settings"
        )
        self.conv_layers_combo = QComboBox()
        for layers in CONV_LAYER_CHOICES:
            self.conv_layers_combo.addItem(str(layers), layers)
        self.conv_layers_combo.setToolTip("Convolution layers of the encoder (Table 2)")
        self.hidden_spin = int_spin(1, 100_000, "Neurons of the fully connected hidden layer")
        self.latent_spin = int_spin(1, 4096, "Number of latent features")
        self.norm_combo = QComboBox()
        for norm in NORM_CHOICES:
            self.norm_combo.addItem(
                {"none": "none (paper)", "batch": "batch norm", "group": "group norm"}.get(
                    norm, norm
                ),
                norm,
            )
        self.norm_combo.setToolTip(
            "Normalisation after each convolution. The paper has none; batch norm keeps a "
            "larger learning rate from collapsing the model to the mean on real electrodes"
        )
        self.output_combo = QComboBox()
        for output, label in OUTPUT_CHOICES:
            self.output_combo.addItem(label, output)
        self.output_combo.setToolTip(
            "one value: the paper's single network value per voxel (pore -1, CBD 0, active "
            "+1), trained with MSE and cut into phases after training.\nthree phases: one "
            "logit per phase, trained with cross-entropy; the most likely phase wins, after "
            "offsets fitted to the training fractions when the phase rule is fitted"
        )
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
        self.epochs_spin = int_spin(1, 10_000_000, "Passes over the training windows")
        self.batch_spin = int_spin(1, 65_536, "Windows per optimiser step")
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
            "for this model on an H200 (TF32 is already on)"
        )
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
        self.windows_per_epoch_spin = int_spin(
            0,
            100_000_000,
            "Training windows sampled for each epoch (seeded); 'all' visits "
            "every training window every epoch, as in the paper. Bounds an epoch's time on a "
            "large stack",
        )
        self.windows_per_epoch_spin.setSpecialValueText("all")
        self.warmup_spin = int_spin(
            0,
            10_000_000,
            "Epochs over which the learning rate rises from a tenth of its value "
            "to its value (0: none, as in the paper)",
        )
        self.warmup_spin.setSpecialValueText("none")
        self.schedule_combo = QComboBox()
        for schedule in SCHEDULE_CHOICES:
            self.schedule_combo.addItem(
                {"constant": "constant (paper)", "cosine": "cosine decay"}.get(schedule, schedule),
                schedule,
            )
        self.schedule_combo.setToolTip(
            "After the warm-up the learning rate stays (the paper) or decays along a cosine "
            "to 0 at the last epoch"
        )
        self.grad_clip_spin = QDoubleSpinBox()
        self.grad_clip_spin.setRange(0.0, 1e6)
        self.grad_clip_spin.setDecimals(2)
        self.grad_clip_spin.setSingleStep(0.5)
        self.grad_clip_spin.setKeyboardTracking(False)
        self.grad_clip_spin.setSpecialValueText("off")
        self.grad_clip_spin.setToolTip(
            "Largest gradient norm; larger gradients are scaled down to it before each step "
            "(off: as in the paper)"
        )
        self.phase_loss_combo = QComboBox()
        for loss in PHASE_LOSS_CHOICES:
            self.phase_loss_combo.addItem(PHASE_LOSS_LABELS.get(loss, loss), loss)
        self.phase_loss_combo.setToolTip(
            "Loss of three-phase models (one-value models use MSE): weighted cross-entropy "
            "weighs the thin CBD up, Dice adds an overlap term per phase"
        )
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
        self.advanced_content.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.advanced_button)
        layout.addWidget(self.advanced_content)
        return box

    def show_advanced(self, shown: bool = True) -> None:
        """Show (or hide) the advanced training settings."""
        with signals_blocked(self.advanced_button):
            self.advanced_button.setChecked(shown)
        self.advanced_button.setArrowType(
            Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow
        )
        self.advanced_content.setVisible(shown)

    def _connect_widgets(self) -> None:
        self.preset_combo.activated.connect(self._on_preset_activated)
        self.conv_layers_combo.currentIndexChanged.connect(self._on_model_field_changed)
        self.hidden_spin.valueChanged.connect(self._on_model_field_changed)
        self.latent_spin.valueChanged.connect(self._on_model_field_changed)
        for combo in (self.norm_combo, self.output_combo, self.phase_rule_combo):
            combo.currentIndexChanged.connect(self._on_model_field_changed)
        for spin in (
            self.epochs_spin,
            self.batch_spin,
            self.lr_spin,
            self.windows_per_epoch_spin,
            self.warmup_spin,
            self.grad_clip_spin,
        ):
            spin.valueChanged.connect(self._on_train_field_changed)
        for combo in (
            self.device_combo,
            self.precision_combo,
            self.schedule_combo,
            self.phase_loss_combo,
        ):
            combo.currentIndexChanged.connect(self._on_train_field_changed)
        self.train_button.clicked.connect(self._on_train_clicked)
        self.stop_button.clicked.connect(self._on_stop_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.open_button.clicked.connect(self._on_open_clicked)

    # --------------------------------------------------------------- fields <-> state

    def model_settings_from_fields(self) -> ModelSettings:
        """The model settings the fields show."""
        return ModelSettings(
            int(self.conv_layers_combo.currentData()),
            self.hidden_spin.value(),
            self.latent_spin.value(),
            self.norm_combo.currentData(),
            self.output_combo.currentData(),
            self.phase_rule_combo.currentData(),
        )

    def train_config_from_fields(self) -> core.TrainConfig:
        """The training settings the fields show, with the state's split settings.

        Raises
        ------
        TrainConfigError
            If a value is invalid.
        """
        s = self.state
        return core.TrainConfig(
            epochs=self.epochs_spin.value(),
            batch_size=self.batch_spin.value(),
            lr=float(self.lr_spin.value()),
            val_fraction=float(s.val_fraction),
            seed=int(s.seed),
            split=s.split_mode,
            device=self.device_combo.currentData(),
            precision=self.precision_combo.currentData(),
            windows_per_epoch=self.windows_per_epoch_spin.value(),
            warmup_epochs=self.warmup_spin.value(),
            schedule=self.schedule_combo.currentData(),
            grad_clip=float(self.grad_clip_spin.value()),
            phase_loss=self.phase_loss_combo.currentData(),
        )

    def _show_model_settings(self, settings: ModelSettings) -> None:
        widgets = (
            self.conv_layers_combo,
            self.hidden_spin,
            self.latent_spin,
            self.norm_combo,
            self.output_combo,
            self.phase_rule_combo,
        )
        with signals_blocked(*widgets):
            select_data(self.conv_layers_combo, settings.conv_layers)
            self.hidden_spin.setValue(settings.hidden)
            self.latent_spin.setValue(settings.latent_dim)
            select_data(self.norm_combo, settings.norm)
            select_data(self.output_combo, settings.output)
            select_data(self.phase_rule_combo, settings.phase_rule)
        self._update_output_dependent_fields()

    def _update_output_dependent_fields(self) -> None:
        """The unfitted phase rule is named after the output kind; the phase loss applies to
        three-phase models only."""
        phases = self.output_combo.currentData() == "phases"
        training = self.training_active
        self.phase_rule_combo.setItemText(
            self.phase_rule_combo.findData("nearest"),
            "plain argmax" if phases else "nearest value (paper)",
        )
        self.phase_rule_combo.setEnabled(not training)
        self.phase_rule_combo.setToolTip(
            "How the output becomes phases after training. Fitted to the training fractions: "
            "per-phase offsets added to the logits before the argmax, chosen so that the "
            "phase fractions match the training windows' (the plain argmax all but drops a "
            "thin phase such as CBD)."
            if phases
            else "How the one value per voxel becomes phases after training: thresholds fitted so "
            "that the phase fractions match the training windows', or the paper's nearest "
            "value (-1 / 0 / +1), which puts CBD on every blurred pore/active boundary"
        )
        self.phase_loss_combo.setEnabled(phases and not training)

    def _show_train_config(self, config: core.TrainConfig) -> None:
        widgets = (
            self.epochs_spin,
            self.batch_spin,
            self.lr_spin,
            self.device_combo,
            self.precision_combo,
            self.windows_per_epoch_spin,
            self.warmup_spin,
            self.schedule_combo,
            self.grad_clip_spin,
            self.phase_loss_combo,
        )
        with signals_blocked(*widgets):
            self.epochs_spin.setValue(config.epochs)
            self.batch_spin.setValue(config.batch_size)
            self.lr_spin.setValue(config.lr)
            select_data(self.device_combo, config.device)
            select_data(self.precision_combo, config.precision)
            self.windows_per_epoch_spin.setValue(config.windows_per_epoch)
            self.warmup_spin.setValue(config.warmup_epochs)
            select_data(self.schedule_combo, config.schedule)
            self.grad_clip_spin.setValue(config.grad_clip)
            select_data(self.phase_loss_combo, config.phase_loss)

    def _update_preset_combo(self) -> None:
        name = matching_preset(
            self.state.model_settings, self.state.train_config, self.state.window
        )
        with signals_blocked(self.preset_combo):
            self.preset_combo.setCurrentText(name)

    def _update_model_summary(self) -> None:
        """Parameter count of the model the fields describe (built on torch's meta device)."""
        window = self.state.window
        try:
            config = self.model_settings_from_fields().model_config(window)
            with torch.device("meta"):
                model = core.build_model(config)
        except ElectrodeCAEError as exc:
            self.model_summary_label.setStyleSheet(ERROR_STYLE)
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
                preset.train,
                val_fraction=s.val_fraction,
                seed=s.seed,
                split=s.split_mode,
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
        if (
            self.closed
            or self.training_active
            or self._plan is not None
            or self.trained_run is not None
            or self._evaluation_progress is not None
        ):
            return
        s, plan = self.state, None
        if s.dataset is not None and s.split is not None:
            try:
                plan = TrainingPlan.of(
                    s.dataset,
                    s.split.train,
                    s.split.val,
                    self.train_config_from_fields(),
                    self.model_settings_from_fields().norm,
                )
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


def select_data(combo: QComboBox, value: Any) -> None:
    """Select the item of ``combo`` whose data is ``value`` (the first item if none is)."""
    combo.setCurrentIndex(max(combo.findData(value), 0))


def row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def int_spin(minimum: int, maximum: int, tooltip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setKeyboardTracking(False)
    spin.setGroupSeparatorShown(True)
    spin.setToolTip(tooltip)
    return spin


class signals_blocked:  # noqa: N801 (used like a function: `with _signals_blocked(a, b):`)
    """Context manager blocking the Qt signals of some widgets."""

    def __init__(self, *widgets: QWidget) -> None:
        self._widgets = widgets
        self._previous: list[bool] = []

    def __enter__(self) -> None:
        self._previous = [w.blockSignals(True) for w in self._widgets]

    def __exit__(self, *exc: object) -> None:
        for widget, previous in zip(self._widgets, self._previous):
            widget.blockSignals(previous)
