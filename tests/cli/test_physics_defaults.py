"""`electrode-cae physics` stays bounded on large data by default, with progress and the time
left, and says how to ask for every window."""

from __future__ import annotations

import csv
import math

import pytest

from napari_electrode_cae import cli
from napari_electrode_cae.core import (
    ConvAutoEncoder3d,
    TrainConfig,
    WindowDataset,
    WindowSpec,
    evaluate,
    run_training,
    save_run,
    seed_everything,
)
from tests.conftest import make_stack

#: Stride 1: 9 window positions in Z × 4 in-plane tiles = 36 windows.
SPEC = WindowSpec(4, 1, crop=16)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = WindowDataset([make_stack((12, 32, 32), seed=0)], SPEC)
    seed_everything(0)
    model = ConvAutoEncoder3d(4, crop=16, hidden=8, latent_dim=2)
    config = TrainConfig(epochs=1, batch_size=8, lr=3e-3, device="cpu")
    result = run_training(model, data, config)
    report = evaluate(model, data, result.train_idx, result.val_idx)
    return save_run(
        tmp_path_factory.mktemp("physics") / "run",
        model,
        data,
        config,
        result.train_idx,
        result.val_idx,
        result.history,
        report,
    )


def metric_rows(run_dir):
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_defaults_sample_windows_and_solve_tortuosity_on_a_subset(run_dir, capsys, monkeypatch):
    # the defaults of a 256³ stack, scaled to this small run
    monkeypatch.setattr(cli.physics, "PHYSICS_WINDOWS", 8)
    monkeypatch.setattr(cli.physics, "PHYSICS_TORTUOSITY", 3)
    capsys.readouterr()
    assert cli.main(["physics", str(run_dir), "--device", "scipy"]) == 0
    err = capsys.readouterr().err
    rows = metric_rows(run_dir)
    assert 8 <= len(rows) <= 16  # the sample and the validation sample, not all 36
    assert f"{len(rows)} of 36 windows" in err
    assert "--max-windows all for every window" in err
    assert "pore tortuosity on 3 of them (--tortuosity-windows all" in err
    # progress in both passes, with the time left before the end
    assert f"{len(rows) - 3}/{len(rows) - 3} windows" in err
    assert "3/3 windows with tortuosity" in err and " left" in err
    solved = [r for r in rows if r["tortuosity_pore_z"] != "nan"]
    assert len(solved) == 3
    assert all(r["recon_tortuosity_pore_z"] != "nan" for r in solved)
    assert all(
        float(r["tortuosity_pore_z"]) >= 1 or math.isinf(float(r["tortuosity_pore_z"]))
        for r in solved
    )
    assert (run_dir / "correlations.csv").exists() and (run_dir / "physics.json").exists()


def test_all_windows_on_request(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(cli.physics, "PHYSICS_WINDOWS", 8)
    capsys.readouterr()
    assert cli.main(["physics", str(run_dir), "--max-windows", "all", "--no-tortuosity"]) == 0
    err = capsys.readouterr().err
    rows = metric_rows(run_dir)
    assert len(rows) == 36 and "36 of 36 windows" in err and "a seeded sample" not in err
    assert "tortuosity_pore_z" not in rows[0]
    assert "36/36 windows" in err


def test_bad_window_counts_are_one_line(run_dir, capsys):
    for bad in ("0", "some"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["physics", str(run_dir), "--tortuosity-windows", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "--tortuosity-windows" in err and "Traceback" not in err
