import numpy as np
import pytest
import torch

from napari_electrode_cae.core import (
    ElectrodeStack,
    WindowDataset,
    WindowSpec,
    WindowSpecError,
    count_dataset_windows,
    count_windows,
    split,
)
from tests.conftest import make_stack


@pytest.mark.parametrize("length", [4, 24])
@pytest.mark.parametrize("stride_is_length", [False, True])
@pytest.mark.parametrize("depth", [24, 25, 47, 48, 100])
def test_count_windows_follows_the_paper(length, stride_is_length, depth):
    stride = length if stride_is_length else 1
    expected = (depth - length) // stride + 1
    assert count_windows(depth, length, stride) == expected
    stack = ElectrodeStack(np.zeros((depth, 8, 8), np.uint8))
    data = WindowDataset([stack], WindowSpec(length, stride, crop=8))
    assert len(data) == expected
    zs = [data.origin(i)[1] for i in range(len(data))]
    assert zs == list(range(0, stride * expected, stride))
    assert zs[-1] + length <= depth


def test_count_windows_too_thin_is_zero_and_dataset_refuses():
    assert count_windows(3, 4, 1) == 0
    with pytest.raises(WindowSpecError, match="window length 24 exceeds the depth 16"):
        WindowDataset(
            [ElectrodeStack(np.zeros((16, 8, 8), np.uint8), name="s")], WindowSpec(24, 1, crop=8)
        )


def test_in_plane_tiles_and_origins():
    stack = ElectrodeStack(np.zeros((10, 70, 50), np.uint8))
    spec = WindowSpec(4, 3, crop=24)
    data = WindowDataset([stack, stack], spec)
    per_stack = 3 * 2 * 2  # z: 0,3,6; y: 0,24; x: 0,24
    assert len(data) == 2 * per_stack == count_dataset_windows([stack.shape] * 2, spec)
    assert data.origin(0) == (0, 0, 0, 0)
    assert data.origin(per_stack + 5) == (1, 3, 0, 24)


def test_windows_are_views_not_copies(tiny_stack):
    data = WindowDataset([tiny_stack], WindowSpec(4, 1, crop=16))
    for i in (0, len(data) - 1):
        view = data.view(i)
        assert np.shares_memory(view, tiny_stack.labels)
        s, z, y, x = data.origin(i)
        np.testing.assert_array_equal(view, tiny_stack.labels[z : z + 4, y : y + 16, x : x + 16])
    # only the index grid is stored: 4 int64 per window
    assert data.grid.nbytes == len(data) * 4 * 8


def test_items_are_network_values(tiny_stack):
    data = WindowDataset([tiny_stack], WindowSpec(4, 4, crop=32))
    item = data[1]
    assert item.dtype == torch.float32 and item.shape == (1, 4, 32, 32)
    np.testing.assert_array_equal(item[0].numpy(), data.view(1).astype(np.float32) - 1)
    assert set(np.unique(item.numpy())) <= {-1.0, 0.0, 1.0}
    batch = data.batch([0, 2])
    assert batch.shape == (2, 1, 4, 32, 32)
    torch.testing.assert_close(batch[1], data[2])


def test_memory_of_a_stride_one_dataset_is_small():
    stack = ElectrodeStack(np.zeros((64, 64, 64), np.uint8))
    data = WindowDataset([stack], WindowSpec(24, 1, crop=64))
    assert len(data) == 41
    assert data.grid.nbytes < 0.01 * stack.labels.nbytes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(length=0), "length must be at least 1"),
        (dict(length=4, stride=0), "stride must be at least 1"),
        (dict(length=4, stride=-2), "stride must be at least 1"),
        (dict(length=4, crop=0), "crop must be at least 1"),
        (dict(length=4.5), "must be an integer"),
    ],
)
def test_bad_window_specs(kwargs, message):
    with pytest.raises(WindowSpecError, match=message):
        WindowSpec(**kwargs)


def test_crop_larger_than_stack():
    with pytest.raises(WindowSpecError, match="crop 64 is larger than the in-plane size 32x32"):
        WindowDataset([make_stack()], WindowSpec(4, 1, crop=64))


def test_different_voxel_sizes_are_refused():
    a, b = make_stack(), make_stack(seed=1)
    b.voxel_size_um = 0.5
    with pytest.raises(WindowSpecError, match="different voxel sizes"):
        WindowDataset([a, b], WindowSpec(4, 1, crop=32))


def test_random_split_is_seeded_and_matches_paper_sizes():
    stack = ElectrodeStack(np.zeros((601, 8, 8), np.uint8))
    data = WindowDataset([stack], WindowSpec(24, 1, crop=8))
    assert len(data) == 578
    train, val = split(data, 0.15, seed=3)
    assert (len(train), len(val)) == (491, 87)  # Table 8, case study 1
    assert set(train).isdisjoint(val) and len(set(train) | set(val)) == 578
    again = split(data, 0.15, seed=3)
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(val, split(data, 0.15, seed=4)[1])


@pytest.mark.parametrize("length, stride", [(4, 1), (6, 2), (4, 4), (24, 1)])
def test_blocked_split_never_shares_a_slice(length, stride):
    stacks = [make_stack((60, 16, 16), seed=s) for s in range(2)]
    data = WindowDataset(stacks, WindowSpec(length, stride, crop=16))
    for seed in range(5):
        train, val = split(data, 0.2, seed=seed, mode="blocked")
        assert len(train) and len(val)
        assert set(train).isdisjoint(val)
        for s in range(2):
            val_slices = {
                z
                for i in val
                if data.origin(i)[0] == s
                for z in range(data.origin(i)[1], data.origin(i)[1] + length)
            }
            train_slices = {
                z
                for i in train
                if data.origin(i)[0] == s
                for z in range(data.origin(i)[1], data.origin(i)[1] + length)
            }
            assert val_slices, "each stack contributes validation windows"
            assert val_slices.isdisjoint(train_slices)


def test_split_failures():
    one = WindowDataset([make_stack((4, 32, 32))], WindowSpec(4, 1, crop=32))
    with pytest.raises(WindowSpecError, match="only 1 window in total"):
        split(one)
    data = WindowDataset([make_stack((8, 32, 32))], WindowSpec(4, 1, crop=32))
    with pytest.raises(WindowSpecError, match="validation fraction"):
        split(data, val_fraction=0.99)
    with pytest.raises(WindowSpecError, match="split mode"):
        split(data, mode="sideways")
    with pytest.raises(WindowSpecError, match="blocked split"):
        split(WindowDataset([make_stack((5, 32, 32))], WindowSpec(4, 1, crop=32)), mode="blocked")
