"""End to end: train -> save -> load -> evaluate, through the Python API and the CLI."""

import csv
import json

import numpy as np
import pytest
import torch

from napari_electrode_cae import cli
from napari_electrode_cae.core import (
    ConvAutoEncoder3d,
    RunFolderError,
    TrainConfig,
    WindowDataset,
    WindowSpec,
    evaluate,
    load_run,
    run_training,
    save_run,
    seed_everything,
    write_stack,
)
from tests.conftest import make_stack

SPEC = WindowSpec(4, 2, crop=16)


@pytest.fixture
def stack_files(tmp_path):
    paths = []
    for seed, tag in ((0, "CAL"), (1, "UNCAL")):
        path = tmp_path / f"tiny_{tag}.tif"
        write_stack(path, make_stack(seed=seed, calendered=tag == "CAL"))
        paths.append(path)
    return paths


@pytest.fixture
def trained_run(tmp_path, tiny_stacks):
    data = WindowDataset(tiny_stacks, SPEC)
    seed_everything(0)
    model = ConvAutoEncoder3d(4, crop=16, hidden=16, latent_dim=3)
    config = TrainConfig(epochs=2, batch_size=4, lr=3e-3, device="cpu", split="random")
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
    return run_dir, model, data, result, report


def test_save_load_round_trip(trained_run):
    run_dir, model, data, result, report = trained_run
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.json",
        "weights.pt",
        "history.csv",
        "latents.csv",
        "report.json",
        "report.md",
    }
    run = load_run(run_dir)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[key], value)
    assert [h["epoch"] for h in run.history] == [1, 2]
    np.testing.assert_array_equal(run.val_idx, result.val_idx)
    # stacks without a file of their own were copied into the run and read back identically
    reloaded = run.load_dataset()
    assert len(reloaded) == len(data)
    np.testing.assert_array_equal(reloaded.stacks[1].labels, data.stacks[1].labels)
    assert reloaded.stacks[1].calendered is False
    again = evaluate(run.model, reloaded, run.train_idx, run.val_idx)
    assert again.mse.val_mean == pytest.approx(report.mse.val_mean, rel=1e-5)
    with (run_dir / "latents.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(data)
    assert {r["split"] for r in rows} == {"train", "val"}
    assert list(rows[0])[-3:] == ["z1", "z2", "z3"]


def test_evaluation_report_has_paper_and_phase_statistics(trained_run):
    _, _, data, result, report = trained_run
    assert report.mse.n_train == len(result.train_idx)
    assert report.mse.n_val == len(result.val_idx)
    assert 0 <= report.mse.p_value <= 1
    w = report.window
    assert w.window in set(result.val_idx.tolist())
    assert w.n_voxels == 4 * 16 * 16
    assert 0 <= w.voxel_accuracy <= 1
    assert sum(w.original_fractions.values()) == pytest.approx(1)
    row = report.table8_row()
    assert row["Training dataset"] == str(len(result.train_idx))
    assert "±" in row["Training MSE"]
    assert "Voxel accuracy" in report.to_markdown()


def test_load_run_refuses_mismatched_weights(trained_run):
    run_dir = trained_run[0]
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["latent_dim"] = 5
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="latent_dim=5"):
        load_run(run_dir)


def test_load_run_refuses_invalid_config(trained_run):
    run_dir = trained_run[0]
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["conv_layers"] = 7
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="conv_layers"):
        load_run(run_dir)


def test_load_run_refuses_a_pickle_payload(trained_run, tmp_path):
    run_dir = trained_run[0]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, run_dir / "weights.pt")
    with pytest.raises(RunFolderError, match="refused|not a plain weights file|not a readable"):
        load_run(run_dir)
    assert not marker.exists()


def test_missing_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nope")


# --- CLI -------------------------------------------------------------------------------------


def test_cli_summary_prints_table_3(capsys):
    assert cli.main(["summary", "--window", "24"]) == 0
    out = capsys.readouterr().out
    assert "[-1, 16, 1, 27, 27]" in out
    assert "1,550,970" in out and "1,562,609" in out


def test_cli_sample(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "s"), "--shape", "12", "32", "32"]) == 0
    assert (tmp_path / "s" / "synthetic_CAL.tif").exists()
    assert (tmp_path / "s" / "synthetic_UNCAL.tif").exists()


def test_cli_train_evaluate_encode_decode(tmp_path, stack_files, capsys):
    run_dir = tmp_path / "run one"
    code = cli.main(
        [
            "train",
            *map(str, stack_files),
            "--window",
            "4",
            "--stride",
            "2",
            "--crop",
            "16",
            "--hidden",
            "16",
            "--latent",
            "3",
            "--epochs",
            "2",
            "--batch",
            "4",
            "--lr",
            "0.003",
            "--device",
            "cpu",
            "--out",
            str(run_dir),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "Validation MSE" in captured.out
    assert "phases 0→pore" in captured.err
    assert (run_dir / "weights.pt").exists() and not (run_dir / "best.pt").exists()

    assert cli.main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "p-value for MSE" in out and "phase fractions" in out
    assert json.loads((run_dir / "report.json").read_text())["mse"]["n_val"] >= 1

    latents = tmp_path / "latents.csv"
    assert cli.main(["encode", str(run_dir), str(stack_files[0]), "--out", str(latents)]) == 0
    rows = list(csv.DictReader(latents.open()))
    assert len(rows) == 5 * 2 * 2 and "z3" in rows[0]  # 5 z positions x 2x2 tiles

    volume = tmp_path / "decoded.tif"
    assert cli.main(["decode", str(run_dir), "--latent", "0,0.5,-1", "--out", str(volume)]) == 0
    from napari_electrode_cae.core import read_stack

    decoded = read_stack(volume)
    assert decoded.shape == (4, 16, 16)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "missing.tif", "--out", "r"], "missing.tif"),
        (
            ["train", "{stack}", "--window", "40", "--crop", "16", "--out", "r"],
            "window length 40 exceeds",
        ),
        (["train", "{stack}", "--stride", "0", "--out", "r"], "must be at least 1"),
        (["train", "{stack}", "--crop", "64", "--out", "r"], "crop 64 is larger"),
        (["train", "{stack}", "--phases", "0=pore,1=gold", "--out", "r"], "gold"),
        (
            ["summary", "--window", "4", "--crop", "10", "--layers", "5"],
            "too small for 5 conv layers",
        ),
        (["evaluate", "no_such_run"], "does not exist"),
        (["decode", "{run}", "--latent", "1,2", "--out", "v.tif"], "needs 3 finite values"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(
    argv, message, tmp_path, stack_files, trained_run, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(stack=stack_files[0], run=trained_run[0]) for a in argv]
    with pytest.raises(SystemExit) if argv[0] == "train" and "--stride" in argv else _nullcontext():
        code = cli.main(argv)
        assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "an error message is printed"
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
