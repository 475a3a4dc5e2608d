"""Physics tab: the heat map and the list show only correlations that survive the study."""

from __future__ import annotations

import numpy as np
import pytest

from napari_electrode_cae import core
from napari_electrode_cae._widgets.latent_names import slider_title, slider_tooltip, study_tracks
from napari_electrode_cae._widgets.physics_jobs import study_columns
from napari_electrode_cae._widgets.physics_panel import PhysicsPanel
from napari_electrode_cae._widgets.state import CAEState
from napari_electrode_cae.core import analysis
from tests.conftest import make_stack

SPEC = core.WindowSpec(length=4, stride=2, crop=16)
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def stacks():
    return [
        make_stack((12, 32, 32), seed=0, name="cal"),
        make_stack((12, 32, 32), seed=1, name="uncal", calendered=False),
    ]


def untrained_model(seed: int = 1) -> core.ConvAutoEncoder3d:
    """A never-trained model (another seed than the panel's random-encoder baseline, 0)."""
    core.seed_everything(seed)
    return core.ConvAutoEncoder3d(4, 16, 3, 16, 3).eval()


def panel_for(make_napari_viewer, qtbot, stacks, model, latents=None):
    state = CAEState()
    state.stacks = tuple(stacks)
    state.window = SPEC
    state.rebuild_dataset()
    state.model = model
    state.latents = core.encode_windows(model, state.dataset) if latents is None else latents
    state.model_version += 1
    panel = PhysicsPanel(make_napari_viewer(), state)
    qtbot.addWidget(panel)
    panel.show()
    return state, panel


def compute(qtbot, panel: PhysicsPanel) -> None:
    panel.compute_correlations()
    assert panel.correlation_running
    qtbot.waitUntil(lambda: not panel.correlation_running, timeout=WAIT_MS)
    assert panel.correlation is not None, panel.status_label.text()


def test_random_encoder_shows_nothing_survives_and_a_masked_heatmap(
    make_napari_viewer, qtbot, stacks
):
    state, panel = panel_for(make_napari_viewer, qtbot, stacks, untrained_model())
    compute(qtbot, panel)
    study = panel.correlation.study
    independent = analysis.independent_windows(state.dataset)
    assert len(panel.correlation.indices) == study.n_windows == len(independent) == 24
    assert np.isfinite(study.rho).any() and not study.survives.any()
    # the note is shown, not an empty list in silence
    assert study.note.startswith("nothing survives over 24 non-overlapping windows")
    assert study.note in panel.strongest_label.text()
    assert panel.strongest_texts() == []
    # every cell masked (grey), and the heat map says so
    assert np.isnan(panel.heatmap.data).all() and not panel.heatmap.survives.any()
    title = panel.heatmap.figure.axes[0].get_title()
    assert "nothing survives" in title and "masked" in title
    panel.shutdown()


def test_survivors_shown_are_the_studys_mask(make_napari_viewer, qtbot, stacks):
    model = untrained_model()
    data = core.WindowDataset(list(stacks), SPEC)
    latents = core.encode_windows(model, data).astype(np.float64)
    # plant a feature that tracks the pore fraction: it must survive, and be listed
    pore = np.array([np.mean(np.asarray(data.view(i)) == 0) for i in range(len(data))])
    latents[:, 0] = pore
    state, panel = panel_for(make_napari_viewer, qtbot, stacks, model, latents=latents)
    compute(qtbot, panel)
    result = panel.correlation
    expected = analysis.correlation_study(
        latents[result.indices],
        study_columns(result.rows, result.extra),
        random_latents=analysis.random_encoder_latents(
            model, state.dataset, result.indices, state.seed
        ),
    )
    assert np.array_equal(panel.heatmap.survives, expected.survives)
    assert expected.survives[0, expected.names.index("pore_fraction")]
    shown = np.isfinite(panel.heatmap.data)
    assert np.array_equal(shown, expected.survives)
    np.testing.assert_allclose(panel.heatmap.data[shown], expected.rho[expected.survives])
    lines = panel.strongest_texts()
    assert len(lines) == min(int(expected.survives.sum()), 8)
    j, name, rho, q, partial = expected.surviving()[0]
    assert lines[0].startswith(f"z{j + 1} ~ ") and f"ρ = {rho:+.2f}" in lines[0]
    assert "q " in lines[0] and "a phase fraction: no partial ρ" in lines[0]
    assert expected.note in panel.strongest_label.text()

    # new latents of the same windows: the study is redone (baseline kept), survivors follow
    state.latents = core.encode_windows(model, state.dataset)
    assert not panel.correlation.study.survives[0, expected.names.index("pore_fraction")]
    assert np.array_equal(panel.heatmap.survives, panel.correlation.study.survives)
    panel.shutdown()


def test_too_few_non_overlapping_windows_is_one_clear_message(make_napari_viewer, qtbot):
    small = [make_stack((8, 16, 16), seed=0, name="one")]
    state, panel = panel_for(make_napari_viewer, qtbot, small, untrained_model())
    panel.compute_correlations()
    assert not panel.correlation_running
    text = panel.status_label.text()
    assert "at least 3 non-overlapping windows, there are 2" in text, text
    panel.shutdown()


def test_the_study_is_published_in_the_shared_state_for_the_slider_names(
    make_napari_viewer, qtbot, stacks
):
    model = untrained_model()
    data = core.WindowDataset(list(stacks), SPEC)
    latents = core.encode_windows(model, data).astype(np.float64)
    latents[:, 2] = -np.array([np.mean(np.asarray(data.view(i)) == 0) for i in range(len(data))])
    state, panel = panel_for(make_napari_viewer, qtbot, stacks, model, latents=latents)
    assert state.correlation_study is None
    compute(qtbot, panel)
    study = state.correlation_study
    assert study is panel.correlation.study
    tracks = study_tracks(study, latents.shape[1])
    assert tracks[2] == ("pore_fraction", pytest.approx(-1.0))
    assert all((track is None) == (not study.survives[j].any()) for j, track in enumerate(tracks))
    assert study_tracks(study, latents.shape[1] + 1) == [None] * (latents.shape[1] + 1)
    assert "Physics tab" in slider_tooltip(2, tracks[2], "the Physics tab's correlation study")
    # other windows: the study goes from the state too
    state.window = core.WindowSpec(length=4, stride=4, crop=16)
    state.rebuild_dataset()
    assert state.correlation_study is None
    panel.shutdown()


def test_latent_sliders_are_named_after_the_physics_tabs_survivors(
    make_napari_viewer, qtbot, stacks
):
    from napari_electrode_cae._widgets.latent_panel import LatentPanel

    model = untrained_model()
    data = core.WindowDataset(list(stacks), SPEC)
    latents = core.encode_windows(model, data).astype(np.float64)
    latents[:, 2] = -np.array([np.mean(np.asarray(data.view(i)) == 0) for i in range(len(data))])
    state, panel = panel_for(make_napari_viewer, qtbot, stacks, model, latents=latents)
    latent_panel = LatentPanel(panel.viewer, state)
    try:
        assert latent_panel.slider_names[2].text() == "z3"
        compute(qtbot, panel)
        tracks = study_tracks(state.correlation_study, latents.shape[1])
        assert [label.text() for label in latent_panel.slider_names] == [
            slider_title(j, track) for j, track in enumerate(tracks)
        ]
        assert latent_panel.slider_names[2].text() == "z3 · pore fraction -1.00"
        assert "Physics tab" in latent_panel.sliders[2].toolTip()
        # the study cleared (other windows): back to plain names (no run folder here)
        state.window = core.WindowSpec(length=4, stride=4, crop=16)
        state.rebuild_dataset()
        assert latent_panel.slider_names[2].text() == "z3"
        qtbot.waitUntil(lambda: latent_panel.idle, timeout=WAIT_MS)
    finally:
        latent_panel.shutdown()
        panel.shutdown()
