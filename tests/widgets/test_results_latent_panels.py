"""Results and Latent panels with a tiny trained model set directly in the shared state."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets.latent_panel import LatentPanel, latent_ranges
from napari_electrode_cae._widgets.live_decoder import (
    ChainedRunner,
    DecodedVolume,
    ThreadRunner,
    decode_latent,
)
from napari_electrode_cae._widgets.results_panel import (
    MODEL_PENDING_MESSAGE,
    NO_MODEL_MESSAGE,
    VIEW_3D_ANGLES,
    ResultsPanel,
    grid_shape,
    viewer_camera,
    window_at,
)
from napari_electrode_cae._widgets.state import CAEState
from tests.conftest import make_stack

SPEC = core.WindowSpec(length=4, stride=2, crop=16)
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def trained():
    """(stack, model, latents, report, split) of a 2-epoch model on a 12x32x32 stack."""
    stack = make_stack((12, 32, 32), seed=0, name="tiny")
    data = core.WindowDataset([stack], SPEC)
    core.seed_everything(0)
    model = core.ConvAutoEncoder3d(window_length=4, crop=16, conv_layers=3, hidden=16, latent_dim=3)
    config = core.TrainConfig(epochs=2, batch_size=4, lr=1e-3, device="cpu")
    result = core.run_training(model, data, config)
    model.eval()
    latents = core.encode_windows(model, data)
    report = core.evaluate(model, data, result.train_idx, result.val_idx)
    return stack, model, latents, report


def make_state(trained, with_model: bool = True) -> CAEState:
    stack, model, latents, report = trained
    state = CAEState()
    state.stacks = (stack,)
    state.stack_layers = (stack.name,)
    state.window = SPEC
    state.val_fraction = 0.15
    state.rebuild_dataset()
    if with_model:
        state.model = model
        state.latents = latents
        state.report = report
        state.model_version += 1
    return state


def decode_directly(model, latent) -> np.ndarray:
    with torch.inference_mode():
        values = model.decode(torch.from_numpy(np.asarray(latent, np.float32))[None])
    return core.snap_to_phases(values[0, 0].numpy())


# ----------------------------------------------------------------------------- pure helpers
def test_window_at_picks_the_containing_window_nearest_the_click(trained):
    data = core.WindowDataset([trained[0]], SPEC)
    index = window_at(data, 0, np.array([5, 20, 3]))
    s, z, y, x = data.origin(index)
    assert z <= 5 < z + 4 and y <= 20 < y + 16 and x <= 3 < x + 16
    assert z in (2, 4)  # the two windows holding slice 5; nearest centre wins
    assert window_at(data, 0, np.array([5, 20, 3])) == index
    assert window_at(data, 1, np.array([0, 0, 0])) is None


def test_grid_shape_and_latent_ranges():
    assert grid_shape(2) == (1, 2) and grid_shape(3) == (1, 3) and grid_shape(4) == (2, 2)
    latents = np.array([[0.0, 5.0], [2.0, 5.0]], dtype=np.float32)
    ranges = latent_ranges(latents, 2)
    assert ranges[0, 0] < 0.0 and ranges[0, 1] > 2.0  # mean ± 3 std covers the data
    assert np.allclose(ranges[1], [4.0, 6.0])  # no spread: ± 1
    assert np.allclose(latent_ranges(None, 3), [[-3, 3]] * 3)


@pytest.mark.parametrize("runner_class", [ChainedRunner, ThreadRunner])
def test_runner_is_latest_wins(qtbot, runner_class):
    results = []
    runner = runner_class(results.append)

    def slow_square(value):
        import time

        time.sleep(0.05)
        return value * value

    for value in range(20):
        runner.submit(slow_square, value)
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert results[-1] == 19 * 19
    assert len(results) < 20 and runner.counts.requests == 20
    runner.submit(slow_square, 3)  # shutdown waits for a running job
    runner.shutdown()
    assert not runner.worker_alive
    runner.submit(slow_square, 4)  # ignored once shut down
    assert not runner.worker_alive


def test_thread_runner_hands_over_only_the_newest_result(qtbot):
    """Results finished while the main thread is busy do not pile up in its event queue."""
    import threading
    import time

    results = []
    runner = ThreadRunner(results.append)
    first_running = threading.Event()

    def first():
        first_running.set()
        time.sleep(0.05)
        return "first"

    runner.submit(first)
    assert first_running.wait(10.0)
    runner.submit(lambda: "second")  # pending while the first runs
    time.sleep(0.3)  # both finish; the main thread takes nothing meanwhile
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    assert results == ["second"]
    assert runner.counts.completed == 1 and runner.counts.superseded == 1
    runner.shutdown()


def test_thread_runner_gives_its_pool_thread_back_when_idle(qtbot, monkeypatch):
    from napari_electrode_cae._widgets import live_decoder

    monkeypatch.setattr(live_decoder, "IDLE_EXIT_S", 0.05)
    results = []
    runner = ThreadRunner(results.append)
    runner.submit(abs, -1)
    qtbot.waitUntil(
        lambda: runner.idle and not runner.worker_alive and runner._worker is None, timeout=WAIT_MS
    )
    runner.submit(abs, -2)  # starts a new serving worker
    qtbot.waitUntil(lambda: runner.idle, timeout=WAIT_MS)
    runner.shutdown()
    assert results == [1, 2] and not runner.worker_alive


def test_turn_queue_runs_one_step_at_a_time_round_robin(qtbot):
    """Panels sharing a TurnQueue take turns: one step of one of them per event-loop turn."""
    from qtpy.QtCore import QObject

    from napari_electrode_cae._widgets.turns import TurnQueue, TurnScheduler

    owner = QObject()
    queue = TurnQueue(owner)
    ran = []

    def steps(name, n):
        left = [n]

        def step():
            ran.append(name)
            left[0] -= 1
            return left[0] > 0

        return step

    a = TurnScheduler(steps("a", 3), owner, queue)
    b = TurnScheduler(steps("b", 2), owner, queue)
    c = TurnScheduler(steps("c", 5), owner, queue)
    a.schedule()
    b.schedule()
    a.schedule()  # already waiting: once
    c.schedule()
    c.stop()  # dropped, and later schedules are ignored
    c.schedule()
    assert ran == [] and a.pending and b.pending and not c.pending
    qtbot.waitUntil(lambda: not a.pending and not b.pending, timeout=WAIT_MS)
    assert ran == ["a", "b", "a", "b", "a"]


# ------------------------------------------------------------------------------- results panel
def test_results_panel_without_model_shows_message(make_napari_viewer, trained):
    viewer = make_napari_viewer()
    state = make_state(trained, with_model=False)
    panel = ResultsPanel(viewer, state)
    assert panel.status_label.text() == NO_MODEL_MESSAGE
    assert _layers.ORIGINAL_LAYER not in viewer.layers
    assert _layers.RECONSTRUCTION_LAYER not in viewer.layers
    panel.shutdown()


def test_results_panel_shows_window_side_by_side(make_napari_viewer, qtbot, trained):
    stack, model, _, report = trained
    viewer = make_napari_viewer()
    viewer.add_labels(stack.labels, name=stack.name, scale=(stack.voxel_size_um,) * 3)
    outline = viewer.add_shapes(
        [np.array([[0, 0], [0, 5], [5, 5]])], shape_type="path", name=_layers.WINDOW_OUTLINE_LAYER
    )
    state = make_state(trained)
    panel = ResultsPanel(viewer, state)
    qtbot.waitUntil(
        lambda: _layers.RECONSTRUCTION_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS
    )
    outline.visible = True  # the Windows panel re-shows its outline on each selection
    assert not outline.visible and viewer.canvas.grid.shape == (1, 2)
    original = viewer.layers[_layers.ORIGINAL_LAYER]
    recon = viewer.layers[_layers.RECONSTRUCTION_LAYER]
    for layer in (original, recon):
        assert layer.data.shape == (4, 16, 16)
        assert set(np.unique(layer.data)) <= {0, 1, 2}
    np.testing.assert_array_equal(original.data, state.dataset.view(0))
    assert viewer.canvas.grid.enabled and not viewer.layers[stack.name].visible
    texts = " ".join(panel.statistics_texts())
    assert "±" in texts and str(report.mse.n_train) in texts
    assert "Voxel accuracy" in texts

    # a new window: the layers are updated in place once the worker is done
    target = int(state.split.val[0]) if int(state.split.val[0]) != 0 else int(state.split.val[-1])
    state.selected_window = target
    assert panel.window_spin.value() == target
    qtbot.waitUntil(lambda: panel.idle and panel._last_result.index == target, timeout=WAIT_MS)
    assert viewer.layers[_layers.RECONSTRUCTION_LAYER] is recon
    np.testing.assert_array_equal(original.data, state.dataset.view(target))
    expected = core.snap_to_phases(core.reconstruct(model, state.dataset[target]))
    np.testing.assert_array_equal(recon.data, expected)
    _, z, y, x = state.dataset.origin(target)
    assert np.allclose(recon.translate, np.array([z, y, x]) * stack.voxel_size_um)

    # the continuous values join the grid; side by side off restores the stack layer
    panel.values_check.setChecked(True)
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert viewer.layers[_layers.RECONSTRUCTION_VALUES_LAYER].data.dtype == np.float32
    assert (
        viewer.layers.index(_layers.RECONSTRUCTION_VALUES_LAYER)
        == viewer.layers.index(_layers.RECONSTRUCTION_LAYER) + 1
    )
    assert viewer.canvas.grid.shape == (1, 3)
    panel.side_by_side_check.setChecked(False)
    assert not viewer.canvas.grid.enabled and viewer.layers[stack.name].visible
    assert outline.visible
    panel.three_d_check.setChecked(True)
    assert viewer.dims.ndisplay == 3
    panel.shutdown()


def test_side_by_side_3d_starts_tilted_and_keeps_the_users_rotation(
    make_napari_viewer, qtbot, trained
):
    viewer = make_napari_viewer()
    state = make_state(trained)
    panel = ResultsPanel(viewer, state)
    qtbot.waitUntil(
        lambda: _layers.RECONSTRUCTION_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS
    )
    assert viewer.canvas.grid.enabled
    camera = viewer_camera(viewer)
    panel.three_d_check.setChecked(True)
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert np.allclose(camera.angles, VIEW_3D_ANGLES)

    # the user turns the volumes; the next window keeps that view
    camera.angles = (10.0, -40.0, 25.0)
    state.selected_window = int(state.split.val[0]) or int(state.split.val[-1])
    qtbot.waitUntil(
        lambda: panel.idle and panel._last_result.index == state.selected_window, timeout=WAIT_MS
    )
    assert np.allclose(camera.angles, (10.0, -40.0, 25.0))

    # back to 2D and to 3D again: tilted again; leaving and re-entering side by side too
    panel.three_d_check.setChecked(False)
    panel.three_d_check.setChecked(True)
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert np.allclose(camera.angles, VIEW_3D_ANGLES)
    camera.angles = (10.0, -40.0, 25.0)
    panel.side_by_side_check.setChecked(False)
    panel.side_by_side_check.setChecked(True)
    qtbot.waitUntil(lambda: panel.idle and viewer.canvas.grid.enabled, timeout=WAIT_MS)
    assert np.allclose(camera.angles, VIEW_3D_ANGLES)
    panel.shutdown()


@pytest.mark.parametrize("ndisplay", [2, 3])
def test_side_by_side_camera_fits_the_windows_not_a_large_stack(
    make_napari_viewer, qtbot, trained, ndisplay
):
    viewer = make_napari_viewer()
    viewer.dims.ndisplay = ndisplay
    big = viewer.add_labels(
        np.zeros((64, 256, 256), np.uint8),
        name="big stack",
        scale=(core.DEFAULT_VOXEL_SIZE_UM,) * 3,
    )
    state = make_state(trained)
    panel = ResultsPanel(viewer, state)
    qtbot.waitUntil(
        lambda: _layers.RECONSTRUCTION_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS
    )
    assert viewer.canvas.grid.enabled and not big.visible
    camera = viewer_camera(viewer)
    zoom = camera.zoom
    viewer.reset_view()  # fitted to every layer, the hidden 256² stack included
    assert zoom > 4 * camera.zoom  # the windows (16² voxels) fill their grid cells
    panel.shutdown()


def test_window_layers_keep_their_grid_order(make_napari_viewer, qtbot, trained):
    """A decoded layer made first (the Latents panel was faster) stays right of the others."""
    viewer = make_napari_viewer()
    state = make_state(trained)
    decoded = _layers.add_phase_labels(
        viewer, np.zeros((4, 16, 16), np.uint8), _layers.DECODED_LAYER, 1.0
    )
    panel = ResultsPanel(viewer, state)
    qtbot.waitUntil(
        lambda: _layers.RECONSTRUCTION_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS
    )
    names = [layer.name for layer in viewer.layers]
    assert names == [_layers.ORIGINAL_LAYER, _layers.RECONSTRUCTION_LAYER, _layers.DECODED_LAYER]
    assert viewer.layers[_layers.DECODED_LAYER] is decoded
    assert viewer.canvas.grid.shape == (1, 3)
    panel.shutdown()


def test_results_panel_spin_random_and_click_select_windows(make_napari_viewer, qtbot, trained):
    stack = trained[0]
    viewer = make_napari_viewer()
    viewer.add_labels(stack.labels, name=stack.name, scale=(stack.voxel_size_um,) * 3)
    state = make_state(trained)
    panel = ResultsPanel(viewer, state)
    panel.side_by_side_check.setChecked(False)
    panel.window_spin.setValue(3)
    assert state.selected_window == 3
    panel.random_val_button.click()
    assert state.selected_window in set(state.split.val.tolist())
    # a click at voxel (z 9, y 20, x 3) in the stack picks a window holding it
    position = np.array([9, 20, 3]) * stack.voxel_size_um
    index = panel.select_window_at(position)
    s, z, y, x = state.dataset.origin(index)
    assert state.selected_window == index
    assert z <= 9 < z + 4 and y <= 20 < y + 16 and x <= 3 < x + 16
    assert panel.select_window_at(np.array([100.0, 0.0, 0.0])) is None
    # the viewer mouse callback: a click selects, a drag (pan) does not
    click = SimpleNamespace(
        button=1,
        modifiers=(),
        type="mouse_press",
        view_direction=None,
        dims_displayed=[1, 2],
        position=np.array([1, 2, 20]) * stack.voxel_size_um,
    )
    for moves in (1, 0):
        press = panel._on_mouse_drag(viewer, click)
        next(press)
        click.type = "mouse_move"
        for _ in range(moves):
            next(press)
        click.type = "mouse_release"
        with pytest.raises(StopIteration):
            next(press)
        click.type = "mouse_press"
        picked = state.dataset.origin(state.selected_window)
        assert (picked[3] <= 20 < picked[3] + 16) == (moves == 0)
    qtbot.waitUntil(
        lambda: (
            panel.idle
            and panel._last_result is not None
            and panel._last_result.index == state.selected_window
        ),
        timeout=WAIT_MS,
    )
    panel.shutdown()


# -------------------------------------------------------------------------------- latent panel
def test_latent_panel_sliders_decode_live(make_napari_viewer, qtbot, trained):
    _, model, latents, _ = trained
    viewer = make_napari_viewer()
    state = make_state(trained, with_model=False)
    panel = LatentPanel(viewer, state)
    assert panel.sliders == [] and panel.status_label.text() == NO_MODEL_MESSAGE
    state.model, state.latents = model, latents
    state.model_version += 1
    assert len(panel.sliders) == model.config.latent_dim
    np.testing.assert_allclose(panel.latent_vector(), latents[0], atol=1e-2)
    qtbot.waitUntil(lambda: _layers.DECODED_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS)
    layer = viewer.layers[_layers.DECODED_LAYER]
    assert layer.data.shape == (4, 16, 16)

    # move slider 1 to the end of its range: the decoded layer changes, in place
    before = layer.data.copy()
    slider = panel.sliders[1]
    slider.setValue(slider.maximum())
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert viewer.layers[_layers.DECODED_LAYER] is layer
    expected = decode_directly(model, panel.latent_vector())
    np.testing.assert_array_equal(layer.data, expected)
    assert layer.data is not before
    assert "pore" in panel.fractions_label.text()

    # many rapid moves: the last value is decoded, and fewer decodes than moves
    done_before, moves = panel.decoder.jobs_run, 40
    low, high = slider.minimum(), slider.maximum()
    for value in np.linspace(high, low, moves):
        slider.setValue(float(value))
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.latent_vector()[1] == pytest.approx(low, abs=1e-3)
    np.testing.assert_array_equal(layer.data, decode_directly(model, panel.latent_vector()))
    assert panel.decoder.jobs_run - done_before < moves

    # reset restores the selected window's code
    state.selected_window = 2
    slider.setValue(slider.maximum())
    panel.reset_button.click()
    np.testing.assert_allclose(panel.latent_vector(), latents[2], atol=1e-2)
    assert "2" in panel.reset_button.text()
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    panel.shutdown()
    assert not panel.decoder.worker_alive


def test_panels_wait_while_a_new_model_is_trained(make_napari_viewer, qtbot, trained):
    """Training sets state.model to the model being trained and bumps model_version at the end."""
    _, model, latents, _ = trained
    viewer = make_napari_viewer()
    state = make_state(trained)
    results, latent = ResultsPanel(viewer, state), LatentPanel(viewer, state)
    qtbot.waitUntil(lambda: results.idle and latent.idle, timeout=WAIT_MS)
    training = core.ConvAutoEncoder3d(
        window_length=4, crop=16, conv_layers=3, hidden=16, latent_dim=2
    )
    state.model, state.latents, state.report = training, None, None
    assert results.status_label.text() == MODEL_PENDING_MESSAGE
    assert latent.status_label.text() == MODEL_PENDING_MESSAGE
    assert not latent.slider_box.isEnabled() and len(latent.sliders) == 3
    state.selected_window = 1  # nothing is decoded or reconstructed with the old weights now
    assert results.idle and latent.idle
    state.latents = core.encode_windows(training, state.dataset)
    state.model_version += 1  # training finished
    assert len(latent.sliders) == 2 and latent.slider_box.isEnabled()
    qtbot.waitUntil(
        lambda: (
            results.idle
            and latent.idle
            and results._last_result is not None
            and results._last_result.index == 1
        ),
        timeout=WAIT_MS,
    )
    assert results.status_label.text().startswith("showing window 1")
    results.shutdown()
    latent.shutdown()


def perturbed(model, scale: float = 0.05):
    """A copy of ``model`` with noise on every weight (a 'retrained' model of the same shape)."""
    import copy

    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return other.eval()


def test_window_layers_are_made_once_and_reused(make_napari_viewer, qtbot, trained):
    """Results and Latents as tabs (Results shown): the original, reconstruction and decoded
    layers share one side-by-side grid; a new model of the same shape updates their data
    instead of adding layers, the decoded one too while its tab is hidden."""
    from qtpy.QtWidgets import QTabWidget

    stack, model, latents, _ = trained
    viewer = make_napari_viewer()
    viewer.add_labels(stack.labels, name=stack.name, scale=(stack.voxel_size_um,) * 3)
    state = make_state(trained)
    results, latent = ResultsPanel(viewer, state), LatentPanel(viewer, state)
    tabs = QTabWidget()
    tabs.addTab(results, "Results")
    tabs.addTab(latent, "Latents")
    qtbot.addWidget(tabs)
    tabs.show()

    def settled():
        return results.idle and latent.idle

    names = (_layers.ORIGINAL_LAYER, _layers.RECONSTRUCTION_LAYER, _layers.DECODED_LAYER)
    qtbot.waitUntil(
        lambda: all(name in viewer.layers for name in names) and settled(), timeout=WAIT_MS
    )
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.shape == (1, 3)
    assert not viewer.layers[stack.name].visible
    layers = [viewer.layers[name] for name in names]
    assert all(layer.name_overlay.visible for layer in layers)
    positions = [viewer.layers.index(name) for name in names]  # the grid's cell order
    assert positions == sorted(positions), "original, reconstruction, decoded: left to right"
    np.testing.assert_array_equal(layers[2].data, decode_directly(model, latent.latent_vector()))

    # trained again (same shapes): the same layer objects get the new model's data
    second = perturbed(model)
    second_latents = core.encode_windows(second, state.dataset)
    state.model = second
    state.latents = second_latents
    state.model_version += 1  # both panels submit work at once: not settled until shown
    qtbot.waitUntil(settled, timeout=WAIT_MS)
    assert [viewer.layers[name] for name in names] == layers
    index = state.selected_window
    expected = core.snap_to_phases(core.reconstruct(second, state.dataset[index]))
    np.testing.assert_array_equal(layers[1].data, expected)
    np.testing.assert_array_equal(layers[2].data, decode_directly(second, latent.latent_vector()))
    np.testing.assert_allclose(latent.latent_vector(), second_latents[index], atol=1e-2)
    assert viewer.canvas.grid.shape == (1, 3)
    results.shutdown()
    latent.shutdown()


def test_latent_panel_exports_latents_csv(make_napari_viewer, qtbot, tmp_path, trained):
    _, model, latents, _ = trained
    viewer = make_napari_viewer()
    state = make_state(trained)
    panel = LatentPanel(viewer, state)
    path = panel.export_latents(tmp_path / "latents.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(state.dataset)
    k = model.config.latent_dim
    assert [f"z{j + 1}" for j in range(k)] == list(rows[0])[-k:]
    assert float(rows[1]["z1"]) == pytest.approx(float(latents[1, 0]), rel=1e-4, abs=1e-5)
    # the default split is blocked (windows overlap): windows it drops have no side
    sides = {"train": "train", "val": "val", "unused": ""}
    assert [r["split"] for r in rows] == [sides[state.split.side(i)] for i in range(len(rows))]
    assert {"train", "val"} <= {r["split"] for r in rows}
    qtbot.waitUntil(lambda: panel.decoder.idle, timeout=WAIT_MS)
    panel.shutdown()
    state.latents = None
    with pytest.raises(core.RunFolderError):
        panel.export_latents(tmp_path / "none.csv")


def test_decode_latent_matches_model(trained):
    model = trained[1]
    z = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    result = decode_latent(model, z)
    assert isinstance(result, DecodedVolume)
    np.testing.assert_array_equal(result.labels, decode_directly(model, z))
    assert sum(result.fractions.values()) == pytest.approx(1.0)
