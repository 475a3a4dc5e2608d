"""`electrode-cae predict` and `design`: tables, --json shapes, files, one-line errors."""

import json

import numpy as np
import pytest

from napari_electrode_cae import cli
from napari_electrode_cae.core import io
from tests.trained_tiny_run import save_tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_tiny_run(tmp_path_factory.mktemp("cli") / "run")


def test_predict_json_has_r2_per_metric_beside_a_random_encoder(run_dir, capsys):
    args = [
        "predict",
        str(run_dir),
        "--json",
        "--folds",
        "4",
        "--no-tortuosity",
        "--max-windows",
        "40",
    ]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_folds"] == 4 and out["n_windows"] == 40
    pore = out["metrics"]["pore_fraction"]
    for key in ("r2", "r2_random", "rmse", "mae", "spread", "unit", "label", "predicts", "n"):
        assert key in pore
    assert "tortuosity_pore_z" not in out["metrics"]
    assert set(out["metrics"]) >= {"cbd_fraction", "ssa_active_per_um", "tpb_density_per_um2"}
    assert (run_dir / "prediction.json").exists()


def test_predict_prints_the_r2_table(run_dir, capsys):
    assert (
        cli.main(
            [
                "predict",
                str(run_dir),
                "--folds",
                "4",
                "--max-windows",
                "40",
                "--metrics",
                "pore_fraction,ssa_active_per_um",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "R²" in out and "random" in out and "pore_fraction" in out
    assert "cbd_fraction" not in out


def test_predict_unknown_metric_is_one_line(run_dir, capsys):
    assert cli.main(["predict", str(run_dir), "--metrics", "porosity"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown metric 'porosity'" in err


def test_design_json_shape_and_files(run_dir, tmp_path, capsys):
    out_dir = tmp_path / "designed"
    args = [
        "design",
        str(run_dir),
        "--target",
        "pore_fraction=0.40:0.02",
        "--maximize",
        "ssa_active_per_um",
        "--candidates",
        "2",
        "--out",
        str(out_dir),
        "--json",
    ]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["reached"], bool)
    assert 1 <= len(out["candidates"]) <= 2
    for c in out["candidates"]:
        assert set(c) >= {"latent", "predicted", "measured", "meets_targets"}
        assert isinstance(c["latent"], list) and isinstance(c["meets_targets"], bool)
        assert "pore_fraction" in c["measured"] and "pore_fraction" in c["predicted"]
    assert out["reached"] == any(c["meets_targets"] for c in out["candidates"])
    first = out["candidates"][0]
    stack = io.read_stack(out_dir / "candidate_01.tif")
    assert float(np.mean(stack.labels == 0)) == pytest.approx(first["measured"]["pore_fraction"])
    assert (out_dir / "candidate_01_latent.csv").exists()
    assert (out_dir / "candidates.csv").exists() and (out_dir / "design.json").exists()


def test_design_unreachable_target_prints_nearest_and_binding(run_dir, tmp_path, capsys):
    assert (
        cli.main(
            [
                "design",
                str(run_dir),
                "--target",
                "pore_fraction=0.99:0.005",
                "--candidates",
                "1",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "NOT reached" in out and "nearest" in out and "binding" in out


@pytest.mark.parametrize(
    "target, message",
    [
        ("porosity=0.4:0.01", "unknown metric"),
        ("pore_fraction=2:0.1", "outside the possible values"),
    ],
)
def test_design_bad_target_is_one_line(run_dir, tmp_path, capsys, target, message):
    code = cli.main(["design", str(run_dir), "--target", target, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


def test_design_without_targets_or_objective_is_one_line(run_dir, tmp_path, capsys):
    assert cli.main(["design", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "at least one target" in capsys.readouterr().err


def test_predict_missing_run_is_one_line(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
