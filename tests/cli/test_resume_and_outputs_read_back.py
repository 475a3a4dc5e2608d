"""Issue 17, resume and outputs: a resume matches the recorded run or refuses naming the field;
a diverged run exits non-zero; the tool's own 0/1/2 files read back exactly; a mapped stack
that changes under a training stops it in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from napari_electrode_cae import cli, core
from tests.cli.helpers import TINY_MODEL, error_line
from tests.conftest import make_stack


def _stop_after_epochs(monkeypatch, n: int) -> None:
    """Ctrl-C after ``n`` epochs of the next training (as a user pressing it)."""
    done = []
    original = core.training.TimeEstimate.epoch_done

    def epoch_done(self, seconds):
        original(self, seconds)
        done.append(1)
        if len(done) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(core.training.TimeEstimate, "epoch_done", epoch_done)


@pytest.fixture
def interrupted_run(tmp_path, stack_file, monkeypatch, capsys):
    """A run of 4 epochs stopped after 2: last.pt kept."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_after_epochs(patch, 2)
        code = cli.main(
            [
                "train",
                str(stack_file),
                "--out",
                str(out),
                *TINY_MODEL,
                "--epochs",
                "4",
                "--lr",
                "0.002",
            ]
        )
    assert code == cli.EXIT_INTERRUPTED and (out / "last.pt").exists()
    capsys.readouterr()
    return out


def _resume(stack, out, *extra):
    return cli.main(
        [
            "train",
            str(stack),
            "--out",
            str(out),
            *TINY_MODEL,
            "--epochs",
            "4",
            "--lr",
            "0.002",
            "--resume",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--seed", "7"], "train seed: the run has 0, now 7"),
        (["--lr", "0.5"], "train lr: the run has 0.002, now 0.5"),
        (["--hidden", "16"], "model hidden: the run has 8, now 16"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_the_field(
    interrupted_run, stack_file, capsys, extra, field
):
    config_before = (interrupted_run / "config.json").read_bytes()
    assert _resume(stack_file, interrupted_run, *extra) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert field in line and "last.pt" in line
    assert (interrupted_run / "config.json").read_bytes() == config_before  # not rewritten
    assert (interrupted_run / "last.pt").exists()


def test_resume_with_another_stack_is_refused(interrupted_run, tmp_path, capsys):
    other = tmp_path / "other_CAL.tif"
    core.write_stack(other, make_stack((12, 32, 32), seed=5))
    assert _resume(other, interrupted_run) == cli.EXIT_BAD_INPUT
    assert "stack 1: the run was trained on 'tiny_CAL'" in error_line(capsys)


def test_resume_with_the_same_settings_finishes_the_run(interrupted_run, stack_file, capsys):
    assert _resume(stack_file, interrupted_run) == 0
    assert "resuming after epoch 2" in capsys.readouterr().err
    run = core.load_run(interrupted_run)
    assert [row["epoch"] for row in run.history] == [1, 2, 3, 4]
    assert not (interrupted_run / "last.pt").exists()


def test_resume_with_fewer_epochs_than_done_is_refused(interrupted_run, stack_file, capsys):
    code = cli.main(
        [
            "train",
            str(stack_file),
            "--out",
            str(interrupted_run),
            *TINY_MODEL,
            "--epochs",
            "1",
            "--lr",
            "0.002",
            "--resume",
        ]
    )
    assert code == cli.EXIT_BAD_INPUT
    assert "epochs 1 is fewer than the 2 epochs this run has done" in error_line(capsys)


def test_resume_with_as_many_epochs_as_done_finishes_without_training(
    interrupted_run, stack_file, capsys
):
    code = cli.main(
        [
            "train",
            str(stack_file),
            "--out",
            str(interrupted_run),
            *TINY_MODEL,
            "--epochs",
            "2",
            "--lr",
            "0.002",
            "--resume",
        ]
    )
    assert code == 0
    assert "all 2 epochs are done, finishing the run" in capsys.readouterr().err
    assert len(core.load_run(interrupted_run).history) == 2


def test_an_interrupted_run_is_not_restarted_without_resume(interrupted_run, stack_file, capsys):
    last = (interrupted_run / "last.pt").read_bytes()
    code = cli.main(
        ["train", str(stack_file), "--out", str(interrupted_run), *TINY_MODEL, "--epochs", "4"]
    )
    assert code == cli.EXIT_BAD_INPUT
    assert "interrupted run" in error_line(capsys)
    assert (interrupted_run / "last.pt").read_bytes() == last


def test_resume_of_a_finished_run_says_there_is_nothing_to_resume(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(["train", str(stack_file), "--out", str(out), *TINY_MODEL, "--epochs", "1"]) == 0
    )
    weights = (out / "weights.pt").read_bytes()
    capsys.readouterr()
    code = cli.main(
        ["train", str(stack_file), "--out", str(out), *TINY_MODEL, "--epochs", "1", "--resume"]
    )
    assert code == cli.EXIT_BAD_INPUT
    assert "holds a finished run: there is nothing to resume" in error_line(capsys)
    assert (out / "weights.pt").read_bytes() == weights


def test_resume_into_a_new_folder_says_it_starts_a_new_run(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    code = cli.main(
        ["train", str(stack_file), "--out", str(out), *TINY_MODEL, "--epochs", "1", "--resume"]
    )
    assert code == 0
    assert "nothing to resume" in capsys.readouterr().err


def test_a_diverged_training_exits_non_zero_and_is_flagged(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            str(stack_file),
            "--out",
            str(out),
            *TINY_MODEL,
            "--epochs",
            "3",
            "--lr",
            "1e30",
            "--grad-clip",
            "0",
            "--warmup-epochs",
            "0",
        ]
    )
    assert code == cli.EXIT_DIVERGED
    assert "diverged" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["health"]["state"] == "diverged"
    assert cli.main(["evaluate", str(out)]) == cli.EXIT_DIVERGED


def test_the_tools_own_npy_reads_back_exactly_when_cbd_is_most_abundant(tmp_path):
    labels = np.ones((4, 8, 8), np.uint8)  # CBD most abundant: the abundance rule would
    labels[:, :2] = 0  # swap CBD and active on a bare .npy
    labels[:, 2:3] = 2
    path = core.write_stack(tmp_path / "decoded.npy", core.ElectrodeStack(labels, 0.5, True))
    assert core.io.sidecar_path(path).exists()
    back = core.read_stack(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert (back.voxel_size_um, back.calendered) == (0.5, True)


def test_a_sidecar_of_another_array_is_not_used(tmp_path):
    labels = np.ones((4, 8, 8), np.uint8)
    labels[:, :2], labels[:, 2:3] = 0, 2
    path = core.write_stack(tmp_path / "x.npy", labels)
    np.save(path, np.zeros((3, 8, 8), np.uint8) + labels[:3])  # replaced by another array
    back = core.read_stack(path)  # its sidecar describes (4, 8, 8): ignored, inferred again
    assert back.shape == (3, 8, 8)
    assert back.phase_mapping == {0: "pore", 1: "active", 2: "cbd"}  # the abundance rule


def test_decode_to_npy_reads_back_as_the_decoded_phases(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(["train", str(stack_file), "--out", str(out), *TINY_MODEL, "--epochs", "1"]) == 0
    )
    volume = tmp_path / "decoded.npy"
    assert cli.main(["decode", str(out), "--latent", "0.5,-1", "--out", str(volume)]) == 0
    run = core.load_run(out)
    with torch.inference_mode():
        expected = run.model.phase_labels(run.model.decode(torch.tensor([[0.5, -1.0]])))[0]
    np.testing.assert_array_equal(core.read_stack(volume).labels, expected)


def test_a_mapped_stack_changed_during_training_stops_in_one_line(tmp_path, capsys, monkeypatch):
    from napari_electrode_cae.core import io as io_module

    stack = tmp_path / "big_CAL.npy"
    core.write_stack(stack, make_stack((12, 32, 32), seed=0))
    monkeypatch.setattr(io_module, "_MEMMAP_MIN_BYTES", 1)  # as if large: mapped, not copied
    original = core.training.TimeEstimate.epoch_done

    def touched(self, seconds):  # another program rewrites the file after epoch 1
        original(self, seconds)
        os.utime(stack, ns=(1, 1))

    monkeypatch.setattr(core.training.TimeEstimate, "epoch_done", touched)
    code = cli.main(
        ["train", str(stack), "--out", str(tmp_path / "run"), *TINY_MODEL, "--epochs", "3"]
    )
    assert code == cli.EXIT_BAD_INPUT
    assert "changed on disk while it was in use" in error_line(capsys)
