"""Geometry of the Windows tab, without Qt: window outlines, stack placement, summaries.

Pure functions of the core's window grid, used by :class:`.windows_panel.WindowsPanel` to draw
the selected window's box and to describe the windows a setting makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..core import PRESETS, WindowSpec

if TYPE_CHECKING:
    from ..core import WindowDataset

#: Preset combo entries: the core presets, then "custom" (any other window settings).
CUSTOM_PRESET = "custom"


class StackGeometry(NamedTuple):
    """Scale, translate and units of a stack layer's (Z, Y, X) axes (world = data·scale+shift)."""

    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    units: tuple[str, str, str]


def box_edges(origin: tuple[int, int, int], size: tuple[int, int, int]) -> list[np.ndarray]:
    """The 12 edges of a voxel box as (2, 3) float arrays of (z, y, x) data coordinates.

    Parameters
    ----------
    origin : tuple of 3 int
        First voxel (z, y, x) of the box.
    size : tuple of 3 int
        Box size (l, crop, crop) in voxels.

    Notes
    -----
    Voxel centres sit on integer coordinates, so the box's faces are half a voxel outside them.
    """
    lo = np.asarray(origin, dtype=float) - 0.5
    hi = lo + np.asarray(size, dtype=float)
    corners = {
        (a, b, c): np.array([(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]])
        for a in (0, 1)
        for b in (0, 1)
        for c in (0, 1)
    }
    edges = []
    for key, start in corners.items():
        for axis in range(3):
            if key[axis] == 0:
                end_key = tuple(1 if i == axis else key[i] for i in range(3))
                edges.append(np.stack([start, corners[end_key]]))
    return edges


def slice_outlines(
    origin: tuple[int, int, int], size: tuple[int, int, int], axis: int
) -> list[np.ndarray]:
    """Closed rectangles (5, 3) outlining the box on every slice along ``axis`` it covers.

    napari shows a shape in a 2D view only on the slice that contains all its vertices, so a box
    is drawn in 2D as one rectangle per slice.
    """
    lo = np.asarray(origin, dtype=float) - 0.5
    hi = lo + np.asarray(size, dtype=float)
    a, b = (i for i in range(3) if i != axis)
    corners_2d = [(lo[a], lo[b]), (lo[a], hi[b]), (hi[a], hi[b]), (hi[a], lo[b]), (lo[a], lo[b])]
    outlines = []
    for k in range(int(origin[axis]), int(origin[axis]) + int(size[axis])):
        rect = np.empty((5, 3))
        rect[:, axis] = k
        rect[:, a] = [p[0] for p in corners_2d]
        rect[:, b] = [p[1] for p in corners_2d]
        outlines.append(rect)
    return outlines


def matching_preset(spec: WindowSpec) -> str:
    """Name of the core preset whose window is ``spec``, else :data:`CUSTOM_PRESET`."""
    for name, preset in PRESETS.items():
        if preset.window == spec or (
            preset.window.length,
            preset.window.stride,
            preset.window.crop,
            preset.window.in_plane_step,
        ) == (spec.length, spec.stride, spec.crop, spec.in_plane_step):
            return name
    return CUSTOM_PRESET


def dataset_summary(
    dataset: WindowDataset, train: np.ndarray, val: np.ndarray, split_mode: str
) -> str:
    """One-paragraph description of a dataset and its split."""
    n = len(dataset)
    per_stack = np.bincount(dataset.grid[:, 0], minlength=len(dataset.stacks))
    spec = dataset.spec
    text = (
        f"{n} mini microstructures of {spec.length}×{spec.crop}×{spec.crop} voxels "
        f"(per stack: {', '.join(str(int(c)) for c in per_stack)}); "
        f"{len(train)} training / {len(val)} validation"
    )
    if split_mode == "blocked":
        dropped = n - len(train) - len(val)
        text += f" (blocked split drops {dropped} overlapping)"
    elif spec.stride < spec.length:
        text += (
            " — the random split leaks: overlapping windows share slices across it, so "
            "the validation error is optimistic; blocked avoids it"
        )
    return text
