"""Results on a real-size stack: the camera holds the windows, every Z slice is reachable, and the
2D Z slider's range is explained."""

from __future__ import annotations

import pytest
from napari.components import ViewerModel

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets.data_panel import DataPanel
from napari_electrode_cae._widgets.results_panel import ResultsPanel, viewer_camera
from napari_electrode_cae._widgets.state import CAEState
from tests.conftest import make_stack

SPEC = core.WindowSpec(length=4, stride=4, crop=16)
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def model():
    """A 1-epoch model for 4×16×16 windows (what it learnt does not matter here)."""
    stack = make_stack((12, 32, 32), seed=0)
    core.seed_everything(0)
    net = core.ConvAutoEncoder3d(window_length=4, crop=16, conv_layers=3, hidden=8, latent_dim=2)
    core.run_training(
        net,
        core.WindowDataset([stack], SPEC),
        core.TrainConfig(epochs=1, batch_size=4, lr=1e-3, device="cpu"),
    )
    return net.eval()


def state_for(stack, model) -> CAEState:
    state = CAEState()
    state.stacks = (stack,)
    state.stack_layers = (stack.name,)
    state.window = SPEC
    state.rebuild_dataset()
    state.model = model
    state.model_version += 1
    return state


@pytest.mark.parametrize("slices", [48, 49, 24, 256])
def test_every_slice_of_a_stack_has_its_slider_step(qtbot, slices):
    viewer = ViewerModel()
    panel = DataPanel(viewer, CAEState())
    qtbot.addWidget(panel)
    try:
        stack = make_stack((slices, 8, 8), seed=1)
        layer = _layers.add_stack_labels(viewer, stack)  # 0.398 µm voxels
        assert viewer.dims.nsteps[0] == slices
        viewer.dims.set_current_step(0, slices - 1)  # the last slice is reachable
        assert layer.world_to_data(viewer.dims.point)[0] == pytest.approx(slices - 1)
    finally:
        panel.shutdown()
    assert panel._slider_fix not in viewer.dims.events.range.callbacks  # disconnected


def test_slider_steps_stay_whole_when_layers_change(qtbot):
    viewer = ViewerModel()
    panel = DataPanel(viewer, CAEState())
    qtbot.addWidget(panel)
    try:
        _layers.add_stack_labels(viewer, make_stack((24, 8, 8), seed=1, name="a"))
        _layers.add_stack_labels(viewer, make_stack((48, 8, 8), seed=2, name="b"))
        assert viewer.dims.nsteps[0] == 48
        viewer.layers.remove("b")
        assert viewer.dims.nsteps[0] == 24
    finally:
        panel.shutdown()


def test_2d_side_by_side_on_a_48_slice_stack(make_napari_viewer, qtbot, model):
    """Camera fitted to the window, the slice inside it, all 48 steps, and the range explained."""
    viewer = make_napari_viewer()
    data_panel = DataPanel(viewer, CAEState())  # the plugin's slider fix comes with the widget
    stack = make_stack((48, 128, 128), seed=3, name="real-size")
    layer = _layers.add_stack_labels(viewer, stack)
    state = state_for(stack, model)
    last = len(state.dataset) - 1
    state.selected_window = last  # the deepest window: slices 44-47
    panel = ResultsPanel(viewer, state)
    try:
        qtbot.waitUntil(
            lambda: _layers.RECONSTRUCTION_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS
        )
        assert viewer.canvas.grid.enabled and viewer.dims.ndisplay == 2
        assert viewer.dims.nsteps[0] == 48
        _, z, _, _ = state.dataset.origin(last)
        assert z == 44
        # the slice is inside the window; the hint names the window's slices
        step = viewer.dims.current_step[0]
        assert z <= step <= z + SPEC.length - 1
        assert not panel.slice_hint.isHidden()
        assert "slices 44–47" in panel.slice_hint.text()
        viewer.dims.set_current_step(0, 47)  # the last slice of the stack and of the window
        window = viewer.layers[_layers.ORIGINAL_LAYER]
        assert window.world_to_data(viewer.dims.point)[0] == pytest.approx(3)

        # the camera holds the window: zoomed far closer than a fit to the hidden stack
        camera = viewer_camera(viewer)
        zoom = camera.zoom
        viewer.reset_view()
        assert zoom > 4 * camera.zoom
        assert not layer.visible

        # 3D or leaving side by side: no hint
        panel.three_d_check.setChecked(True)
        assert panel.slice_hint.isHidden()
        panel.three_d_check.setChecked(False)
        assert not panel.slice_hint.isHidden()
        panel.side_by_side_check.setChecked(False)
        assert panel.slice_hint.isHidden() and layer.visible
    finally:
        panel.shutdown()
        data_panel.shutdown()
