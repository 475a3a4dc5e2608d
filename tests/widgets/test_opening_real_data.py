"""Opening a real electrode file: the phase mapping in the file's stored values, whichever reader
opened it, and a default-reader Image layer used in one click at the plugin's voxel size."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_electrode_cae import _layers, core
from napari_electrode_cae._reader import read_electrode_stacks
from napari_electrode_cae._widgets.data_panel import DataPanel
from napari_electrode_cae._widgets.state import CAEState
from tests.conftest import make_stack

SHAPE = (12, 32, 32)
#: Phase id -> value stored in the "real" file: CBD as 170, active material as 85.
STORED = np.array([0, 170, 85], dtype=np.uint8)
STORED_MAPPING = {0: "pore", 85: "active", 170: "cbd"}
MAPPING_TEXT = "0→pore, 85→active, 170→cbd"


@pytest.fixture
def real_file(tmp_path):
    """A plain multi-page TIFF (no plugin metadata) holding 0/85/170, and its phase ids."""
    ids = make_stack(SHAPE).labels
    path = tmp_path / "electrode.tif"
    tifffile.imwrite(path, STORED[ids])
    return path, ids


@pytest.fixture
def panel(qtbot):
    viewer = ViewerModel()
    state = CAEState(window=core.WindowSpec(length=4, stride=2, crop=16))
    data_panel = DataPanel(viewer, state)
    qtbot.addWidget(data_panel)
    yield viewer, state, data_panel
    data_panel.shutdown()


def entry_named(data_panel, name):
    return next(e for e in data_panel.entries if e.layer.name == name)


def open_with_plugin(viewer, path):
    """What ``open_with_plugin(viewer, path)`` does with the reader's data."""
    [(data, kwargs, kind)] = read_electrode_stacks(str(path))
    assert kind == "labels"
    return [viewer.add_labels(data, **kwargs)]


def open_with_napari(viewer, path):
    """What napari's own reader makes of the file: an Image layer at scale 1."""
    return [viewer.add_image(tifffile.imread(path), name=path.stem)]


def test_reader_opened_stack_shows_its_mapping_in_stored_values(panel, real_file):
    viewer, state, data_panel = panel
    path, ids = real_file
    [layer] = open_with_plugin(viewer, path)
    assert isinstance(layer, Labels)
    np.testing.assert_array_equal(layer.data, ids)  # phase ids in memory
    # the mapping the file was read with travels with the layer, in stored values
    assert layer.metadata[_layers.METADATA_KEY]["phase_mapping"] == STORED_MAPPING

    entry = entry_named(data_panel, layer.name)
    assert entry.use and entry.error == ""
    assert MAPPING_TEXT in data_panel.table.item(0, 4).text()
    assert "1→cbd" not in data_panel.table.item(0, 4).text()
    data_panel.select_layer(layer.name)
    assert data_panel.mapping_edit.text() == "0=pore,85=active,170=cbd"
    assert MAPPING_TEXT in data_panel.details_label.text()
    assert "as read" in data_panel.details_label.text()
    assert state.stacks[0].phase_mapping == STORED_MAPPING
    np.testing.assert_array_equal(state.stacks[0].labels, ids)


def test_override_in_stored_values_is_accepted_for_reader_opened_layer(panel, real_file):
    viewer, state, data_panel = panel
    path, ids = real_file
    [layer] = open_with_plugin(viewer, path)
    before = layer.data.copy()
    data_panel.select_layer(layer.name)

    # the README's override, typed on that layer: accepted, the stack stays in use
    data_panel.mapping_edit.setText("0=pore,85=active,170=cbd")
    data_panel.apply_mapping_button.click()
    entry = entry_named(data_panel, layer.name)
    assert entry.error == "" and entry.use
    assert state.stacks[0].phase_mapping == STORED_MAPPING
    np.testing.assert_array_equal(state.stacks[0].labels, ids)

    # another mapping in stored values swaps the phases of the stack, not of the layer
    data_panel.mapping_edit.setText("0=pore,85=cbd,170=active")
    data_panel.apply_mapping_button.click()
    swapped = np.array([0, 2, 1], dtype=np.uint8)[ids]
    assert entry.error == "" and state.stacks[0].phase_mapping == {
        0: "pore",
        85: "cbd",
        170: "active",
    }
    np.testing.assert_array_equal(state.stacks[0].labels, swapped)
    np.testing.assert_array_equal(layer.data, before)
    assert "colours still show" in data_panel.details_label.text()

    # a mapping that misses a stored value names that value, not a phase id
    data_panel.mapping_edit.setText("0=pore,85=active")
    data_panel.apply_mapping_button.click()
    assert "stored values 170 present" in entry.error
    assert "1, 2" not in entry.error and state.stacks == ()
    data_panel.auto_mapping_button.click()  # back to the mapping it was read with
    assert entry.error == "" and state.stacks[0].phase_mapping == STORED_MAPPING


def test_stored_value_mapping_travels_with_the_layer(panel, real_file, qtbot):
    viewer, _, data_panel = panel
    path, ids = real_file
    [layer] = open_with_plugin(viewer, path)
    # the layer handed to another viewer (as napari copies or saves layers) keeps its mapping
    other = ViewerModel()
    other_state = CAEState(window=core.WindowSpec(length=4, stride=2, crop=16))
    other_panel = DataPanel(other, other_state)
    qtbot.addWidget(other_panel)
    try:
        data, kwargs, kind = layer.as_layer_data_tuple()
        assert kind == "labels"
        other.add_labels(
            data, metadata=kwargs["metadata"], name=kwargs["name"], scale=kwargs["scale"]
        )
        assert other_state.stacks[0].phase_mapping == STORED_MAPPING
        other_panel.set_phase_mapping(layer.name, {0: "pore", 85: "active", 170: "cbd"})
        assert entry_named(other_panel, layer.name).error == ""
    finally:
        other_panel.shutdown()


def test_default_reader_image_is_used_in_one_click_at_the_plugins_voxel_size(panel, real_file):
    viewer, state, data_panel = panel
    path, ids = real_file
    plugin_stack = make_stack(SHAPE, seed=2, name="other")
    plugin_stack.voxel_size_um = 0.5
    _layers.add_stack_labels(viewer, plugin_stack)
    [image] = open_with_napari(viewer, path)  # grey values, scale 1
    assert isinstance(image, Image) and tuple(image.scale) == (1.0, 1.0, 1.0)
    image_entry = entry_named(data_panel, image.name)
    assert not image_entry.use
    button = data_panel.adopt_image_button
    assert not button.isHidden()
    assert image.name in button.text() and "0.5 µm" in button.text()

    button.click()
    adopted = viewer.layers[f"{image.name} (phases)"]
    assert isinstance(adopted, Labels)
    assert tuple(adopted.scale) == (0.5, 0.5, 0.5)
    assert tuple(image.scale) == (0.5, 0.5, 0.5) and not image.visible
    np.testing.assert_array_equal(image.data, STORED[ids])  # the image's data untouched
    assert state.stack_layers == ("other", adopted.name)
    stack = state.stacks[1]
    assert stack.voxel_size_um == 0.5 and stack.phase_mapping == STORED_MAPPING
    np.testing.assert_array_equal(stack.labels, ids)
    assert button.isHidden()  # nothing left to adopt
    # the adopted layer's mapping is shown, and overridden, in the file's stored values
    assert (
        MAPPING_TEXT
        in data_panel.table.item(
            data_panel.entries.index(entry_named(data_panel, adopted.name)), 4
        ).text()
    )


def test_default_reader_image_alone_takes_the_default_voxel_size(panel, real_file):
    viewer, state, data_panel = panel
    path, _ = real_file
    [image] = open_with_napari(viewer, path)
    assert "0.398 µm" in data_panel.adopt_image_button.text()
    adopted = data_panel.adopt_image(image.name)
    assert tuple(adopted.scale) == (0.398,) * 3 and state.stacks[0].voxel_size_um == 0.398
    with pytest.raises(KeyError, match="no Image layer"):
        data_panel.adopt_image("no such layer")


def test_grey_levels_image_is_not_offered(panel):
    viewer, _, data_panel = panel
    viewer.add_image(np.random.default_rng(0).random(SHAPE, dtype=np.float32), name="ct")
    assert entry_named(data_panel, "ct").error
    assert data_panel.adopt_image_button.isHidden()


def test_tag_hint_shows_while_a_used_stack_has_no_tag(panel, real_file):
    viewer, state, data_panel = panel
    path, _ = real_file
    [layer] = open_with_plugin(viewer, path)
    assert state.stacks[0].calendered is None
    assert not data_panel.tag_hint_label.isHidden()
    assert "calendered" in data_panel.tag_hint_label.toolTip()
    combo = data_panel.table.cellWidget(0, 1)
    assert "UNCAL = uncalendered" in combo.toolTip() and "--tag" in combo.toolTip()
    combo.setCurrentIndex(1)  # CAL
    assert state.stacks[0].calendered is True and data_panel.tag_hint_label.isHidden()


def test_table_fits_a_narrow_dock_with_legend(panel, real_file, qtbot):
    viewer, _, data_panel = panel
    path, _ = real_file
    open_with_plugin(viewer, path)
    open_with_napari(viewer, path)
    data_panel.resize(400, 600)
    data_panel.show()
    qtbot.waitExposed(data_panel)
    table = data_panel.table
    header = table.horizontalHeader()
    # every column inside the table's visible width: no sideways scrolling needed
    assert header.length() <= table.viewport().width()
    assert header.sectionSize(4) >= table.fontMetrics().horizontalAdvance("170→cbd")
    assert table.item(0, 2).text() == "12×32²"
    legend = data_panel.legend_label.text()
    assert all(word in legend for word in ("CBD", "active", "pore"))


def test_both_readers_in_a_real_viewer(make_napari_viewer, real_file, qtbot):
    """The same file through napari's open dialog path: the plugin's reader and napari's."""
    viewer = make_napari_viewer()
    state = CAEState(window=core.WindowSpec(length=4, stride=2, crop=16))
    data_panel = DataPanel(viewer, state)
    qtbot.addWidget(data_panel)
    try:
        path, ids = real_file
        [labels] = viewer.open(str(path), plugin="napari-electrode-cae")
        [image] = viewer.open(str(path), plugin="napari")
        assert isinstance(labels, Labels) and isinstance(image, Image)
        assert MAPPING_TEXT in data_panel.table.item(0, 4).text()
        data_panel.set_phase_mapping(labels.name, dict(STORED_MAPPING))
        assert entry_named(data_panel, labels.name).use
        adopted = data_panel.adopt_image(image.name)
        assert tuple(adopted.scale) == tuple(labels.scale) == (0.398,) * 3
        assert tuple(image.scale) == (0.398,) * 3
        assert [s.phase_mapping for s in state.stacks] == [STORED_MAPPING] * 2
        np.testing.assert_array_equal(state.stacks[1].labels, ids)
    finally:
        data_panel.shutdown()


@pytest.mark.parametrize("override", [None, {0: "pore", 85: "cbd", 170: "active"}])
def test_run_of_a_reader_opened_stack_reads_the_file_back(panel, real_file, tmp_path, override):
    """The run records the mapping in the file's stored values, so reopening it reads the
    file as it was used (recorded as phase ids 0/1/2, the file's 85/170 would not map)."""
    viewer, state, data_panel = panel
    path, ids = real_file
    [layer] = open_with_plugin(viewer, path)
    if override:
        data_panel.set_phase_mapping(layer.name, override)
    stack = state.stacks[0]
    assert stack.source == str(path)
    data = core.WindowDataset([stack], core.WindowSpec(length=4, stride=4, crop=16))
    model = core.ConvAutoEncoder3d(window_length=4, crop=16, conv_layers=3, hidden=4, latent_dim=2)
    run_dir = core.save_run(
        tmp_path / "run", model, data, core.TrainConfig(epochs=1), [0, 1], [2], latents=False
    )
    reread = core.load_run(run_dir).load_dataset().stacks[0]
    assert reread.phase_mapping == (override or STORED_MAPPING)
    np.testing.assert_array_equal(reread.labels, stack.labels)
