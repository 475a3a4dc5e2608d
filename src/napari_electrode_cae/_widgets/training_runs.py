"""After training in the Train tab: evaluating a model, and runs saved to or opened from disk.

:class:`TrainingRuns` is the part of :class:`.training_panel.TrainingPanel` that evaluates a
trained (or opened) model in a worker (phase rule, latents of every window, the paper's
report; the progress bar counts the windows) and then bumps ``state.model_version``, and that
saves the current run to a folder or opens one (read in a worker, applied on the GUI thread).
The worker jobs themselves are in :mod:`.training_jobs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFileDialog

from .. import core
from .._layers import add_stack_labels
from ..core import ElectrodeCAEError, EpochReport
from ..core.health import Health
from ..core.windows import resolve_split
from .state import ModelSettings
from .training_jobs import (
    EvaluationProgress,
    LoadedRun,
    TrainedRun,
    load_run_folder,
    open_run_error_message,
    run_health,
    same_labels,
    save_run_job,
)
from .training_jobs import evaluate_model as _evaluate_model
from .training_texts import format_report_status


class TrainingRuns:
    """Evaluation of a model and Save run… / Open run… of the Train tab.

    A mixin of :class:`.training_panel.TrainingPanel`, which owns ``state``, ``workers``,
    the progress bar and the status line.
    """

    # -------------------------------------------------------------------- evaluation

    def _start_evaluation(self, run: TrainedRun, summary: str) -> None:
        """Fit the phase rule, encode all windows and evaluate ``run.model`` in a worker, then
        bump model_version. The progress bar counts the windows meanwhile."""
        model = run.model
        self._evaluating_model = model
        progress = EvaluationProgress()
        worker = self.workers.create(
            _evaluate_model,
            model,
            run.dataset,
            run.train_idx,
            run.val_idx,
            run.config.seed,
            run.phase_rule,
            run.diverged,
            progress,
            on_returned=lambda result: self._on_evaluation_returned(run, summary, result),
            on_errored=self._on_evaluation_errored,
            on_finished=lambda: self._on_evaluation_finished(model, progress),
        )
        if self._evaluation_progress is None and not self.training_active:
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
        if progress is None or self.training_active or self.closed:
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
        if self.closed or result is None or run.model is not self.state.model:
            return  # closed, cancelled, or a newer model replaced this one meanwhile
        latents, report = result
        s = self.state
        if s.dataset is not run.dataset:
            # The windows were rebuilt while the model trained or was evaluated (e.g. a Data
            # panel conversion finished): latents and report describe the old windows.
            s.model_version += 1  # the weights are final all the same
            self._set_status(
                f"{summary}\nthe windows changed meanwhile: latents and "
                "evaluation of the old windows dropped (train again)"
            )
            return
        s.latents = latents
        s.report = report
        s.model_version += 1
        self._set_status(f"{summary}\n{format_report_status(report)}")
        self._show_health(run_health(run, report))

    def _on_evaluation_errored(self, exc: Exception) -> None:
        if self.closed:
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
            if saved is not None and not self.training_active:
                maximum, value, text = saved
                self.progress_bar.setRange(0, maximum)
                self.progress_bar.setValue(value)
                self.progress_bar.setFormat(text)
        self._update_buttons()

    # --------------------------------------------------------------------------- runs

    def _on_save_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Save run to folder", self.state.run_dir or str(Path.home())
        )
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
        worker = self.workers.create(
            save_run_job,
            path,
            run,
            history,
            report,
            run_health(run, report),
            on_returned=lambda _path: self._on_run_saved(path),
            on_errored=self._on_save_errored,
            on_finished=self._on_save_finished,
        )
        self._set_status(f"saving run to {path}…")
        self._update_buttons()
        worker.start()
        return worker

    def _on_run_saved(self, path: Path) -> None:
        if self.closed:
            return
        self.state.run_dir = str(path)
        self.run_label.setText(f"run: {path}")
        self._set_status(f"run saved to {path}")
        show_info(f"run saved to {path}")

    def _on_save_errored(self, exc: Exception) -> None:
        if not self.closed:
            self._report_error(
                str(exc)
                if isinstance(exc, ElectrodeCAEError)
                else f"saving failed: {type(exc).__name__}: {exc}"
            )

    def _on_save_finished(self) -> None:
        self._saving = False
        self._update_buttons()

    def _on_open_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Open run folder", self.state.run_dir or str(Path.home())
        )
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
        if self.training_active:
            self._report_error("stop training before opening a run")
            return None
        if self.state.converting_layers:
            self._report_error(
                "wait until the Data tab has converted "
                f"{', '.join(self.state.converting_layers)} before opening a run"
            )
            return None
        request = object()
        # Layer data are taken here, on the GUI thread; the worker only compares arrays.
        layer_data = {
            layer.name: layer.data
            for layer in self.viewer.layers
            if not getattr(layer, "multiscale", False)
        }
        worker = self.workers.create(
            load_run_folder,
            path,
            layer_data,
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
        if self.closed or request is not self._opening:
            return  # closed, or another run was opened meanwhile
        if self.training_active:
            self._report_error("stop training before opening a run")
            return
        self._apply_run(loaded.run, loaded.dataset, loaded.history, loaded.same_layers)

    def _on_open_errored(self, request: object, path: str | Path, exc: BaseException) -> None:
        if not self.closed and request is self._opening:
            self._report_error(open_run_error_message(path, exc))

    def _on_open_finished(self, request: object) -> None:
        if request is self._opening:
            self._opening = None
        self._update_buttons()

    def _apply_run(
        self,
        run: core.Run,
        dataset: core.WindowDataset,
        history: tuple[EpochReport, ...],
        same_layers: dict[str, Any] | None = None,
    ) -> None:
        s, c = self.state, run.train_config
        layer_names = tuple(
            self._ensure_stack_layer(stack, same_layers or {}) for stack in dataset.stacks
        )
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
        s.model_settings = ModelSettings(
            mc.conv_layers, mc.hidden, mc.latent_dim, mc.norm, mc.output, rule
        )
        s.train_config = c
        s.model = run.model
        s.history = history
        s.latents = None
        s.report = None
        s.run_dir = str(run.path)
        health = Health(
            **{
                key: str(value)
                for key, value in run.health.items()
                if key in ("state", "message", "advice")
            }
        )
        # the run's saved phase rule is kept (rule None): its evaluation is the saved one's
        self.trained_run = TrainedRun(
            run.model, dataset, c, run.train_idx, run.val_idx, health=health, phase_rule=None
        )
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

    def _ensure_stack_layer(self, stack: core.ElectrodeStack, same_layers: dict[str, Any]) -> str:
        """Name of a viewer layer holding ``stack``; adds a Labels layer if there is none.

        ``same_layers`` (layer name -> data found equal in the worker) spares comparing again.
        """
        name = stack.name or "electrode"
        if name in self.viewer.layers:
            data = self.viewer.layers[name].data
            if same_layers.get(name) is data or same_labels(data, stack.labels):
                return name
        return add_stack_labels(self.viewer, stack).name
