"""The Physics tab's correlations, CSV export and pop-out docks.

:class:`PhysicsCorrelations` is the part of :class:`.physics_panel.PhysicsPanel` that measures
many non-overlapping windows in a generator worker (progress in the bar, Stop), runs the
honest correlation study of their metrics and the latent features (Benjamini-Hochberg FDR,
against a random encoder, partial rho given the phase fractions: only surviving pairs are
coloured in the heat map and listed, and the study's note says when nothing survives), writes
both to CSV, and shows the table or the heat map in docks of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
)

from ..core import ElectrodeCAEError
from ..core.analysis import (
    PARTIAL_CONTROLS,
    WindowMetricsProgress,
    independent_windows,
    write_metrics_csv,
    write_study_csv,
)
from ..core.evaluation import format_p
from .physics_jobs import (
    CorrelationResult,
    PhysicsPanelError,
    correlation_job,
)
from .physics_views import CorrelationHeatmap, MetricsTable, format_seconds, short_label
from .results_panel import NO_MODEL_MESSAGE

#: Default cap on the number of (non-overlapping) windows analysed for the correlations.
DEFAULT_MAX_WINDOWS = 200
#: Surviving pairs listed under the heat map.
TOP_SURVIVORS = 8
#: Colour of the study's note when nothing survives (napari's warning orange).
NOTHING_SURVIVES_COLOUR = "#ffb347"
#: The correlation progress bar's text before the first run, and while one runs.
NOT_MEASURED_FORMAT = "no windows measured yet"
PROGRESS_FORMAT = "%v / %m windows"


def survivor_text(j: int, name: str, rho: float, q: float, partial: float) -> str:
    """``"z3 ~ Pore τ: ρ = +0.52, q = 0.0030, partial ρ = +0.31"`` (one surviving pair; the
    partial rho holds the pore and CBD fractions fixed, so the fractions have none)."""
    if np.isfinite(partial):
        given = f"partial ρ = {partial:+.2f}"
    elif name in PARTIAL_CONTROLS or name == "active_fraction":
        given = "a phase fraction: no partial ρ"
    else:
        given = "partial ρ n/a"
    q_text = format_p(q)
    return (
        f"z{j + 1} ~ {short_label(name)}: ρ = {rho:+.2f}, "
        f"q {'' if q_text.startswith('<') else '= '}{q_text}, {given}"
    )


class PhysicsCorrelations:
    """Correlations, export and docks of the Physics tab (a mixin of ``PhysicsPanel``)."""

    # ------------------------------------------------------------------------- correlations
    def _latents_for(self, indices: np.ndarray, quiet: bool = False) -> np.ndarray | None:
        latents, dataset = self.state.latents, self.state.dataset
        problem = ""
        if self.state.model is None:
            problem = NO_MODEL_MESSAGE
        elif latents is None or dataset is None:
            problem = f"no encoded windows: {NO_MODEL_MESSAGE}"
        elif latents.ndim != 2 or len(latents) != len(dataset):
            problem = (
                f"the latents cover {len(latents)} windows but the current windows are "
                f"{len(dataset)}; retrain or reopen the run"
            )
        if problem:
            if not quiet:
                raise PhysicsPanelError(problem)
            return None
        return np.asarray(latents)[np.asarray(indices, dtype=np.int64)]

    def compute_correlations(self) -> None:
        """Start the metrics-and-correlations worker (errors go to the status label)."""
        if self._corr_worker is not None:
            return
        try:
            self._start_correlations()
        except ElectrodeCAEError as exc:
            self._report_error(exc)

    def _start_correlations(self) -> None:
        dataset = self.state.dataset
        if self.state.model is None or dataset is None:
            raise PhysicsPanelError(
                NO_MODEL_MESSAGE
                if self.state.model is None
                else f"no windows: {self.state.window_error}"
            )
        # only windows that share no voxel: overlapping ones are near copies of each other and
        # would make every p-value far too small
        indices = independent_windows(
            dataset, max_windows=self.max_windows_spin.value(), seed=self.state.seed
        )
        if len(indices) < 3:
            raise PhysicsPanelError(
                f"correlations need at least 3 non-overlapping windows, there are "
                f"{len(indices)} of {len(dataset)}: use more or larger stacks, or shorter "
                "windows"
            )
        latents = self._latents_for(indices)
        split = self.state.split
        splits = {}
        if split is not None:
            splits.update({int(i): "train" for i in split.train})
            splits.update({int(i): "val" for i in split.val})
        with_tau = self.corr_tau_check.isChecked()
        worker = self.workers.create(
            correlation_job,
            self._corr_guard,
            dataset,
            indices,
            latents,
            with_tau,
            splits,
            self.state.model,
            self.state.seed,
            on_yielded=self._on_corr_progress,
            on_returned=self._on_corr_returned,
            on_errored=self._on_corr_errored,
        )
        worker.aborted.connect(self._on_corr_aborted)
        worker.finished.connect(self._on_corr_finished)  # after shutdown too: not running
        self._corr_worker = worker
        self._corr_done = 0
        self.progress_bar.setRange(0, len(indices))
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(PROGRESS_FORMAT)
        self.corr_label.setText(
            f"measuring {len(indices)} non-overlapping windows (of {len(dataset)})"
            + (" with tortuosity" if with_tau else "")
            + " …"
        )
        self._update_buttons()
        worker.start()

    def stop_correlations(self) -> None:
        """Ask the correlation worker to stop after the current window."""
        if self._corr_worker is not None:
            self._corr_worker.quit()
            self.corr_label.setText("stopping after the current window …")

    @property
    def correlation_running(self) -> bool:
        """True while a correlation worker exists (started, running or finishing)."""
        return self._corr_worker is not None

    def _on_corr_progress(self, progress: WindowMetricsProgress) -> None:
        self._corr_done = progress.done
        self.progress_bar.setRange(0, progress.total)
        self.progress_bar.setValue(progress.done)

    def _on_corr_returned(self, result: CorrelationResult | None) -> None:
        if result is None:
            return
        if result.dataset is not self.state.dataset:
            self.corr_label.setText("windows changed meanwhile: compute the correlations again")
            return
        self._show_correlation(result)

    def _on_corr_errored(self, exc: Exception) -> None:
        self._report_error(exc)

    def _on_corr_aborted(self) -> None:
        self.corr_label.setText(
            f"stopped after {self._corr_done} of "
            f"{self.progress_bar.maximum()} windows; nothing changed"
        )

    def _on_corr_finished(self) -> None:
        self._corr_worker = None
        self._update_buttons()

    def _show_correlation(self, result: CorrelationResult) -> None:
        self.correlation = result
        self.state.correlation_study = result.study  # the Latents tab's slider names follow
        study = result.study
        for heatmap in self._heatmaps:
            heatmap.set_study(study)
        self.corr_label.setText(
            f"{study.n_windows} non-overlapping windows, {len(result.names)} variables, "
            f"{format_seconds(result.seconds)}"
            + ("" if result.tortuosity else "; tortuosity left out")
        )
        survivors = study.surviving()
        lines = [survivor_text(*entry) for entry in survivors[:TOP_SURVIVORS]]
        if len(survivors) > TOP_SURVIVORS:
            lines.append(f"… and {len(survivors) - TOP_SURVIVORS} more (Export CSV)")
        if lines:
            text = f"<b>Surviving</b> ({study.note})<br>" + "<br>".join(lines)
        else:  # never an empty list in silence
            text = f'<b style="color:{NOTHING_SURVIVES_COLOUR}">{study.note}</b>'
        self.strongest_label.setText(text)
        self.strongest_label.setToolTip(
            "Spearman rho over windows that share no voxel; a pair survives when its "
            f"Benjamini-Hochberg q < {study.alpha:g} and its |rho| beats every one a "
            "never-trained encoder of the same shape reaches with that variable. partial: rho "
            "holding the pore and CBD fractions fixed."
        )
        self._update_buttons()

    def _show_no_count(self) -> None:
        """An empty progress bar that says so ("0 / 1 windows" would read as a count)."""
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(NOT_MEASURED_FORMAT)

    def _clear_correlation(self, message: str) -> None:
        self.correlation = None
        self.state.correlation_study = None
        for heatmap in self._heatmaps:
            heatmap.clear()
        if self._corr_worker is None:  # the old count no longer describes anything shown
            self._show_no_count()
        self.strongest_label.setText("")
        self.corr_label.setText(message)
        self._update_buttons()

    def strongest_texts(self) -> list[str]:
        """The surviving-correlation lines under the heat map (none when nothing survives)."""
        text = self.strongest_label.text()
        if not text.startswith("<b>Surviving</b>"):
            return []
        return [line for line in text.split("<br>")[1:] if line]

    def study_note(self) -> str:
        """The last correlation study's note ("" before any)."""
        return "" if self.correlation is None else self.correlation.study.note

    # ------------------------------------------------------------------------------- export
    def export_metrics(self, path: str | Path) -> tuple[Path, Path]:
        """Write the per-window metrics and the correlations of the last analysis as CSV.

        Parameters
        ----------
        path : str or Path
            The metrics CSV (one row per analysed window); the correlations go next to it as
            ``<stem>_correlations.csv`` (one row per latent feature and variable: rho, p, q,
            partial rho, the random encoder's best |rho| and whether the pair survives, as
            ``electrode-cae physics`` writes).

        Returns
        -------
        (Path, Path)
            The metrics and correlations files.

        Raises
        ------
        PhysicsPanelError
            If no correlations have been computed yet.
        """
        result = self.correlation
        if result is None:
            raise PhysicsPanelError("no per-window metrics yet: press Compute correlations first")
        path = Path(path)
        metrics_path = write_metrics_csv(path, result.rows)
        corr_path = write_study_csv(path.with_name(f"{path.stem}_correlations.csv"), result.study)
        return metrics_path, corr_path

    def _on_export_clicked(self) -> None:
        from napari.utils.notifications import show_info

        path, _ = QFileDialog.getSaveFileName(
            self, "Export metrics", "metrics.csv", "CSV files (*.csv)"
        )
        if not path:
            return
        try:
            metrics_path, corr_path = self.export_metrics(path)
        except (ElectrodeCAEError, OSError) as exc:
            self._report_error(exc)
            return
        message = f"metrics written to {metrics_path} and {corr_path.name}"
        self.corr_label.setText(message)
        show_info(message)

    # ----------------------------------------------------------------------------- docks
    def show_table_dock(self) -> Any:
        """Show a copy of the metrics table in a dock of its own (right of the viewer)."""
        if self._table_dock is not None:
            self._table_dock.show()
            self._table_dock.raise_()
            return self._table_dock
        table = MetricsTable()
        for row in range(table.rowCount()):
            for column in range(table.columnCount()):
                table.set_text(row, column, self.metrics_table.item(row, column).text())
        table.shown.connect(self._on_table_shown)
        self._tables.append(table)
        dock = self.viewer.window.add_dock_widget(table, name="Physics: metrics", area="right")
        self._table_dock = dock
        table.destroyed.connect(lambda *_: self._forget_dock("table"))
        return dock

    def show_heatmap_dock(self) -> Any:
        """Show a large copy of the heat map in a dock of its own, below the viewer."""
        if self._heatmap_dock is not None:
            self._heatmap_dock.show()
            self._heatmap_dock.raise_()
            return self._heatmap_dock
        heatmap = CorrelationHeatmap(min_height=300)
        if self.correlation is not None:
            heatmap.set_study(self.correlation.study)
        self._heatmaps.append(heatmap)
        dock = self.viewer.window.add_dock_widget(
            heatmap, name="Physics: latent correlations", area="bottom"
        )
        self._heatmap_dock = dock
        heatmap.destroyed.connect(lambda *_: self._forget_dock("heatmap"))
        return dock

    def _forget_dock(self, which: str) -> None:
        if which == "table":
            self._tables = [self.metrics_table]
            self._table_dock = None
        else:
            self._heatmaps = [self.heatmap]
            self._heatmap_dock = None
