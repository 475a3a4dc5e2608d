"""Issue 17, data loss: `train --out` never deletes or overwrites what the tool did not write,
and two processes never write one run folder (the lock)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from napari_electrode_cae import cli, core
from napari_electrode_cae.core import runfolder
from tests.cli.helpers import TINY, error_line
from tests.conftest import make_stack


def _train(stack_file, out, *extra):
    return cli.main(["train", str(stack_file), "--out", str(out), *TINY, *extra])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_train_refuses_a_folder_of_the_users_own_files_and_leaves_them(
    tmp_path, stack_file, capsys
):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("best.pt", "last.pt", "config.json", "report.md"):
        (out / name).write_text(f"the user's {name}")
    before = _snapshot(out)
    assert _train(stack_file, out) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert "not a run folder of this tool" in line and "nothing was written" in line
    assert _snapshot(out) == before  # nothing deleted, overwritten or added (not even a lock)
    assert _train(stack_file, out, "--overwrite") == cli.EXIT_BAD_INPUT  # never with overwrite
    assert _snapshot(out) == before


def test_train_refuses_an_out_that_is_a_file(tmp_path, stack_file, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert _train(stack_file, out) == cli.EXIT_BAD_INPUT
    assert "is a file" in error_line(capsys)
    assert out.read_text() == "keep me"


def test_a_finished_run_is_replaced_only_with_overwrite_and_only_its_own_files(
    tmp_path, stack_file, capsys
):
    out = tmp_path / "run"
    assert _train(stack_file, out) == 0
    weights = (out / "weights.pt").read_bytes()
    capsys.readouterr()
    assert _train(stack_file, out) == cli.EXIT_BAD_INPUT
    assert "already holds a finished run" in error_line(capsys)
    assert (out / "weights.pt").read_bytes() == weights
    (out / "my_notes.txt").write_text("notes the user put beside the run")
    assert _train(stack_file, out, "--overwrite", "--seed", "1") == 0
    assert (out / "my_notes.txt").read_text() == "notes the user put beside the run"
    assert (out / "weights.pt").read_bytes() != weights
    assert core.load_run(out).train_config.seed == 1


def test_a_run_folder_is_checked_before_training_starts(tmp_path, stack_file, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("1,2,3")
    monkeypatch.setattr(core, "read_stack", lambda *a, **k: pytest.fail("stacks were read"))
    assert _train(stack_file, out) == cli.EXIT_BAD_INPUT
    capsys.readouterr()


def test_save_run_refuses_a_folder_of_other_files(tmp_path):
    data = core.WindowDataset([make_stack((12, 32, 32))], core.WindowSpec(4, 4, 16))
    model = core.ConvAutoEncoder3d(4, crop=16, hidden=8, latent_dim=2)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "weights.pt").write_text("someone else's weights")
    with pytest.raises(core.RunFolderError, match="not a run folder of this tool"):
        core.save_run(out, model, data, core.TrainConfig(epochs=1), [0], [1], latents=False)
    assert (out / "weights.pt").read_text() == "someone else's weights"


def test_a_held_lock_makes_a_second_training_refuse_in_one_line(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with runfolder.RunFolderLock(out):  # as a training in progress holds it
        assert _train(stack_file, out) == cli.EXIT_BAD_INPUT
        assert "in use by another electrode-cae process" in error_line(capsys)
        assert cli.main(["evaluate", str(out)]) == cli.EXIT_BAD_INPUT  # not a run yet
        capsys.readouterr()
    assert _train(stack_file, out) == 0  # released: the folder is usable again


def test_a_lock_held_by_another_process_refuses_and_dies_with_it(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    assert _train(stack_file, out) == 0
    capsys.readouterr()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys
            from napari_electrode_cae.core.runfolder import RunFolderLock
            lock = RunFolderLock({str(out)!r}).acquire()
            print("locked", flush=True)
            sys.stdin.read()  # hold it until killed
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(stack_file, out, "--overwrite") == cli.EXIT_BAD_INPUT
        assert "in use by another electrode-cae process" in error_line(capsys)
        assert cli.main(["evaluate", str(out)]) == cli.EXIT_BAD_INPUT
        assert "in use" in error_line(capsys)
        assert core.load_run(out) is not None  # the run itself is untouched
    finally:
        holder.kill()
        holder.wait(30)
    # the kernel released the killed holder's lock: no stale lock is left behind
    assert cli.main(["evaluate", str(out)]) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="two trainings at once need POSIX fork")
def test_two_trainings_into_one_folder_at_once_one_refuses(tmp_path, stack_file):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys
        from napari_electrode_cae import cli
        sys.exit(cli.main(["train", {str(stack_file)!r}, "--out", {str(out)!r},
                           *{TINY[:-6]!r}, "--epochs", "8", "--batch", "4", "--device",
                           "cpu"]))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(p.wait(300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, cli.EXIT_BAD_INPUT], results
    refused = next(err for code, err in results if code)
    assert "Traceback" not in refused
    assert (
        "in use by another electrode-cae process" in refused
        or "already holds a finished run" in refused
        or "interrupted run" in refused
    )
    assert core.load_run(out).train_config.epochs == 8


def test_sample_never_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    argv = ["sample", str(tmp_path), "--preset", "cal", "--shape", "8", "16", "16"]
    assert cli.main(argv) == 0  # its own file may be written again
    assert cli.main([*argv, "--seed", "1"]) == 0
    (tmp_path / "synthetic_CAL.tif").write_bytes(b"the user's own image")
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "was not written by this tool" in error_line(capsys)
    assert (tmp_path / "synthetic_CAL.tif").read_bytes() == b"the user's own image"
