"""Train from the GUI on every core, in a thread that yields the CPU to the GUI thread.

Training from the panel used to leave one core free so that the GUI thread always found one.
On a 2-core machine that halves the training threads. On Linux the training instead runs in a
fresh thread whose nice value is raised before it runs any torch code; the OpenMP threads torch
starts from it inherit that nice value, so together they use every core while the GUI is idle,
and the scheduler gives the GUI thread a core as soon as it wakes up. Measured on a 2-core CPU
with the paper's model (``benchmarks/gui_stall_training.py --preset paper --stack-shape
40,256,256``): 1.16-1.47 s per epoch instead of 1.82-2.11 s with one core left free, and
longest GUI stalls while training of 39-52 ms (one core free: 39-51 ms; both cores at normal
priority: 33-61 ms).

The thread is made for one run and ends with it (its OpenMP threads go with it), so the lowered
priority, which an unprivileged process cannot raise again, never reaches the shared worker
pool. Qt-free; the panel wraps the training generator with :func:`run_in_own_thread`.
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


def run_in_own_thread(generator: Generator[Any, None, Any], lower_priority: bool = True,
                      name: str = "electrode-cae training") -> Generator[Any, None, Any]:
    """Run ``generator`` in a new thread and re-yield its items here, then return its value.

    The new thread lowers its own priority first (``lower_priority``, see
    :func:`lower_thread_priority`), then advances ``generator`` as fast as it yields; its items
    wait in a queue until the caller takes them. An exception of ``generator`` is raised here.
    Closing the returned generator (or abandoning it halfway through a ``finally``) asks the
    thread to stop after the item it is computing, closes ``generator`` in that thread (its
    ``finally`` blocks run there) and waits for the thread to end.
    """
    items: queue.Queue = queue.Queue()
    stop = threading.Event()

    def produce() -> None:
        if lower_priority:
            lower_thread_priority()
        try:
            while not stop.is_set():
                try:
                    item = next(generator)
                except StopIteration as done:
                    items.put(("return", done.value))
                    return
                items.put(("item", item))
            generator.close()
            items.put(("return", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            items.put(("raise", exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "return":
                return value
            else:
                raise value
    finally:
        stop.set()
        thread.join()
