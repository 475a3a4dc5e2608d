"""What the Data panel knows about each candidate layer; helpers that read layers and files.

A :class:`LayerEntry` per 3D Labels/Image layer (its use, phase mapping override, conversion
result or error), the snapshot a background conversion reads, the CAL/UNCAL tag kept in the
layer's metadata, and the generator that reads files for the panel. No Qt widgets here; see
:mod:`.data_panel` for the panel and :mod:`.data_table` for its table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from napari.layers import Image, Labels
from qtpy.QtCore import QEventLoop, QThread
from qtpy.QtWidgets import QApplication

from .. import _layers
from ..core import ElectrodeCAEError, ElectrodeStack, read_stack

#: Layers written by other panels (window views, decoded volumes): never electrode stacks.
PLUGIN_OUTPUT_LAYERS = frozenset(
    {
        _layers.ORIGINAL_LAYER,
        _layers.RECONSTRUCTION_LAYER,
        _layers.RECONSTRUCTION_VALUES_LAYER,
        _layers.DECODED_LAYER,
    }
)
#: Tag combo entries and the ``calendered`` value each stands for.
TAGS: tuple[tuple[str, bool | None], ...] = (("?", None), ("CAL", True), ("UNCAL", False))


@dataclass(eq=False)
class LayerEntry:
    """What the Data panel knows about one candidate layer.

    Attributes
    ----------
    layer : napari.layers.Labels or napari.layers.Image
        The viewer layer.
    use : bool
        Whether the user wants this layer in ``state.stacks`` (effective only without error).
    override : dict of int to str or None
        Phase mapping set by the user, None for the default (inferred or the plugin's own).
    converted : ElectrodeStack or None
        Result of the last conversion (None if it failed).
    fractions : dict or None
        Volume fraction of each phase of ``converted``.
    error : str
        Why the layer cannot be used ("" if it can).
    stack : ElectrodeStack or None
        ``converted`` with the layer's current name and tag (what goes into ``state.stacks``).
    converting : bool
        True while a background worker converts the layer (``converted`` is None meanwhile).
    """

    layer: Any
    use: bool = False
    override: dict[int, str] | None = None
    converted: ElectrodeStack | None = None
    fractions: dict[str, float] | None = None
    error: str = ""
    stack: ElectrodeStack | None = None
    _source_data: Any = None
    _source_override: tuple | None = None
    _converted_once: bool = False
    _notified_error: str = ""
    _job: _ConversionJob | None = None
    _use_chosen: bool = False  # ``use`` set while the first conversion ran: keep it
    _use_if_usable: bool = False  # check the layer when its pending conversion succeeds

    @property
    def converting(self) -> bool:
        """True while a background worker converts the layer."""
        return self._job is not None

    @property
    def converted_source(self) -> str:
        """How conversion errors name the layer (its ``source``), e.g. ``"layer:grey"``."""
        return f"layer:{self.layer.name}"

    @property
    def usable(self) -> bool:
        """True if the layer converted to a stack."""
        return self.converted is not None

    @property
    def used(self) -> bool:
        """True if the stack goes into ``state.stacks``."""
        return self.use and self.stack is not None


@dataclass(frozen=True)
class LayerSnapshot:
    """What a conversion reads of a layer, taken on the GUI thread: a worker never touches a
    napari layer (it only reads the data array, which napari does not replace in place)."""

    name: str
    data: Any
    metadata: dict
    scale: tuple
    multiscale: bool = False
    rgb: bool = False

    @classmethod
    def of(cls, layer: Any) -> LayerSnapshot:
        return cls(
            layer.name,
            layer.data,
            dict(layer.metadata),
            tuple(layer.scale),
            bool(getattr(layer, "multiscale", False)),
            bool(getattr(layer, "rgb", False)),
        )


@dataclass(frozen=True)
class ConversionResult:
    """A layer's stack and volume fractions, or why it cannot be used."""

    stack: ElectrodeStack | None = None
    fractions: dict[str, float] | None = None
    error: str = ""
    unexpected: bool = False  # not an ElectrodeCAEError: always an error notification


@dataclass(eq=False)
class _ConversionJob:
    """One background conversion of an entry: what it converts (to tell a stale result)."""

    entry: LayerEntry
    snapshot: LayerSnapshot
    override_key: tuple | None
    first: bool
    worker: Any = None


@dataclass(frozen=True)
class ReadResult:
    """One file read by the loading worker: its stack, or the reason it could not be read."""

    path: str
    stack: ElectrodeStack | None = None
    error: str = ""


def is_candidate_layer(layer: Any) -> bool:
    """True for Labels and Image layers that are not outputs of the plugin's other panels."""
    return isinstance(layer, (Labels, Image)) and layer.name not in PLUGIN_OUTPUT_LAYERS


def layer_tag(layer: Any) -> bool | None:
    """The ``calendered`` value stored in the layer's plugin metadata (None if unknown)."""
    meta = layer.metadata.get(_layers.METADATA_KEY)
    value = meta.get("calendered") if isinstance(meta, dict) else None
    return value if isinstance(value, bool) else None


def set_layer_tag(layer: Any, calendered: bool | None) -> None:
    """Store ``calendered`` in the layer's plugin metadata (a new dict; the old one is kept)."""
    meta = layer.metadata.get(_layers.METADATA_KEY)
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["calendered"] = calendered
    layer.metadata[_layers.METADATA_KEY] = meta


def format_mapping(mapping: dict[int, str]) -> str:
    """A phase mapping as text :func:`~napari_electrode_cae.core.parse_phase_mapping` reads."""
    return ",".join(f"{value}={name}" for value, name in sorted(mapping.items()))


def convert_layer(layer: Any, override: dict[int, str] | None) -> ElectrodeStack:
    """The ElectrodeStack of ``layer`` (see :func:`napari_electrode_cae._layers.stack_from_layer`).

    Raises
    ------
    ElectrodeCAEError
        If the layer is multiscale, RGB, not 3D or its values cannot be mapped to phases.
    """
    from ..core import StackReadError

    if getattr(layer, "multiscale", False):
        raise StackReadError(
            f"layer {layer.name!r} is multiscale; open the full-resolution stack instead"
        )
    if getattr(layer, "rgb", False):
        raise StackReadError(f"layer {layer.name!r} is an RGB image, not a (Z, Y, X) label volume")
    return _layers.stack_from_layer(layer, override)


def layer_voxels(layer: Any) -> int:
    """Number of values in ``layer.data`` (0 for multiscale data)."""
    if getattr(layer, "multiscale", False):
        return 0
    return math.prod(getattr(layer.data, "shape", ()) or (0,))


def read_stacks(paths: Sequence[str]) -> Iterator[ReadResult]:
    """Read each path with :func:`~napari_electrode_cae.core.read_stack` (worker generator).

    One unreadable file does not stop the others: its error is yielded instead of a stack.
    """
    for path in paths:
        try:
            yield ReadResult(str(path), stack=read_stack(path))
        except ElectrodeCAEError as exc:
            yield ReadResult(str(path), error=str(exc))


def wait_for_workers(workers: list, timeout_s: float) -> None:
    """Process Qt events until every worker in ``workers`` has left it (its finished slot)."""
    deadline = time.monotonic() + timeout_s
    app = QApplication.instance()
    while workers and time.monotonic() < deadline and app is not None:
        app.processEvents(QEventLoop.AllEvents, 20)
        QThread.msleep(5)
