"""The docked widget is a good guest in someone else's napari: no process-wide state changed, no
private napari attributes used (napari warns about those when a plugin widget touches them)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_electrode_cae
from napari_electrode_cae import _layers
from napari_electrode_cae._launch import PLUGIN_NAME, WIDGET_NAME, launch

from .test_live_decode_inline import (
    make_state,
    model,  # noqa: F401 (the shared module-scoped fixture)
)

WAIT_MS = 20_000
PLUGIN_DIR = str(Path(napari_electrode_cae.__file__).parent)
NAPARI_DIR = str(Path(__import__("napari").__file__).parent)


@pytest.fixture
def no_freeze():
    """Start and end with nothing frozen (whatever a failing test left frozen is given back)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def docked_from_plugins_menu(viewer):
    """What napari's Plugins menu does: the widget gets napari's public-only viewer proxy."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    return widget


def test_docking_from_the_plugins_menu_changes_no_process_wide_state(
    make_napari_viewer, qtbot, no_freeze
):
    threads = torch.get_num_threads()
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="someone else's layer")
    widget = docked_from_plugins_menu(viewer)
    qtbot.wait(100)  # turns of the event loop after docking: nothing deferred either
    assert gc.get_freeze_count() == 0
    assert torch.get_num_threads() == threads
    widget.shutdown()
    assert gc.get_freeze_count() == 0 and torch.get_num_threads() == threads


def test_only_the_gui_launcher_freezes_the_garbage_collector(qtbot, no_freeze):
    viewer, widget = launch(sample=False, show=False)
    try:
        qtbot.wait(50)
        assert gc.get_freeze_count() == 0
    finally:
        widget.shutdown()
        viewer.close()
    viewer, widget = launch(sample=False, show=False, freeze_gc=True)  # electrode-cae gui
    try:
        assert gc.get_freeze_count() > 0
    finally:
        widget.shutdown()
        viewer.close()


def napari_warnings(caught) -> list[str]:
    """Future/deprecation warnings raised from the plugin's code or by napari itself."""
    return [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
        and (w.filename.startswith(PLUGIN_DIR) or w.filename.startswith(NAPARI_DIR))
    ]


def test_a_latent_slider_decode_raises_no_napari_deprecation_warnings(
    make_napari_viewer, qtbot, model
):  # noqa: F811 (the fixture)
    viewer = make_napari_viewer()
    widget = docked_from_plugins_menu(viewer)
    panel = widget.latent_panel
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = make_state(model)
            for name in ("stacks", "stack_layers", "window", "val_fraction", "model", "latents"):
                setattr(widget.state, name, getattr(state, name))
            widget.state.rebuild_dataset()
            widget.state.latents = state.latents
            widget.state.model_version += 1
            qtbot.waitUntil(
                lambda: panel.idle and _layers.DECODED_LAYER in viewer.layers, timeout=WAIT_MS
            )
            slider = panel.sliders[0]
            for value in (slider.maximum(), slider.minimum()):
                slider.setValue(float(value))  # inline or in the runner, as estimated
                qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)
        assert panel.decoder.jobs_run + panel.inline_decodes >= 3
        assert napari_warnings(caught) == []
    finally:
        widget.shutdown()
