"""napari reader: segmented electrode stacks as phase Labels layers.

Reads what :func:`napari_electrode_cae.core.read_stack` reads (a multi-page TIFF, a folder of 2D
TIFF slices, a ``.npy`` array) into one Labels layer per stack: phase ids 0 pore / 1 CBD /
2 active, named and coloured like every other view of the plugin, the voxel size as scale (µm)
and the stack's tag, voxel size and phase mapping in ``layer.metadata["electrode_cae"]``.

:func:`napari_get_reader` claims a path by its extension (or a folder holding TIFF files) and
then by a cheap look at its content: one page, or one slice of a ``.npy``. A colour image, a
single 2D image or a grey-level image (more than three distinct values in that sample) is left
to napari's own reader (None). A file whose content cannot be inspected (damaged, empty) is
claimed, so the user gets the core's one-line reason. It is called for every matching path
napari opens, so this module imports neither napari nor the core (torch) until a stack is read.

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
    path = Path(path)
    if not _is_candidate(path) or _not_a_segmented_stack(path):
        return None
    return read_electrode_stacks


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


#: Largest page (bytes, decoded) the claim looks at; a bigger one is claimed unseen.
_SAMPLE_BYTES = 64 * 2**20
#: More distinct values than this in the sample: grey levels, not phases.
_MAX_PHASE_VALUES = 3


def _not_a_segmented_stack(path: Path) -> bool:
    """True when a cheap sample shows that ``path`` holds no segmented 3D stack: colour, a
    single 2D image, or more than three distinct values. False when it may be one, or when
    the content cannot be inspected."""
    try:
        if path.is_dir():
            slices = sorted(
                e.path
                for e in os.scandir(path)
                if not e.name.startswith(".") and e.name.lower().endswith(SLICE_SUFFIXES)
            )
            return bool(slices) and _not_phase_image(Path(slices[0]), want_3d=False)
        return _not_phase_image(path, want_3d=True)
    except Exception:  # noqa: BLE001 - damaged or unreadable: claim it, the reader says why
        return False


def _not_phase_image(path: Path, want_3d: bool) -> bool:
    import numpy as np

    if path.suffix.lower() == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim != 3:
            return True
        sample = np.asarray(array[array.shape[0] // 2, ::2, ::2])
    else:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.pages[0]
            if getattr(page, "samplesperpixel", 1) > 1:
                return True  # colour
            if want_3d and len(series.shape) < 3:
                return True  # one 2D image is not a stack
            if page.size * page.dtype.itemsize > _SAMPLE_BYTES:
                return False
            sample = np.asarray(page.asarray())[::2, ::2]
    return len(np.unique(sample)) > _MAX_PHASE_VALUES


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
