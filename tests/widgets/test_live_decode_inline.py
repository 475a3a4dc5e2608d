"""Latent panel live decoding: inline (GUI-thread) decodes, the runner, and in-place updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets import latent_panel as latent_panel_module
from napari_electrode_cae._widgets.latent_panel import LatentPanel, update_labels_in_place
from napari_electrode_cae._widgets.live_decoder import decode_latent
from napari_electrode_cae._widgets.state import CAEState
from tests.conftest import make_stack

from .test_results_latent_panels import decode_directly

SPEC = core.WindowSpec(length=4, stride=2, crop=16)
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def model():
    core.seed_everything(0)
    return core.ConvAutoEncoder3d(
        window_length=4, crop=16, conv_layers=3, hidden=16, latent_dim=3
    ).eval()


def make_state(model) -> CAEState:
    state = CAEState()
    stack = make_stack((12, 32, 32), seed=0, name="tiny")
    state.stacks = (stack,)
    state.stack_layers = (stack.name,)
    state.window = SPEC
    state.val_fraction = 0.15
    state.rebuild_dataset()
    state.model = model
    state.latents = core.encode_windows(model, state.dataset)
    state.model_version += 1
    return state


def settled_panel(viewer, qtbot, model, **kwargs) -> LatentPanel:
    """A panel whose first decode (always in the runner) is shown."""
    panel = LatentPanel(viewer, make_state(model), **kwargs)
    qtbot.waitUntil(lambda: _layers.DECODED_LAYER in viewer.layers and panel.idle, timeout=WAIT_MS)
    assert panel.decoder.jobs_run == 1 and panel.inline_decodes == 0
    assert panel.decode_estimate_s is not None and panel.decode_estimate_s > 0
    return panel


# ------------------------------------------------------------------------ in-place updates
def test_update_labels_in_place_keeps_the_array_and_notifies_data_listeners(make_napari_viewer):
    viewer = make_napari_viewer()
    first = np.zeros((4, 16, 16), np.uint8)
    layer = _layers.add_phase_labels(viewer, first.copy(), _layers.DECODED_LAYER, 0.4)
    array = layer.data
    heard = []

    class Listener:  # a panel's bound method (napari keeps a weak reference to its owner)
        def on_data(self, event):
            heard.append(event.value)

    listener = Listener()
    layer.events.data.connect(listener.on_data)  # as the Physics panel follows the layer
    new = np.full((4, 16, 16), 2, np.uint8)
    assert update_labels_in_place(layer, new)
    assert layer.data is array and np.array_equal(layer.data, new)
    assert len(heard) == 1 and heard[0] is array
    assert layer.thumbnail.any()  # redrawn from the new data
    layer.data = first.copy()
    assert len(heard) == 2
    # another shape or dtype, or read-only data: the caller has to set layer.data
    assert not update_labels_in_place(layer, np.zeros((4, 8, 8), np.uint8))
    assert not update_labels_in_place(layer, np.zeros((4, 16, 16), np.int32))
    layer.data.flags.writeable = False
    assert not update_labels_in_place(layer, new)
    assert len(heard) == 2


# --------------------------------------------------------------------------- inline decodes
def test_cheap_decodes_run_inline_in_the_turn_of_the_move(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=10.0)
    layer = viewer.layers[_layers.DECODED_LAYER]
    array, threads = layer.data, torch.get_num_threads()
    shown = []
    panel.decoded.connect(shown.append)
    slider = panel.sliders[0]
    slider.setValue(slider.maximum())
    # decoded and shown before the move returned: no worker, no waiting
    assert panel.inline_decodes == 1 and panel.decoder.jobs_run == 1 and len(shown) == 1
    assert layer.data is array  # updated in place
    np.testing.assert_array_equal(layer.data, decode_directly(model, panel.latent_vector()))
    assert torch.get_num_threads() == threads  # a decode leaves torch's count alone
    assert "pore" in panel.fractions_label.text()
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    panel.shutdown()


def test_many_moves_in_one_turn_decode_the_first_and_then_only_the_last(
    make_napari_viewer, qtbot, model
):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=10.0)
    layer = viewer.layers[_layers.DECODED_LAYER]
    decoded = []
    panel.decoded.connect(lambda result: decoded.append(result.latent.copy()))
    slider = panel.sliders[1]
    values = np.linspace(slider.maximum(), slider.minimum(), 40)
    for value in values:  # all in this turn of the event loop
        slider.setValue(float(value))
    assert panel.inline_decodes == 1 and not panel.idle  # the last value waits for a turn
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.inline_decodes == 2 and panel.decoder.jobs_run == 1  # never queued
    assert decoded[-1][1] == pytest.approx(values[-1], abs=1e-3)
    np.testing.assert_array_equal(layer.data, decode_directly(model, panel.latent_vector()))
    panel.shutdown()


def test_expensive_decodes_run_in_the_worker(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=0.0)
    assert not panel.decodes_inline
    slider = panel.sliders[0]
    for value in np.linspace(slider.minimum(), slider.maximum(), 20):
        slider.setValue(float(value))
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.inline_decodes == 0
    assert 2 <= panel.decoder.jobs_run < 21  # latest wins in the runner too
    layer = viewer.layers[_layers.DECODED_LAYER]
    np.testing.assert_array_equal(layer.data, decode_directly(model, panel.latent_vector()))
    panel.shutdown()


def test_the_threshold_compares_with_the_decode_estimate(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model)
    estimate = panel.decode_estimate_s
    panel.inline_max_s = estimate * 0.5
    assert not panel.decodes_inline
    panel.inline_max_s = estimate * 2.0
    assert panel.decodes_inline
    # while a slider is held down only the drag limit counts
    panel.drag_inline_max_s = estimate * 0.5
    slider = panel.sliders[2]
    slider.setSliderDown(True)
    assert panel.dragging and not panel.decodes_inline
    slider.setValue(slider.maximum())
    assert panel.inline_decodes == 0 and not panel.idle  # in the runner
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.decoder.jobs_run == 2
    slider.setSliderDown(False)
    assert panel.decodes_inline
    slider.setValue(slider.minimum())
    assert panel.inline_decodes == 1
    panel.shutdown()


def test_a_new_model_decodes_first_in_the_worker(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=10.0)
    state = panel.state
    state.model = core.ConvAutoEncoder3d(
        window_length=4, crop=16, conv_layers=3, hidden=16, latent_dim=3
    ).eval()
    state.latents = core.encode_windows(state.model, state.dataset)
    state.model_version += 1  # its first decode: oneDNN kernels, not on the GUI thread
    assert panel.decode_estimate_s is None and not panel.decodes_inline
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.inline_decodes == 0 and panel.decoder.jobs_run == 2
    assert panel.decodes_inline
    layer = viewer.layers[_layers.DECODED_LAYER]
    np.testing.assert_array_equal(layer.data, decode_directly(state.model, panel.latent_vector()))
    panel.shutdown()


def test_a_worker_result_overtaken_by_an_inline_decode_is_dropped(
    make_napari_viewer, qtbot, model, monkeypatch
):
    import threading

    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=0.0)
    release = threading.Event()

    def slow_decode(*args):
        release.wait(10.0)
        return decode_latent(*args)

    slider = panel.sliders[0]
    monkeypatch.setattr(latent_panel_module, "decode_latent", slow_decode)
    slider.setValue(slider.minimum())  # in the runner, held up
    monkeypatch.setattr(latent_panel_module, "decode_latent", decode_latent)
    panel.inline_max_s = 10.0
    slider.setValue(slider.maximum())  # newer, decoded inline and shown at once
    assert panel.inline_decodes == 1
    release.set()
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.decoder.jobs_run == 2  # the runner's result arrived …
    layer = viewer.layers[_layers.DECODED_LAYER]  # … and did not replace the newer one
    np.testing.assert_array_equal(layer.data, decode_directly(model, panel.latent_vector()))
    panel.shutdown()


@pytest.mark.parametrize("inline_max_s", [10.0, 0.0], ids=["inline", "worker"])
def test_decode_errors_are_shown(make_napari_viewer, qtbot, model, monkeypatch, inline_max_s):
    import napari.utils.notifications as notifications

    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=inline_max_s)
    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)

    def broken(*_args):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(latent_panel_module, "decode_latent", broken)
    slider = panel.sliders[0]
    slider.setValue(slider.maximum())
    qtbot.waitUntil(lambda: panel.idle and bool(shown), timeout=WAIT_MS)
    assert shown == ["decoder exploded"]
    assert panel.status_label.text() == "error: decoder exploded"
    monkeypatch.setattr(latent_panel_module, "decode_latent", decode_latent)
    slider.setValue(slider.minimum())  # the next move decodes again
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    layer = viewer.layers[_layers.DECODED_LAYER]
    np.testing.assert_array_equal(layer.data, decode_directly(model, panel.latent_vector()))
    panel.shutdown()


def test_no_decodes_after_shutdown(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=10.0)
    panel.shutdown()
    slider = panel.sliders[0]
    slider.setValue(slider.maximum())
    assert panel.inline_decodes == 0 and panel.idle and not panel.decoder.worker_alive
