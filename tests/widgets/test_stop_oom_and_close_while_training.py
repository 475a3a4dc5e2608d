"""GUI faults: Stop at any moment, again and again; out of memory; closing the viewer mid-training.

The full plugin widget is docked in a real viewer with two tiny stacks (12x32x32, window 4,
stride 2, crop 16, hidden 16, latent 3). Every test waits for its workers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qtpy.QtCore import QThreadPool
from superqt.utils._qthreading import WorkerBase

from napari_electrode_cae import core
from napari_electrode_cae._widgets import ElectrodeCAEWidget
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets.state import ModelSettings
from tests.conftest import make_stack

WAIT_MS = 30_000


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages the training panel showed as error notifications."""
    shown: list[str] = []
    monkeypatch.setattr(training_panel_module, "show_error", shown.append)
    return shown


def docked_widget(viewer, epochs: int, batch_size: int = 2) -> ElectrodeCAEWidget:
    """The plugin docked in ``viewer``, with two tiny stacks and tiny settings.

    The stacks are added as Labels layers, which the Data panel picks up (as a user would).
    """
    widget = ElectrodeCAEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="electrode CAE")
    for seed, name in ((0, "cal"), (1, "uncal")):
        viewer.add_labels(make_stack((12, 32, 32), seed=seed, name=name).labels, name=name)
    state = widget.state
    assert state.stack_layers == ("cal", "uncal")
    state.window = core.WindowSpec(length=4, stride=2, crop=16)
    state.split_mode = "random"  # the batch counts below are those of the paper's split
    state.rebuild_dataset()
    state.model_settings = ModelSettings(conv_layers=3, hidden=16, latent_dim=3)
    state.train_config = core.TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=3e-3, device="cpu"
    )
    assert state.dataset is not None and len(state.dataset) == 40
    return widget


def assert_no_workers_left(qtbot) -> None:
    """No worker thread runs; napari forgets the workers once their last signals are delivered.

    A pool thread counts as active until it has returned from the finished runnable, a moment
    after the worker's own signals, so wait for the count rather than sampling it once.
    """
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=WAIT_MS)


def check_idle_and_best(panel, state) -> None:
    """The panel is usable again and the model holds the best epoch's finite weights."""
    assert not state.training and not panel.is_busy
    assert panel.train_button.isEnabled() and not panel.stop_button.isEnabled()
    if state.history:
        best = state.history[-1]
        assert state.model is not None
        assert all(torch.isfinite(t).all() for t in state.model.state_dict().values())
        val_mse = float(np.mean(core.window_mse(state.model, state.dataset, state.split.val)))
        assert val_mse == pytest.approx(best.best_val_mse, rel=1e-5)
    else:
        assert state.model is None


def test_stop_at_random_moments_again_and_again(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    widget = docked_widget(viewer, epochs=3)
    panel, state = widget.training_panel, widget.state
    rng = np.random.default_rng(0)
    # Reports (batches and epochs; 3 epochs of 17 batches) to let through before Stop: 0 is
    # right after Train; None lets training finish and presses Train + Stop again while the
    # evaluation that follows it is still running.
    waits = [0, 0, *rng.integers(1, 55, size=6).tolist(), None, None]
    outcomes = []
    for wait in waits:
        reports: list = []
        panel.train_button.click()
        assert state.training and not panel.train_button.isEnabled()
        panel._training_worker.yielded.connect(reports.append)
        if wait is None:
            qtbot.waitUntil(lambda: not state.training, timeout=WAIT_MS)
            if panel.is_busy:  # evaluating: train again and stop at once
                panel.train_button.click()
        else:
            qtbot.waitUntil(lambda w=wait: len(reports) >= w or not state.training, timeout=WAIT_MS)
        if state.training:
            panel.stop_button.click()
            assert not panel.stop_button.isEnabled()
        qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)

        assert errors == []
        check_idle_and_best(panel, state)
        outcomes.append(len(state.history))
    assert any(n == 3 for n in outcomes) and any(n < 3 for n in outcomes)
    assert state.report is not None and state.latents is not None
    widget.shutdown()
    assert_no_workers_left(qtbot)


class _OutOfMemoryAfter:
    """A training-mode forward that raises CUDA's out-of-memory error from its ``n``-th call."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.original = core.ConvAutoEncoder3d.forward

    def __call__(self, model, x):
        if model.training:
            self.calls += 1
            if self.calls >= self.n:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.original(model, x)


@pytest.mark.parametrize("fail_at", [3, 25], ids=["first-epoch", "second-epoch"])
def test_out_of_memory_is_shown_and_ends_training(
    make_napari_viewer, qtbot, errors, monkeypatch, fail_at
):
    forward = _OutOfMemoryAfter(fail_at)
    monkeypatch.setattr(core.ConvAutoEncoder3d, "forward", lambda model, x: forward(model, x))
    viewer = make_napari_viewer()
    widget = docked_widget(viewer, epochs=5)  # 17 batches per epoch
    panel, state = widget.training_panel, widget.state
    panel.train_button.click()
    qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)

    expected = (
        "ran out of memory on cpu during training with batch 2 of 4x16x16 windows; "
        "try a smaller batch (e.g. 1) or crop"
    )
    assert errors == [expected]
    assert expected in panel.status_label.text()  # still there after the evaluation
    check_idle_and_best(panel, state)
    assert len(state.history) == (0 if fail_at <= 17 else 1)
    if state.history:  # the first epoch's weights are kept and evaluated
        assert state.report is not None and state.model_version == 1
    widget.shutdown()
    assert_no_workers_left(qtbot)


def test_closing_the_viewer_while_training_stops_the_worker(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    widget = docked_widget(viewer, epochs=1000)
    panel, state = widget.training_panel, widget.state
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(state.history) >= 1, timeout=WAIT_MS)
    viewer.close()

    assert QThreadPool.globalInstance().activeThreadCount() == 0  # stopped and waited for
    assert not state.training and len(state.history) < 1000
    assert errors == []
    assert_no_workers_left(qtbot)
