"""Data panel: pick the electrode layers (Labels or Image) that become ``state.stacks``.

One table row per 3D Labels/Image layer of the viewer, kept in sync with the layer list: a "use"
checkbox with the layer name, a CAL/UNCAL/? tag (stored in the layer's metadata), the shape, the
pore/CBD/active volume fractions and the phase mapping of the converted stack. Stored values are
mapped to phases by :func:`napari_electrode_cae._layers.stack_from_layer`; the mapping of the
selected row can be overridden with text like ``"0=pore,85=active,170=cbd"``. Layers that cannot
be converted show their error in their row and cannot be used; their data is never modified.

Converting a big layer (phase counts, mapping, validation, volume fractions) takes seconds, so a
layer with more than :data:`SYNC_CONVERT_MAX_VOXELS` voxels is converted in a background worker
(when it is added, when its data are replaced and when its phase mapping is set); its row says
"converting …" meanwhile and cannot be checked, and a result that no longer fits the layer (its
data or mapping changed meanwhile, or it was removed) is dropped (converted again if the layer is
still there); a rename alone keeps the result (the stack takes the new name, as for a small
layer). While a conversion is pending ``state.converting_layers`` names the layers, and the Train
panel waits. Smaller layers are converted at once, on the GUI thread (well under 50 ms).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEventLoop, Qt, QThread
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core import (
    ElectrodeCAEError,
    ElectrodeStack,
    describe_phase_mapping,
    parse_phase_mapping,
    read_stack,
    volume_fractions,
)

if TYPE_CHECKING:
    import napari

    from .state import CAEState

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
#: File dialog filter of the stacks :func:`napari_electrode_cae.core.read_stack` reads.
FILE_FILTER = "Electrode stacks (*.tif *.tiff *.npy);;All files (*)"
#: Most seconds :meth:`DataPanel.shutdown` waits for a reading or converting worker (one file
#: or one layer is not interruptible).
SHUTDOWN_WAIT_S = 60.0
#: Layers with more voxels than this are converted in a background worker; smaller ones at once
#: (about 10 ns a voxel on a 2-core CPU: 2 M voxels take some 20 ms).
SYNC_CONVERT_MAX_VOXELS = 2_000_000

_COL_NAME, _COL_TAG, _COL_SHAPE, _COL_FRACTIONS, _COL_MAPPING = range(5)
_HEADERS = ("Use · layer", "Tag", "Z×Y×X", "Pore/CBD/AM %", "Phase mapping")
_ERROR_COLOR = QColor(230, 80, 80)
_ERROR_STYLE = "color: rgb(230, 80, 80);"
_BUSY_COLOR = QColor(150, 150, 150)


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
        return cls(layer.name, layer.data, dict(layer.metadata), tuple(layer.scale),
                   bool(getattr(layer, "multiscale", False)), bool(getattr(layer, "rgb", False)))


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
        raise StackReadError(
            f"layer {layer.name!r} is an RGB image, not a (Z, Y, X) label volume"
        )
    return _layers.stack_from_layer(layer, override)


def conversion_of(layer: Any, override: dict[int, str] | None) -> ConversionResult:
    """:func:`convert_layer` and the volume fractions; an ElectrodeCAEError becomes ``error``."""
    try:
        stack = convert_layer(layer, override)
    except ElectrodeCAEError as exc:
        return ConversionResult(error=str(exc))
    return ConversionResult(stack, volume_fractions(stack.labels))


def convert_in_worker(snapshot: LayerSnapshot,
                      override: dict[int, str] | None) -> ConversionResult:
    """:func:`conversion_of` for a worker thread: any failure (e.g. MemoryError) is returned."""
    try:
        return conversion_of(snapshot, override)
    except Exception as exc:  # noqa: BLE001 (reported in the layer's row, nothing is lost)
        return ConversionResult(
            error=f"layer {snapshot.name!r} could not be converted: {type(exc).__name__}: {exc}",
            unexpected=True,
        )


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


class DataPanel(QWidget):
    """Choose the electrode layers used for training.

    Parameters
    ----------
    viewer : napari.Viewer
        Viewer whose Labels and Image layers are listed.
    state : CAEState
        Shared state; this panel writes ``stacks`` and ``stack_layers`` and calls
        ``state.rebuild_dataset()`` when they change.
    parent : QWidget, optional
        Qt parent.
    """

    def __init__(self, viewer: napari.Viewer, state: CAEState,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self.entries: list[LayerEntry] = []
        self._workers: list = []
        self._closing = False
        self._filling_table = False
        self._pushing = False
        self._layer_callbacks: dict[int, tuple[Any, Any]] = {}
        self._build_ui()
        layer_events = viewer.layers.events
        for emitter in (layer_events.inserted, layer_events.removed, layer_events.moved):
            emitter.connect(self._on_layers_changed)
        state.events.stack_layers.connect(self._on_state_stack_layers)
        self._sync_entries()

    @property
    def idle(self) -> bool:
        """True when no reading or converting worker of this panel is running."""
        return not self._workers

    # ---------------------------------------------------------------------------------- UI

    def _build_ui(self) -> None:
        self.table = QTableWidget(0, len(_HEADERS))
        self.table.setHorizontalHeaderLabels(_HEADERS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        # The fractions column holds short text but also the start of a spanning error message:
        # size it by its header, not by its contents.
        header.setSectionResizeMode(_COL_FRACTIONS, QHeaderView.Interactive)
        padding = 4 * self.fontMetrics().averageCharWidth()
        header.resizeSection(_COL_FRACTIONS,
                             self.fontMetrics().horizontalAdvance(_HEADERS[_COL_FRACTIONS]) + padding)
        header.setStretchLastSection(True)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemSelectionChanged.connect(self._on_selection_changed)

        self.mapping_edit = QLineEdit()
        self.mapping_edit.setPlaceholderText("0=pore,85=active,170=cbd")
        self.mapping_edit.setToolTip(
            "Stored value → phase of the selected layer (pore, cbd, active); Enter applies"
        )
        self.mapping_edit.returnPressed.connect(self._on_apply_mapping_clicked)
        self.apply_mapping_button = QPushButton("Apply")
        self.apply_mapping_button.clicked.connect(self._on_apply_mapping_clicked)
        self.auto_mapping_button = QPushButton("Auto")
        self.auto_mapping_button.setToolTip("Go back to the inferred phase mapping")
        self.auto_mapping_button.clicked.connect(self._on_auto_mapping_clicked)
        mapping_row = QHBoxLayout()
        mapping_row.addWidget(QLabel("Phase mapping:"))
        mapping_row.addWidget(self.mapping_edit, 1)
        mapping_row.addWidget(self.apply_mapping_button)
        mapping_row.addWidget(self.auto_mapping_button)

        self.details_label = QLabel()
        self.details_label.setWordWrap(True)
        self.details_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.open_files_button = QPushButton("Open files…")
        self.open_files_button.setToolTip("Multi-page TIFF or .npy electrode stacks")
        self.open_files_button.clicked.connect(self._on_open_files_clicked)
        self.open_folder_button = QPushButton("Open folder…")
        self.open_folder_button.setToolTip("A folder of 2D TIFF slices, read as one stack")
        self.open_folder_button.clicked.connect(self._on_open_folder_clicked)
        open_row = QHBoxLayout()
        open_row.addWidget(self.open_files_button)
        open_row.addWidget(self.open_folder_button)
        self.load_status_label = QLabel()
        self.load_status_label.setWordWrap(True)
        self.load_status_label.hide()
        self.convert_status_label = QLabel()
        self.convert_status_label.setWordWrap(True)
        self.convert_status_label.hide()

        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(open_row)
        layout.addWidget(self.load_status_label)
        layout.addWidget(self.convert_status_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(mapping_row)
        layout.addWidget(self.details_label)
        layout.addWidget(self.summary_label)
        self._update_mapping_editor()

    # ------------------------------------------------------------------- layer list sync

    def _on_layers_changed(self, event: Any = None) -> None:
        self._sync_entries()

    def _sync_entries(self) -> None:
        """Match ``entries`` to the viewer's candidate layers, refresh the table and state.

        The state is written only if the used stacks changed here: a layer another panel adds
        (the window outline, from inside a state event) leaves the state as it is.
        """
        before = self._used_view()
        known = {id(entry.layer): entry for entry in self.entries}
        entries = []
        for layer in self.viewer.layers:
            if not is_candidate_layer(layer):
                continue
            entry = known.pop(id(layer), None)
            if entry is None:
                entry = LayerEntry(layer)
                self._connect_layer(layer)
            entries.append(entry)
        for entry in known.values():
            self._disconnect_layer(entry.layer)
        self.entries = entries
        for entry in self.entries:
            self._refresh_entry(entry)
        self._fill_table()
        if self._used_view() != before:
            self._push_state()

    def _used_view(self) -> list[tuple[int, int]]:
        """Identity of what this panel would put into the state (entries, their stacks)."""
        return [(id(entry), id(entry.stack)) for entry in self.entries if entry.used
                or entry.converting]

    def _connect_layer(self, layer: Any) -> None:
        def on_name(event: Any = None) -> None:
            self._on_layer_renamed(layer)

        def on_data(event: Any = None) -> None:
            self._on_layer_data_changed(layer)

        layer.events.name.connect(on_name)
        layer.events.data.connect(on_data)
        self._layer_callbacks[id(layer)] = (on_name, on_data)

    def _disconnect_layer(self, layer: Any) -> None:
        callbacks = self._layer_callbacks.pop(id(layer), None)
        if callbacks is None:
            return
        on_name, on_data = callbacks
        layer.events.name.disconnect(on_name)
        layer.events.data.disconnect(on_data)

    def _on_layer_renamed(self, layer: Any) -> None:
        if layer.name in PLUGIN_OUTPUT_LAYERS or not any(e.layer is layer for e in self.entries):
            self._sync_entries()
            return
        entry = self._entry_of(layer)
        self._refresh_entry(entry)
        self._fill_table()
        self._push_state()

    def _on_layer_data_changed(self, layer: Any) -> None:
        entry = self._entry_of(layer)
        if entry is None or entry._source_data is layer.data:
            return  # painting edits the array in place: same data, nothing to convert
        self._refresh_entry(entry)
        self._fill_table()
        self._push_state()

    def _entry_of(self, layer: Any) -> LayerEntry | None:
        return next((entry for entry in self.entries if entry.layer is layer), None)

    # ------------------------------------------------------------------------- conversion

    def _refresh_entry(self, entry: LayerEntry) -> None:
        """Convert the layer if its data or mapping changed, then update name and tag.

        A big layer is converted in a worker: ``entry.stack`` is None until its result is in.
        """
        if entry._job is not None:  # its result is checked against the layer when it arrives
            entry.stack = None
            return
        override_key = self._override_key(entry)
        data = entry.layer.data
        if not entry._converted_once or entry._source_data is not data \
                or entry._source_override != override_key:
            entry._source_data, entry._source_override = data, override_key
            if layer_voxels(entry.layer) > SYNC_CONVERT_MAX_VOXELS:
                self._start_conversion(entry, override_key)
                return
            self._convert(entry)
        if entry.converted is None:
            entry.stack = None
            return
        name, tag = entry.layer.name, layer_tag(entry.layer)
        stack = entry.stack
        if stack is None or stack.labels is not entry.converted.labels \
                or stack.phase_mapping != entry.converted.phase_mapping \
                or (stack.name, stack.calendered) != (name, tag):
            # a stack made from the layer itself names its source after the layer: a rename
            # renames that too (a file path stays as it is)
            source = entry.converted.source
            if source.startswith("layer:"):
                source = f"layer:{name}"
            entry.stack = self._stack_in_state(entry.converted, name, tag) or \
                dataclasses.replace(entry.converted, name=name, calendered=tag, source=source)

    @staticmethod
    def _override_key(entry: LayerEntry) -> tuple | None:
        return tuple(sorted(entry.override.items())) if entry.override else None

    def _stack_in_state(self, converted: ElectrodeStack, name: str,
                        tag: bool | None) -> ElectrodeStack | None:
        """The stack of layer ``name`` in ``state.stacks`` if it is ``converted`` renamed.

        Another panel (Open run) may have put the layer's stack into the state already; keeping
        that object leaves the dataset as it is when this panel catches up.
        """
        for stack, layer_name in zip(self.state.stacks, self.state.stack_layers):
            if layer_name == name and stack.labels is converted.labels \
                    and (stack.name, stack.calendered) == (name, tag) \
                    and stack.phase_mapping == converted.phase_mapping \
                    and stack.voxel_size_um == converted.voxel_size_um:
                return stack
        return None

    def _convert(self, entry: LayerEntry) -> None:
        """Convert ``entry.layer`` at once, on the GUI thread."""
        first = not entry._converted_once
        self._apply_conversion(entry, conversion_of(entry.layer, entry.override), first)

    def _apply_conversion(self, entry: LayerEntry, result: ConversionResult,
                          first: bool) -> None:
        entry._converted_once = True
        if result.error:
            entry.converted, entry.fractions, entry.error = None, None, result.error
            entry.use = False
            if entry._notified_error != entry.error:
                entry._notified_error = entry.error
                # A layer that merely is not an electrode stack (2D, RGB, grey levels) gets a
                # quiet note; a mapping the user asked for and that fails is an error.
                quiet = first and entry.override is None and not result.unexpected
                if quiet:
                    show_info(f"{entry.layer.name}: not used as an electrode stack: "
                              f"{entry.error}")
                else:
                    show_error(entry.error)
            return
        entry.converted = result.stack
        entry.error = entry._notified_error = ""
        entry.fractions = result.fractions
        if first and not entry._use_chosen:
            entry.use = self._looks_like_electrode(entry)

    # ------------------------------------------------------------- background conversion

    def _start_conversion(self, entry: LayerEntry, override_key: tuple | None) -> None:
        """Convert ``entry.layer`` in a worker; the row shows "converting …" meanwhile."""
        job = _ConversionJob(entry, LayerSnapshot.of(entry.layer), override_key,
                             first=not entry._converted_once)
        entry.converted, entry.fractions, entry.stack, entry.error = None, None, None, ""
        override = dict(entry.override) if entry.override else None
        worker = create_worker(convert_in_worker, job.snapshot, override, _ignore_errors=True)
        job.worker = worker
        worker.returned.connect(lambda result, job=job: self._on_converted(job, result))
        worker.finished.connect(lambda job=job: self._on_conversion_finished(job))
        entry._job = job
        self._workers.append(worker)
        worker.start()

    def _is_current(self, entry: LayerEntry) -> bool:
        return any(e is entry for e in self.entries)

    def _on_converted(self, job: _ConversionJob, result: ConversionResult) -> None:
        """A worker's result: applied if it still fits the layer, else converted again."""
        entry = job.entry
        if self._closing or entry._job is not job:
            return
        entry._job = None
        if not self._is_current(entry):
            return  # the layer was removed meanwhile
        layer = entry.layer
        # A rename alone does not make the result stale: _refresh_entry gives the stack the
        # layer's current name (as for a renamed small layer, which is not converted again).
        if layer.data is not job.snapshot.data or self._override_key(entry) != job.override_key:
            entry._source_data = None  # stale: convert what the layer holds now
        else:
            self._apply_conversion(entry, result, job.first)
            if entry.usable and entry._use_if_usable:
                entry.use = True
            entry._use_if_usable = False
        self._refresh_entry(entry)
        self._fill_table()
        self._push_state()

    def _on_conversion_finished(self, job: _ConversionJob) -> None:
        if job.worker in self._workers:
            self._workers.remove(job.worker)
        entry = job.entry
        if entry._job is not job:
            self._update_convert_status()
            return
        # Finished without a result (only if the worker itself failed).
        entry._job = None
        if self._closing or not self._is_current(entry):
            return
        self._apply_conversion(entry, ConversionResult(
            error=f"layer {entry.layer.name!r}: the conversion stopped without a result",
            unexpected=True), job.first)
        self._refresh_entry(entry)
        self._fill_table()
        self._push_state()

    def _update_convert_status(self) -> None:
        busy = [e for e in self.entries if e.converting]
        if not self._closing:
            # Train waits while a result may still change the stacks (and so the dataset).
            self.state.converting_layers = tuple(e.layer.name for e in busy)
        if not busy:
            self.convert_status_label.hide()
            return
        names = ", ".join(f"{e.layer.name} ({'×'.join(map(str, e.layer.data.shape))})"
                          for e in busy)
        self.convert_status_label.setText(f"Converting {names} in the background …")
        self.convert_status_label.show()

    @staticmethod
    def _looks_like_electrode(entry: LayerEntry) -> bool:
        """Checked by default: plugin layers, and Labels with at most 3 stored values."""
        meta = entry.layer.metadata.get(_layers.METADATA_KEY)
        if isinstance(meta, dict) and "phases" in meta:
            return True
        return isinstance(entry.layer, Labels) and len(entry.converted.phase_mapping) <= 3

    # ------------------------------------------------------------------------------ table

    def _fill_table(self) -> None:
        selected = self.selected_entry()
        self._filling_table = True
        try:
            self.table.setRowCount(len(self.entries))
            for row, entry in enumerate(self.entries):
                self._fill_row(row, entry)
            if selected is not None and selected in self.entries:
                self.table.selectRow(self.entries.index(selected))
        finally:
            self._filling_table = False
        self._update_mapping_editor()
        self._update_convert_status()

    def _fill_row(self, row: int, entry: LayerEntry) -> None:
        name_item = QTableWidgetItem(entry.layer.name)
        flags = Qt.ItemIsSelectable | Qt.ItemIsEnabled
        if entry.usable:
            name_item.setFlags(flags | Qt.ItemIsUserCheckable)
            name_item.setCheckState(Qt.Checked if entry.use else Qt.Unchecked)
        elif entry.converting:  # the box shows the intended state; set_used may change it
            name_item.setFlags(flags)
            name_item.setCheckState(Qt.Checked if entry.use else Qt.Unchecked)
            name_item.setForeground(_BUSY_COLOR)
        else:
            name_item.setFlags(flags)
            name_item.setForeground(_ERROR_COLOR)
        name_item.setToolTip(f"{type(entry.layer).__name__} layer {entry.layer.name!r}")
        self.table.setItem(row, _COL_NAME, name_item)
        self._tag_combo(row, entry)
        shape = "×".join(str(n) for n in entry.layer.data.shape)
        self.table.setItem(row, _COL_SHAPE, QTableWidgetItem(shape))
        fractions_item = QTableWidgetItem(self._fractions_text(entry))
        if entry.fractions is not None:
            fractions_item.setToolTip(", ".join(
                f"{phase} {100 * fraction:.2f} %" for phase, fraction in entry.fractions.items()
            ))
        if not entry.error:
            self.table.setItem(row, _COL_FRACTIONS, fractions_item)
        mapping_item = QTableWidgetItem(self._mapping_text(entry))
        mapping_item.setToolTip(entry.error or self._mapping_text(entry))
        name_item.setToolTip(f"{name_item.toolTip()}: {entry.error or self._mapping_text(entry)}")
        # An error spans the fractions and mapping cells, so it shows without scrolling.
        error_column = _COL_FRACTIONS if entry.error else _COL_MAPPING
        if entry.error:
            mapping_item.setForeground(_ERROR_COLOR)
        elif entry.converting:
            mapping_item.setForeground(_BUSY_COLOR)
        self.table.setItem(row, error_column, mapping_item)
        span = _COL_MAPPING - _COL_FRACTIONS + 1
        if (self.table.columnSpan(row, _COL_FRACTIONS) > 1) != bool(entry.error):
            self.table.setSpan(row, _COL_FRACTIONS, 1, span if entry.error else 1)

    def _tag_combo(self, row: int, entry: LayerEntry) -> QComboBox:
        """The row's tag combo, reused when it already belongs to the layer (no churn of
        cell widgets on every refresh), set to the layer's tag."""
        combo = self.table.cellWidget(row, _COL_TAG)
        if not isinstance(combo, QComboBox) or combo.property("layer_id") != id(entry.layer):
            combo = QComboBox()
            for text, value in TAGS:
                combo.addItem(text, value)
            combo.setProperty("layer_id", id(entry.layer))
            combo.setToolTip("Calendered (CAL) or uncalendered (UNCAL) electrode")
            combo.currentIndexChanged.connect(
                lambda index, layer=entry.layer: self._on_tag_changed(layer, TAGS[index][1])
            )
            self.table.setCellWidget(row, _COL_TAG, combo)
        combo.setEnabled(entry.usable or entry.converting)
        index = [value for _, value in TAGS].index(layer_tag(entry.layer))
        if combo.currentIndex() != index:
            combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(False)
        return combo

    @staticmethod
    def _fractions_text(entry: LayerEntry) -> str:
        if entry.converting:
            return "…"
        if entry.fractions is None:
            return "—"
        return "/".join(f"{100 * entry.fractions[p]:.0f}" for p in ("pore", "cbd", "active"))

    @staticmethod
    def _mapping_text(entry: LayerEntry) -> str:
        if entry.converting:
            return "converting …"
        if entry.error:
            prefix = f"{entry.converted_source}: "
            error = entry.error[len(prefix):] if entry.error.startswith(prefix) else entry.error
            return f"⚠ {error}"
        described = describe_phase_mapping(entry.converted.phase_mapping)
        return f"{described} (set)" if entry.override else described

    # --------------------------------------------------------------------------- user input

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling_table or item.column() != _COL_NAME:
            return
        entry = self.entries[item.row()]
        if entry.usable:
            entry.use = item.checkState() == Qt.Checked
            self._push_state()

    def _on_tag_changed(self, layer: Any, calendered: bool | None) -> None:
        entry = self._entry_of(layer)
        if entry is None:
            return
        set_layer_tag(layer, calendered)
        self._refresh_entry(entry)
        self._push_state()

    def _on_selection_changed(self) -> None:
        if not self._filling_table:
            self._update_mapping_editor()

    def selected_entry(self) -> LayerEntry | None:
        """The entry of the selected table row, or None."""
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        if len(rows) != 1:
            return None
        row = rows.pop()
        return self.entries[row] if row < len(self.entries) else None

    def select_layer(self, name: str) -> None:
        """Select the row of the layer called ``name`` (the mapping editor then applies to it)."""
        for row, entry in enumerate(self.entries):
            if entry.layer.name == name:
                self.table.selectRow(row)
                return
        raise KeyError(f"no electrode layer called {name!r}")

    def _update_mapping_editor(self) -> None:
        entry = self.selected_entry()
        editable = entry is not None and not entry.converting
        for widget in (self.mapping_edit, self.apply_mapping_button):
            widget.setEnabled(editable)
        self.auto_mapping_button.setEnabled(editable and entry.override is not None)
        if entry is None:
            self.mapping_edit.clear()
            self._show_details("Select a layer to see or change its phase mapping.")
            return
        if entry.converting:
            self.mapping_edit.setText(format_mapping(entry.override or {}))
            self._show_details(f"{entry.layer.name}: converting "
                               f"{'×'.join(map(str, entry.layer.data.shape))} voxels …")
            return
        mapping = entry.override or (entry.converted.phase_mapping if entry.usable else {})
        self.mapping_edit.setText(format_mapping(mapping))
        if entry.error:
            self._show_details(f"{entry.layer.name}: {entry.error}", error=True)
        else:
            how = "set by you" if entry.override else "inferred"
            self._show_details(
                f"{entry.layer.name}: {describe_phase_mapping(entry.converted.phase_mapping)} "
                f"({how}); stack {entry.converted.shape}, {entry.converted.voxel_size_um:g} µm"
            )

    def _show_details(self, text: str, error: bool = False) -> None:
        self.details_label.setText(text)
        self.details_label.setStyleSheet(_ERROR_STYLE if error else "")

    def _on_apply_mapping_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is None or entry.converting:
            return
        try:
            mapping = parse_phase_mapping(self.mapping_edit.text())
        except ElectrodeCAEError as exc:
            show_error(str(exc))
            self._show_details(str(exc), error=True)
            return
        self.set_phase_mapping(entry.layer.name, mapping)

    def _on_auto_mapping_clicked(self) -> None:
        entry = self.selected_entry()
        if entry is not None and not entry.converting:
            self.set_phase_mapping(entry.layer.name, None)

    def set_phase_mapping(self, name: str, mapping: dict[int, str] | None) -> None:
        """Override the phase mapping of layer ``name`` (None: back to the default).

        A mapping that does not fit the layer's values leaves the layer unusable, with the
        reason shown in its row. A big layer is converted in a worker (see :attr:`idle`).
        """
        entry = next(e for e in self.entries if e.layer.name == name)
        was_used = entry.use or (not entry.usable and not entry.converting)
        entry.override = dict(mapping) if mapping else None
        self._refresh_entry(entry)
        if entry.converting:
            entry._use_if_usable = was_used
        elif entry.usable and was_used:
            entry.use = True
        self._fill_table()
        self._push_state()

    def set_used(self, name: str, use: bool) -> None:
        """Check or uncheck the layer called ``name`` (ignored for layers with an error).

        For a layer being converted, this is what happens once its conversion succeeds.
        """
        row = next(i for i, e in enumerate(self.entries) if e.layer.name == name)
        item = self.table.item(row, _COL_NAME)
        entry = self.entries[row]
        if entry.usable:
            item.setCheckState(Qt.Checked if use else Qt.Unchecked)
        elif entry.converting:
            entry.use, entry._use_chosen, entry._use_if_usable = use, True, False
            self._fill_table()

    # ------------------------------------------------------------------------------ state

    def _push_state(self) -> None:
        """Write the used stacks to ``state`` and rebuild the dataset, if they changed."""
        pairs = self._used_stacks()
        stacks = tuple(stack for _, stack in pairs)
        names = tuple(name for name, _ in pairs)
        self._update_summary(pairs)
        same = len(stacks) == len(self.state.stacks) and all(
            a is b for a, b in zip(stacks, self.state.stacks)
        )
        if same and names == tuple(self.state.stack_layers):
            return
        self._pushing = True
        try:
            self.state.stack_layers = names
            self.state.stacks = stacks
        finally:
            self._pushing = False
        self.state.rebuild_dataset()

    def _used_stacks(self) -> list[tuple[str, ElectrodeStack]]:
        """(layer name, stack) of each used layer, in layer order.

        A checked layer being converted keeps the stack the state holds for it if that stack
        is the layer's data itself and no mapping was set (Open run put it there): what the
        conversion gives, so the dataset need not go and come back.
        """
        pairs = []
        for entry in self.entries:
            if entry.used:
                pairs.append((entry.layer.name, entry.stack))
            elif entry.converting and entry.use and entry.override is None:
                for stack, name in zip(self.state.stacks, self.state.stack_layers):
                    if name == entry.layer.name and stack.labels is entry.layer.data:
                        pairs.append((name, stack))
                        break
        return pairs

    def _on_state_stack_layers(self, _event: Any = None) -> None:
        """Another panel chose the stacks (Open run): check exactly their layers.

        A layer still being converted is checked (or not) once its conversion is in, and then
        keeps the stack object the state already holds (see :meth:`_stack_in_state`).
        """
        if self._pushing or self._closing:
            return
        wanted = set(self.state.stack_layers)
        changed = False
        for entry in self.entries:
            use = entry.layer.name in wanted
            if entry.converting:
                entry._use_chosen, entry._use_if_usable = True, False
            elif not entry.usable:
                continue
            elif use:  # the state's own stack object, if it is this layer's
                entry.stack = self._stack_in_state(entry.converted, entry.layer.name,
                                                   layer_tag(entry.layer)) or entry.stack
            changed |= entry.use != use
            entry.use = use
        if changed:
            self._fill_table()
        self._update_summary(self._used_stacks())

    def _update_summary(self, used: list[tuple[str, ElectrodeStack]]) -> None:
        if not used:
            self.summary_label.setText(
                "No electrode stack selected yet: a layer is being converted."
                if any(entry.converting for entry in self.entries)
                else "No electrode stack selected: check at least one layer.")
            return
        parts = [f"{name} ({stack.tag}, {'×'.join(map(str, stack.shape))})"
                 for name, stack in used]
        self.summary_label.setText(f"Using {len(used)} stack(s): " + ", ".join(parts))

    # ---------------------------------------------------------------------------- loading

    def _on_open_files_clicked(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open electrode stacks", "", FILE_FILTER)
        if paths:
            self.load_paths(paths)

    def _on_open_folder_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of 2D TIFF slices")
        if folder:
            self.load_paths([folder])

    def load_paths(self, paths: Sequence[str]) -> Any:
        """Read stacks in a background worker; each becomes a Labels layer when read.

        Parameters
        ----------
        paths : sequence of str
            Multi-page TIFFs, ``.npy`` arrays or folders of 2D TIFF slices.

        Returns
        -------
        napari.qt.threading.GeneratorWorker
            The started worker (tests wait for its ``finished`` signal).
        """
        worker = create_worker(read_stacks, [str(p) for p in paths])
        worker.yielded.connect(self._on_stack_read)
        worker.finished.connect(lambda w=worker: self._on_worker_finished(w))
        self._workers.append(worker)
        self._show_load_status(f"Reading {len(paths)} stack(s)…")
        worker.start()
        return worker

    def _on_stack_read(self, result: ReadResult) -> None:
        if self._closing:
            return
        if result.stack is None:
            show_error(result.error)
            self._show_load_status(result.error, error=True)
            return
        stack = result.stack
        _layers.add_stack_labels(self.viewer, stack)
        message = (f"Read {stack.name}: {'×'.join(map(str, stack.shape))}, {stack.tag}, "
                   f"{describe_phase_mapping(stack.phase_mapping)}")
        self._show_load_status(message)
        show_info(message)

    def _show_load_status(self, text: str, error: bool = False) -> None:
        self.load_status_label.setText(text)
        self.load_status_label.setStyleSheet(_ERROR_STYLE if error else "")
        self.load_status_label.setVisible(bool(text))

    def _on_worker_finished(self, worker: Any) -> None:
        if worker in self._workers:
            self._workers.remove(worker)

    # --------------------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Stop reading and converting workers, wait for them (their results are dropped) and
        disconnect from the viewer and the state (idempotent)."""
        if self._closing:
            return
        self._closing = True
        for worker in list(self._workers):
            worker.quit()
        wait_for_workers(self._workers, SHUTDOWN_WAIT_S)
        self.state.converting_layers = ()  # their results were dropped
        self.state.events.stack_layers.disconnect(self._on_state_stack_layers)
        layer_events = self.viewer.layers.events
        for emitter in (layer_events.inserted, layer_events.removed, layer_events.moved):
            emitter.disconnect(self._on_layers_changed)
        for entry in self.entries:
            self._disconnect_layer(entry.layer)
