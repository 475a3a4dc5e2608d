"""Windows panel: how the stacks are cut into mini microstructures, and where one sits.

The controls set ``state.window`` (length, stride, crop, in-plane tile step), ``state.split_mode``,
``state.val_fraction`` and ``state.seed`` and rebuild the dataset (an index grid, no copies). A
summary says how many windows that makes and how they split; a window index picks one window,
whose 3D box is drawn in the viewer by a Shapes layer called
:data:`napari_electrode_cae._layers.WINDOW_OUTLINE_LAYER` (yellow: training, cyan: validation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core import PRESETS, WindowSpec, WindowSpecError, get_preset
from .panel_base import Panel
from .windows_geometry import (  # noqa: F401 (re-exported: tests use these names)
    CUSTOM_PRESET,
    StackGeometry,
    box_edges,
    dataset_summary,
    matching_preset,
    slice_outlines,
)

if TYPE_CHECKING:
    import napari

    from .state import CAEState

#: Split combo entries: label and ``state.split_mode`` value.
SPLIT_MODES: tuple[tuple[str, str], ...] = (
    ("random (as in the paper; leaks when windows overlap)", "random"),
    ("blocked by depth", "blocked"),
)
#: Outline colour of a window by its side of the split.
SIDE_COLORS = {"train": "yellow", "val": "cyan", "unused": "gray"}
SIDE_NAMES = {"train": "training", "val": "validation", "unused": "unused (dropped by the split)"}
MAX_WINDOW_LENGTH = 512
MAX_IN_PLANE = 8192

_ERROR_STYLE = "color: rgb(230, 80, 80);"
_MUTED_STYLE = "color: gray;"


class WindowsPanel(Panel):
    """Window length, stride, crop and split; the window count and the selected window.

    Parameters
    ----------
    viewer : napari.Viewer
        Viewer in which the selected window's outline is drawn.
    state : CAEState
        Shared state; this panel writes ``window``, ``val_fraction``, ``split_mode``, ``seed``
        and ``selected_window``, calls ``state.rebuild_dataset()``, and listens to ``dataset``,
        ``split``, ``window_error`` and ``selected_window``.
    parent : QWidget, optional
        Qt parent.
    """

    def __init__(
        self, viewer: napari.Viewer, state: CAEState, parent: QWidget | None = None
    ) -> None:
        super().__init__(viewer, state, parent)
        self.outline_layer: Any = None
        self._outline_key: tuple | None = None
        self._updating = False
        self._build_ui()
        self._show_state_settings()
        self.connect_events(
            (state.events.window, self._on_state_settings_changed),
            (state.events.val_fraction, self._on_state_settings_changed),
            (state.events.split_mode, self._on_state_settings_changed),
            (state.events.seed, self._on_state_settings_changed),
            (state.events.dataset, self._on_dataset_changed),
            (state.events.split, self._on_dataset_changed),
            (state.events.window_error, self._on_dataset_changed),
            (state.events.selected_window, self._on_selected_window_changed),
            (viewer.dims.events.ndisplay, self._on_view_changed),
            (viewer.dims.events.order, self._on_view_changed),
        )
        self._on_dataset_changed()

    # ---------------------------------------------------------------------------------- UI

    def _build_ui(self) -> None:
        self.preset_combo = QComboBox()
        self.preset_combo.addItems([*PRESETS, CUSTOM_PRESET])
        self.preset_combo.setToolTip(
            "Fill the window fields from a preset (the Train panel sets the model part)"
        )
        self.preset_combo.currentTextChanged.connect(self._on_preset_changed)

        self.length_spin = _spin(1, MAX_WINDOW_LENGTH, "Window length l in Z slices")
        self.stride_spin = _spin(1, MAX_WINDOW_LENGTH, "Step between windows along Z, in slices")
        self.stride_equals_length_check = QCheckBox("stride = window length")
        self.stride_equals_length_check.setToolTip("Non-overlapping windows along Z")
        self.crop_spin = _spin(1, MAX_IN_PLANE, "In-plane edge of a window in voxels (Y and X)")
        self.tile_stride_spin = _spin(
            0,
            MAX_IN_PLANE,
            "Step between in-plane tiles in voxels; '= crop' for non-overlapping tiles",
        )
        self.tile_stride_spin.setSpecialValueText("= crop")
        for spin in (self.length_spin, self.stride_spin, self.crop_spin, self.tile_stride_spin):
            spin.valueChanged.connect(self._on_window_field_changed)
        self.stride_equals_length_check.toggled.connect(self._on_window_field_changed)

        self.split_combo = QComboBox()
        for text, mode in SPLIT_MODES:
            self.split_combo.addItem(text, mode)
        self.split_combo.setToolTip(
            "random: seeded permutation (the paper's 85/15); blocked: a contiguous block of Z "
            "positions per stack is validation and overlapping training windows are dropped"
        )
        self.val_fraction_spin = QDoubleSpinBox()
        self.val_fraction_spin.setRange(0.01, 0.9)
        self.val_fraction_spin.setSingleStep(0.05)
        self.val_fraction_spin.setDecimals(2)
        self.val_fraction_spin.setToolTip("Fraction of windows kept for validation")
        self.seed_spin = _spin(0, 2**31 - 1, "Seed of the split")
        self.split_combo.currentIndexChanged.connect(self._on_split_field_changed)
        self.val_fraction_spin.valueChanged.connect(self._on_split_field_changed)
        self.seed_spin.valueChanged.connect(self._on_split_field_changed)

        self.spec_error_label = QLabel()
        self.spec_error_label.setStyleSheet(_ERROR_STYLE)
        self.spec_error_label.setWordWrap(True)
        self.spec_error_label.hide()
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Preset", self.preset_combo)
        form.addRow("Window length", self.length_spin)
        form.addRow("Stride", self.stride_spin)
        form.addRow("", self.stride_equals_length_check)
        form.addRow("In-plane crop", self.crop_spin)
        form.addRow("Tile stride", self.tile_stride_spin)
        form.addRow("Split", self.split_combo)
        form.addRow("Validation fraction", self.val_fraction_spin)
        form.addRow("Seed", self.seed_spin)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.spec_error_label)
        layout.addWidget(self.summary_label)
        layout.addWidget(self._build_selection_box())
        layout.addStretch(1)

    def _build_selection_box(self) -> QGroupBox:
        self.window_spin = _spin(0, 0, "Index of the selected window (state.selected_window)")
        self.window_spin.valueChanged.connect(self._on_window_spin_changed)
        self.window_count_label = QLabel("of 0")
        self.follow_check = QCheckBox("show its middle slice in the viewer")
        self.follow_check.setChecked(True)
        self.follow_check.setToolTip("Move the viewer's Z slider to the selected window")
        self.origin_label = QLabel()
        self.origin_label.setWordWrap(True)
        self.side_label = QLabel()
        row = QHBoxLayout()
        row.addWidget(QLabel("Window"))
        row.addWidget(self.window_spin)
        row.addWidget(self.window_count_label)
        row.addStretch(1)
        box = QGroupBox("Selected window")
        box_layout = QVBoxLayout(box)
        box_layout.addLayout(row)
        # a row of its own: beside the spin box a narrow dock cut its text short
        box_layout.addWidget(self.follow_check)
        box_layout.addWidget(self.origin_label)
        box_layout.addWidget(self.side_label)
        return box

    # ------------------------------------------------------------------- settings <-> state

    def _show_state_settings(self) -> None:
        """Set the widgets from the state's window, split mode, fraction and seed."""
        state = self.state
        spec = state.window
        self._updating = True
        try:
            self.length_spin.setValue(spec.length)
            self.stride_equals_length_check.setChecked(
                spec.stride == spec.length and spec.length > 1
            )
            self.stride_spin.setValue(spec.stride)
            self.stride_spin.setEnabled(not self.stride_equals_length_check.isChecked())
            self.crop_spin.setValue(spec.crop)
            self.tile_stride_spin.setValue(spec.tile_stride or 0)
            self.preset_combo.setCurrentText(matching_preset(spec))
            modes = [mode for _, mode in SPLIT_MODES]
            if state.split_mode in modes:
                self.split_combo.setCurrentIndex(modes.index(state.split_mode))
            self.val_fraction_spin.setValue(state.val_fraction)
            self.seed_spin.setValue(state.seed)
        finally:
            self._updating = False

    def _on_state_settings_changed(self, *_: Any) -> None:
        if not self._updating:
            self._show_state_settings()

    def _on_preset_changed(self, name: str) -> None:
        if self._updating or name == CUSTOM_PRESET:
            return
        spec = get_preset(name).window
        self._updating = True
        try:
            self.length_spin.setValue(spec.length)
            self.stride_equals_length_check.setChecked(False)
            self.stride_spin.setValue(spec.stride)
            self.crop_spin.setValue(spec.crop)
            self.tile_stride_spin.setValue(spec.tile_stride or 0)
        finally:
            self._updating = False
        self._on_window_field_changed()

    def window_spec_from_fields(self) -> WindowSpec:
        """The WindowSpec the fields describe.

        Raises
        ------
        WindowSpecError
            If the combination is invalid.
        """
        length = self.length_spin.value()
        stride = length if self.stride_equals_length_check.isChecked() else self.stride_spin.value()
        tile_stride = self.tile_stride_spin.value() or None
        return WindowSpec(
            length=length, stride=stride, crop=self.crop_spin.value(), tile_stride=tile_stride
        )

    def _on_window_field_changed(self, *_: Any) -> None:
        if self._updating:
            return
        locked = self.stride_equals_length_check.isChecked()
        self.stride_spin.setEnabled(not locked)
        if locked and self.stride_spin.value() != self.length_spin.value():
            self._updating = True
            try:
                self.stride_spin.setValue(self.length_spin.value())
            finally:
                self._updating = False
        try:
            spec = self.window_spec_from_fields()
        except WindowSpecError as exc:
            self._show_spec_error(str(exc))
            return
        self._show_spec_error("")
        self._updating = True
        try:
            self.preset_combo.setCurrentText(matching_preset(spec))
            self.state.window = spec
        finally:
            self._updating = False
        self.state.rebuild_dataset()

    def _on_split_field_changed(self, *_: Any) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            self.state.split_mode = self.split_combo.currentData()
            self.state.val_fraction = round(self.val_fraction_spin.value(), 4)
            self.state.seed = self.seed_spin.value()
        finally:
            self._updating = False
        self.state.rebuild_dataset()

    def _show_spec_error(self, message: str) -> None:
        self.spec_error_label.setText(message)
        self.spec_error_label.setVisible(bool(message))
        if message:
            show_error(message)

    # ------------------------------------------------------------------ dataset and window

    def _on_dataset_changed(self, *_: Any) -> None:
        state = self.state
        dataset, windows_split = state.dataset, state.split
        if dataset is None or windows_split is None:
            no_stacks = not state.stacks
            self.summary_label.setText(state.window_error or "no windows")
            self.summary_label.setStyleSheet(_MUTED_STYLE if no_stacks else _ERROR_STYLE)
        else:
            self.summary_label.setText(
                dataset_summary(dataset, windows_split.train, windows_split.val, state.split_mode)
            )
            self.summary_label.setStyleSheet("")
        n = 0 if dataset is None else len(dataset)
        self._updating = True
        try:
            self.window_spin.setRange(0, max(n - 1, 0))
            self.window_spin.setValue(min(state.selected_window, max(n - 1, 0)))
        finally:
            self._updating = False
        self.window_spin.setEnabled(n > 0)
        self.window_count_label.setText(f"of {n}")
        self._show_selected_window(move_view=False)

    def _on_selected_window_changed(self, *_: Any) -> None:
        self._updating = True
        try:
            self.window_spin.setValue(self.state.selected_window)
        finally:
            self._updating = False
        self._show_selected_window(move_view=True)

    def _on_window_spin_changed(self, value: int) -> None:
        if not self._updating:
            self.state.selected_window = value

    def _on_view_changed(self, *_: Any) -> None:
        if self.outline_layer is not None:
            self._show_selected_window(move_view=False)

    def selected_window_info(self) -> tuple[int, tuple[int, int, int, int], str] | None:
        """(index, (stack, z, y, x), side) of the selected window, or None without a dataset."""
        dataset, windows_split = self.state.dataset, self.state.split
        if dataset is None or windows_split is None or len(dataset) == 0:
            return None
        index = min(max(self.state.selected_window, 0), len(dataset) - 1)
        return index, dataset.origin(index), windows_split.side(index)

    def _show_selected_window(self, move_view: bool) -> None:
        info = self.selected_window_info()
        if info is None:
            self.origin_label.setText("")
            self.side_label.setText("")
            if self.outline_layer is not None and self.outline_layer in self.viewer.layers:
                self.outline_layer.visible = False
            return
        index, (s, z, y, x), side = info
        dataset = self.state.dataset
        stack_name = dataset.stacks[s].name or f"stack {s}"
        self.origin_label.setText(f"origin (stack, z, y, x): ({stack_name}, {z}, {y}, {x})")
        self.side_label.setText(f"side: {SIDE_NAMES[side]}")
        self.side_label.setStyleSheet(f"color: {SIDE_COLORS[side]};")
        geometry = self._stack_geometry(s)
        self._draw_outline((z, y, x), dataset.spec.window_shape(), side, geometry)
        self._follow_window(z, dataset.spec.length, geometry, always=move_view)

    def _stack_geometry(self, stack_index: int) -> StackGeometry:
        """Scale, translate and units of the (Z, Y, X) axes of the stack's layer."""
        names = self.state.stack_layers
        if stack_index < len(names) and names[stack_index] in self.viewer.layers:
            layer = self.viewer.layers[names[stack_index]]
            return StackGeometry(
                tuple(float(v) for v in layer.scale[-3:]),
                tuple(float(v) for v in layer.translate[-3:]),
                tuple(str(u) for u in layer.units[-3:]),
            )
        voxel = float(self.state.dataset.stacks[stack_index].voxel_size_um)
        return StackGeometry((voxel,) * 3, (0.0,) * 3, ("µm",) * 3)

    # ---------------------------------------------------------------------------- outline

    def _sliced_axis(self) -> int:
        """The (Z, Y, X) axis the 2D view slices through (0 unless the dims were rolled)."""
        order = list(self.viewer.dims.order)
        offset = self.viewer.dims.ndim - 3
        for world_axis in reversed(order[:-2]):
            if world_axis - offset >= 0:
                return world_axis - offset
        return 0

    def _draw_outline(
        self,
        origin: tuple[int, int, int],
        size: tuple[int, int, int],
        side: str,
        geometry: StackGeometry,
    ) -> None:
        """Draw the window's box into the outline layer (created once, then updated)."""
        ndisplay, axis = self.viewer.dims.ndisplay, self._sliced_axis()
        key = (origin, size, side, ndisplay, axis, geometry)
        layer = self.outline_layer
        present = layer is not None and layer in self.viewer.layers
        if present and layer.visible and key == self._outline_key:
            return  # the same box is already drawn (e.g. several state events of one rebuild)
        self._outline_key = key
        if ndisplay == 3:
            shapes = box_edges(origin, size)
            edge_width = max(0.5, size[1] / 128)
        else:
            shapes = slice_outlines(origin, size, axis)
            edge_width = max(1.0, size[1] / 48)
        color = SIDE_COLORS[side]
        if not present:
            self._add_outline_layer(shapes, color, edge_width, geometry)
            return
        if tuple(layer.scale) != geometry.scale:
            layer.scale = geometry.scale
        if tuple(layer.translate) != geometry.translate:
            layer.translate = geometry.translate
        if tuple(str(u) for u in layer.units) != geometry.units:
            layer.units = geometry.units
        layer.data = [(shape, "path") for shape in shapes]
        layer.edge_width = edge_width
        layer.edge_color = color
        layer.current_edge_color = color
        layer.visible = True

    def _add_outline_layer(
        self, shapes: list[np.ndarray], color: str, edge_width: float, geometry: StackGeometry
    ) -> None:
        selection = self.viewer.layers.selection
        active, selected = selection.active, set(selection)
        if _layers.WINDOW_OUTLINE_LAYER in self.viewer.layers:
            self.viewer.layers.remove(_layers.WINDOW_OUTLINE_LAYER)
        self.outline_layer = self.viewer.add_shapes(
            [(shape, "path") for shape in shapes],
            name=_layers.WINDOW_OUTLINE_LAYER,
            edge_color=color,
            edge_width=edge_width,
            face_color="transparent",
            scale=geometry.scale,
            translate=geometry.translate,
            units=geometry.units,
            blending="translucent_no_depth",
        )
        selection.clear()
        selection.update(selected)
        selection.active = active

    def _follow_window(self, z: int, length: int, geometry: StackGeometry, always: bool) -> None:
        """Move the Z slider to the window's middle slice (only if it is not shown, unless
        ``always``)."""
        if not self.follow_check.isChecked():
            return
        axis = self.viewer.dims.ndim - 3
        if axis < 0:
            return
        scale, translate = geometry.scale[0], geometry.translate[0]
        current = (self.viewer.dims.point[axis] - translate) / scale
        if not always and z - 0.5 <= current < z + length - 0.5:
            return
        middle = z + (length - 1) // 2
        self.viewer.dims.set_point(axis, translate + middle * scale)


def _spin(minimum: int, maximum: int, tooltip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setToolTip(tooltip)
    spin.setKeyboardTracking(False)
    return spin
