"""Physics panel: metrics table (original, reconstruction, decoded), correlations, export."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets.physics_panel import (
    COLUMNS,
    DECODED,
    METRIC_ROWS,
    ORIGINAL,
    RECONSTRUCTION,
    PhysicsPanel,
    format_metric,
)
from napari_electrode_cae._widgets.results_panel import NO_MODEL_MESSAGE
from napari_electrode_cae._widgets.state import CAEState
from tests.conftest import make_stack

SPEC = core.WindowSpec(length=4, stride=2, crop=16)
WAIT_MS = 20_000
TAU_ROW = len(METRIC_ROWS) - 1


@pytest.fixture(scope="module")
def trained():
    """(stacks, model, latents) of a 1-epoch model on two 12x32x32 stacks (CAL and UNCAL)."""
    stacks = [
        make_stack((12, 32, 32), seed=0, name="cal"),
        make_stack((12, 32, 32), seed=1, name="uncal", calendered=False),
    ]
    data = core.WindowDataset(stacks, SPEC)
    core.seed_everything(0)
    model = core.ConvAutoEncoder3d(4, 16, 3, 16, 3)
    core.run_training(model, data, core.TrainConfig(epochs=1, batch_size=4, lr=1e-3, device="cpu"))
    model.eval()
    return stacks, model, core.encode_windows(model, data)


def make_state(trained, with_model: bool = True) -> CAEState:
    stacks, model, latents = trained
    state = CAEState()
    state.stacks = tuple(stacks)
    state.stack_layers = tuple(s.name for s in stacks)
    state.window = SPEC
    state.rebuild_dataset()
    if with_model:
        state.model = model
        state.latents = latents
        state.model_version += 1
    return state


def wait_idle(qtbot, panel: PhysicsPanel) -> None:
    qtbot.waitUntil(lambda: panel.idle, timeout=WAIT_MS)


def wait_correlations(qtbot, panel: PhysicsPanel) -> None:
    qtbot.waitUntil(lambda: not panel.correlation_running, timeout=WAIT_MS)


def expected_texts(labels: np.ndarray, voxel: float) -> list[str]:
    metrics = core.microstructure_metrics(labels, voxel)
    return [format_metric(metrics[key], kind) for key, _, kind in METRIC_ROWS]


@pytest.fixture
def panel_and_state(make_napari_viewer, qtbot, trained):
    viewer = make_napari_viewer()
    state = make_state(trained)
    panel = PhysicsPanel(viewer, state)
    qtbot.addWidget(panel)
    # hidden (e.g. another tab is current): nothing is measured until a table is shown
    assert not panel.table_visible and panel._window_runner.counts.requests == 0
    panel.show()
    yield viewer, state, panel
    panel.shutdown()


def test_without_model_the_panel_says_so(make_napari_viewer, trained):
    viewer = make_napari_viewer()
    state = make_state(trained, with_model=False)
    panel = PhysicsPanel(viewer, state)
    assert panel.status_label.text() == NO_MODEL_MESSAGE
    assert set(panel.column_texts(ORIGINAL)) == {"–"}
    panel.compute_correlations()  # refused with a message, no worker
    assert not panel.correlation_running
    assert NO_MODEL_MESSAGE in panel.status_label.text()
    panel.shutdown()


def test_table_fills_for_original_and_reconstruction(qtbot, panel_and_state, trained):
    _, state, panel = panel_and_state
    model = trained[1]
    assert panel.metrics_table.columnCount() == len(COLUMNS)
    wait_idle(qtbot, panel)
    data = state.dataset
    voxel = data.voxel_size_um
    recon = core.evaluation.reconstruct_window(model, data[0])[1]
    assert panel.column_texts(ORIGINAL)[:-1] == expected_texts(np.asarray(data.view(0)), voxel)
    assert panel.column_texts(RECONSTRUCTION)[:-1] == expected_texts(recon, voxel)
    assert "ms" in panel.column_texts(ORIGINAL)[-1]  # compute time, tortuosity included
    assert "τ" in panel.column_texts(ORIGINAL)[-1]

    state.selected_window = 3
    wait_idle(qtbot, panel)
    assert panel.column_texts(ORIGINAL)[:-1] == expected_texts(np.asarray(data.view(3)), voxel)
    assert "Window 3" in panel.window_title.text()


def test_decoded_column_follows_the_decoded_layer(qtbot, panel_and_state):
    viewer, state, panel = panel_and_state
    wait_idle(qtbot, panel)
    assert set(panel.column_texts(DECODED)) == {"–"}
    voxel = state.dataset.voxel_size_um
    first = np.asarray(state.dataset.view(1)).copy()
    layer = viewer.add_labels(first, name=_layers.DECODED_LAYER, scale=(voxel,) * 3)
    wait_idle(qtbot, panel)
    assert panel.column_texts(DECODED)[:-1] == expected_texts(first, voxel)

    second = np.asarray(state.dataset.view(5)).copy()
    layer.data = second  # as the Latent panel does after each decode
    wait_idle(qtbot, panel)  # includes the debounced tortuosity
    assert panel.column_texts(DECODED)[:-1] == expected_texts(second, voxel)
    assert "τ" in panel.column_texts(DECODED)[-1]

    panel.live_tau_check.setChecked(True)  # tortuosity with every change, no debounce
    layer.data = first
    assert not panel._tau_timer.isActive()
    wait_idle(qtbot, panel)
    assert panel.column_texts(DECODED)[:-1] == expected_texts(first, voxel)

    viewer.layers.remove(layer)
    assert set(panel.column_texts(DECODED)) == {"–"}
    layer.data = second  # a removed layer is no longer followed
    assert panel.idle


def test_correlations_heatmap_strongest_and_export(qtbot, panel_and_state, trained, tmp_path):
    _, state, panel = panel_and_state
    # before any run the bar says so (its range 0..1 would otherwise read "0 / 1 windows")
    assert panel.progress_bar.text() == "no windows measured yet"
    panel.max_windows_spin.setValue(12)
    panel.compute_correlations()
    assert panel.correlation_running and not panel.compute_button.isEnabled()
    assert panel.progress_bar.text() == "0 / 12 windows"
    wait_correlations(qtbot, panel)
    assert panel.progress_bar.text() == "12 / 12 windows"
    result = panel.correlation
    assert result is not None and len(result.indices) == 12
    k = trained[1].config.latent_dim
    names = result.names
    assert names[-2:] == ["depth z", "CAL tag"] and "tortuosity_pore_z" not in names
    assert panel.heatmap.data.shape == (k, len(names))
    assert np.all(np.abs(panel.heatmap.data[np.isfinite(panel.heatmap.data)]) <= 1)
    # only surviving pairs are coloured and listed; none listed -> the study's note says why
    assert np.array_equal(panel.heatmap.survives, result.study.survives)
    assert len(panel.strongest_texts()) == min(int(result.study.survives.sum()), 8)
    if not result.study.survives.any():
        assert result.study.note in panel.strongest_label.text()
    assert panel.progress_bar.value() == 12

    # a popped-out heat map shows the same data
    panel.show_heatmap_dock()
    assert panel._heatmaps[-1].data.shape == (k, len(names))

    written, corr = panel.export_metrics(tmp_path / "physics.csv")
    assert corr == tmp_path / "physics_correlations.csv"
    with open(written, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and sorted(int(r["window"]) for r in rows) == sorted(
        result.indices.tolist()
    )
    assert "pore_fraction" in rows[0] and rows[0]["split"] in ("train", "val")
    with open(corr, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == k * len(names)
    assert {"q_value_bh", "partial_rho_given_fractions", "survives"} <= set(table[0])

    # other windows: the correlations and their count go
    state.window = core.WindowSpec(length=4, stride=4, crop=16)
    state.rebuild_dataset()
    assert panel.correlation is None
    assert "windows changed" in panel.corr_label.text()
    assert panel.progress_bar.text() == "no windows measured yet"


def test_all_windows_and_stop_leave_the_panel_usable(qtbot, panel_and_state):
    _, state, panel = panel_and_state
    n = len(core.analysis.independent_windows(state.dataset))  # 24 of the 40 share no voxel
    assert n < len(state.dataset)
    panel.corr_tau_check.setChecked(True)
    panel.compute_correlations()
    panel.stop_correlations()
    wait_correlations(qtbot, panel)
    assert panel.compute_button.isEnabled() and not panel.stop_button.isEnabled()
    assert panel.correlation is None or len(panel.correlation.indices) == n
    panel.compute_correlations()  # usable again: all windows (n < 200), with tortuosity
    wait_correlations(qtbot, panel)
    assert len(panel.correlation.indices) == n and "tortuosity_pore_z" in panel.correlation.names


def test_export_without_metrics_is_an_error(panel_and_state, tmp_path):
    _, _, panel = panel_and_state
    assert not panel.export_button.isEnabled()
    with pytest.raises(core.ElectrodeCAEError, match="Compute correlations"):
        panel.export_metrics(tmp_path / "m.csv")


def test_shutdown_leaves_no_running_worker(make_napari_viewer, qtbot, trained):
    viewer = make_napari_viewer()
    state = make_state(trained)
    panel = PhysicsPanel(viewer, state)
    qtbot.addWidget(panel)
    panel.show()
    viewer.add_labels(np.asarray(state.dataset.view(0)).copy(), name=_layers.DECODED_LAYER)
    panel.compute_correlations()
    panel.shutdown()
    assert not panel._corr_guard.running
    for runner in (
        panel._window_runner,
        panel._window_tau_runner,
        panel._decoded_runner,
        panel._decoded_tau_runner,
    ):
        assert not runner.worker_alive
    assert not panel._tau_timer.isActive()
    wait_correlations(qtbot, panel)  # the quit worker still reports finished


def test_main_widget_has_a_physics_tab(make_napari_viewer):
    from napari_electrode_cae._widgets.main_widget import ElectrodeCAEWidget

    viewer = make_napari_viewer()
    widget = ElectrodeCAEWidget(viewer)
    titles = [widget.tabs.tabText(i) for i in range(widget.tabs.count())]
    assert "Physics" in titles and widget.physics_panel in widget.panels
    widget.shutdown()
