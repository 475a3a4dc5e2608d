"""Design tab and the Latents tab's predicted-vs-measured view, driven with pytest-qt."""

from __future__ import annotations

import numpy as np
import pytest

from napari_electrode_cae import _layers, core
from napari_electrode_cae._widgets.design_panel import DesignPanel
from napari_electrode_cae._widgets.latent_panel import LatentPanel
from napari_electrode_cae._widgets.state import CAEState
from napari_electrode_cae.core import io
from tests.trained_tiny_run import fitted_report, trained

WAIT_MS = 60_000


def make_state() -> CAEState:
    model, data, result = trained()
    state = CAEState()
    state.stacks = tuple(data.stacks)
    state.stack_layers = tuple(s.name for s in data.stacks)
    state.window = data.spec
    state.rebuild_dataset()
    state.model = model
    state.latents = core.encode_windows(model, data)
    state.model_version += 1
    return state


@pytest.fixture
def panels(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    state = make_state()
    latent = LatentPanel(viewer, state)
    design = DesignPanel(viewer, state, latent)
    qtbot.addWidget(latent)
    qtbot.addWidget(design)
    qtbot.waitUntil(lambda: _layers.DECODED_LAYER in viewer.layers and latent.idle, timeout=WAIT_MS)
    yield viewer, state, latent, design
    design.shutdown()
    latent.shutdown()


def test_set_target_run_see_candidates_and_load_one_into_the_sliders(panels, qtbot, tmp_path):
    viewer, state, latent, design = panels
    latent.prediction_view.set_predictor(fitted_report().predictor, fitted_report().to_dict())
    row = design.target_rows[0]
    row.set("pore_fraction", "equal", 0.40, 0.01)
    design.candidates_spin.setValue(1)
    assert design.run_button.isEnabled()
    design.run_button.click()
    assert design.running and design.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not design.running, timeout=WAIT_MS)
    result = design.result
    assert result is not None and result.reached
    assert design.gallery.rowCount() == len(result.candidates) >= 1
    assert design.gallery.item(0, 1).text() == "PASS"
    assert "Pore fraction" in design.gallery.item(0, 2).text()
    assert "reached" in design.status_label.text()

    # a click loads the candidate into the sliders, which decode it into the decoded layer
    design.gallery.cellClicked.emit(0, 0)
    best = result.candidates[0]
    np.testing.assert_allclose(latent.latent_vector(), best.latent, atol=2e-3)
    qtbot.waitUntil(lambda: latent.idle, timeout=WAIT_MS)
    decoded = viewer.layers[_layers.DECODED_LAYER].data
    assert abs(float(np.mean(decoded == 0)) - best.measured["pore_fraction"]) < 0.02

    tif, csv_path = design.export_candidate(0, tmp_path / "best.tif")
    np.testing.assert_array_equal(io.read_stack(tif).labels, best.labels)
    assert csv_path.name == "best_latent.csv"


def test_prediction_view_follows_the_sliders_and_measures_the_decoded_volume(panels, qtbot):
    _, _, latent, _ = panels
    view = latent.prediction_view
    view.set_predictor(fitted_report().predictor, fitted_report().to_dict())
    assert view.table.rowCount() == 3
    before = view.table.item(0, 1).text()
    slider = latent.sliders[0]
    slider.setValue(slider.minimum() + 0.9 * (slider.maximum() - slider.minimum()))
    after = view.table.item(0, 1).text()  # predicted at once, before any decode finished
    assert "±" in after and after != before
    qtbot.waitUntil(
        lambda: latent.idle and view.idle and view.table.item(0, 2).text() != "", timeout=WAIT_MS
    )
    measured = float(view.table.item(0, 2).text())
    assert 0.0 <= measured <= 1.0


def test_run_without_a_model_says_what_to_do(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    design = DesignPanel(viewer, CAEState())
    qtbot.addWidget(design)
    assert not design.run_button.isEnabled()
    design.run()
    assert "first" in design.status_label.text()
    design.shutdown()


def test_stop_ends_a_design_and_keeps_the_old_gallery(panels, qtbot):
    _, _, latent, design = panels
    latent.prediction_view.set_predictor(None)  # the run must fit regressors first: slow
    design.run_button.click()
    design.stop_button.click()
    qtbot.waitUntil(lambda: not design.running, timeout=WAIT_MS)
    assert design.result is None and design.gallery.rowCount() == 0
    assert "stop" in design.status_label.text()


def test_run_is_offered_for_a_model_set_without_new_weights(make_napari_viewer, qtbot):
    """Opening a run sets the model without bumping model_version: Run must still enable."""
    viewer = make_napari_viewer()
    state = make_state()
    model = state.model
    state.model = None
    design = DesignPanel(viewer, state)
    qtbot.addWidget(design)
    assert not design.run_button.isEnabled()
    state.model = model  # as Open run does
    assert design.run_button.isEnabled()
    design.shutdown()
