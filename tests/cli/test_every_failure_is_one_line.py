"""Issue 17, one line: every failure ends in one clear stderr line and a non-zero exit, never a
traceback: a full disk (an OSError, or torch's RuntimeError), running out of memory, a missing
codec, unusual file names, edited run files, a library's own error; a failure late in a run
says that the run folder is incomplete; files follow the user's umask."""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_electrode_cae import cli, core
from napari_electrode_cae.core import checkpoint
from tests.cli.helpers import TINY, error_line


@pytest.fixture
def run_dir(tmp_path, stack_file, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", str(stack_file), "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_during_training_is_one_line(tmp_path, stack_file):
    """A real write failure, without root or a tmpfs: the file size limit of the process."""
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        from napari_electrode_cae import cli
        sys.exit(cli.main(["train", {str(stack_file)!r}, "--out", {str(out)!r},
                           *{TINY!r}]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == cli.EXIT_BAD_INPUT, done.stderr
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "cannot write" in errors[0] and "larger than allowed" in errors[0]
    assert not list(out.glob(".*.tmp"))  # no half-written temporary is left


def test_a_full_disk_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    checkpoint.save_state_dict({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(core.errors.OutputWriteError, match="the disk is full; the previous"):
        checkpoint.save_state_dict({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_torchs_zip_writer_error_on_a_full_disk_is_said_so(tmp_path, monkeypatch):
    def failing_save(obj, handle):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
            "failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(core.errors.OutputWriteError, match="the disk is full"):
        checkpoint.save_state_dict({"w": torch.ones(3)}, tmp_path / "weights.pt")


def test_a_failure_late_in_a_run_says_it_is_incomplete_and_resume_finishes_it(
    tmp_path, stack_file, capsys, monkeypatch
):
    out = tmp_path / "run"

    def disk_full(*args, **kwargs):
        raise core.errors.OutputWriteError("cannot write latents.csv: the disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(core.runs, "write_latents", disk_full)
        assert cli.main(["train", str(stack_file), "--out", str(out), *TINY]) == 2
    line = error_line(capsys)
    assert f"the run folder {out} is incomplete" in line and "--resume" in line
    with pytest.raises(core.RunFolderError, match="incomplete run folder"):
        core.load_run(out)
    assert cli.main(["evaluate", str(out)]) == cli.EXIT_BAD_INPUT
    assert "incomplete" in error_line(capsys)
    assert cli.main(["train", str(stack_file), "--out", str(out), *TINY, "--resume"]) == 0
    assert len(core.load_run(out).history) == 1


def test_running_out_of_memory_is_one_line(stack_file, tmp_path, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(core, "evaluate", no_memory)
    code = cli.main(["train", str(stack_file), "--out", str(tmp_path / "run"), *TINY])
    assert code == cli.EXIT_FAILURE
    assert "out of memory" in error_line(capsys)


def test_a_librarys_unexpected_error_is_one_line(run_dir, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError(
            "CUDA error: an illegal memory access\nCompile with "
            "TORCH_USE_CUDA_DSA to enable device-side assertions."
        )

    monkeypatch.setattr(core, "load_run", broken)
    assert cli.main(["evaluate", str(run_dir)]) == cli.EXIT_FAILURE
    line = error_line(capsys)
    assert "RuntimeError: CUDA error: an illegal memory access Compile with" in line
    assert "ELECTRODE_CAE_TRACEBACK=1" in line


def test_a_tiff_whose_codec_is_missing_is_one_line(tmp_path, capsys):
    import tifffile

    pytest.importorskip("tifffile")
    if _imagecodecs_installed():
        pytest.skip("imagecodecs is installed: zstd can be decoded")
    path = tmp_path / "zstd.tif"
    volume = np.zeros((4, 16, 16), np.uint8)
    volume[:, :4], volume[:, 8:] = 1, 2
    tifffile.imwrite(path, volume, photometric="minisblack")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:  # mark the pages as zstd-compressed
        offsets = [page.tags["Compression"].valueoffset for page in tif.pages]
    for offset in offsets:
        data[offset : offset + 2] = (50000).to_bytes(2, "little" if data[:2] == b"II" else "big")
    path.write_bytes(bytes(data))
    code = cli.main(["train", str(path), "--out", str(tmp_path / "run"), *TINY])
    assert code == cli.EXIT_BAD_INPUT
    assert "install the imagecodecs package" in error_line(capsys)


def _imagecodecs_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("imagecodecs") is not None


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs arbitrary bytes names")
def test_a_file_name_that_is_not_valid_text_is_one_line(tmp_path, capsys):
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/samples_\xff")
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # a terminal that is strict
    with contextlib.redirect_stdout(strict):
        code = cli.main(["sample", folder, "--preset", "cal", "--shape", "8", "16", "16"])
    assert code in (0, cli.EXIT_BAD_INPUT)
    if code:
        assert "not valid in this system's encoding" in error_line(capsys)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("history.csv", "epoch,train_mse\nabc,1\n", "line 2 is not a history row"),
        ("history.csv", "epoch\n" + "1" * 200_000 + "\n", "not a CSV history"),
        ("report.json", "[1, 2]", "does not hold a JSON object"),
        ("report.json", "[" * 100000, "not valid JSON"),
        ("config.json", b"\xff\xfe{", "not UTF-8 text"),
    ],
)
def test_an_edited_run_file_is_one_line(run_dir, capsys, name, text, message):
    data = text if isinstance(text, bytes) else text.encode()
    (run_dir / name).write_bytes(data)
    assert cli.main(["evaluate", str(run_dir)]) == cli.EXIT_BAD_INPUT
    assert message in error_line(capsys)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_files_the_tool_writes_follow_the_users_umask(tmp_path, stack_file, capsys):
    previous = os.umask(0o027)  # the user shares with their group, not with others
    try:
        out = tmp_path / "run"
        assert cli.main(["train", str(stack_file), "--out", str(out), *TINY]) == 0
        volume = tmp_path / "decoded.npy"
        assert cli.main(["decode", str(out), "--latent", "0,0", "--out", str(volume)]) == 0
    finally:
        os.umask(previous)
    written = [p for p in out.rglob("*") if p.is_file() and p.name != ".electrode-cae.lock"]
    written += [volume, core.io.sidecar_path(volume)]
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {"0o640"}, modes
