"""Live-decoding speed: bare decode vs slider → decoded layer through the LatentPanel.

Run under a display (``xvfb-run -a python benchmarks/live_decode.py``). Prints, for the quick
model (l=8, crop 64) and the paper model (l=24, crop 224, 3 conv layers, 128 hidden, 10 latent)
on the CPU with 2 torch threads:

* bare decode time of one latent vector (``model.decode`` under ``torch.inference_mode``), and
  decode + snap to phases, median of N;
* through the LatentPanel, for each runner ("thread": one long-lived worker; "chained": one
  ``create_worker`` per decode): one slider move at a time (the next move 30 ms after the layer
  updated), latency from ``valueChanged`` to the decoded array ready in the worker, to the
  result in the main thread and to the layer's ``.data`` updated (median, p95), and the ratio of
  the median to the bare decode;
* a 60 Hz drag (one move every 16 ms for 1.5 s): moves, decodes run, latency of the shown
  results, and the lag from the last move to its decoded layer.

Everything runs inside a real Qt event loop, as in napari, so queued signals and worker starts
cost what they cost in the application.
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


class SliderDriver:
    """Moves one LatentPanel slider from Qt timers inside a running Qt event loop.

    ``"isolated"``: the next move comes 30 ms after the previous move's layer update;
    ``"drag"``: one move every 16 ms regardless of the decoder. The loop quits when the last
    move's decoded volume is in the layer (the panel's ``decoded`` signal, no polling).
    """

    def __init__(self, panel, loop, mode: str, n_moves: int) -> None:
        from qtpy.QtCore import QTimer

        self.panel, self.loop, self.mode, self.n_moves = panel, loop, mode, n_moves
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
            QTimer.singleShot(30, self._move)

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

        if not self.panel.decoder.idle:
            return
        if self.moved >= self.n_moves:
            self.panel.decoded.disconnect(self._on_decoded)
            self.loop.quit()
        elif self.mode == "isolated" and self.moved > 0:
            QTimer.singleShot(30, self._move)


def panel_latency(viewer, state, runner: str, mode: str, n_moves: int) -> dict:
    """Drive a LatentPanel's first slider and collect the latency log."""
    from qtpy.QtCore import QEventLoop

    from napari_electrode_cae._widgets.latent_panel import LatentPanel

    panel = LatentPanel(viewer, state, runner=runner)
    loop = QEventLoop()
    warm = SliderDriver(panel, loop, "isolated", 3)  # first decodes in a new thread are slow
    warm.start()
    loop.exec_()
    panel.latency_log = []
    driver = SliderDriver(panel, loop, mode, n_moves)
    driver.start()
    loop.exec_()
    log = panel.latency_log
    decodes = panel.decoder.counts.completed - 3 - 1  # minus warm-up and the initial reset
    panel.shutdown()
    panel.deleteLater()
    ready = [r.finished_at - r.requested_at for r, _, _ in log]
    delivered = [d - r.requested_at for r, d, _ in log]
    layer = [u - r.requested_at for r, _, u in log]
    return {
        "moves": driver.moved, "decodes": decodes, "ready": ready, "delivered": delivered,
        "layer": layer, "lag_last": log[-1][2] - driver.last_move_at if log else float("nan"),
    }


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import napari

    from napari_electrode_cae import core

    viewer = napari.Viewer(show=True)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; "
          f"napari {napari.__version__}")
    for name in args.models:
        core.seed_everything(0)
        model = core.ConvAutoEncoder3d(**MODELS[name]).eval()
        bare, snapped = bare_decode(model, N_ISOLATED[name])
        c = model.config
        print(f"\n== {name} model: l={c.window_length}, crop {c.crop}, {c.conv_layers} layers, "
              f"{c.hidden} hidden, {c.latent_dim} latent")
        print(f"bare decode            median {bare * 1e3:8.2f} ms "
              f"(decode + snap + fractions {snapped * 1e3:.2f} ms), N={N_ISOLATED[name]}")
        state = make_state(model)
        for runner in ("thread", "chained"):
            result = panel_latency(viewer, state, runner, "isolated", N_ISOLATED[name])
            for key, text in (("ready", "→ array ready (worker)"),
                              ("delivered", "→ result in main thread"),
                              ("layer", "→ layer data updated")):
                median = percentile_ms(result[key], 50)
                print(f"[{runner:7s}] {text:26s} median {median:8.2f} ms, "
                      f"p95 {percentile_ms(result[key], 95):8.2f} ms, "
                      f"x{median / (bare * 1e3):.2f} bare decode")
            drag = panel_latency(viewer, state, runner, "drag", int(1.5 / 0.016))
            print(f"[{runner:7s}] 60 Hz drag: {drag['moves']} moves → {drag['decodes']} decodes; "
                  f"shown latency median {percentile_ms(drag['layer'], 50):.1f} ms, "
                  f"p95 {percentile_ms(drag['layer'], 95):.1f} ms; last move → layer "
                  f"{drag['lag_last'] * 1e3:.1f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
