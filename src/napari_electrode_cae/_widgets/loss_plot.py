"""Live plot of the training and validation MSE per epoch (matplotlib in a Qt widget).

Kept cheap so that a stream of epochs never stalls the GUI:

* line data are updated at once, the canvas at most once per ``redraw_interval_ms``;
* the legend is a Qt label, not part of the figure;
* the axis limits move in 1-2-5 steps (epochs 10, 20, 50, …; MSE 0.1, 0.2, 0.5, …), so they
  rarely change; while they stay put only the lines are redrawn onto a cached background
  (blitting, a few ms) instead of a full figure draw (ticks, labels, legend: 50-100 ms on a
  busy 2-core CPU);
* the blitted image reaches the screen with the window's next ordinary repaint
  (``canvas.update()``), not with matplotlib's ``blit``, which repaints at once, inside the
  slot (with software OpenGL a repaint of the napari window costs 10-30 ms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

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


def plot_limits(epochs: np.ndarray, values: np.ndarray) -> tuple[tuple[float, float],
                                                                  tuple[float, float]]:
    """(x limits, y limits) for epochs 1..n and positive MSE ``values``, in 1-2-5 steps."""
    last = float(epochs.max()) if epochs.size else 1.0
    x_limits = (0.5, ladder_above(max(last, 10.0)) + 0.5)
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return x_limits, (0.01, 1.0)
    low, high = ladder_below(positive.min() / 1.05), ladder_above(positive.max() * 1.05)
    return x_limits, (low, high)


def _format_mse(value: float, _position: int | None = None) -> str:
    return f"{value:.3g}"


def _format_minor_mse(value: float, _position: int | None = None) -> str:
    mantissa = round(value / 10.0 ** math.floor(math.log10(value) + 1e-9), 6)
    return f"{value:.3g}" if mantissa in (2.0, 3.0, 5.0) else ""


class LossPlot(QWidget):
    """Train and validation MSE (log scale) per epoch, with the best-validation epoch marked.

    Parameters
    ----------
    background, foreground : str
        Colours of the figure and of its axes, ticks and labels (e.g. the napari theme's).
    redraw_interval_ms : int
        Shortest time between two redraws of the canvas.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    train_line, val_line : matplotlib.lines.Line2D
        Training / validation MSE against the epoch number (1-based).
    best_marker : matplotlib.lines.Line2D
        One point at (best epoch, best validation MSE); empty when there is no history.
    full_draws, blits : int
        How many full figure draws and line-only redraws happened (for benchmarks).
    """

    def __init__(
        self,
        background: str = "#262930",
        foreground: str = "#f0f1f2",
        redraw_interval_ms: int = 150,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.full_draws = 0
        self.blits = 0
        self.figure = Figure(figsize=(4.0, 2.4), dpi=90, facecolor=background)
        self.figure.subplots_adjust(left=0.17, right=0.97, top=0.95, bottom=0.2)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(180)
        self.axes = self.figure.add_subplot()
        self._style_axes(background, foreground)
        plot = self.axes.plot
        (self.train_line,) = plot([], [], "-", color=TRAIN_COLOR, lw=1.5, marker=".", ms=4,
                                  label="train", animated=True)
        (self.val_line,) = plot([], [], "-", color=VAL_COLOR, lw=1.5, marker=".", ms=4,
                                label="validation", animated=True)
        (self.best_marker,) = plot([], [], linestyle="none", marker="*", ms=11, color=BEST_COLOR,
                                   label="best validation", animated=True)
        self._best_line = self.axes.axvline(np.nan, color=BEST_COLOR, lw=0.8, ls=":",
                                            animated=True)
        self._dynamic = (self._best_line, self.train_line, self.val_line, self.best_marker)
        # The legend is a Qt label: drawn by Qt, it costs nothing in each full matplotlib draw.
        self.legend_label = QLabel(
            f'<span style="color:{TRAIN_COLOR}">━</span> train MSE &nbsp; '
            f'<span style="color:{VAL_COLOR}">━</span> validation MSE &nbsp; '
            f'<span style="color:{BEST_COLOR}">★</span> best validation'
        )
        self.legend_label.setStyleSheet(
            f"color: {foreground}; background: {background}; font-size: 11px; padding: 2px 6px;"
        )
        self._background = None
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(redraw_interval_ms)
        self._redraw_timer.timeout.connect(self._redraw)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.legend_label)
        layout.addWidget(self.canvas)

    def _style_axes(self, background: str, foreground: str) -> None:
        ax = self.axes
        ax.set_facecolor(background)
        ax.set_yscale("log")
        ax.set_xlim(0.5, 10.5)
        ax.set_ylim(0.01, 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(_format_mse))
        self._label_minor_ticks(0.01, 1.0)
        ax.set_xlabel("epoch", color=foreground, fontsize=8)
        ax.set_ylabel("MSE", color=foreground, fontsize=8)
        ax.tick_params(colors=foreground, labelsize=7, which="both")
        for spine in ax.spines.values():
            spine.set_color(foreground)
        ax.grid(True, which="major", alpha=0.15, color=foreground)

    def _label_minor_ticks(self, low: float, high: float) -> None:
        """Label minor MSE ticks when the axis spans a decade or less (all of them below 3x)."""
        span = high / low * (1 - 1e-9)
        if span <= 3.0:
            formatter = FuncFormatter(_format_mse)
        elif span <= 10.0:
            formatter = FuncFormatter(_format_minor_mse)
        else:
            formatter = NullFormatter()
        self.axes.yaxis.set_minor_formatter(formatter)

    def set_history(self, history: Sequence[EpochReport]) -> None:
        """Show ``history`` (EpochReports in epoch order); the canvas redraws shortly after."""
        epochs = np.array([r.epoch for r in history], dtype=float)
        self.train_line.set_data(epochs, [r.train_mse for r in history])
        self.val_line.set_data(epochs, [r.val_mse for r in history])
        if history:
            best = history[-1]
            self.best_marker.set_data([best.best_epoch], [best.best_val_mse])
            self._best_line.set_xdata([best.best_epoch, best.best_epoch])
        else:
            self.best_marker.set_data([], [])
            self._best_line.set_xdata([np.nan, np.nan])
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def point_count(self) -> tuple[int, int]:
        """Number of (train, validation) points currently plotted."""
        return len(self.train_line.get_xdata()), len(self.val_line.get_xdata())

    def _redraw(self) -> None:
        epochs = np.asarray(self.train_line.get_xdata(), dtype=float)
        values = np.concatenate([np.asarray(self.train_line.get_ydata(), dtype=float),
                                 np.asarray(self.val_line.get_ydata(), dtype=float)])
        x_limits, y_limits = plot_limits(epochs, values)
        limits_changed = (tuple(self.axes.get_xlim()) != x_limits
                          or tuple(self.axes.get_ylim()) != y_limits)
        if limits_changed:
            self.axes.set_xlim(*x_limits)
            self.axes.set_ylim(*y_limits)
            self._label_minor_ticks(*y_limits)
        if limits_changed or self._background is None:
            self.canvas.draw_idle()  # full draw; _on_full_draw adds the lines
            return
        self.canvas.restore_region(self._background)
        self._draw_lines()
        self.canvas.update()  # paintEvent copies the Agg buffer; no repaint inside this slot
        self.blits += 1

    def _on_full_draw(self, _event) -> None:
        """After every full draw (also on resize): cache the background, draw the lines."""
        self.full_draws += 1
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_lines()

    def _draw_lines(self) -> None:
        for artist in self._dynamic:
            self.axes.draw_artist(artist)

    def stop(self) -> None:
        """Cancel a pending redraw (before the widget goes away)."""
        self._redraw_timer.stop()
