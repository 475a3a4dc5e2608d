"""Property-based tests (hypothesis): window arithmetic, splits and the reader's phase mapping.

Each property runs a few dozen random examples on tiny arrays, so the file stays fast; the
examples are derandomised, so every run checks the same cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_electrode_cae.core import (
    ElectrodeStack,
    WindowDataset,
    WindowSpec,
    WindowSpecError,
    count_dataset_windows,
    count_windows,
    describe_phase_mapping,
    infer_phase_mapping,
    parse_phase_mapping,
    read_stack,
    split,
    write_stack,
)
from napari_electrode_cae.core.stack import PHASES

FEW = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SOME = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# --------------------------------------------------------------------------- window arithmetic


@FEW
@given(depth=st.integers(0, 300), length=st.integers(1, 60), stride=st.integers(1, 60))
def test_count_windows_is_the_papers_formula(depth, length, stride):
    expected = (depth - length) // stride + 1 if depth >= length else 0
    assert count_windows(depth, length, stride) == expected
    assert expected == len(range(0, depth - length + 1, stride))  # brute force agrees


@st.composite
def datasets(draw):
    """A WindowSpec and 1-3 stack shapes that each hold at least one window."""
    length = draw(st.integers(1, 6))
    spec = WindowSpec(
        length=length,
        stride=draw(st.integers(1, 6)),
        crop=draw(st.integers(1, 8)),
        tile_stride=draw(st.none() | st.integers(1, 8)),
    )
    shapes = draw(
        st.lists(
            st.tuples(
                st.integers(length, 20), st.integers(spec.crop, 20), st.integers(spec.crop, 20)
            ),
            min_size=1,
            max_size=3,
        )
    )
    return spec, shapes


def _dataset(spec: WindowSpec, shapes) -> WindowDataset:
    stacks = [
        ElectrodeStack(np.zeros(shape, np.uint8), name=f"s{i}") for i, shape in enumerate(shapes)
    ]
    return WindowDataset(stacks, spec)


@FEW
@given(datasets())
def test_dataset_windows_lie_inside_their_stacks_and_step_by_stride(case):
    spec, shapes = case
    data = _dataset(spec, shapes)
    assert len(data) == count_dataset_windows(shapes, spec)
    grid = np.asarray(data.grid)
    for s, z, y, x in grid:
        depth, height, width = shapes[s]
        assert 0 <= z and z + spec.length <= depth
        assert 0 <= y and y + spec.crop <= height
        assert 0 <= x and x + spec.crop <= width
    for s, (depth, _, _) in enumerate(shapes):
        rows = grid[grid[:, 0] == s]
        for y, x in {(int(r[2]), int(r[3])) for r in rows}:
            zs = np.sort(rows[(rows[:, 2] == y) & (rows[:, 3] == x), 1])
            assert zs[0] == 0
            assert np.all(np.diff(zs) == spec.stride)
            assert len(zs) == count_windows(depth, spec.length, spec.stride)  # no window missed
    assert data.view(len(data) - 1).shape == spec.window_shape()


@FEW
@given(datasets(), st.floats(0.05, 0.5), st.integers(0, 2**32 - 1))
def test_random_split_partitions_exactly(case, val_fraction, seed):
    data = _dataset(*case)
    n = len(data)
    try:
        train, val = split(data, val_fraction, seed, "random")
    except WindowSpecError:
        n_val = math.ceil(n * val_fraction - 1e-9)
        assert n < 2 or not 1 <= n_val < n
        return
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    assert len(val) == math.ceil(n * val_fraction - 1e-9)
    again = split(data, val_fraction, seed, "random")
    np.testing.assert_array_equal(again[1], val)  # seeded


@FEW
@given(datasets(), st.floats(0.05, 0.5), st.integers(0, 2**32 - 1))
def test_blocked_split_never_shares_a_slice_or_refuses(case, val_fraction, seed):
    spec, shapes = case
    data = _dataset(spec, shapes)
    try:
        train, val = split(data, val_fraction, seed, "blocked")
    except WindowSpecError as exc:
        assert str(exc)  # a message, not a crash
        return
    assert len(train) and len(val) and len(np.intersect1d(train, val)) == 0
    assert train.max() < len(data) and val.max() < len(data)
    grid = np.asarray(data.grid)
    for s in range(len(shapes)):
        slices_of = [set(), set()]
        for side, indices in enumerate((train, val)):
            for z in grid[indices][grid[indices][:, 0] == s][:, 1]:
                slices_of[side].update(range(int(z), int(z) + spec.length))
        assert not slices_of[0] & slices_of[1], f"stack {s} shares slices"


# ------------------------------------------------------------------------------ phase mapping


@st.composite
def stored_stacks(draw):
    """Three distinct stored values of a dtype, their abundances, and labels laid out with them."""
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    top = int(np.iinfo(dtype).max)
    values = draw(st.lists(st.integers(0, top), min_size=3, max_size=3, unique=True))
    counts = draw(st.lists(st.integers(1, 40), min_size=3, max_size=3))
    order = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(sum(counts))
    ids = np.repeat(np.arange(3, dtype=np.uint8), counts)[order]
    labels = np.stack([ids, ids])[:, None, :]  # (2, 1, N): two equal slices
    return dtype, values, counts, labels


@FEW
@given(stored_stacks())
def test_inferred_mapping_lowest_is_pore_least_abundant_other_is_cbd(case):
    dtype, values, counts, _ = case
    mapping = infer_phase_mapping(values, counts, dtype=dtype)
    by_value = sorted(zip(values, counts))
    assert mapping[by_value[0][0]] == "pore"
    (low, low_count), (high, high_count) = by_value[1], by_value[2]
    expected_cbd = low if low_count <= high_count else high  # a tie goes to the lower value
    assert mapping[expected_cbd] == "cbd"
    assert sorted(mapping.values()) == sorted(PHASES)


@SOME
@given(stored_stacks(), st.sampled_from([".tif", ".npy"]))
def test_write_then_read_reproduces_the_phase_ids(tmp_path, case, suffix):
    dtype, values, counts, labels = case
    path = tmp_path / f"stack{suffix}"
    write_stack(path, ElectrodeStack(labels), values=values)
    back = read_stack(path)
    # the TIFF carries its mapping, the .npy a sidecar: exact round trip, whatever the order
    np.testing.assert_array_equal(back.labels, labels)
    assert back.phase_mapping == {v: PHASES[i] for i, v in enumerate(values)}
    if suffix == ".npy":  # a bare .npy (no sidecar): the inferred mapping is applied
        for sidecar in tmp_path.glob("*.phases.json"):
            sidecar.unlink()
        back = read_stack(path)
        doubled = [2 * c for c in counts]
        assert back.phase_mapping == infer_phase_mapping(values, doubled)
        ids = {v: PHASES.index(name) for v, name in back.phase_mapping.items()}
        np.testing.assert_array_equal(
            back.labels, np.vectorize(ids.get)(np.asarray(values)[labels]).astype(np.uint8)
        )
    explicit = read_stack(path, {v: PHASES[i] for i, v in enumerate(values)})
    np.testing.assert_array_equal(explicit.labels, labels)


mappings = st.dictionaries(
    st.integers(-(2**31), 2**31), st.sampled_from(PHASES), min_size=1, max_size=6
)


@FEW
@given(mappings)
def test_described_or_formatted_mapping_parses_back(mapping):
    assert parse_phase_mapping(describe_phase_mapping(mapping)) == dict(sorted(mapping.items()))
    text = ",".join(f"{value}={name}" for value, name in mapping.items())
    assert parse_phase_mapping(text) == dict(sorted(mapping.items()))
    spaced = " ; ".join(f" {value} : {name.upper()} " for value, name in mapping.items())
    assert parse_phase_mapping(spaced) == dict(sorted(mapping.items()))


@pytest.mark.parametrize("text", ["0→pore, 85→active, 170→cbd", "0->pore;85->active;170->cbd"])
def test_arrow_separators_parse(text):
    assert parse_phase_mapping(text) == {0: "pore", 85: "active", 170: "cbd"}
