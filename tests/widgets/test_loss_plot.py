"""The loss plot of the Train tab on pyqtgraph (counts, limits, pixels, throttling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qtpy.QtGui import QColor, QImage

from napari_electrode_cae._widgets.loss_plot import (
    BEST_COLOR,
    TRAIN_COLOR,
    VAL_COLOR,
    LossPlot,
    MSEAxis,
    ladder_above,
    ladder_below,
    plot_limits,
)
from napari_electrode_cae.core import EpochReport

BACKGROUND, FOREGROUND = "#262930", "#f0f1f2"


def history(n: int, train=None, val=None) -> list[EpochReport]:
    """``n`` epochs of a decreasing loss (or the given values), with the running best."""
    reports, best, best_epoch = [], math.inf, 0
    for epoch in range(1, n + 1):
        tr = train[epoch - 1] if train is not None else 0.02 + 0.4 * math.exp(-epoch / 6)
        va = val[epoch - 1] if val is not None else 0.03 + 0.4 * math.exp(-epoch / 7)
        if va < best:
            best, best_epoch = va, epoch
        reports.append(EpochReport(epoch, n, tr, va, 1.0, best_epoch, best))
    return reports


@pytest.fixture
def plot(qtbot):
    widget = LossPlot(BACKGROUND, FOREGROUND, redraw_interval_ms=20)
    qtbot.addWidget(widget)
    widget.resize(400, 240)
    yield widget
    widget.stop()


def pixels(image: QImage) -> np.ndarray:
    """(h, w, 3) RGB array of ``image``."""
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    height, width, stride = image.height(), image.width(), image.bytesPerLine()
    data = np.frombuffer(image.constBits().asstring(stride * height), np.uint8)
    return data.reshape(height, stride)[:, : width * 3].reshape(height, width, 3)


def count_color(rgb: np.ndarray, color: str, tolerance: int = 24) -> int:
    """Pixels within ``tolerance`` of ``color`` per channel (grab() may be 16-bit colour)."""
    target = np.array(QColor(color).getRgb()[:3])
    return int(np.count_nonzero(np.abs(rgb.astype(int) - target).max(axis=-1) <= tolerance))


def test_ladders_and_limits():
    assert ladder_above(0.03) == pytest.approx(0.05)
    assert ladder_above(0.5) == pytest.approx(0.5)
    assert ladder_above(11) == pytest.approx(20)
    assert ladder_below(0.03) == pytest.approx(0.02)
    assert ladder_below(0.1) == pytest.approx(0.1)
    x_limits, y_limits = plot_limits(np.arange(1.0, 31.0), np.array([0.021, 0.4]))
    assert x_limits == (0.5, 50.5)
    assert y_limits == pytest.approx((0.02, 0.5))
    # no history / no positive value: default axes
    assert plot_limits(np.zeros(0), np.zeros(0)) == ((0.5, 10.5), (0.01, 1.0))
    assert plot_limits(np.arange(1.0, 3.0), np.array([np.nan, -1.0, 0.0, np.inf]))[1] == (0.01, 1.0)


def test_mse_axis_labels_fewer_ticks_the_more_decades_it_spans(qtbot):
    axis = MSEAxis("left")
    values = np.log10([0.02, 0.03, 0.05, 0.1, 0.4, 1.0])
    axis.setRange(math.log10(0.01), math.log10(1.0))  # two decades: 1, 2, 5 × 10^k
    assert axis.logTickStrings(values, 1.0, 1.0) == ["0.02", "", "0.05", "0.1", "", "1"]
    axis.setRange(math.log10(0.02), math.log10(0.5))  # 25×: and 3 × 10^k
    assert axis.logTickStrings(values, 1.0, 1.0) == ["0.02", "0.03", "0.05", "0.1", "", "1"]
    axis.setRange(math.log10(0.5), math.log10(1.0))  # 2×: every tick
    assert axis.logTickStrings(np.log10([0.5, 0.6, 0.7]), 1.0, 1.0) == ["0.5", "0.6", "0.7"]


def test_point_count_and_limits(plot):
    assert plot.point_count() == (0, 0)
    plot.set_history(history(30))
    assert plot.point_count() == (30, 30)
    assert plot.limits()[0] == (0.5, 50.5)
    plot.set_history(history(3))
    assert plot.point_count() == (3, 3)
    plot.set_history([])
    assert plot.point_count() == (0, 0)
    assert plot.best is None


def redrawn(plot, qtbot):
    """Wait for the throttled curve update."""
    qtbot.waitUntil(lambda: not plot.redraw_pending())


def test_paints_lines_markers_and_best(plot, qtbot):
    plot.set_history(history(12))
    redrawn(plot, qtbot)
    rgb = pixels(plot.grab().toImage())
    inside = rgb
    assert count_color(inside, TRAIN_COLOR) > 20
    assert count_color(inside, VAL_COLOR) > 20
    assert count_color(inside, BEST_COLOR) > 10
    assert count_color(rgb, BACKGROUND, tolerance=6) > rgb.shape[0] * rgb.shape[1] // 2
    assert count_color(rgb, FOREGROUND, tolerance=10) > 50  # frame, ticks, labels


def test_empty_history_paints_axes_and_legend_only(plot, qtbot):
    plot.set_history(history(12))
    redrawn(plot, qtbot)
    full = pixels(plot.grab().toImage())
    plot.set_history([])
    redrawn(plot, qtbot)
    rgb = pixels(plot.grab().toImage())
    assert plot.train_curve.getData()[0] is None or len(plot.train_curve.getData()[0]) == 0
    assert not plot.best_line.isVisible()
    for color in (TRAIN_COLOR, VAL_COLOR, BEST_COLOR):  # the legend's samples only
        assert count_color(rgb, color) < count_color(full, color) / 2
    assert count_color(rgb, FOREGROUND, tolerance=10) > 50


def test_hidpi_rendering(plot, qtbot):
    plot.set_history(history(12))
    redrawn(plot, qtbot)
    image = QImage(800, 480, QImage.Format.Format_ARGB32_Premultiplied)
    image.setDevicePixelRatio(2.0)
    plot.render(image)
    rgb = pixels(image)
    inside = rgb
    assert count_color(inside, TRAIN_COLOR) > 80
    assert count_color(inside, VAL_COLOR) > 80
    assert count_color(inside, BEST_COLOR) > 40


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -0.5])
def test_invalid_values_are_skipped(plot, qtbot, bad):
    train = [0.5, bad, 0.2, 0.1, bad]
    val = [bad, 0.4, 0.3, bad, 0.2]
    reports = history(5, train, val)
    plot.set_history(reports)
    redrawn(plot, qtbot)
    assert plot.point_count() == (3, 3)
    rgb = pixels(plot.grab().toImage())
    assert count_color(rgb, TRAIN_COLOR) > 0
    # all invalid, and an invalid best: axes only, no crash
    plot.set_history(history(3, [bad] * 3, [bad] * 3))
    redrawn(plot, qtbot)
    assert plot.point_count() == (0, 0)
    assert plot.limits()[1] == (0.01, 1.0)
    plot.grab()
    plot.set_history([EpochReport(1, 1, 0.1, 0.1, 1.0, 0, math.inf)])  # no best epoch yet
    redrawn(plot, qtbot)
    assert not plot.best_line.isVisible()
    plot.grab()


def test_tiny_and_huge_sizes(plot, qtbot):
    plot.set_history(history(40))
    redrawn(plot, qtbot)
    for width, height in ((40, 20), (1600, 900)):
        plot.resize(width, height)
        plot.grab()


def test_repaints_are_throttled(plot, qtbot):
    plot.show()
    qtbot.waitExposed(plot)
    reports = history(50)
    redraws = plot.redraws
    for n in range(1, 51):
        plot.set_history(reports[:n])
    assert plot.redraws == redraws  # set_history never touches the curves
    assert plot.redraw_pending()  # one single-shot timer, started by the first call
    assert plot.point_count() == (50, 50)  # the data are stored at once
    qtbot.waitUntil(lambda: plot.redraws > redraws)
    assert not plot.redraw_pending() and plot.redraws == redraws + 1  # once for 50 epochs
    x, y = plot.train_curve.getData()
    assert len(x) == 50 and x[-1] == 50


def test_stop_cancels_pending_repaint(plot):
    plot.set_history(history(5))
    assert plot.redraw_pending()
    plot.stop()
    assert not plot.redraw_pending()
