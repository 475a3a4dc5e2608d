"""The Data panel's widgets: the layer table, the phase mapping editor, the texts around them.

:class:`DataTableView` is mixed into :class:`.data_panel.DataPanel`: it builds the tab and
draws the panel's entries (:class:`.data_layers.LayerEntry`) into the table; what the entries
hold, and what the user's input does, is the panel's.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from .. import _layers
from ..core import ElectrodeStack, describe_phase_mapping
from ..core.stack import PHASE_COLORS
from .data_layers import TAGS, LayerEntry, format_mapping, layer_tag

_COL_NAME, _COL_TAG, _COL_SHAPE, _COL_FRACTIONS, _COL_MAPPING = range(5)
# Two-line headers keep the columns narrow enough for the dock (the mapping column wraps too).
_HEADERS = ("Use · layer", "Tag", "Z×Y×X", "Pore/CBD/\nAM %", "Mapping\n(stored)")
#: What the tag combo's "?" / CAL / UNCAL mean, and what the tag is for.
TAG_HINT = (
    "CAL = calendered, UNCAL = uncalendered electrode, ? = not known. The tag names the "
    "stack in the results and in latents.csv, and CAL-vs-UNCAL comparisons (the paper's "
    "case studies 3a/3b, the 'calendered' column of the latent correlations) need it; "
    "training does not use it. It is read from the file (metadata, or 'cal'/'uncal' in "
    "the name); set it here, or with --tag CAL|UNCAL on the command line."
)
_ERROR_COLOR = QColor(230, 80, 80)
_ERROR_STYLE = "color: rgb(230, 80, 80);"
_BUSY_COLOR = QColor(150, 150, 150)


def compact_shape(shape: tuple[int, ...]) -> str:
    """``"256³"``, ``"48×256²"`` or ``"48×200×256"``: a volume's shape in few characters."""
    if len(shape) == 3 and shape[0] == shape[1] == shape[2]:
        return f"{shape[0]}³"
    if len(shape) == 3 and shape[1] == shape[2]:
        return f"{shape[0]}×{shape[1]}²"
    return "×".join(str(n) for n in shape)


def phase_legend_html() -> str:
    """The phase colours as one line of rich text (pore is transparent: the background)."""

    def swatch(phase_id: int) -> str:
        r, g, b = (round(255 * c) for c in PHASE_COLORS[phase_id][:3])
        return f'<span style="color: rgb({r}, {g}, {b});">■</span>'

    return (
        f"Phases: {swatch(1)} CBD &nbsp; {swatch(2)} active material &nbsp; □ pore "
        "(transparent: the background shows through)"
    )


class DataTableView:
    """The Data panel's table and mapping editor (a mixin of :class:`.data_panel.DataPanel`)."""

    entries: list[LayerEntry]
    _filling_table: bool

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
        # size it by its header, not by its contents. The layer name is cut (full name in its
        # tooltip) and the mapping column takes the rest of the dock's width, its text wrapped,
        # so that every column shows without scrolling sideways.
        font = self.fontMetrics()
        padding = 4 * font.averageCharWidth()
        probe = QComboBox()
        probe.addItems([text for text, _ in TAGS])
        widths = (
            (_COL_FRACTIONS, font.horizontalAdvance("Pore/CBD/") + padding),
            (_COL_NAME, font.horizontalAdvance("☐ Use · layer") + padding),
            (_COL_TAG, probe.sizeHint().width()),
        )
        for column, width in widths:
            header.setSectionResizeMode(column, QHeaderView.Interactive)
            header.resizeSection(column, width)
        header.setStretchLastSection(True)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.ElideMiddle)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
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
        self.auto_mapping_button.setToolTip(
            "Go back to the mapping the layer was read with (or the inferred one)"
        )
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
        self.legend_label = QLabel(phase_legend_html())
        self.legend_label.setWordWrap(True)
        self.legend_label.setToolTip("How every view of the plugin colours the phases")
        self.tag_hint_label = QLabel(
            "Tag <b>?</b> = calendering not known: pick CAL or UNCAL in the Tag column "
            "(hover it for what the tag is used for)."
        )
        self.tag_hint_label.setWordWrap(True)
        self.tag_hint_label.setToolTip(TAG_HINT)
        self.tag_hint_label.hide()
        self.adopt_image_button = QPushButton()
        self.adopt_image_button.clicked.connect(self._on_adopt_image_clicked)
        self.adopt_image_button.hide()

        layout = QVBoxLayout(self)
        layout.addLayout(open_row)
        layout.addWidget(self.load_status_label)
        layout.addWidget(self.convert_status_label)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.legend_label)
        layout.addWidget(self.adopt_image_button)
        layout.addLayout(mapping_row)
        layout.addWidget(self.details_label)
        layout.addWidget(self.tag_hint_label)
        layout.addWidget(self.summary_label)
        self._update_mapping_editor()

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
        self._update_adopt_button()

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
        shape_item = QTableWidgetItem(compact_shape(entry.layer.data.shape))
        shape_item.setToolTip("×".join(str(n) for n in entry.layer.data.shape) + " voxels")
        self.table.setItem(row, _COL_SHAPE, shape_item)
        fractions_item = QTableWidgetItem(self._fractions_text(entry))
        if entry.fractions is not None:
            fractions_item.setToolTip(
                ", ".join(
                    f"{phase} {100 * fraction:.2f} %" for phase, fraction in entry.fractions.items()
                )
            )
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
            combo.setToolTip(TAG_HINT)
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
            error = entry.error[len(prefix) :] if entry.error.startswith(prefix) else entry.error
            return f"⚠ {error}"
        described = describe_phase_mapping(entry.converted.phase_mapping)
        return f"{described} (set)" if entry.override else described

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
            self._show_details(
                f"{entry.layer.name}: converting "
                f"{'×'.join(map(str, entry.layer.data.shape))} voxels …"
            )
            return
        mapping = entry.override or (entry.converted.phase_mapping if entry.usable else {})
        self.mapping_edit.setText(format_mapping(mapping))
        if entry.error:
            self._show_details(f"{entry.layer.name}: {entry.error}", error=True)
        else:
            meta = entry.layer.metadata.get(_layers.METADATA_KEY)
            read = isinstance(meta, dict) and "phases" in meta  # opened by the plugin
            how = "set by you" if entry.override else "as read" if read else "inferred"
            note = ""
            if read and entry.override and entry.override != _layers.read_mapping(meta):
                note = " The layer's colours still show the mapping it was read with."
            self._show_details(
                f"{entry.layer.name}: {describe_phase_mapping(entry.converted.phase_mapping)} "
                f"({how}, in the stored values); stack {entry.converted.shape}, "
                f"{entry.converted.voxel_size_um:g} µm.{note}"
            )

    def _show_details(self, text: str, error: bool = False) -> None:
        self.details_label.setText(text)
        self.details_label.setStyleSheet(_ERROR_STYLE if error else "")

    def _update_summary(self, used: list[tuple[str, ElectrodeStack]]) -> None:
        if not used:
            self.tag_hint_label.hide()
            self.summary_label.setText(
                "No electrode stack selected yet: a layer is being converted."
                if any(entry.converting for entry in self.entries)
                else "No electrode stack selected: check at least one layer."
            )
            return
        parts = [f"{name} ({stack.tag}, {'×'.join(map(str, stack.shape))})" for name, stack in used]
        self.summary_label.setText(f"Using {len(used)} stack(s): " + ", ".join(parts))
        self.tag_hint_label.setVisible(any(stack.calendered is None for _, stack in used))
