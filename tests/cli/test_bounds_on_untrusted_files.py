"""Issue 17, bounds: a small or edited file never takes unbounded memory or time; every size
from a file or a flag is checked before anything is allocated, and FIFOs and devices are
refused before they are read."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal

import numpy as np
import pytest

from napari_electrode_cae import cli, core
from tests.cli.helpers import TINY, error_line
from tests.conftest import make_stack


@contextlib.contextmanager
def _no_hang(seconds: int = 20):
    """Fail (instead of hanging the suite) if the block blocks on a FIFO."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    stack = root / "tiny_CAL.tif"
    core.write_stack(stack, make_stack((12, 32, 32), seed=0))
    run = root / "run"
    assert cli.main(["train", str(stack), "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _edit_config(run, **model):
    config = json.loads((run / "config.json").read_text())
    config["model"].update(model)
    if "window_length" in model:
        config["window"]["length"] = model["window_length"]
    (run / "config.json").write_text(json.dumps(config))


def test_a_tiny_compressed_tiff_that_decodes_large_is_refused_before_decoding(
    tmp_path, capsys, monkeypatch
):
    import tifffile

    bomb = tmp_path / "bomb.tif"
    volume = np.zeros((64, 512, 512), np.uint8)  # 16 MiB of zeros, ~30 KB compressed
    volume[:, 0, 0], volume[:, 1, 1] = 2, 1
    tifffile.imwrite(bomb, volume, compression="zlib", compressionargs={"level": 9})
    assert bomb.stat().st_size < 100_000
    decoded = []
    original = tifffile.TiffPageSeries.asarray
    monkeypatch.setattr(
        tifffile.TiffPageSeries,
        "asarray",
        lambda self, *a, **k: decoded.append(1) or original(self, *a, **k),
    )
    argv = ["train", str(bomb), "--out", str(tmp_path / "run"), *TINY]
    assert cli.main([*argv, "--max-stack-gib", "0.01"]) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert "decodes to 16 MiB, more than the 10 MiB limit" in line
    assert "--max-stack-gib" in line and not decoded
    stack = core.read_stack(bomb, max_stack_gib=0.02)  # raised explicitly: it is read
    assert stack.shape == (64, 512, 512) and decoded


def test_a_slice_folder_is_bounded_before_it_is_assembled(tmp_path):
    import tifffile

    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(40):
        tifffile.imwrite(folder / f"s{z:03d}.tif", np.eye(256, dtype=np.uint8) * 2)
    with pytest.raises(core.errors.ResourceLimitError, match="folder .*40 slices.* decodes to"):
        core.read_stack(folder, max_stack_gib=2 / 1024)  # 2 MiB < 40 x 64 KiB


def test_a_config_naming_a_huge_window_is_refused_before_anything_is_built(
    run_copy, capsys, monkeypatch
):
    _edit_config(run_copy, window_length=10**6)
    monkeypatch.setattr(core.runs, "build_model", lambda *a: pytest.fail("a model was built"))
    assert cli.main(["evaluate", str(run_copy)]) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert "weights.pt" in line and "window_length=1000000" in line


def test_a_config_naming_a_huge_hidden_layer_is_refused_naming_the_field(run_copy, capsys):
    _edit_config(run_copy, hidden=10**9)
    assert cli.main(["evaluate", str(run_copy)]) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert "hidden=1000000000" in line and "implies" in line


def test_a_weights_file_larger_than_its_config_implies_is_not_read(run_copy, capsys):
    with (run_copy / "weights.pt").open("ab") as handle:
        handle.truncate(64 * 2**20)  # a sparse 64 MiB file for a model of a few KB
    assert cli.main(["evaluate", str(run_copy)]) == cli.EXIT_BAD_INPUT
    assert "it was not read" in error_line(capsys)


def test_training_a_model_larger_than_the_memory_is_refused_up_front(tmp_path, capsys, monkeypatch):
    stack = tmp_path / "tiny_CAL.tif"
    core.write_stack(stack, make_stack((12, 32, 32), seed=0))
    monkeypatch.setattr(core, "build_model", lambda *a: pytest.fail("a model was built"))
    argv = [
        "train",
        str(stack),
        "--out",
        str(tmp_path / "run"),
        *TINY[:-10],
        "--hidden",
        str(10**9),
        "--latent",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert "parameters" in line and "hidden (1000000000)" in line


def test_a_window_grid_larger_than_the_memory_is_refused_with_advice(tmp_path, capsys, monkeypatch):
    stack = tmp_path / "tiny_CAL.tif"
    core.write_stack(stack, make_stack((24, 64, 64), seed=0))
    # stride 1 and tile stride 1: 23 x 49 x 49 = 55,223 windows, ~3 MiB of index; on a
    # machine of 8 MiB that is too much (the same arithmetic as 512 x 1024² on a real one)
    monkeypatch.setattr(core.limits, "memory_bytes", lambda: 8 * 2**20)
    argv = [
        "train",
        str(stack),
        "--out",
        str(tmp_path / "run"),
        "--window",
        "2",
        "--stride",
        "1",
        "--tile-stride",
        "1",
        "--crop",
        "16",
        "--hidden",
        "8",
        "--latent",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    line = error_line(capsys)
    assert "55,223 windows" in line and "larger --stride or --tile-stride" in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need POSIX")
@pytest.mark.parametrize("name", ["config.json", "history.csv", "weights.pt", "report.json"])
def test_a_run_file_that_is_a_fifo_is_refused_without_blocking(run_copy, capsys, name):
    (run_copy / name).unlink()
    os.mkfifo(run_copy / name)
    with _no_hang():
        assert cli.main(["evaluate", str(run_copy)]) == cli.EXIT_BAD_INPUT
    assert "FIFO" in error_line(capsys)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_weights_linked_to_a_device_are_refused_without_reading(run_copy, capsys):
    (run_copy / "weights.pt").unlink()
    os.symlink("/dev/zero", run_copy / "weights.pt")
    with _no_hang():
        assert cli.main(["evaluate", str(run_copy)]) == cli.EXIT_BAD_INPUT
    assert "is a device, not a regular file" in error_line(capsys)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need POSIX")
@pytest.mark.parametrize("name", ["stack.tif", "stack.npy"])
def test_a_stack_that_is_a_fifo_is_refused_without_blocking(tmp_path, capsys, name):
    os.mkfifo(tmp_path / name)
    with _no_hang():
        code = cli.main(["train", str(tmp_path / name), "--out", str(tmp_path / "run"), *TINY])
    assert code == cli.EXIT_BAD_INPUT
    assert "is a FIFO, not a regular file" in error_line(capsys)
    assert not (tmp_path / "run").exists()  # a training that never started leaves no folder
