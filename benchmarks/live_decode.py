"""Live-decoding speed: bare decode vs slider → decoded layer through the LatentPanel.

Not a test. Run under a display::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/live_decode.py

For the quick model (l=8, crop 64) and the paper model (l=24, crop 224, 3 conv layers, 128
hidden, 10 latent) on the CPU with ``--threads`` torch threads (default 2), prints
``name: value`` lines:

* ``bare decode``: median time of ``model.decode`` of one latent vector under
  ``torch.inference_mode``, back to back (and of decode + snap to phases + volume fractions, as
  the panel does); then the same, each after a ``--spacing-ms`` pause, as the isolated slider
  moves find the CPU (caches gone cold; a second torch thread asleep on an idle virtual CPU
  takes milliseconds to wake up), and after the same time spent busy waiting in the calling
  thread (its core stays awake, though with 2 torch threads the second one still sleeps; with
  1 thread what is left is the code and data that other work pushed out of the caches);
* per runner (``thread``: one long-lived worker, the panel's default; ``chained``: one
  ``create_worker`` per decode) and panel set-up (``--variants``, see :data:`VARIANTS`; the
  shipped panel is ``default`` and prints without a suffix), one slider move at a time (the
  next ``--spacing-ms`` after the previous layer update, so each move finds an idle GUI
  thread): latency from ``valueChanged`` to the decoded array ready (in the worker, or on the
  GUI thread for an inline decode), to the result in the main thread and to the layer's data
  replaced (median, p95, and the ratio to the bare decode);
* ``napari layer.data update``: the median time napari itself takes to update the same
  decoded layer the way the panel does (no plugin code; ``in-place``: copy into the layer's
  array and ``layer.refresh()``, or ``set``: ``layer.data = volume``), and ``plugin
  overhead``: slider → layer updated, minus slider → array ready, minus napari's own update;
* a 60 Hz drag (slider held down, one move every 16 ms for 1.5 s, released): moves, decodes
  (how many inline), decodes shown, latency of the shown results, lag from the last move to its
  decoded layer, and the longest stall of the GUI thread (largest gap between the ticks of a
  10 ms QTimer); then the same for napari alone: a 60 Hz stream of updates of the layer with
  precomputed volumes, made the same way as the panel's, to show what napari's update and
  repaint cost by themselves.

The panel is docked in a shown viewer, as in the application. Everything runs inside a real Qt
event loop, so queued signals, worker starts and repaints cost what they cost in the
application. ``--repeat`` runs every variant several times (napari alone too).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

N_ISOLATED = {"quick": 40, "paper": 12}
MODELS = {
    "quick": dict(window_length=8, crop=64, conv_layers=3, hidden=128, latent_dim=10),
    "paper": dict(window_length=24, crop=224, conv_layers=3, hidden=128, latent_dim=10),
}
DRAG_S = 1.5


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def busy_wait(seconds: float) -> None:
    """Keep this thread running for ``seconds`` (no sleep: its core never goes idle)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def bare_decode(
    model, repeats: int, pause_s: float = 0.0, busy: bool = False
) -> tuple[float, float]:
    """Median seconds of ``model.decode`` and of decode + snap for one random latent vector,
    back to back, or each after ``pause_s`` of sleep (caches and idle CPUs gone cold, as for
    the isolated slider moves), or of busy waiting in this thread (``busy``: the CPU stays
    awake, only other work runs in between)."""
    pause = busy_wait if busy else time.sleep
    from napari_electrode_cae._widgets.live_decoder import decode_latent

    k = model.config.latent_dim
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for _ in range(20):  # oneDNN builds its kernels on the first calls
            model.decode(torch.from_numpy(rng.standard_normal((1, k)).astype(np.float32)))
    bare, snapped = [], []
    for _ in range(repeats):
        z = rng.standard_normal(k).astype(np.float32)
        pause(pause_s)
        with torch.inference_mode():
            start = time.perf_counter()
            model.decode(torch.from_numpy(z)[None])
            bare.append(time.perf_counter() - start)
        pause(pause_s)
        snapped.append(decode_latent(model, z).decode_seconds)
    return statistics.median(bare), statistics.median(snapped)


class Ticks:
    """Gaps between the ticks of a 10 ms QTimer on the GUI thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = 0.0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        """Stop; the longest gap in ms."""
        self.timer.stop()
        return max(self.gaps, default=0.0) * 1e3


class SliderDriver:
    """Moves one LatentPanel slider from Qt timers inside a running Qt event loop.

    ``"isolated"``: the next move comes ``spacing_ms`` after the previous move's layer update;
    ``"drag"``: one move every 16 ms regardless of the decoder. The loop quits when the last
    move's decoded volume is in the layer (the panel's ``decoded`` signal, no polling).
    """

    def __init__(self, panel, loop, mode: str, n_moves: int, spacing_ms: int = 100) -> None:
        from qtpy.QtCore import QTimer

        self.panel, self.loop, self.mode, self.n_moves = panel, loop, mode, n_moves
        self.spacing_ms = spacing_ms
        self.slider = panel.sliders[0]
        self.values = np.linspace(self.slider.minimum(), self.slider.maximum(), n_moves + 1)[1:]
        self.moved = 0
        self.last_move_at = 0.0
        self.timer = QTimer()
        self.timer.setInterval(16)
        self.timer.timeout.connect(self._move)
        panel.decoded.connect(self._on_decoded)

    def start(self) -> None:
        from qtpy.QtCore import QTimer

        if self.mode == "drag":
            self.slider.setSliderDown(True)  # as a mouse press on the handle does
            self.timer.start()
        else:
            QTimer.singleShot(self.spacing_ms, self._move)

    def _move(self) -> None:
        if self.moved >= self.n_moves:
            self.timer.stop()
            return
        value = float(self.values[self.moved])
        self.moved += 1  # before the move: an inline decode is shown inside setValue
        last = self.moved >= self.n_moves
        if last:
            self.timer.stop()
        self.last_move_at = time.perf_counter()
        self.slider.setValue(value)
        if last and self.mode == "drag":
            self.slider.setSliderDown(False)  # the mouse release

    def _on_decoded(self, _result) -> None:
        from qtpy.QtCore import QTimer

        if not self.panel.idle:
            return
        if self.moved >= self.n_moves:
            self.panel.decoded.disconnect(self._on_decoded)
            self.loop.quit()
        elif self.mode == "isolated" and self.moved > 0:
            QTimer.singleShot(self.spacing_ms, self._move)


def panel_latency(
    viewer,
    state,
    runner: str,
    mode: str,
    n_moves: int,
    spacing_ms: int,
    settings: dict | None = None,
) -> dict:
    """Drive a docked LatentPanel's first slider and collect the latency log."""
    from qtpy.QtCore import QEventLoop

    from napari_electrode_cae._widgets.latent_panel import LatentPanel

    panel = LatentPanel(viewer, state, runner=runner)
    for key, value in (settings or {}).items():
        setattr(panel, key, torch.get_num_threads() if value == "all" else value)
    dock = viewer.window.add_dock_widget(panel, name=f"Latents ({runner}, {mode})")
    loop = QEventLoop()
    warm = SliderDriver(panel, loop, "isolated", 3, spacing_ms)  # first decodes are slow
    warm.start()
    loop.exec()
    panel.latency_log = []
    completed, inline = panel.decoder.counts.completed, panel.inline_decodes
    driver = SliderDriver(panel, loop, mode, n_moves, spacing_ms)
    ticks = Ticks()
    ticks.start()
    driver.start()
    loop.exec()
    max_stall = ticks.stop()
    log = panel.latency_log
    worker = panel.decoder.counts.completed - completed
    inline = panel.inline_decodes - inline
    panel.shutdown()
    viewer.window.remove_dock_widget(dock)
    ready = [r.finished_at - r.requested_at for r, _, _ in log]
    delivered = [d - r.requested_at for r, d, _ in log]
    layer = [u - r.requested_at for r, _, u in log]
    return {
        "moves": driver.moved,
        "decodes": worker + inline,
        "inline": inline,
        "shown": len(log),
        "ready": ready,
        "delivered": delivered,
        "layer": layer,
        "max_stall_ms": max_stall,
        "lag_last": log[-1][2] - driver.last_move_at if log else float("nan"),
    }


def set_data(layer, volume: np.ndarray) -> None:
    """napari's plain update: ``layer.data = volume`` (new data: dims, colormap rebuilt)."""
    layer.data = volume


#: latent_panel.update_labels_in_place itself (main() swaps the module's for variants).
_UPDATE_IN_PLACE = None


def in_place(layer, volume: np.ndarray) -> None:
    """The panel's update: copy into the layer's own array, ``layer.refresh()``."""
    if not _UPDATE_IN_PLACE(layer, volume):
        layer.data = volume.copy()


#: How the decoded layer gets a new volume, for the panel and for "napari alone".
UPDATES = {"in-place": in_place, "set": set_data}


def napari_update(
    viewer, layer, volumes: list[np.ndarray], n: int, update=in_place
) -> tuple[float, float]:
    """napari alone: median seconds of ``update(layer, volume)`` (each after the previous
    one's repaint) and the longest GUI stall (ms) of a 60 Hz stream of such updates."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    times: list[float] = []

    def isolated() -> None:
        start = time.perf_counter()
        update(layer, volumes[len(times) % len(volumes)])
        times.append(time.perf_counter() - start)
        if len(times) < n:
            QTimer.singleShot(100, isolated)
        else:
            QTimer.singleShot(100, loop.quit)

    QTimer.singleShot(100, isolated)
    loop.exec()
    count = [0]
    stream = QTimer()
    stream.setInterval(16)

    def tick() -> None:
        update(layer, volumes[count[0] % len(volumes)])
        count[0] += 1
        if count[0] >= int(DRAG_S / 0.016):
            stream.stop()
            QTimer.singleShot(200, loop.quit)

    stream.timeout.connect(tick)
    ticks = Ticks()
    ticks.start()
    stream.start()
    loop.exec()
    return statistics.median(times), ticks.stop()


#: Panel set-ups: LatentPanel attributes and how the decoded layer is updated. "default" is
#: the panel as shipped (cheap decodes on the GUI thread, the rest in the runner with torch's
#: own thread count, the layer's array reused); "before" is the design before that (every
#: decode in the runner, ``layer.data = labels``); the others change one thing.
VARIANTS = {
    "default": ({}, "in-place"),
    "before": ({"inline_max_s": 0.0, "drag_inline_max_s": 0.0}, "set"),
    "set-data": ({}, "set"),
    "worker": ({"inline_max_s": 0.0, "drag_inline_max_s": 0.0}, "in-place"),
    "inline-drag": ({"drag_inline_max_s": 0.030}, "in-place"),
}


@contextlib.contextmanager
def torch_threads(threads: int):
    """This benchmark's own process: run the block with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_variant(
    viewer,
    state,
    name: str,
    tag: str,
    runner: str,
    bare: float,
    settings: dict,
    update: str,
    volumes: list[np.ndarray],
    napari_ms: dict[str, float],
    spacing_ms: int,
) -> None:
    """Isolated moves, napari alone (once per layer update kind) and a 60 Hz drag."""
    from napari_electrode_cae import _layers

    if _layers.DECODED_LAYER in viewer.layers:
        viewer.layers.remove(_layers.DECODED_LAYER)
    result = panel_latency(
        viewer, state, runner, "isolated", N_ISOLATED[name], spacing_ms, settings
    )
    for key, text in (
        ("ready", "slider → decoded array (worker)"),
        ("delivered", "slider → result in main thread"),
        ("layer", "slider → layer data updated"),
    ):
        median = percentile_ms(result[key], 50)
        print(
            f"[{tag}] {text}: median {median:.2f} ms, "
            f"p95 {percentile_ms(result[key], 95):.2f} ms, "
            f"x{median / (bare * 1e3):.2f} bare decode"
            + (
                f" ({result['inline']} of {result['decodes']} decodes inline)"
                if key == "ready"
                else ""
            )
        )
    if update not in napari_ms:  # napari alone, on the decoded layer the panel made
        layer = viewer.layers[_layers.DECODED_LAYER]
        seconds, napari_stall = napari_update(
            viewer, layer, volumes, N_ISOLATED[name], UPDATES[update]
        )
        napari_ms[update] = seconds * 1e3
        prefix = f"[{name}]" if update == "in-place" else f"[{name} {update}]"
        how = (
            "copy into the layer's array + refresh, as the panel"
            if update == "in-place"
            else "layer.data = volume"
        )
        print(f"{prefix} napari layer.data update: median {napari_ms[update]:.2f} ms ({how})")
        print(f"{prefix} napari alone, 60 Hz layer.data updates, max stall: {napari_stall:.1f} ms")
    overhead = (
        percentile_ms(result["layer"], 50) - percentile_ms(result["ready"], 50) - napari_ms[update]
    )
    print(f"[{tag}] plugin overhead on top of napari's update: median {overhead:.2f} ms")
    drag = panel_latency(viewer, state, runner, "drag", int(DRAG_S / 0.016), spacing_ms, settings)
    print(
        f"[{tag}] 60 Hz drag: {drag['moves']} moves, {drag['decodes']} decodes "
        f"({drag['inline']} inline), {drag['shown']} shown; shown latency median "
        f"{percentile_ms(drag['layer'], 50):.1f} ms, p95 "
        f"{percentile_ms(drag['layer'], 95):.1f} ms; last move → layer "
        f"{drag['lag_last'] * 1e3:.1f} ms"
    )
    print(f"[{tag}] 60 Hz drag max stall: {drag['max_stall_ms']:.1f} ms")


def make_state(model, n_windows: int = 64):
    from napari_electrode_cae._widgets.state import CAEState

    state = CAEState()
    rng = np.random.default_rng(1)
    state.model = model
    state.latents = rng.standard_normal((n_windows, model.config.latent_dim)).astype(np.float32)
    state.model_version += 1
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--runners", nargs="+", default=["thread", "chained"], choices=["thread", "chained"]
    )
    parser.add_argument(
        "--spacing-ms",
        type=int,
        default=100,
        help="pause between isolated moves (after the previous layer update)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        choices=list(VARIANTS),
        help="panel set-ups to compare (see VARIANTS)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run every variant this often")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import napari

    from napari_electrode_cae import core
    from napari_electrode_cae._widgets import latent_panel
    from napari_electrode_cae._widgets.live_decoder import decode_latent

    global _UPDATE_IN_PLACE
    update_in_place = _UPDATE_IN_PLACE = latent_panel.update_labels_in_place

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    print(f"torch: {torch.__version__}, CPU, {torch.get_num_threads()} threads")
    print(f"napari: {napari.__version__}")
    for name in args.models:
        core.seed_everything(0)
        model = core.ConvAutoEncoder3d(**MODELS[name]).eval()
        bare, snapped = bare_decode(model, N_ISOLATED[name])
        c = model.config
        print(
            f"[{name}] model: l={c.window_length}, crop {c.crop}, {c.conv_layers} layers, "
            f"{c.hidden} hidden, {c.latent_dim} latent"
        )
        print(f"[{name}] bare decode: {bare * 1e3:.2f} ms (median of {N_ISOLATED[name]})")
        print(f"[{name}] decode + snap + fractions: {snapped * 1e3:.2f} ms")
        cold, cold_snapped = bare_decode(model, N_ISOLATED[name], args.spacing_ms / 1e3)
        with torch_threads(1):
            cold1, cold1_snapped = bare_decode(model, N_ISOLATED[name], args.spacing_ms / 1e3)
        print(
            f"[{name}] bare decode after a {args.spacing_ms} ms pause: {cold * 1e3:.2f} ms; "
            f"decode + snap {cold_snapped * 1e3:.2f} ms; with 1 torch thread "
            f"{cold1 * 1e3:.2f} ms, decode + snap {cold1_snapped * 1e3:.2f} ms"
        )
        busy, _ = bare_decode(model, N_ISOLATED[name], args.spacing_ms / 1e3, busy=True)
        with torch_threads(1):
            busy1, _ = bare_decode(model, N_ISOLATED[name], args.spacing_ms / 1e3, busy=True)
        print(
            f"[{name}] bare decode after {args.spacing_ms} ms of busy waiting in the same "
            f"thread (its core never idles): {busy * 1e3:.2f} ms; with 1 torch thread "
            f"{busy1 * 1e3:.2f} ms"
        )
        state = make_state(model)
        rng = np.random.default_rng(2)
        volumes = [decode_latent(model, rng.standard_normal(c.latent_dim)).labels for _ in range(4)]
        for _repeat in range(args.repeat):
            napari_ms: dict[str, float] = {}  # napari alone, measured once per repeat
            for variant in args.variants:
                settings, update = VARIANTS[variant]
                latent_panel.update_labels_in_place = (
                    update_in_place if update == "in-place" else lambda layer, labels: False
                )
                for runner in args.runners:
                    tag = f"{name}/{runner}" + ("" if variant == "default" else f" {variant}")
                    run_variant(
                        viewer,
                        state,
                        name,
                        tag,
                        runner,
                        bare,
                        settings,
                        update,
                        volumes,
                        napari_ms,
                        args.spacing_ms,
                    )
        latent_panel.update_labels_in_place = update_in_place
    viewer.close()


if __name__ == "__main__":
    main()
