"""Predicted beside measured metrics of the Latents tab's decoded volume.

A table under the latent sliders: one row per metric of the run's regressors
(:mod:`napari_electrode_cae.core.prediction`), with the Gaussian process's prediction ± one
standard deviation for the sliders' latent vector — updated at once as a slider moves (a few
ms) — and the metric *measured* on the decoded, phase-snapped volume, which follows when it is
computed (in a background worker, latest wins; the costly pore tortuosity only on request).

The regressors come from ``RUN_DIR/prediction.json`` when the opened run has one, or from
"Fit predictor" (measures non-overlapping windows of the current dataset, cross-validates over
blocked folds, in a background worker). The Design tab shares them (:attr:`predictor`).
Labels and units are the metrics registry's (:mod:`napari_electrode_cae.core.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import ElectrodeCAEError, prediction
from ..core import metrics as metric_registry
from .live_decoder import model_snapshot
from .panel_base import WorkerSet

if TYPE_CHECKING:
    from .state import CAEState

#: The decoded volume is measured once the sliders rest this long (ms).
MEASURE_DELAY_MS = 120
#: Windows measured by "Fit predictor" (non-overlapping, seeded subset).
GUI_MAX_WINDOWS = 300


def fit_job(model, dataset, max_windows: int, n_folds: int, tortuosity: bool):
    """Worker generator: yields PredictionProgress, returns the PredictionReport."""
    return (
        yield from prediction.iter_fit_prediction(
            model, dataset, max_windows=max_windows, n_folds=n_folds, tortuosity=tortuosity
        )
    )


def measure_job(labels: np.ndarray, voxel_size_um: float, names: list[str]) -> dict:
    """Worker function: the measured metrics of one decoded volume."""
    return metric_registry.compute(labels, voxel_size_um, names)


class PredictionView(QWidget):
    """Predicted (± std) and measured metrics of the decoded volume.

    Attributes
    ----------
    predictor : Predictor or None
        The regressors in use (shared with the Design tab).
    predictor_changed : Signal(object)
        Emitted with the new predictor (or None).
    """

    predictor_changed = Signal(object)

    def __init__(self, state: CAEState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.predictor: prediction.Predictor | None = None
        self.report: dict | None = None
        self._latent: np.ndarray | None = None
        self._labels: tuple[np.ndarray, float] | None = None
        self._measured: dict[str, float] = {}
        self._fit_worker = None
        self._measure_worker = None
        self._measure_pending = False
        #: The fit and measurement workers, waited for at shutdown.
        self.workers = WorkerSet()
        self._measure_timer = QTimer(self)
        self._measure_timer.setSingleShot(True)
        self._measure_timer.setInterval(MEASURE_DELAY_MS)
        self._measure_timer.timeout.connect(self._start_measure)
        self._build_ui()
        self._connections = [
            (state.events.model_version, self._on_model_version),
            (state.events.run_dir, self._on_model_version),
            (state.events.dataset, self._update_enabled),
        ]
        for signal, slot in self._connections:
            signal.connect(slot)
        self._on_model_version()

    # ----------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.fit_button = QPushButton("Fit predictor")
        self.fit_button.setToolTip(
            "Measure non-overlapping windows and fit one Gaussian process per metric from the "
            "latent vector; R² over blocked folds beside a random encoder's"
        )
        self.fit_button.clicked.connect(self.fit)
        self.tau_check = QCheckBox("measure τ")
        self.tau_check.setToolTip(
            "also measure the pore tortuosity of the decoded volume (the costly metric)"
        )
        self.tau_check.toggled.connect(lambda _on: self._schedule_measure())
        row = QHBoxLayout()
        row.addWidget(self.fit_button)
        row.addWidget(self.tau_check)
        row.addStretch(1)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Metric", "Predicted ± std", "Measured"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(200)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Predicted vs measured</b> (decoded volume)"))
        layout.addLayout(row)
        layout.addWidget(self.status_label)
        layout.addWidget(self.table)

    def _rows(self) -> list[str]:
        return list(self.predictor.names) if self.predictor is not None else []

    def _render(self) -> None:
        names = self._rows()
        self.table.setRowCount(len(names))
        mean = std = {}
        if (
            self.predictor is not None
            and self._latent is not None
            and len(self._latent) == self.predictor.latent_dim
        ):
            mean, std = self.predictor.predict(self._latent)
        fits = (self.report or {}).get("metrics", {})
        for r, name in enumerate(names):
            m = metric_registry.get(name)
            item = QTableWidgetItem(m.label + (f" ({m.unit})" if m.unit else ""))
            fit = fits.get(name)
            if fit is not None and fit.get("r2") is not None:
                r2_random = fit.get("r2_random")
                item.setToolTip(
                    f"{name}: R² {fit['r2']:.2f} over blocked folds (random encoder "
                    + ("n/a" if r2_random is None else f"{r2_random:.2f}")
                    + ")"
                    + ("" if fit.get("predicts") else " — not predicted")
                )
            self.table.setItem(r, 0, item)
            pred = (
                ""
                if name not in mean
                else (
                    f"{metric_registry.format_value(m, mean[name], with_unit=False)} ± "
                    f"{std[name]:.2g}"
                )
            )
            self.table.setItem(r, 1, QTableWidgetItem(pred))
            measured = self._measured.get(name)
            text = (
                ""
                if measured is None
                else metric_registry.format_value(m, measured, with_unit=False)
            )
            if measured is None and m.costly and not self.tau_check.isChecked():
                text = "(tick measure τ)"
            self.table.setItem(r, 2, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    # ------------------------------------------------------------------------------ inputs
    def set_latent(self, latent: np.ndarray) -> None:
        """The sliders moved: predict at once (measured values follow the decode)."""
        self._latent = np.asarray(latent, dtype=np.float64)
        self._render()

    def set_decoded(self, labels: np.ndarray, voxel_size_um: float) -> None:
        """A decoded volume was shown: measure it when the sliders rest for a moment."""
        self._labels = (labels, float(voxel_size_um))
        self._schedule_measure()

    def set_predictor(
        self, predictor: prediction.Predictor | None, report: dict | None = None
    ) -> None:
        self.predictor = predictor
        self.report = report
        self._measured = {}
        if predictor is None:
            self.status_label.setText(
                "no predictor: press Fit predictor (or run "
                "`electrode-cae predict RUN` and reopen the run)"
            )
        else:
            fits = (report or {}).get("metrics", {})
            good = [n for n, f in fits.items() if f.get("predicts")]
            self.status_label.setText(
                f"{len(predictor.names)} metrics; predicted better than by a random encoder: "
                + (", ".join(good) if good else "none")
                if fits
                else f"{len(predictor.names)} metrics"
            )
        self._render()
        self._schedule_measure()
        self.predictor_changed.emit(predictor)

    def _on_model_version(self, _event: Any = None) -> None:
        """A new model: its saved regressors if the run has them, else none."""
        model = self.state.model
        predictor, report = None, None
        run_dir = self.state.run_dir
        if model is not None and run_dir and (Path(run_dir) / prediction.PREDICTION_FILE).exists():
            try:
                predictor = prediction.load_predictor(run_dir)
                report = prediction.load_prediction_report(run_dir)
            except ElectrodeCAEError as exc:
                self.status_label.setText(f"prediction.json not used: {exc}")
            if predictor is not None and predictor.latent_dim != model.config.latent_dim:
                predictor, report = None, None
        self.set_predictor(predictor, report)
        self._update_enabled()

    def _update_enabled(self, _event: Any = None) -> None:
        self.fit_button.setEnabled(
            self._fit_worker is None
            and self.state.model is not None
            and self.state.dataset is not None
            and self.state.model_matches_dataset()
        )

    # ------------------------------------------------------------------------------ fitting
    def fit(self) -> None:
        """Fit the regressors on the current windows in a background worker."""
        if self._fit_worker is not None or self.state.model is None or self.state.dataset is None:
            return
        worker = self.workers.create(
            fit_job,
            model_snapshot(self.state.model),
            self.state.dataset,
            GUI_MAX_WINDOWS,
            prediction.DEFAULT_FOLDS,
            True,
            on_yielded=self._on_fit_progress,
            on_returned=self._on_fit_returned,
            on_errored=self._on_fit_errored,
            on_finished=self._on_fit_finished,
        )
        self._fit_worker = worker
        self.status_label.setText("measuring windows …")
        self._update_enabled()
        worker.start()

    @property
    def fitting(self) -> bool:
        return self._fit_worker is not None

    def _on_fit_progress(self, step: prediction.PredictionProgress) -> None:
        what = "measuring windows" if step.stage == "metrics" else "cross-validating"
        self.status_label.setText(f"{what}: {step.done}/{step.total}")

    def _on_fit_returned(self, report: prediction.PredictionReport | None) -> None:
        if report is None or self.workers.closed:
            return
        self.set_predictor(report.predictor, report.to_dict())

    def _on_fit_errored(self, exc: Exception) -> None:
        self.status_label.setText(f"error: {exc}")

    def _on_fit_finished(self) -> None:  # not called after shutdown (WorkerSet)
        self._fit_worker = None
        self._update_enabled()

    # ---------------------------------------------------------------------------- measuring
    def _schedule_measure(self) -> None:
        if self._labels is not None and self.predictor is not None and not self.workers.closed:
            self._measure_timer.start()

    def _start_measure(self) -> None:
        if self._labels is None or self.predictor is None or self.workers.closed:
            return
        if self._measure_worker is not None:
            self._measure_pending = True  # latest wins: measured again when this one returns
            return
        labels, voxel = self._labels
        names = [
            n
            for n in self.predictor.names
            if not metric_registry.get(n).costly or self.tau_check.isChecked()
        ]
        worker = self.workers.create(
            measure_job,
            labels.copy(),
            voxel,
            names,
            on_returned=self._on_measured,
            on_errored=self._on_fit_errored,
            on_finished=self._on_measure_finished,
        )
        self._measure_worker = worker
        worker.start()

    def _on_measured(self, values: dict) -> None:
        if self.workers.closed:
            return
        self._measured = dict(values)
        self._render()

    def _on_measure_finished(self) -> None:
        self._measure_worker = None
        if self._measure_pending:
            self._measure_pending = False
            self._start_measure()

    @property
    def idle(self) -> bool:
        """True when no fit or measurement is running or waiting."""
        return (
            self._fit_worker is None
            and self._measure_worker is None
            and not self._measure_timer.isActive()
            and not self._measure_pending
        )

    # ------------------------------------------------------------------------------ cleanup
    def shutdown(self) -> None:
        """Stop the workers, wait for them, disconnect from the state."""
        self._measure_timer.stop()
        self.workers.stop(owner="prediction view")
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._connections = []
