"""What keeps adding the result layers cheap: deferred Labels editing overlays, warm glyphs."""

import numpy as np
import pytest

from napari_electrode_cae import _layers
from napari_electrode_cae._widgets import glyph_warmup
from napari_electrode_cae._widgets.glyph_warmup import GlyphWarmUp, overlay_font
from napari_electrode_cae._widgets.main_widget import ElectrodeCAEWidget
from napari_electrode_cae._widgets.results_panel import WINDOW_LAYER_NAMES
from napari_electrode_cae._widgets.turns import TurnQueue


@pytest.fixture
def warm_up_on_create(monkeypatch):
    """The warm-up starts with the widget, as in the application (the suite turns it off)."""
    monkeypatch.setattr(glyph_warmup, "WARM_UP_WHEN_CREATED", True)


def edit_overlays(layer):
    """The layer's polygon and brush-stroke overlays; skip on a napari that has none."""
    overlays = getattr(layer, "_overlays", {})
    if not all(key in overlays for key in _layers.EDIT_OVERLAYS):
        pytest.skip("this napari has no Labels editing overlays")
    return overlays["polygon"], overlays["brush_stroke"]


def _vispy_overlays(viewer, layer):
    """The layer's overlays that have a vispy visual in the canvas."""
    canvas = viewer.window._qt_viewer.canvas
    return set(canvas._layer_overlay_to_visual.get(layer, {}))


def _labels(viewer, name="window: original"):
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[:, 4:12, 4:12] = 2
    return _layers.add_phase_labels(viewer, labels, name, 0.4)


@pytest.mark.parametrize("mode", ["polygon", "paint", "erase", "fill"])
def test_editing_overlays_are_built_when_an_editing_mode_is_chosen(make_napari_viewer, mode):
    viewer = make_napari_viewer()
    layer = _labels(viewer)
    polygon, stroke = edit_overlays(layer)
    assert not polygon.visible and not stroke.visible
    assert not {polygon, stroke} & _vispy_overlays(viewer, layer)  # not built at the insert

    layer.mode = "transform"
    layer.mode = "pick"
    layer.mode = "pan_zoom"
    assert not {polygon, stroke} & _vispy_overlays(viewer, layer)

    layer.mode = mode
    assert polygon.visible and stroke.visible
    assert {polygon, stroke} <= _vispy_overlays(viewer, layer)
    assert polygon.enabled == (mode == "polygon") and stroke.enabled == (mode == "paint")
    layer.mode = "pan_zoom"  # built for good: leaving the mode does not hide them again
    assert polygon.visible and stroke.visible


def test_a_layer_with_deferred_overlays_still_paints_and_draws_polygons(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = _labels(viewer)
    edit_overlays(layer)
    viewer.dims.set_point(0, 0)
    layer.mode = "paint"
    layer.selected_label = 1
    layer.brush_size = 1
    layer.paint((0, 2, 2), 1)
    assert layer.data[0, 2, 2] == 1
    layer.mode = "polygon"
    # the polygon tool's vispy overlay listens to the layer's mouse events
    visual = viewer.window._qt_viewer.canvas._layer_overlay_to_visual[layer][
        layer._overlays["polygon"]]
    assert visual._on_mouse_press in layer.mouse_drag_callbacks


def test_updating_a_layer_in_place_keeps_it_and_its_overlays(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = _labels(viewer)
    again = _layers.add_phase_labels(viewer, np.ones((4, 16, 16), np.uint8),
                                     "window: original", 0.4)
    assert again is layer and not edit_overlays(layer)[0].visible
    assert int(layer.data.max()) == 1


def test_defer_edit_overlays_leaves_other_layers_alone():
    class Bare:  # a napari without the private overlays dict
        pass

    _layers.defer_edit_overlays(Bare())  # no error

    class Plain:
        _overlays = {"layer_name": type("Overlay", (), {"visible": True})()}

    plain = Plain()
    _layers.defer_edit_overlays(plain)
    assert plain._overlays["layer_name"].visible


def test_a_layer_already_in_an_editing_mode_keeps_its_overlays(make_napari_viewer):
    from napari.layers import Labels

    viewer = make_napari_viewer()
    layer = Labels(np.zeros((4, 16, 16), np.uint8))
    polygon, stroke = edit_overlays(layer)
    layer.mode = "paint"
    _layers.defer_edit_overlays(layer)
    viewer.layers.append(layer)
    assert polygon.visible and stroke.visible
    assert {polygon, stroke} <= _vispy_overlays(viewer, layer)


def test_glyph_warmup_builds_the_window_names_glyphs_one_per_turn(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    font = overlay_font(viewer)
    assert font is not None
    text = "".join(WINDOW_LAYER_NAMES)
    new = [c for c in dict.fromkeys(text) if c not in font._glyphs]
    assert len(new) > 10  # a fresh viewer's font has built none of them yet
    queue = TurnQueue(viewer.window._qt_window)
    warmup = GlyphWarmUp(viewer, viewer.window._qt_window, queue)
    assert not warmup.pending  # the suite does not start it on creation
    warmup.start()
    assert warmup.pending and set(warmup.remaining) == set(text)
    built_per_turn = []
    while warmup.pending:
        before = len(font._glyphs)
        queue._run()  # one event-loop turn's worth
        built_per_turn.append(len(font._glyphs) - before)
    assert set(text) <= set(font._glyphs)
    assert sum(built_per_turn) == len(new) and max(built_per_turn) <= 1
    assert not warmup.remaining


def test_glyph_warmup_gives_up_without_a_shared_font(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    monkeypatch.setattr(glyph_warmup, "overlay_font", lambda viewer: None)
    queue = TurnQueue(viewer.window._qt_window)
    warmup = GlyphWarmUp(viewer, viewer.window._qt_window, queue, text="abc")
    warmup.start()
    qtbot.waitUntil(lambda: not warmup.pending, timeout=5000)
    assert warmup.remaining == []
    assert overlay_font(object()) is None  # no window: no font, no error


def test_docked_widget_warms_the_glyphs_up_and_stops_on_shutdown(make_napari_viewer, qtbot,
                                                                 warm_up_on_create):
    viewer = make_napari_viewer()
    widget = ElectrodeCAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: not widget.glyph_warmup.pending, timeout=10000)
    assert set("".join(WINDOW_LAYER_NAMES)) <= set(overlay_font(viewer)._glyphs)

    second = ElectrodeCAEWidget(viewer)
    second.glyph_warmup.remaining.append("€")
    assert second.glyph_warmup.pending
    second.shutdown()
    assert not second.glyph_warmup.pending
    widget.shutdown()


def test_first_results_collect_garbage_in_a_turn_of_their_own(make_napari_viewer, qtbot,
                                                              monkeypatch):
    """A full collection runs once before the window layers are made (not amid them), not
    again for a later result that only replaces the layers' data, and again before a layer
    has to be made anew."""
    import gc

    from napari_electrode_cae import core
    from types import SimpleNamespace

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
    monkeypatch.setattr(panel, "_apply_step", lambda: turns.append(
        (len(collections), len(viewer.layers))) or real_step())
    panel._steps._step = panel._apply_step
    state.model = core.ConvAutoEncoder3d(4, 16, 3, 8, 2).eval()
    state.model_version += 1
    qtbot.waitUntil(lambda: panel.idle and _layers.RECONSTRUCTION_LAYER in viewer.layers,
                    timeout=20_000)
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
    qtbot.waitUntil(lambda: panel.idle and _layers.ORIGINAL_LAYER in viewer.layers,
                    timeout=20_000)
    assert len(collections) == 2
    panel.shutdown()
