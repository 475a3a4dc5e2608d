"""Live plot of the training and validation MSE per epoch (a plain Qt widget, QPainter).

Kept cheap so that a stream of epochs never stalls the GUI:

* ``set_history`` only stores the numbers; the widget is repainted (``update()``, i.e. with
  the window's next ordinary repaint, never inside the slot) at most once per
  ``redraw_interval_ms``;
* one repaint draws everything (background, grid, ticks, labels, legend, lines, markers) with
  QPainter in a few ms, so nothing is cached and a resize costs no more than a new epoch
  (a matplotlib figure draw cost 60-90 ms on a busy 2-core CPU);
* the axis limits move in 1-2-5 steps (epochs 10, 20, 50, …; MSE 0.1, 0.2, 0.5, …), so the
  axes do not jitter while epochs arrive.

All geometry is in logical pixels (fonts in points), so the plot is HiDPI-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QFontMetricsF, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..core import EpochReport

TRAIN_COLOR = "#4c9be8"
VAL_COLOR = "#f28e2b"
BEST_COLOR = "#59c459"
_LADDER = (1.0, 2.0, 5.0)
_LEGEND = (("line", TRAIN_COLOR, "train MSE"), ("line", VAL_COLOR, "validation MSE"),
           ("star", BEST_COLOR, "best validation"))
_PAD = 6.0  # logical px around the plot and between labels
_TICK = 4.0  # tick length


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


def _format_mse(value: float) -> str:
    return f"{value:.3g}"


def y_ticks(low: float, high: float) -> list[tuple[float, int]]:
    """MSE ticks in [``low``, ``high``] (log axis) as (value, rank), best-to-label first.

    Rank 0: decades (spaced out to at most ~7 when the axis spans many decades); rank 1: 2 and
    5 × 10^k when the axis spans less than two decades (so that at least two values are
    labelled); rank 2: 3 × 10^k when it spans a decade or less; rank 3: the other minor ticks
    (4, 6, 7, 8, 9 × 10^k) when it spans 3× or less. Ticks of rank 1-3 are labelled where
    there is room (see ``LossPlot``). Rank 4: minor ticks without a label (tick marks only,
    not when the axis spans more than 7 decades).
    """
    span = high / low * (1 - 1e-9)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    decade_step = max(1, math.ceil((last - first) / 7))
    ticks: list[tuple[float, int]] = []
    for exponent in range(first, last + 1):
        for mantissa in range(1, 10):
            value = mantissa * 10.0**exponent
            if not low * (1 - 1e-9) <= value <= high * (1 + 1e-9):
                continue
            if mantissa == 1:
                ticks.append((value, 0 if exponent % decade_step == 0 else 4))
            elif span <= 3.0 or (span <= 10.0 and mantissa in (2, 3, 5)):
                ticks.append((value, 1 if mantissa in (2, 5) else 2 if mantissa == 3 else 3))
            elif span < 100.0 and mantissa in (2, 5):
                ticks.append((value, 1))
            elif decade_step == 1:
                ticks.append((value, 4))
    ticks.sort(key=lambda tick: tick[1])
    return ticks


def x_step(x_limits: tuple[float, float], max_ticks: int = 6) -> int:
    """Integer 1-2-5 step between epoch ticks giving at most ``max_ticks`` ticks."""
    length = max(x_limits[1] - x_limits[0], 1.0)
    step = 1.0
    while length / step > max_ticks:
        step = ladder_above(step * 1.000001)
    return int(step)


def _star(center: QPointF, radius: float) -> QPolygonF:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append(QPointF(center.x() + r * math.cos(angle), center.y() + r * math.sin(angle)))
    return QPolygonF(points)


class LossPlot(QWidget):
    """Train and validation MSE (log scale) per epoch, with the best-validation epoch marked.

    Parameters
    ----------
    background, foreground : str
        Colours of the plot and of its axes, ticks and labels (e.g. the napari theme's).
    redraw_interval_ms : int
        Shortest time between two repaints requested by ``set_history``.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    epochs, train_mse, val_mse : numpy.ndarray
        The history shown (float arrays, one value per epoch; invalid MSEs kept as given).
    best : tuple of (int, float) or None
        (best epoch, best validation MSE) of the last report; None when there is no history.
    paints : int
        How many times the widget was painted (for tests and benchmarks).
    """

    def __init__(
        self,
        background: str = "#262930",
        foreground: str = "#f0f1f2",
        redraw_interval_ms: int = 150,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.paints = 0
        self.epochs = np.zeros(0)
        self.train_mse = np.zeros(0)
        self.val_mse = np.zeros(0)
        self.best: tuple[int, float] | None = None
        self._background = QColor(background)
        self._foreground = QColor(foreground)
        # faint grid: opaque mixes of the two colours (alpha-blended lines are ~10x slower)
        self._grid = _mix(self._foreground, self._background, 0.15)
        self._minor_grid = _mix(self._foreground, self._background, 0.07)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 180)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)  # paintEvent fills it all
        self.setToolTip("Mean squared error of the reconstruction per epoch (log scale).\n"
                        "Star and dotted line: the epoch with the lowest validation MSE; "
                        "its weights are kept.")
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(redraw_interval_ms)
        self._redraw_timer.timeout.connect(self._redraw)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(400, 240)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(160, 180)

    # ------------------------------------------------------------------------- data

    def set_history(self, history: Sequence[EpochReport]) -> None:
        """Show ``history`` (EpochReports in epoch order); the widget repaints shortly after."""
        self.epochs = np.array([r.epoch for r in history], dtype=float)
        self.train_mse = np.array([r.train_mse for r in history], dtype=float)
        self.val_mse = np.array([r.val_mse for r in history], dtype=float)
        self.best = (history[-1].best_epoch, history[-1].best_val_mse) if history else None
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def point_count(self) -> tuple[int, int]:
        """Number of (train, validation) points plotted (finite, positive MSEs)."""
        return int(np.count_nonzero(_valid(self.train_mse))), int(
            np.count_nonzero(_valid(self.val_mse)))

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(x limits, y limits) of the axes for the current history."""
        return plot_limits(self.epochs, np.concatenate([self.train_mse, self.val_mse]))

    def redraw_pending(self) -> bool:
        """True while a repaint requested by ``set_history`` waits for its timer."""
        return self._redraw_timer.isActive()

    def stop(self) -> None:
        """Cancel a pending repaint (before the widget goes away)."""
        self._redraw_timer.stop()

    def _redraw(self) -> None:
        self.update()  # painted with the window's next repaint, not inside this slot

    # ----------------------------------------------------------------------- layout

    def _fonts(self) -> tuple[QFont, QFont]:
        base = QFont(self.font())
        size = base.pointSizeF() if base.pointSizeF() > 0 else 9.0
        tick_font = QFont(base)
        tick_font.setPointSizeF(max(7.0, size * 0.9))
        label_font = QFont(base)
        label_font.setPointSizeF(max(7.5, size * 0.95))
        return tick_font, label_font

    def _legend_layout(self, metrics: QFontMetricsF, width: float
                       ) -> list[tuple[str, str, str, float, int]]:
        """(kind, colour, text, x, row) of each legend item, wrapped to ``width``."""
        items, x, row = [], _PAD, 0
        swatch = 18.0
        for kind, color, text in _LEGEND:
            item_width = swatch + 4.0 + metrics.horizontalAdvance(text)
            if x > _PAD and x + item_width > width - _PAD:
                x, row = _PAD, row + 1
            items.append((kind, color, text, x, row))
            x += item_width + 14.0
        return items

    def plot_area(self) -> QRectF:
        """The axes rectangle (logical px) for the current size, fonts and history."""
        return self._layout()[0]

    def _layout(self):
        tick_font, label_font = self._fonts()
        tick_metrics, label_metrics = QFontMetricsF(tick_font), QFontMetricsF(label_font)
        legend = self._legend_layout(label_metrics, self.width())
        legend_height = (legend[-1][4] + 1) * label_metrics.height()
        x_limits, y_limits = self.limits()
        ticks = y_ticks(*y_limits)
        tick_width = max((tick_metrics.horizontalAdvance(_format_mse(v)) for v, rank in ticks
                          if rank < 4),
                         default=tick_metrics.horizontalAdvance("0.01"))
        left = _PAD + label_metrics.height() + _PAD + tick_width + _TICK + 3.0
        top = _PAD + legend_height + _PAD
        right = self.width() - _PAD - tick_metrics.horizontalAdvance("000") / 2
        bottom = (self.height() - _PAD - label_metrics.height() - 2.0
                  - tick_metrics.height() - _TICK - 2.0)
        area = QRectF(left, top, max(right - left, 1.0), max(bottom - top, 1.0))
        return area, x_limits, y_limits, ticks, legend, tick_font, label_font

    # ---------------------------------------------------------------------- painting

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt API)
        self.paints += 1
        area, x_limits, y_limits, ticks, legend, tick_font, label_font = self._layout()
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), self._background)
            painter.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
            x0, x1 = x_limits
            log_low, log_high = math.log10(y_limits[0]), math.log10(y_limits[1])

            def to_x(x):
                return area.left() + (x - x0) / (x1 - x0) * area.width()

            def to_y(y):
                fraction = (np.log10(y) - log_low) / (log_high - log_low)
                return area.bottom() - fraction * area.height()

            # axis-parallel lines: crisp and cheaper without antialiasing; the rest antialiased
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
            self._paint_axes(painter, area, x_limits, ticks, to_x, to_y, tick_font, label_font)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            self._paint_legend(painter, legend, label_font)
            painter.setClipRect(area)
            self._paint_data(painter, area, to_x, to_y)
        finally:
            painter.end()

    def _paint_axes(self, painter, area, x_limits, ticks, to_x, to_y, tick_font, label_font):
        fg = self._foreground
        metrics = QFontMetricsF(tick_font)
        text_height = metrics.height()
        # y: grid and ticks for all, labels greedily where they do not overlap (best rank first)
        painter.setFont(tick_font)
        taken: list[float] = []
        grid_lines, minor_grid = [], []
        tick_lines = []
        for value, rank in ticks:
            y = float(to_y(value))
            tick_lines.append((y, rank))
            if rank < 4 and all(abs(y - other) >= text_height for other in taken):
                taken.append(y)
                (grid_lines if rank == 0 else minor_grid).append(y)
                rect = QRectF(0.0, y - text_height / 2, area.left() - _TICK - 3.0, text_height)
                painter.setPen(fg)
                painter.drawText(rect, int(Qt.AlignmentFlag.AlignRight
                                           | Qt.AlignmentFlag.AlignVCenter), _format_mse(value))
        # x: integer epochs every 1-2-5 step, wide enough apart for their labels
        label_width = metrics.horizontalAdvance(str(int(x_limits[1]))) + 10.0
        max_ticks = max(2, int(area.width() // label_width))
        step = x_step(x_limits, min(6, max_ticks))
        x_ticks = range(step, int(x_limits[1]) + 1, step)
        painter.setPen(QPen(self._grid, 1.0))
        for y in grid_lines:
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        for epoch in x_ticks:
            x = to_x(epoch)
            painter.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
        painter.setPen(QPen(self._minor_grid, 1.0))
        for y in minor_grid:
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        painter.setPen(QPen(fg, 1.0))
        for y, rank in tick_lines:
            length = _TICK if rank == 0 else _TICK * 0.6
            painter.drawLine(QPointF(area.left() - length, y), QPointF(area.left(), y))
        for epoch in x_ticks:
            x = to_x(epoch)
            painter.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + _TICK))
            rect = QRectF(x - 30.0, area.bottom() + _TICK + 1.0, 60.0, text_height)
            painter.drawText(rect, int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop),
                             str(epoch))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(area)
        # axis labels
        painter.setFont(label_font)
        label_height = QFontMetricsF(label_font).height()
        bottom_rect = QRectF(area.left(), self.height() - _PAD - label_height - 1.0,
                             area.width(), label_height)
        painter.drawText(bottom_rect, int(Qt.AlignmentFlag.AlignCenter), "epoch")
        painter.save()
        painter.translate(_PAD, area.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-area.height() / 2, 0.0, area.height(), label_height),
                         int(Qt.AlignmentFlag.AlignCenter), "MSE")
        painter.restore()

    def _paint_legend(self, painter, legend, label_font):
        metrics = QFontMetricsF(label_font)
        height = metrics.height()
        painter.setFont(label_font)
        for kind, color, text, x, row in legend:
            y = _PAD + row * height + height / 2
            qcolor = QColor(color)
            if kind == "line":
                painter.setPen(QPen(qcolor, 2.0))
                painter.drawLine(QPointF(x, y), QPointF(x + 18.0, y))
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(qcolor)
                painter.drawEllipse(QPointF(x + 9.0, y), 2.5, 2.5)
            else:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(qcolor)
                painter.drawPolygon(_star(QPointF(x + 9.0, y), 6.0))
            painter.setPen(self._foreground)
            painter.drawText(QRectF(x + 22.0, y - height / 2, metrics.horizontalAdvance(text)
                                    + 4.0, height),
                             int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)

    def _paint_data(self, painter, area, to_x, to_y):
        if self.best is not None:
            best_epoch, best_val = self.best
            if math.isfinite(best_epoch) and best_epoch >= 1:
                x = to_x(float(best_epoch))
                pen = QPen(QColor(BEST_COLOR), 1.0, Qt.PenStyle.DotLine)
                painter.setPen(pen)
                painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
                painter.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
                painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for values, color in ((self.train_mse, TRAIN_COLOR), (self.val_mse, VAL_COLOR)):
            valid = _valid(values)
            if not valid.any():
                continue
            xs = to_x(self.epochs)
            ys = np.full(values.shape, np.nan)
            ys[valid] = to_y(values[valid])
            qcolor = QColor(color)
            pen = QPen(qcolor, 1.5)
            pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            # runs of valid points are drawn as polylines; an invalid value breaks the line
            edges = np.flatnonzero(np.diff(np.concatenate([[0], valid.astype(np.int8), [0]])))
            for start, stop in zip(edges[::2], edges[1::2], strict=True):
                if stop - start > 1:
                    painter.drawPolyline(QPolygonF([QPointF(float(x), float(y)) for x, y
                                                    in zip(xs[start:stop], ys[start:stop],
                                                           strict=True)]))
            # dot markers: one drawPoints call with a round pen
            marker = QPen(qcolor, 4.4 if valid.sum() <= 200 else 2.4)
            marker.setCapStyle(Qt.PenCapStyle.RoundCap)
            painter.setPen(marker)
            painter.drawPoints(QPolygonF([QPointF(float(x), float(y)) for x, y
                                          in zip(xs[valid], ys[valid], strict=True)]))
        if self.best is not None:
            best_epoch, best_val = self.best
            if math.isfinite(best_epoch) and best_epoch >= 1 and _valid(np.array([best_val]))[0]:
                center = QPointF(to_x(float(best_epoch)), float(to_y(best_val)))
                painter.setPen(QPen(self._background, 0.8))
                painter.setBrush(QColor(BEST_COLOR))
                painter.drawPolygon(_star(center, 7.0))


def _valid(values: np.ndarray) -> np.ndarray:
    """Mask of the values a log axis can show (finite and > 0)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values > 0)


def _mix(color: QColor, background: QColor, alpha: float) -> QColor:
    """``color`` drawn with opacity ``alpha`` over ``background``, as one opaque colour."""
    return QColor(*(round(alpha * a + (1 - alpha) * b) for a, b in
                    zip(color.getRgb()[:3], background.getRgb()[:3], strict=True)))
