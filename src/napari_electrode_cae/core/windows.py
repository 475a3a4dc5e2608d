"""Sliding windows ("mini microstructures") over electrode stacks.

A window is ``length`` consecutive Z slices and a ``crop`` x ``crop`` in-plane tile of one stack.
Windows slide along Z with ``stride``; in-plane tiles do not overlap unless ``tile_stride`` says
so. The dataset stores only an index grid of window origins and reads each window as a view of
its stack, so memory stays O(stacks), not O(windows x length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import WindowSpecError
from .limits import check_window_grid
from .stack import ElectrodeStack

SPLIT_MODES = ("auto", "random", "blocked")


def resolve_split(mode: str, spec: WindowSpec) -> str:
    """The split ``mode`` means for windows of ``spec``: ``"auto"`` is ``"blocked"`` when
    windows overlap along Z (stride < length; a random split would leak shared slices into
    validation) and ``"random"`` (the paper's) otherwise."""
    if mode != "auto":
        return mode
    return "blocked" if spec.stride < spec.length else "random"


@dataclass(frozen=True)
class WindowSpec:
    """How stacks are cut into mini microstructures.

    Parameters
    ----------
    length : int
        Window length ``l`` in Z slices.
    stride : int
        Step between consecutive windows along Z (1, or ``length`` for non-overlapping windows).
    crop : int
        In-plane edge of a window in voxels (Y and X).
    tile_stride : int or None
        Step between in-plane tiles; ``None`` means ``crop`` (non-overlapping tiles).
    """

    length: int
    stride: int = 1
    crop: int = 224
    tile_stride: int | None = None

    def __post_init__(self) -> None:
        for name in ("length", "stride", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise WindowSpecError(f"window {name} must be an integer, got {value!r}")
            if value < 1:
                raise WindowSpecError(f"window {name} must be at least 1, got {value}")
        if self.tile_stride is not None and self.tile_stride < 1:
            raise WindowSpecError(f"tile stride must be at least 1, got {self.tile_stride}")

    @property
    def in_plane_step(self) -> int:
        """Step between in-plane tiles in voxels."""
        return self.tile_stride or self.crop

    def window_shape(self) -> tuple[int, int, int]:
        """(l, crop, crop) of one window."""
        return (self.length, self.crop, self.crop)


def count_windows(depth: int, length: int, stride: int) -> int:
    """Number of windows along Z: ``floor((depth - length) / stride) + 1``, 0 if too thin.

    Parameters
    ----------
    depth : int
        Stack depth Z in slices.
    length, stride : int
        Window length and stride in slices.
    """
    if length < 1 or stride < 1:
        raise WindowSpecError(f"window length and stride must be >= 1, got {length}, {stride}")
    if depth < length:
        return 0
    return (depth - length) // stride + 1


def tile_origins(size: int, crop: int, step: int) -> np.ndarray:
    """In-plane tile starts along one axis of ``size`` voxels (empty if ``crop > size``)."""
    if crop > size:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, size - crop + 1, step, dtype=np.int64)


def check_fits(shape: Sequence[int], spec: WindowSpec, name: str = "stack") -> None:
    """Raise :class:`WindowSpecError` if ``spec`` yields no window in a stack of ``shape``."""
    z, y, x = shape
    if spec.length > z:
        raise WindowSpecError(f"window length {spec.length} exceeds the depth {z} of {name}")
    if spec.crop > min(y, x):
        raise WindowSpecError(
            f"crop {spec.crop} is larger than the in-plane size {y}x{x} of {name}"
        )


class WindowDataset(torch.utils.data.Dataset):
    """Mini microstructures over one or more stacks, read as views on demand.

    Parameters
    ----------
    stacks : sequence of ElectrodeStack
        The electrode volumes. Every stack must hold at least one window.
    spec : WindowSpec
        Window length, stride and crop.

    Notes
    -----
    ``data[i]`` is a float32 tensor of shape (1, l, crop, crop) with network values pore -1,
    CBD 0, active +1. Only the (n_windows, 4) int64 index grid is stored.
    """

    def __init__(self, stacks: Sequence[ElectrodeStack], spec: WindowSpec) -> None:
        if isinstance(stacks, ElectrodeStack):
            stacks = [stacks]
        self.stacks: list[ElectrodeStack] = list(stacks)
        if not self.stacks:
            raise WindowSpecError("no stacks given: load at least one electrode stack")
        self.spec = spec
        voxel_sizes = {round(float(s.voxel_size_um), 6) for s in self.stacks}
        if len(voxel_sizes) > 1:
            raise WindowSpecError(
                "stacks have different voxel sizes "
                + ", ".join(
                    f"{s.name or i}: {s.voxel_size_um} µm" for i, s in enumerate(self.stacks)
                )
                + "; resample them to one voxel size first"
            )
        for index, stack in enumerate(self.stacks):
            check_fits(stack.shape, spec, stack.name or f"stack {index}")
        # counted before the index grid is built: stride 1 and tile stride 1 on a large stack
        # would otherwise ask for gigabytes of indices, then fail in the allocator
        check_window_grid(
            count_dataset_windows([s.shape for s in self.stacks], spec),
            f"windows of {spec.length}x{spec.crop}x{spec.crop} with stride {spec.stride} and "
            f"tile stride {spec.in_plane_step}",
        )
        grids = [window_grid(index, stack.shape, spec) for index, stack in enumerate(self.stacks)]
        self._grid = np.concatenate(grids, axis=0)

    def __len__(self) -> int:
        return int(self._grid.shape[0])

    @property
    def grid(self) -> np.ndarray:
        """(n_windows, 4) int64 array of (stack, z, y, x) origins; read-only view."""
        view = self._grid.view()
        view.flags.writeable = False
        return view

    @property
    def voxel_size_um(self) -> float:
        """Voxel edge length shared by all stacks, in µm."""
        return float(self.stacks[0].voxel_size_um)

    def origin(self, index: int) -> tuple[int, int, int, int]:
        """(stack index, z, y, x) of window ``index``."""
        s, z, y, x = self._grid[self._check_index(index)]
        return int(s), int(z), int(y), int(x)

    def view(self, index: int) -> np.ndarray:
        """The uint8 phase ids of window ``index`` as a (l, crop, crop) view into its stack."""
        s, z, y, x = self.origin(index)
        l, c = self.spec.length, self.spec.crop
        return self.stacks[s].labels[z : z + l, y : y + c, x : x + c]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(window_values(self.view(index)))[None]

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Windows ``indices`` as one float32 tensor of shape (N, 1, l, crop, crop)."""
        l, c = self.spec.length, self.spec.crop
        out = np.empty((len(indices), 1, l, c, c), dtype=np.float32)
        for row, index in enumerate(indices):
            np.subtract(self.view(int(index)), 1, out=out[row, 0], dtype=np.float32)
        return torch.from_numpy(out)

    def stack_of(self, index: int) -> ElectrodeStack:
        """The stack that window ``index`` belongs to."""
        return self.stacks[self.origin(index)[0]]

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window index {index} out of range for {n} windows")
        return index % n


def window_grid(stack_index: int, shape: Sequence[int], spec: WindowSpec) -> np.ndarray:
    """(n, 4) int64 origins (stack, z, y, x) of every window of ``spec`` in a stack of ``shape``.

    Order: z-major, then y, then x.
    """
    z, y, x = shape
    nz = count_windows(z, spec.length, spec.stride)
    zs = np.arange(nz, dtype=np.int64) * spec.stride
    ys = tile_origins(y, spec.crop, spec.in_plane_step)
    xs = tile_origins(x, spec.crop, spec.in_plane_step)
    zz, yy, xx = np.meshgrid(zs, ys, xs, indexing="ij")
    grid = np.empty((zz.size, 4), dtype=np.int64)
    grid[:, 0] = stack_index
    grid[:, 1] = zz.ravel()
    grid[:, 2] = yy.ravel()
    grid[:, 3] = xx.ravel()
    return grid


def count_dataset_windows(shapes: Sequence[Sequence[int]], spec: WindowSpec) -> int:
    """Total windows of ``spec`` over stacks of the given (Z, Y, X) ``shapes``."""
    total = 0
    for z, y, x in shapes:
        total += (
            count_windows(z, spec.length, spec.stride)
            * len(tile_origins(y, spec.crop, spec.in_plane_step))
            * len(tile_origins(x, spec.crop, spec.in_plane_step))
        )
    return total


def window_values(labels: np.ndarray) -> np.ndarray:
    """Phase ids (uint8) to float32 network values: pore -1, CBD 0, active +1."""
    return np.subtract(labels, 1, dtype=np.float32)


def validation_count(n_windows: int, val_fraction: float) -> int:
    """Validation windows for a split: ``ceil(n * val_fraction)`` (578 -> 87, 150 -> 23)."""
    if not 0.0 < val_fraction < 1.0:
        raise WindowSpecError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    return math.ceil(n_windows * val_fraction - 1e-9)


def split(
    data: WindowDataset,
    val_fraction: float = 0.15,
    seed: int = 0,
    mode: str = "random",
) -> tuple[np.ndarray, np.ndarray]:
    """Split windows into training and validation indices.

    Parameters
    ----------
    data : WindowDataset
        The windows to split.
    val_fraction : float
        Fraction of windows for validation (0.15 in the paper).
    seed : int
        Seed of the random permutation (random mode) or block placement (blocked mode).
    mode : {"auto", "random", "blocked"}
        ``"auto"``: see :func:`resolve_split`. ``"random"``: a seeded random permutation as in
        the paper; overlapping stride-1 windows land on both sides. ``"blocked"``: in each stack
        a contiguous block of Z positions at the top or bottom (seeded) goes to validation, and
        training windows sharing any slice with a validation window are dropped, so no slice is
        seen on both sides.

    Returns
    -------
    train_idx, val_idx : numpy.ndarray
        Sorted int64 window indices.
    """
    n = len(data)
    if mode not in SPLIT_MODES:
        raise WindowSpecError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    if n < 2:
        raise WindowSpecError(
            f"only {n} window in total: a split needs at least 2 "
            "(use a shorter window, a smaller stride or crop, or more stacks)"
        )
    n_val = validation_count(n, val_fraction)
    if n_val < 1 or n_val >= n:
        raise WindowSpecError(
            f"validation fraction {val_fraction} of {n} windows leaves "
            f"{n_val} for validation and {n - n_val} for training"
        )
    rng = np.random.default_rng(seed)
    mode = resolve_split(mode, data.spec)
    if mode == "random":
        order = rng.permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    return _blocked_split(data, val_fraction, rng)


def _blocked_split(
    data: WindowDataset, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    grid = data._grid
    length = data.spec.length
    train_parts, val_parts = [], []
    for stack_index in range(len(data.stacks)):
        members = np.flatnonzero(grid[:, 0] == stack_index)
        z = grid[members, 1]
        starts = np.unique(z)
        n_val_z = max(1, validation_count(len(starts), val_fraction))
        if n_val_z >= len(starts):
            raise WindowSpecError(
                f"stack {data.stacks[stack_index].name or stack_index} has only {len(starts)} "
                "window positions along Z: too few for a blocked split; use a random split, "
                "a shorter window or a deeper stack"
            )
        # The validation block sits at the top or the bottom of the stack (seeded), so only one
        # boundary costs training windows.
        first = 0 if rng.integers(0, 2) == 0 else len(starts) - n_val_z
        val_z = starts[first : first + n_val_z]
        lo, hi = int(val_z[0]), int(val_z[-1]) + length  # slices [lo, hi) are validation's
        is_val = np.isin(z, val_z)
        overlaps = (z < hi) & (z + length > lo)
        val_parts.append(members[is_val])
        train_parts.append(members[~overlaps])
    train = np.sort(np.concatenate(train_parts))
    val = np.sort(np.concatenate(val_parts))
    if len(train) == 0:
        raise WindowSpecError(
            "a blocked split leaves no training window once windows overlapping validation are "
            "dropped; use deeper stacks, a shorter window or a larger stride"
        )
    return train, val
