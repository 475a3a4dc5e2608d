"""The metrics registry: declared once, read by physics, analysis and the tables."""

import math

import numpy as np
import pytest

from napari_electrode_cae.core import metrics, physics
from napari_electrode_cae.core.errors import ElectrodeCAEError
from tests.conftest import make_stack


@pytest.fixture
def labels():
    return make_stack(shape=(8, 24, 24), seed=3).labels


def test_microstructure_metrics_keys_are_the_registry_in_order(labels):
    report = physics.microstructure_metrics(labels, 0.4)
    assert list(report) == metrics.metric_names(0)
    assert list(report)[-1] == "tortuosity_pore_z"


def test_directional_metrics_take_the_axis_letter(labels):
    names = metrics.metric_names(2)
    assert "tortuosity_pore_x" in names and "pore_connected_fraction_x" in names
    assert list(physics.microstructure_metrics(labels, 0.4, axis=2)) == names
    assert metrics.get("tortuosity_pore_y").label == "Pore tortuosity factor (Y)"


def test_only_tortuosity_is_costly_and_can_be_left_out(labels):
    costly = [m.name for m in metrics.metrics_for_axis(0) if m.costly]
    assert costly == ["tortuosity_pore_z"]
    cheap = physics.microstructure_metrics(labels, 0.4, with_tortuosity=False)
    assert list(cheap) == metrics.metric_names(0, costly=False)


def test_every_metric_has_label_and_units_where_physical():
    for m in metrics.metrics_for_axis(0):
        assert m.label and m.label != m.name
    assert metrics.unit("ssa_active_per_um") == "µm⁻¹"
    assert metrics.unit("tpb_density_per_um2") == "µm⁻²"
    assert metrics.unit("pore_fraction") == ""


def test_registry_values_equal_the_physics_functions(labels):
    values = metrics.compute(labels, 0.5, ["ssa_active_per_um", "tortuosity_pore_x"])
    assert values["ssa_active_per_um"] == pytest.approx(
        physics.specific_surface_area(labels, "active", 0.5)
    )
    assert values["tortuosity_pore_x"] == pytest.approx(physics.tortuosity(labels, "pore", 2))


def test_unknown_metric_is_one_clear_error():
    with pytest.raises(ElectrodeCAEError, match="unknown metric 'porosity'.*pore_fraction"):
        metrics.get("porosity")


def test_format_value_uses_digits_unit_and_nan():
    assert metrics.format_value("ssa_active_per_um", 0.812345) == "0.8123 µm⁻¹"
    assert metrics.format_value("pore_fraction", math.nan) == "n/a"
    assert metrics.format_value("tortuosity_pore_z", math.inf) == "inf"
    assert metrics.table_header(["tpb_density_per_um2"])["tpb_density_per_um2"] == (
        "Triple-phase boundary density (µm⁻²)"
    )


def test_adding_a_metric_is_one_edit(monkeypatch, labels):
    extra = metrics.Metric(
        "solid_fraction",
        "Solid fraction",
        "",
        lambda lab, vs, axis, dev: float(np.mean(lab > 0)),
        lower=0.0,
        upper=1.0,
    )
    monkeypatch.setattr(metrics, "REGISTRY", (*metrics.REGISTRY, extra))
    report = physics.microstructure_metrics(labels, 0.4)
    assert report["solid_fraction"] == pytest.approx(1 - report["pore_fraction"])
    assert metrics.get("solid_fraction").label == "Solid fraction"
