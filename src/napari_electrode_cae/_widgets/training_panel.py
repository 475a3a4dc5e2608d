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
is applied on the GUI thread. Worker jobs and text helpers live in :mod:`.training_jobs`; the
settings fields in :mod:`.training_fields`; evaluation and runs on disk in
:mod:`.training_runs`; the status, plan, warning and progress widgets in
:mod:`.training_status`. Where a training is stands in :attr:`TrainingPanel.phase` (a
:class:`TrainingPhase`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info  # noqa: F401 (tests patch them)
from napari.utils.theme import get_theme
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from .. import core
from ..core import ElectrodeCAEError, EpochReport, TrainConfigError
from ..core.training import TimeEstimate, format_duration, history_health
from .loss_plot import LossPlot
from .panel_base import Panel
from .scrolling import fill_with_scrolling
from .state import CAEState
from .training_fields import (
    LearningRateSpinBox,  # noqa: F401 (re-exported: tests use it)
    TrainingFields,
    row,
)
from .training_jobs import (
    EvaluationProgress,
    TrainedRun,
    drive,
    gui_torch_threads,
    history_from_rows,  # noqa: F401 (re-exported: tests use it)
    run_health,
    training_steps,
)
from .training_runs import TrainingRuns
from .training_status import TrainingPhase, TrainingStatus
from .training_texts import TrainingPlan, epoch_warning, estimate_text, format_epoch_status
from .window_close import WindowCloseWatcher

if TYPE_CHECKING:
    import napari

#: Shortest time between two progress-bar updates while training, in seconds. Each update
#: repaints the window (with software OpenGL 10-30 ms on a busy CPU), and batches of the quick
#: preset come 20-30 times a second.
PROGRESS_INTERVAL_S = 0.1
#: How often the evaluation's window count is shown, in milliseconds.
EVALUATION_POLL_MS = 200


@dataclass(frozen=True, eq=False)
class _StateSnapshot:
    """What Train replaces; restored when training ends before its first epoch."""

    model: Any
    history: tuple
    latents: Any
    report: Any


# --------------------------------------------------------------------------------------------


class TrainingPanel(TrainingFields, TrainingRuns, TrainingStatus, Panel):
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

    Attributes
    ----------
    phase : TrainingPhase
        Where the panel's training is (idle, training, stopping, done, failed).
    trained_run : TrainedRun or None
        The current model with what it was trained on.
    """

    def __init__(
        self, viewer: napari.Viewer, state: CAEState, parent: QWidget | None = None
    ) -> None:
        super().__init__(viewer, state, parent)
        self.phase = TrainingPhase.IDLE
        self._training_worker = None
        self._training_job: TrainedRun | None = None
        self._before_training: _StateSnapshot | None = None
        self._training_error = ""
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
        self.connect_events(
            (state.events.model_settings, self._on_state_model_settings),
            (state.events.train_config, self._on_state_train_config),
            (state.events.window, self._on_state_window),
            (state.events.training, self._on_state_training),
            (state.events.history, self._on_state_history),
            (state.events.converting_layers, self._on_state_converting_layers),
            (state.events.dataset, self._update_plan_preview),
            (state.events.split, self._update_plan_preview),
        )
        # a docked panel gets no close event when the viewer closes: stop training then
        self._close_watcher = WindowCloseWatcher(self, self.shutdown)

    # ---------------------------------------------------------------------------- widgets

    def _build_widgets(self) -> None:
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current batch; the best weights are kept")
        self._build_status_widgets()
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
        layout.addLayout(row(self.train_button, self.stop_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plan_label)
        layout.addWidget(self.health_label)
        layout.addWidget(self.status_label)
        layout.addWidget(self.loss_plot, stretch=1)
        layout.addLayout(row(self.save_button, self.open_button))
        layout.addWidget(self.run_label)
        fill_with_scrolling(self, content)
        self._connect_widgets()

    # ------------------------------------------------------------------------ status

    @property
    def is_busy(self) -> bool:
        """True while a training, evaluation, saving or run-opening worker is running."""
        return self.workers.busy

    @property
    def training_active(self) -> bool:
        """True from Train until the training worker has finished (Stop included)."""
        return self.phase in (TrainingPhase.TRAINING, TrainingPhase.STOPPING)

    @property
    def opening(self) -> bool:
        """True while a run folder is being read (see :meth:`open_run`)."""
        return self._opening is not None

    def _report_error(self, message: str) -> None:
        self._status_text, self._status_error = message, True
        self._show_status()
        show_error(message)

    # ---------------------------------------------------------------------- training

    def _on_train_clicked(self) -> None:
        if self.training_active or self._opening is not None or self.state.converting_layers:
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
        return TrainedRun(
            model, s.dataset, config, train_idx, val_idx, phase_rule=settings.phase_rule
        )

    def _start_training(self, job: TrainedRun) -> None:
        s = self.state
        self._before_training = _StateSnapshot(s.model, s.history, s.latents, s.report)
        self._training_job = job
        self._training_error = ""
        s.train_config = job.config
        s.model = job.model
        s.history = ()
        s.latents = None
        s.report = None
        self._training_result = None
        plan = self._plan = TrainingPlan.of(
            job.dataset, job.train_idx, job.val_idx, job.config, job.model.config.norm
        )
        self._estimate = TimeEstimate(
            plan.batches_per_epoch, plan.epochs, plan.val_windows, plan.batch_size
        )
        self._show_plan("estimating the time from the first batches…")
        self._show_health(None)
        device = core.resolve_device(job.config.device)
        reports = core.train(
            job.model,
            job.dataset,
            job.config,
            train_idx=job.train_idx,
            val_idx=job.val_idx,
            yield_batches=True,
        )
        steps = training_steps(reports, gui_torch_threads(device))
        worker = self.workers.create(
            drive,
            steps,
            on_yielded=self._on_training_report,
            on_returned=self._on_training_returned,
            on_errored=self._on_training_errored,
            on_finished=self._on_training_finished,
        )
        # On Stop the worker abandons the generator; closing it in the worker thread makes
        # core.train's `finally` restore the best weights before `finished` is emitted.
        worker.aborted.connect(lambda: _close_generator(steps), Qt.ConnectionType.DirectConnection)
        self._training_worker = worker
        self.phase = TrainingPhase.TRAINING
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
        if self.closed:
            return
        if isinstance(report, core.BatchReport):
            self._progress_value = (report.epoch - 1) * report.batches + report.batch
            if (
                self._estimate is not None
                and self._estimate.batch_done()
                and not self.state.history
            ):
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
        if self.phase is TrainingPhase.TRAINING:  # not over "stopping after …"
            self._set_status(format_epoch_status(history))

    def _on_training_returned(self, result: core.TrainResult | None) -> None:
        self._training_result = result

    def _on_stop_clicked(self) -> None:
        if self.phase is not TrainingPhase.TRAINING:
            return
        self.phase = TrainingPhase.STOPPING
        self._training_worker.quit()
        self._set_status("stopping after the current batch…")
        self._update_buttons()

    def _on_training_errored(self, exc: Exception) -> None:
        self.phase = TrainingPhase.FAILED
        if self.closed:
            return
        if isinstance(exc, ElectrodeCAEError):
            self._training_error = str(exc)
        else:
            self._training_error = f"training failed: {type(exc).__name__}: {exc}"
        self._report_error(self._training_error)

    def _on_training_finished(self) -> None:
        job = self._training_job
        failed = self.phase is TrainingPhase.FAILED
        self.phase = TrainingPhase.FAILED if failed else TrainingPhase.DONE
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
            if not failed:
                self._set_status(kept)
            self._evaluate_restored(
                snapshot, f"{self._training_error}\n{kept}" if self._training_error else kept
            )
            self._update_buttons()
            return
        result = self._training_result
        health = result.health if result is not None else history_health(history, job.config)
        job = job.with_health(health)
        self.trained_run = job
        self._before_training = None
        last = history[-1]
        if health.state == "diverged":
            kept = (
                f"best val {last.best_val_mse:.3g} @ epoch {last.best_epoch} (weights kept)"
                if last.best_epoch
                else "no finite epoch: the initial weights are kept"
            )
            summary = f"diverged at epoch {last.epoch}/{last.epochs} · {kept}"
        else:
            ended = "stopped" if last.epoch < last.epochs else "finished"
            summary = (
                f"{ended} after {last.epoch}/{last.epochs} epochs · best val "
                f"{last.best_val_mse:.3g} @ epoch {last.best_epoch} (weights kept)"
            )
        if health.state == "diverged":
            self._show_health(health)
        if self._estimate is not None:
            self._show_plan(f"took {format_duration(sum(r.seconds for r in history))}")
        self._estimate = None
        if self._training_error:  # keep the reason in the status once the evaluation is in
            summary = f"{self._training_error}\n{summary}"
        if not failed:
            self._set_status(summary + " · evaluating…")
        self._start_evaluation(job, summary)

    def _evaluate_restored(self, snapshot: _StateSnapshot | None, summary: str) -> None:
        """Evaluate a restored model again if Train cut its evaluation short.

        Train pressed while the previous model was still being evaluated replaces that model,
        so its evaluation result is dropped; when the new training stops before its first
        epoch, the previous model comes back without latents or report.
        """
        run = self.trained_run
        if (
            snapshot is None
            or snapshot.model is None
            or snapshot.report is not None
            or run is None
            or run.model is not snapshot.model
            or self._evaluating_model is snapshot.model
        ):
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

    # ------------------------------------------------------------------------ closing

    def stop_work(self) -> None:
        """Before the workers are waited for: no more evaluation polls, evaluations cancelled
        at their next window batch (not at the end)."""
        self._evaluation_timer.stop()
        for progress in self._evaluations:
            progress.cancelled = True

    def after_workers_stopped(self) -> None:
        """A training cut short by closing: its state is undone as if it had been stopped."""
        self.loss_plot.stop()
        if self.training_active:
            self._training_worker = None
            self.phase = TrainingPhase.DONE
            if not self.state.history:
                self._restore(self._before_training)
            self.state.training = False


# --------------------------------------------------------------------------------------------


def _close_generator(generator) -> None:
    generator.close()
