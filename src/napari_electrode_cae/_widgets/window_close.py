"""Notice when the window holding a docked widget closes (e.g. ``viewer.close()``).

Qt sends a close event only to the top-level window, not to the widgets docked in it, so a dock
widget's ``closeEvent`` does not run when napari's main window closes and its background workers
would outlive the viewer. :class:`WindowCloseWatcher` watches the widget's ancestors and calls
back once the top-level window has accepted its close event.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget


class WindowCloseWatcher(QObject):
    """Call ``on_close()`` once the top-level window holding ``widget`` has closed.

    The ancestors of ``widget`` are watched for re-parenting (a dock widget is built first and
    put into the main window afterwards) and the top-most one for its close event. The window
    handles that event first (napari may ask the user and ignore it); ``on_close`` runs only if
    the close was accepted. A widget without a parent is not watched: its own ``closeEvent``
    runs.

    Parameters
    ----------
    widget : QWidget
        The docked widget; the watcher is its child and lives as long as it does.
    on_close : callable
        Called without arguments, in the GUI thread, at most once.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._widget = widget
        self._on_close: Callable[[], None] | None = on_close
        # weak: a strong reference to the main window would keep the whole viewer alive
        self._watched: list[weakref.ref] = []
        self._dispatching = False
        widget.installEventFilter(self)
        self._watch_ancestors()

    def _ancestors(self) -> list[QWidget]:
        chain = []
        ancestor = self._widget.parentWidget()
        while ancestor is not None:
            chain.append(ancestor)
            ancestor = ancestor.parentWidget()
        return chain

    def _watch_ancestors(self) -> None:
        for ref in self._watched:
            ancestor = ref()
            if ancestor is not None:
                with contextlib.suppress(RuntimeError):  # already deleted by Qt
                    ancestor.removeEventFilter(self)
        chain = self._ancestors()
        for ancestor in chain:
            ancestor.installEventFilter(self)
        self._watched = [weakref.ref(ancestor) for ancestor in chain]

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            self._watch_ancestors()
            return False
        if kind != QEvent.Type.Close or self._dispatching or self._on_close is None:
            return False
        chain = self._ancestors()
        if not chain or watched is not chain[-1]:
            return False
        # Let the window handle its close event now, so that we know whether it accepted it.
        self._dispatching = True
        try:
            watched.event(event)
        finally:
            self._dispatching = False
        if event.isAccepted() and self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
        return True  # handled: Qt reads the acceptance from the event
