"""What the Train tab shows: status line, plan, health warning, progress bar, enabled controls.

:class:`TrainingStatus` is the part of :class:`.training_panel.TrainingPanel` that makes and
updates these widgets; :class:`TrainingPhase` is where a training is, the one state the
buttons and messages follow. The texts themselves come from :mod:`.training_jobs`.
"""

from __future__ import annotations

import enum
import time

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QProgressBar

from ..core.health import Health
from .training_fields import ERROR_STYLE
from .training_texts import warning_text

#: Warning colours: a collapsed model (orange) and a diverged one (red).
_WARNING_STYLES = {
    "collapsed": "color: #f0a030; font-weight: bold;",
    "diverged": "color: #ff5a4e; font-weight: bold;",
}


class TrainingPhase(enum.Enum):
    """Where the Train tab's training is: the one state the buttons and messages follow."""

    IDLE = "idle"  # nothing trained yet in this panel
    TRAINING = "training"  # a training worker runs
    STOPPING = "stopping"  # Stop was pressed: the worker ends after the current batch
    DONE = "done"  # the last training finished or was stopped (its evaluation may still run)
    FAILED = "failed"  # the last training raised an error


class TrainingStatus:
    """The Train tab's status widgets and which of its controls are enabled.

    A mixin of :class:`.training_panel.TrainingPanel`, which owns ``state``, ``phase``,
    the buttons and the settings fields.
    """

    def _build_status_widgets(self) -> None:
        """Make the progress bar, the status line, the plan and the health warning."""
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

    def _set_status(self, text: str) -> None:
        self._status_text, self._status_error = text, False
        self._show_status()

    def _conversion_wait_message(self, action: str = "Train") -> str:
        """Why ``action`` (Train, Open run) waits for the Data panel ("" if it does not)."""
        names = self.state.converting_layers
        if not names:
            return ""
        return (
            f"{action} waits for the Data tab to finish converting {', '.join(names)} in "
            "the background …"
        )

    def _show_status(self) -> None:
        """The last status (or error), and below it why Train waits, while it does."""
        text, wait = self._status_text, self._conversion_wait_message()
        if wait:
            text = f"{text}\n{wait}" if text else wait
        self.status_label.setStyleSheet(ERROR_STYLE if self._status_error else "")
        self.status_label.setText(text)

    def _update_buttons(self) -> None:
        training = self.training_active
        opening = self._opening is not None
        # A conversion finishing during training would rebuild the dataset under it.
        converting = bool(self.state.converting_layers)
        self.train_button.setEnabled(not training and not opening and not converting)
        self.train_button.setToolTip(self._conversion_wait_message())
        self.stop_button.setEnabled(self.phase is TrainingPhase.TRAINING)
        # an opened run would be overwritten by the conversion's result too
        self.open_button.setEnabled(not training and not opening and not converting)
        self.open_button.setToolTip(self._conversion_wait_message("Open run"))
        self.save_button.setEnabled(
            not training
            and not opening
            and not self._saving
            and self._evaluating_model is None
            and self.trained_run is not None
        )
        for widget in (
            self.preset_combo,
            self.conv_layers_combo,
            self.hidden_spin,
            self.latent_spin,
            self.norm_combo,
            self.output_combo,
            self.epochs_spin,
            self.batch_spin,
            self.lr_spin,
            self.device_combo,
            self.precision_combo,
            self.windows_per_epoch_spin,
            self.warmup_spin,
            self.schedule_combo,
            self.grad_clip_spin,
        ):
            widget.setEnabled(not training)
        self._update_output_dependent_fields()

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
        self.health_label.setStyleSheet(
            _WARNING_STYLES.get(health.state, _WARNING_STYLES["diverged"])
        )
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
