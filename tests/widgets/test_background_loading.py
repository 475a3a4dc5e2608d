"""Big layers are converted, and run folders read, in background workers (tiny data: the
Data panel's size threshold is monkeypatched so that every layer counts as big)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets import data_panel as data_panel_module
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets import training_runs as training_runs_module
from napari_electrode_cae._widgets.data_panel import DataPanel
from napari_electrode_cae._widgets.main_widget import ElectrodeCAEWidget
from napari_electrode_cae._widgets.state import CAEState, ModelSettings
from napari_electrode_cae._widgets.training_panel import TrainingPanel
from tests.conftest import make_stack

SHAPE = (12, 32, 32)
WINDOW = core.WindowSpec(length=4, stride=2, crop=16)
WAIT_MS = 30_000


@pytest.fixture
def notes(monkeypatch) -> dict[str, list[str]]:
    """Notifications the Data and Train panels showed, by kind."""
    shown: dict[str, list[str]] = {"info": [], "error": []}
    monkeypatch.setattr(data_panel_module, "show_info", shown["info"].append)
    monkeypatch.setattr(data_panel_module, "show_error", shown["error"].append)
    monkeypatch.setattr(training_panel_module, "show_error", shown["error"].append)
    monkeypatch.setattr(training_panel_module, "show_info", shown["info"].append)
    monkeypatch.setattr(training_runs_module, "show_info", shown["info"].append)
    return shown


@pytest.fixture
def big(monkeypatch):
    """Every layer with more than 100 voxels is converted in a worker."""
    monkeypatch.setattr(data_panel_module, "SYNC_CONVERT_MAX_VOXELS", 100)


class Gate:
    """Wraps ``data_panel.conversion_of``: records each call's thread and layer, and holds
    calls until :meth:`open` (a test can change the layer while its conversion runs)."""

    def __init__(self, monkeypatch, closed: bool = True) -> None:
        self.calls: list[tuple[int, str, object]] = []  # (thread id, layer name, data)
        self._open = threading.Event()
        if not closed:
            self._open.set()
        original = data_panel_module.conversion_of

        def conversion_of(layer, override):
            self.calls.append((threading.get_ident(), layer.name, layer.data))
            self._open.wait(20)
            return original(layer, override)

        monkeypatch.setattr(data_panel_module, "conversion_of", conversion_of)

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    state = CAEState(window=WINDOW)
    viewer = make_napari_viewer()
    data_panel = DataPanel(viewer, state)
    qtbot.addWidget(data_panel)
    yield viewer, state, data_panel
    data_panel.shutdown()


def add_electrode(viewer, preset="CAL", seed=0, name=None):
    stack = core.generate_electrode(SHAPE, preset=preset, seed=seed)
    if name:
        stack.name = name
    return viewer.add_labels(stack.labels, **_layers.labels_layer_kwargs(stack))


def entry_named(data_panel, name):
    return next(e for e in data_panel.entries if e.layer.name == name)


def wait_idle(qtbot, data_panel) -> None:
    qtbot.waitUntil(lambda: data_panel.idle, timeout=WAIT_MS)


# ------------------------------------------------------------------------------ Data panel


def test_small_layers_are_still_converted_at_once(panel):
    viewer, state, data_panel = panel
    layer = add_electrode(viewer)
    entry = entry_named(data_panel, layer.name)
    assert data_panel.idle and not entry.converting and entry.usable
    assert state.stacks[0].labels is layer.data


def test_big_layer_is_converted_in_a_worker(panel, qtbot, big, notes, monkeypatch):
    viewer, state, data_panel = panel
    gate = Gate(monkeypatch)
    layer = add_electrode(viewer)
    entry = entry_named(data_panel, layer.name)

    assert entry.converting and not entry.usable and not data_panel.idle
    assert state.stacks == () and state.dataset is None
    assert data_panel.table.item(0, 4).text() == "converting …"
    assert data_panel.table.item(0, 3).text() == "…"
    assert layer.name in data_panel.convert_status_label.text()
    assert not data_panel.convert_status_label.isHidden()
    data_panel.select_layer(layer.name)  # the mapping editor waits for the conversion
    assert not data_panel.apply_mapping_button.isEnabled()
    assert "converting" in data_panel.details_label.text()
    gate.open()
    wait_idle(qtbot, data_panel)

    assert [thread for thread, _, _ in gate.calls] != [threading.get_ident()]
    assert len(gate.calls) == 1
    assert entry.usable and entry.use and not entry.converting
    assert state.stack_layers == (layer.name,) and state.stacks[0].labels is layer.data
    assert state.dataset is not None
    assert data_panel.table.item(0, 3).text().count("/") == 2
    assert data_panel.convert_status_label.isHidden()
    assert data_panel.apply_mapping_button.isEnabled()
    assert notes == {"info": [], "error": []}


def test_layer_changed_while_converting_drops_the_stale_result(panel, qtbot, big, monkeypatch):
    viewer, state, data_panel = panel
    gate = Gate(monkeypatch)
    layer = add_electrode(viewer, "CAL", seed=0)
    old_data = layer.data
    new_data = core.generate_electrode(SHAPE, preset="UNCAL", seed=5).labels
    layer.data = new_data
    assert entry_named(data_panel, layer.name).converting
    gate.open()
    wait_idle(qtbot, data_panel)

    assert [data for _, _, data in gate.calls] == [old_data, layer.data]
    assert len(state.stacks) == 1
    assert state.stacks[0].labels is layer.data
    np.testing.assert_array_equal(state.stacks[0].labels, new_data)


def test_layer_renamed_while_converting_keeps_its_result_under_its_new_name(
    panel, qtbot, big, monkeypatch
):
    viewer, state, data_panel = panel
    gate = Gate(monkeypatch)
    layer = add_electrode(viewer, name="before")
    layer.name = "after"
    gate.open()
    wait_idle(qtbot, data_panel)

    assert [name for _, name, _ in gate.calls] == ["before"]  # a rename does not restart it
    assert state.stack_layers == ("after",) and state.stacks[0].name == "after"


def test_layer_removed_while_converting_is_forgotten(panel, qtbot, big, notes, monkeypatch):
    viewer, state, data_panel = panel
    gate = Gate(monkeypatch)
    keep = add_electrode(viewer, name="keep")
    gone = add_electrode(viewer, "UNCAL", seed=1, name="gone")
    viewer.layers.remove(gone)
    gate.open()
    wait_idle(qtbot, data_panel)

    assert [e.layer.name for e in data_panel.entries] == ["keep"]
    assert state.stack_layers == ("keep",) and state.stacks[0].labels is keep.data
    assert notes["error"] == []


def test_mapping_set_on_a_big_layer_is_applied_in_a_worker(panel, qtbot, big, notes, monkeypatch):
    viewer, state, data_panel = panel
    ids = make_stack(SHAPE).labels
    stored = np.array([0, 170, 85], dtype=np.uint8)[ids]
    before = stored.copy()
    layer = viewer.add_image(stored, name="grey 0/85/170")
    wait_idle(qtbot, data_panel)
    data_panel.set_used(layer.name, True)
    gate = Gate(monkeypatch)

    data_panel.set_phase_mapping(layer.name, {0: "pore", 85: "active", 170: "cbd"})
    assert entry_named(data_panel, layer.name).converting and state.stacks == ()
    gate.open()
    wait_idle(qtbot, data_panel)
    stack = state.stacks[0]
    assert stack.phase_mapping == {0: "pore", 85: "active", 170: "cbd"}
    np.testing.assert_array_equal(stack.labels, ids)

    data_panel.set_phase_mapping(layer.name, {0: "pore", 85: "active"})  # misses 170
    wait_idle(qtbot, data_panel)
    entry = entry_named(data_panel, layer.name)
    assert "170" in entry.error and state.stacks == ()
    assert len(notes["error"]) == 1 and "170" in notes["error"][0]
    assert "⚠" in data_panel.table.item(0, 3).text()
    data_panel.set_phase_mapping(layer.name, None)  # back to the inferred mapping: used again
    wait_idle(qtbot, data_panel)
    assert entry.error == "" and len(state.stacks) == 1
    np.testing.assert_array_equal(layer.data, before)


def test_conversion_errors_show_in_the_row(panel, qtbot, big, notes, monkeypatch):
    viewer, state, data_panel = panel
    grey = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    grey_before = grey.copy()
    viewer.add_image(grey, name="grey levels")
    wait_idle(qtbot, data_panel)
    entry = entry_named(data_panel, "grey levels")
    assert "grey levels" in entry.error and not entry.use and entry.stack is None
    assert len(notes["info"]) == 1 and "not used as an electrode stack" in notes["info"][0]
    assert "⚠" in data_panel.table.item(0, 3).text()

    def out_of_memory(layer, override):
        raise MemoryError("cannot allocate 512 MiB")

    monkeypatch.setattr(data_panel_module, "conversion_of", out_of_memory)
    labels = add_electrode(viewer, name="too big")
    labels_before = labels.data.copy()
    wait_idle(qtbot, data_panel)
    entry = entry_named(data_panel, "too big")
    assert "MemoryError" in entry.error and not entry.usable and state.stacks == ()
    assert len(notes["error"]) == 1 and "MemoryError" in notes["error"][0]
    np.testing.assert_array_equal(grey, grey_before)
    np.testing.assert_array_equal(labels.data, labels_before)


def test_set_used_while_converting_is_kept(panel, qtbot, big, monkeypatch):
    viewer, state, data_panel = panel
    gate = Gate(monkeypatch)
    layer = add_electrode(viewer)
    data_panel.set_used(layer.name, False)  # a plugin layer is checked by default otherwise
    gate.open()
    wait_idle(qtbot, data_panel)
    assert entry_named(data_panel, layer.name).usable and state.stacks == ()


def test_shutdown_while_converting_waits_and_drops_the_result(panel, qtbot, big, monkeypatch):
    viewer, state, data_panel = panel
    gate = Gate(monkeypatch)
    layer = add_electrode(viewer)
    worker = entry_named(data_panel, layer.name)._job.worker
    threading.Timer(0.2, gate.open).start()
    data_panel.shutdown()

    assert data_panel.idle and not worker.is_running and len(gate.calls) == 1
    assert state.stacks == () and entry_named(data_panel, layer.name).converted is None
    data_panel.shutdown()  # idempotent


# ------------------------------------------------------------------------------- Open run


def make_run_folder(path, names=("cal", "uncal")):
    """A run folder of an untrained tiny model on two small stacks."""
    stacks = [
        make_stack(SHAPE, seed=i, name=name, calendered=i == 0) for i, name in enumerate(names)
    ]
    dataset = core.WindowDataset(stacks, WINDOW)
    train_idx, val_idx = core.split(dataset, 0.25, 0, "random")
    model_config = ModelSettings(conv_layers=3, hidden=16, latent_dim=3).model_config(WINDOW)
    core.seed_everything(0)
    model = core.ConvAutoEncoder3d(**model_config.to_dict())
    config = core.TrainConfig(epochs=1, batch_size=8, lr=1e-3, device="cpu")
    return core.save_run(path, model, dataset, config, train_idx, val_idx)


class RunGate:
    """Wraps ``core.load_run``: records the threads it runs in, holds the first call."""

    def __init__(self, monkeypatch) -> None:
        self.threads: list[int] = []
        self._open = threading.Event()
        original = core.load_run

        def load_run(path, *args, **kwargs):
            self.threads.append(threading.get_ident())
            if len(self.threads) == 1:
                self._open.wait(20)
            return original(path, *args, **kwargs)

        monkeypatch.setattr(core, "load_run", load_run)

    def open(self) -> None:
        self._open.set()


def wait_not_busy(qtbot, panel) -> None:
    qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)


def test_open_run_reads_the_folder_in_a_worker(
    make_napari_viewer, qtbot, notes, tmp_path, monkeypatch
):
    run_dir = make_run_folder(tmp_path / "run")
    gate = RunGate(monkeypatch)
    state = CAEState()
    viewer = make_napari_viewer()
    panel = TrainingPanel(viewer, state)

    assert panel.open_run(run_dir) is not None
    assert panel.opening and state.model is None and len(viewer.layers) == 0
    assert "opening run" in panel.status_label.text()
    assert not panel.open_button.isEnabled() and not panel.train_button.isEnabled()
    assert not panel.save_button.isEnabled()
    gate.open()
    wait_not_busy(qtbot, panel)

    assert gate.threads and threading.get_ident() not in gate.threads
    assert not panel.opening and panel.open_button.isEnabled() and panel.train_button.isEnabled()
    assert notes["error"] == []
    assert state.run_dir == str(run_dir) and state.model is not None
    assert [layer.name for layer in viewer.layers] == ["cal", "uncal"]
    assert state.model_version == 1 and state.report is not None
    assert "opened run" in panel.status_label.text()
    panel.shutdown()


def test_open_run_of_a_bad_folder_reports_the_core_error(
    make_napari_viewer, qtbot, notes, tmp_path
):
    state = CAEState()
    panel = TrainingPanel(make_napari_viewer(), state)
    run_dir = make_run_folder(tmp_path / "run")
    (run_dir / "weights.pt").write_bytes(b"not torch")
    with pytest.raises(core.ElectrodeCAEError) as expected:
        core.load_run(run_dir)

    panel.open_run(run_dir)
    wait_not_busy(qtbot, panel)
    assert notes["error"] == [str(expected.value)]
    assert str(expected.value) in panel.status_label.text()
    assert state.model is None and state.run_dir == "" and state.stacks == ()
    assert panel.open_button.isEnabled()
    panel.shutdown()


def test_a_run_opened_meanwhile_replaces_the_one_being_read(
    make_napari_viewer, qtbot, notes, tmp_path, monkeypatch
):
    first = make_run_folder(tmp_path / "first", names=("a", "b"))
    second = make_run_folder(tmp_path / "second", names=("c", "d"))
    gate = RunGate(monkeypatch)
    state = CAEState()
    viewer = make_napari_viewer()
    panel = TrainingPanel(viewer, state)
    panel.open_run(first)  # held in the worker
    panel.open_run(second)
    qtbot.waitUntil(lambda: state.run_dir == str(second), timeout=WAIT_MS)
    gate.open()
    wait_not_busy(qtbot, panel)

    assert state.run_dir == str(second) and notes["error"] == []
    assert [layer.name for layer in viewer.layers] == ["c", "d"]
    assert state.stack_layers == ("c", "d")
    panel.shutdown()


def test_shutdown_while_opening_a_run_changes_nothing(
    make_napari_viewer, notes, tmp_path, monkeypatch
):
    run_dir = make_run_folder(tmp_path / "run")
    gate = RunGate(monkeypatch)
    state = CAEState()
    viewer = make_napari_viewer()
    panel = TrainingPanel(viewer, state)
    panel.open_run(run_dir)
    watches = panel.workers.watches()
    threading.Timer(0.2, gate.open).start()
    panel.shutdown()

    assert watches and all(watch.finished.is_set() for watch in watches)
    assert not panel.is_busy and state.model is None and len(viewer.layers) == 0
    assert notes["error"] == []


@pytest.mark.parametrize("big_layers", [True, False], ids=["big", "small"])
def test_opened_run_keeps_its_dataset(
    make_napari_viewer, qtbot, notes, tmp_path, monkeypatch, big_layers
):
    """The whole widget: the Data panel converts the run's layers (in the background if big)
    and then shows them checked, and another layer unchecked, without rebuilding the run's
    dataset (nor writing the state from inside the Windows panel's outline-layer insert)."""
    if big_layers:
        monkeypatch.setattr(data_panel_module, "SYNC_CONVERT_MAX_VOXELS", 100)
    run_dir = make_run_folder(tmp_path / "run")
    viewer = make_napari_viewer()
    widget = ElectrodeCAEWidget(viewer)
    state, data_panel, train = widget.state, widget.data_panel, widget.training_panel
    try:
        other = add_electrode(viewer, name="other")
        wait_idle(qtbot, data_panel)
        assert state.stack_layers == ("other",)
        train.open_run(run_dir)
        qtbot.waitUntil(lambda: state.run_dir == str(run_dir), timeout=WAIT_MS)
        dataset = state.dataset
        wait_not_busy(qtbot, train)
        wait_idle(qtbot, data_panel)

        assert notes["error"] == []
        assert state.stack_layers == ("cal", "uncal") and state.dataset is dataset
        used = {e.layer.name: e.used for e in data_panel.entries}
        assert used == {"other": False, "cal": True, "uncal": True}
        assert all(
            s.labels is viewer.layers[n].data for s, n in zip(state.stacks, state.stack_layers)
        )
        assert state.model_version == 1 and state.latents.shape[0] == len(dataset)
        assert other.name in viewer.layers
    finally:
        widget.shutdown()
