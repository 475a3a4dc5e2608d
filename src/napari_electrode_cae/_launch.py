"""Set up a napari viewer with electrode stacks and the Electrode CAE widget docked.

Used by ``electrode-cae gui`` (which then runs the Qt event loop) and by tests (``show=False``,
no event loop). napari is imported inside :func:`launch`, so importing this module is cheap.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Plugin name in napari.yaml.
PLUGIN_NAME = "napari-electrode-cae"
#: Display name of the main dock widget in napari.yaml.
WIDGET_NAME = "Electrode CAE"
#: Sample data keys (napari.yaml) loaded when no stack is given.
SAMPLE_KEYS: tuple[str, ...] = ("synthetic_CAL", "synthetic_UNCAL")


def launch(
    stacks: Iterable[str | os.PathLike[str] | Any] = (),
    run_dir: str | os.PathLike[str] | None = None,
    sample: bool = True,
    show: bool = True,
    *,
    phases: Mapping[Any, str] | str | None = None,
    voxel_size_um: float | None = None,
    calendered: bool | None = None,
    freeze_gc: bool = False,
) -> tuple[Any, Any]:
    """Open a napari viewer with electrode stacks loaded and the Electrode CAE widget docked.

    Every stack is read before the viewer is created, so a bad path fails fast with the
    core's typed error and no window flashes up. Each stack becomes one phase Labels layer (as
    the plugin's reader makes it); only the first is visible (and selected), the others are
    hidden so that the volumes, which share the same place in space, do not draw over each
    other.

    Parameters
    ----------
    stacks : iterable of path or ElectrodeStack
        Multi-page TIFFs, folders of 2D TIFF slices, ``.npy`` arrays, or stacks in memory.
    run_dir : path, optional
        A saved run folder to open in the Train panel (``widget.training_panel.open_run``).
    sample : bool
        With no ``stacks``, load the synthetic CAL and UNCAL sample stacks.
    show : bool
        Show the window. The caller runs the event loop (``napari.run()``); tests pass False
        and close the viewer themselves.
    phases, voxel_size_um, calendered
        Passed to :func:`napari_electrode_cae.core.read_stack` for every path in ``stacks``.
    freeze_gc : bool
        Call :func:`freeze_long_lived_objects` once the viewer and the widget exist and before
        the stack layers are added (``electrode-cae gui`` does; a process that opens and closes
        many viewers, such as the test suite, should not).

    Returns
    -------
    (napari.Viewer, ElectrodeCAEWidget)

    Raises
    ------
    StackReadError, PhaseMappingError
        If a stack cannot be read.
    RunFolderError
        If ``run_dir`` is not a folder. A folder the Train panel cannot open as a run is
        reported there (an error notification), and the viewer stays open.
    """
    from .core import ElectrodeStack, read_stack
    from .core.errors import RunFolderError

    loaded: list[ElectrodeStack] = []
    for item in stacks:
        if isinstance(item, ElectrodeStack):
            loaded.append(item)
        else:
            loaded.append(
                read_stack(item, phases, voxel_size_um=voxel_size_um, calendered=calendered)
            )
    if run_dir is not None and not Path(run_dir).is_dir():
        raise RunFolderError(
            f"run folder {run_dir} "
            + ("is not a folder" if Path(run_dir).exists() else "does not exist")
        )

    import napari

    from ._layers import add_stack_labels

    viewer = napari.Viewer(title="napari: Electrode CAE", show=show)
    if show:
        enlarge_window(viewer)
    try:
        # The widget first, then the data: what exists before the stacks can be frozen.
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
        if freeze_gc:  # this process is ours: the docked widget alone never freezes
            freeze_long_lived_objects()
        if loaded:
            for i, stack in enumerate(loaded):
                add_stack_labels(viewer, stack, visible=i == 0)
        elif sample:
            for i, key in enumerate(SAMPLE_KEYS):
                for layer in viewer.open_sample(PLUGIN_NAME, key):
                    layer.visible = i == 0
        if len(viewer.layers):
            viewer.layers.selection.active = viewer.layers[0]  # the visible one
        if run_dir is not None:
            _open_run(widget, Path(run_dir))
    except BaseException:
        viewer.close()
        raise
    return viewer, widget


#: Size (logical pixels) the window opens at when the screen has room: napari's default (about
#: 1066×651 on a 1920×1080 screen) is cramped for six tabs and a 3D grid of windows.
WINDOW_SIZE = (1600, 1000)
#: Share of the screen's free area the window may take.
SCREEN_SHARE = 0.92


def window_size(available: tuple[int, int], current: tuple[int, int]) -> tuple[int, int]:
    """The size to open at on a screen with ``available`` (width, height) free: WINDOW_SIZE, at
    most SCREEN_SHARE of the screen, never smaller than ``current`` (napari's own or a size
    the user's settings restored)."""
    return tuple(
        max(now, min(want, int(room * SCREEN_SHARE)))
        for want, room, now in zip(WINDOW_SIZE, available, current)
    )


def enlarge_window(viewer: Any) -> None:
    """Make the viewer's window larger, centred on its screen, when the screen allows."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    if screen is None:
        return
    free = screen.availableGeometry()
    _, _, width, height = viewer.window.geometry()
    new_width, new_height = window_size((free.width(), free.height()), (width, height))
    if (new_width, new_height) != (width, height):
        viewer.window.set_geometry(
            free.x() + (free.width() - new_width) // 2,
            free.y() + (free.height() - new_height) // 2,
            new_width,
            new_height,
        )


def freeze_long_lived_objects() -> None:
    """Take every object alive now out of the cyclic garbage collector's full collections.

    With napari, Qt, vispy, torch and matplotlib loaded and a viewer open, Python tracks about
    650,000 objects, and every full (oldest-generation) collection walks all of them: 300-480 ms
    on a busy 2-core CPU, with the GIL held, so the GUI thread stops for that long (measured
    when the first results create their layers and grid, see
    ``benchmarks/gui_stall_training.py``). Frozen objects (:func:`gc.freeze`) are skipped by the
    collector; they are still freed by reference counting, but cyclic garbage among them is
    never reclaimed. Call this once, when what exists is meant to live as long as the process
    (modules, the viewer, the docked widget) and before data layers that a user may delete.
    """
    gc.collect()
    gc.freeze()


def _open_run(widget: Any, run_dir: Path) -> None:
    """Open ``run_dir`` in the Train panel, or warn if this version of the panel cannot.

    A large stack given with the run is still being converted by the Data tab in the
    background (over ``data_panel.SYNC_CONVERT_MAX_VOXELS``), and a run opens only once no
    layer is converting: then the run is opened when the last conversion ends.
    """
    open_run = getattr(getattr(widget, "training_panel", None), "open_run", None)
    if open_run is None:
        warnings.warn(
            f"the Train panel cannot open run folders yet; {run_dir} was not opened",
            UserWarning,
            stacklevel=3,
        )
        return
    state = widget.state
    if not state.converting_layers:
        open_run(run_dir)
        return

    def open_when_converted() -> None:
        if not state.converting_layers:
            state.events.converting_layers.disconnect(open_when_converted)
            open_run(run_dir)

    state.events.converting_layers.connect(open_when_converted)
