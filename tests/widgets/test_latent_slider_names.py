"""Latent sliders named by what they track (the run's correlations) and read in data spreads."""

from __future__ import annotations

import numpy as np
import pytest

from napari_electrode_cae import core
from napari_electrode_cae._widgets.latent_names import (
    latent_tracks,
    slider_title,
    variable_label,
)
from napari_electrode_cae._widgets.latent_panel import LatentPanel
from napari_electrode_cae._widgets.state import CAEState
from tests.conftest import make_stack

SPEC = core.WindowSpec(length=4, stride=4, crop=16)
HEADER = (
    "latent,metric,spearman_rho,p_value,q_value_bh,partial_rho_given_fractions,"
    "random_encoder_max_abs_rho,survives,n_windows\n"
)


def write_correlations(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{latent},{metric},{rho},0.001,0.01,nan,0.2,{survives},40"
        for latent, metric, rho, survives in rows
    ]
    (run_dir / "correlations.csv").write_text(HEADER + "\n".join(lines) + "\n")
    return run_dir


def test_strongest_surviving_correlation_names_each_feature(tmp_path):
    run_dir = write_correlations(
        tmp_path / "run",
        [
            ("z1", "pore_fraction", 0.67, True),
            ("z1", "cbd_fraction", -0.9, False),
            ("z1", "z", 0.3, True),
            ("z2", "pore_fraction", 0.1, False),
            ("z2", "tpb_density_per_um2", -0.45, True),
            ("z3", "pore_fraction", "nan", False),
        ],
    )
    tracks = latent_tracks(run_dir, 3)
    # a stronger pair that did not survive the FDR correction does not name z1
    assert tracks == [("pore_fraction", 0.67), ("tpb_density_per_um2", -0.45), None]
    assert slider_title(0, tracks[0]) == "z1 · pore fraction +0.67"
    assert slider_title(1, tracks[1]) == "z2 · tpb density -0.45"
    assert slider_title(2, tracks[2]) == "z3"
    assert variable_label("z") == "depth"


def test_missing_or_mismatched_correlations_leave_plain_names(tmp_path):
    assert latent_tracks(tmp_path / "none", 2) == [None, None]
    assert latent_tracks("", 2) == [None, None]
    run_dir = write_correlations(tmp_path / "run", [("z1", "pore_fraction", 0.5, True)])
    assert latent_tracks(run_dir, 2) == [None, None]  # another model's table (1 latent)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "correlations.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert latent_tracks(tmp_path / "bad", 2) == [None, None]


@pytest.fixture(scope="module")
def trained():
    stack = make_stack((12, 32, 32), seed=0, name="tiny")
    data = core.WindowDataset([stack], SPEC)
    core.seed_everything(0)
    model = core.ConvAutoEncoder3d(window_length=4, crop=16, conv_layers=3, hidden=8, latent_dim=2)
    core.run_training(model, data, core.TrainConfig(epochs=1, batch_size=4, lr=1e-3, device="cpu"))
    model.eval()
    return stack, model, core.encode_windows(model, data)


def test_panel_names_sliders_and_shows_spread_units(make_napari_viewer, qtbot, tmp_path, trained):
    stack, model, latents = trained
    state = CAEState()
    state.stacks, state.stack_layers, state.window = (stack,), (stack.name,), SPEC
    state.rebuild_dataset()
    state.model, state.latents = model, latents
    state.model_version += 1
    panel = LatentPanel(make_napari_viewer(), state)
    try:
        assert [label.text() for label in panel.slider_names] == ["z1", "z2"]
        # the run's correlations arrive with its folder: the sliders are named
        state.run_dir = str(
            write_correlations(
                tmp_path / "run", [("z1", "pore_fraction", 0.67, True), ("z2", "z", -0.4, True)]
            )
        )
        assert [label.text() for label in panel.slider_names] == [
            "z1 · pore fraction +0.67",
            "z2 · depth -0.40",
        ]
        assert "Spearman rho +0.67" in panel.sliders[0].toolTip()

        # one spread above the mean reads +1.0 σ; the raw value is in the tooltip
        mean, std = latents.astype(np.float64).mean(0), latents.astype(np.float64).std(0)
        panel.sliders[0].setValue(float(mean[0] + std[0]))
        label = panel.spread_labels.labels[0]
        assert label.text() == "+1.0 σ"
        assert f"raw value {panel.sliders[0].value():.6g}" in label.toolTip()
        panel.sliders[1].setValue(float(mean[1] - 2 * std[1]))
        assert panel.spread_labels.labels[1].text() == "-2.0 σ"
        qtbot.waitUntil(lambda: panel.idle, timeout=10_000)
    finally:
        panel.shutdown()
