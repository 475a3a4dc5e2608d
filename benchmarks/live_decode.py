"""Live-decoding speed: bare decode vs slider → decoded layer through the LatentPanel.

Not a test. Run under a display::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/live_decode.py

For the quick model (l=8, crop 64) and the paper model (l=24, crop 224, 3 conv layers, 128
hidden, 10 latent) on the CPU with ``--threads`` torch threads (default 2), prints
``name: value`` lines:

* ``bare decode``: median time of ``model.decode`` of one latent vector under
  ``torch.inference_mode`` (and of decode + snap to phases + volume fractions, as the panel's
  worker does);
* per runner (``thread``: one long-lived worker, the panel's default; ``chained``: one
  ``create_worker`` per decode), one slider move at a time (the next ``--spacing-ms`` after the
  previous layer update, so each move finds an idle GUI thread): latency from ``valueChanged``
  to the decoded array ready in the worker, to the result in the main thread and to the layer's
  ``.data`` replaced (median, p95, and the ratio to the bare decode);
* ``napari layer.data update``: the median time napari itself takes for
  ``layer.data = volume`` on the same decoded layer (no plugin code), and ``plugin overhead``:
  slider → layer updated, minus slider → array ready, minus napari's own update;
* a 60 Hz drag (one move every 16 ms for 1.5 s): moves, decodes shown, latency of the shown
  results, lag from the last move to its decoded layer, and the longest stall of the GUI thread
  (largest gap between the ticks of a 10 ms QTimer); then the same for napari alone: a 60 Hz
  stream of ``layer.data = volume`` with precomputed volumes, to show what napari's update and
  repaint cost by themselves.

The panel is docked in a shown viewer, as in the application. Everything runs inside a real Qt
event loop, so queued signals, worker starts and repaints cost what they cost in the
application.
"""

from __future__ import annotations

import argparse
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


def bare_decode(model, repeats: int) -> tuple[float, float]:
    """Median seconds of ``model.decode`` and of decode + snap for one random latent vector."""
    from napari_electrode_cae._widgets.live_decoder import decode_latent

    k = model.config.latent_dim
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for _ in range(20):  # oneDNN builds its kernels on the first calls
            model.decode(torch.from_numpy(rng.standard_normal((1, k)).astype(np.float32)))
    bare, snapped = [], []
    for _ in range(repeats):
        z = rng.standard_normal(k).astype(np.float32)
        with torch.inference_mode():
            start = time.perf_counter()
            model.decode(torch.from_numpy(z)[None])
            bare.append(time.perf_counter() - start)
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
            self.timer.start()
        else:
            QTimer.singleShot(self.spacing_ms, self._move)

    def _move(self) -> None:
        if self.moved >= self.n_moves:
            self.timer.stop()
            return
        self.slider.setValue(float(self.values[self.moved]))
        self.last_move_at = time.perf_counter()
        self.moved += 1
        if self.moved >= self.n_moves:
            self.timer.stop()

    def _on_decoded(self, _result) -> None:
        from qtpy.QtCore import QTimer

        if not self.panel.idle:
            return
        if self.moved >= self.n_moves:
            self.panel.decoded.disconnect(self._on_decoded)
            self.loop.quit()
        elif self.mode == "isolated" and self.moved > 0:
            QTimer.singleShot(self.spacing_ms, self._move)


def panel_latency(viewer, state, runner: str, mode: str, n_moves: int,
                  spacing_ms: int) -> dict:
    """Drive a docked LatentPanel's first slider and collect the latency log."""
    from qtpy.QtCore import QEventLoop

    from napari_electrode_cae._widgets.latent_panel import LatentPanel

    panel = LatentPanel(viewer, state, runner=runner)
    dock = viewer.window.add_dock_widget(panel, name=f"Latents ({runner}, {mode})")
    loop = QEventLoop()
    warm = SliderDriver(panel, loop, "isolated", 3, spacing_ms)  # first decodes are slow
    warm.start()
    loop.exec()
    panel.latency_log = []
    completed = panel.decoder.counts.completed
    driver = SliderDriver(panel, loop, mode, n_moves, spacing_ms)
    ticks = Ticks()
    ticks.start()
    driver.start()
    loop.exec()
    max_stall = ticks.stop()
    log = panel.latency_log
    decodes = panel.decoder.counts.completed - completed
    panel.shutdown()
    viewer.window.remove_dock_widget(dock)
    ready = [r.finished_at - r.requested_at for r, _, _ in log]
    delivered = [d - r.requested_at for r, d, _ in log]
    layer = [u - r.requested_at for r, _, u in log]
    return {
        "moves": driver.moved, "decodes": decodes, "shown": len(log), "ready": ready,
        "delivered": delivered, "layer": layer, "max_stall_ms": max_stall,
        "lag_last": log[-1][2] - driver.last_move_at if log else float("nan"),
    }


def napari_update(viewer, layer, volumes: list[np.ndarray], n: int) -> tuple[float, float]:
    """napari alone: median seconds of ``layer.data = volume`` (each after the previous one's
    repaint) and the longest GUI stall (ms) of a 60 Hz stream of such updates."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    times: list[float] = []

    def isolated() -> None:
        start = time.perf_counter()
        layer.data = volumes[len(times) % len(volumes)]
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

    def update() -> None:
        layer.data = volumes[count[0] % len(volumes)]
        count[0] += 1
        if count[0] >= int(DRAG_S / 0.016):
            stream.stop()
            QTimer.singleShot(200, loop.quit)

    stream.timeout.connect(update)
    ticks = Ticks()
    ticks.start()
    stream.start()
    loop.exec()
    return statistics.median(times), ticks.stop()


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
    parser.add_argument("--runners", nargs="+", default=["thread", "chained"],
                        choices=["thread", "chained"])
    parser.add_argument("--spacing-ms", type=int, default=100,
                        help="pause between isolated moves (after the previous layer update)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import napari

    from napari_electrode_cae import _layers, core
    from napari_electrode_cae._widgets.live_decoder import decode_latent

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    print(f"torch: {torch.__version__}, CPU, {torch.get_num_threads()} threads")
    print(f"napari: {napari.__version__}")
    for name in args.models:
        core.seed_everything(0)
        model = core.ConvAutoEncoder3d(**MODELS[name]).eval()
        bare, snapped = bare_decode(model, N_ISOLATED[name])
        c = model.config
        print(f"[{name}] model: l={c.window_length}, crop {c.crop}, {c.conv_layers} layers, "
              f"{c.hidden} hidden, {c.latent_dim} latent")
        print(f"[{name}] bare decode: {bare * 1e3:.2f} ms (median of {N_ISOLATED[name]})")
        print(f"[{name}] decode + snap + fractions: {snapped * 1e3:.2f} ms")
        state = make_state(model)
        if _layers.DECODED_LAYER in viewer.layers:
            viewer.layers.remove(_layers.DECODED_LAYER)
        napari_ms = None
        for runner in args.runners:
            result = panel_latency(viewer, state, runner, "isolated", N_ISOLATED[name],
                                   args.spacing_ms)
            for key, text in (("ready", "slider → decoded array (worker)"),
                              ("delivered", "slider → result in main thread"),
                              ("layer", "slider → layer data updated")):
                median = percentile_ms(result[key], 50)
                print(f"[{name}/{runner}] {text}: median {median:.2f} ms, "
                      f"p95 {percentile_ms(result[key], 95):.2f} ms, "
                      f"x{median / (bare * 1e3):.2f} bare decode")
            if napari_ms is None:  # napari alone, on the decoded layer the panel made
                layer = viewer.layers[_layers.DECODED_LAYER]
                rng = np.random.default_rng(2)
                volumes = [decode_latent(model, rng.standard_normal(c.latent_dim)).labels
                           for _ in range(4)]
                seconds, napari_stall = napari_update(viewer, layer, volumes, N_ISOLATED[name])
                napari_ms = seconds * 1e3
                print(f"[{name}] napari layer.data update: median {napari_ms:.2f} ms")
                print(f"[{name}] napari alone, 60 Hz layer.data updates, max stall: "
                      f"{napari_stall:.1f} ms")
            overhead = (percentile_ms(result["layer"], 50) - percentile_ms(result["ready"], 50)
                        - napari_ms)
            print(f"[{name}/{runner}] plugin overhead on top of napari's update: median "
                  f"{overhead:.2f} ms")
            drag = panel_latency(viewer, state, runner, "drag", int(DRAG_S / 0.016),
                                 args.spacing_ms)
            print(f"[{name}/{runner}] 60 Hz drag: {drag['moves']} moves, {drag['decodes']} "
                  f"decodes, {drag['shown']} shown; shown latency median "
                  f"{percentile_ms(drag['layer'], 50):.1f} ms, p95 "
                  f"{percentile_ms(drag['layer'], 95):.1f} ms; last move → layer "
                  f"{drag['lag_last'] * 1e3:.1f} ms")
            print(f"[{name}/{runner}] 60 Hz drag max stall: {drag['max_stall_ms']:.1f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
