"""The Results panel's statistics tables: phases of all validation windows, the paper's MSE
statistics (Tables 6 and 8) and the shown window's comparison (Table 7), as rows of text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..core.evaluation import PhaseEvaluation, WindowComparison, format_p

if TYPE_CHECKING:
    from .results_view import WindowResult
    from .state import CAEState

#: Banner styles of an unhealthy model: collapsed to the mean (orange) and diverged (red).
BANNER_STYLES = {
    "collapsed": "background-color: #f0a030; color: #1a1a1a; padding: 6px; border-radius: 3px;",
    "diverged": "background-color: #c8372d; color: #ffffff; padding: 6px; border-radius: 3px;",
}
#: Phase names as the tables show them.
PHASE_LABELS = (("pore", "Pore"), ("cbd", "CBD"), ("active", "Active"))


def _item(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
    return item


class StatisticsTable(QTableWidget):
    """A read-only table of labelled rows with value columns (a single value spans them all)."""

    def __init__(self, columns: tuple[str, ...], parent: QWidget | None = None) -> None:
        super().__init__(0, len(columns), parent)
        self.setHorizontalHeaderLabels(list(columns))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setWordWrap(False)

    def set_rows(self, rows: list[tuple[str, str | tuple[str, ...]]]) -> None:
        """Show ``(label, value)`` or ``(label, (one value per column))`` rows."""
        self.clearSpans()
        self.setRowCount(len(rows))
        self.setVerticalHeaderLabels([label for label, _ in rows])
        columns = self.columnCount()
        for row, (_, value) in enumerate(rows):
            if isinstance(value, tuple):
                for column in range(columns):
                    self.setItem(row, column, _item(value[column] if column < len(value) else ""))
            else:
                self.setItem(row, 0, _item(value))
                for column in range(1, columns):
                    self.setItem(row, column, _item(""))
                self.setSpan(row, 0, 1, columns)
        height = self.horizontalHeader().height() + 2 * self.frameWidth()
        height += sum(self.rowHeight(r) for r in range(self.rowCount()))
        self.setFixedHeight(height)

    def texts(self) -> list[str]:
        """Every row label and cell text (for tests and copying)."""
        out = []
        for row in range(self.rowCount()):
            out.append(self.verticalHeaderItem(row).text())
            for column in range(self.columnCount()):
                item = self.item(row, column)
                if item is not None and item.text():
                    out.append(item.text())
        return out


def mse_rows(state: CAEState) -> list[tuple[str, Any]]:
    """Rows of the set-level table from ``state.report`` (Table 6 of the paper)."""
    report = state.report
    if report is None:
        return [("Evaluation", "no evaluation report yet")]
    m = report.mse
    rows: list[tuple[str, Any]] = [
        ("Windows", (str(m.n_train), str(m.n_val))),
        (
            "MSE mean ± std",
            (f"{m.train_mean:.4f} ± {m.train_std:.4f}", f"{m.val_mean:.4f} ± {m.val_std:.4f}"),
        ),
        ("Welch p-value", format_p(m.p_value)),
        ("Table 7 window", f"{report.window.window} (seeded random validation window)"),
    ]
    return rows


def _percent(value: float) -> str:
    return f"{value:.1%}" if np.isfinite(value) else "–"


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "–"


def phase_rows(p: PhaseEvaluation) -> list[tuple[str, Any]]:
    """Rows of the phases table: per phase original %, reconstruction %, IoU; then voxel
    accuracy, NMSE and spread, and the TPB density of original and reconstruction."""
    original = p.phase_fractions["original"]
    reconstruction = p.phase_fractions["reconstruction"]
    rows: list[tuple[str, Any]] = [
        (
            label,
            (
                _percent(original[phase]),
                _percent(reconstruction[phase]),
                _number(p.phase_iou[phase], 2),
            ),
        )
        for phase, label in PHASE_LABELS
    ]
    tpb = p.tpb_density_per_um2
    rows += [
        ("Voxel accuracy", _percent(p.voxel_accuracy)),
        ("NMSE", _number(p.val_nmse, 3)),
        ("Spread", _percent(p.spread)),
        ("TPB (µm⁻²)", (_number(tpb["original"], 4), _number(tpb["reconstruction"], 4), "")),
    ]
    return rows


def phases_title(p: PhaseEvaluation) -> str:
    """Title of the phases table: how many windows and which phase rule."""
    return f"<b>Phases</b> (all {p.windows:,} validation windows, {p.rule})"


def health_banner_text(p: PhaseEvaluation) -> str:
    """The warning of an unhealthy model ("" for a healthy one)."""
    if p.health == "ok":
        return ""
    text = f"<b>Warning: {p.message}.</b>"
    if p.advice:
        text += f" Advice: {p.advice}."
    if p.health == "collapsed":
        text += " These reconstructions are not a result."
    else:
        text += " These weights are not a trained model."
    return text


def comparison_rows(c: WindowComparison) -> list[tuple[str, Any]]:
    """Rows of the window table: Table 7 (mean ± std, p-value) plus phase checks."""
    rows: list[tuple[str, Any]] = [
        (
            "Mean ± std",
            (
                f"{c.original_mean:.3f} ± {c.original_std:.3f}",
                f"{c.reconstruction_mean:.3f} ± {c.reconstruction_std:.3f}",
            ),
        ),
        ("p-value", format_p(c.p_value)),
        ("Voxel accuracy", f"{c.voxel_accuracy:.1%}"),
    ]
    for phase, label in (("pore", "Pore"), ("cbd", "CBD"), ("active", "Active")):
        rows.append(
            (
                f"{label} fraction",
                (f"{c.original_fractions[phase]:.1%}", f"{c.reconstruction_fractions[phase]:.1%}"),
            )
        )
    return rows


class ReportTables:
    """The statistics part of the Results panel (a mixin of
    :class:`.results_panel.ResultsPanel`): the report's tables, the health banner and the shown
    window's comparison."""

    def statistics_texts(self) -> list[str]:
        """All texts of the statistics tables (row labels and cells)."""
        return self.phases_table.texts() + self.mse_table.texts() + self.window_table.texts()

    @property
    def health_warning(self) -> str:
        """The warning banner's text ("" when none is shown)."""
        return self.health_banner.text() if not self.health_banner.isHidden() else ""

    def _on_report_changed(self, _event: Any = None) -> None:
        self.mse_table.set_rows(mse_rows(self.state))
        report = self.state.report
        phases = report.phases if report is not None else None
        if phases is not None:
            self.phases_title.setText(phases_title(phases))
            self.phases_table.set_rows(phase_rows(phases))
        banner = health_banner_text(phases) if phases is not None else ""
        self.health_banner.setText(banner)
        if banner:
            self.health_banner.setStyleSheet(
                BANNER_STYLES.get(phases.health, BANNER_STYLES["diverged"])
            )
        self._update_report_visibility()

    def _update_report_visibility(self) -> None:
        """The banner follows the report; the tables are shown when a window can be."""
        problem = self._problem()
        report = self.state.report
        has_phases = report is not None and report.phases is not None
        self.health_banner.setVisible(bool(self.health_banner.text()))
        for widget in (self.phases_title, self.phases_table):
            widget.setVisible(has_phases and not problem)
        for widget in (self.mse_title, self.mse_table):
            widget.setVisible(not problem)

    def _show_comparison(self, result: WindowResult) -> None:
        c = result.comparison
        split = self.state.split
        side = split.side(result.index) if split is not None else ""
        side_text = {"val": "validation", "train": "training", "unused": "unused"}.get(side, "")
        stack_index, z, y, x = c.origin
        stack = result.dataset.stacks[stack_index]
        self.window_title.setText(f"<b>Window {result.index}</b> ({side_text})".replace(" ()", ""))
        self.window_label.setText(
            f"stack {stack.name or stack_index} [{stack.tag}] at z {z}, y {y}, x {x}; "
            f"{c.n_voxels:,} voxels"
        )
        self.window_table.set_rows(comparison_rows(c))
