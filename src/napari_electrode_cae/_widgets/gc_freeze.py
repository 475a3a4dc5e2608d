"""Keep Python's cyclic garbage collector off the napari session once the plugin is docked.

With napari, Qt, vispy and torch loaded, Python tracks about 650,000 objects, and every full
collection walks all of them with the GIL held: 300-480 ms during which the viewer cannot
repaint or react (measured when the first results create their layers,
``benchmarks/gui_stall_training.py --no-freeze-gc``). ``electrode-cae gui`` freezes the objects
alive after launch (:func:`.._launch.freeze_long_lived_objects`); this module does the same
when the widget is opened from napari's Plugins menu, one event-loop turn after it is docked.

Frozen objects are still freed by reference counting, but cyclic garbage among them is not
collected. Layers that existed at the freeze are the objects a user may later delete, so
removing one of them unfreezes everything (normal collections resume and reclaim it), and so
does closing the widget. Nothing is frozen when something else already froze (``launch``), or
when :data:`FREEZE_WHEN_DOCKED` is False (the test suite, which opens and closes many viewers).
"""

from __future__ import annotations

import gc
from typing import Any

from qtpy.QtCore import QObject, QTimer

#: Freeze the session's objects one turn after the widget is docked (tests turn this off).
FREEZE_WHEN_DOCKED = True


class DockedGCFreeze(QObject):
    """Freeze the GC-tracked objects once, after docking; unfreeze when a frozen layer goes.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layer removals are watched.
    parent : QObject
        The dock widget; the pending freeze is cancelled when it is destroyed.
    """

    def __init__(self, viewer: Any, parent: QObject) -> None:
        super().__init__(parent)
        self.viewer = viewer
        #: Cleared by ``launch(freeze_gc=False)``: that caller manages the collector itself.
        self.enabled = True
        #: True while the objects this instance froze are frozen.
        self.frozen = False
        self._frozen_layers: set[int] = set()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.apply)
        self._timer.start(0)

    def apply(self) -> bool:
        """Collect and freeze now, unless disabled or already frozen; True if it froze."""
        self._timer.stop()
        if not (FREEZE_WHEN_DOCKED and self.enabled) or self.frozen or gc.get_freeze_count():
            return False
        from .._launch import freeze_long_lived_objects

        self._frozen_layers = {id(layer) for layer in self.viewer.layers}
        freeze_long_lived_objects()
        self.frozen = True
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        return True

    def _on_layer_removed(self, event: Any) -> None:
        if id(event.value) in self._frozen_layers:
            self.release()

    def release(self) -> None:
        """Unfreeze what :meth:`apply` froze (a removed layer can then be collected)."""
        self._timer.stop()
        if not self.frozen:
            return
        self.frozen = False
        self._frozen_layers = set()
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        gc.unfreeze()
