"""A diverged or collapsed model is flagged in the Train and Results tabs, never shown as a
result; the Results tab judges the reconstruction by phases first (tiny data, CPU)."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from napari_electrode_cae import core
from napari_electrode_cae._widgets import training_panel as training_panel_module
from napari_electrode_cae._widgets import training_runs as training_runs_module
from napari_electrode_cae._widgets.results_panel import ResultsPanel
from napari_electrode_cae._widgets.state import CAEState
from napari_electrode_cae._widgets.training_panel import TrainingPanel

from .test_training_panel import WAIT_MS, tiny_state, wait_idle


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(training_panel_module, "show_error", shown.append)
    monkeypatch.setattr(training_panel_module, "show_info", lambda message: None)
    monkeypatch.setattr(training_runs_module, "show_info", lambda message: None)
    return shown


@pytest.fixture
def constant_decoder(monkeypatch):
    """Force a collapse: every new model's decoder ends in zero weights that do not learn, so
    it outputs one constant value (as tests/test_training_health.py does for the CLI)."""
    from napari_electrode_cae.core import model as model_module

    real_init = model_module.ConvAutoEncoder3d.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.decoder[-1].weight.data.zero_()
        self.decoder[-1].weight.requires_grad_(False)

    monkeypatch.setattr(model_module.ConvAutoEncoder3d, "__init__", init)


def panels(make_napari_viewer, state: CAEState) -> tuple[TrainingPanel, ResultsPanel]:
    viewer = make_napari_viewer()
    return TrainingPanel(viewer, state), ResultsPanel(viewer, state)


def one_value_paper_model(state: CAEState, rule: str = "fitted") -> None:
    state.model_settings = dataclasses.replace(
        state.model_settings, norm="none", output="value", phase_rule=rule
    )


def train_and_show(qtbot, train: TrainingPanel, results: ResultsPanel) -> None:
    train.train_button.click()
    wait_idle(qtbot, train)
    qtbot.waitUntil(lambda: results.idle and results._last_result is not None, timeout=WAIT_MS)


def test_a_diverged_run_is_flagged_in_both_tabs_and_saved_as_such(
    make_napari_viewer, qtbot, errors, tmp_path
):
    state = tiny_state(epochs=3, batch_size=8)
    one_value_paper_model(state)
    train, results = panels(make_napari_viewer, state)
    assert train.health_warning == "" and results.health_warning == ""
    train.lr_spin.setMaximum(1e9)  # the field stops at 1: an absurd rate forces a divergence
    train.lr_spin.setValue(1e9)
    assert state.train_config.lr == 1e9 and state.train_config.grad_clip == 0
    train_and_show(qtbot, train, results)

    assert errors == []
    assert len(state.history) == 1  # training stops at the first non-finite epoch
    warning = train.health_warning
    assert "training diverged" in warning and "lower the learning rate" in warning
    assert "ff5a4e" in train.health_label.styleSheet()  # red
    assert "diverged at epoch 1/3" in train.status_label.text()
    assert state.report.phases.health == "diverged"
    banner = results.health_warning
    assert "training diverged" in banner and "not a trained model" in banner
    assert state.report.phases.rule.startswith("nearest")  # no thresholds from NaN weights

    assert train.save_run(tmp_path / "run") is not None
    wait_idle(qtbot, train)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["health"]["state"] == "diverged"
    # reopened, the run is flagged before and after its evaluation
    state2 = CAEState()
    train2, results2 = panels(make_napari_viewer, state2)
    assert train2.open_run(tmp_path / "run") is not None
    wait_idle(qtbot, train2)
    assert "training diverged" in train2.health_warning
    assert state2.report.phases.health == "diverged"
    assert "training diverged" in results2.health_warning
    for panel in (train, results, train2, results2):
        panel.shutdown()


def test_a_collapsed_run_is_flagged_from_the_third_epoch_and_in_the_results(
    make_napari_viewer, qtbot, errors, constant_decoder, tmp_path
):
    state = tiny_state(epochs=4, batch_size=8)
    one_value_paper_model(state)
    train, results = panels(make_napari_viewer, state)
    shown = []  # (epochs so far, warning state) at every warning update
    show_health = train._show_health

    def recording(health):
        shown.append((len(state.history), None if health is None else health.state))
        show_health(health)

    train._show_health = recording
    train_and_show(qtbot, train, results)

    assert errors == []
    # Train hides the warning, each epoch updates it (not before the third), then the
    # evaluation of all validation windows confirms it
    assert shown == [
        (0, None),
        (1, None),
        (2, None),
        (3, "collapsed"),
        (4, "collapsed"),
        (4, "collapsed"),
    ]
    warning = train.health_warning
    assert "collapsed to the mean" in warning and "learning rate" in warning
    assert "f0a030" in train.health_label.styleSheet()  # orange
    assert state.report.phases.collapsed and state.report.phases.spread < 0.15
    banner = results.health_warning
    assert "collapsed to the mean" in banner and "not a result" in banner
    assert not results.phases_table.isHidden()  # the numbers stay, below the warning

    assert train.save_run(tmp_path / "run") is not None
    wait_idle(qtbot, train)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["health"]["state"] == "collapsed"
    train.shutdown()
    results.shutdown()


def test_results_tab_shows_the_phases_of_all_validation_windows(make_napari_viewer, qtbot, errors):
    state = tiny_state(epochs=2, batch_size=8)  # the quick preset's three-phase output
    train, results = panels(make_napari_viewer, state)
    train_and_show(qtbot, train, results)
    assert errors == []

    p = state.report.phases
    assert p.windows == len(state.split.val)
    assert p.rule.startswith("argmax with offsets fitted")  # the quick preset's rule
    title = results.phases_title.text()
    assert f"all {p.windows} validation windows, {p.rule}" in title
    texts = results.phases_table.texts()
    fractions = p.phase_fractions
    for phase, label in (("pore", "Pore"), ("cbd", "CBD"), ("active", "Active")):
        row = texts.index(label)
        iou = p.phase_iou[phase]
        assert texts[row + 1 : row + 4] == [
            f"{fractions['original'][phase]:.1%}",
            f"{fractions['reconstruction'][phase]:.1%}",
            f"{iou:.2f}" if iou == iou else "–",
        ]
    assert f"{p.voxel_accuracy:.1%}" in texts
    assert any(f"{p.val_nmse:.3f}" in text for text in texts)
    tpb = p.tpb_density_per_um2
    assert f"{tpb['original']:.4f}" in texts and f"{tpb['reconstruction']:.4f}" in texts
    # the paper's statistics follow, with the Table 7 window named plainly
    mse_texts = results.mse_table.texts()
    assert "Table 7 window" in mse_texts
    assert f"{state.report.window.window} (seeded random validation window)" in mse_texts
    # a healthy model: no warning anywhere
    assert p.health == "ok" or results.health_warning
    if p.health == "ok":
        assert train.health_warning == "" and results.health_warning == ""
    train.shutdown()
    results.shutdown()


@pytest.mark.parametrize(
    "output, unfitted, fitted_text, unfitted_text",
    [
        ("value", "nearest", "thresholds fitted to the training fractions", "nearest value"),
        ("phases", "argmax", "argmax with offsets fitted to the training fractions", "argmax"),
    ],
)
def test_models_use_the_chosen_phase_rule(
    make_napari_viewer, qtbot, errors, output, unfitted, fitted_text, unfitted_text
):
    state = tiny_state(epochs=1, batch_size=8)
    one_value_paper_model(state, "fitted")
    state.model_settings = dataclasses.replace(state.model_settings, output=output)
    train = TrainingPanel(make_napari_viewer(), state)
    assert train.phase_rule_combo.isEnabled()
    train.train_button.click()
    wait_idle(qtbot, train)
    assert state.model.phase_rule.name == "fitted"
    assert state.report.phases.rule.startswith(fitted_text)

    train.phase_rule_combo.setCurrentIndex(train.phase_rule_combo.findData("nearest"))
    assert state.model_settings.phase_rule == "nearest"  # the unfitted rule
    train.train_button.click()
    wait_idle(qtbot, train)
    assert errors == []
    assert state.model.phase_rule.name == unfitted
    assert state.report.phases.rule.startswith(unfitted_text)
    train.shutdown()


def test_evaluation_counts_the_windows_in_the_progress_bar(
    make_napari_viewer, qtbot, errors, monkeypatch
):
    monkeypatch.setattr(training_panel_module, "EVALUATION_POLL_MS", 10)
    seen = threading.Event()
    evaluate = core.evaluate

    def held_evaluate(*args, progress=None, **kwargs):
        progress(3, 99)  # as core.evaluate reports after its first windows
        seen.wait(20)
        return evaluate(*args, progress=progress, **kwargs)

    monkeypatch.setattr(core, "evaluate", held_evaluate)
    state = tiny_state(epochs=1, batch_size=8)
    train = TrainingPanel(make_napari_viewer(), state)
    train.train_button.click()
    try:
        qtbot.waitUntil(
            lambda: train.progress_bar.text() == "evaluating 3 / 99 windows", timeout=WAIT_MS
        )
    finally:
        seen.set()
    wait_idle(qtbot, train)
    assert errors == [] and state.report is not None
    # afterwards the bar shows the training's batches again
    assert train.progress_bar.format() == "%v / %m batches"
    assert train.progress_bar.value() == train.progress_bar.maximum()
    train.shutdown()


def test_batch_norm_with_a_batch_of_one_window_is_refused_up_front(make_napari_viewer, errors):
    state = tiny_state(epochs=1, batch_size=1)  # crop 16: a 1×1 bottleneck
    assert state.model_settings.norm == "batch"
    train = TrainingPanel(make_napari_viewer(), state)
    train.train_button.click()
    assert len(errors) == 1 and "batch norm cannot train on one window at a time" in errors[0]
    assert "batch size 1" in errors[0]
    assert not train.is_busy and state.model is None
    train.shutdown()
