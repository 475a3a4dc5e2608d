"""What keeps adding the result layers cheap: layers updated in place, one GC run per build."""

import numpy as np

from napari_electrode_cae import _layers


def test_updating_a_layer_of_the_same_shape_keeps_the_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = np.zeros((4, 16, 16), np.uint8)
    layer = _layers.add_phase_labels(viewer, labels, "window: original", 0.4)
    again = _layers.add_phase_labels(
        viewer, np.ones((4, 16, 16), np.uint8), "window: original", 0.4
    )
    assert again is layer and len(viewer.layers) == 1
    assert int(layer.data.max()) == 1


def test_first_results_collect_garbage_in_a_turn_of_their_own(
    make_napari_viewer, qtbot, monkeypatch
):
    """A full collection runs once before the window layers are made (not amid them), not
    again for a later result that only replaces the layers' data, and again before a layer
    has to be made anew."""
    import gc
    from types import SimpleNamespace

    from napari_electrode_cae import core
    from napari_electrode_cae._widgets import results_panel
    from napari_electrode_cae._widgets.results_panel import ResultsPanel
    from napari_electrode_cae._widgets.state import CAEState
    from tests.conftest import make_stack

    stack = make_stack((12, 32, 32), seed=0, name="tiny")
    viewer = make_napari_viewer()
    viewer.add_labels(stack.labels, name=stack.name)
    state = CAEState()
    state.stacks, state.stack_layers = (stack,), (stack.name,)
    state.window = core.WindowSpec(length=4, stride=4, crop=16)
    state.rebuild_dataset()
    core.seed_everything(0)
    panel = ResultsPanel(viewer, state)
    qtbot.addWidget(panel)
    collections = []
    real_collect = gc.collect

    def collect(*args):
        collections.append((len(viewer.layers), panel._steps.steps_run))
        return real_collect(*args)

    # the panel's own collections (napari collects too, when a layer is removed)
    monkeypatch.setattr(results_panel, "gc", SimpleNamespace(collect=collect))
    turns = []
    real_step = panel._apply_step
    monkeypatch.setattr(
        panel,
        "_apply_step",
        lambda: turns.append((len(collections), len(viewer.layers))) or real_step(),
    )
    panel._steps._step = panel._apply_step
    state.model = core.ConvAutoEncoder3d(4, 16, 3, 8, 2).eval()
    state.model_version += 1
    qtbot.waitUntil(
        lambda: panel.idle and _layers.RECONSTRUCTION_LAYER in viewer.layers, timeout=20_000
    )
    assert len(collections) == 1
    layers_then, _ = collections[0]
    assert layers_then == 1  # before any window layer
    # the collection's turn made no layer; the next turn made the first one
    first = next(i for i, (n, _) in enumerate(turns) if n == 1)
    assert turns[first - 1] == (0, 1) and turns[first] == (1, 1) and turns[first + 1] == (1, 2)

    panel.window_spin.setValue(1)  # another window: the layers exist, only their data change
    qtbot.waitUntil(lambda: panel.idle and panel._last_result.index == 1, timeout=20_000)
    assert len(collections) == 1

    viewer.layers.remove(_layers.ORIGINAL_LAYER)  # the user deletes one: the next result
    panel.window_spin.setValue(2)  # makes it again, after a collection of its own
    qtbot.waitUntil(lambda: panel.idle and _layers.ORIGINAL_LAYER in viewer.layers, timeout=20_000)
    assert len(collections) == 2
    panel.shutdown()
