"""Faults: writers killed mid-save, untrusted checkpoints, out of memory during training.

The kill tests run a writer in a subprocess and SIGKILL it at seeded random moments; after each
kill the files must load and be complete. The next writer is started (and imports torch) while
the previous one is still writing, so the rounds cost little time.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_electrode_cae import cli, core
from napari_electrode_cae.core.checkpoint import (
    HISTORY_FIELDS,
    load_state_dict,
    load_training_state,
    save_state_dict,
    save_training_state,
)
from tests.conftest import make_stack

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX only")

REPO = Path(__file__).resolve().parents[2]
SPEC = core.WindowSpec(4, 2, crop=16)

# A writer saves best.pt (save_state_dict) then last.pt (save_training_state) with the counter
# n in every tensor, prints n, and goes on with n + 1. It starts on a line "n0" on stdin.
CHECKPOINT_WRITER = """
import sys, torch
from pathlib import Path
from napari_electrode_cae.core.checkpoint import save_state_dict, save_training_state
folder = Path(sys.argv[1])
n = int(sys.stdin.readline())
while True:
    w = torch.full((1 << 20,), float(n))
    save_state_dict({"w": w, "n": torch.tensor(n)}, folder / "best.pt")
    row = {"epoch": n, "epochs": 10**6, "train_mse": 0.5, "val_mse": 0.5, "seconds": 0.1,
           "best_epoch": n, "best_val_mse": 0.5}
    save_training_state(folder / "last.pt", {
        "epoch": n, "model": {"w": w}, "optimiser": {"state": {}, "param_groups": []},
        "best_model": {"w": w}, "best_val_mse": 0.5, "best_epoch": n, "history": [row]})
    print(n, flush=True)
    n += 1
"""

# A writer that saves a whole run folder again and again, every weight set to n / 1000.
RUN_WRITER = """
import sys, numpy as np, torch
from napari_electrode_cae import core
rng = np.random.default_rng(0)
stacks = [core.ElectrodeStack(rng.integers(0, 3, (12, 32, 32)).astype(np.uint8), name=f"s{i}")
          for i in range(2)]
data = core.WindowDataset(stacks, core.WindowSpec(4, 2, crop=16))
model = core.ConvAutoEncoder3d(4, crop=16, hidden=2048, latent_dim=3)
config = core.TrainConfig(epochs=1, batch_size=4, device="cpu")
train_idx, val_idx = core.split(data, 0.15, 0, "random")
n = int(sys.stdin.readline())
while True:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(n / 1000)
    core.save_run(sys.argv[1], model, data, config, train_idx, val_idx)
    print(n, flush=True)
    n += 1
"""


def _spawn(script: str, folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        cwd=REPO,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run_and_kill(proc: subprocess.Popen, start: int, delay_s: float) -> list[int]:
    """Let ``proc`` write from counter ``start``; SIGKILL it ``delay_s`` after its first save."""
    proc.stdin.write(f"{start}\n")
    proc.stdin.flush()
    first = proc.stdout.readline()
    if not first:
        proc.wait(timeout=60)
        pytest.fail(f"writer failed: {proc.stderr.read()}")
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    return [int(n) for n in (first + out).split()]


def _kill_rounds(script: str, folder: Path, rounds: int, seed: int, check) -> None:
    """Kill ``rounds`` writers in turn; ``check(last_reported)`` after each kill."""
    rng = np.random.default_rng(seed)
    start = 0
    proc = _spawn(script, folder)
    try:
        for round_ in range(rounds):
            following = _spawn(script, folder) if round_ + 1 < rounds else None
            reported = _run_and_kill(proc, start, float(rng.uniform(0.0, 0.05)))
            check(reported[-1])
            start = reported[-1] + 2
            proc = following
    finally:
        if proc is not None:
            proc.kill()
            proc.communicate(timeout=60)


def _age(paths) -> None:
    """Make files look untouched for an hour (a killed writer's leftovers)."""
    old = time.time() - 3600
    for path in paths:
        os.utime(path, (old, old))


def test_killed_checkpoint_writer_leaves_the_previous_complete_checkpoint(tmp_path):
    def check(last: int) -> None:
        best = load_state_dict(tmp_path / "best.pt")
        n_best = int(best["n"])
        assert torch.equal(best["w"], torch.full((1 << 20,), float(n_best)))  # complete
        state = load_training_state(tmp_path / "last.pt")
        n_last = state["epoch"]
        assert torch.equal(state["model"]["w"], torch.full((1 << 20,), float(n_last)))
        assert state["history"][0]["epoch"] == n_last
        # the last reported save, or the next one if its os.replace landed before the kill
        assert (n_best, n_last) in {(last, last), (last + 1, last), (last + 1, last + 1)}

    _kill_rounds(CHECKPOINT_WRITER, tmp_path, rounds=5, seed=0, check=check)

    # Leftover temporary files (if a kill hit a write) are never what a load reads, and the
    # next save removes the stale ones, but not a file another writer may be writing now.
    (tmp_path / ".best.pt.stale.tmp").write_bytes(b"half a checkpoint")
    _age(tmp_path.glob(".*.tmp"))
    (tmp_path / ".best.pt.busy.tmp").write_bytes(b"being written")
    assert load_state_dict(tmp_path / "best.pt")["w"].shape == (1 << 20,)
    save_state_dict({"w": torch.zeros(3)}, tmp_path / "best.pt")
    save_training_state(tmp_path / "last.pt", load_training_state(tmp_path / "last.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.busy.tmp", "best.pt", "last.pt"]


def test_killed_save_run_leaves_a_loadable_run_folder(tmp_path):
    run_dir = tmp_path / "run"

    def check(last: int) -> None:
        run = core.load_run(run_dir)
        weights = list(run.model.state_dict().values())
        n = round(float(weights[0].flatten()[0]) * 1000)
        assert n in (last, last + 1)
        for tensor in weights:  # complete: every tensor of one and the same save
            assert torch.equal(tensor, torch.full_like(tensor, n / 1000))
        assert len(run.load_dataset()) == len(run.train_idx) + len(run.val_idx)

    _kill_rounds(RUN_WRITER, run_dir, rounds=3, seed=1, check=check)

    leftovers = list(run_dir.rglob(".*.tmp"))
    _age(leftovers)
    run = core.load_run(run_dir)
    unsaved = [core.ElectrodeStack(s.labels, name=s.name) for s in run.load_dataset().stacks]
    data = core.WindowDataset(unsaved, run.window)  # no files of their own: copied again
    core.save_run(run_dir, run.model, data, run.train_config, run.train_idx, run.val_idx)
    assert list(run_dir.rglob(".*.tmp")) == []
    core.load_run(run_dir)


# ----------------------------------------------------------------- untrusted checkpoints


class _Payload:
    """Unpickling this would create ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_data() -> core.WindowDataset:
    return core.WindowDataset(
        [make_stack(seed=0, name="cal"), make_stack(seed=1, name="uncal", calendered=False)], SPEC
    )


def _tiny_model(hidden: int = 16) -> core.ConvAutoEncoder3d:
    core.seed_everything(0)
    return core.ConvAutoEncoder3d(4, crop=16, hidden=hidden, latent_dim=3)


CONFIG = core.TrainConfig(epochs=2, batch_size=4, lr=3e-3, device="cpu")


@pytest.fixture
def malicious_last_pt(tmp_path) -> tuple[Path, Path]:
    """An output folder whose last.pt runs code when unpickled; and the marker it would create."""
    out, marker = tmp_path / "out", tmp_path / "pwned"
    out.mkdir()
    torch.save(
        {
            "epoch": _Payload(marker),
            "model": {},
            "optimiser": {},
            "best_model": {},
            "best_val_mse": 1.0,
            "best_epoch": 1,
            "history": [],
        },
        out / "last.pt",
    )
    return out, marker


def test_pickle_payload_is_refused_by_load_training_state(malicious_last_pt):
    out, marker = malicious_last_pt
    with pytest.raises(core.RunFolderError, match="refused") as info:
        load_training_state(out / "last.pt")
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert "weights_only" not in message  # no advice to load it unsafely
    assert not marker.exists()


def test_pickle_payload_is_refused_when_resuming_training(malicious_last_pt):
    out, marker = malicious_last_pt
    model = _tiny_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(core.RunFolderError, match="refused"):
        core.run_training(model, _tiny_data(), CONFIG, checkpoint_dir=out, resume=True)
    assert not marker.exists()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key])


def _cli_train(stack_files, out: Path, *extra: str) -> list[str]:
    return [
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
        "--device",
        "cpu",
        "--out",
        str(out),
        "--resume",
        *extra,
    ]


@pytest.fixture
def stack_files(tmp_path) -> list[Path]:
    return [
        core.write_stack(
            tmp_path / f"tiny_{tag}.tif", make_stack(seed=seed, calendered=tag == "CAL")
        )
        for seed, tag in ((0, "CAL"), (1, "UNCAL"))
    ]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert "Traceback" not in err
    return lines[-1]


def test_pickle_payload_is_refused_by_cli_resume(malicious_last_pt, stack_files, capsys):
    out, marker = malicious_last_pt
    assert cli.main(_cli_train(stack_files, out)) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("electrode-cae train: error:") and "last.pt" in line
    assert "refused" in line
    assert not marker.exists()


def test_resume_from_another_models_checkpoint_is_refused(tmp_path, stack_files, capsys):
    out = tmp_path / "out"
    data = _tiny_data()
    core.run_training(
        _tiny_model(hidden=32),
        data,
        core.TrainConfig(epochs=1, batch_size=4, device="cpu"),
        checkpoint_dir=out,
    )
    model = _tiny_model(hidden=16)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(core.RunFolderError, match="another model"):
        core.run_training(model, data, CONFIG, checkpoint_dir=out, resume=True)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key])  # unchanged, not half loaded

    assert cli.main(_cli_train(stack_files, out)) == cli.EXIT_BAD_INPUT
    assert "another model" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epoch", "seven"),
        ("epoch", -1),
        ("history", [{"epoch": 1}]),
        ("history", "not a list"),
        ("model", {"w": [1, 2]}),
        ("optimiser", []),
        ("best_val_mse", None),
    ],
)
def test_malformed_training_checkpoint_is_refused(tmp_path, stack_files, capsys, field, value):
    row = dict.fromkeys(HISTORY_FIELDS, 1)
    state = {
        "epoch": 1,
        "model": {"w": torch.ones(2)},
        "optimiser": {"state": {}, "param_groups": []},
        "best_model": {"w": torch.ones(2)},
        "best_val_mse": 0.5,
        "best_epoch": 1,
        "history": [row],
    }
    state[field] = value
    out = tmp_path / "out"
    save_training_state(out / "last.pt", state)
    with pytest.raises(core.RunFolderError, match="not a valid training checkpoint"):
        load_training_state(out / "last.pt")
    assert cli.main(_cli_train(stack_files, out)) == cli.EXIT_BAD_INPUT
    assert "not a valid training checkpoint" in _one_error_line(capsys.readouterr().err)


def test_history_fields_are_those_of_epoch_report():
    from dataclasses import fields

    from napari_electrode_cae.core.checkpoint import OPTIONAL_HISTORY_FIELDS

    assert tuple(f.name for f in fields(core.EpochReport)) == (
        HISTORY_FIELDS + OPTIONAL_HISTORY_FIELDS
    )


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_randomly_damaged_checkpoints_raise_only_run_folder_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_training_state(
        good,
        {
            "epoch": 1,
            "model": {"w": torch.ones(8)},
            "optimiser": {"state": {}, "param_groups": []},
            "best_model": {"w": torch.ones(8)},
            "best_val_mse": 0.5,
            "best_epoch": 1,
            "history": [dict.fromkeys(HISTORY_FIELDS, 1)],
        },
    )
    original = good.read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.pt"
    for trial in range(200):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        elif trial % 3 == 1:
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        else:
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8))
        damaged.write_bytes(bytes(data))
        for load in (load_training_state, load_state_dict):
            try:
                load(damaged)
            except core.RunFolderError as exc:
                assert "\n" not in str(exc)


# ---------------------------------------------------------------------------- out of memory


class _FailingForward:
    """A forward that raises ``error`` on its ``fail_at``-th call once armed (in ``mode``)."""

    def __init__(self, model, error: BaseException, fail_at: int, mode: str) -> None:
        self.original = model.forward
        self.model = model
        self.error = error
        self.fail_at = fail_at
        self.mode = mode
        self.armed = False
        self.calls = 0

    def __call__(self, x):
        in_mode = self.model.training == (self.mode == "training")
        if self.armed and in_mode:
            self.calls += 1
            if self.calls == self.fail_at:
                raise self.error
        return self.original(x)


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory"), MemoryError("cannot allocate")],
    ids=["cuda", "host"],
)
@pytest.mark.parametrize("mode", ["training", "validation"])
def test_out_of_memory_is_a_clear_error_and_keeps_the_best_weights(monkeypatch, error, mode):
    data, model = _tiny_data(), _tiny_model()
    failing = _FailingForward(model, error, fail_at=2, mode=mode)
    monkeypatch.setattr(model, "forward", failing)
    generator = core.train(model, data, CONFIG)
    first = next(generator)
    assert first.epoch == 1 and first.is_best
    best = copy.deepcopy(model.state_dict())
    failing.armed = True
    with pytest.raises(core.TrainingMemoryError) as info:
        next(generator)
    message = str(info.value)
    assert f"during {mode} with batch 4 of 4x16x16 windows" in message
    assert "try a smaller batch (e.g. 2) or crop" in message
    assert info.value.__cause__ is error
    assert isinstance(info.value, core.ElectrodeCAEError)
    for key, tensor in model.state_dict().items():  # the best epoch's weights, restored
        assert torch.equal(tensor, best[key])
    assert not model.training


def test_out_of_memory_message_with_batch_one():
    message = core.training.out_of_memory_message(torch.device("cuda"), 1, (24, 224, 224))
    assert message == (
        "ran out of memory on cuda during training with batch 1 of 24x224x224 "
        "windows; try a smaller crop or window length (the batch is already 1)"
    )


def test_out_of_memory_is_one_line_in_the_cli(monkeypatch, stack_files, tmp_path, capsys):
    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(core.ConvAutoEncoder3d, "forward", forward)
    argv = [a for a in _cli_train(stack_files, tmp_path / "out") if a != "--resume"]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys.readouterr().err)
    assert "ran out of memory on cpu during training with batch 4 of 4x16x16 windows" in line


# ------------------------------------------------------------------------------- huge stacks


def _memmap_base(array: np.ndarray) -> np.memmap | None:
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array


def test_large_uncompressed_tiff_is_memory_mapped_not_read(tmp_path, monkeypatch):
    import tifffile

    from napari_electrode_cae.core import io as io_module

    labels = make_stack((12, 32, 32), seed=0).labels
    tifffile.imwrite(tmp_path / "plain.tif", labels)  # uncompressed, pages contiguous
    tifffile.imwrite(tmp_path / "imagej.tif", labels, imagej=True)
    core.write_stack(tmp_path / "zlib.tif", labels)  # compressed
    tifffile.imwrite(tmp_path / "grey.tif", np.array([0, 170, 85], np.uint8)[labels])

    small = core.read_stack(tmp_path / "plain.tif")  # below the size limit: read into memory
    assert _memmap_base(small.labels) is None and small.labels.flags.writeable

    monkeypatch.setattr(io_module, "_MEMMAP_MIN_BYTES", 1)  # every stack counts as large
    for name in ("plain.tif", "imagej.tif"):
        stack = core.read_stack(tmp_path / name)
        np.testing.assert_array_equal(stack.labels, labels)
        mapped = _memmap_base(stack.labels)
        assert mapped is not None and Path(mapped.filename) == (tmp_path / name).resolve()
        assert not stack.labels.flags.writeable  # the file is never written through the map
        data = core.WindowDataset([stack], SPEC)
        assert np.shares_memory(data.view(len(data) - 1), stack.labels)  # windows are views
    compressed = core.read_stack(tmp_path / "zlib.tif")
    assert _memmap_base(compressed.labels) is None
    np.testing.assert_array_equal(compressed.labels, labels)
    grey = core.read_stack(tmp_path / "grey.tif")  # other stored values: mapped into memory
    assert grey.phase_mapping == {0: "pore", 85: "active", 170: "cbd"}
    assert _memmap_base(grey.labels) is None and grey.labels.flags.writeable
    np.testing.assert_array_equal(grey.labels, labels)


def test_truncated_uncompressed_tiff_is_reported_not_mapped(tmp_path, monkeypatch):
    import tifffile

    from napari_electrode_cae.core import io as io_module

    monkeypatch.setattr(io_module, "_MEMMAP_MIN_BYTES", 1)
    tifffile.imwrite(tmp_path / "full.tif", make_stack((12, 32, 32), seed=0).labels)
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(core.StackReadError, match="truncated or corrupted"):
        core.read_stack(tmp_path / "cut.tif")
