"""Render the glyphs of the plugin's layer names before the first results need them.

In the side-by-side grid every window layer shows its name (napari's layer-name overlay).
napari draws text from one texture font per canvas, and builds each character's glyph the
first time some text needs it: Qt renders it at 256 pt and the CPU computes its distance field,
2-9 ms per character on a 2-core machine. The first name overlay, "window: original", has
eleven new characters, so the repaint that shows it took 50 ms longer than the others
(``benchmarks/gui_stall_training.py --timeline "first results"``).

:class:`GlyphWarmUp` builds those glyphs ahead, one character per event-loop turn from the
moment the widget is made, while the user looks at the data, through the same
:class:`.turns.TurnQueue` as the panels' layer work (so never in the same turn as an expensive
napari call). The font is the one napari's text
overlays use; a napari that keeps no shared font (the lookup fails) is left alone, since its
overlays build their own glyphs whatever is done here.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject

from .results_panel import WINDOW_LAYER_NAMES
from .turns import TurnQueue, TurnScheduler

#: Start the warm-up when a :class:`GlyphWarmUp` is made (the test suite turns this off except
#: where the warm-up is tested; :meth:`GlyphWarmUp.start` starts it either way).
WARM_UP_WHEN_CREATED = True


def overlay_font(viewer: Any) -> Any | None:
    """The texture font of the viewer's text overlays, or None if this napari has none.

    A dock widget gets the viewer behind napari's public-only proxy, which warns on every
    private attribute: the lookup goes through the viewer itself.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    try:
        info = viewer.window._qt_viewer.canvas.font_info
        info = info() if callable(info) else info  # a method in napari 0.9
        return info.font_manager.get_font(info.face)
    except (AttributeError, TypeError):
        return None


class GlyphWarmUp:
    """Builds the glyphs of ``text`` in the viewer's overlay font, one per turn of ``queue``.

    Parameters
    ----------
    viewer : napari.Viewer
        Whose canvas font is warmed up.
    parent : QObject
        Owner of the scheduler (nothing runs after it is deleted).
    queue : TurnQueue
        Shared with the panels: one step of any of them per turn.
    text : str, optional
        Default: the names of the window layers (the names shown side by side).
    """

    def __init__(self, viewer: Any, parent: QObject, queue: TurnQueue,
                 text: str | None = None) -> None:
        self.viewer = viewer
        if text is None:
            text = "".join(WINDOW_LAYER_NAMES)
        #: Characters still to build, in order of first appearance.
        self.remaining = list(dict.fromkeys(text))
        self._scheduler = TurnScheduler(self._step, parent, queue)
        if WARM_UP_WHEN_CREATED:
            self.start()

    def start(self) -> None:
        """Build the remaining glyphs over the next turns of the queue."""
        self._scheduler.schedule()

    @property
    def pending(self) -> bool:
        return self._scheduler.pending

    def _step(self) -> bool:
        font = overlay_font(self.viewer)
        if font is None:
            self.remaining.clear()
            return False
        while self.remaining:
            char = self.remaining.pop(0)
            if char not in getattr(font, "_glyphs", ()):  # built already: no turn needed
                font[char]
                break
        return bool(self.remaining)

    def stop(self) -> None:
        self._scheduler.stop()
