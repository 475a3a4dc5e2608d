"""Design tab: state physics targets, search the latent space, get measured candidates.

Targets are rows of (metric, =/≤/≥, value, ± tolerance) over the metrics registry
(:mod:`napari_electrode_cae.core.metrics`), with an optional objective (maximise or minimise
one metric). Run starts :func:`napari_electrode_cae.core.design.iter_design` in a background
worker (fitting the run's regressors first when there are none yet, or when they lack a
targeted metric), with a progress bar; Stop ends it after the current step.

The ranked gallery shows each candidate's middle slice, whether its *measured* metrics meet
every target (PASS/fail) and measured vs target per metric. Clicking a candidate loads its
latent vector into the Latents tab's sliders, which decode it into the decoded layer (or, with
no Latents tab, shows it as its own layer). "Export…" writes the candidate as a phase TIFF
(read back exactly by the plugin's reader) plus its latent vector as ``<name>_latent.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QBrush, QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core import DEFAULT_VOXEL_SIZE_UM, ElectrodeCAEError, prediction
from ..core import design as core_design
from ..core import metrics as metric_registry
from .live_decoder import model_snapshot
from .panel_base import Panel
from .scrolling import fill_with_scrolling

if TYPE_CHECKING:
    import napari

    from .latent_panel import LatentPanel
    from .state import CAEState

#: Layer that shows a candidate when there is no Latents tab to decode it.
CANDIDATE_LAYER = "designed candidate"
OPERATORS = (("=", "equal"), ("≤", "at_most"), ("≥", "at_least"))
#: Thumbnail colours of pore, CBD, active (RGB).
PHASE_COLOURS = np.array([[20, 20, 30], [230, 140, 40], [150, 170, 200]], dtype=np.uint8)
THUMBNAIL = 56


def design_job(
    model,
    dataset,
    predictor,
    targets,
    options: dict,
    needs_costly: bool,
):
    """Worker generator: (fit the regressors,) design; returns (fit report or None, result)."""
    report = None
    if predictor is None:
        report = yield from prediction.iter_fit_prediction(
            model, dataset, max_windows=options.pop("max_windows"), tortuosity=needs_costly
        )
        predictor = report.predictor
    else:
        options.pop("max_windows")
    result = yield from core_design.iter_design(model, predictor, targets, **options)
    return report, result


def thumbnail(labels: np.ndarray, size: int = THUMBNAIL) -> QPixmap:
    """The middle Z slice of a (Z, Y, X) phase volume as a coloured pixmap."""
    plane = np.ascontiguousarray(PHASE_COLOURS[np.clip(labels[labels.shape[0] // 2], 0, 2)])
    h, w = plane.shape[:2]
    image = QImage(plane.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(image).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation
    )


def _metric_combo(items) -> QComboBox:
    """A combo box of (label, metric name) items that fits a narrow dock: its width does not
    follow its longest label (the open list still shows the labels whole)."""
    combo = QComboBox()
    for label, name in items:
        combo.addItem(label, name)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    return combo


class TargetRow(QWidget):
    """One target: metric, operator, value and (for =) tolerance, with a remove button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.metric_combo = _metric_combo(
            (m.label + (f" ({m.unit})" if m.unit else ""), m.name)
            for m in metric_registry.metrics_for_axis(0)
        )
        self.op_combo = QComboBox()
        for text, kind in OPERATORS:
            self.op_combo.addItem(text, kind)
        self.value_spin = QDoubleSpinBox()
        self.value_spin.setDecimals(4)
        self.value_spin.setRange(-1e6, 1e6)
        self.value_spin.setSingleStep(0.01)
        self.tol_spin = QDoubleSpinBox()
        self.tol_spin.setDecimals(4)
        self.tol_spin.setRange(0.0, 1e6)
        self.tol_spin.setSingleStep(0.005)
        self.tol_spin.setPrefix("± ")
        for spin in (self.value_spin, self.tol_spin):
            spin.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
            spin.setMinimumWidth(72)
        self.remove_button = QPushButton("✕")
        self.remove_button.setFixedWidth(28)
        self.remove_button.setToolTip("remove this target")
        self.op_combo.currentIndexChanged.connect(self._on_op_changed)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.metric_combo, 2)
        layout.addWidget(self.op_combo)
        layout.addWidget(self.value_spin, 1)
        layout.addWidget(self.tol_spin, 1)
        layout.addWidget(self.remove_button)

    def _on_op_changed(self, _index: int) -> None:
        self.tol_spin.setEnabled(self.op_combo.currentData() == "equal")

    def set(self, metric: str, kind: str, value: float, tolerance: float = 0.0) -> None:
        self.metric_combo.setCurrentIndex(self.metric_combo.findData(metric))
        self.op_combo.setCurrentIndex(self.op_combo.findData(kind))
        self.value_spin.setValue(value)
        self.tol_spin.setValue(tolerance)

    def target(self) -> core_design.Target:
        kind = self.op_combo.currentData()
        return core_design.Target(
            self.metric_combo.currentData(),
            kind,
            self.value_spin.value(),
            self.tol_spin.value() if kind == "equal" else 0.0,
        )


class DesignPanel(Panel):
    """Targets, Run/Stop, ranked candidates (see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer
        Where a candidate is shown when there is no Latents tab.
    state : CAEState
        The plugin's shared state (model, dataset).
    latent_panel : LatentPanel, optional
        The Latents tab: its sliders load a clicked candidate, its prediction view shares the
        regressors.

    Attributes
    ----------
    result : DesignResult or None
        The last finished design.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        state: CAEState,
        latent_panel: LatentPanel | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(viewer, state, parent)
        self.latent_panel = latent_panel
        self.result: core_design.DesignResult | None = None
        self._worker = None
        self.target_rows: list[TargetRow] = []
        self._build_ui()
        self.add_target("pore_fraction", "equal", 0.40, 0.01)
        self.connect_events(
            (state.events.model, self._on_model_changed),  # a run opened
            (state.events.model_version, self._on_model_changed),  # new weights trained
            (state.events.dataset, self._update_buttons),
        )
        self._update_buttons()

    # ----------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        content = QWidget()
        self.intro_label = QLabel(
            "State targets on the physics metrics; candidates are searched on the run's "
            "regressors, then decoded and <b>measured</b> — only measured values pass."
        )
        self.intro_label.setWordWrap(True)
        self.targets_box = QVBoxLayout()
        self.add_button = QPushButton("Add target")
        self.add_button.clicked.connect(lambda: self.add_target())
        self.objective_combo = QComboBox()
        self.objective_combo.addItems(["no objective", "maximise", "minimise"])
        self.objective_metric = _metric_combo(
            (m.label, m.name) for m in metric_registry.metrics_for_axis(0)
        )
        self.objective_metric.setCurrentIndex(self.objective_metric.findData("ssa_active_per_um"))
        objective = QHBoxLayout()
        objective.addWidget(self.objective_combo)
        objective.addWidget(self.objective_metric, 1)
        self.candidates_spin = QSpinBox()
        self.candidates_spin.setRange(1, 20)
        self.candidates_spin.setValue(5)
        form = QFormLayout()
        form.addRow("Objective", objective)
        form.addRow("Candidates", self.candidates_spin)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip(
            "the selected candidate as a phase TIFF plus its latent vector (<name>_latent.csv)"
        )
        self.export_button.clicked.connect(self._on_export_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.export_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.gallery = QTableWidget(0, 3)
        self.gallery.setHorizontalHeaderLabels(["#", "Verdict", "Measured vs target"])
        self.gallery.verticalHeader().setVisible(False)
        self.gallery.horizontalHeader().setStretchLastSection(True)
        self.gallery.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.gallery.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.gallery.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.gallery.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.gallery.setMinimumHeight(260)
        self.gallery.cellClicked.connect(lambda row, _col: self.load_candidate(row))
        self.binding_label = QLabel("")
        self.binding_label.setWordWrap(True)
        layout = QVBoxLayout(content)
        layout.addWidget(self.intro_label)
        layout.addWidget(QLabel("<b>Targets</b>"))
        layout.addLayout(self.targets_box)
        layout.addWidget(self.add_button)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(QLabel("<b>Candidates</b> (ranked; click one to load it)"))
        layout.addWidget(self.gallery, 1)
        layout.addWidget(self.binding_label)
        fill_with_scrolling(self, content)

    def add_target(
        self,
        metric: str = "pore_fraction",
        kind: str = "equal",
        value: float = 0.40,
        tolerance: float = 0.01,
    ) -> TargetRow:
        """Add a target row (and return it)."""
        row = TargetRow()
        row.set(metric, kind, value, tolerance)
        row.remove_button.clicked.connect(lambda: self.remove_target(row))
        self.targets_box.addWidget(row)
        self.target_rows.append(row)
        return row

    def remove_target(self, row: TargetRow) -> None:
        if row in self.target_rows:
            self.target_rows.remove(row)
            self.targets_box.removeWidget(row)
            row.deleteLater()

    def _objective(self) -> dict:
        choice = self.objective_combo.currentIndex()
        name = self.objective_metric.currentData()
        return {} if choice == 0 else ({"maximize": name} if choice == 1 else {"minimize": name})

    def _update_buttons(self, _event: Any = None) -> None:
        running = self._worker is not None
        ready = (
            self.state.model is not None
            and self.state.dataset is not None
            and self.state.model_matches_dataset()
        )
        self.run_button.setEnabled(ready and not running)
        self.stop_button.setEnabled(running)
        self.export_button.setEnabled(
            self.result is not None and bool(self.result.candidates) and not running
        )
        if not ready and not running:
            self.status_label.setText("train a model or open a run (with its windows) first")
        elif self.status_label.text().startswith("train a model"):
            self.status_label.setText("")

    def _on_model_changed(self, _event: Any = None) -> None:
        self.result = None
        self.gallery.setRowCount(0)
        self.binding_label.setText("")
        self._update_buttons()

    # ------------------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _predictor(self) -> prediction.Predictor | None:
        view = getattr(self.latent_panel, "prediction_view", None)
        return None if view is None else view.predictor

    def run(self) -> None:
        """Start the design worker (errors go to the status label)."""
        if self._worker is not None:
            return
        try:
            targets = [row.target() for row in self.target_rows]
            objective = self._objective()
            if self.state.model is None or self.state.dataset is None:
                raise core_design.DesignError("train a model or open a run first")
            if not targets and not objective:
                raise core_design.DesignError("state at least one target or an objective")
        except ElectrodeCAEError as exc:
            self.status_label.setText(f"error: {exc}")
            return
        used = [t.metric for t in targets] + list(objective.values())
        needs_costly = any(metric_registry.get(n).costly for n in used)
        predictor = self._predictor()
        if predictor is not None and not all(n in predictor.names for n in used):
            predictor = None  # refit with the metrics the targets need
        options = {
            "candidates": self.candidates_spin.value(),
            "voxel_size_um": self.state.dataset.voxel_size_um,
            "max_windows": prediction.DEFAULT_MAX_WINDOWS,
            **objective,
        }
        worker = self.workers.create(
            design_job,
            model_snapshot(self.state.model),
            self.state.dataset,
            predictor,
            targets,
            options,
            needs_costly,
            on_yielded=self._on_progress,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=self._on_finished,
        )
        worker.aborted.connect(lambda: self.status_label.setText("stopped; nothing changed"))
        self._worker = worker
        self._model_at_start = self.state.model
        self.status_label.setText(
            "fitting the regressors first …" if predictor is None else "searching …"
        )
        self._update_buttons()
        worker.start()

    def stop(self) -> None:
        """Ask the worker to stop after the current step."""
        if self._worker is not None:
            self._worker.quit()
            self.status_label.setText("stopping after the current step …")

    def _on_progress(self, step) -> None:
        self.progress_bar.setRange(0, max(1, step.total))
        self.progress_bar.setValue(step.done)
        if isinstance(step, prediction.PredictionProgress):
            what = "measuring windows" if step.stage == "metrics" else "cross-validating"
            self.status_label.setText(f"regressors: {what} {step.done}/{step.total}")
        else:
            self.status_label.setText(f"{step.message} ({step.done}/{step.total})")

    def _on_returned(self, value) -> None:
        if value is None or self.closed:
            return
        report, result = value
        if self.state.model is not self._model_at_start:
            self.status_label.setText("the model changed meanwhile: run the design again")
            return
        view = getattr(self.latent_panel, "prediction_view", None)
        if report is not None and view is not None:
            view.set_predictor(report.predictor, report.to_dict())
        self.show_result(result)

    def _on_errored(self, exc: Exception) -> None:
        self.status_label.setText(f"error: {exc}")

    def _on_finished(self) -> None:  # not called after shutdown (WorkerSet)
        self._worker = None
        self._update_buttons()

    # ------------------------------------------------------------------------------ gallery
    def show_result(self, result: core_design.DesignResult) -> None:
        """Fill the ranked gallery with ``result``'s candidates."""
        self.result = result
        self.gallery.setRowCount(len(result.candidates))
        for r, c in enumerate(result.candidates):
            rank = QTableWidgetItem(f"{c.rank}")
            rank.setIcon(QIcon(thumbnail(c.labels)))
            self.gallery.setItem(r, 0, rank)
            verdict = QTableWidgetItem("PASS" if c.meets_targets else "fail")
            verdict.setForeground(QBrush(QColor("#3c3" if c.meets_targets else "#e55")))
            self.gallery.setItem(r, 1, verdict)
            lines = []
            for t in result.targets:
                v = c.measured[t.metric]
                lines.append(
                    f"{'✓' if t.met(v) else '✗'} {metric_registry.label(t.metric)}: "
                    f"{metric_registry.format_value(t.metric, v)}"
                )
                lines.append(
                    f"    target {t.describe().split(' ', 1)[1]}, predicted "
                    f"{metric_registry.format_value(t.metric, c.predicted[t.metric])}"
                )
            if result.objective is not None and c.objective is not None:
                sense, name = result.objective
                lines.append(
                    f"{sense}: {metric_registry.label(name)} "
                    f"{metric_registry.format_value(name, c.objective)}"
                )
            self.gallery.setItem(r, 2, QTableWidgetItem("\n".join(lines)))
            self.gallery.setRowHeight(r, max(THUMBNAIL + 6, 17 * len(lines) + 8))
        self.gallery.resizeColumnToContents(0)
        self.gallery.resizeColumnToContents(1)
        self.progress_bar.setValue(self.progress_bar.maximum())
        if result.reached:
            self.status_label.setText(
                f"reached: {sum(c.meets_targets for c in result.candidates)} of "
                f"{len(result.candidates)} candidates meet every target, measured "
                f"({result.seconds:.1f} s)"
            )
            self.binding_label.setText("")
        else:
            self.status_label.setText(
                "NOT reached — nearest measured: "
                + ", ".join(
                    f"{k} {metric_registry.format_value(k, v)}" for k, v in result.nearest.items()
                )
            )
            self.binding_label.setText("\n".join(result.binding))
        self._update_buttons()

    def load_candidate(self, index: int) -> None:
        """Load candidate ``index`` (0-based rank order) into the sliders and decoded layer."""
        if self.result is None or not 0 <= index < len(self.result.candidates):
            return
        candidate = self.result.candidates[index]
        self.gallery.selectRow(index)
        panel = self.latent_panel
        if panel is not None and len(panel.sliders) == len(candidate.latent):
            panel.set_latent_vector(candidate.latent)
        else:
            dataset = self.state.dataset
            voxel = dataset.voxel_size_um if dataset is not None else DEFAULT_VOXEL_SIZE_UM
            _layers.add_phase_labels(self.viewer, candidate.labels.copy(), CANDIDATE_LAYER, voxel)
        self.status_label.setText(f"candidate {candidate.rank} loaded")

    def selected_index(self) -> int:
        rows = self.gallery.selectionModel().selectedRows()
        return rows[0].row() if rows else 0

    def export_candidate(self, index: int, path: str | Path) -> tuple[Path, Path]:
        """Write candidate ``index`` as a phase TIFF and ``<stem>_latent.csv``."""
        if self.result is None or not 0 <= index < len(self.result.candidates):
            raise core_design.DesignError("no candidate to export: run a design first")
        dataset = self.state.dataset
        voxel = dataset.voxel_size_um if dataset is not None else DEFAULT_VOXEL_SIZE_UM
        return core_design.write_candidate(self.result.candidates[index], path, voxel)

    def _on_export_clicked(self) -> None:
        index = self.selected_index()
        path, _ = QFileDialog.getSaveFileName(
            self, "Export candidate", f"candidate_{index + 1:02d}.tif", "TIFF files (*.tif *.tiff)"
        )
        if not path:
            return
        try:
            tif, latent = self.export_candidate(index, path)
        except (ElectrodeCAEError, OSError) as exc:
            self.status_label.setText(f"error: {exc}")
            return
        self.status_label.setText(f"wrote {tif} and {latent.name}")
