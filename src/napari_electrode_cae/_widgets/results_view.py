"""Where the Results panel's windows are drawn: the window layers, the side-by-side grid, the
camera and slice that follow the shown window, and picking a window by a click in a stack.

:class:`WindowViews` is mixed into :class:`.results_panel.ResultsPanel`; the helpers here
(world offsets, the window under a voxel, grid shapes, the camera) are plain functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _layers
from ..core import WindowDataset, compare_window
from ..core.evaluation import WindowComparison
from ..core.evaluation import reconstruct_window as core_reconstruct_window
from ..core.model import ConvAutoEncoder3d

if TYPE_CHECKING:
    import napari

#: Camera angles (degrees, napari's order) the side-by-side grid takes when it is first shown
#: in 3D: tilted, so that the windows' depth shows (napari's reset looks straight down the
#: slices, which looks like the 2D view). A rotation the user makes is kept from then on.
VIEW_3D_ANGLES = (-20.0, 30.0, 0.0)
#: Layers that show one window (kept visible in the side-by-side grid).
WINDOW_LAYER_NAMES = (
    _layers.ORIGINAL_LAYER,
    _layers.RECONSTRUCTION_LAYER,
    _layers.RECONSTRUCTION_VALUES_LAYER,
    _layers.DECODED_LAYER,
)


@dataclass(frozen=True)
class WindowResult:
    """One window's original, reconstruction and comparison (made in a worker thread).

    Attributes
    ----------
    dataset : WindowDataset
        The dataset the window belongs to (to drop results of a replaced dataset).
    index : int
        Window index in ``dataset``.
    original : numpy.ndarray
        uint8 (l, crop, crop) phase ids, a copy of the window.
    values : numpy.ndarray
        float32 (l, crop, crop) reconstruction in network values (pore -1, CBD 0, active +1).
    labels : numpy.ndarray
        uint8 (l, crop, crop) reconstruction snapped to phases.
    comparison : WindowComparison
        Original vs reconstruction statistics.
    """

    dataset: WindowDataset
    index: int
    original: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    comparison: WindowComparison


def reconstruct_window(
    model: ConvAutoEncoder3d, dataset: WindowDataset, index: int
) -> WindowResult:
    """Reconstruct window ``index`` and compare it with the original (runs in a worker)."""
    values, labels = core_reconstruct_window(model, dataset[index])
    return WindowResult(
        dataset=dataset,
        index=int(index),
        original=np.array(dataset.view(index), dtype=np.uint8),
        values=values,
        labels=labels,
        comparison=compare_window(model, dataset, index, reconstruction=(values, labels)),
    )


def window_translate(dataset: WindowDataset, index: int) -> tuple[float, float, float]:
    """World offset (µm) of window ``index``: its (z, y, x) origin times the voxel size."""
    _, z, y, x = dataset.origin(index)
    voxel = dataset.voxel_size_um
    return (z * voxel, y * voxel, x * voxel)


def window_at(dataset: WindowDataset, stack_index: int, point: np.ndarray) -> int | None:
    """The window of stack ``stack_index`` nearest to voxel ``point`` = (z, y, x).

    Among the windows whose box contains the point, the one whose centre is nearest; if none
    contains it (a margin the in-plane tiles do not cover), the nearest window of that stack.
    None if the stack has no windows.
    """
    grid = dataset.grid
    in_stack = np.flatnonzero(grid[:, 0] == stack_index)
    if len(in_stack) == 0:
        return None
    size = np.array(dataset.spec.window_shape(), dtype=np.float64)
    starts = grid[in_stack, 1:].astype(np.float64)
    point = np.asarray(point, dtype=np.float64)
    contains = np.all((starts <= point) & (point < starts + size), axis=1)
    candidates = in_stack[contains] if contains.any() else in_stack
    centres = grid[candidates, 1:] + size / 2.0
    distances = np.sum((centres - (point + 0.5)) ** 2, axis=1)
    return int(candidates[int(np.argmin(distances))])


def reset_view_to(viewer: Any, layers: list) -> None:
    """``viewer.reset_view`` fitted to ``layers`` (napari 0.6 and later take ``layers=``; it
    knows the grid layout), or to every layer on older napari."""
    try:
        viewer.reset_view(layers=layers)
    except TypeError:
        viewer.reset_view()


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def grid_shape(n_panels: int) -> tuple[int, int]:
    """Grid rows and columns for ``n_panels`` window views: one row up to 3, then two rows."""
    if n_panels <= 3:
        return (1, max(n_panels, 1))
    return (2, -(-n_panels // 2))


class WindowViews:
    """The window layers, grid, camera and click picking of the Results panel (a mixin of
    :class:`.results_panel.ResultsPanel`, which owns the state these methods read)."""

    def _window_layers(self) -> list[Any]:
        return [self.viewer.layers[n] for n in WINDOW_LAYER_NAMES if n in self.viewer.layers]

    def _add_window_layer(self, name: str, source: WindowResult) -> None:
        """Add (or replace, if its shape changed) the window layer ``name`` for ``source``.

        The window layers keep the order of WINDOW_LAYER_NAMES in the layer list (and so in
        the grid: original, reconstruction, values, decoded), whichever is made first.
        """
        from napari.layers import Image

        voxel = source.dataset.voxel_size_um
        translate = window_translate(source.dataset, source.index)
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        later = WINDOW_LAYER_NAMES[WINDOW_LAYER_NAMES.index(name) + 1 :]
        above = [self.viewer.layers.index(n) for n in later if n in self.viewer.layers]
        index = min(above) if above else len(self.viewer.layers)
        if name != _layers.RECONSTRUCTION_VALUES_LAYER:
            labels = source.original if name == _layers.ORIGINAL_LAYER else source.labels
            _layers.add_phase_labels(
                self.viewer, labels, name, voxel, index=index, translate=translate
            )
            return
        layer = Image(
            source.values,
            name=name,
            colormap="gray",
            contrast_limits=(-1.0, 1.0),
            scale=(voxel,) * 3,
            units="µm",
            translate=translate,
        )
        self.viewer.layers.insert(index, layer)

    def _set_grid_shape(self, shape: tuple[int, int]) -> None:
        self.viewer.canvas.grid.shape = shape
        self._focus_pending = True

    def _update_slice_hint(self) -> None:
        """In 2D side by side, name the slices that hold the shown window (hidden otherwise)."""
        result = self._last_result
        grid = self.viewer.canvas.grid.enabled
        if result is None or not grid or self.viewer.dims.ndisplay != 2:
            self.slice_hint.hide()
            return
        _, z, _, _ = result.dataset.origin(result.index)
        length = result.dataset.spec.length
        voxel = result.dataset.voxel_size_um
        self.slice_hint.setText(
            f"2D: the Z slider spans the whole stack; this window holds slices {z}–"
            f"{z + length - 1} ({z * voxel:.1f}–{(z + length - 1) * voxel:.1f} µm) and its "
            "panels are black outside them. Tick 3D to see the whole window."
        )
        self.slice_hint.show()

    def _focus_on_window(self) -> None:
        """Move the slice into the window if it is outside; in the grid, fit the camera to it."""
        self._update_slice_hint()
        layers = self._window_layers()
        if not layers:
            return
        dims = self.viewer.dims
        if dims.ndisplay == 2 and dims.ndim >= 3:
            axis = dims.ndim - 3
            low, high = layers[0].extent.world[:, 0]
            if not low <= dims.point[axis] <= high:
                dims.set_point(axis, (low + high) / 2.0)
        if self.viewer.canvas.grid.enabled:
            # Fitted to the window layers only: fitted to every layer, a real-size stack
            # (hidden meanwhile, but still counted) left the windows tiny in a black canvas.
            # In 3D the camera starts tilted and keeps the user's rotation from window to
            # window.
            if dims.ndisplay == 2:
                reset_view_to(self.viewer, layers)
                return
            camera = viewer_camera(self.viewer)
            angles = VIEW_3D_ANGLES if self._tilt_pending else tuple(camera.angles)
            self._tilt_pending = False
            reset_view_to(self.viewer, layers)  # also turns the camera straight down the slices
            camera.angles = angles

    def _enter_side_by_side(self) -> None:
        """Grid mode with only the window layers visible (others hidden, to be restored).

        The grid gets its final shape before it is switched on, so it is built once.
        """
        self._enter_pending = False
        for layer in list(self.viewer.layers):
            if layer.name not in WINDOW_LAYER_NAMES and layer.visible:
                layer.visible = False
                self._hidden_layers.append(layer.name)
        grid = self.viewer.canvas.grid
        grid.shape = grid_shape(sum(1 for layer in self.viewer.layers if layer.visible))
        grid.enabled = True
        self._watch_outline()
        self._focus_pending = True
        self._tilt_pending = self.viewer.dims.ndisplay == 3

    def _leave_side_by_side(self) -> None:
        """Back to one view: restore the hidden layers and show the whole scene."""
        self.viewer.canvas.grid.enabled = False
        self._unwatch_outline()
        for name in self._hidden_layers:
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = True
        self._hidden_layers = []
        self._update_slice_hint()
        self.viewer.fit_to_view()
        self._steps.schedule()  # the name overlays go, one per turn

    def _watch_outline(self) -> None:
        """Keep the Windows panel's outline layer hidden while side by side.

        That panel re-shows its slice outline whenever the selected window changes; in the grid
        the outline would only take a cell of its own.
        """
        name = _layers.WINDOW_OUTLINE_LAYER
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is self._watched_outline:
            return
        self._unwatch_outline()
        if layer is not None:
            layer.events.visible.connect(self._on_outline_visible)
            self._watched_outline = layer
            self._on_outline_visible()

    def _unwatch_outline(self) -> None:
        if self._watched_outline is not None:
            self._watched_outline.events.visible.disconnect(self._on_outline_visible)
            self._watched_outline = None

    def _on_outline_visible(self, _event: Any = None) -> None:
        layer = self._watched_outline
        if layer is None or not self.viewer.canvas.grid.enabled or not layer.visible:
            return
        layer.visible = False
        if layer.name not in self._hidden_layers:
            self._hidden_layers.append(layer.name)

    def _on_mouse_drag(self, viewer: napari.Viewer, event: Any):
        """Viewer mouse callback: a left click without drag picks the window under the mouse."""
        if event.button != 1 or len(event.modifiers) > 0:
            return
        position = np.asarray(event.position, dtype=float)
        view_direction = event.view_direction
        dims_displayed = list(event.dims_displayed)
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.select_window_at(position, view_direction, dims_displayed)

    def select_window_at(
        self,
        position: np.ndarray,
        view_direction: Any = None,
        dims_displayed: list[int] | None = None,
    ) -> int | None:
        """Select the window around world ``position`` in a visible stack layer.

        Parameters
        ----------
        position : array-like
            World coordinates (µm) of the click, (z, y, x) for a 3D viewer.
        view_direction, dims_displayed : optional
            The click's view direction and displayed dims in 3D view (the ray's midpoint
            through the stack is used then).

        Returns
        -------
        int or None
            The selected window index, or None if the position is in no stack of the dataset.
        """
        dataset = self.state.dataset
        if dataset is None or len(self.state.stack_layers) != len(dataset.stacks):
            return None
        for stack_index, layer in self._stack_layers_under_mouse():
            point = self._data_point(layer, position, view_direction, dims_displayed)
            shape = dataset.stacks[stack_index].shape
            if point is None or not all(0 <= p < s for p, s in zip(point, shape)):
                continue
            index = window_at(dataset, stack_index, point)
            if index is not None:
                self.state.selected_window = index
                return index
        return None

    def _stack_layers_under_mouse(self) -> list[tuple[int, Any]]:
        """(stack index, layer) of visible stack layers, the active layer first."""
        active = self.viewer.layers.selection.active
        pairs = [
            (i, self.viewer.layers[name])
            for i, name in enumerate(self.state.stack_layers)
            if name in self.viewer.layers and self.viewer.layers[name].visible
        ]
        pairs.sort(key=lambda pair: pair[1] is not active)
        return pairs

    @staticmethod
    def _data_point(
        layer: Any, position: np.ndarray, view_direction: Any, dims_displayed: list[int] | None
    ) -> np.ndarray | None:
        """Voxel (z, y, x) of ``layer`` at world ``position`` (ray midpoint in 3D)."""
        if view_direction is not None and dims_displayed is not None and len(dims_displayed) == 3:
            start, end = layer.get_ray_intersections(
                position, view_direction, dims_displayed, world=True
            )
            if start is None or end is None:
                return None
            point = (np.asarray(start) + np.asarray(end)) / 2.0
        else:
            point = np.asarray(layer.world_to_data(position), dtype=float)
        return np.floor(point[-3:] + 0.5).astype(np.int64)
