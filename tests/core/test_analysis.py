"""Per-window physics, original vs reconstruction, and latent-metric correlations (no Qt)."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from napari_electrode_cae import cli
from napari_electrode_cae.core import (
    ConvAutoEncoder3d,
    TrainConfig,
    WindowDataset,
    WindowSpec,
    analysis,
    evaluate,
    generate_electrode,
    run_training,
    save_run,
    seed_everything,
    split,
)
from tests.conftest import make_stack

SPEC = WindowSpec(4, 4, crop=16)


@pytest.fixture(scope="module")
def data():
    stacks = [
        make_stack((12, 32, 32), seed=0, name="cal"),
        make_stack((12, 32, 32), seed=1, name="uncal", calendered=False),
    ]
    return WindowDataset(stacks, SPEC)


@pytest.fixture(scope="module")
def model():
    seed_everything(0)
    return ConvAutoEncoder3d(4, crop=16, hidden=16, latent_dim=3).eval()


def test_correlations_find_a_planted_relation_and_nan_for_constants():
    rng = np.random.default_rng(0)
    n = 40
    latents = rng.standard_normal((n, 3))
    metrics = {
        "planted": np.exp(latents[:, 1]),  # monotonic in latent 1: Spearman rho = 1
        "constant": np.full(n, 0.5),
        "noise": rng.standard_normal(n),
    }
    tortuosity = rng.uniform(1, 3, n)
    tortuosity[:5] = np.inf  # non-percolating windows are left out, not fatal
    metrics["tortuosity_pore_z"] = tortuosity
    extra = {"z": np.arange(n, dtype=float), "calendered": np.ones(n)}
    names, rho, p = analysis.latent_metric_correlations(latents, metrics, extra)
    assert names == ["planted", "constant", "noise", "tortuosity_pore_z", "z", "calendered"]
    assert rho.shape == p.shape == (3, 6)
    assert rho[1, 0] == pytest.approx(1.0)
    assert p[1, 0] < 1e-6
    assert np.isnan(rho[:, 1]).all() and np.isnan(p[:, 1]).all()  # constant metric
    assert np.isnan(rho[:, 5]).all()  # every window has the same tag
    assert np.isfinite(rho[:, 3]).all()
    top = analysis.strongest_correlations(names, rho, p, top=2)
    assert len(top) == 2
    assert top[0][:2] == (1, "planted") and top[0][2] == pytest.approx(1.0)
    assert abs(top[0][2]) >= abs(top[1][2])


def test_correlations_accept_window_metric_rows_and_check_lengths(data):
    rows = analysis.window_metrics(data, range(len(data)), tortuosity=False)
    latents = np.column_stack([[r["pore_fraction"] for r in rows], np.arange(len(rows))])
    names, rho, _ = analysis.latent_metric_correlations(latents, rows)
    assert "window" not in names and "z" not in names  # metadata is not a metric
    assert rho[0, names.index("pore_fraction")] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        analysis.latent_metric_correlations(latents[:-1], rows)


def test_window_metrics_rows_with_and_without_a_model(data, model):
    plain = analysis.window_metrics(data, [0, 3], tortuosity=False)
    assert [r["window"] for r in plain] == [0, 3]
    s, z, y, x = data.origin(3)
    assert (plain[1]["stack"], plain[1]["z"], plain[1]["y"], plain[1]["x"]) == (s, z, y, x)
    assert plain[1]["tag"] == data.stacks[s].tag and plain[1]["stack_name"] == data.stacks[s].name
    assert "tortuosity_pore_z" not in plain[0]
    assert not any(k.startswith("recon_") for k in plain[0])
    fractions = [plain[0][f"{p}_fraction"] for p in ("pore", "cbd", "active")]
    assert sum(fractions) == pytest.approx(1.0)

    seen = []
    full = analysis.window_metrics(
        data, [0], model, tortuosity=True, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(1, 1)]
    row = full[0]
    assert "tortuosity_pore_z" in row and "recon_tortuosity_pore_z" in row
    assert 0 <= row["recon_voxel_accuracy"] <= 1 and row["recon_mse"] >= 0
    originals, recons = analysis.split_metric_rows(full)
    assert set(originals[0]) == set(recons[0])


def test_physics_comparison_over_validation_windows(data, model):
    train_idx, val_idx = split(data, 0.3, seed=0)
    result = analysis.physics_comparison(data, val_idx, model, tortuosity=False)
    assert result["n_windows"] == result["n_validation"] == len(val_idx)
    assert result["subset"] is False and result["windows"] == sorted(int(i) for i in val_idx)
    assert result["voxel_size_um"] == data.voxel_size_um
    stats = result["metrics"]["pore_fraction"]
    assert {"n", "original_mean", "reconstruction_mean", "p_value", "wilcoxon_p_value"} <= set(
        stats
    )
    assert "tortuosity_pore_z" not in result["metrics"]
    assert 0 <= result["metrics"]["voxel_accuracy"]["mean"] <= 1
    capped = analysis.physics_comparison(
        data, val_idx, model, tortuosity=False, max_windows=2, seed=1
    )
    assert capped["n_windows"] == 2 and capped["subset"] is True
    assert set(capped["windows"]) <= set(int(i) for i in val_idx)
    assert "subset" in analysis.comparison_markdown(capped)
    # precomputed rows are reused (same numbers)
    rows = analysis.window_metrics(data, val_idx, model, tortuosity=False)
    again = analysis.physics_comparison(data, val_idx, model, tortuosity=False, rows=rows)
    assert again["metrics"]["cbd_fraction"] == result["metrics"]["cbd_fraction"]


def test_csv_writers(tmp_path, data, model):
    rows = analysis.window_metrics(
        data, [0, 1], model, tortuosity=False, splits={0: "train", 1: "val"}
    )
    rows[0]["recon_tpb_density_per_um2"] = math.inf
    path = analysis.write_metrics_csv(tmp_path / "metrics.csv", rows)
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert [r["split"] for r in read] == ["train", "val"]
    assert read[0]["recon_tpb_density_per_um2"] == "inf"
    assert float(read[1]["pore_fraction"]) == pytest.approx(rows[1]["pore_fraction"])
    names = ["a", "b"]
    rho = np.array([[0.5, np.nan]])
    analysis.write_correlations_csv(tmp_path / "corr.csv", names, rho, rho)
    with (tmp_path / "corr.csv").open() as handle:
        read = list(csv.DictReader(handle))
    assert read[0] == {"latent": "z1", "metric": "a", "spearman_rho": "0.5", "p_value": "0.5"}
    assert read[1]["spearman_rho"] == "nan"


def test_cli_physics_end_to_end(tmp_path, capsys):
    stacks = [
        generate_electrode((12, 32, 32), preset="CAL", seed=0),
        generate_electrode((12, 32, 32), preset="UNCAL", seed=1),
    ]
    data = WindowDataset(stacks, SPEC)
    seed_everything(0)
    model = ConvAutoEncoder3d(4, crop=16, hidden=16, latent_dim=3)
    config = TrainConfig(epochs=1, batch_size=4, lr=3e-3, device="cpu")
    result = run_training(model, data, config)
    report = evaluate(model, data, result.train_idx, result.val_idx)
    run_dir = save_run(
        tmp_path / "run",
        model,
        data,
        config,
        result.train_idx,
        result.val_idx,
        result.history,
        report,
    )
    capsys.readouterr()
    assert cli.main(["physics", str(run_dir), "--no-tortuosity", "--max-windows", "6"]) == 0
    out = capsys.readouterr().out
    assert "Physics of original vs reconstruction" in out
    assert "Latent-metric correlations" in out and "non-overlapping windows" in out
    for name in ("metrics.csv", "physics.json", "physics.md", "correlations.csv"):
        assert (run_dir / name).exists()
    physics = json.loads((run_dir / "physics.json").read_text())
    assert physics["n_windows"] == min(6, len(result.val_idx))
    with (run_dir / "metrics.csv").open() as handle:
        metric_rows = list(csv.DictReader(handle))
    assert 6 <= len(metric_rows) <= 12 and "recon_pore_fraction" in metric_rows[0]
    with (run_dir / "correlations.csv").open() as handle:
        corr = list(csv.DictReader(handle))
    assert {r["metric"] for r in corr} >= {"pore_fraction", "z", "calendered"}
    assert len({r["latent"] for r in corr}) == 3

    # the tortuosity solvers give the same metrics (auto = torch on a GPU if any, else scipy)
    taus = {}
    for device in ("scipy", "cpu", "auto"):
        assert cli.main(["physics", str(run_dir), "--max-windows", "2", "--device", device]) == 0
        with (run_dir / "metrics.csv").open() as handle:
            taus[device] = [float(r["tortuosity_pore_z"]) for r in csv.DictReader(handle)]
    assert taus["cpu"] == pytest.approx(taus["scipy"], rel=1e-4)
    assert taus["auto"] == pytest.approx(taus["scipy"], rel=1e-4)
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert cli.main(["physics", str(run_dir), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_cli_physics_bad_run_dir_is_one_line(tmp_path, capsys):
    assert cli.main(["physics", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


# --------------------------------------------------------------------------- honest statistics


def _study_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    pore = rng.uniform(0.2, 0.6, n)
    cbd = rng.uniform(0.05, 0.2, n)
    tau = 1 + 1.5 * (0.6 - pore) + 0.05 * rng.standard_normal(n)  # tau tracks porosity only
    metrics = {"pore_fraction": pore, "cbd_fraction": cbd, "tortuosity_pore_z": tau}
    return rng, metrics


def test_study_keeps_a_real_correlation_and_drops_noise():
    rng, metrics = _study_data()
    latents = np.column_stack(
        [
            metrics["pore_fraction"] + 0.01 * rng.standard_normal(60),
            rng.standard_normal(60),
            rng.standard_normal(60),
        ]
    )
    random = rng.standard_normal((60, 3))
    study = analysis.correlation_study(latents, metrics, random_latents=random)
    surviving = {(j, name) for j, name, *_ in study.surviving()}
    assert (0, "pore_fraction") in surviving and (0, "tortuosity_pore_z") in surviving
    assert not any(j > 0 for j, _ in surviving)
    assert np.all(
        study.q_values[np.isfinite(study.p_values)] >= study.p_values[np.isfinite(study.p_values)]
    )
    # z1 follows tortuosity only through porosity: the partial correlation is small
    m = study.names.index("tortuosity_pore_z")
    assert abs(study.rho[0, m]) > 0.9 and abs(study.partial_rho[0, m]) < 0.4
    assert np.isnan(study.partial_rho[0, study.names.index("pore_fraction")])
    assert "survive" in study.note


def test_study_says_when_nothing_survives():
    rng, metrics = _study_data(n=30)
    study = analysis.correlation_study(
        rng.standard_normal((30, 4)), metrics, random_latents=rng.standard_normal((30, 4))
    )
    assert not study.survives.any()
    assert study.note.startswith("nothing survives")


def test_study_of_constant_latents_says_so_and_the_csv_is_not_silent(tmp_path):
    _, metrics = _study_data(n=20)
    study = analysis.correlation_study(np.ones((20, 3)), metrics)
    assert "collapsed" in study.note and not study.survives.any()
    path = analysis.write_study_csv(tmp_path / "correlations.csv", study)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {r["survives"] for r in rows} == {"False"}
    assert rows[0]["n_windows"] == "20"


def test_random_encoder_is_built_without_touching_the_callers_rng():
    stacks = [generate_electrode((12, 32, 32), preset="CAL", seed=0)]
    data = WindowDataset(stacks, SPEC)
    model = ConvAutoEncoder3d(4, crop=16, hidden=16, latent_dim=3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = analysis.random_encoder_latents(model, data, [0, 1, 2], seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = analysis.random_encoder_latents(model, data, [0, 1, 2], seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 3)


def test_the_random_encoder_baseline_leaves_torchs_global_random_state_alone():
    import torch

    from napari_electrode_cae.core import ModelConfig
    from napari_electrode_cae.core.analysis import never_trained_model

    config = ModelConfig(4, 16, 3, 8, 3, norm="batch", output="phases")
    before = torch.get_rng_state()
    a, b = never_trained_model(config, seed=3), never_trained_model(config, seed=3)
    assert torch.equal(before, torch.get_rng_state())
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name  # the seed alone decides the weights
    c = never_trained_model(config, seed=4)
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)
    assert torch.isfinite(a.encode(torch.rand(2, 1, 4, 16, 16))).all()
