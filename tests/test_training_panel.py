"""TrainingPanel: Train / Stop / errors, presets, Save run and Open run (tiny data, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_electrode_cae import core
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets.state import CAEState, ModelSettings
from napari_electrode_cae._widgets.training_panel import (
    LearningRateSpinBox,
    TrainingPanel,
    history_from_rows,
)

from .conftest import make_stack

TINY_WINDOW = core.WindowSpec(length=4, stride=2, crop=16)
WAIT_MS = 30_000


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages the panel showed as error notifications."""
    shown: list[str] = []
    monkeypatch.setattr(training_panel_module, "show_error", shown.append)
    return shown


def tiny_state(epochs: int = 2, batch_size: int = 8, shape=(12, 32, 32)) -> CAEState:
    """Two small stacks, window 4 / stride 2 / crop 16, hidden 16, latent 3."""
    state = CAEState()
    state.stacks = (make_stack(shape, seed=0, name="cal"),
                    make_stack(shape, seed=1, name="uncal", calendered=False))
    state.stack_layers = ("cal", "uncal")
    state.window = TINY_WINDOW
    state.rebuild_dataset()
    state.model_settings = ModelSettings(conv_layers=3, hidden=16, latent_dim=3)
    state.train_config = core.TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3,
                                          device="cpu")
    return state


def wait_idle(qtbot, panel: TrainingPanel) -> None:
    qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)


def test_train_runs_evaluates_and_updates_state(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    versions = []
    state.events.model_version.connect(versions.append)
    panel.train_button.click()
    assert state.training and not panel.train_button.isEnabled()
    assert panel.stop_button.isEnabled()
    wait_idle(qtbot, panel)

    assert errors == []
    assert len(state.history) == 2
    assert all(isinstance(r, core.EpochReport) for r in state.history)
    assert panel.loss_plot.point_count() == (2, 2)
    # the progress bar is repainted at most every PROGRESS_INTERVAL_S, but ends on the last batch
    assert panel.progress_bar.value() == panel.progress_bar.maximum() > 0
    assert state.latents.shape == (len(state.dataset), 3)
    assert isinstance(state.report, core.EvaluationReport)
    assert versions == [1]
    assert state.model is panel.trained_run.model
    assert not state.training
    assert panel.train_button.isEnabled() and not panel.stop_button.isEnabled()
    assert panel.save_button.isEnabled()
    assert "epochs" in panel.status_label.text() and "val MSE" in panel.status_label.text()
    panel.shutdown()


def test_stop_keeps_best_weights(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=1000, batch_size=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(state.history) >= 1, timeout=WAIT_MS)
    panel.stop_button.click()
    assert not panel.stop_button.isEnabled()
    wait_idle(qtbot, panel)

    assert not state.training and panel.train_button.isEnabled()
    assert errors == []
    assert 1 <= len(state.history) < 1000
    best = state.history[-1]
    val_mse = core.window_mse(state.model, state.dataset, state.split.val)
    assert float(np.mean(val_mse)) == pytest.approx(best.best_val_mse, rel=1e-5)
    assert state.report.mse.val_mean == pytest.approx(best.best_val_mse, rel=1e-5)
    assert state.model_version == 1
    assert "stopped" in panel.status_label.text()
    panel.shutdown()


def test_stop_before_first_epoch_keeps_previous_model(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=5, batch_size=1, shape=(24, 64, 64))  # ~350 batches per epoch
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    panel.stop_button.click()
    wait_idle(qtbot, panel)

    assert state.history == () and state.model is None and state.model_version == 0
    assert not state.training and panel.train_button.isEnabled()
    assert "before the first epoch" in panel.status_label.text()
    panel.shutdown()


def test_training_error_is_reported_and_clears_training(make_napari_viewer, qtbot, errors,
                                                         monkeypatch):
    def out_of_memory(*args, **kwargs):
        yield core.BatchReport(1, 1, 5, 0.5)
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(core, "train", out_of_memory)
    state = tiny_state()
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    wait_idle(qtbot, panel)

    assert len(errors) == 1 and "CUDA out of memory" in errors[0]
    assert "CUDA out of memory" in panel.status_label.text()
    assert not state.training and panel.train_button.isEnabled()
    assert state.model is None and state.model_version == 0
    panel.shutdown()


def test_train_without_data_says_so(make_napari_viewer, errors):
    state = CAEState()
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()

    assert len(errors) == 1 and "select stacks first" in errors[0]
    assert "select stacks first" in panel.status_label.text()
    assert not panel.is_busy and not state.training and state.model is None
    panel.shutdown()


def test_invalid_model_setting_is_reported(make_napari_viewer, errors):
    state = tiny_state()
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.conv_layers_combo.setCurrentIndex(panel.conv_layers_combo.findData(5))

    assert state.model_settings.conv_layers == 5
    assert "too small" in panel.model_summary_label.text()
    panel.train_button.click()
    assert len(errors) == 1 and "crop 16 is too small for 5 conv layers" in errors[0]
    assert not panel.is_busy and not state.training and state.model is None
    panel.shutdown()


def test_preset_fills_fields_and_window(make_napari_viewer, errors):
    state = tiny_state()
    panel = TrainingPanel(make_napari_viewer(), state)
    assert panel.preset_combo.currentText() == "custom"
    index = panel.preset_combo.findText("paper")
    panel.preset_combo.setCurrentIndex(index)
    panel.preset_combo.activated.emit(index)

    paper = core.get_preset("paper")
    assert (panel.hidden_spin.value(), panel.latent_spin.value()) == (128, 10)
    assert panel.conv_layers_combo.currentData() == 3
    assert (panel.epochs_spin.value(), panel.batch_spin.value()) == (3500, 2)
    assert panel.lr_spin.value() == pytest.approx(1e-4)
    assert state.window == paper.window
    assert state.model_settings == ModelSettings(3, 128, 10)
    assert (state.train_config.epochs, state.train_config.lr) == (3500, pytest.approx(1e-4))
    assert state.dataset is None and "24" in state.window_error  # 12-slice stacks are too thin
    assert "3,113,579 parameters" in panel.model_summary_label.text()  # Table 3
    assert panel.preset_combo.currentText() == "paper"

    panel.hidden_spin.setValue(64)
    assert state.model_settings.hidden == 64
    assert panel.preset_combo.currentText() == "custom"
    panel.shutdown()


def test_save_then_open_run_in_fresh_viewer(make_napari_viewer, qtbot, errors, tmp_path):
    state = tiny_state(epochs=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    wait_idle(qtbot, panel)
    run_dir = tmp_path / "run"
    assert panel.save_run(run_dir) is not None
    wait_idle(qtbot, panel)
    assert state.run_dir == str(run_dir) and (run_dir / "weights.pt").exists()

    viewer2, state2 = make_napari_viewer(), CAEState()
    panel2 = TrainingPanel(viewer2, state2)
    assert panel2.open_run(run_dir) is not None  # read in a worker
    wait_idle(qtbot, panel2)

    assert errors == []
    for key, tensor in state.model.state_dict().items():
        assert torch.equal(state2.model.state_dict()[key], tensor.cpu())
    assert [r.epoch for r in state2.history] == [1, 2]
    for a, b in zip(state.history, state2.history):
        assert (b.train_mse, b.val_mse) == (pytest.approx(a.train_mse, rel=1e-6),
                                            pytest.approx(a.val_mse, rel=1e-6))
        assert b.best_epoch == a.best_epoch
    assert state2.window == state.window
    assert state2.model_settings == state.model_settings
    assert state2.train_config == state.train_config
    assert [s.name for s in state2.stacks] == ["cal", "uncal"]
    for a, b in zip(state.stacks, state2.stacks):
        np.testing.assert_array_equal(a.labels, b.labels)
    assert [layer.name for layer in viewer2.layers] == ["cal", "uncal"]
    assert state2.stack_layers == ("cal", "uncal")
    np.testing.assert_array_equal(state2.split.val, state.split.val)
    np.testing.assert_allclose(state2.latents, state.latents, rtol=1e-5, atol=1e-6)
    assert state2.model_version == 1 and state2.report is not None
    assert panel2.loss_plot.point_count() == (2, 2)
    assert (panel2.hidden_spin.value(), panel2.epochs_spin.value()) == (16, 2)

    assert panel2.open_run(run_dir) is not None  # the stacks are in the viewer: no new layers
    wait_idle(qtbot, panel2)
    assert len(viewer2.layers) == 2
    panel.shutdown()
    panel2.shutdown()


def test_open_non_run_folder_changes_nothing(make_napari_viewer, qtbot, errors, tmp_path):
    state = tiny_state()
    viewer = make_napari_viewer()
    panel = TrainingPanel(viewer, state)
    before = (state.stacks, state.window, state.model, state.history, state.model_version,
              state.run_dir, state.dataset)

    for folder in (tmp_path, tmp_path / "missing"):  # the folder is read in a worker
        worker = panel.open_run(folder)
        assert worker is not None and panel.opening
        assert not panel.open_button.isEnabled() and not panel.train_button.isEnabled()
        assert "opening run" in panel.status_label.text()
        wait_idle(qtbot, panel)
        assert not panel.opening and panel.open_button.isEnabled()
    assert len(errors) == 2 and "not a run folder" in errors[0]
    assert "does not exist" in errors[1]
    assert errors[1] in panel.status_label.text()
    assert (state.stacks, state.window, state.model, state.history, state.model_version,
            state.run_dir, state.dataset) == before
    assert len(viewer.layers) == 0
    panel.shutdown()


def test_learning_rate_field_steps_1_2_5(qtbot):
    spin = LearningRateSpinBox()
    qtbot.addWidget(spin)
    spin.setValue(1e-4)
    assert spin.text() == "0.0001"
    spin.stepBy(1)
    assert spin.value() == pytest.approx(2e-4)
    spin.stepBy(2)
    assert spin.value() == pytest.approx(1e-3)
    spin.stepBy(-4)
    assert spin.value() == pytest.approx(5e-5)


def test_history_from_rows_recomputes_best_epoch():
    rows = [{"epoch": 1, "train_mse": 0.5, "val_mse": 0.4, "seconds": 0.1, "best_val_mse": 0.4},
            {"epoch": 2, "train_mse": 0.3, "val_mse": 0.45, "seconds": 0.1, "best_val_mse": 0.4},
            {"epoch": 3, "train_mse": 0.2, "val_mse": 0.3, "seconds": 0.1, "best_val_mse": 0.3}]
    history = history_from_rows(rows, epochs=10)
    assert [r.best_epoch for r in history] == [1, 1, 3]
    assert history[0].epochs == 10


def test_shutdown_stops_and_waits_for_training(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=1000, batch_size=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(state.history) >= 1, timeout=WAIT_MS)
    watches = list(panel._workers.values())
    panel.shutdown()

    assert watches and all(watch.finished.is_set() for watch in watches)
    assert not state.training and not panel.is_busy
    assert len(state.history) < 1000
    panel.shutdown()  # a second call is harmless


def test_precision_field_trains_in_bf16_and_round_trips(make_napari_viewer, qtbot, errors,
                                                        tmp_path):
    state = tiny_state(epochs=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    assert panel.precision_combo.currentData() == "fp32"  # the paper's numerics by default
    panel.precision_combo.setCurrentIndex(panel.precision_combo.findData("bf16"))
    assert state.train_config.precision == "bf16"
    panel.train_button.click()
    assert "training on cpu in bf16" in panel.status_label.text()
    assert not panel.precision_combo.isEnabled()  # not changed under a running training
    wait_idle(qtbot, panel)
    assert errors == [] and len(state.history) == 2
    assert all(np.isfinite(r.val_mse) for r in state.history)
    assert panel.precision_combo.isEnabled()
    assert panel.save_run(tmp_path / "run") is not None
    wait_idle(qtbot, panel)

    state2 = CAEState()
    panel2 = TrainingPanel(make_napari_viewer(), state2)
    assert panel2.open_run(tmp_path / "run") is not None
    wait_idle(qtbot, panel2)
    assert state2.train_config.precision == "bf16"
    assert panel2.precision_combo.currentData() == "bf16"
    panel2.apply_preset("quick")  # a preset keeps the chosen precision, like the device
    assert state2.train_config.precision == "bf16"
    panel.shutdown()
    panel2.shutdown()
