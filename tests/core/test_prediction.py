"""Latent -> metric regressors: blocked folds, R² against trivial and random baselines."""

import json

import numpy as np
import pytest

from napari_electrode_cae.core import analysis, prediction
from napari_electrode_cae.core.errors import ElectrodeCAEError
from tests.trained_tiny_run import fitted_report, save_tiny_run, trained


def test_independent_windows_share_no_voxel():
    _, data, _ = trained()
    chosen = analysis.independent_windows(data)
    grid = np.asarray(data.grid)[chosen]
    assert len(chosen) == 128
    for a in range(len(grid)):
        d = np.abs(grid[a + 1 :] - grid[a])
        overlap = (d[:, 1] < data.spec.length) & (d[:, 2] < 16) & (d[:, 3] < 16)
        assert not overlap.any()


def test_blocked_folds_never_share_a_slice_between_train_and_test():
    _, data, _ = trained()
    windows = np.arange(len(data))  # overlapping windows too: training drops the neighbours
    folds = prediction.blocked_folds(data, windows, 4)
    grid = np.asarray(data.grid)
    covered = np.concatenate([test for _, test in folds])
    assert sorted(covered) == list(range(len(windows)))
    for train, test in folds:
        assert len(train) and len(test)
        tz, trz = grid[windows[test], 1], grid[windows[train], 1]
        assert not np.any(np.abs(trz[:, None] - tz[None, :]) < data.spec.length)


def test_held_out_fold_r2_beats_the_mean_and_a_random_encoder():
    model, data, _ = trained()
    windows = analysis.independent_windows(data)
    latents = analysis.encode_indices(model, data, windows)
    pore = np.array([float(np.mean(data.view(int(w)) == 0)) for w in windows])
    train, test = prediction.blocked_folds(data, windows, 4)[-1]
    scores = prediction.cross_validate(latents, pore, [(train, test)])
    assert scores["n"] == len(test)
    assert scores["r2_mean_baseline"] <= 0.05  # the trivial baseline: the training mean
    assert scores["r2"] > 0.6
    assert scores["r2"] > scores["r2_mean_baseline"] + 0.5


def test_report_per_metric_r2_units_and_random_baseline():
    report = fitted_report()
    fits = {f.name: f for f in report.fits}
    assert list(fits) == ["pore_fraction", "cbd_fraction", "ssa_active_per_um"]
    pore = fits["pore_fraction"]
    assert report.n_windows == 128 and report.n_folds == 4
    assert pore.r2 > 0.6 and pore.r2 > pore.r2_random + 0.1 and pore.predicts
    assert 0 < pore.rmse < pore.spread  # error in the metric's units, below its spread
    assert fits["ssa_active_per_um"].unit == "µm⁻¹"
    text = prediction.r2_table(report)
    assert "pore_fraction" in text and "random" in text


def test_saved_predictor_predicts_as_the_fitted_one(tmp_path):
    save_tiny_run(tmp_path / "run")
    record = json.loads((tmp_path / "run" / "prediction.json").read_text())
    assert set(record["metrics"]) == {"pore_fraction", "cbd_fraction", "ssa_active_per_um"}
    loaded = prediction.load_predictor(tmp_path / "run")
    fitted = fitted_report().predictor
    z = fitted.latents[:5]
    mean_a, std_a = fitted.predict(z)
    mean_b, std_b = loaded.predict(z)
    np.testing.assert_allclose(mean_b["pore_fraction"], mean_a["pore_fraction"], atol=1e-6)
    assert np.all(std_b["pore_fraction"] > 0)
    one_mean, one_std = loaded.predict(z[0])
    assert isinstance(one_mean["pore_fraction"], float)


def test_too_few_windows_is_a_clear_error():
    model, data, _ = trained()
    with pytest.raises(ElectrodeCAEError, match="non-overlapping windows"):
        prediction.fit_prediction(model, data, max_windows=5, n_folds=4, names=["pore_fraction"])


def test_missing_prediction_file_says_what_to_run(tmp_path):
    save_tiny_run(tmp_path / "run", with_prediction=False)
    with pytest.raises(ElectrodeCAEError, match="electrode-cae predict"):
        prediction.load_predictor(tmp_path / "run")


def test_wrong_latent_length_is_rejected():
    with pytest.raises(ElectrodeCAEError, match="features"):
        fitted_report().predictor.predict(np.zeros(7))
