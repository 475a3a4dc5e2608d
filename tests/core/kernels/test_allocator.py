"""Opt-in malloc tuning (`electrode-cae train --tune-malloc`): freed large buffers are kept."""

import resource
import sys

import pytest
import torch

from napari_electrode_cae.core.kernels import allocator
from napari_electrode_cae.core.kernels.allocator import reuse_freed_memory

BIG = 48 * 2**20  # bytes: larger than glibc's default (and dynamic, ≤ 32 MiB) mmap threshold


def _faults_of_second_allocation() -> int:
    # torch, not numpy: numpy asks for transparent huge pages, which fault 2 MiB at a time
    torch.ones(BIG // 4)  # allocate, touch, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(BIG // 4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture
def no_malloc_env(monkeypatch):
    for name in allocator._ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_are_reused_inside_and_returned_after(no_malloc_env):
    if allocator._glibc() is None:
        pytest.skip("not glibc")
    outside = _faults_of_second_allocation()
    with reuse_freed_memory() as applied:
        assert applied
        # steady state, as in training: the first round may find the freed block a few bytes
        # short (posix_memalign pads the request, and a small allocation can land between the
        # block and the heap top), so the heap grows once; later rounds reuse
        inside = min(_faults_of_second_allocation() for _ in range(3))
    after = _faults_of_second_allocation()
    pages = BIG // resource.getpagesize()
    assert outside > pages // 2  # glibc's default: the block is unmapped and faulted in again
    assert inside < pages // 20  # kept in the heap and reused
    assert after > pages // 2  # thresholds lowered again: a 48 MiB block is mmapped anew


def test_nested_and_repeated_use_restores_once(no_malloc_env, monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc())
    with reuse_freed_memory() as outer:
        with reuse_freed_memory() as inner:
            assert outer and inner
        assert ("trim", 0) not in calls  # the outer user still trains
    assert calls.count(("trim", 0)) == 1
    raised = [c for c in calls if c[0] == "mallopt" and c[2] == allocator._KEEP_BYTES]
    restored = [c[1:] for c in calls if c[0] == "mallopt" and c[2] != allocator._KEEP_BYTES]
    assert len(raised) == 2  # both thresholds, once
    assert restored == [
        (allocator._M_MMAP_THRESHOLD, allocator._RESTORE_MMAP_BYTES),
        (allocator._M_TRIM_THRESHOLD, allocator._RESTORE_TRIM_BYTES),
    ]


def test_user_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1073741824")
    with reuse_freed_memory() as applied:
        assert not applied


def test_failed_mallopt_changes_nothing(no_malloc_env, monkeypatch):
    class RefusingLibc:
        def mallopt(self, param, value):
            return 0

        def malloc_trim(self, pad):  # pragma: no cover - must not be called
            raise AssertionError("trim without a change")

    monkeypatch.setattr(allocator, "_glibc", lambda: RefusingLibc())
    with reuse_freed_memory() as applied:
        assert not applied
    assert allocator._users == 0


class _RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def _tiny_stack_file(tmp_path):
    import numpy as np

    from napari_electrode_cae.core import io

    path = tmp_path / "stack.npy"
    np.save(path, np.random.default_rng(0).integers(0, 3, (12, 32, 32), dtype=np.uint8))
    assert io.read_stack(path).labels.shape == (12, 32, 32)
    return path


def test_core_training_leaves_malloc_alone(no_malloc_env, monkeypatch):
    import numpy as np

    from napari_electrode_cae import core

    libc = _RecordingLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    stack = core.ElectrodeStack(
        np.random.default_rng(0).integers(0, 3, (12, 32, 32), dtype=np.uint8)
    )
    data = core.WindowDataset([stack], core.WindowSpec(4, 2, crop=16))
    model = core.build_model(core.ModelConfig(4, 16, 3, 8, 3))
    core.run_training(model, data, core.TrainConfig(epochs=1, batch_size=4, device="cpu"))
    assert libc.calls == []


@pytest.mark.parametrize("flag, tuned", [([], False), (["--tune-malloc"], True)])
def test_cli_tunes_malloc_only_when_asked(no_malloc_env, monkeypatch, tmp_path, flag, tuned):
    from napari_electrode_cae import cli

    libc = _RecordingLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    stack = _tiny_stack_file(tmp_path)
    code = cli.main(
        [
            "train",
            str(stack),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "paper",
            "--window",
            "4",
            "--crop",
            "16",
            "--hidden",
            "8",
            "--latent",
            "3",
            "--epochs",
            "1",
            "--batch",
            "4",
            *flag,
        ]
    )
    assert code == 0
    assert any(call[0] == "mallopt" for call in libc.calls) is tuned
