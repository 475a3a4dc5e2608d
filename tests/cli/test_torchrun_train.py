"""``torchrun --nproc-per-node 2 -m napari_electrode_cae.cli train …`` on the CPU (Gloo, two
ranks on 127.0.0.1): rank 0 alone writes and prints, config.json records the world size and
the effective batch, the run opens like any other, and Ctrl-C ends every rank with the run
saved and resumable.

``python -m torch.distributed.run`` is the module behind the ``torchrun`` script (same
arguments); it is used so that the test runs with this interpreter's torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from napari_electrode_cae import core
from tests.conftest import make_stack

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch has no torch.distributed"
)

TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "napari_electrode_cae.cli",
]


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stacks") / "cal.tif"
    core.write_stack(path, make_stack((32, 16, 16), seed=2))  # 8 windows of 4x16x16
    return path


def _train_args(stack_file, out, epochs):
    return [
        "train",
        str(stack_file),
        "--out",
        str(out),
        "--window",
        "4",
        "--crop",
        "16",
        "--layers",
        "3",
        "--hidden",
        "8",
        "--latent",
        "2",
        "--batch",
        "2",
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
    ]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_torchrun_trains_on_two_ranks_and_rank_zero_alone_writes_the_run(stack_file, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        TORCHRUN + _train_args(stack_file, out, 2),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # one rank printed: one table, one summary line, one plan line naming both ranks
    assert done.stdout.count("Training dataset") == 1
    assert done.stderr.count("run saved to") == 1
    assert done.stderr.count("per rank on 2 ranks (gloo; effective batch 4)") == 1
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "config.json",
        "history.csv",
        "latents.csv",
        "report.json",
        "report.md",
        "weights.pt",
    ]
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "device": "cpu",
        "batch_per_rank": 2,
        "effective_batch": 4,
    }
    run = core.load_run(out)  # what the GUI opens
    assert len(run.history) == 2 and run.train_config.batch_size == 2


def test_ctrl_c_ends_every_rank_keeps_the_run_and_resume_continues(stack_file, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        TORCHRUN + _train_args(stack_file, out, 3000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "last.pt").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.1)
        assert (out / "last.pt").exists()
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0  # torchrun reports the interruption
    with pytest.raises(ProcessLookupError):  # no rank is left running
        os.killpg(process.pid, 0)
    assert stderr.count("run saved to") == 1, stderr[-3000:]
    assert "Error" not in "".join(
        line for line in stderr.splitlines(keepends=True) if "electrode-cae" in line
    )
    history = core.load_run(out).history
    assert 1 <= len(history) < 3000
    assert (out / "last.pt").exists()  # kept for --resume
    # resume, two more epochs
    epochs = core.checkpoint.load_training_state(out / "last.pt")["epoch"] + 2
    done = subprocess.run(
        TORCHRUN + _train_args(stack_file, out, epochs) + ["--resume"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after epoch" in done.stderr
    assert len(core.load_run(out).history) == epochs
    assert not (out / "last.pt").exists()
