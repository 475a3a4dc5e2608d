"""Training in a thread of its own, at a lower priority than the GUI thread."""

import os
import sys
import threading
import time

import pytest
import torch

from napari_electrode_cae._widgets import training_panel, training_thread
from napari_electrode_cae._widgets.training_thread import (
    ThreadStartError,
    can_lower_thread_priority,
    lower_thread_priority,
    run_in_own_thread,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread nice values are a Linux feature")


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def counting(n, seen, closed):
    try:
        for i in range(n):
            seen.append(threading.get_ident())
            yield i
        return "done"
    finally:
        closed.append(threading.get_ident())


def training_threads():
    return [t for t in threading.enumerate() if t.name == "electrode-cae training"]


def test_items_and_return_value_come_through_from_another_thread():
    seen, closed = [], []
    relay = run_in_own_thread(counting(3, seen, closed))
    items = []
    with pytest.raises(StopIteration) as stop:
        while True:
            items.append(next(relay))
    assert items == [0, 1, 2]
    assert stop.value.value == "done"
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()
    assert closed == seen[:1]
    assert training_threads() == []


def test_the_thread_computes_an_item_only_when_asked():
    seen, closed = [], []
    relay = run_in_own_thread(counting(1000, seen, closed))
    assert next(relay) == 0
    time.sleep(0.2)  # a thread running ahead would have computed more items by now
    assert len(seen) == 1
    assert next(relay) == 1
    time.sleep(0.05)
    assert len(seen) == 2
    relay.close()


def test_closing_closes_the_generator_in_its_thread_without_another_item():
    seen, closed = [], []
    relay = run_in_own_thread(counting(1000, seen, closed))
    assert next(relay) == 0
    assert next(relay) == 1
    assert training_threads()
    relay.close()  # as a Stop: the worker closes the generator while it waits at a yield
    assert len(seen) == 2  # nothing computed after the last item taken (no extra batch)
    assert closed == seen[:1]  # the generator's finally ran, in its own thread
    assert training_threads() == []  # and the thread has ended


def test_closing_twice_or_before_the_first_item_is_harmless():
    seen, closed = [], []
    relay = run_in_own_thread(counting(5, seen, closed))
    relay.close()  # never started: nothing ran
    relay.close()
    assert seen == []
    relay = run_in_own_thread(counting(5, seen, closed))
    next(relay)
    relay.close()
    relay.close()
    assert len(seen) == 1 and len(closed) == 1
    deadline = time.monotonic() + 5
    while training_threads() and time.monotonic() < deadline:  # the first relay's thread
        time.sleep(0.01)
    assert training_threads() == []


def test_an_exception_of_the_generator_is_raised_in_the_caller():
    class Boom(Exception):
        pass

    def failing():
        yield 1
        raise Boom("disk full")

    relay = run_in_own_thread(failing())
    assert next(relay) == 1
    with pytest.raises(Boom, match="disk full"):
        next(relay)
    assert training_threads() == []


def test_a_thread_that_cannot_start_is_an_error_superqt_reports(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")

    seen, closed = [], []
    generator = counting(3, seen, closed)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    relay = run_in_own_thread(generator)
    with pytest.raises(ThreadStartError, match="can't start new thread") as error:
        next(relay)
    assert not isinstance(error.value, RuntimeError)  # superqt swallows RuntimeErrors
    assert seen == []


@linux_only
def test_a_lowered_thread_and_the_threads_it_starts_run_at_the_lower_priority():
    def report():
        if not lower_thread_priority():
            pytest.skip("this system does not let a thread lower its priority")
        child = []
        thread = threading.Thread(target=lambda: child.append(niceness()))
        thread.start()
        thread.join()
        yield niceness(), child[0]

    mine = niceness()
    own, child = next(run_in_own_thread(report()))
    assert own == min(mine + training_thread.NICE_INCREMENT, 19)
    assert child == own
    assert niceness() == mine  # the caller's thread is untouched


@linux_only
def test_torch_openmp_threads_of_a_lowered_thread_inherit_its_priority():
    def tasks():
        return set(os.listdir("/proc/self/task"))

    def run():
        if not lower_thread_priority():
            pytest.skip("this system does not let a thread lower its priority")
        torch.set_num_threads(2)
        before = tasks()
        x = torch.randn(512, 512)
        for _ in range(5):
            x = (x @ x).tanh_()
        started = tasks() - before
        yield niceness(), [os.getpriority(os.PRIO_PROCESS, int(t)) for t in started]

    if (os.cpu_count() or 1) < 2:
        pytest.skip("torch starts no OpenMP threads on one core")
    own, workers = next(run_in_own_thread(run()))
    if not workers:
        pytest.skip("torch started no OpenMP threads for this thread")
    assert workers == [own] * len(workers)


@linux_only
def test_lowering_fails_quietly_where_the_system_forbids_it(monkeypatch):
    def forbidden(*args):
        raise PermissionError("not allowed")

    monkeypatch.setattr(os, "setpriority", forbidden)
    assert lower_thread_priority() is False


def test_gui_training_uses_every_core_only_in_a_lowered_thread(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert training_panel.gui_torch_threads(cpu, True, 4) == 4
    assert training_panel.gui_torch_threads(cpu, False, 4) == 3  # one core left for the GUI
    assert training_panel.gui_torch_threads(cpu, False, 1) == 1
    assert training_panel.gui_torch_threads(torch.device("meta"), False, 4) == 4
    assert can_lower_thread_priority() == sys.platform.startswith("linux")


@pytest.mark.parametrize("lowered", [True, False])
def test_the_training_generator_picks_its_threads_from_the_lowering(monkeypatch, lowered):
    asked = []
    monkeypatch.setattr(training_panel, "lower_thread_priority", lambda: lowered)
    monkeypatch.setattr(training_panel, "set_torch_threads",
                        lambda n: asked.append(n) or n)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def reports():
        yield "batch"
        return "result"

    steps = training_panel._training_steps(reports(), torch.device("cpu"), 2)
    relay = run_in_own_thread(steps)
    assert next(relay) == "batch"
    with pytest.raises(StopIteration) as stop:
        next(relay)
    assert stop.value.value == "result"
    assert asked == [2 if lowered else 1]


def test_training_off_the_cpu_does_not_lower_the_thread(monkeypatch):
    lowered = []
    monkeypatch.setattr(training_panel, "lower_thread_priority",
                        lambda: lowered.append(True) or True)
    monkeypatch.setattr(training_panel, "set_torch_threads", lambda n: n)

    def reports():
        yield "batch"

    relay = run_in_own_thread(training_panel._training_steps(reports(), torch.device("meta"), 3))
    assert next(relay) == "batch"
    relay.close()
    assert lowered == []
