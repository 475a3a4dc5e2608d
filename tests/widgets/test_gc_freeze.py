"""The docked widget keeps full GC runs off the session, and gives frozen layers back."""

import gc

import numpy as np
import pytest

from napari_electrode_cae._widgets import gc_freeze
from napari_electrode_cae._widgets.main_widget import ElectrodeCAEWidget


@pytest.fixture
def freezing(monkeypatch):
    monkeypatch.setattr(gc_freeze, "FREEZE_WHEN_DOCKED", True)
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()  # whatever a failing test left frozen


def _docked(viewer, qtbot):
    widget = ElectrodeCAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def test_freezes_after_docking_and_unfreezes_when_a_frozen_layer_is_removed(
        make_napari_viewer, qtbot, freezing):
    viewer = make_napari_viewer()
    before = viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="before")
    widget = _docked(viewer, qtbot)
    assert not widget.gc_freeze.frozen  # not inside the constructor: one turn later
    qtbot.waitUntil(lambda: widget.gc_freeze.frozen, timeout=5000)
    assert gc.get_freeze_count() > 0 and gc.is_tracked(before)

    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="after")
    viewer.layers.remove("after")  # made after the freeze: collected normally anyway
    assert widget.gc_freeze.frozen

    viewer.layers.remove(before)
    assert not widget.gc_freeze.frozen
    assert gc.get_freeze_count() == 0
    widget.shutdown()


def test_shutdown_unfreezes_and_a_second_apply_does_nothing(make_napari_viewer, qtbot, freezing):
    viewer = make_napari_viewer()
    widget = _docked(viewer, qtbot)
    qtbot.waitUntil(lambda: widget.gc_freeze.frozen, timeout=5000)
    assert widget.gc_freeze.apply() is False  # already frozen by this widget
    widget.shutdown()
    assert gc.get_freeze_count() == 0 and not widget.gc_freeze.frozen


def test_leaves_a_freeze_by_someone_else_alone(make_napari_viewer, qtbot, freezing):
    gc.freeze()  # as electrode-cae gui's launch() does before the event loop runs
    frozen = gc.get_freeze_count()
    viewer = make_napari_viewer()
    widget = _docked(viewer, qtbot)
    qtbot.wait(50)
    assert not widget.gc_freeze.frozen
    widget.shutdown()
    assert gc.get_freeze_count() > frozen // 2  # not unfrozen by the widget
    gc.unfreeze()


def test_disabled_widget_never_freezes(make_napari_viewer, qtbot, freezing):
    viewer = make_napari_viewer()
    widget = _docked(viewer, qtbot)
    widget.gc_freeze.enabled = False  # what launch(freeze_gc=False) does
    qtbot.wait(50)
    assert not widget.gc_freeze.frozen and gc.get_freeze_count() == 0
    widget.shutdown()


def test_suite_default_does_not_freeze(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = _docked(viewer, qtbot)
    qtbot.wait(50)
    assert gc.get_freeze_count() == 0
    widget.shutdown()
