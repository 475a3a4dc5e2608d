"""What the Latents panel writes out: a decoded volume into its Labels layer, the latents as CSV.

The decoded layer keeps its array (:func:`update_labels_in_place`); the panel
(:mod:`.latent_panel`) decides when and what to show.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _layers
from ..core import RunFolderError
from ..core.checkpoint import atomic_write_text
from ..core.runs import latents_table
from .results_panel import NO_MODEL_MESSAGE

if TYPE_CHECKING:
    import napari

    from .state import CAEState


def update_labels_in_place(layer: Any, labels: np.ndarray) -> bool:
    """Copy ``labels`` into a Labels layer's own array and hand it back to the layer.

    For a volume of the same shape and dtype the layer keeps its array (no new 3D allocation per
    decode); the array is then given back through the public ``layer.data`` setter, which
    redraws the layer and emits its ``data`` event (the Physics panel follows the decoded layer
    through it). The undo history is cleared by turning ``editable`` off and on (napari's own
    public way; it also leaves a paint mode for pan/zoom): undoing would otherwise write values
    painted over in the old content into the new one. Only public napari API.

    Parameters
    ----------
    layer : napari.layers.Labels
        The layer; its ``data`` must be a writable numpy array that nobody else holds (make the
        layer with a copy).
    labels : numpy.ndarray
        New values, same shape and dtype as ``layer.data``.

    Returns
    -------
    bool
        False (nothing changed) if ``layer.data`` is not a writable array of that shape and
        dtype; the caller then sets ``layer.data``.
    """
    data = layer.data
    if not (
        isinstance(data, np.ndarray)
        and data.shape == labels.shape
        and data.dtype == labels.dtype
        and data.flags.writeable
    ):
        return False
    np.copyto(data, labels)
    layer.data = data
    editable = layer.editable
    layer.editable = False  # napari clears a Labels layer's undo history when editing stops
    layer.editable = editable
    return True


def show_decoded_labels(
    viewer: napari.Viewer,
    labels: np.ndarray,
    voxel_size_um: float,
    translate: tuple[float, float, float],
    update_in_place: Any = update_labels_in_place,
) -> None:
    """Write ``labels`` into the decoded Labels layer, in place; made if missing or reshaped.

    The translate is set only if the window moved. ``update_in_place`` is the in-place update
    (benchmarks pass variants).
    """
    name = _layers.DECODED_LAYER
    if name in viewer.layers and viewer.layers[name].data.shape == labels.shape:
        layer = viewer.layers[name]
        if not update_in_place(layer, labels):
            layer.data = labels.copy()  # the layer's own array, updated in place
        if not np.allclose(layer.translate, translate):
            layer.translate = translate
    else:
        _layers.add_phase_labels(viewer, labels.copy(), name, voxel_size_um, translate=translate)


def export_latents(state: CAEState, path: str | Path) -> Path:
    """Write the latents of every window as CSV (atomically) and return the path.

    Columns: window, split, stack, stack_name, tag, z, y, x, z1..zk (see
    :func:`napari_electrode_cae.core.runs.latents_table`).

    Raises
    ------
    RunFolderError
        If there are no latents, or they do not match the current windows.
    """
    latents, dataset, split = state.latents, state.dataset, state.split
    if latents is None or dataset is None:
        raise RunFolderError(f"no latents to export: {NO_MODEL_MESSAGE}")
    if len(latents) != len(dataset):
        raise RunFolderError(
            f"the latents cover {len(latents)} windows but the current windows are "
            f"{len(dataset)}; retrain or reopen the run"
        )
    train = split.train if split is not None else ()
    val = split.val if split is not None else ()
    path = Path(path)
    atomic_write_text(path, latents_table(latents, dataset, train, val))
    return path
