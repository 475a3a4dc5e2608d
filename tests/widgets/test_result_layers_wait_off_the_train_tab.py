"""Issue 18: while the Train tab is shown, no window layers pile up over the stack; they are
made once the user opens another tab (Results)."""

from __future__ import annotations

from napari_electrode_cae import _layers
from napari_electrode_cae._widgets.main_widget import ElectrodeCAEWidget

from .test_live_decode_inline import (
    make_state,
    model,  # noqa: F401 (the shared module-scoped fixture)
)

WAIT_MS = 20_000
RESULT_LAYERS = (_layers.ORIGINAL_LAYER, _layers.RECONSTRUCTION_LAYER, _layers.DECODED_LAYER)


def final_model(widget, model):  # noqa: F811 (the fixture)
    """What the end of a training does to the shared state: a model and its version bump."""
    state = make_state(model)
    for name in ("stacks", "stack_layers", "window", "val_fraction"):
        setattr(widget.state, name, getattr(state, name))
    widget.state.rebuild_dataset()
    widget.state.model = model
    widget.state.latents = state.latents
    widget.state.model_version += 1


def test_result_layers_wait_while_the_train_tab_is_shown(make_napari_viewer, qtbot, model):  # noqa: F811
    viewer = make_napari_viewer()
    widget = ElectrodeCAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        widget.tabs.setCurrentWidget(widget.training_panel)
        final_model(widget, model)
        qtbot.wait(1500)  # the reconstruction and the first decode are done meanwhile
        assert not any(name in viewer.layers for name in RESULT_LAYERS)
        assert not viewer.grid.enabled
        widget.tabs.setCurrentWidget(widget.results_panel)
        qtbot.waitUntil(
            lambda: (
                all(name in viewer.layers for name in RESULT_LAYERS) and widget.results_panel.idle
            ),
            timeout=WAIT_MS,
        )
        assert viewer.grid.enabled  # side by side, as when results arrive on that tab
    finally:
        widget.shutdown()


def test_result_layers_are_made_at_once_on_other_tabs(make_napari_viewer, qtbot, model):  # noqa: F811
    viewer = make_napari_viewer()
    widget = ElectrodeCAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        widget.tabs.setCurrentWidget(widget.training_panel)
        widget.tabs.setCurrentWidget(widget.windows_panel)  # left the Train tab: released
        final_model(widget, model)
        qtbot.waitUntil(
            lambda: all(name in viewer.layers for name in RESULT_LAYERS), timeout=WAIT_MS
        )
    finally:
        widget.shutdown()


def test_a_held_turn_queue_runs_nothing_until_released(qtbot):
    from qtpy.QtCore import QObject

    from napari_electrode_cae._widgets.turns import TurnQueue

    owner = QObject()
    queue, ran = TurnQueue(owner), []
    queue.hold()
    queue.add(lambda: ran.append("first") or False)
    queue.add(lambda: ran.append("second") or False)
    qtbot.wait(50)
    assert ran == [] and queue.held
    queue.release()
    qtbot.waitUntil(lambda: len(ran) == 2, timeout=WAIT_MS)
    assert ran == ["first", "second"] and not queue.held  # in order, one per turn
