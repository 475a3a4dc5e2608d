"""How electrode data look in napari: phase colours, layer names, stack <-> layer conversion.

Shared by the reader, the sample data and every panel so that a phase always has the same
colour and a window the same layer name. Importing this module does not import napari; the
napari objects are built inside the functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .core import PHASES, ElectrodeStack
from .core.io import stack_from_array
from .core.stack import PHASE_COLORS

# Layer names used by the panels (one layer of each, updated in place).
ORIGINAL_LAYER = "window: original"
RECONSTRUCTION_LAYER = "window: reconstruction"
RECONSTRUCTION_VALUES_LAYER = "window: reconstruction (values)"
DECODED_LAYER = "latent: decoded"
WINDOW_OUTLINE_LAYER = "window outline"

#: Key of the layer metadata entry that carries the stack's tag, voxel size and mapping.
METADATA_KEY = "electrode_cae"


def phase_colormap() -> Any:
    """A napari DirectLabelColormap: pore transparent (background), CBD orange, active grey.

    Pore (id 0) is napari's background label, so 3D renderings show the solid skeleton.
    """
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colors.update({i: PHASE_COLORS[i] for i in (1, 2)})
    return DirectLabelColormap(color_dict=colors, background_value=0)


def labels_layer_kwargs(stack: ElectrodeStack) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_labels(stack.labels, **kwargs)`` / a LayerData tuple."""
    return {
        "name": stack.name or "electrode",
        "scale": (stack.voxel_size_um,) * 3,
        "units": "µm",
        "colormap": phase_colormap(),
        "metadata": {METADATA_KEY: stack_metadata(stack)},
    }


def add_stack_labels(viewer: Any, stack: ElectrodeStack, **kwargs: Any) -> Any:
    """Add ``stack`` as a phase Labels layer on top of the layer list; returns the layer.

    What ``viewer.add_labels(stack.labels, ...)`` with :func:`labels_layer_kwargs` does, with
    ``kwargs`` added to (or replacing) those arguments.
    """
    from napari.layers import Labels

    layer = Labels(stack.labels, **{**labels_layer_kwargs(stack), **kwargs})
    viewer.layers.append(layer)
    return layer


def keep_last_slices_reachable(dims: Any) -> Any:
    """Give ``dims`` (``viewer.dims``) a slider step for every slice, whatever the voxel size.

    napari counts the steps of an axis as ``int((stop - start) / step) + 1``; with a voxel size
    such as 0.398 µm, ``47 * 0.398 / 0.398`` comes out as 46.99999999999999 and a 48-slice stack
    gets 47 steps: its last slice cannot be reached (napari/napari#4861). Whenever the range
    changes, a stop that falls short of a whole number of steps by rounding alone is moved up
    by a millionth of a step. Returns the callback connected to ``dims.events.range``
    (disconnect it to undo).
    """

    def fix(event: Any = None) -> None:
        fixed = []
        for start, stop, step in dims.range:
            steps = (stop - start) / step if step else 0.0
            short = step and round(steps) > steps and round(steps) - steps < 1e-6
            fixed.append((start, stop + step * 1e-6 if short else stop, step))
        if tuple(fixed) != tuple(dims.range):
            dims.range = tuple(fixed)

    dims.events.range.connect(fix)
    fix()
    return fix


def stack_metadata(stack: ElectrodeStack) -> dict[str, Any]:
    """JSON-friendly description of a stack kept in ``layer.metadata[METADATA_KEY]``."""
    return {
        "calendered": stack.calendered,
        "voxel_size_um": stack.voxel_size_um,
        "source": stack.source,
        "phase_mapping": {int(k): v for k, v in stack.phase_mapping.items()},
        "phases": list(PHASES),
    }


def add_phase_labels(
    viewer: Any,
    labels: np.ndarray,
    name: str,
    voxel_size_um: float,
    index: int | None = None,
    **kwargs: Any,
) -> Any:
    """Add (or update in place) a phase Labels layer called ``name``; returns the layer.

    A new layer goes on top of the layer list, or at position ``index``; one that replaces a
    layer of another shape takes that layer's position.
    """
    from napari.layers import Labels

    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer.data.shape == labels.shape:
            layer.data = labels
            return layer
        index = viewer.layers.index(layer)
        viewer.layers.remove(layer)
    layer = Labels(
        labels,
        name=name,
        scale=(voxel_size_um,) * 3,
        units="µm",
        colormap=phase_colormap(),
        **kwargs,
    )
    viewer.layers.insert(len(viewer.layers) if index is None else index, layer)
    return layer


def stack_from_layer(layer: Any, phases: dict[int, str] | None = None) -> ElectrodeStack:
    """An ElectrodeStack from a napari Labels or Image layer.

    Labels layers written by this plugin (metadata present, values 0/1/2) hold phase ids; the
    stack's ``phase_mapping`` is the one they were read with, in the file's stored values
    (``metadata[METADATA_KEY]["phase_mapping"]``, e.g. ``{0: "pore", 85: "active", 170:
    "cbd"}``), and ``phases``, if given, is read in those stored values too (see
    :func:`remap_phase_ids`). Other layers have their stored values mapped to phases
    (``phases`` or the inferred default, see
    :func:`napari_electrode_cae.core.io.infer_phase_mapping`).

    Raises
    ------
    ElectrodeCAEError
        If the layer is not 3D or its values cannot be mapped to three phases.
    """
    from .core import StackReadError

    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise StackReadError(
            f"layer {layer.name!r} has {data.ndim} dimensions {data.shape}; an electrode stack "
            "must be a 3D (Z, Y, X) volume"
        )
    meta = dict(layer.metadata.get(METADATA_KEY, {}))
    scale = float(np.asarray(layer.scale)[-1])
    voxel = float(meta.get("voxel_size_um") or (scale if scale != 1.0 else 0.398))
    own = read_as_phase_ids(layer, data)
    source = meta.get("source") or f"layer:{layer.name}"
    if not own:
        return stack_from_array(
            data,
            phases,
            voxel_size_um=voxel,
            calendered=meta.get("calendered"),
            source=source,
            name=layer.name,
        )
    stored = read_mapping(meta)
    ids = remap_phase_ids(data, stored, phases, source)
    stack = stack_from_array(
        data,
        ids,
        voxel_size_um=voxel,
        calendered=meta.get("calendered"),
        source=source,
        name=layer.name,
    )
    return dataclasses.replace(stack, phase_mapping=dict(sorted((phases or stored).items())))


def read_as_phase_ids(layer: Any, data: np.ndarray | None = None) -> bool:
    """True if ``layer`` holds phase ids written by this plugin (its reader, samples, Data tab).

    "phases" in the layer's plugin metadata marks them (:func:`stack_metadata` writes it); a
    layer that only carries a CAL/UNCAL tag set in the Data panel holds its stored values.
    """
    meta = layer.metadata.get(METADATA_KEY)
    if not isinstance(meta, dict) or "phases" not in meta:
        return False
    data = np.asarray(layer.data) if data is None else data
    return data.dtype == np.uint8 and int(data.max(initial=0)) <= 2


#: Phase id -> phase name: how labels written by this plugin are stored.
IDENTITY_MAPPING: dict[int, str] = dict(enumerate(PHASES))


def read_mapping(meta: dict[str, Any]) -> dict[int, str]:
    """The stored-value mapping a plugin layer was read with (phase ids if it has none)."""
    mapping = meta.get("phase_mapping")
    if not isinstance(mapping, dict) or not mapping:
        return dict(IDENTITY_MAPPING)
    try:
        return {int(k): str(v) for k, v in mapping.items() if str(v) in PHASES}
    except (TypeError, ValueError):
        return dict(IDENTITY_MAPPING)


def remap_phase_ids(
    data: np.ndarray, stored: dict[int, str], phases: dict[int, str] | None, where: str
) -> dict[int, str]:
    """Phase id -> phase name for phase-id ``data`` read with mapping ``stored``, so that the
    stack follows ``phases`` given in the same stored values (None: as read).

    Raises
    ------
    PhaseMappingError
        If ``phases`` misses a stored value the data hold, or sends two stored values that were
        read as one phase to different phases (the file must then be read again).
    """
    from .core import PhaseMappingError
    from .core.io import describe_phase_mapping

    if phases is None:
        return dict(IDENTITY_MAPPING)
    counts = np.bincount(data.reshape(-1), minlength=len(PHASES))[: len(PHASES)]
    ids: dict[int, str] = {}
    missing: list[int] = []
    for phase_id, name in enumerate(PHASES):
        if not counts[phase_id]:
            continue
        values = sorted(v for v, n in stored.items() if n == name) or [phase_id]
        missing += [v for v in values if v not in phases]
        targets = {phases[v] for v in values if v in phases}
        if len(targets) > 1:
            raise PhaseMappingError(
                f"{where}: stored values {', '.join(map(str, values))} were read as one phase "
                f"({name}); to split them, open the file again with that mapping"
            )
        if targets:
            ids[phase_id] = targets.pop()
    if missing:
        raise PhaseMappingError(
            f"{where}: stored values {', '.join(map(str, sorted(missing)))} present in the data "
            f"are not in the given phase mapping ({describe_phase_mapping(phases)}); "
            f"the file was read as {describe_phase_mapping(stored)}"
        )
    return ids
