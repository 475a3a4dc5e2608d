"""napari reader: segmented electrode stacks as phase Labels layers.

Reads what :func:`napari_electrode_cae.core.read_stack` reads (a multi-page TIFF, a folder of 2D
TIFF slices, a ``.npy`` array) into one Labels layer per stack: phase ids 0 pore / 1 CBD /
2 active, named and coloured like every other view of the plugin, the voxel size as scale (µm)
and the stack's tag, voxel size and phase mapping in ``layer.metadata["electrode_cae"]``.

:func:`napari_get_reader` decides from the path alone (extension, or a folder holding TIFF
files) and returns None for anything else, so napari falls back to other readers. It is called
for every matching path napari opens, so this module imports neither napari nor the core (torch)
until a stack is actually read.

A file that passes that check but cannot be read as an electrode stack (corrupt, colour, 2D, more
than three label values ...) raises the core's typed error
(:class:`~napari_electrode_cae.core.StackReadError` or
:class:`~napari_electrode_cae.core.PhaseMappingError`) with its one-line message: napari shows it
in its reader dialog or as an error notification (``viewer.open(..., plugin=...)`` re-raises it
unchanged), and lets the user pick another reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: File name endings handled by the reader (lower case; equal to core.io's TIFF_SUFFIXES plus
#: NPY_SUFFIX, repeated here so that the check needs no torch import; a test keeps them equal).
READER_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy")
#: File name endings of the slices of a slice folder.
SLICE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | os.PathLike[str] | list | tuple) -> Callable | None:
    """The reader function for ``path``, or None if ``path`` is not an electrode stack.

    Parameters
    ----------
    path : str, path-like, or list of them
        What napari is asked to open. A list of several paths (napari's "open as stack",
        which means stacking 2D images into one volume) is left to other readers.

    Returns
    -------
    callable or None
        :func:`read_electrode_stacks` for a ``.tif``/``.tiff``/``.npy`` file or a folder that
        holds TIFF files; None otherwise.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_electrode_stacks if _is_candidate(Path(path)) else None


def _is_candidate(path: Path) -> bool:
    """Cheap test: a stack file by its extension, or a folder with at least one TIFF in it."""
    if path.is_dir():
        try:
            return any(
                entry.name.lower().endswith(SLICE_SUFFIXES) and not entry.name.startswith(".")
                for entry in os.scandir(path)
            )
        except OSError:
            return False
    return path.suffix.lower() in READER_SUFFIXES


def read_electrode_stacks(path: str | os.PathLike[str] | list | tuple, **_: Any) -> list[LayerData]:
    """Read one stack per path as ``(labels, layer kwargs, "labels")`` LayerData tuples.

    Parameters
    ----------
    path : str, path-like, or list of them
        Multi-page TIFF, folder of 2D TIFF slices, or ``.npy`` array.

    Returns
    -------
    list of tuple
        ``(labels, kwargs, "labels")`` per stack; ``labels`` is (Z, Y, X) uint8 phase ids and
        ``kwargs`` comes from :func:`napari_electrode_cae._layers.labels_layer_kwargs`.

    Raises
    ------
    StackReadError, PhaseMappingError
        If a path cannot be read as a 3-phase electrode stack (the message says why).
    """
    from ._layers import labels_layer_kwargs
    from .core import read_stack

    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    layers: list[LayerData] = []
    for p in paths:
        stack = read_stack(p)
        layers.append((stack.labels, labels_layer_kwargs(stack), "labels"))
    return layers
