"""The grid and the case studies on a real Dask cluster: a scheduler and two worker processes on
127.0.0.1 (``distributed.LocalCluster``), reached through ``--scheduler tcp://127.0.0.1:PORT``
as a user's own cluster would be. No mocks."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_electrode_cae import cli, core
from napari_electrode_cae.core import cluster, studies
from napari_electrode_cae.core import grid as grids
from tests.conftest import make_stack

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    """Address of a scheduler with two one-thread worker processes on 127.0.0.1."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stacks") / "cal.tif"
    core.write_stack(path, make_stack((16, 16, 16), seed=2))
    return path


def _grid_args(stack_file, out, scheduler, layers="3,5", lr="1e-3,3e-3"):
    return [
        "grid",
        str(stack_file),
        "--out",
        str(out),
        "--window",
        "4",
        "--stride",
        "4",
        "--crop",
        "16",
        "--layers",
        layers,
        "--hidden",
        "8",
        "--latent",
        "2",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--lr",
        lr,
        "--device",
        "cpu",
        "--scheduler",
        scheduler,
    ]


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_grid_runs_on_the_scheduler_a_failing_config_is_reported_and_a_rerun_skips(
    scheduler, stack_file, tmp_path, capsys
):
    out = tmp_path / "grid"
    assert cli.main(_grid_args(stack_file, out, scheduler)) == 0
    rows = _csv_rows(out / "grid.csv")
    assert len(rows) == 4
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    # 5 conv layers do not fit a crop of 16: reported, and the other three still trained
    assert sorted(r["layers"] for r in failed) == ["5", "5"]
    assert "too small for 5 conv layers" in failed[0]["error"]
    assert [r["rank"] for r in ok] == ["1", "2"]
    for r in ok:
        run = core.load_run(r["run_dir"])
        assert np.isfinite(run.history[-1]["val_mse"])
    # the stack went to the workers once, as a memory-mappable file in the output folder
    shared = list((out / "stacks").glob("*.npy"))
    assert len(shared) == 1
    assert np.load(shared[0], mmap_mode="r").shape == (16, 16, 16)
    capsys.readouterr()
    # a rerun trains nothing that finished
    assert cli.main(_grid_args(stack_file, out, scheduler)) == 0
    assert capsys.readouterr().err.count("reused") == 2


def test_ctrl_c_cancels_queued_configs_and_keeps_the_finished_ones_in_grid_csv(
    scheduler, stack_file, tmp_path
):
    out = tmp_path / "grid"
    stacks = [core.read_stack(stack_file)]
    # 20 epochs: a configuration takes long enough that the others are still running or
    # queued when the first one finishes
    grid = {
        "window": [4],
        "stride": [4],
        "crop": [16],
        "layers": [3],
        "hidden": [8],
        "latent": [2],
        "epochs": [20],
        "batch": [2],
        "lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3],
    }
    heard = []

    def progress(event):  # the user presses Ctrl-C as the first configuration finishes
        heard.append(event.row)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        grids.run_grid(
            stacks, grid, out_dir=out, device="cpu", scheduler=scheduler, progress=progress
        )
    rows = _csv_rows(out / "grid.csv")
    assert [r["id"] for r in rows] == [heard[0]["id"]] and rows[0]["status"] == "ok"
    # besides the finished one, each of the two workers was running one and may have started
    # the one it held ready (Dask hands a worker a task ahead); the others never started
    started = [p for p in out.iterdir() if p.is_dir() and p.name != "stacks"]
    assert len(started) <= 4 < len(grid["lr"])
    _wait_until_workers_idle(scheduler)  # a cancelled task that was running ends on its own
    # running again finishes the grid and reuses what finished
    rows = grids.run_grid(stacks, grid, out_dir=out, device="cpu", scheduler=scheduler)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert any(r["reused"] for r in rows)


def _wait_until_workers_idle(address, timeout_s=60.0):
    def executing(dask_worker):
        return dask_worker.state.executing_count

    with distributed.Client(address) as client:
        deadline = time.monotonic() + timeout_s
        while sum(client.run(executing).values()) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_sigint_to_the_grid_command_exits_130_and_keeps_finished_configs(
    scheduler, stack_file, tmp_path
):
    out = tmp_path / "grid"
    lrs = ",".join(f"{k}e-3" for k in range(1, 9))
    args = _grid_args(stack_file, out, scheduler, layers="3", lr=lrs)
    args[args.index("--epochs") + 1] = "40"  # long enough to be interrupted
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_electrode_cae.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "grid.csv").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        _stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == cli.EXIT_INTERRUPTED, stderr[-3000:]
    assert "interrupted: queued configurations cancelled" in stderr
    assert "Traceback" not in stderr
    rows = _csv_rows(out / "grid.csv")
    assert 1 <= len(rows) < 8 and all(r["status"] == "ok" for r in rows)
    _wait_until_workers_idle(scheduler)


def test_case_studies_run_as_tasks_on_the_scheduler(scheduler, stack_file, tmp_path):
    out = tmp_path / "study"
    stacks = [core.read_stack(stack_file)]
    events = []
    rows = studies.run_study(
        stacks,
        quick=True,
        out_dir=out,
        epochs=1,
        crop=16,
        device="cpu",
        cases=["2", "3b"],
        scheduler=scheduler,
        progress=events.append,
    )
    assert [(r["case"], r["split"], r["status"]) for r in rows] == [
        ("2", "random", "ok"),
        ("2", "blocked", "ok"),
        ("3b", "random", "skipped"),
        ("3b", "blocked", "skipped"),
    ]
    assert (out / "2_random" / "config.json").exists()
    assert json.loads((out / "2_blocked" / "config.json").read_text())["split"]["mode"] == "blocked"
    assert (out / "study.csv").exists()
    assert sum(e.row is not None and e.row["status"] == "ok" for e in events) == 2


def test_ctrl_c_during_the_case_studies_writes_the_finished_and_cancelled_rows(
    scheduler, stack_file, tmp_path
):
    out = tmp_path / "study"
    stacks = [core.read_stack(stack_file)]

    heard = []

    def progress(event):  # Ctrl-C as the first run finishes
        if event.row is not None:
            heard.append((event.row["case"], event.row["split"], event.row["status"]))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        studies.run_study(
            stacks,
            quick=True,
            out_dir=out,
            epochs=1,
            crop=16,
            device="cpu",
            cases=["1", "2"],
            scheduler=scheduler,
            progress=progress,
        )
    rows = [(r["case"], r["split"], r["status"]) for r in _csv_rows(out / "study.csv")]
    assert len(rows) == 4 and heard[0] in rows  # the finished run (ok, or failed with why)
    assert sorted(r for r in rows if r != heard[0]) == sorted(
        (c, s, "cancelled") for c, s, _ in rows if (c, s) != heard[0][:2]
    )
    assert "cancelled: interrupted before it finished" in (out / "study.md").read_text()
    _wait_until_workers_idle(scheduler)


def test_gpu_configurations_on_a_cluster_without_gpu_workers_are_refused_not_queued(
    scheduler, stack_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(cluster, "SCHEDULER_TIMEOUT_S", 1.0)
    with pytest.raises(studies.StudyError, match="no worker of the Dask scheduler offers GPU=1"):
        grids.run_grid(
            [core.read_stack(stack_file)],
            {"window": [4], "crop": [16]},
            out_dir=tmp_path / "grid",
            device="cuda",
            scheduler=scheduler,
        )


def test_an_unreachable_scheduler_is_one_clear_error_line(
    stack_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(cluster, "SCHEDULER_TIMEOUT_S", 1.0)
    with socket_closed_port() as address:
        code = cli.main(
            _grid_args(stack_file, tmp_path / "grid", address, layers="3", lr="1e-3,2e-3")
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_INPUT
    assert err[-1].startswith("electrode-cae grid: error: cannot reach the Dask scheduler at")
    assert "Traceback" not in "\n".join(err)


class socket_closed_port:
    """A tcp:// address on 127.0.0.1 where nothing listens."""

    def __enter__(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    def __exit__(self, *exc):
        return False


def test_without_dask_work_stays_in_this_process_or_a_process_pool():
    assert cluster._use_dask(None, 1, "auto") is False
    assert cluster._use_dask(None, 4, "processes") is False
    assert cluster._use_dask("tcp://127.0.0.1:8786", 1, "processes") is True
    assert cluster._gpu_resources("tcp://h:1", "cuda") == {"GPU": 1}
    assert cluster._gpu_resources(None, "cuda") is None
    with pytest.raises(studies.StudyError, match="parallel must be one of"):
        cluster._use_dask(None, 2, "threads")
