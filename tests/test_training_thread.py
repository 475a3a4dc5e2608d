"""Training in a thread of its own, at a lower priority than the GUI thread."""

import os
import sys
import threading

import pytest
import torch

from napari_electrode_cae._widgets import training_panel, training_thread
from napari_electrode_cae._widgets.training_thread import (
    can_lower_thread_priority,
    lower_thread_priority,
    run_in_own_thread,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread nice values are a Linux feature")


def counting(n, seen, closed=None):
    try:
        for i in range(n):
            seen.append(threading.get_ident())
            yield i
        return "done"
    finally:
        if closed is not None:
            closed.append(threading.get_ident())


def test_items_and_return_value_come_through_from_another_thread():
    seen = []
    relay = run_in_own_thread(counting(3, seen), lower_priority=False)
    items = []
    with pytest.raises(StopIteration) as stop:
        while True:
            items.append(next(relay))
    assert items == [0, 1, 2]
    assert stop.value.value == "done"
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()


def test_an_exception_of_the_generator_is_raised_in_the_caller():
    class Boom(Exception):
        pass

    def failing():
        yield 1
        raise Boom("disk full")

    relay = run_in_own_thread(failing(), lower_priority=False)
    assert next(relay) == 1
    with pytest.raises(Boom, match="disk full"):
        next(relay)


def test_closing_early_closes_the_generator_in_its_thread_and_waits_for_it():
    seen, closed = [], []
    release = threading.Event()

    def slow():
        try:
            for i in range(1000):
                seen.append(threading.get_ident())
                yield i
                release.wait(5)  # the caller closes while the thread computes the next item
        finally:
            closed.append(threading.get_ident())

    relay = run_in_own_thread(slow(), lower_priority=False)
    assert next(relay) == 0
    threads_before = {t for t in threading.enumerate() if t.name == "electrode-cae training"}
    assert threads_before
    release.set()
    relay.close()
    assert closed == [seen[0]]  # the generator's finally ran, in its own thread
    assert len(seen) < 1000  # stopped early
    assert not any(t.is_alive() for t in threads_before)


@linux_only
def test_the_thread_and_threads_it_starts_run_at_a_lower_priority():
    def niceness():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def report():
        child = []
        thread = threading.Thread(target=lambda: child.append(niceness()))
        thread.start()
        thread.join()
        yield niceness(), child[0]

    mine = niceness()
    own, child = next(run_in_own_thread(report()))
    assert own == min(mine + training_thread.NICE_INCREMENT, 19)
    assert child == own  # inherited, as torch's OpenMP threads inherit it
    assert niceness() == mine  # the caller's thread is untouched


@linux_only
def test_lowering_fails_quietly_where_the_system_forbids_it(monkeypatch):
    def forbidden(*args):
        raise PermissionError("not allowed")

    monkeypatch.setattr(os, "setpriority", forbidden)
    assert lower_thread_priority() is False
    assert next(run_in_own_thread(iter([5]))) == 5  # the training still runs


def test_gui_training_uses_every_core_only_in_a_lowered_thread(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(training_panel, "can_lower_thread_priority", lambda: True)
    assert training_panel.gui_torch_threads(cpu) == 4
    monkeypatch.setattr(training_panel, "can_lower_thread_priority", lambda: False)
    assert training_panel.gui_torch_threads(cpu) == 3  # one core left for the GUI
    assert training_panel.gui_torch_threads(torch.device("meta")) == 4
    assert can_lower_thread_priority() == sys.platform.startswith("linux")
