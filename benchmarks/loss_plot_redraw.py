"""GUI-thread cost of one new epoch in the Train tab's loss plot: pyqtgraph vs the old QPainter.

Not a test. Shows the plot at the Train tab's size and, for epochs 1..N of a synthetic loss
curve, times what a new epoch costs the GUI thread once the plot's throttle timer fires: the
curve update (``LossPlot._redraw``) plus the repaint it causes (``processEvents`` until idle).
``--old PATH`` also times a copy of the QPainter plot (``git show
f5bdb92:src/napari_electrode_cae/_widgets/loss_plot.py``, its ``..core`` import made absolute)
in the same process. Prints median / 95th percentile / max in ms. Run under a display::

    OMP_NUM_THREADS=1 xvfb-run -a python benchmarks/loss_plot_redraw.py --old /tmp/old_loss_plot.py
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time


def history(n: int):
    from napari_electrode_cae.core import EpochReport

    reports, best, best_epoch = [], math.inf, 0
    for epoch in range(1, n + 1):
        train = 0.02 + 0.4 * math.exp(-epoch / 12)
        val = 0.03 + 0.4 * math.exp(-epoch / 14) + 0.004 * math.sin(epoch)
        if val < best:
            best, best_epoch = val, epoch
        reports.append(EpochReport(epoch, n, train, val, 1.0, best_epoch, best))
    return reports


def time_plot(plot_class, app, epochs: int, size: tuple[int, int]) -> list[float]:
    plot = plot_class(redraw_interval_ms=10_000)  # the timer never fires: redraws by hand
    plot.resize(*size)
    plot.show()
    for _ in range(20):
        app.processEvents()
    reports, times = history(epochs), []
    for n in range(1, epochs + 1):
        plot.set_history(reports[:n])
        plot.stop()
        start = time.perf_counter()
        plot._redraw()
        plot.repaint()
        app.processEvents()
        times.append((time.perf_counter() - start) * 1e3)
    plot.close()
    return times


def report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    print(
        f"{name}: median {statistics.median(times):.2f} ms, p95 {p95:.2f} ms, "
        f"max {max(times):.2f} ms over {len(times)} epochs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--old", default=None, help="path of the QPainter loss_plot.py")
    parser.add_argument("--size", default="400,240")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from napari_electrode_cae._widgets.loss_plot import LossPlot

    plots = [("pyqtgraph", LossPlot)]
    if args.old:
        spec = importlib.util.spec_from_file_location("old_loss_plot", args.old)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        plots.append(("QPainter (before)", module.LossPlot))
    for _name, plot_class in plots:  # a first round warms fonts, caches and shaders up
        time_plot(plot_class, app, args.epochs, size)
    for name, plot_class in plots:
        report(name, time_plot(plot_class, app, args.epochs, size))


if __name__ == "__main__":
    main()
