"""Train from the GUI on every core, in a thread that yields the CPU to the GUI thread.

Training from the panel used to leave one core free so that the GUI thread always found one.
On a 2-core machine that halves the training threads. On Linux a CPU training run instead runs
in a fresh thread (:func:`run_in_own_thread`) that raises its own nice value before it runs any
torch code (:func:`lower_thread_priority`, called by the panel's training generator); the
OpenMP threads torch starts from it inherit that nice value, so together they use every core
while the GUI is idle, and the scheduler gives the GUI thread a core as soon as it wakes up.
Measured on a 2-core CPU with the paper's model (``benchmarks/gui_stall_training.py --preset
paper --stack-shape 40,256,256``): 1.16-1.47 s per epoch instead of 1.82-2.11 s with one core
left free, and longest GUI stalls while training of 39-52 ms (one core free: 39-51 ms; both
cores at normal priority: 33-61 ms).

The thread is made for one run and ends with it; with torch's OpenMP runtime on Linux
(libgomp) its OpenMP threads end with it too, so the lowered priority, which an unprivileged
process cannot raise again, does not reach the shared worker pool. (An OpenMP runtime that
hands its threads from one caller to the next, such as Intel's, would let later torch work in
other worker threads run at the lowered priority as well: still below the GUI thread.) Qt-free.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Generator
from typing import Any

#: Added to the training thread's nice value (Linux; 0 = normal, 19 = lowest).
NICE_INCREMENT = 10


def can_lower_thread_priority() -> bool:
    """True where :func:`lower_thread_priority` can work: Linux, whose nice value is per thread."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def lower_thread_priority(increment: int = NICE_INCREMENT) -> bool:
    """Raise the calling thread's nice value by ``increment`` (at most to 19); True if done.

    Threads started later from this thread (torch's OpenMP threads among them) inherit it.
    """
    if not can_lower_thread_priority():
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(current + increment, 19))
    except OSError:  # a sandbox that forbids it: the thread keeps its priority
        return False
    return True


class ThreadStartError(OSError):
    """The training thread could not be started (not a RuntimeError, which superqt's
    GeneratorWorker would swallow without a signal)."""


def run_in_own_thread(generator: Generator[Any, None, Any],
                      name: str = "electrode-cae training") -> Generator[Any, None, Any]:
    """Run ``generator`` in a new thread, in lockstep: re-yield its items here, return its value.

    The new thread advances ``generator`` only when the caller asks for the next item, so it
    never runs ahead: when the caller stops (closes the returned generator while it waits at
    a ``yield``), ``generator`` is idle at its own ``yield`` too, and is closed there, in its
    thread (its ``finally`` blocks run there), without computing anything more; the caller
    waits for the thread to end. An exception of ``generator`` is raised here.

    Raises
    ------
    ThreadStartError
        If the thread cannot be started.
    """
    requests: queue.SimpleQueue = queue.SimpleQueue()  # "next" or "stop", from the caller
    replies: queue.SimpleQueue = queue.SimpleQueue()  # (kind, value), from the thread

    def serve() -> None:
        try:
            while requests.get() == "next":
                try:
                    item = next(generator)
                except StopIteration as done:
                    replies.put(("return", done.value))
                    return
                replies.put(("item", item))
            generator.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            replies.put(("raise", exc))

    thread = threading.Thread(target=serve, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:  # "can't start new thread"
        generator.close()
        raise ThreadStartError(f"could not start the training thread: {exc}") from exc
    try:
        while True:
            requests.put("next")
            kind, value = replies.get()
            if kind == "item":
                yield value
            elif kind == "return":
                return value
            else:
                raise value
    finally:
        requests.put("stop")  # ends a thread waiting for a request; one that ended ignores it
        thread.join()
