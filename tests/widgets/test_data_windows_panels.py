"""Data and Windows panels: layer picking, phase mapping, window counts and the outline layer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils.colormaps.standardize_color import transform_color

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets.data_panel import DataPanel
from napari_electrode_cae._widgets.state import CAEState
from napari_electrode_cae._widgets.windows_panel import SIDE_COLORS, WindowsPanel, box_edges
from tests.conftest import make_stack

SHAPE = (12, 32, 32)


def _make_panels(viewer, qtbot):
    state = CAEState(window=core.WindowSpec(length=4, stride=2, crop=16))
    data_panel = DataPanel(viewer, state)
    windows_panel = WindowsPanel(viewer, state)
    qtbot.addWidget(data_panel)
    qtbot.addWidget(windows_panel)
    return viewer, state, data_panel, windows_panel


@pytest.fixture
def panels(qtbot):
    """Data and Windows panels sharing one state, on a canvas-less ViewerModel (fast: the
    panels only use the viewer's layer list, dims and add_* methods)."""
    made = _make_panels(ViewerModel(), qtbot)
    yield made
    made[3].shutdown()
    made[2].shutdown()


@pytest.fixture
def viewer_panels(make_napari_viewer, qtbot):
    """The same panels on a real napari viewer (rendering, workers)."""
    made = _make_panels(make_napari_viewer(), qtbot)
    yield made
    made[3].shutdown()
    made[2].shutdown()


def add_electrode(viewer, preset="CAL", seed=0, shape=SHAPE):
    stack = core.generate_electrode(shape, preset=preset, seed=seed)
    return viewer.add_labels(stack.labels, **_layers.labels_layer_kwargs(stack))


def entry_named(data_panel, name):
    return next(e for e in data_panel.entries if e.layer.name == name)


def expected_windows(shape, length, stride, crop, step=None):
    z, y, x = shape
    step = step or crop
    tiles = ((y - crop) // step + 1) * ((x - crop) // step + 1)
    return ((z - length) // stride + 1) * tiles


# ------------------------------------------------------------------------------ Data panel


def test_added_electrode_layers_are_checked_and_become_stacks(panels):
    viewer, state, data_panel, _ = panels
    cal = add_electrode(viewer, "CAL", seed=0)
    uncal = add_electrode(viewer, "UNCAL", seed=1)
    assert [e.use for e in data_panel.entries] == [True, True]
    assert state.stack_layers == (cal.name, uncal.name)
    assert [s.calendered for s in state.stacks] == [True, False]
    # The plugin's own uint8 phase-id layers are used without a copy.
    assert state.stacks[0].labels is cal.data
    assert np.shares_memory(state.stacks[1].labels, uncal.data)
    assert state.dataset is not None and len(state.dataset.stacks) == 2
    fractions = data_panel.table.item(0, 3).text()
    assert fractions.count("/") == 2


def test_unchecking_and_removing_layers_updates_state(panels):
    viewer, state, data_panel, _ = panels
    cal = add_electrode(viewer, "CAL", seed=0)
    uncal = add_electrode(viewer, "UNCAL", seed=1)
    data_panel.set_used(cal.name, False)
    assert state.stack_layers == (uncal.name,)
    viewer.layers.remove(uncal)
    assert state.stacks == () and state.dataset is None
    assert [e.layer.name for e in data_panel.entries] == [cal.name]


def test_tag_combo_writes_metadata_and_stack_tag(panels):
    viewer, state, data_panel, _ = panels
    layer = add_electrode(viewer, "CAL")
    combo = data_panel.table.cellWidget(0, 1)
    assert combo.currentText() == "CAL"
    combo.setCurrentText("UNCAL")
    assert layer.metadata[_layers.METADATA_KEY]["calendered"] is False
    assert state.stacks[0].calendered is False
    assert state.stacks[0].labels is layer.data  # no re-conversion for a tag change
    combo.setCurrentText("?")
    assert state.stacks[0].calendered is None


def test_renaming_a_layer_renames_its_stack(panels):
    viewer, state, _, _ = panels
    layer = add_electrode(viewer)
    source = state.stacks[0].source  # the generator's provenance, kept by a rename
    layer.name = "my electrode"
    assert state.stack_layers == ("my electrode",)
    assert state.stacks[0].name == "my electrode" and state.stacks[0].source == source
    # a stack known only as a layer is named after it, and a rename renames that too
    plain = viewer.add_labels(make_stack(SHAPE, seed=3).labels, name="drawn")
    assert state.stacks[1].source == "layer:drawn"
    plain.name = "drawn by hand"
    assert state.stacks[1].source == "layer:drawn by hand"


def test_image_layer_with_grey_values_is_mapped_and_can_be_overridden(panels):
    viewer, state, data_panel, _ = panels
    ids = make_stack(SHAPE).labels
    stored = np.array([0, 170, 85], dtype=np.uint8)[ids]  # CBD stored as 170, active as 85
    before = stored.copy()
    layer = viewer.add_image(stored, name="grey 0/85/170")
    entry = entry_named(data_panel, layer.name)
    assert entry.error == "" and not entry.use  # Image layers are not checked by default
    inferred = entry.converted.phase_mapping
    assert inferred[0] == "pore" and set(inferred) == {0, 85, 170}
    assert core.describe_phase_mapping(inferred) in data_panel.table.item(0, 4).text()

    data_panel.set_used(layer.name, True)
    data_panel.select_layer(layer.name)
    data_panel.mapping_edit.setText("0=pore,85=active,170=cbd")
    data_panel.apply_mapping_button.click()
    stack = state.stacks[0]
    assert stack.phase_mapping == {0: "pore", 85: "active", 170: "cbd"}
    np.testing.assert_array_equal(stack.labels, ids)
    np.testing.assert_array_equal(layer.data, before)

    data_panel.mapping_edit.setText("0=pore,85=active")  # misses 170: an error, layer unused
    data_panel.apply_mapping_button.click()
    assert "170" in entry.error and state.stacks == ()
    data_panel.auto_mapping_button.click()
    assert entry.error == "" and entry.override is None and len(state.stacks) == 1


def test_bad_mapping_text_shows_error_without_changing_layer(panels):
    viewer, state, data_panel, _ = panels
    layer = add_electrode(viewer)
    data_panel.select_layer(layer.name)
    data_panel.mapping_edit.setText("0=pore,1=gold")
    data_panel.apply_mapping_button.click()
    assert "gold" in data_panel.details_label.text()
    assert entry_named(data_panel, layer.name).override is None
    assert len(state.stacks) == 1


def test_float_grey_levels_and_2d_layers_are_refused(panels):
    viewer, state, data_panel, _ = panels
    grey = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    before = grey.copy()
    grey_layer = viewer.add_image(grey, name="grey levels")
    flat_layer = viewer.add_labels(np.zeros((32, 32), dtype=np.uint8), name="flat")
    for layer in (grey_layer, flat_layer):
        entry = entry_named(data_panel, layer.name)
        assert entry.error and not entry.use and entry.stack is None
    assert "grey levels" in entry_named(data_panel, "grey levels").error
    assert "3D" in entry_named(data_panel, "flat").error
    row = [e.layer.name for e in data_panel.entries].index("grey levels")
    assert "⚠" in data_panel.table.item(row, 3).text()  # spans the fractions and mapping cells
    assert data_panel.table.columnSpan(row, 3) == 2
    data_panel.set_used("grey levels", True)  # not checkable
    assert state.stacks == ()
    np.testing.assert_array_equal(grey_layer.data, before)


def test_load_paths_reads_tiff_in_worker_and_adds_layer(viewer_panels, qtbot, tmp_path):
    viewer, state, data_panel, _ = viewer_panels
    stack = core.generate_electrode(SHAPE, preset="UNCAL", seed=3)
    path = core.write_stack(tmp_path / "electrode_uncal.tif", stack, values=(0, 85, 170))
    missing = tmp_path / "missing.tif"
    worker = data_panel.load_paths([str(path), str(missing)])
    with qtbot.waitSignal(worker.finished, timeout=20000):
        pass
    qtbot.waitUntil(lambda: not data_panel._workers, timeout=5000)
    assert "missing.tif" in data_panel.load_status_label.text()
    layer = viewer.layers["electrode_uncal"]
    np.testing.assert_array_equal(layer.data, stack.labels)
    assert state.stack_layers == ("electrode_uncal",)
    assert state.stacks[0].calendered is False
    assert state.stacks[0].labels is layer.data


def test_shutdown_waits_for_a_loading_worker(viewer_panels, tmp_path):
    viewer, _, data_panel, _ = viewer_panels
    paths = [core.write_stack(tmp_path / f"s{i}.npy", make_stack(SHAPE, seed=i)) for i in range(3)]
    worker = data_panel.load_paths([str(p) for p in paths])
    data_panel.shutdown()
    assert not data_panel._workers and not worker.is_running
    n_layers = len(viewer.layers)
    data_panel.shutdown()  # idempotent; nothing is added once shut down
    assert len(viewer.layers) == n_layers


# ---------------------------------------------------------------------------- Windows panel


def test_window_length_and_stride_set_the_count(panels):
    viewer, state, _, windows_panel = panels
    add_electrode(viewer)
    windows_panel.crop_spin.setValue(16)
    windows_panel.tile_stride_spin.setValue(0)
    windows_panel.length_spin.setValue(5)
    windows_panel.stride_spin.setValue(3)
    assert state.window == core.WindowSpec(length=5, stride=3, crop=16)
    n = expected_windows(SHAPE, 5, 3, 16)
    assert len(state.dataset) == n == 3 * 4
    assert windows_panel.summary_label.text().startswith(f"{n} mini microstructures")
    windows_panel.tile_stride_spin.setValue(8)
    assert len(state.dataset) == expected_windows(SHAPE, 5, 3, 16, step=8)
    assert windows_panel.preset_combo.currentText() == "custom"


def test_stride_equals_length_locks_the_stride(panels):
    viewer, state, _, windows_panel = panels
    add_electrode(viewer)
    windows_panel.stride_equals_length_check.setChecked(True)
    windows_panel.length_spin.setValue(3)
    assert not windows_panel.stride_spin.isEnabled()
    assert windows_panel.stride_spin.value() == 3
    assert state.window.stride == 3
    assert len(state.dataset) == expected_windows(SHAPE, 3, 3, state.window.crop)


def test_too_long_window_and_too_big_crop_show_errors(panels):
    viewer, state, _, windows_panel = panels
    add_electrode(viewer)
    windows_panel.length_spin.setValue(20)
    assert state.dataset is None
    assert "exceeds" in windows_panel.summary_label.text()
    assert "exceeds" in state.window_error
    windows_panel.length_spin.setValue(4)
    assert state.dataset is not None
    windows_panel.crop_spin.setValue(64)
    assert state.dataset is None and "crop 64" in windows_panel.summary_label.text()
    assert not windows_panel.window_spin.isEnabled()


def test_blocked_split_reports_dropped_windows(panels):
    viewer, state, _, windows_panel = panels
    add_electrode(viewer)
    windows_panel.stride_spin.setValue(1)
    windows_panel.split_combo.setCurrentIndex(1)
    assert state.split_mode == "blocked"
    n = len(state.dataset)
    dropped = n - len(state.split.train) - len(state.split.val)
    assert dropped > 0
    assert f"blocked split drops {dropped} overlapping" in windows_panel.summary_label.text()


def test_preset_combo_fills_window_fields(panels):
    _, state, _, windows_panel = panels
    windows_panel.preset_combo.setCurrentText("paper")
    assert state.window == core.get_preset("paper").window
    assert windows_panel.length_spin.value() == 24
    windows_panel.preset_combo.setCurrentText("quick")
    assert state.window == core.get_preset("quick").window


def test_selected_window_moves_the_outline_and_colours_it(viewer_panels):
    viewer, state, _, windows_panel = viewer_panels
    layer = add_electrode(viewer)
    windows_panel.stride_spin.setValue(4)  # l = 4, s = 4, crop 16: 3 × 4 windows
    outline = viewer.layers[_layers.WINDOW_OUTLINE_LAYER]
    assert viewer.layers.selection.active is layer  # adding the outline keeps the selection
    np.testing.assert_allclose(outline.scale, layer.scale)

    index = len(state.dataset) - 1
    windows_panel.window_spin.setValue(index)
    assert state.selected_window == index
    assert viewer.layers[_layers.WINDOW_OUTLINE_LAYER] is outline  # updated, not re-created
    _, z, y, x = state.dataset.origin(index)
    # 2D view: one rectangle per Z slice of the window, framing its (y, x) tile.
    assert len(outline.data) == 4
    assert sorted({float(r[0, 0]) for r in outline.data}) == [z, z + 1, z + 2, z + 3]
    assert outline.data[0][:, 1].min() == y - 0.5 and outline.data[0][:, 2].max() == x + 15.5
    assert f"({layer.name}, {z}, {y}, {x})" in windows_panel.origin_label.text()
    # the viewer moved to the window's middle slice
    assert round(viewer.dims.point[0] / layer.scale[0]) == z + 1

    viewer.dims.ndisplay = 3
    assert len(outline.data) == 12
    corners = np.concatenate(outline.data)
    np.testing.assert_allclose(corners.min(axis=0), np.array([z, y, x]) - 0.5)
    np.testing.assert_allclose(corners.max(axis=0), np.array([z + 4, y + 16, x + 16]) - 0.5)

    for side, indices in (("train", state.split.train), ("val", state.split.val)):
        state.selected_window = int(indices[0])
        assert windows_panel.window_spin.value() == int(indices[0])
        expected = transform_color(SIDE_COLORS[side])[0]
        np.testing.assert_allclose(outline.edge_color, np.tile(expected, (12, 1)))


def test_box_edges_are_the_12_edges_of_the_box():
    edges = box_edges((2, 0, 4), (3, 5, 5))
    assert len(edges) == 12
    lengths = sorted(float(np.linalg.norm(e[1] - e[0])) for e in edges)
    assert lengths == [3.0] * 4 + [5.0] * 8


def test_windows_summary_says_a_random_split_of_overlapping_windows_leaks():
    from napari_electrode_cae._widgets.windows_panel import dataset_summary

    stack = make_stack((12, 16, 16))
    overlapping = core.WindowDataset([stack], core.WindowSpec(4, 2, crop=16))
    train, val = core.split(overlapping, 0.25, 0, "random")
    assert "random split leaks" in dataset_summary(overlapping, train, val, "random")
    train, val = core.split(overlapping, 0.25, 0, "blocked")
    assert "leaks" not in dataset_summary(overlapping, train, val, "blocked")
    disjoint = core.WindowDataset([stack], core.WindowSpec(4, 4, crop=16))
    train, val = core.split(disjoint, 0.34, 0, "random")
    assert "leaks" not in dataset_summary(disjoint, train, val, "random")
