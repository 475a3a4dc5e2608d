"""Spread GUI-thread work over turns of the Qt event loop, one piece per turn.

Some single napari calls are expensive on the GUI thread: adding a Labels layer to a shown
viewer builds its vispy visual, overlays and layer controls (80-190 ms on a busy 2-core CPU
with software OpenGL), switching the grid on or changing its shape rebuilds the grid's view
boxes and cameras (50-180 ms), and the first repaint after each of them compiles shaders. A
panel that has several of them to do at once (the first reconstruction: two layers, the grid, a
name overlay per layer, the camera) would freeze the viewer for the sum of them. Instead, each
panel hands a *step* function to a :class:`TurnScheduler`, which calls it once per event-loop
turn until it says it is done, so that paints, timers and input events are handled between two
expensive calls.

A step function looks at what is shown and what should be shown, does the first missing piece
and returns True if more remains. Written that way, it always converges to the newest target:
when a newer result arrives halfway, the remaining steps simply work towards it.

Panels that may have expensive work at the same moment (the Results and Latents panels when a
new model is ready: two worker results can arrive in the same pass over the event queue) share
one :class:`TurnQueue`, so that only one step of either runs per turn. The queue waits on a
zero-interval timer; Qt runs those once the events already queued (a repaint the previous step
caused, input, worker results) are handled.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QObject, QTimer


class TurnQueue:
    """Runs waiting step functions one per event-loop turn, in turn (round robin).

    Parameters
    ----------
    parent : QObject
        Owner of the timer (waiting steps are dropped when it is deleted).
    """

    def __init__(self, parent: QObject) -> None:
        self._waiting: list[Callable[[], bool]] = []
        self._held = False
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._run)

    def add(self, step: Callable[[], bool]) -> None:
        """Let ``step`` run in a later turn (once, however often added)."""
        if step not in self._waiting:
            self._waiting.append(step)
        if not self._timer.isActive() and not self._held:
            self._timer.start()

    def remove(self, step: Callable[[], bool]) -> None:
        """Drop ``step`` if it is waiting."""
        if step in self._waiting:
            self._waiting.remove(step)

    def is_waiting(self, step: Callable[[], bool]) -> bool:
        return step in self._waiting

    @property
    def held(self) -> bool:
        """True while :meth:`hold` keeps the waiting steps from running."""
        return self._held

    def hold(self) -> None:
        """Run no step until :meth:`release`; steps added meanwhile wait, in order."""
        self._held = True
        self._timer.stop()

    def release(self) -> None:
        """Run the waiting steps again, one per turn, from the next turn on."""
        self._held = False
        if self._waiting and not self._timer.isActive():
            self._timer.start()

    def _run(self) -> None:
        if not self._waiting or self._held:
            return
        step = self._waiting.pop(0)
        if step() and step not in self._waiting:
            self._waiting.append(step)
        if self._waiting:
            self._timer.start()


class TurnScheduler:
    """Call ``step()`` once per event-loop turn until it returns False.

    Parameters
    ----------
    step : callable
        Does one piece of GUI-thread work; returns True if more remains.
    parent : QObject
        Owner of the queue's timer when no ``queue`` is given.
    queue : TurnQueue, optional
        A queue shared with other panels (one step of any of them per turn); by default a
        queue of its own.
    """

    def __init__(
        self, step: Callable[[], bool], parent: QObject, queue: TurnQueue | None = None
    ) -> None:
        self._step = step
        self._queue = queue if queue is not None else TurnQueue(parent)
        self._closed = False
        self._entry = self._step_once  # the same bound method each time, for the queue
        #: Number of steps run so far (for tests and benchmarks).
        self.steps_run = 0

    @property
    def pending(self) -> bool:
        """True while a step is scheduled."""
        return self._queue.is_waiting(self._entry)

    def schedule(self) -> None:
        """Run the step function in a later event-loop turn (once, however often called)."""
        if not self._closed:
            self._queue.add(self._entry)

    def run_now(self) -> None:
        """Run one step in this turn (the caller's), and the rest in later turns.

        Only for a cheap step in a slot that has a turn of its own anyway (a worker's result);
        never from a callback that fires inside another step (a layer-list event during an
        insert).
        """
        if self._closed:
            return
        self._queue.remove(self._entry)
        if self._step_once():
            self.schedule()

    def _step_once(self) -> bool:
        if self._closed:
            return False
        self.steps_run += 1
        return self._step()

    def stop(self) -> None:
        """Drop the scheduled step and ignore later ``schedule`` calls."""
        self._closed = True
        self._queue.remove(self._entry)
