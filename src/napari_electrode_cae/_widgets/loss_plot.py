"""Live plot of the training and validation MSE per epoch, on pyqtgraph.

pyqtgraph is made for live Qt plots (careamics-napari uses it for the same purpose): its curves
are items of a ``QGraphicsScene``, and a new epoch only hands the curves new arrays. The plot
stays cheap while a stream of epochs arrives:

* :meth:`LossPlot.set_history` only stores the numbers; the curves get them at most once per
  ``redraw_interval_ms`` (a single-shot timer), and Qt repaints with the window's next repaint;
* the axis limits move in 1-2-5 steps (epochs 10, 20, 50, …; MSE 0.1, 0.2, 0.5, …), so the axes
  do not jitter while epochs arrive (pyqtgraph's auto-range would follow every point).

Nothing process-wide is configured (no ``pyqtgraph.setConfigOptions``): colours, antialiasing and
the log axis are options of this widget's own items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ..core import EpochReport

TRAIN_COLOR = "#4c9be8"
VAL_COLOR = "#f28e2b"
BEST_COLOR = "#59c459"
_LADDER = (1.0, 2.0, 5.0)


def ladder_above(value: float) -> float:
    """Smallest number of the form {1, 2, 5} × 10^k that is >= ``value`` (> 0)."""
    exponent = math.floor(math.log10(value))
    for step in (*_LADDER, 10.0):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exponent + 1)


def ladder_below(value: float) -> float:
    """Largest number of the form {1, 2, 5} × 10^k that is <= ``value`` (> 0)."""
    exponent = math.floor(math.log10(value))
    for step in (5.0, 2.0, 1.0):
        candidate = step * 10.0**exponent
        if candidate <= value * (1 + 1e-12):
            return candidate
    return 5.0 * 10.0 ** (exponent - 1)


def plot_limits(
    epochs: np.ndarray, values: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(x limits, y limits) for epochs 1..n and positive MSE ``values``, in 1-2-5 steps."""
    last = float(epochs.max()) if epochs.size else 1.0
    x_limits = (0.5, ladder_above(max(last, 10.0)) + 0.5)
    positive = values[_valid(values)]
    if positive.size == 0:
        return x_limits, (0.01, 1.0)
    low, high = ladder_below(positive.min() / 1.05), ladder_above(positive.max() * 1.05)
    return x_limits, (low, high)


class MSEAxis(pg.AxisItem):
    """Log MSE axis labelled in plain numbers (0.02, 0.05, 0.1).

    Labels at 1, 2 and 5 × 10^k; on an axis that spans less than 30× also at 3 × 10^k, and on
    one that spans less than 3× at every minor tick, so that a few values are always labelled.
    """

    def logTickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph API)
        low, high = sorted(self.range) if self.range is not None else (0.0, 1.0)
        span = high - low  # decades shown
        labelled = (
            _LADDER
            if span > math.log10(30.0)
            else (1.0, 2.0, 3.0, 5.0)
            if span > math.log10(3.0)
            else tuple(float(m) for m in range(1, 10))
        )
        labels = []
        for value in values:
            mantissa = 10.0 ** (value - math.floor(value + 1e-9))
            labels.append(f"{10.0**value:.3g}" if round(mantissa, 3) in labelled else "")
        return labels


class LossPlot(QWidget):
    """Train and validation MSE (log scale) per epoch, with the best-validation epoch marked.

    A star marks the lowest validation MSE and a dotted vertical line its epoch (the weights
    that are kept). Values a log axis cannot show (NaN, inf, zero, negative) are left out and
    break the line.

    Parameters
    ----------
    background, foreground : str
        Colours of the plot and of its axes, ticks and labels (e.g. the napari theme's).
    redraw_interval_ms : int
        Shortest time between two curve updates requested by ``set_history``.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    epochs, train_mse, val_mse : numpy.ndarray
        The history shown (float arrays, one value per epoch; invalid MSEs kept as given).
    best : tuple of (int, float) or None
        (best epoch, best validation MSE) of the last report; None when there is no history.
    redraws : int
        How many times the curves were given new data (for tests and benchmarks).
    plot_widget : pyqtgraph.PlotWidget
        The plot itself.
    """

    def __init__(
        self,
        background: str = "#262930",
        foreground: str = "#f0f1f2",
        redraw_interval_ms: int = 150,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.redraws = 0
        self.epochs = np.zeros(0)
        self.train_mse = np.zeros(0)
        self.val_mse = np.zeros(0)
        self.best: tuple[int, float] | None = None
        self.plot_widget = pg.PlotWidget(background=background, axisItems={"left": MSEAxis("left")})
        item = self.plot_widget.getPlotItem()
        item.setLogMode(x=False, y=True)
        # horizontal grid lines only: pyqtgraph's translucent grid on both axes made a new
        # epoch's repaint ~2x dearer (benchmarks/loss_plot_redraw.py)
        item.showGrid(x=False, y=True, alpha=0.15)
        item.setMouseEnabled(x=False, y=False)  # the axes follow the epochs, not the mouse
        item.setMenuEnabled(False)
        item.hideButtons()
        for name, label in (("bottom", "epoch"), ("left", "MSE")):
            axis = item.getAxis(name)
            axis.setPen(pg.mkPen(foreground))
            axis.setTextPen(pg.mkPen(foreground))
            axis.setLabel(label, color=foreground)
            axis.enableAutoSIPrefix(False)
        legend = item.addLegend(offset=(-8, 8), labelTextColor=foreground)
        legend.setBrush(pg.mkBrush(background))
        self.train_curve = item.plot(
            name="train MSE",
            pen=pg.mkPen(TRAIN_COLOR, width=1.5),
            symbol="o",
            symbolSize=5,
            symbolPen=None,
            symbolBrush=TRAIN_COLOR,
            connect="finite",
            antialias=True,
        )
        self.val_curve = item.plot(
            name="validation MSE",
            pen=pg.mkPen(VAL_COLOR, width=1.5),
            symbol="o",
            symbolSize=5,
            symbolPen=None,
            symbolBrush=VAL_COLOR,
            connect="finite",
            antialias=True,
        )
        self.best_marker = pg.ScatterPlotItem(
            symbol="star",
            size=14,
            pen=pg.mkPen(background, width=0.8),
            brush=pg.mkBrush(BEST_COLOR),
            name="best validation",
            antialias=True,
        )
        item.addItem(self.best_marker)  # named: the legend lists it
        self.best_line = pg.InfiniteLine(
            angle=90, movable=False, pen=pg.mkPen(BEST_COLOR, width=1, style=Qt.PenStyle.DotLine)
        )
        self.best_line.setVisible(False)
        item.addItem(self.best_line, ignoreBounds=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 180)
        self.setToolTip(
            "Mean squared error of the reconstruction per epoch (log scale).\n"
            "Star and dotted line: the epoch with the lowest validation MSE; "
            "its weights are kept."
        )
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(redraw_interval_ms)
        self._redraw_timer.timeout.connect(self._redraw)
        self._redraw()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(400, 240)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(160, 180)

    # ------------------------------------------------------------------------- data

    def set_history(self, history: Sequence[EpochReport]) -> None:
        """Show ``history`` (EpochReports in epoch order); the curves follow shortly after."""
        self.epochs = np.array([r.epoch for r in history], dtype=float)
        self.train_mse = np.array([r.train_mse for r in history], dtype=float)
        self.val_mse = np.array([r.val_mse for r in history], dtype=float)
        self.best = (history[-1].best_epoch, history[-1].best_val_mse) if history else None
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def point_count(self) -> tuple[int, int]:
        """Number of (train, validation) points plotted (finite, positive MSEs)."""
        return int(np.count_nonzero(_valid(self.train_mse))), int(
            np.count_nonzero(_valid(self.val_mse))
        )

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(x limits, y limits) of the axes for the current history."""
        return plot_limits(self.epochs, np.concatenate([self.train_mse, self.val_mse]))

    def redraw_pending(self) -> bool:
        """True while a curve update requested by ``set_history`` waits for its timer."""
        return self._redraw_timer.isActive()

    def stop(self) -> None:
        """Cancel a pending curve update (before the widget goes away)."""
        self._redraw_timer.stop()

    def _redraw(self) -> None:
        """Hand the curves the stored history and set the 1-2-5 axis limits."""
        self.redraws += 1
        for curve, values in ((self.train_curve, self.train_mse), (self.val_curve, self.val_mse)):
            shown = np.where(_valid(values), values, np.nan)
            if np.isfinite(shown).any():
                curve.setData(self.epochs, shown)
            else:
                curve.setData([], [])
        best_shown = False
        if self.best is not None:
            best_epoch, best_val = self.best
            if math.isfinite(best_epoch) and best_epoch >= 1:
                self.best_line.setValue(float(best_epoch))
                best_shown = True
                if _valid(np.array([best_val]))[0]:
                    # the scatter item is not transformed by the log axis: log10 by hand
                    self.best_marker.setData([float(best_epoch)], [math.log10(best_val)])
                else:
                    self.best_marker.setData([], [])
        if not best_shown:
            self.best_marker.setData([], [])
        self.best_line.setVisible(best_shown)
        (x_low, x_high), (y_low, y_high) = self.limits()
        item = self.plot_widget.getPlotItem()
        item.setXRange(x_low, x_high, padding=0)
        # a little room, so that the labels of the limits (0.02, 0.5) are drawn too
        item.setYRange(math.log10(y_low), math.log10(y_high), padding=0.03)


def _valid(values: np.ndarray) -> np.ndarray:
    """Mask of the values a log axis can show (finite and > 0)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values > 0)
