"""What the dock panels share: the viewer and state, event wiring, background workers, shutdown.

A panel subclasses :class:`Panel` and

* connects to the shared state (or the viewer) with :meth:`Panel.connect_events`; every
  connection is undone at shutdown;
* runs background work with its :class:`WorkerSet` (``self.workers.create(function, *args,
  on_returned=...)``, then ``worker.start()``): one helper that makes napari workers, follows
  them until their last signal and stops them together;
* puts what must stop before the workers are waited for (timers, cancel flags, runners) in
  :meth:`Panel.stop_work` and what follows in :meth:`Panel.after_workers_stopped`.

Workers never touch Qt objects or the viewer; their results reach the panel in the main thread
through the worker's signals. Slots check :attr:`Panel.closed` (nothing is shown after
shutdown).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QCoreApplication, QEventLoop, Qt
from qtpy.QtWidgets import QWidget

#: How long shutdown waits for the panel's workers to reach their next stopping point.
SHUTDOWN_TIMEOUT_S = 60.0


class WorkerWatch:
    """Thread-safe started/finished flags of a worker (set in the worker's own thread)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.started = threading.Event()
        self.finished = threading.Event()
        direct = Qt.ConnectionType.DirectConnection
        worker.started.connect(self.started.set, direct)
        worker.finished.connect(self.finished.set, direct)  # its last public signal

    def wait(self, timeout_s: float) -> bool:
        """Wait until a started worker has finished; True if it did (or never started)."""
        from qtpy import sip

        deadline = time.monotonic() + timeout_s
        while not self.finished.is_set() and time.monotonic() < deadline:
            if self.started.is_set():
                self.finished.wait(0.05)
            else:
                # A worker whose start is still queued on the event loop aborts at once once it
                # runs (quit() was called); let the loop start it so it does not outlive us.
                QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        if not self.finished.is_set():
            return False
        # The last signal is out; the pool deletes the runnable once run() has returned. Let
        # the worker thread get that far (it needs the GIL), briefly.
        settle = min(deadline, time.monotonic() + 1.0)
        while not sip.isdeleted(self.worker) and time.monotonic() < settle:
            time.sleep(0.001)
        return True


class WorkerSet:
    """The napari workers of one panel: made, followed until they finish, stopped together.

    Attributes
    ----------
    closed : bool
        Set by :meth:`stop`; ``on_finished`` callbacks are not called afterwards.
    """

    def __init__(self) -> None:
        self._watches: dict[Any, WorkerWatch] = {}
        self.closed = False

    def create(
        self,
        function: Callable[..., Any],
        *args: Any,
        on_yielded: Callable | None = None,
        on_returned: Callable | None = None,
        on_errored: Callable | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> Any:
        """A napari worker running ``function(*args)``, connected and followed, not started.

        Errors reach ``on_errored`` only (napari does not show them as notifications). The
        caller starts the worker (``worker.start()``) once it has connected what else it needs.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True)
        for signal, slot in (
            ("yielded", on_yielded),
            ("returned", on_returned),
            ("errored", on_errored),
        ):
            if slot is not None:
                getattr(worker, signal).connect(slot)
        self.track(worker, on_finished)
        return worker

    def track(self, worker: Any, on_finished: Callable[[], None] | None = None) -> None:
        """Follow a worker made elsewhere (call before ``worker.start()``)."""
        self._watches[worker] = WorkerWatch(worker)
        worker.finished.connect(lambda: self._on_finished(worker, on_finished))

    def _on_finished(self, worker: Any, on_finished: Callable[[], None] | None) -> None:
        self._watches.pop(worker, None)
        if not self.closed and on_finished is not None:
            on_finished()

    @property
    def busy(self) -> bool:
        """True while a worker made or followed here has not finished."""
        return bool(self._watches)

    def watches(self) -> list[WorkerWatch]:
        """The watches of the running workers (tests check their flags)."""
        return list(self._watches.values())

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S, owner: str = "panel") -> bool:
        """Ask every worker to quit and wait for each; False (and a warning) if one did not."""
        self.closed = True
        for worker in list(self._watches):
            worker.quit()
        deadline = time.monotonic() + timeout_s
        stopped = True
        for watch in list(self._watches.values()):
            if not watch.wait(max(0.0, deadline - time.monotonic())):
                stopped = False
        if not stopped:
            warnings.warn(
                f"a worker of the {owner} did not stop within {timeout_s:.0f} s",
                RuntimeWarning,
                stacklevel=3,
            )
        self._watches.clear()
        return stopped


class Panel(QWidget):
    """Base of the dock panels: viewer, shared state, event wiring, workers and shutdown.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the panel reads layers from and draws into.
    state : CAEState
        The plugin's shared state.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    workers : WorkerSet
        The panel's background workers.
    """

    def __init__(self, viewer: Any, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self.workers = WorkerSet()
        self._connections: list[tuple[Any, Callable]] = []

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` has run (or is running)."""
        return self.workers.closed

    def connect_events(self, *pairs: tuple[Any, Callable]) -> None:
        """Connect ``(signal, slot)`` pairs (state or viewer events); undone at shutdown."""
        for signal, slot in pairs:
            signal.connect(slot)
            self._connections.append((signal, slot))

    def disconnect_events(self) -> None:
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._connections = []

    def stop_work(self) -> None:
        """Hook: stop timers and ask long jobs to cancel, before the workers are waited for."""

    def after_workers_stopped(self) -> None:
        """Hook: put the state right once no worker runs any more."""

    def shutdown(self) -> None:
        """Stop every worker of the panel, wait for it, and disconnect (called on close)."""
        if self.closed:
            return
        self.workers.closed = True
        self.stop_work()
        self.workers.stop(SHUTDOWN_TIMEOUT_S, owner=type(self).__name__)
        self.after_workers_stopped()
        self.disconnect_events()
