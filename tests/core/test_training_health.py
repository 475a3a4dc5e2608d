"""Training reports collapse to the mean and divergence, and learns with the new options."""

import json
import math

import numpy as np
import pytest
import torch

from napari_electrode_cae import cli
from napari_electrode_cae.core import (
    ConvAutoEncoder3d,
    TrainConfig,
    TrainConfigError,
    WindowDataset,
    WindowSpec,
    run_training,
    seed_everything,
    write_stack,
)
from napari_electrode_cae.core.health import diagnose
from napari_electrode_cae.core.training import TimeEstimate, lr_factor
from tests.conftest import make_stack

SPEC = WindowSpec(4, 2, crop=16)


def _data():
    return WindowDataset([make_stack(seed=0), make_stack(seed=1)], SPEC)


def test_constant_output_is_called_collapsed_and_a_varied_one_is_not():
    assert diagnose(1.0, 0.01).state == "collapsed"
    assert diagnose(0.5, 0.8).state == "ok"
    assert diagnose(math.inf, math.nan).state == "diverged"
    assert "learning rate (now 0.002)" in diagnose(1.0, 0.01, lr=2e-3).advice


def test_an_absurd_learning_rate_diverges_stops_and_keeps_the_initial_weights():
    seed_everything(0)
    model = ConvAutoEncoder3d(4, 16, 3, 16, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_training(model, _data(), TrainConfig(epochs=5, batch_size=4, lr=1e8, device="cpu"))
    assert result.diverged and result.stopped
    assert len(result.history) < 5  # stopped at the first non-finite epoch
    assert "diverged" in result.health.message and "learning rate" in result.health.advice
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_epoch_reports_nmse_and_spread():
    seed_everything(0)
    model = ConvAutoEncoder3d(4, 16, 3, 16, 4, norm="batch", output="phases")
    config = TrainConfig(
        epochs=2,
        batch_size=4,
        lr=1e-3,
        device="cpu",
        warmup_epochs=1,
        schedule="cosine",
        grad_clip=1.0,
        windows_per_epoch=8,
        phase_loss="ce_dice",
    )
    result = run_training(model, _data(), config)
    for report in result.history:
        assert 0 < report.val_nmse < 5 and 0 <= report.spread < 5
    assert result.health.state in ("ok", "collapsed")


def test_windows_per_epoch_bounds_the_batches_of_an_epoch():
    from napari_electrode_cae.core import BatchReport, train

    seed_everything(0)
    model = ConvAutoEncoder3d(4, 16, 3, 16, 4)
    config = TrainConfig(epochs=1, batch_size=2, device="cpu", windows_per_epoch=6)
    batches = [
        r for r in train(model, _data(), config, yield_batches=True) if isinstance(r, BatchReport)
    ]
    assert len(batches) == 3 and batches[0].batches == 3


def test_weighted_cross_entropy_trains_a_three_phase_model():
    seed_everything(0)
    model = ConvAutoEncoder3d(4, 16, 3, 16, 4, output="phases")
    result = run_training(
        model, _data(), TrainConfig(epochs=1, batch_size=4, device="cpu", phase_loss="weighted_ce")
    )
    assert math.isfinite(result.history[0].train_mse)


def test_warm_up_rises_to_the_rate_and_cosine_decays_to_zero():
    config = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    assert lr_factor(0, 10, config) == pytest.approx(0.1)
    assert lr_factor(20, 10, config) == pytest.approx(1.0)
    assert lr_factor(99, 10, config) < 0.01
    constant = TrainConfig(epochs=10, warmup_epochs=1)
    assert lr_factor(50, 10, constant) == 1.0


@pytest.mark.parametrize(
    "field, value",
    [
        ("windows_per_epoch", -1),
        ("warmup_epochs", 1.5),
        ("grad_clip", -1.0),
        ("schedule", "step"),
        ("phase_loss", "focal"),
    ],
)
def test_bad_training_options_are_refused_with_the_field(field, value):
    with pytest.raises(TrainConfigError, match=field):
        TrainConfig(**{field: value})


def test_time_estimate_from_the_first_batches_then_from_epochs():
    estimate = TimeEstimate(batches=20, epochs=4, val_windows=30, batch_size=10)
    ready = [estimate.batch_done() for _ in range(7)]
    assert ready == [False] * 5 + [True, False]
    assert estimate.total_seconds >= 0
    estimate.epoch_done(10.0)
    assert estimate.epoch_seconds == 10.0 and estimate.remaining_seconds == 30.0
    assert "40 s" in estimate.describe()


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "tiny.tif"
    write_stack(path, make_stack(seed=0, shape=(16, 32, 32)))
    return path


def _train_cli(stack_file, out, *extra):
    return cli.main(
        [
            "train",
            str(stack_file),
            "--out",
            str(out),
            "--window",
            "4",
            "--stride",
            "2",
            "--crop",
            "16",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--hidden",
            "16",
            "--latent",
            "4",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_cli_diverged_run_warns_exits_non_zero_and_is_flagged_in_json(stack_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = _train_cli(
        stack_file,
        out,
        "--lr",
        "1e9",
        "--norm",
        "none",
        "--output",
        "value",
        "--grad-clip",
        "0",
        "--warmup-epochs",
        "0",
    )
    err = capsys.readouterr().err
    assert code == cli.EXIT_DIVERGED
    assert "warning: training diverged" in err and "learning rate" in err
    assert json.loads((out / "config.json").read_text())["health"]["state"] == "diverged"
    assert cli.main(["evaluate", str(out), "--json"]) == cli.EXIT_DIVERGED
    summary = json.loads(capsys.readouterr().out)
    assert summary["diverged"] is True


def test_cli_collapsed_run_warns_and_is_flagged_in_json(stack_file, tmp_path, capsys, monkeypatch):
    # force a collapse: a model whose decoder ends in zero weights outputs one constant value
    from napari_electrode_cae.core import model as model_module

    real_init = model_module.ConvAutoEncoder3d.__init__

    def constant_decoder(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.decoder[-1].weight.data.zero_()
        self.decoder[-1].weight.requires_grad_(False)

    monkeypatch.setattr(model_module.ConvAutoEncoder3d, "__init__", constant_decoder)
    out = tmp_path / "run"
    assert _train_cli(stack_file, out, "--output", "value", "--norm", "none") == 0
    err = capsys.readouterr().err
    assert "warning: the model collapsed to the mean" in err
    assert cli.main(["evaluate", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["collapsed"] is True and summary["spread"] < 0.15


def test_cli_evaluate_json_has_the_documented_keys(stack_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train_cli(stack_file, out) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("val_mse", "val_nmse", "voxel_accuracy", "collapsed"):
        assert key in summary
    for key in ("phase_fractions",):
        assert set(summary[key]) == {"original", "reconstruction"}
        for side in summary[key].values():
            assert set(side) == {"pore", "cbd", "active"}
            assert sum(side.values()) == pytest.approx(1.0)
    assert set(summary["phase_iou"]) == {"pore", "cbd", "active"}
    assert isinstance(summary["collapsed"], bool)
    assert summary["phase_rule"].startswith("argmax")  # the quick preset's three-phase output
    assert 0 <= summary["voxel_accuracy"] <= 1


def test_cli_one_channel_run_saves_fitted_thresholds_and_the_paper_rule_on_request(
    stack_file, tmp_path
):
    from napari_electrode_cae.core import load_run

    fitted = tmp_path / "fitted"
    assert _train_cli(stack_file, fitted, "--output", "value") == 0
    assert load_run(fitted).model.phase_rule.name == "fitted"
    nearest = tmp_path / "nearest"
    assert _train_cli(stack_file, nearest, "--output", "value", "--phase-rule", "nearest") == 0
    assert load_run(nearest).model.phase_rule.name == "nearest"


def test_cli_reports_windows_batches_and_a_time_estimate_before_training(
    stack_file, tmp_path, capsys
):
    assert _train_cli(stack_file, tmp_path / "run", "--epochs", "2") == 0
    err = capsys.readouterr().err
    assert "2 epochs of" in err and "batches of 4" in err
    assert "(blocked)" in err  # stride 2 < window 4: the blocked split by default


def test_batch_norm_refuses_a_batch_of_one_and_drops_a_last_batch_of_one():
    from napari_electrode_cae.core import BatchReport, train
    from napari_electrode_cae.core.training import windows_per_epoch

    model = ConvAutoEncoder3d(4, 16, 3, 16, 4, norm="batch")  # 1×1 bottleneck at crop 16
    with pytest.raises(TrainConfigError, match="batch size 1"):
        run_training(model, _data(), TrainConfig(epochs=1, batch_size=1, device="cpu"))
    config = TrainConfig(epochs=1, batch_size=4, device="cpu", windows_per_epoch=9)
    assert windows_per_epoch(20, config, "batch") == 8
    assert windows_per_epoch(20, config, "group") == 9
    batches = [
        r for r in train(model, _data(), config, yield_batches=True) if isinstance(r, BatchReport)
    ]
    assert len(batches) == 2  # 9 windows in batches of 4: the one left over is dropped


def test_an_error_far_above_the_data_variance_is_divergence():
    assert diagnose(50.0, 3.0).state == "diverged"
    assert "times the data's variance" in diagnose(50.0, 3.0).message
    assert diagnose(2.0, 1.2).state == "ok"  # early training can start above the mean


def test_cli_decode_of_a_three_phase_run_snaps_by_the_runs_rule(stack_file, tmp_path, capsys):
    import torch

    from napari_electrode_cae.core import load_run, read_stack

    out = tmp_path / "run"
    assert _train_cli(stack_file, out, "--output", "phases") == 0
    capsys.readouterr()
    volume = tmp_path / "decoded.tif"
    assert cli.main(["decode", str(out), "--latent", "0,0,0,0", "--out", str(volume)]) == 0
    assert "offsets fitted" in capsys.readouterr().out
    run = load_run(out)
    with torch.inference_mode():
        expected = run.model.phase_labels(run.model.decode(torch.zeros(1, 4)))[0]
    np.testing.assert_array_equal(read_stack(volume).labels, expected)


def test_an_unmeasured_nmse_is_not_divergence():
    # histories written before NMSE was measured, or validation windows of a single phase
    assert diagnose(math.nan, math.nan).state == "ok"
    assert diagnose(math.nan, math.nan, finite=False).state == "diverged"


def test_time_estimate_is_reported_once_for_short_epochs():
    estimate = TimeEstimate(batches=3, epochs=2, val_windows=4, batch_size=2)
    assert sum(estimate.batch_done() for _ in range(8)) == 1


def test_cli_summary_shows_the_model_options(capsys):
    assert (
        cli.main(
            ["summary", "--window", "4", "--crop", "32", "--norm", "batch", "--output", "phases"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "BatchNorm3d" in out and "[-1, 3, 4, 32, 32]" in out
