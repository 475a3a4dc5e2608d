"""Longest GUI-thread stalls of the Data tab's layer conversion and of the Train tab's Open run.

Not a test. Opens napari with the Electrode CAE widget docked (``launch(sample=False,
freeze_gc=True)``, as ``electrode-cae gui`` does), lets the window settle and then, with a 10 ms
QTimer ticking on the GUI thread, does, each from inside the running event loop (as a click or a
drop would):

1. ``napari alone: add layer``: adds a big uint8 3-phase volume (default 512 x 1024 x 1024,
   stored values 0/1/2, no plugin metadata) as a Labels layer named like a plugin output layer,
   which the Data panel ignores: what napari's own ``add_labels`` and first paint cost;
2. ``add layer``: adds the same volume as an ordinary Labels layer: the Data panel converts it
   (phase mapping inferred, validated, volume fractions) and shows its row;
3. ``apply mapping``: ``set_phase_mapping`` with an explicit mapping (a new phase-id volume);
4. ``data changed``: ``layer.data = <a copy of the volume>`` (converted again);
5. ``open run``: ``training_panel.open_run(RUN)`` on a run folder written by
   ``electrode-cae train`` (made first from a synthetic stack, ``--run-shape``, unless ``--run``
   names one), until the run is applied and its evaluation is in.

The largest gap between two ticks is the longest time the GUI could not react. Prints
``name: value`` lines per phase: ``max stall`` (ms), ``stalls over 50 ms``, ``longest plugin
call`` (the longest top-level GUI-thread call into the Data or Train panel, with its name) and
``seconds`` (from the action until its result is shown); then the eight longest gaps, with
their phase and the plugin calls that overlap them (a gap without one is napari and Qt: adding
a layer, painting). Run under a display, e.g.::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/gui_stall_data.py

Options: ``--shape Z Y X`` of the converted volume, ``--run DIR`` / ``--run-shape Z Y X``,
``--no-run``, ``--screenshot PNG`` (the window while the big layer is being converted, and
``PNG`` with ``-done`` added before the suffix once it is), ``--repeat N`` (the conversion
phases N times). The script works with the synchronous panels of earlier versions too (for a
before/after comparison).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gui_stall_training import CallLog, Driver, TickRecorder, stall_lines


def instrument_plugin(log: CallLog) -> None:
    """Wrap the GUI-thread entry points of the Data and Train panels (old and new names)."""
    from napari_electrode_cae._widgets import data_panel, training_panel

    entry_points = {
        data_panel.DataPanel: [
            "_on_layers_changed",
            "_on_layer_data_changed",
            "_on_layer_renamed",
            "set_phase_mapping",
            "_on_converted",
            "_on_conversion_finished",
            "_on_state_stack_layers",
        ],
        training_panel.TrainingPanel: [
            "open_run",
            "_on_run_loaded",
            "_on_open_finished",
            "_on_evaluation_returned",
            "_on_worker_finished",
        ],
    }
    for cls, names in entry_points.items():
        for name in names:
            log.wrap(cls, name)


def three_phase_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 stored values 0/1/2 (about 40/12/48 %), a smooth random field tiled to ``shape``."""
    from scipy import ndimage

    tile = tuple(min(n, m) for n, m in zip(shape, (64, 128, 128)))
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(tile), sigma=2)
    small = np.digitize(field, np.quantile(field, [0.4, 0.52])).astype(np.uint8)
    reps = [-(-n // t) for n, t in zip(shape, tile)]
    return np.ascontiguousarray(np.tile(small, reps)[: shape[0], : shape[1], : shape[2]])


def make_run(folder: Path, shape: tuple[int, int, int]) -> Path:
    """A run folder written by ``electrode-cae train`` on a synthetic stack of ``shape``."""
    from napari_electrode_cae import core

    stack = core.ElectrodeStack(
        three_phase_volume(shape, seed=1), calendered=True, name="big_CAL", source=""
    )
    path = core.write_stack(folder / "big_CAL.npy", stack)
    run_dir = folder / "run"
    command = [
        sys.executable,
        "-m",
        "napari_electrode_cae.cli",
        "train",
        str(path),
        "--out",
        str(run_dir),
        "--epochs",
        "1",
        "--window",
        "8",
        "--crop",
        "64",
        "--stride",
        "64",
        "--tile-stride",
        "256",
        "--hidden",
        "16",
        "--latent",
        "3",
        "--batch",
        "8",
        "--device",
        "cpu",
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        print(exc.stdout, exc.stderr, file=sys.stderr)
        raise
    return run_dir


def phase_lines(
    name: str, start: float, end: float, done: float, ticks: TickRecorder, calls: CallLog
) -> list[str]:
    lines, _ = stall_lines(name, start, end, ticks, calls)
    lines.append(f"{name} seconds: {done - start:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 1024, 1024))
    parser.add_argument("--run", type=Path, default=None, help="existing run folder to open")
    parser.add_argument(
        "--run-shape",
        type=int,
        nargs=3,
        default=(256, 1024, 1024),
        help="shape of the synthetic stack the run is trained on",
    )
    parser.add_argument("--no-run", action="store_true", help="skip the open-run phase")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the conversion phases")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()

    from napari_electrode_cae import _layers
    from napari_electrode_cae._launch import launch

    tmp = tempfile.TemporaryDirectory(prefix="gui_stall_data_")
    run_dir = args.run
    if run_dir is None and not args.no_run:
        t = time.perf_counter()
        run_dir = make_run(Path(tmp.name), tuple(args.run_shape))
        print(f"run folder made in {time.perf_counter() - t:.1f} s: {run_dir}", file=sys.stderr)
    volume = three_phase_volume(tuple(args.shape))
    volume2 = volume.copy()

    calls = CallLog()
    instrument_plugin(calls)
    viewer, widget = launch(sample=False, show=True, freeze_gc=True)
    viewer.window._qt_window.resize(1500, 950)
    data, train, state = widget.data_panel, widget.training_panel, widget.state
    widget.tabs.setCurrentWidget(data)
    driver = Driver()
    driver.settle(2.0)  # the first paints of the window

    ticks = TickRecorder()
    ticks.start()
    marks: list[tuple[str, float, float]] = []  # (phase, start, done)

    def idle() -> bool:
        return getattr(data, "idle", True)

    def converted(name: str, data_array=None):
        def check() -> bool:
            entry = next((e for e in data.entries if e.layer.name == name), None)
            return (
                idle()
                and entry is not None
                and (entry.converted is not None or bool(entry.error))
                and (data_array is None or entry.layer.data is data_array)
            )

        return check

    def phase(name: str, action, condition, timeout_s: float = args.timeout_s) -> None:
        start = driver.call_in_loop(action)
        if not driver.run_until(condition, timeout_s):
            print(f"{name}: timed out", file=sys.stderr)
        marks.append((name, start, time.perf_counter()))
        driver.settle(1.0)

    driver.settle(1.0)
    marks.append(("idle", time.perf_counter() - 1.0, time.perf_counter()))
    for round_ in range(args.repeat):
        suffix = f" #{round_ + 1}" if args.repeat > 1 else ""
        layer_name = f"big{round_}"
        phase(
            f"napari alone: add layer{suffix}",
            lambda: viewer.add_labels(volume, name=_layers.ORIGINAL_LAYER),
            lambda: _layers.ORIGINAL_LAYER in viewer.layers,
        )
        viewer.layers.remove(_layers.ORIGINAL_LAYER)
        driver.settle(0.5)

        def add_layer(name=layer_name) -> None:
            viewer.add_labels(volume, name=name)

        if args.screenshot is not None and round_ == 0:
            start = driver.call_in_loop(add_layer)
            driver.settle(0.3)
            grab_path = args.screenshot
            viewer.window._qt_window.grab().save(str(grab_path))
            driver.run_until(converted(layer_name), args.timeout_s)
            marks.append((f"add layer{suffix}", start, time.perf_counter()))
            driver.settle(1.0)
            viewer.window._qt_window.grab().save(
                str(grab_path.with_name(grab_path.stem + "-done" + grab_path.suffix))
            )
        else:
            phase(f"add layer{suffix}", add_layer, converted(layer_name))
        phase(
            f"apply mapping{suffix}",
            lambda name=layer_name: data.set_phase_mapping(
                name, {0: "pore", 1: "active", 2: "cbd"}
            ),
            converted(layer_name),
        )
        layer = viewer.layers[layer_name]
        new_data = volume2 if round_ % 2 == 0 else volume

        def change_data(layer=layer, new_data=new_data) -> None:
            layer.data = new_data

        phase(f"data changed{suffix}", change_data, converted(layer_name, new_data))
        viewer.layers.remove(layer)
        driver.settle(0.5)

    if run_dir is not None:
        widget.tabs.setCurrentWidget(train)
        driver.settle(1.0)
        phase(
            "open run",
            lambda: train.open_run(run_dir),
            lambda: (
                not train.is_busy
                and state.run_dir == str(run_dir)
                and state.report is not None
                and idle()
            ),
        )
    ticks.stop()
    t_end = time.perf_counter()

    lines = [
        f"volume: {'x'.join(map(str, args.shape))} uint8 ({volume.nbytes / 2**20:.0f} MiB)",
        f"cpu count: {os.cpu_count()}",
    ]
    if run_dir is not None:
        lines.append(
            f"run: {run_dir}, stacks "
            + ", ".join("x".join(map(str, s.shape)) for s in state.stacks)
        )
    ends = [start for _, start, _ in marks[1:]] + [t_end]
    for (name, start, done), end in zip(marks, ends):
        lines += phase_lines(name, start, end, done, ticks, calls)
    lines.append(f"whole run max stall: {max(ticks.gaps) * 1e3:.1f} ms")
    t0 = marks[0][1]
    for i in np.argsort(ticks.gaps)[::-1][:8]:
        end, gap = ticks.ends[i], ticks.gaps[i]
        name = [n for n, start, _ in marks if start < end][-1]
        inside = [
            f"{what} {d * 1e3:.0f} ms"
            for s, d, what in calls.calls
            if s < end and s + d > end - gap
        ]
        lines.append(
            f"gap {gap * 1e3:.0f} ms ending at {end - t0:.2f} s ({name})"
            + (f": plugin calls {', '.join(inside)}" if inside else "")
        )
    widget.shutdown()
    viewer.close()
    tmp.cleanup()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
