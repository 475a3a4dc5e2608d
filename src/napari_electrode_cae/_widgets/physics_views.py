"""The Physics tab's views: the metrics table and the latent-metric correlation heat map."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import metrics as metric_registry

#: Metric key, row label and kind ("pct", "num" or "tau") of the metrics table, in order: the
#: metrics registry's (core.metrics), so a metric added there shows up here.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = tuple(
    (
        m.name,
        m.short_label + (f" ({m.unit})" if m.unit else ""),
        "tau" if m.costly else "pct" if m.is_fraction else "num",
    )
    for m in metric_registry.metrics_for_axis(0)
)
TIME_ROW_LABEL = "Compute time"
#: Table columns.
COLUMNS: tuple[str, ...] = ("Original", "Reconstruction", "Decoded (slider)")
#: Their titles in the table header (short, to fit a narrow dock).
COLUMN_TITLES: tuple[str, ...] = ("Original", "Recon.", "Decoded")
ORIGINAL, RECONSTRUCTION, DECODED = range(3)
#: |rho| from which a heat-map cell is annotated with its value.
ANNOTATE_ABS_RHO = 0.5
BACKGROUND = "#262930"
FOREGROUND = "#f0f1f2"


def short_label(name: str) -> str:
    """The registry's short label of a metric column (the name itself if it has none)."""
    try:
        return metric_registry.get(name).short_label
    except metric_registry.MetricError:
        return name


def format_metric(value: float | None, kind: str) -> str:
    """Table text of one metric value (percent, number or tortuosity factor)."""
    if value is None:
        return "–"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if kind == "tau":
        return "∞ (no path)" if math.isinf(value) else f"{value:.3f}"
    if kind == "pct":
        return f"{value:.1%}"
    return f"{value:.4g}"


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1.0 else f"{seconds:.2f} s"


def _item(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
    return item


class MetricsTable(QTableWidget):
    shown = Signal()

    """Read-only metrics table: :data:`METRIC_ROWS` plus a compute-time row, 3 columns.

    Always as tall as its rows (no vertical scroll bar); short column titles (the full names of
    :data:`COLUMNS` are their tooltips) so that it fits a ~400 px dock.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        labels = [label for _, label, _ in METRIC_ROWS] + [TIME_ROW_LABEL]
        super().__init__(len(labels), len(COLUMNS), parent)
        for column, (title, full) in enumerate(zip(COLUMN_TITLES, COLUMNS)):
            header = QTableWidgetItem(title)
            header.setToolTip(full)
            self.setHorizontalHeaderItem(column, header)
        self.setVerticalHeaderLabels(labels)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.horizontalHeader().setMinimumSectionSize(40)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setWordWrap(False)
        for row in range(self.rowCount()):
            for column in range(self.columnCount()):
                self.setItem(row, column, _item("–"))
        self.fit_height()

    def fit_height(self) -> None:
        """Make the table exactly as tall as its header and rows."""
        header = self.horizontalHeader()
        height = max(header.height(), header.sizeHint().height()) + 2 * self.frameWidth()
        height += self.verticalHeader().length()
        if height != self.height() or self.minimumHeight() != height:
            self.setFixedHeight(height)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.fit_height()  # the theme's style sheet may have changed the row heights
        self.shown.emit()

    def set_text(self, row: int, column: int, text: str) -> None:
        item = self.item(row, column)
        if item.text() != text:
            item.setText(text)
            item.setToolTip(text.replace("\n", " + ") if row == self.rowCount() - 1 else "")
            if row == self.rowCount() - 1:
                self.fit_height()  # the time row has one or two lines

    def column_texts(self, column: int) -> list[str]:
        return [self.item(r, column).text() for r in range(self.rowCount())]


class CorrelationHeatmap(QWidget):
    """Latent features (rows) × variables (columns) Spearman rho, diverging colours −1..1.

    With a :class:`~napari_electrode_cae.core.analysis.CorrelationStudy` (:meth:`set_study`)
    only the pairs that survive are coloured and annotated; the others are grey, and the title
    says how many survive (or that none does). Cells with |rho| ≥ :data:`ANNOTATE_ABS_RHO` are
    annotated with their value; NaN cells (constant variable, e.g. one tag only) are grey.

    Attributes
    ----------
    data : numpy.ndarray or None
        (k, m) rho currently coloured (NaN where masked: not surviving or undefined).
    survives : numpy.ndarray or None
        (k, m) bool mask of the study shown (None for plain rho).
    """

    def __init__(self, min_height: int = 240, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data: np.ndarray | None = None
        self.survives: np.ndarray | None = None
        self.names: list[str] = []
        self.figure = Figure(figsize=(4.0, 3.0), dpi=90, facecolor=BACKGROUND, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(min_height)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._draw_empty()

    def _draw(self) -> None:
        """Draw now: rare (once per analysis), and a deferred draw could outlive the canvas."""
        self.canvas.draw()

    def _draw_empty(self) -> None:
        self.figure.clear()
        self.figure.text(
            0.5,
            0.5,
            "no correlations yet",
            ha="center",
            va="center",
            color=FOREGROUND,
            fontsize=9,
            alpha=0.6,
        )
        self._draw()

    def clear(self) -> None:
        self.data, self.survives, self.names = None, None, []
        self._draw_empty()

    def set_study(self, study) -> None:
        """Draw a correlation study: surviving pairs coloured, the others grey."""
        survives = np.asarray(study.survives, dtype=bool)
        count, defined = int(survives.sum()), int(np.isfinite(study.rho).sum())
        if count:
            title = (
                f"{count} of {defined} pairs survive (FDR {study.alpha:g}, vs random encoder, "
                f"{study.n_windows} windows); grey: not significant"
            )
        else:
            title = (
                f"nothing survives over {study.n_windows} non-overlapping windows "
                f"(FDR {study.alpha:g}, vs random encoder): all cells masked"
            )
        self.set_correlations(study.names, study.rho, survives=survives, title=title)

    def set_correlations(
        self,
        names: list[str],
        rho: np.ndarray,
        survives: np.ndarray | None = None,
        title: str = "",
    ) -> None:
        """Draw (k, m) ``rho`` for the m variables ``names``; with ``survives`` only those cells
        are coloured (the others grey), ``title`` above."""
        rho = np.asarray(rho, dtype=float)
        if survives is not None:
            rho = np.where(survives, rho, np.nan)
        self.data, self.names = rho, list(names)
        self.survives = None if survives is None else np.asarray(survives, dtype=bool)
        k, m = rho.shape
        fig = self.figure
        fig.clear()
        ax = fig.add_subplot()
        if title:
            ax.set_title(title, fontsize=7, color=FOREGROUND, wrap=True)
        ax.set_facecolor(BACKGROUND)
        from matplotlib import colormaps

        cmap = colormaps["RdBu_r"].with_extremes(bad="#55585f")
        image = ax.imshow(
            np.ma.masked_invalid(rho),
            cmap=cmap,
            vmin=-1.0,
            vmax=1.0,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xticks(range(m))
        ax.set_xticklabels(
            [short_label(n) for n in names],
            rotation=55,
            ha="right",
            rotation_mode="anchor",
            fontsize=7,
            color=FOREGROUND,
        )
        ax.set_yticks(range(k))
        ax.set_yticklabels([f"z{j + 1}" for j in range(k)], fontsize=7, color=FOREGROUND)
        ax.tick_params(colors=FOREGROUND, length=2)
        for spine in ax.spines.values():
            spine.set_color(FOREGROUND)
        font = 7 if m <= 14 and k <= 12 else 5
        for j in range(k):
            for c in range(m):
                value = rho[j, c]
                if np.isfinite(value) and abs(value) >= ANNOTATE_ABS_RHO:
                    ax.text(
                        c,
                        j,
                        f"{value:.2f}".replace("0.", "."),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if abs(value) > 0.75 else "black",
                    )
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, aspect=25)
        bar.set_ticks([-1, -0.5, 0, 0.5, 1])
        bar.ax.tick_params(labelsize=6, colors=FOREGROUND, length=2)
        bar.outline.set_edgecolor(FOREGROUND)
        bar.set_label("Spearman ρ", fontsize=7, color=FOREGROUND)
        self._draw()
