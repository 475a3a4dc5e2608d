"""Phase rules turn network output into phases; PhaseScores judge them against the original."""

import numpy as np
import pytest

from napari_electrode_cae.core import ModelConfigError, PhaseRule, PhaseScores
from napari_electrode_cae.core.phases import fit_offsets, fit_thresholds


def test_nearest_rule_is_the_papers_half_way_thresholds():
    values = np.array([[-0.9, -0.51, -0.49, 0.0, 0.49, 0.51, 0.9]], dtype=np.float32)
    assert PhaseRule("nearest").labels(values).tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_nearest_rule_invents_cbd_on_a_blurred_pore_active_edge_and_fitted_thresholds_do_not():
    # a pore|active edge blurred over a few voxels, as a smooth decoder outputs it
    x = np.linspace(-3, 3, 61)
    edge = np.tanh(x)[None, :].astype(np.float32)  # -1 .. +1 across the edge
    nearest = PhaseRule("nearest").labels(edge)
    assert (nearest == 1).sum() >= 6  # a CBD shell that is not in the data
    fitted = fit_thresholds(edge, {"pore": 0.5, "cbd": 0.0, "active": 0.5})
    assert (fitted.labels(edge) == 1).sum() <= 1


def test_fitted_thresholds_reproduce_the_target_fractions():
    values = np.random.default_rng(0).normal(size=(1, 20, 20, 20)).astype(np.float32)
    target = {"pore": 0.45, "cbd": 0.15, "active": 0.40}
    rule = fit_thresholds(values, target)
    labels = rule.labels(values)
    fractions = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert fractions == pytest.approx([0.45, 0.15, 0.40], abs=0.002)
    assert rule.name == "fitted" and rule.thresholds[0] < rule.thresholds[1]


def test_argmax_rule_takes_the_most_likely_phase():
    logits = np.zeros((3, 2, 2), dtype=np.float32)
    logits[0, 0, 0] = logits[1, 0, 1] = logits[2, 1, :] = 5
    assert PhaseRule("argmax").labels(logits).tolist() == [[0, 1], [2, 2]]


def test_a_rule_that_does_not_fit_the_channels_says_so():
    with pytest.raises(ModelConfigError, match="3 phase channels take argmax"):
        PhaseRule("argmax").labels(np.zeros((1, 4)))
    with pytest.raises(ModelConfigError, match="one channel takes nearest"):
        PhaseRule("nearest").labels(np.zeros((3, 4)))


def test_bad_rules_are_refused():
    with pytest.raises(ModelConfigError, match="phase rule"):
        PhaseRule("otsu")
    with pytest.raises(ModelConfigError, match="ordered"):
        PhaseRule("fitted", (0.5, -0.5))
    with pytest.raises(ModelConfigError, match="finite"):
        fit_thresholds(np.array([np.nan, 1.0]), {"pore": 0.5, "cbd": 0.2, "active": 0.3})


def test_rule_round_trips_through_its_dict_and_old_runs_mean_nearest():
    rule = PhaseRule("fitted", (-0.3, 0.25))
    assert PhaseRule.from_dict(rule.to_dict()) == rule
    assert PhaseRule.from_dict(None) == PhaseRule("nearest")


def test_phase_scores_give_accuracy_iou_and_fractions():
    original = np.array([0, 0, 1, 2, 2, 2])
    recon = np.array([0, 1, 1, 2, 2, 0])
    scores = PhaseScores()
    scores.add(original, recon)
    assert scores.voxel_accuracy == pytest.approx(4 / 6)
    assert scores.fractions("original") == pytest.approx(
        {"pore": 2 / 6, "cbd": 1 / 6, "active": 3 / 6}
    )
    assert scores.fractions("reconstruction") == pytest.approx(
        {"pore": 2 / 6, "cbd": 2 / 6, "active": 2 / 6}
    )
    iou = scores.iou()
    assert iou["pore"] == pytest.approx(1 / 3)  # 1 shared of {0,1,5}
    assert iou["cbd"] == pytest.approx(1 / 2)
    assert iou["active"] == pytest.approx(2 / 3)


def test_a_phase_missing_from_both_has_no_iou():
    scores = PhaseScores()
    scores.add(np.zeros(4), np.zeros(4))
    assert np.isnan(scores.iou()["cbd"]) and scores.iou()["pore"] == 1.0


def test_fitted_offsets_bring_back_a_phase_that_argmax_loses():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50_000)).astype(np.float32)
    logits[1] -= 2.0  # CBD is never the most likely phase
    assert (PhaseRule("argmax").labels(logits) == 1).mean() < 0.05
    rule = fit_offsets(logits, {"pore": 0.45, "cbd": 0.15, "active": 0.40})
    fractions = np.bincount(rule.labels(logits), minlength=3) / logits.shape[1]
    assert fractions == pytest.approx([0.45, 0.15, 0.40], abs=0.01)
    assert "offsets fitted" in rule.describe()
    assert PhaseRule.from_dict(rule.to_dict()) == rule


def test_a_fitted_three_phase_rule_says_offsets_even_when_they_are_zero():
    logits = np.stack([np.full(100, 1.0), np.zeros(100), np.zeros(100)]).astype(np.float32)
    logits[2, 50:] = 2.0
    logits[1, 40:50] = 3.0  # argmax already gives 40/10/50
    rule = fit_offsets(logits, {"pore": 0.4, "cbd": 0.1, "active": 0.5})
    assert rule.channels == 3 and "offsets fitted" in rule.describe()
    assert PhaseRule.from_dict(rule.to_dict()) == rule
