"""Fixes from the review of the dock widgets: Train waits for background conversions, results
of replaced windows are dropped, decodes leave torch's thread count alone, no inline decodes
while training, no stale decodes of a replaced model, undo history reset by in-place updates,
a rename does not restart a conversion (tiny data, CPU)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from qtpy.QtCore import QThreadPool

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets import data_panel as data_panel_module
from napari_electrode_cae._widgets import latent_panel as latent_panel_module
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets import training_runs as training_runs_module
from napari_electrode_cae._widgets.data_panel import DataPanel
from napari_electrode_cae._widgets.latent_panel import LatentPanel, update_labels_in_place
from napari_electrode_cae._widgets.live_decoder import decode_latent
from napari_electrode_cae._widgets.state import CAEState, ModelSettings
from napari_electrode_cae._widgets.training_panel import TrainingPanel
from napari_electrode_cae.core import ConvAutoEncoder3d

from .test_background_loading import WINDOW, Gate, add_electrode, entry_named
from .test_live_decode_inline import make_state as latent_state
from .test_live_decode_inline import (
    model,  # noqa: F401 (the shared module-scoped fixture)
    settled_panel,
)
from .test_results_latent_panels import decode_directly
from .test_training_panel import tiny_state

WAIT_MS = 30_000


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    for module in (training_panel_module, data_panel_module):
        monkeypatch.setattr(module, "show_error", shown.append)
    monkeypatch.setattr(data_panel_module, "show_info", lambda message: None)
    return shown


# ------------------------------------------------------------- 1. Train and data conversions
def test_train_waits_for_a_background_conversion(make_napari_viewer, qtbot, monkeypatch, errors):
    monkeypatch.setattr(data_panel_module, "SYNC_CONVERT_MAX_VOXELS", 100)
    state = CAEState(window=WINDOW)
    state.model_settings = ModelSettings(conv_layers=3, hidden=16, latent_dim=3)
    viewer = make_napari_viewer()
    data = DataPanel(viewer, state)
    train = TrainingPanel(viewer, state)
    try:
        add_electrode(viewer, name="first")
        qtbot.waitUntil(lambda: data.idle, timeout=WAIT_MS)
        assert state.dataset is not None and state.converting_layers == ()
        assert train.train_button.isEnabled()

        gate = Gate(monkeypatch)
        add_electrode(viewer, "UNCAL", seed=1, name="second")
        assert state.converting_layers == ("second",)
        assert not train.train_button.isEnabled()
        assert "waits for the Data tab" in train.status_label.text()
        assert "second" in train.status_label.text()
        train._on_train_clicked()  # refused as well when called directly
        assert not state.training and not train.is_busy
        # Open run waits too: the conversion's result would overwrite the opened run
        assert not train.open_button.isEnabled()
        assert "Open run waits" in train.open_button.toolTip()
        assert train.open_run("any/run/folder") is None and not train.is_busy
        assert errors == ["wait until the Data tab has converted second before opening a run"]
        errors.clear()

        gate.open()
        qtbot.waitUntil(lambda: data.idle, timeout=WAIT_MS)
        assert state.converting_layers == () and train.train_button.isEnabled()
        assert train.open_button.isEnabled() and train.open_button.toolTip() == ""
        # the last status (the refused Open run's reason) stays; the wait line is gone
        assert train.status_label.text() == (
            "wait until the Data tab has converted second before opening a run"
        )
        assert state.stack_layers == ("first", "second") and errors == []
    finally:
        train.shutdown()
        data.shutdown()


def test_results_of_replaced_windows_are_not_written(
    make_napari_viewer, qtbot, monkeypatch, errors
):
    """The windows are rebuilt (a conversion finished) while the run is evaluated."""
    state = tiny_state(epochs=1)
    panel = TrainingPanel(make_napari_viewer(), state)
    entered, release = threading.Event(), threading.Event()
    evaluate = training_runs_module._evaluate_model

    def held_evaluation(*args):
        entered.set()
        release.wait(20)
        return (yield from evaluate(*args))

    monkeypatch.setattr(training_runs_module, "_evaluate_model", held_evaluation)
    panel.train_button.click()
    qtbot.waitUntil(entered.is_set, timeout=WAIT_MS)
    trained_on = panel.trained_run.dataset
    state.rebuild_dataset()
    assert state.dataset is not None and state.dataset is not trained_on
    release.set()
    qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)

    assert state.latents is None and state.report is None
    assert state.model_version == 1  # the weights are final all the same
    assert "windows changed" in panel.status_label.text()
    assert errors == []
    panel.shutdown()


# ------------------------------------------------------------------- 2. torch thread counts
def test_decodes_never_change_torchs_thread_count(make_napari_viewer, qtbot, model, monkeypatch):
    """Torch's thread count is the user's: neither runner decodes nor inline ones set it."""
    calls = []
    set_num_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or set_num_threads(n))
    main_threads = torch.get_num_threads()
    viewer = make_napari_viewer()
    for inline_max_s in (0.0, 10.0):  # every decode in the runner, then every one inline
        panel = LatentPanel(
            viewer, latent_state(model), inline_max_s=inline_max_s, drag_inline_max_s=inline_max_s
        )
        qtbot.waitUntil(
            lambda: panel.idle and _layers.DECODED_LAYER in viewer.layers, timeout=WAIT_MS
        )
        slider = panel.sliders[0]
        for value in np.linspace(slider.minimum(), slider.maximum(), 3):
            slider.setValue(float(value))
            qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
        assert panel.decoder.jobs_run + panel.inline_decodes >= 3
        panel.shutdown()
    assert calls == [] and torch.get_num_threads() == main_threads


def test_a_decode_leaves_the_threads_training_asked_for(
    make_napari_viewer, qtbot, model, monkeypatch, errors
):
    """With a process-wide thread count (simulated), a decode running while training starts
    must neither change the training's count nor leave a stale one behind."""
    if QThreadPool.globalInstance().maxThreadCount() < 2:
        pytest.skip("the decoder and the training need two pool threads")
    count = {"threads": 4}  # one count for every thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: count["threads"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: count.__setitem__("threads", n))
    monkeypatch.setattr(training_panel_module, "gui_torch_threads", lambda device: 2)
    decoding, release = threading.Event(), threading.Event()
    snap = ConvAutoEncoder3d.phase_labels

    def held_snap(self, output):
        decoding.set()
        release.wait(20)
        return snap(self, output)

    monkeypatch.setattr(ConvAutoEncoder3d, "phase_labels", held_snap)
    seen, started, decoded = [], threading.Event(), threading.Event()
    train = core.train

    def recording_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        started.set()
        decoded.wait(20)  # the decode ends while this training runs
        seen.append(torch.get_num_threads())
        return (yield from train(*args, **kwargs))

    monkeypatch.setattr(core, "train", recording_train)
    viewer = make_napari_viewer()
    latent = LatentPanel(viewer, latent_state(model), inline_max_s=0.0)
    training = TrainingPanel(viewer, tiny_state(epochs=1))
    try:
        qtbot.waitUntil(decoding.is_set, timeout=WAIT_MS)  # the first decode, held
        training.train_button.click()
        qtbot.waitUntil(started.is_set, timeout=WAIT_MS)
        release.set()
        qtbot.waitUntil(lambda: latent.idle, timeout=WAIT_MS)
        decoded.set()
        qtbot.waitUntil(lambda: not training.is_busy, timeout=WAIT_MS)
    finally:
        release.set()
        decoded.set()
        training.shutdown()
        latent.shutdown()
    assert errors == []
    assert seen == [2, 2]  # what training asked for, before and after the decode ended
    assert count["threads"] == 4  # restored after training, not left at a decoder's count


# --------------------------------------------------------------- 3. no inline while training
def test_no_inline_decodes_while_training(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    panel = settled_panel(viewer, qtbot, model, inline_max_s=10.0)
    assert panel.decodes_inline
    panel.state.training = True
    assert not panel.decodes_inline
    slider = panel.sliders[0]
    slider.setValue(slider.maximum())
    assert panel.inline_decodes == 0 and not panel.idle  # in the runner
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
    assert panel.decoder.jobs_run == 2
    panel.state.training = False
    assert panel.decodes_inline
    panel.shutdown()


# ------------------------------------------------------------ 4. stale result of a new model
def test_a_replaced_models_late_result_is_not_shown(make_napari_viewer, qtbot, model, monkeypatch):
    viewer = make_napari_viewer()
    # The chained runner delivers every finished result (the thread runner's mailbox may let
    # the new model's result replace the old one before the GUI takes it: nothing to test).
    panel = settled_panel(viewer, qtbot, model, inline_max_s=0.0, runner="chained")
    state = panel.state
    entered, release = threading.Event(), threading.Event()

    def held_decode(*args):
        entered.set()
        release.wait(20)
        return decode_latent(*args)

    monkeypatch.setattr(latent_panel_module, "decode_latent", held_decode)
    slider = panel.sliders[0]
    slider.setValue(slider.maximum())  # decoded with the old model, held up
    qtbot.waitUntil(entered.is_set, timeout=WAIT_MS)
    monkeypatch.setattr(latent_panel_module, "decode_latent", decode_latent)
    core.seed_everything(1)
    new_model = core.ConvAutoEncoder3d(
        window_length=4, crop=16, conv_layers=3, hidden=16, latent_dim=3
    ).eval()  # same latent size
    shown = []
    panel.decoded.connect(shown.append)
    state.model = new_model
    state.latents = core.encode_windows(new_model, state.dataset)
    state.model_version += 1
    release.set()
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)

    assert panel.decoder.jobs_run == 3 and panel.decoder.counts.superseded == 0
    # the old model's result arrived …
    assert len(shown) == 1  # … and was not shown
    expected = decode_directly(new_model, panel.latent_vector())
    np.testing.assert_array_equal(shown[0].labels, expected)
    np.testing.assert_array_equal(viewer.layers[_layers.DECODED_LAYER].data, expected)
    panel.shutdown()


# -------------------------------------------------------------- 5. undo history and in place
def test_in_place_update_resets_the_undo_history(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = _layers.add_phase_labels(
        viewer, np.zeros((4, 16, 16), np.uint8), _layers.DECODED_LAYER, 0.4
    )
    layer.paint((1, 8, 8), 2, refresh=True)
    new = np.ones((4, 16, 16), np.uint8)
    assert update_labels_in_place(layer, new)
    layer.undo()  # nothing to undo: the old content's paint is not written into the new one
    np.testing.assert_array_equal(layer.data, new)


# ------------------------------------------------------------ 6. rename during a conversion
def test_a_rename_does_not_restart_a_conversion(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.setattr(data_panel_module, "SYNC_CONVERT_MAX_VOXELS", 100)
    state = CAEState(window=WINDOW)
    viewer = make_napari_viewer()
    data = DataPanel(viewer, state)
    try:
        gate = Gate(monkeypatch)
        layer = add_electrode(viewer, name="before")
        job = entry_named(data, "before")._job
        layer.name = "after"
        entry = entry_named(data, "after")
        assert entry._job is job and state.converting_layers == ("after",)
        gate.open()
        qtbot.waitUntil(lambda: data.idle, timeout=WAIT_MS)

        assert [name for _, name, _ in gate.calls] == ["before"]  # converted once
        assert entry.usable and entry.stack.name == "after"
        assert state.stack_layers == ("after",) and state.stacks[0].labels is layer.data
        assert state.converting_layers == ()
    finally:
        data.shutdown()
