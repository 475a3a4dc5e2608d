"""Longest GUI-thread stalls along the user's path: Train, epochs, results, latents, drag.

Not a test. Opens napari the way ``electrode-cae gui`` does (the two synthetic sample stacks,
the Electrode CAE widget docked, ``launch(freeze_gc=True)``), lets the window settle, and then,
with a 10 ms QTimer ticking on the GUI thread, does what a newcomer does:

1. presses Train on the ``quick`` preset (``--preset paper`` for the paper's; ``--epochs``
   overrides the preset's epochs);
2. waits for the epochs, then for the evaluation, and shows the Results tab;
3. waits until the original, the reconstruction and the decoded volume are shown side by side;
4. shows the Latents tab;
5. drags the first latent slider across its range at 60 Hz (one ``setValue`` every 16 ms from a
   QTimer) for ``--drag-s`` seconds;
6. for comparison, napari alone: for as long, every 16 ms ``layer.data = volume`` on the decoded
   layer with volumes decoded during the drag (no plugin code runs): what napari's own layer
   update and repaint of this scene cost;
7. with ``--second-run``: presses Train again, to time a run whose layers already exist.

The largest gap between two ticks is the longest time the GUI could not react. Every action is
started from inside the running event loop (``QTimer.singleShot``), as a click would be.

Prints ``name: value`` lines. For each phase (``idle``, ``train press`` = the click and the
0.5 s after it, ``epochs``, ``first results``, ``latents tab``, ``slider drag``, ``napari alone
60 Hz updates``, and the ``second ...`` phases):

* ``<phase> max stall`` — the longest gap between ticks, in ms;
* ``<phase> stalls over 50 ms`` — how many gaps exceeded 50 ms;
* ``<phase> longest plugin call`` — the longest single GUI-thread call into the plugin (a slot,
  a worker result handler, a staged layer step), including the napari calls it makes (adding a
  layer, switching the grid on), with its name; ``<phase> plugin calls over 50 ms`` counts them;
* ``<phase> longest GC pause`` — the longest garbage-collector run (it holds the GIL, so it
  stops the GUI thread whichever thread triggers it).

What a stall holds beyond the longest plugin call is napari and Qt repainting the window (with
software OpenGL under Xvfb, one repaint of the grid costs tens of ms on a busy CPU; the first
paint of a new layer or name overlay compiles shaders and renders glyphs) or a GC pause. Then
the five longest gaps with their phase. Run under a display, e.g.::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/gui_stall_training.py --epochs 3

Options: ``--no-freeze-gc`` (nothing freezes the objects of the imports: full GC runs take
300-480 ms), ``--plugins-menu`` (as opened from napari's Plugins menu: the docked widget
freezes nothing, the same as ``--no-freeze-gc``), ``--3d`` (3D view before
training; software OpenGL makes every 3D repaint of the grid slow), ``--all-cores`` (train with
all of torch's threads instead of the panel's one-core-free policy), ``--threads N``,
``--preset paper --stack-shape 40,256,256`` (the paper's model on two synthetic stacks of that
shape instead of the quick preset on the sample data).
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import statistics
import threading
import time

import numpy as np
import torch

STALL_MS = 50.0


class TickRecorder:
    """Records the gaps between the ticks of a 10 ms QTimer on the main thread."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.ends: list[float] = []
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self.ends.append(now)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


class CallLog:
    """Durations of top-level GUI-thread calls into the plugin (wrapped methods)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, str]] = []  # (start, seconds, name)
        self._depth = 0
        self._main = threading.main_thread().ident

    def wrap(self, cls: type, name: str) -> None:
        function = getattr(cls, name, None)
        if function is None:  # a method of another version of the panel
            return
        params = list(inspect.signature(function).parameters.values())
        varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        n_positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        label = f"{cls.__name__}.{name}"

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if not varargs:  # Qt passes extra signal arguments (e.g. `checked`) if it can
                args = args[:n_positional]
            if threading.get_ident() != self._main:
                return function(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.calls.append((start, time.perf_counter() - start, label))

        setattr(cls, name, wrapper)


class GCLog:
    """Durations of garbage-collector runs."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float, int]] = []  # (start, seconds, generation)
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.runs.append((self._start, time.perf_counter() - self._start, info["generation"]))


def instrument_plugin(log: CallLog) -> None:
    """Wrap the plugin's GUI-thread entry points (before any widget exists)."""
    from napari_electrode_cae._widgets import (
        latent_panel,
        live_decoder,
        loss_plot,
        results_panel,
        training_panel,
        turns,
    )

    entry_points = {
        turns.TurnQueue: ["_run"],
        live_decoder._RunnerBase: ["_deliver"],
        live_decoder.ChainedRunner: ["_on_worker_finished"],
        live_decoder.ThreadRunner: ["_on_worker_finished", "_take"],
        training_panel.TrainingPanel: [
            "_on_train_clicked",
            "_on_training_report",
            "_on_training_finished",
            "_on_evaluation_returned",
            "_on_worker_finished",
        ],
        latent_panel.LatentPanel: ["_on_slider_moved"],
        results_panel.ResultsPanel: ["_on_ndisplay_changed"],
        loss_plot.LossPlot: ["_redraw"],  # pyqtgraph paints in its own view
    }
    for cls, names in entry_points.items():
        for name in names:
            log.wrap(cls, name)


class Driver:
    """Runs the Qt event loop until conditions hold; starts actions from inside the loop."""

    def __init__(self) -> None:
        from qtpy.QtCore import QEventLoop, QTimer

        self._loop = QEventLoop()
        self._poll = QTimer()
        self._poll.setInterval(20)
        self._condition = lambda: True
        self._deadline = 0.0
        self._poll.timeout.connect(self._check)

    def _check(self) -> None:
        if self._condition() or time.perf_counter() > self._deadline:
            self._loop.quit()

    def run_until(self, condition, timeout_s: float) -> bool:
        self._condition = condition
        self._deadline = time.perf_counter() + timeout_s
        self._poll.start()
        self._loop.exec()
        self._poll.stop()
        return bool(condition())

    def settle(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        self.run_until(lambda: time.perf_counter() >= end, seconds + 1.0)

    def call_in_loop(self, action) -> float:
        """Run ``action()`` in an event-loop turn of its own; returns when it started."""
        from qtpy.QtCore import QTimer

        started: list[float] = []

        def run() -> None:
            started.append(time.perf_counter())
            action()

        QTimer.singleShot(0, run)
        self.run_until(lambda: bool(started), 10.0)
        return started[0]


class SliderDrag:
    """Moves a slider across its range, one ``setValue`` every 16 ms, from a QTimer."""

    def __init__(self, slider, seconds: float) -> None:
        from qtpy.QtCore import QTimer

        self.slider = slider
        n = max(2, int(seconds / 0.016))
        low, high = slider.minimum(), slider.maximum()
        self.values = np.concatenate(
            [np.linspace(slider.value(), high, n // 2), np.linspace(high, low, n - n // 2)]
        )
        self.moved = 0
        self.timer = QTimer()
        self.timer.setInterval(16)
        self.timer.timeout.connect(self._move)

    def _move(self) -> None:
        if self.moved >= len(self.values):
            self.timer.stop()
            return
        self.slider.setValue(float(self.values[self.moved]))
        self.moved += 1

    @property
    def done(self) -> bool:
        return self.moved >= len(self.values)


class NapariUpdates:
    """napari alone: ``layer.data = volume`` every 16 ms from a QTimer (no plugin code)."""

    def __init__(self, layer, volumes: list[np.ndarray], seconds: float) -> None:
        from qtpy.QtCore import QTimer

        self.layer, self.volumes = layer, volumes
        self.n = max(2, int(seconds / 0.016))
        self.count = 0
        self.timer = QTimer()
        self.timer.setInterval(16)
        self.timer.timeout.connect(self._update)

    def _update(self) -> None:
        if self.count >= self.n:
            self.timer.stop()
            return
        self.layer.data = self.volumes[self.count % len(self.volumes)]
        self.count += 1

    @property
    def done(self) -> bool:
        return self.count >= self.n


def stall_lines(
    name: str, start: float, end: float, ticks: TickRecorder, calls: CallLog
) -> tuple[list[str], list[tuple[float, float, str]]]:
    """Max stall, stalls over STALL_MS and the longest plugin call of one phase; and the
    plugin calls that ended in it."""
    gaps = [g * 1e3 for t, g in zip(ticks.ends, ticks.gaps) if start < t <= end]
    in_phase = [(s, d, n) for s, d, n in calls.calls if start < s + d <= end]
    lines = [
        f"{name} max stall: {max(gaps, default=0.0):.1f} ms",
        f"{name} stalls over {STALL_MS:.0f} ms: {sum(g > STALL_MS for g in gaps)} "
        f"of {len(gaps)} ticks",
    ]
    if in_phase:
        _, seconds, what = max(in_phase, key=lambda c: c[1])
        lines.append(f"{name} longest plugin call: {seconds * 1e3:.1f} ms ({what})")
    else:
        lines.append(f"{name} longest plugin call: 0.0 ms")
    return lines, in_phase


def phase_lines(
    name: str, start: float, end: float, ticks: TickRecorder, calls: CallLog, gcs: GCLog
) -> list[str]:
    lines, in_phase = stall_lines(name, start, end, ticks, calls)
    runs = [d for s, d, _ in gcs.runs if start < s + d <= end]
    lines.append(
        f"{name} plugin calls over {STALL_MS:.0f} ms: "
        f"{sum(d * 1e3 > STALL_MS for _, d, _ in in_phase)}"
    )
    lines.append(f"{name} longest GC pause: {max(runs, default=0.0) * 1e3:.1f} ms")
    return lines


def timeline_lines(
    phase: str,
    marks: list[tuple[str, float]],
    ticks: TickRecorder,
    calls: CallLog,
    gcs: GCLog,
    t0: float,
) -> list[str]:
    """Every gap over STALL_MS in ``phase``, split into the plugin calls and GC runs inside it
    and the rest (napari's and Qt's own work: repaints, layer events)."""
    bounds = dict(
        zip([n for n, _ in marks], zip([s for _, s in marks], [s for _, s in marks[1:]] + [np.inf]))
    )
    if phase not in bounds:
        return [f"timeline: no phase {phase!r} (phases: {', '.join(bounds)})"]
    start, end = bounds[phase]
    lines = []
    for t, gap in zip(ticks.ends, ticks.gaps):
        if not start < t <= end or gap * 1e3 <= STALL_MS:
            continue
        begin = t - gap
        parts = [(s, d, n) for s, d, n in calls.calls if begin <= s and s + d <= t]
        inside = sum(d for _, d, _ in parts)
        for s, d, g in gcs.runs:
            if begin <= s and s + d <= t:
                parts.append((s, d, f"GC gen {g}"))
                if not any(cs <= s and s + d <= cs + cd for cs, cd, _ in parts[:-1]):
                    inside += d  # not already inside a plugin call
        parts.sort()
        what = (
            ", ".join(f"{n} {d * 1e3:.0f} ms" for _, d, n in parts if d >= 0.002)
            or "no plugin call"
        )
        lines.append(
            f"{phase} gap {gap * 1e3:.0f} ms at {begin - t0:.2f} s: {what}; "
            f"rest {(gap - inside) * 1e3:.0f} ms"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs to train (default: the quick preset's 80)"
    )
    parser.add_argument("--drag-s", type=float, default=3.0, help="seconds of slider drag")
    parser.add_argument(
        "--second-run",
        action="store_true",
        help="train a second time (layers exist: updated in place)",
    )
    parser.add_argument(
        "--no-freeze-gc",
        action="store_true",
        help="nothing freezes the long-lived objects (launch(freeze_gc=False))",
    )
    parser.add_argument(
        "--plugins-menu",
        action="store_true",
        help="as opened from napari's Plugins menu: nothing freezes the GC "
        "(the docked widget changes no process-wide state)",
    )
    parser.add_argument("--3d", dest="three_d", action="store_true", help="3D view")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads before training (default: torch's choice)",
    )
    parser.add_argument(
        "--all-cores",
        action="store_true",
        help="train with all of torch's threads (the panel leaves one core free)",
    )
    parser.add_argument(
        "--baseline-s",
        type=float,
        default=3.0,
        help="seconds of idle-viewer baseline before training",
    )
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    parser.add_argument(
        "--preset",
        choices=("quick", "paper"),
        default="quick",
        help="training preset (paper: l=24, crop 224; needs --stack-shape)",
    )
    parser.add_argument(
        "--stack-shape",
        type=lambda t: tuple(int(v) for v in t.split(",")),
        default=None,
        metavar="Z,Y,X",
        help="two synthetic CAL/UNCAL stacks of this shape instead of the "
        "sample data, e.g. 40,256,256 for the paper preset",
    )
    parser.add_argument(
        "--timeline",
        metavar="PHASE",
        default=None,
        help="explain every gap over 50 ms in this phase, e.g. 'first "
        "results': the plugin calls and GC runs inside it, and the rest",
    )
    args = parser.parse_args()

    from napari_electrode_cae import _layers
    from napari_electrode_cae._launch import launch
    from napari_electrode_cae._widgets import training_panel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.all_cores:
        training_panel.gui_torch_threads = lambda device: torch.get_num_threads()
    calls, gcs = CallLog(), GCLog()
    instrument_plugin(calls)
    stacks = ()
    if args.stack_shape:
        from napari_electrode_cae.core import generate_electrode

        stacks = [generate_electrode(args.stack_shape, preset=p, seed=0) for p in ("CAL", "UNCAL")]
        for stack, name in zip(stacks, ("synthetic_CAL", "synthetic_UNCAL")):
            stack.name = name
    viewer, widget = launch(
        stacks, show=True, freeze_gc=not (args.no_freeze_gc or args.plugins_menu)
    )
    state = widget.state
    train, results, latent = widget.training_panel, widget.results_panel, widget.latent_panel
    viewer.window._qt_window.resize(1500, 950)
    if args.three_d:
        viewer.dims.ndisplay = 3
    driver = Driver()
    driver.run_until(lambda: state.dataset is not None, 60.0)
    train.apply_preset(args.preset)
    if args.epochs:
        train.epochs_spin.setValue(args.epochs)
    widget.tabs.setCurrentWidget(train)
    driver.settle(2.0)  # the first paints of the window (glyphs, the loss plot)

    ticks = TickRecorder()
    ticks.start()
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    driver.settle(args.baseline_s)
    marks.append(("idle", t0))

    def train_once(prefix: str) -> None:
        version = state.model_version
        t_click = driver.call_in_loop(train.train_button.click)
        marks.append((f"{prefix}train press", t_click))
        driver.settle(0.5)
        marks.append((f"{prefix}epochs", time.perf_counter()))
        driver.run_until(lambda: state.model_version > version, args.timeout_s)
        marks.append((f"{prefix}{'first ' if not prefix else ''}results", time.perf_counter()))
        driver.call_in_loop(lambda: widget.tabs.setCurrentWidget(results))
        driver.run_until(
            lambda: (
                results.idle
                and latent.idle
                and _layers.RECONSTRUCTION_LAYER in viewer.layers
                and _layers.DECODED_LAYER in viewer.layers
            ),
            120.0,
        )
        driver.settle(1.0)

    train_once("")
    history = state.history
    marks.append(("latents tab", driver.call_in_loop(lambda: widget.tabs.setCurrentWidget(latent))))
    driver.run_until(
        lambda: latent.idle and results.idle and _layers.DECODED_LAYER in viewer.layers, 120.0
    )
    driver.settle(1.0)
    drag = SliderDrag(latent.sliders[0], args.drag_s)
    shown: list[float] = []
    volumes: list[np.ndarray] = []

    def on_decoded(result) -> None:
        shown.append(time.perf_counter())
        if len(volumes) < 8:
            volumes.append(result.labels)

    latent.decoded.connect(on_decoded)
    marks.append(("slider drag", driver.call_in_loop(drag.timer.start)))
    driver.run_until(lambda: drag.done and latent.idle, args.drag_s + 60.0)
    driver.settle(0.5)
    decodes_shown = len(shown)
    napari_updates = NapariUpdates(viewer.layers[_layers.DECODED_LAYER], volumes, args.drag_s)
    marks.append(("napari alone 60 Hz updates", driver.call_in_loop(napari_updates.timer.start)))
    driver.run_until(lambda: napari_updates.done, args.drag_s + 30.0)
    driver.settle(0.5)
    layers_before = [
        viewer.layers[n]
        for n in (_layers.ORIGINAL_LAYER, _layers.RECONSTRUCTION_LAYER, _layers.DECODED_LAYER)
    ]
    if args.second_run:
        widget.tabs.setCurrentWidget(train)
        driver.settle(1.0)
        train_once("second ")
    t_end = time.perf_counter()
    ticks.stop()
    marks.append(("end", t_end))

    n_batches = -(-len(state.split.train) // state.train_config.batch_size)
    lines = [
        f"torch threads for training: {training_panel.gui_torch_threads(torch.device('cpu'))}",
        "gc frozen: "
        + (
            "no"
            if args.no_freeze_gc
            else "after docking, stacks included"
            if args.plugins_menu
            else "at launch, before the stacks"
        ),
        f"view: {'3D' if args.three_d else '2D'}",
        f"windows: {len(state.dataset)} ({len(state.split.train)} train, "
        f"{len(state.split.val)} val), {n_batches} batches/epoch",
        f"epochs trained: {len(history)}",
        f"mean epoch time: {statistics.mean(r.seconds for r in history):.2f} s",
        f"slider drag: {drag.moved} moves, {decodes_shown} decoded volumes shown",
    ]
    for (name, start), (_, end) in zip(marks, marks[1:]):
        lines += phase_lines(name, start, end, ticks, calls, gcs)
    plot = [seconds * 1e3 for _, seconds, what in calls.calls if what == "LossPlot._redraw"]
    if plot:  # what a new epoch's points cost the GUI thread (curve update, not the repaint)
        lines.append(
            f"loss plot updates: {len(plot)}, median {statistics.median(plot):.1f} ms, "
            f"max {max(plot):.1f} ms"
        )
    lines.append(
        f"whole run max stall: {max(ticks.gaps) * 1e3:.1f} ms "
        f"({sum(g * 1e3 > STALL_MS for g in ticks.gaps)} of {len(ticks.gaps)} "
        f"ticks over {STALL_MS:.0f} ms)"
    )
    if args.second_run:
        reused = all(viewer.layers[layer.name] is layer for layer in layers_before)
        lines.append(f"second run reused the window layers: {'yes' if reused else 'no'}")
    if args.timeline:
        lines += timeline_lines(args.timeline, marks, ticks, calls, gcs, t0)
    order = np.argsort(ticks.gaps)[::-1][:5]
    for i in order:
        end = ticks.ends[i]
        phase = [name for name, start in marks if start < end][-1]
        lines.append(f"gap {ticks.gaps[i] * 1e3:.0f} ms ending at {end - t0:.2f} s ({phase})")
    widget.shutdown()
    viewer.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
