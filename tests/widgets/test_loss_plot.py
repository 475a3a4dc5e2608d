"""The loss plot of the Train tab: a QPainter widget (counts, limits, pixels, throttling)."""

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
    ladder_above,
    ladder_below,
    plot_limits,
    x_step,
    y_ticks,
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


def plot_pixels(widget: LossPlot, rgb: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The part of ``rgb`` inside the axes (shrunk by 2 px so the frame is left out)."""
    area = widget.plot_area()
    top, bottom = int((area.top() + 2) * scale), int((area.bottom() - 2) * scale)
    left, right = int((area.left() + 2) * scale), int((area.right() - 2) * scale)
    return rgb[top:bottom, left:right]


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
    assert plot_limits(np.arange(1.0, 3.0), np.array([np.nan, -1.0, 0.0, np.inf]))[1] == (
        0.01, 1.0)


def test_ticks():
    # a short range labels minor ticks; a wide one only decades
    assert {round(v, 6) for v, rank in y_ticks(0.02, 0.05) if rank < 4} == {0.02, 0.03, 0.04,
                                                                             0.05}
    labelled = {round(v, 6) for v, rank in y_ticks(0.02, 0.5) if rank < 4}
    assert labelled == {0.02, 0.05, 0.1, 0.2, 0.5}
    labelled = sorted(v for v, rank in y_ticks(1e-4, 1.0) if rank < 4)
    assert labelled == pytest.approx([1e-4, 1e-3, 1e-2, 0.1, 1.0])
    assert len([v for v, rank in y_ticks(1e-30, 1e10) if rank < 4]) <= 8
    assert x_step((0.5, 10.5)) == 2
    assert x_step((0.5, 20.5)) == 5
    assert x_step((0.5, 100.5)) == 20
    assert x_step((0.5, 1000.5), max_ticks=3) == 500


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


def test_paints_lines_markers_and_best(plot):
    plot.set_history(history(12))
    rgb = pixels(plot.grab().toImage())
    inside = plot_pixels(plot, rgb)
    assert count_color(inside, TRAIN_COLOR) > 20
    assert count_color(inside, VAL_COLOR) > 20
    assert count_color(inside, BEST_COLOR) > 10
    assert count_color(rgb, BACKGROUND, tolerance=6) > rgb.shape[0] * rgb.shape[1] // 2
    assert count_color(rgb, FOREGROUND, tolerance=10) > 50  # frame, ticks, labels


def test_empty_history_paints_axes_only(plot):
    plot.set_history([])
    rgb = pixels(plot.grab().toImage())
    inside = plot_pixels(plot, rgb)
    for color in (TRAIN_COLOR, VAL_COLOR, BEST_COLOR):
        assert count_color(inside, color) == 0
    assert count_color(rgb, FOREGROUND, tolerance=10) > 50


def test_hidpi_rendering(plot):
    plot.set_history(history(12))
    image = QImage(800, 480, QImage.Format.Format_ARGB32_Premultiplied)
    image.setDevicePixelRatio(2.0)
    plot.render(image)
    rgb = pixels(image)
    inside = plot_pixels(plot, rgb, scale=2.0)
    assert count_color(inside, TRAIN_COLOR) > 80
    assert count_color(inside, VAL_COLOR) > 80
    assert count_color(inside, BEST_COLOR) > 40


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -0.5])
def test_invalid_values_are_skipped(plot, bad):
    train = [0.5, bad, 0.2, 0.1, bad]
    val = [bad, 0.4, 0.3, bad, 0.2]
    reports = history(5, train, val)
    plot.set_history(reports)
    assert plot.point_count() == (3, 3)
    rgb = pixels(plot.grab().toImage())
    assert count_color(plot_pixels(plot, rgb), TRAIN_COLOR) > 0
    # all invalid, and an invalid best: axes only, no crash
    plot.set_history(history(3, [bad] * 3, [bad] * 3))
    assert plot.point_count() == (0, 0)
    assert plot.limits()[1] == (0.01, 1.0)
    plot.grab()
    plot.set_history([EpochReport(1, 1, 0.1, 0.1, 1.0, 0, math.inf)])  # no best epoch yet
    plot.grab()


def test_tiny_and_huge_sizes(plot):
    plot.set_history(history(40))
    for width, height in ((40, 20), (1600, 900)):
        plot.resize(width, height)
        plot.grab()


def test_repaints_are_throttled(plot, qtbot):
    plot.show()
    qtbot.waitExposed(plot)
    qtbot.waitUntil(lambda: plot.paints > 0)
    reports = history(50)
    painted = plot.paints
    for n in range(1, 51):
        plot.set_history(reports[:n])
    assert plot.paints == painted  # set_history never paints
    assert plot.redraw_pending()  # one single-shot timer, started by the first call
    assert plot.point_count() == (50, 50)  # the data are stored at once
    qtbot.waitUntil(lambda: plot.paints > painted)
    assert not plot.redraw_pending()


def test_stop_cancels_pending_repaint(plot):
    plot.set_history(history(5))
    assert plot.redraw_pending()
    plot.stop()
    assert not plot.redraw_pending()
