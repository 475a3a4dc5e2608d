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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QTableWidgetItem, QWidget

from .. import _layers
from ..core import (
    ElectrodeCAEError,
    describe_phase_mapping,
    parse_phase_mapping,
    volume_fractions,
)
from .data_layers import (  # noqa: F401 (re-exported: the panel's public helpers)
    PLUGIN_OUTPUT_LAYERS,
    TAGS,
    ConversionResult,
    LayerEntry,
    LayerSnapshot,
    ReadResult,
    _ConversionJob,
    convert_layer,
    format_mapping,
    is_candidate_layer,
    layer_tag,
    layer_voxels,
    read_stacks,
    set_layer_tag,
    wait_for_workers,
)
from .data_state import StackChoice
from .data_table import _COL_NAME, _ERROR_STYLE, DataTableView

if TYPE_CHECKING:
    import napari

    from .state import CAEState

#: File dialog filter of the stacks :func:`napari_electrode_cae.core.read_stack` reads.
FILE_FILTER = "Electrode stacks (*.tif *.tiff *.npy);;All files (*)"
#: Most seconds :meth:`DataPanel.shutdown` waits for a reading or converting worker (one file
#: or one layer is not interruptible).
SHUTDOWN_WAIT_S = 60.0
#: Layers with more voxels than this are converted in a background worker; smaller ones at once
#: (about 10 ns a voxel on a 2-core CPU: 2 M voxels take some 20 ms).
SYNC_CONVERT_MAX_VOXELS = 2_000_000


def conversion_of(layer: Any, override: dict[int, str] | None) -> ConversionResult:
    """:func:`convert_layer` and the volume fractions; an ElectrodeCAEError becomes ``error``."""
    try:
        stack = convert_layer(layer, override)
    except ElectrodeCAEError as exc:
        return ConversionResult(error=str(exc))
    return ConversionResult(stack, volume_fractions(stack.labels))


def convert_in_worker(snapshot: LayerSnapshot, override: dict[int, str] | None) -> ConversionResult:
    """:func:`conversion_of` for a worker thread: any failure (e.g. MemoryError) is returned."""
    try:
        return conversion_of(snapshot, override)
    except Exception as exc:  # noqa: BLE001 (reported in the layer's row, nothing is lost)
        return ConversionResult(
            error=f"layer {snapshot.name!r} could not be converted: {type(exc).__name__}: {exc}",
            unexpected=True,
        )


class DataPanel(DataTableView, StackChoice, QWidget):
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

    def __init__(
        self, viewer: napari.Viewer, state: CAEState, parent: QWidget | None = None
    ) -> None:
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
        # every slice of a stack gets its slider step (napari's rounding drops the last one of
        # some stacks, e.g. 48 slices of 0.398 µm)
        self._slider_fix = _layers.keep_last_slices_reachable(viewer.dims)
        self._sync_entries()

    @property
    def idle(self) -> bool:
        """True when no reading or converting worker of this panel is running."""
        return not self._workers

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
        return [
            (id(entry), id(entry.stack)) for entry in self.entries if entry.used or entry.converting
        ]

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
        if (
            not entry._converted_once
            or entry._source_data is not data
            or entry._source_override != override_key
        ):
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
        if (
            stack is None
            or stack.labels is not entry.converted.labels
            or stack.phase_mapping != entry.converted.phase_mapping
            or (stack.name, stack.calendered) != (name, tag)
        ):
            # a stack made from the layer itself names its source after the layer: a rename
            # renames that too (a file path stays as it is)
            source = entry.converted.source
            if source.startswith("layer:"):
                source = f"layer:{name}"
            entry.stack = self._stack_in_state(entry.converted, name, tag) or dataclasses.replace(
                entry.converted, name=name, calendered=tag, source=source
            )

    @staticmethod
    def _override_key(entry: LayerEntry) -> tuple | None:
        return tuple(sorted(entry.override.items())) if entry.override else None

    def _convert(self, entry: LayerEntry) -> None:
        """Convert ``entry.layer`` at once, on the GUI thread."""
        first = not entry._converted_once
        self._apply_conversion(entry, conversion_of(entry.layer, entry.override), first)

    def _apply_conversion(self, entry: LayerEntry, result: ConversionResult, first: bool) -> None:
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
                    show_info(f"{entry.layer.name}: not used as an electrode stack: {entry.error}")
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
        job = _ConversionJob(
            entry, LayerSnapshot.of(entry.layer), override_key, first=not entry._converted_once
        )
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
        self._apply_conversion(
            entry,
            ConversionResult(
                error=f"layer {entry.layer.name!r}: the conversion stopped without a result",
                unexpected=True,
            ),
            job.first,
        )
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
        names = ", ".join(
            f"{e.layer.name} ({'×'.join(map(str, e.layer.data.shape))})" for e in busy
        )
        self.convert_status_label.setText(f"Converting {names} in the background …")
        self.convert_status_label.show()

    @staticmethod
    def _looks_like_electrode(entry: LayerEntry) -> bool:
        """Checked by default: plugin layers, and Labels with at most 3 stored values."""
        meta = entry.layer.metadata.get(_layers.METADATA_KEY)
        if isinstance(meta, dict) and "phases" in meta:
            return True
        return isinstance(entry.layer, Labels) and len(entry.converted.phase_mapping) <= 3

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
        message = (
            f"Read {stack.name}: {'×'.join(map(str, stack.shape))}, {stack.tag}, "
            f"{describe_phase_mapping(stack.phase_mapping)}"
        )
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
        self.viewer.dims.events.range.disconnect(self._slider_fix)
        layer_events = self.viewer.layers.events
        for emitter in (layer_events.inserted, layer_events.removed, layer_events.moved):
            emitter.disconnect(self._on_layers_changed)
        for entry in self.entries:
            self._disconnect_layer(entry.layer)
