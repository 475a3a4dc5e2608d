"""Longest GUI stall while the Training panel trains the quick preset (not a test).

A 10 ms QTimer runs on the main thread while the panel trains the ``quick`` preset on the two
synthetic sample stacks (sample_data/synthetic_CAL.tif and synthetic_UNCAL.tif) in a shown
napari viewer with the panel docked; the largest gap between two ticks is the longest time the
GUI could not react. The same timer runs for a few seconds before training as a baseline (what
this machine gives an idle viewer).

Run under a display, e.g.::

    xvfb-run -a python benchmarks/gui_stall_training.py [--epochs 10] [--all-cores]

Prints one ``name: value`` line per figure, then the five longest gaps with the panel event
(Train clicked, epoch n, evaluated) that preceded each. ``--all-cores`` trains with all of torch's
threads instead of the panel's one-core-free policy, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


class TickRecorder:
    """Records the gaps between the ticks of a 10 ms QTimer on the main thread."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self.times: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self.times.append(now)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self.times.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def summary(self, prefix: str) -> list[str]:
        gaps_ms = np.asarray(self.gaps) * 1000.0
        if gaps_ms.size == 0:
            return [f"{prefix} ticks: 0"]
        return [
            f"{prefix} ticks: {gaps_ms.size}",
            f"{prefix} longest gap: {gaps_ms.max():.1f} ms",
            f"{prefix} 99th percentile gap: {np.percentile(gaps_ms, 99):.1f} ms",
            f"{prefix} median gap: {statistics.median(gaps_ms.tolist()):.1f} ms",
            f"{prefix} gaps over 50 ms: {int((gaps_ms > 50).sum())}",
        ]


def longest_gaps(recorder: TickRecorder, events: list[tuple[float, str]], start: float,
                 count: int = 5) -> list[str]:
    """The ``count`` longest gaps, each with the last panel event before its end."""
    lines = []
    for i in np.argsort(recorder.gaps)[::-1][:count]:
        end = recorder.times[i]
        before = [name for t, name in events if t <= end]
        lines.append(f"gap {recorder.gaps[i] * 1000:.0f} ms ending at "
                     f"{end - start:.2f} s (after {before[-1] if before else 'start'})")
    return lines


def run_until(app, condition, timeout_s: float) -> None:
    """Run the Qt event loop until ``condition()`` or the timeout."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(20)
    deadline = time.perf_counter() + timeout_s
    poll.timeout.connect(lambda: (condition() or time.perf_counter() > deadline) and loop.quit())
    poll.start()
    loop.exec_()
    poll.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs to train (default: the quick preset's 80)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads before training (default: torch's choice)")
    parser.add_argument("--all-cores", action="store_true",
                        help="train with all of torch's threads (the panel leaves one core free)")
    parser.add_argument("--baseline-s", type=float, default=3.0,
                        help="seconds of idle-viewer baseline before training")
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_electrode_cae import core
    from napari_electrode_cae._layers import labels_layer_kwargs
    from napari_electrode_cae._widgets import training_panel
    from napari_electrode_cae._widgets.state import CAEState
    from napari_electrode_cae._widgets.training_panel import TrainingPanel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.all_cores:
        training_panel.gui_torch_threads = lambda device: torch.get_num_threads()
    viewer = napari.Viewer()
    app = QApplication.instance()
    stacks = [core.read_stack(SAMPLES / f"synthetic_{tag}.tif") for tag in ("CAL", "UNCAL")]
    for stack in stacks:
        viewer.add_labels(stack.labels, **labels_layer_kwargs(stack))
    state = CAEState()
    state.stacks = tuple(stacks)
    state.stack_layers = tuple(s.name for s in stacks)
    panel = TrainingPanel(viewer, state)
    viewer.window.add_dock_widget(panel, name="Model & training", area="right")
    panel.apply_preset("quick")
    if args.epochs:
        panel.epochs_spin.setValue(args.epochs)
    run_until(app, lambda: False, 1.0)  # let the window settle

    recorder = TickRecorder()
    recorder.start()
    run_until(app, lambda: False, args.baseline_s)
    recorder.stop()
    lines = recorder.summary("idle")

    events: list[tuple[float, str]] = []
    state.events.history.connect(lambda h: events.append((time.perf_counter(), f"epoch {len(h)}")))
    state.events.model_version.connect(lambda v: events.append((time.perf_counter(), "evaluated")))
    recorder.start()
    start = time.perf_counter()
    events.append((start, "Train clicked"))
    panel.train_button.click()
    run_until(app, lambda: not panel.is_busy, args.timeout_s)
    elapsed = time.perf_counter() - start
    recorder.stop()
    history = state.history
    n_batches = -(-len(state.split.train) // state.train_config.batch_size)
    lines += [
        f"torch threads for training: {training_panel.gui_torch_threads(torch.device('cpu'))}",
        f"windows: {len(state.dataset)} ({len(state.split.train)} train, "
        f"{len(state.split.val)} val), {n_batches} batches/epoch",
        f"epochs trained: {len(history)}",
        f"training + evaluation wall time: {elapsed:.1f} s",
        f"mean epoch time: {np.mean([r.seconds for r in history]):.2f} s",
        f"best validation MSE: {history[-1].best_val_mse:.4f} @ epoch {history[-1].best_epoch}",
        *recorder.summary("training"),
        *longest_gaps(recorder, events, start),
    ]
    panel.shutdown()
    viewer.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
