"""Design by target: surrogate search, then decode, snap and measure every candidate."""

import numpy as np
import pytest

from napari_electrode_cae.core import design, io, metrics
from napari_electrode_cae.core.errors import ElectrodeCAEError
from tests.trained_tiny_run import fitted_report, trained


def _design(targets, **kwargs):
    model, data, _ = trained()
    kwargs.setdefault("candidates", 2)
    return design.design(
        model, fitted_report().predictor, targets, voxel_size_um=data.voxel_size_um, **kwargs
    )


def test_target_inside_the_training_range_is_reached_as_measured():
    lo, hi = fitted_report().predictor.value_range("pore_fraction")
    assert lo < 0.40 < hi
    result = _design(["pore_fraction=0.40:0.01"], candidates=1)
    assert result.reached
    best = result.candidates[0]
    assert best.meets_targets and best.rank == 1
    # measured on the decoded, snapped volume — not the surrogate's word
    assert abs(best.measured["pore_fraction"] - 0.40) <= 0.01
    assert best.measured["pore_fraction"] == pytest.approx(float(np.mean(best.labels == 0)))
    model, _, _ = trained()
    np.testing.assert_array_equal(design.decode_latent(model, best.latent), best.labels)
    low, high = result.latent_bounds
    assert np.all(best.latent >= low - 1e-9) and np.all(best.latent <= high + 1e-9)


def test_impossible_target_gets_nearest_values_and_the_binding_constraint():
    result = _design(["pore_fraction=0.99:0.005"], candidates=1)
    assert not result.reached
    assert not any(c.meets_targets for c in result.candidates)
    nearest = result.nearest["pore_fraction"]
    assert nearest < 0.985
    assert nearest == result.candidates[0].measured["pore_fraction"]
    assert any("outside the range the model was trained on" in b for b in result.binding)


def test_fraction_targets_that_cannot_add_up_name_the_conflict():
    result = _design(
        ["pore_fraction=0.70:0.01", "cbd_fraction>=0.4"],
        candidates=1,
        rounds=1,
        refine_evaluations=0,
    )
    assert not result.reached
    assert any("add up to 1" in b for b in result.binding)


def test_objective_alone_ranks_candidates_by_measured_value():
    result = _design([], maximize="ssa_active_per_um", candidates=2, rounds=1)
    values = [c.objective for c in result.candidates]
    assert values == sorted(values, reverse=True)
    assert all(c.meets_targets for c in result.candidates)  # no targets: nothing to miss


@pytest.mark.parametrize(
    "text, kind, value, tol",
    [
        ("pore_fraction=0.40:0.01", "equal", 0.40, 0.01),
        ("tortuosity_pore_z<=1.6", "at_most", 1.6, 0.0),
        ("cbd_fraction >= 0.12", "at_least", 0.12, 0.0),
    ],
)
def test_parse_target(text, kind, value, tol):
    t = design.parse_target(text)
    assert (t.kind, t.value, t.tolerance) == (kind, value, tol)


@pytest.mark.parametrize(
    "text, message",
    [
        ("porosity=0.4:0.01", "unknown metric"),
        ("pore_fraction=0.4", "needs a tolerance"),
        ("pore_fraction=1.5:0.01", "outside the possible values"),
        ("pore_fraction~0.4", "cannot read target"),
        ("pore_fraction<=0.4:0.1", "only goes with"),
    ],
)
def test_bad_targets_are_one_clear_error(text, message):
    with pytest.raises(ElectrodeCAEError, match=message):
        design.parse_target(text)


def test_target_on_a_metric_the_predictor_lacks_is_refused():
    with pytest.raises(ElectrodeCAEError, match="no regressor for tortuosity_pore_z"):
        _design(["tortuosity_pore_z<=1.6"])


def test_written_candidate_reads_back_exactly(tmp_path):
    result = _design(["pore_fraction=0.40:0.01"], candidates=1)
    paths = design.write_design(result, tmp_path / "out", voxel_size_um=0.398)
    stack = io.read_stack(tmp_path / "out" / "candidate_01.tif")
    np.testing.assert_array_equal(stack.labels, result.candidates[0].labels)
    assert stack.voxel_size_um == pytest.approx(0.398)
    latent = np.loadtxt(tmp_path / "out" / "candidate_01_latent.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(latent, result.candidates[0].latent, rtol=1e-7)
    assert (tmp_path / "out" / "design.json") in paths
    header = (tmp_path / "out" / "candidates.csv").read_text().splitlines()[0]
    assert "measured_pore_fraction" in header and "predicted_std_pore_fraction" in header
    assert metrics.get("pore_fraction")  # the table's names are the registry's
