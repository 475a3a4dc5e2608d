"""napari finds the plugin and its reader, sample data and widget; `electrode-cae gui` sets up."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from napari_electrode_cae import _reader, core
from napari_electrode_cae._layers import METADATA_KEY
from napari_electrode_cae.core.stack import PHASE_COLORS
from tests.conftest import make_stack

PLUGIN = "napari-electrode-cae"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_KEYS = ("synthetic_CAL", "synthetic_UNCAL", "synthetic_both", "synthetic_REALISTIC")


# --------------------------------------------------------------------------------------------
# Manifest and packaging
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    return pm.get_manifest(PLUGIN)


def test_manifest_is_discovered_from_the_installed_package(manifest):
    from npe2 import PluginManifest

    import napari_electrode_cae

    assert manifest.display_name == "Electrode CAE"
    assert manifest.package_metadata.name == "napari-electrode-cae"
    # napari reads the package's napari.yaml (in a checkout a symlink to ../../napari.yaml,
    # in a wheel a copy), and it is the repository's top-level manifest
    packaged = Path(napari_electrode_cae.__file__).parent / "napari.yaml"
    assert packaged.is_file(), "the package must carry napari.yaml"
    assert PluginManifest.from_file(packaged).contributions == manifest.contributions
    if (ROOT / "napari.yaml").is_file():
        assert filecmp.cmp(packaged, ROOT / "napari.yaml", shallow=False)


def test_manifest_contributions(manifest):
    contributions = manifest.contributions
    commands = {c.id: c.python_name for c in contributions.commands}

    (reader,) = contributions.readers
    assert commands[reader.command] == "napari_electrode_cae._reader:napari_get_reader"
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff", "*.npy"}
    assert reader.accepts_directories

    samples = {s.key: s for s in contributions.sample_data}
    assert set(samples) == set(SAMPLE_KEYS)
    assert samples["synthetic_CAL"].display_name == "Synthetic calendered electrode (CAL)"
    assert samples["synthetic_UNCAL"].display_name == "Synthetic uncalendered electrode (UNCAL)"
    for sample in samples.values():
        assert commands[sample.command].startswith("napari_electrode_cae._sample_data:")

    (widget,) = contributions.widgets
    assert widget.display_name == "Electrode CAE"
    assert commands[widget.command] == "napari_electrode_cae._widgets:ElectrodeCAEWidget"


def test_manifest_python_names_resolve(manifest):
    """Every command points at an existing function or widget class."""
    import importlib

    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name


def test_napari_lists_the_plugin_for_tiff_npy_and_folders(tmp_path):
    from napari.plugins import _npe2

    for name in ("a.tif", "b.TIFF", "c.npy"):
        assert PLUGIN in _npe2.get_readers(str(tmp_path / name)), name
    assert PLUGIN not in _npe2.get_readers(str(tmp_path / "d.png"))


def test_reader_suffixes_match_core():
    assert set(_reader.READER_SUFFIXES) == {*core.io.TIFF_SUFFIXES, core.io.NPY_SUFFIX}
    assert set(_reader.SLICE_SUFFIXES) == set(core.io.TIFF_SUFFIXES)


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------
def _check_phase_layer(layer, voxel_size_um: float, calendered: bool | None) -> None:
    assert layer._type_string == "labels"
    assert layer.data.dtype == np.uint8 and layer.data.ndim == 3
    assert set(np.unique(layer.data).tolist()) <= {0, 1, 2}
    np.testing.assert_allclose(layer.scale, (voxel_size_um,) * 3)
    colormap = layer.colormap
    assert colormap.background_value == 0
    np.testing.assert_allclose(colormap.map(np.array([0], dtype=np.uint8))[0][3], 0.0)
    for phase in (1, 2):
        np.testing.assert_allclose(
            colormap.map(np.array([phase], dtype=np.uint8))[0], PHASE_COLORS[phase], atol=1e-6
        )
    meta = layer.metadata[METADATA_KEY]
    assert meta["calendered"] is calendered
    assert meta["voxel_size_um"] == pytest.approx(voxel_size_um)
    assert meta["phases"] == ["pore", "cbd", "active"]


def test_get_reader_accepts_stacks_and_refuses_other_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("not an electrode")
    (tmp_path / "empty").mkdir()
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(b"")
    (tmp_path / "slices").mkdir()
    (tmp_path / "slices" / "s0.TIF").write_bytes(b"")

    assert _reader.napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.napari_get_reader(str(tmp_path / "empty")) is None
    assert _reader.napari_get_reader(str(tmp_path / "pngs")) is None
    assert _reader.napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    for ok in ("x.tif", "x.TIFF", "x.npy", "slices"):
        assert callable(_reader.napari_get_reader(str(tmp_path / ok))), ok
    assert callable(_reader.napari_get_reader([str(tmp_path / "x.tif")]))


def test_reader_reads_a_tiff_written_by_write_stack(tmp_path):
    stack = make_stack(calendered=False)
    stack.voxel_size_um = 0.5
    path = core.write_stack(tmp_path / "electrode.tif", stack)

    reader = _reader.napari_get_reader(str(path))
    (layer_data,) = reader(str(path))
    data, kwargs, layer_type = layer_data
    assert layer_type == "labels"
    np.testing.assert_array_equal(data, stack.labels)
    assert kwargs["name"] == "electrode"
    assert kwargs["scale"] == (0.5, 0.5, 0.5)
    assert kwargs["metadata"][METADATA_KEY]["calendered"] is False
    assert kwargs["metadata"][METADATA_KEY]["source"] == str(path)


def test_viewer_opens_tiff_and_slice_folder_with_the_plugin(make_napari_viewer, tmp_path):
    import tifffile

    stack = make_stack(shape=(6, 16, 20))
    tiff = core.write_stack(tmp_path / "nmc_CAL.tif", stack)
    folder = tmp_path / "nmc_UNCAL_slices"
    folder.mkdir()
    stored = np.array([0, 170, 85], dtype=np.uint8)[stack.labels]  # active=85, CBD=170
    for z, image in enumerate(stored):
        tifffile.imwrite(folder / f"slice{z}.tif", image)

    viewer = make_napari_viewer()
    (from_tiff,) = viewer.open(str(tiff), plugin=PLUGIN)
    (from_folder,) = viewer.open(str(folder), plugin=PLUGIN)

    _check_phase_layer(from_tiff, core.DEFAULT_VOXEL_SIZE_UM, True)
    np.testing.assert_array_equal(from_tiff.data, stack.labels)
    assert from_tiff.name == "nmc_CAL"

    _check_phase_layer(from_folder, core.DEFAULT_VOXEL_SIZE_UM, False)
    assert from_folder.name == "nmc_UNCAL_slices"
    # the inferred mapping (CBD = least abundant non-pore value) recovers the phases
    np.testing.assert_array_equal(from_folder.data, stack.labels)
    assert from_folder.metadata[METADATA_KEY]["phase_mapping"] == {
        0: "pore",
        85: "active",
        170: "cbd",
    }


def test_viewer_opens_npy_with_the_plugin(make_napari_viewer, tmp_path):
    stack = make_stack(shape=(4, 8, 8))
    path = tmp_path / "raw.npy"
    np.save(path, stack.labels)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    _check_phase_layer(layer, core.DEFAULT_VOXEL_SIZE_UM, None)
    np.testing.assert_array_equal(layer.data, stack.labels)


def test_corrupt_tiff_raises_the_typed_error(make_napari_viewer, tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    reader = _reader.napari_get_reader(str(path))
    with pytest.raises(core.StackReadError, match="broken.tif"):
        reader(str(path))

    viewer = make_napari_viewer()
    with pytest.raises(core.StackReadError, match="broken.tif"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_gui_reader_error_shows_the_typed_message(make_napari_viewer, tmp_path):
    """What a user sees when the plugin is the reader for .tif (drag and drop, File > Open)."""
    from napari.errors import ReaderPluginError
    from napari.settings import get_settings

    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 64)
    viewer = make_napari_viewer()
    get_settings().plugins.extension2reader = {"*.tif": PLUGIN}
    with pytest.raises(ReaderPluginError) as info:
        viewer._open_or_raise_error([str(path)])
    assert isinstance(info.value.original_error, core.StackReadError)
    assert "StackReadError: " in str(info.value) and "broken.tif" in str(info.value)


def test_unrelated_text_file_is_not_claimed(make_napari_viewer, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    viewer = make_napari_viewer()
    with pytest.raises(ValueError, match="not a compatible reader"):
        viewer.open(str(path), plugin=PLUGIN)


# --------------------------------------------------------------------------------------------
# Sample data
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "tags"),
    [("synthetic_CAL", [True]), ("synthetic_UNCAL", [False]), ("synthetic_both", [True, False])],
)
def test_sample_data_opens_as_phase_labels(make_napari_viewer, key, tags):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, key)
    assert [layer.metadata[METADATA_KEY]["calendered"] for layer in layers] == tags
    for layer in layers:
        _check_phase_layer(
            layer, core.DEFAULT_VOXEL_SIZE_UM, layer.metadata[METADATA_KEY]["calendered"]
        )
        assert layer.data.shape == (48, 96, 96)
        assert set(np.unique(layer.data).tolist()) == {0, 1, 2}
    assert [layer.name for layer in layers] == [
        f"synthetic_{'CAL' if tag else 'UNCAL'}" for tag in tags
    ]


def test_realistic_sample_opens_as_one_calendered_phase_layer(make_napari_viewer, monkeypatch):
    from napari_electrode_cae import _sample_data

    monkeypatch.setattr(_sample_data, "REALISTIC_SHAPE", (24, 48, 48))  # 256³ takes ~10 s
    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample(PLUGIN, "synthetic_REALISTIC")
    _check_phase_layer(layer, core.DEFAULT_VOXEL_SIZE_UM, True)
    assert layer.name == "synthetic_REALISTIC" and layer.data.shape == (24, 48, 48)
    fractions = core.volume_fractions(np.asarray(layer.data))
    assert fractions == pytest.approx({"pore": 0.45, "cbd": 0.15, "active": 0.40}, abs=1e-3)


@pytest.mark.parametrize("preset", ["CAL", "UNCAL"])
def test_sample_data_equal_the_shipped_files(preset):
    from napari_electrode_cae._sample_data import synthetic_stack

    shipped = ROOT / "sample_data" / f"synthetic_{preset}.tif"
    if not shipped.is_file():
        pytest.skip("sample_data/ is not next to the tests (installed package)")
    made = synthetic_stack(preset)
    read = core.read_stack(shipped)
    np.testing.assert_array_equal(made.labels, read.labels)
    assert (made.calendered, made.voxel_size_um, made.name) == (
        read.calendered,
        read.voxel_size_um,
        read.name,
    )


# --------------------------------------------------------------------------------------------
# Widget and `electrode-cae gui`
# --------------------------------------------------------------------------------------------
def test_widget_docks_from_the_manifest(make_napari_viewer):
    from napari_electrode_cae._widgets import ElectrodeCAEWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Electrode CAE")
    assert isinstance(widget, ElectrodeCAEWidget)
    widget.shutdown()


@pytest.fixture
def fixture_viewers(make_napari_viewer, monkeypatch):
    """Make ``napari.Viewer(...)`` inside launch() a fixture viewer, closed after the test."""
    import napari

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))


def test_launch_loads_the_samples_and_docks_the_widget(fixture_viewers):
    from napari_electrode_cae._launch import launch

    viewer, widget = launch(show=False)
    try:
        stacks = [layer for layer in viewer.layers if METADATA_KEY in layer.metadata]
        assert [layer.name for layer in stacks] == ["synthetic_CAL", "synthetic_UNCAL"]
        assert [layer.visible for layer in stacks] == [True, False]
        assert viewer.layers.selection.active is stacks[0]
        assert type(widget).__name__ == "ElectrodeCAEWidget"
        assert widget in list(viewer.window.dock_widgets.values())
    finally:
        widget.shutdown()


def test_launch_loads_given_stacks_and_no_samples(fixture_viewers, tmp_path):
    from napari_electrode_cae._launch import launch

    path = core.write_stack(tmp_path / "mine_UNCAL.tif", make_stack(shape=(4, 8, 8)))
    viewer, widget = launch([path], show=False)
    try:
        stacks = [layer for layer in viewer.layers if METADATA_KEY in layer.metadata]
        assert [layer.name for layer in stacks] == ["mine_UNCAL"]
        _check_phase_layer(stacks[0], core.DEFAULT_VOXEL_SIZE_UM, True)
    finally:
        widget.shutdown()


def test_launch_opens_a_run_folder_in_the_train_panel(fixture_viewers, tmp_path, monkeypatch):
    import warnings

    from napari_electrode_cae._launch import launch
    from napari_electrode_cae._widgets.training_panel import TrainingPanel

    if not hasattr(TrainingPanel, "open_run"):
        with pytest.warns(UserWarning, match="cannot open run folders"):
            viewer, widget = launch(run_dir=tmp_path, sample=False, show=False)
        widget.shutdown()
        return
    opened = []
    monkeypatch.setattr(TrainingPanel, "open_run", lambda self, path: opened.append(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer, widget = launch(run_dir=tmp_path, sample=False, show=False)
    try:
        assert not [w for w in caught if "run folder" in str(w.message)]
        assert not [layer for layer in viewer.layers if METADATA_KEY in layer.metadata]
        assert opened == [tmp_path]
    finally:
        widget.shutdown()


def test_launch_opens_the_run_once_a_large_stack_is_converted(
    fixture_viewers, tmp_path, monkeypatch, qtbot
):
    from napari_electrode_cae._launch import launch
    from napari_electrode_cae._widgets import data_panel
    from napari_electrode_cae._widgets.training_panel import TrainingPanel

    monkeypatch.setattr(data_panel, "SYNC_CONVERT_MAX_VOXELS", 10)  # convert in the background
    opened = []
    monkeypatch.setattr(
        TrainingPanel,
        "open_run",
        lambda self, path: opened.append((path, self.state.converting_layers)),
    )
    path = core.write_stack(tmp_path / "big_CAL.tif", make_stack(shape=(4, 8, 8)))
    viewer, widget = launch([path], run_dir=tmp_path, show=False)
    try:
        qtbot.waitUntil(lambda: bool(opened), timeout=20_000)
        assert opened == [(tmp_path, ())]  # opened after the conversion, not refused during it
        assert widget.state.stack_layers == ("big_CAL",)
    finally:
        widget.shutdown()


def test_launch_fails_before_opening_a_window(monkeypatch, tmp_path):
    import napari

    from napari_electrode_cae._launch import launch

    def no_viewer(**_):
        raise AssertionError("a viewer was created before the input was checked")

    monkeypatch.setattr(napari, "Viewer", no_viewer)
    with pytest.raises(core.StackReadError, match="no such file"):
        launch([tmp_path / "missing.tif"], show=False)
    with pytest.raises(core.RunFolderError, match="does not exist"):
        launch([], run_dir=tmp_path / "no_run", show=False)


def test_gui_command_reads_stacks_then_launches_and_runs(monkeypatch, tmp_path, capsys):
    import napari

    from napari_electrode_cae import _launch, cli

    calls = []
    monkeypatch.setattr(_launch, "launch", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(napari, "run", lambda: calls.append("run"))
    path = core.write_stack(tmp_path / "x.tif", make_stack(shape=(4, 8, 8)))
    run_dir = tmp_path / "run"

    assert cli.main(["gui", str(path), "--run", str(run_dir), "--voxel-size", "0.25"]) == 0
    (args, kwargs), run = calls
    (stack,) = args[0]
    assert isinstance(stack, core.ElectrodeStack) and stack.voxel_size_um == 0.25
    assert kwargs == {"run_dir": run_dir, "sample": False, "show": True, "freeze_gc": True}
    assert run == "run"
    assert "x: 4x8x8 voxels" in capsys.readouterr().err

    calls.clear()  # a run folder brings its own stacks: no sample stacks beside them
    assert cli.main(["gui", "--run", str(run_dir)]) == 0
    assert calls[0] == (
        ([],),
        {"run_dir": run_dir, "sample": False, "show": True, "freeze_gc": True},
    )
    calls.clear()
    assert cli.main(["gui"]) == 0
    assert calls[0][1]["sample"] is True

    calls.clear()
    assert cli.main(["gui", "--no-sample"]) == 0
    assert calls[0] == (([],), {"run_dir": None, "sample": False, "show": True, "freeze_gc": True})


def test_gui_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from napari_electrode_cae import cli

    assert cli.main(["gui", str(tmp_path / "missing.tif")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("electrode-cae gui: error:") and "\n" not in err


def test_gui_is_in_the_help():
    from napari_electrode_cae import cli

    assert "gui" in cli.build_parser().format_help()
