"""From launch to the first reconstruction on the sample data with the quick preset.

Does what a newcomer does after ``electrode-cae gui`` (``launch(freeze_gc=True)``, as that
command does): the two synthetic sample stacks are loaded and the widget docked; press Train
(quick preset); wait until the Results panel shows the original and reconstructed window side
by side. Prints the times, the longest gap between ticks of a 10 ms QTimer during the whole run
(GUI stall), and optionally saves a screenshot of the full workflow (3D side by side + latent
sliders; ``--plugin-camera`` keeps the camera the plugin left instead of tilting it). Run under
a display, e.g.
``xvfb-run -a python benchmarks/time_to_first_result.py --screenshot out.png``.
"""

from __future__ import annotations

import argparse
import time

T_START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--screenshot", help="PNG path for a screenshot of the full workflow")
    parser.add_argument("--epochs", type=int, help="override the quick preset's epochs")
    parser.add_argument(
        "--plugin-camera",
        action="store_true",
        help="screenshot with the camera the plugin left (no tilt or zoom)",
    )
    args = parser.parse_args()

    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_electrode_cae import _layers
    from napari_electrode_cae._launch import launch

    viewer, widget = launch(show=True, freeze_gc=True)
    app = QApplication.instance()
    t_ready = time.perf_counter()

    gaps: list[float] = []
    stalls: list[tuple[float, float]] = []  # (seconds since launch, gap)
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        if gaps[-1] > 0.05:
            stalls.append((now - T_START, gaps[-1]))
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)

    def wait_until(condition, timeout_s: float = 600.0) -> None:
        deadline = time.perf_counter() + timeout_s
        while not condition():
            if time.perf_counter() > deadline:
                raise TimeoutError("gave up waiting")
            app.processEvents()
            time.sleep(0.002)

    state, training = widget.state, widget.training_panel
    if args.epochs:
        training.epochs_spin.setValue(args.epochs)
    widget.tabs.setCurrentWidget(training)
    wait_until(lambda: state.dataset is not None, 30)
    t_train = time.perf_counter()
    training.train_button.click()
    wait_until(lambda: state.model_version >= 1)
    t_trained = time.perf_counter()
    widget.tabs.setCurrentWidget(widget.results_panel)
    wait_until(
        lambda: (
            _layers.RECONSTRUCTION_LAYER in viewer.layers
            and viewer.layers[_layers.RECONSTRUCTION_LAYER].data.any()
        )
    )
    t_first = time.perf_counter()
    wait_until(lambda: widget.results_panel.idle)  # the side-by-side grid is complete
    timer.stop()
    epochs = len(state.history)
    print(f"launch (imports, sample data, widget): {t_ready - T_START:.1f} s")
    print(
        f"training {epochs} epochs of the quick preset: {t_trained - t_train:.1f} s "
        f"({len(state.dataset)} windows)"
    )
    print(f"launch to first reconstruction: {t_first - T_START:.1f} s")
    print(
        f"longest GUI stall while training and evaluating: {max(gaps) * 1e3:.0f} ms "
        f"(ticks {len(gaps)}, over 50 ms: {sum(g > 0.05 for g in gaps)})"
    )
    print(
        "stalls over 50 ms at (s since launch, ms): "
        + ", ".join(f"({at:.1f}, {gap * 1e3:.0f})" for at, gap in stalls)
        + f"; Train pressed at "
        f"{t_train - T_START:.1f} s, model ready at {t_trained - T_START:.1f} s"
    )
    report = state.report
    if report is not None:
        print("evaluation: " + ", ".join(f"{k} {v}" for k, v in report.table8_row().items()))

    if args.screenshot:
        widget.results_panel.three_d_check.setChecked(True)
        widget.tabs.setCurrentWidget(widget.latent_panel)  # the decoded volume joins the grid
        slider = widget.latent_panel.sliders[0]
        slider.setValue(slider.value() + 0.5 * (slider.maximum() - slider.value()))
        wait_until(
            lambda: (
                _layers.DECODED_LAYER in viewer.layers
                and widget.latent_panel.idle
                and widget.results_panel.idle
            ),
            30,
        )
        viewer.window._qt_window.resize(1500, 950)
        for _ in range(50):
            app.processEvents()
            time.sleep(0.01)
        if not args.plugin_camera:
            viewer.reset_view()
            viewer.camera.angles = (-30, 30, 60)
            viewer.camera.zoom *= 1.3
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)
        viewer.screenshot(args.screenshot, canvas_only=False)
        print(f"screenshot: {args.screenshot}")
    widget.shutdown()
    viewer.close()


if __name__ == "__main__":
    main()
