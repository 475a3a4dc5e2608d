"""TrainingPanel: Train / Stop / errors, presets, Save run and Open run (tiny data, CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_electrode_cae import core
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets.state import CAEState, ModelSettings
from napari_electrode_cae._widgets.training_jobs import (
    TrainingPlan,
    matching_preset,
    settings_of_preset,
)
from napari_electrode_cae._widgets.training_panel import (
    LearningRateSpinBox,
    TrainingPanel,
    history_from_rows,
)
from tests.conftest import make_stack

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
    state.stacks = (
        make_stack(shape, seed=0, name="cal"),
        make_stack(shape, seed=1, name="uncal", calendered=False),
    )
    state.stack_layers = ("cal", "uncal")
    state.window = TINY_WINDOW
    state.rebuild_dataset()
    state.model_settings = ModelSettings(conv_layers=3, hidden=16, latent_dim=3)
    state.train_config = core.TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=3e-3, device="cpu"
    )
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
    # the real total from the start (2 epochs of ceil(training windows / 8) batches)
    batches = -(-len(state.split.train) // 8)
    assert panel.progress_bar.maximum() == 2 * batches
    assert panel.progress_bar.format() == "%v / %m batches"
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
    assert "voxel accuracy" in panel.status_label.text()  # judged by phases first
    assert "took" in panel.plan_label.text()
    panel.shutdown()


def test_train_tab_shows_batches_at_once_then_an_estimate(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=1000, batch_size=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    plan = TrainingPlan.of(
        state.dataset, state.split.train, state.split.val, panel.train_config_from_fields()
    )
    assert plan.batches_per_epoch == -(-len(state.split.train) // 2) > 5
    # before Train: the planned run, and the bar's real total (no "0 / 100" placeholder)
    assert panel.plan_label.text() == f"planned: {plan.describe()}"
    assert panel.progress_bar.text() == f"0 / {1000 * plan.batches_per_epoch} batches"
    panel.batch_spin.setValue(4)
    assert panel.progress_bar.maximum() == 1000 * -(-len(state.split.train) // 4)
    panel.batch_spin.setValue(2)
    times: list[str] = []  # every time line the plan label shows
    show_plan = panel._show_plan

    def recording(time_text=""):
        times.append(time_text)
        show_plan(time_text)

    panel._show_plan = recording
    panel.train_button.click()
    # before the worker has run a single batch: windows, batches and the bar's real total
    assert panel.progress_bar.maximum() == 1000 * plan.batches_per_epoch
    assert panel.progress_bar.value() == 0 and "batches" in panel.progress_bar.text()
    text = panel.plan_label.text()
    assert not panel.plan_label.isHidden()
    assert f"{plan.train_windows} training, {plan.val_windows} validation (blocked split)" in text
    assert f"1,000 epochs × {plan.batches_per_epoch} batches of 2" in text
    assert times == ["estimating the time from the first batches…"]
    qtbot.waitUntil(lambda: len(state.history) >= 2, timeout=WAIT_MS)
    panel.stop_button.click()
    wait_idle(qtbot, panel)
    assert errors == []
    # from the first batches (TimeEstimate: 5 batches after a warm-up one), then from
    # finished epochs what is left, and at the end how long it took
    assert times[1].startswith("estimated training time: about")
    assert "1000 epochs" in times[1]
    left = [t for t in times[2:] if " left (" in t]
    assert len(left) >= 2 and times.index(left[0]) == 2
    assert times[-1].startswith("took ") and panel.plan_label.text().endswith(times[-1])
    panel.shutdown()


def test_windows_per_epoch_sets_the_batches(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=2, batch_size=4)
    panel = TrainingPanel(make_napari_viewer(), state)
    assert panel.windows_per_epoch_spin.text() == "all"
    panel.windows_per_epoch_spin.setValue(8)
    assert state.train_config.windows_per_epoch == 8
    panel.train_button.click()
    assert panel.progress_bar.maximum() == 2 * 2  # 8 windows in batches of 4, twice
    assert f"(8 of {len(state.split.train)} training windows per epoch)" in panel.plan_label.text()
    wait_idle(qtbot, panel)
    assert errors == [] and panel.progress_bar.value() == 4
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
    # batch norm cannot train one 16² window at a time (1×1 bottleneck): the paper's model
    state.model_settings = dataclasses.replace(state.model_settings, norm="none")
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    panel.stop_button.click()
    wait_idle(qtbot, panel)

    assert state.history == () and state.model is None and state.model_version == 0
    assert not state.training and panel.train_button.isEnabled()
    assert "before the first epoch" in panel.status_label.text()
    panel.shutdown()


def test_training_error_is_reported_and_clears_training(
    make_napari_viewer, qtbot, errors, monkeypatch
):
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
    assert state.model_settings == ModelSettings(3, 128, 10, "none", "value", "nearest")
    assert (
        panel.norm_combo.currentData(),
        panel.output_combo.currentData(),
        panel.phase_rule_combo.currentData(),
    ) == ("none", "value", "nearest")
    assert panel.phase_rule_combo.isEnabled()
    assert (state.train_config.epochs, state.train_config.lr) == (3500, pytest.approx(1e-4))
    assert state.dataset is None and "24" in state.window_error  # 12-slice stacks are too thin
    assert "3,113,579 parameters" in panel.model_summary_label.text()  # Table 3
    assert panel.preset_combo.currentText() == "paper"

    panel.hidden_spin.setValue(64)
    assert state.model_settings.hidden == 64
    assert panel.preset_combo.currentText() == "custom"
    panel.shutdown()


def test_presets_round_trip_through_the_settings(make_napari_viewer, errors):
    state = tiny_state()
    panel = TrainingPanel(make_napari_viewer(), state)
    for name, preset in core.PRESETS.items():
        panel.apply_preset(name)
        assert panel.preset_combo.currentText() == name
        assert state.model_settings == settings_of_preset(preset)
        assert panel.model_settings_from_fields() == state.model_settings
        config = panel.train_config_from_fields()
        assert config == state.train_config
        for field in (
            "epochs",
            "batch_size",
            "windows_per_epoch",
            "warmup_epochs",
            "schedule",
            "phase_loss",
        ):
            assert getattr(config, field) == getattr(preset.train, field), field
        assert config.lr == pytest.approx(preset.train.lr)
        assert config.grad_clip == pytest.approx(preset.train.grad_clip)
        assert matching_preset(state.model_settings, config, state.window) == name
        one_value = preset.output == "value"
        assert panel.phase_rule_combo.isEnabled()  # fitted or not, for both output kinds
        assert panel.phase_rule_combo.currentData() == preset.phase_rule
        unfitted = panel.phase_rule_combo.itemText(panel.phase_rule_combo.findData("nearest"))
        assert unfitted == ("nearest value (paper)" if one_value else "plain argmax")
        assert panel.phase_loss_combo.isEnabled() == (not one_value)
    assert errors == []

    # every new option is compared: changing one makes the settings custom, undoing it not
    panel.apply_preset("quick")
    quick = core.get_preset("quick")
    changes = [
        (panel.norm_combo, "group", quick.norm),
        (panel.output_combo, "value", quick.output),
        (panel.schedule_combo, "constant", quick.train.schedule),
        (
            panel.phase_loss_combo,
            "ce" if quick.train.phase_loss != "ce" else "ce_dice",
            quick.train.phase_loss,
        ),
    ]
    for combo, other, original in changes:
        combo.setCurrentIndex(combo.findData(other))
        assert panel.preset_combo.currentText() == "custom", other
        combo.setCurrentIndex(combo.findData(original))
        assert panel.preset_combo.currentText() == "quick", original
    for spin, other, original in (
        (panel.windows_per_epoch_spin, 0, quick.train.windows_per_epoch),
        (panel.warmup_spin, 0, quick.train.warmup_epochs),
        (panel.grad_clip_spin, 0.0, quick.train.grad_clip),
    ):
        spin.setValue(other)
        assert panel.preset_combo.currentText() == "custom"
        spin.setValue(original)
        assert panel.preset_combo.currentText() == "quick"
    assert state.train_config == dataclasses.replace(
        quick.train, split=state.split_mode, device=state.train_config.device
    )
    # the phase rule counts too
    panel.phase_rule_combo.setCurrentIndex(panel.phase_rule_combo.findData("nearest"))
    assert state.model_settings.phase_rule == "nearest"
    assert panel.preset_combo.currentText() == "custom"
    panel.apply_preset("paper")
    panel.phase_rule_combo.setCurrentIndex(panel.phase_rule_combo.findData("fitted"))
    assert state.model_settings.phase_rule == "fitted"
    assert panel.preset_combo.currentText() == "custom"
    panel.shutdown()


def test_split_default_follows_the_core_in_terms_the_windows_tab_offers():
    quick = core.get_preset("quick")
    state = CAEState()
    assert core.TrainConfig().split == "auto"
    assert state.split_mode == core.windows.resolve_split("auto", quick.window) == "blocked"
    assert state.model_settings == settings_of_preset(quick)
    assert matching_preset(state.model_settings, state.train_config, state.window) == "quick"


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
        assert (b.train_mse, b.val_mse) == (
            pytest.approx(a.train_mse, rel=1e-6),
            pytest.approx(a.val_mse, rel=1e-6),
        )
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
    assert panel2.progress_bar.text() == "2 / 2 epochs trained"
    assert state2.report.phases.rule == state.report.phases.rule  # the saved rule is kept

    assert panel2.open_run(run_dir) is not None  # the stacks are in the viewer: no new layers
    wait_idle(qtbot, panel2)
    assert len(viewer2.layers) == 2
    panel.shutdown()
    panel2.shutdown()


def test_open_non_run_folder_changes_nothing(make_napari_viewer, qtbot, errors, tmp_path):
    state = tiny_state()
    viewer = make_napari_viewer()
    panel = TrainingPanel(viewer, state)
    before = (
        state.stacks,
        state.window,
        state.model,
        state.history,
        state.model_version,
        state.run_dir,
        state.dataset,
    )

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
    assert (
        state.stacks,
        state.window,
        state.model,
        state.history,
        state.model_version,
        state.run_dir,
        state.dataset,
    ) == before
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
    rows = [
        {"epoch": 1, "train_mse": 0.5, "val_mse": 0.4, "seconds": 0.1, "best_val_mse": 0.4},
        {"epoch": 2, "train_mse": 0.3, "val_mse": 0.45, "seconds": 0.1, "best_val_mse": 0.4},
        {"epoch": 3, "train_mse": 0.2, "val_mse": 0.3, "seconds": 0.1, "best_val_mse": 0.3},
    ]
    history = history_from_rows(rows, epochs=10)
    assert [r.best_epoch for r in history] == [1, 1, 3]
    assert history[0].epochs == 10


def test_shutdown_stops_and_waits_for_training(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=1000, batch_size=2)
    panel = TrainingPanel(make_napari_viewer(), state)
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(state.history) >= 1, timeout=WAIT_MS)
    watches = panel.workers.watches()
    panel.shutdown()

    assert watches and all(watch.finished.is_set() for watch in watches)
    assert not state.training and not panel.is_busy
    assert len(state.history) < 1000
    panel.shutdown()  # a second call is harmless


def test_precision_field_trains_in_bf16_and_round_trips(
    make_napari_viewer, qtbot, errors, tmp_path
):
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
