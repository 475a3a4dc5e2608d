"""The panels' shared base: one worker helper, event wiring undone at shutdown, and the Train
tab's explicit training phase (idle, training, stopping, done, failed)."""

from __future__ import annotations

import threading

import pytest

from napari_electrode_cae import core
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets.panel_base import Panel, WorkerSet
from napari_electrode_cae._widgets.state import CAEState
from napari_electrode_cae._widgets.training_panel import TrainingPanel, TrainingPhase

from .test_training_panel import WAIT_MS, tiny_state, wait_idle


def test_worker_set_delivers_a_result_and_forgets_the_worker(qtbot):
    workers, results, finished = WorkerSet(), [], []
    worker = workers.create(
        lambda x: x * 2, 21, on_returned=results.append, on_finished=lambda: finished.append(True)
    )
    assert workers.busy and not worker.is_running  # made, not started
    worker.start()
    qtbot.waitUntil(lambda: not workers.busy, timeout=WAIT_MS)
    assert results == [42] and finished == [True]


def test_worker_set_reports_errors_to_its_slot_only(qtbot):
    workers, errors = WorkerSet(), []

    def fail():
        raise core.ElectrodeCAEError("bad input")

    workers.create(fail, on_errored=errors.append).start()
    qtbot.waitUntil(lambda: not workers.busy, timeout=WAIT_MS)
    assert [str(e) for e in errors] == ["bad input"]


def test_stop_waits_for_a_running_worker_and_skips_on_finished(qtbot):
    workers, finished, release = WorkerSet(), [], threading.Event()
    worker = workers.create(release.wait, 10.0, on_finished=lambda: finished.append(True))
    worker.start()
    watch = workers.watches()[0]
    qtbot.waitUntil(watch.started.is_set, timeout=WAIT_MS)
    threading.Timer(0.2, release.set).start()
    assert workers.stop(timeout_s=10.0)  # True: the worker finished within the timeout
    assert watch.finished.is_set()
    qtbot.wait(50)
    assert finished == [] and workers.closed and not workers.busy


class _Recorder(Panel):
    def __init__(self, viewer, state):
        super().__init__(viewer, state)
        self.calls: list[str] = []
        self.connect_events((state.events.seed, lambda _seed: self.calls.append("seed")))

    def stop_work(self):
        self.calls.append("stop_work")

    def after_workers_stopped(self):
        self.calls.append("after")


def test_panel_shutdown_runs_its_hooks_once_and_disconnects(qtbot):
    state = CAEState()
    panel = _Recorder(None, state)
    qtbot.addWidget(panel)
    state.seed = state.seed + 1
    panel.shutdown()
    state.seed = state.seed + 1  # no longer heard
    panel.shutdown()  # a second call does nothing
    assert panel.calls == ["seed", "stop_work", "after"] and panel.closed


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(training_panel_module, "show_error", shown.append)
    return shown


def test_training_phase_goes_from_idle_to_training_to_done(make_napari_viewer, qtbot, errors):
    panel = TrainingPanel(make_napari_viewer(), tiny_state(epochs=1))
    assert panel.phase is TrainingPhase.IDLE and not panel.training_active
    panel.train_button.click()
    assert panel.phase is TrainingPhase.TRAINING and panel.training_active
    wait_idle(qtbot, panel)
    assert panel.phase is TrainingPhase.DONE and not panel.training_active
    assert errors == []
    panel.shutdown()


def test_stop_makes_the_phase_stopping_then_done(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=1000, batch_size=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(state.history) >= 1, timeout=WAIT_MS)
    panel.stop_button.click()
    assert panel.phase is TrainingPhase.STOPPING and not panel.stop_button.isEnabled()
    assert "stopping" in panel.status_label.text()
    wait_idle(qtbot, panel)
    assert panel.phase is TrainingPhase.DONE and len(state.history) < 1000
    panel.shutdown()


def test_a_failing_training_ends_in_the_failed_phase(
    make_napari_viewer, qtbot, errors, monkeypatch
):
    def failing_train(*args, **kwargs):
        raise core.TrainConfigError("no luck")
        yield  # a generator, as core.train

    monkeypatch.setattr(core, "train", failing_train)
    panel = TrainingPanel(make_napari_viewer(), tiny_state(epochs=1))
    panel.train_button.click()
    wait_idle(qtbot, panel)
    assert panel.phase is TrainingPhase.FAILED and errors and "no luck" in errors[0]
    assert panel.train_button.isEnabled()
    panel.shutdown()
