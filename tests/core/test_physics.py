"""Microstructure descriptors: analytic cases, TauFactor reference values, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, stats

from napari_electrode_cae.core.errors import ElectrodeCAEError
from napari_electrode_cae.core.physics import (
    PhysicsError,
    compare_metrics,
    connected_fraction,
    interface_area_density,
    microstructure_metrics,
    percolating_mask,
    specific_surface_area,
    tortuosity,
    triple_phase_boundary_density,
)

PORE, CBD, ACTIVE = 0, 1, 2


def blob(seed: int, porosity: float, sigma: float, cbd: float = 0.0, shape=(20, 40, 40)):
    """Smooth random 3-phase volume: pore below the ``porosity`` quantile, then CBD, then active.

    The construction used for the TauFactor comparison in the ``physics`` module docstring.
    """
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return np.digitize(field, np.quantile(field, [porosity, porosity + cbd])).astype(np.uint8)


@pytest.fixture(scope="module")
def three_phase_blob() -> np.ndarray:
    labels = blob(7, 0.40, 2.0, cbd=0.12)
    assert np.bincount(labels.ravel()).tolist() == [12800, 3840, 15360]
    return labels


# --------------------------------------------------------------------------- surfaces


def test_ssa_of_half_active_half_pore_block_is_one_plane_per_volume():
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[:, :, :4] = ACTIVE  # interface: one Z×Y plane of 4×6 faces
    vs = 0.5
    expected = 4 * 6 * vs**2 / (labels.size * vs**3)
    assert specific_surface_area(labels, "active", vs) == pytest.approx(expected)
    assert specific_surface_area(labels, "pore", vs) == pytest.approx(expected)
    assert interface_area_density(labels, "pore", ("cbd", "active"), vs) == pytest.approx(expected)
    assert interface_area_density(labels, "active", "pore", vs) == pytest.approx(expected)
    assert interface_area_density(labels, "cbd", "pore", vs) == 0.0
    # µm⁻¹ scales as 1 / voxel size
    assert specific_surface_area(labels, "active", 2 * vs) == pytest.approx(expected / 2)


def test_ssa_counts_six_faces_of_an_isolated_voxel_and_ignores_the_outer_boundary():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[2, 2, 2] = CBD
    assert specific_surface_area(labels, "cbd", 1.0) == pytest.approx(6 / 125)
    labels[0, 0, 0] = ACTIVE  # corner voxel: only 3 interior faces
    assert specific_surface_area(labels, "active", 1.0) == pytest.approx(3 / 125)
    assert specific_surface_area(np.full((3, 3, 3), ACTIVE, np.uint8), "active") == 0.0
    assert specific_surface_area(labels, ("pore", "cbd", "active")) == 0.0


def test_interface_face_counts_match_taufactor(three_phase_blob):
    # taufactor.metrics.interfacial_areas(labels, normalize=False) (taufactor 1.2.1):
    # {(0, 1): 7129, (0, 2): 2991, (1, 2): 7704}
    n = three_phase_blob.size
    for a, b, faces in [("pore", "cbd", 7129), ("pore", "active", 2991), ("cbd", "active", 7704)]:
        assert interface_area_density(three_phase_blob, a, b, 1.0) * n == pytest.approx(faces)
    assert specific_surface_area(three_phase_blob, "active", 1.0) * n == pytest.approx(2991 + 7704)


# --------------------------------------------------------------------------- TPB


def test_tpb_of_a_2x2_column_configuration():
    # Four columns along Z meet at one edge line: pore, cbd, active, active around it.
    labels = np.empty((3, 2, 2), np.uint8)
    labels[:, 0, 0], labels[:, 0, 1], labels[:, 1, 0], labels[:, 1, 1] = PORE, CBD, ACTIVE, ACTIVE
    vs = 0.4
    # 3 interior edges along Z (one per layer); edges along Y and X see at most 2 phases.
    expected = 3 * vs / (labels.size * vs**3)
    assert triple_phase_boundary_density(labels, vs) == pytest.approx(expected)
    labels[:, 1, 0] = CBD  # only pore and CBD left at the edge: no triple line
    labels[:, 1, 1] = CBD
    assert triple_phase_boundary_density(labels, vs) == 0.0


def test_tpb_is_zero_without_three_phases_and_matches_taufactor(three_phase_blob):
    assert triple_phase_boundary_density(np.where(three_phase_blob == 1, 0, three_phase_blob)) == 0
    # taufactor.metrics.triple_phase_boundary(labels) * number of interior edges = 6908
    n = three_phase_blob.size
    assert triple_phase_boundary_density(three_phase_blob, 1.0) * n == pytest.approx(6908)


# --------------------------------------------------------------------------- connectivity


def test_connected_fraction_of_a_channel_plus_an_isolated_blob():
    labels = np.full((10, 8, 8), ACTIVE, np.uint8)
    labels[:, 2, 2] = PORE  # through-channel along Z: 10 voxels
    labels[4:6, 5:7, 5:7] = PORE  # isolated blob: 8 voxels
    assert connected_fraction(labels, "pore", axis=0) == pytest.approx(10 / 18)
    assert connected_fraction(labels, "pore", axis=1) == 0.0
    assert connected_fraction(labels, "active", axis=2) == 1.0
    assert connected_fraction(labels, "cbd", axis=0) == 0.0  # absent phase
    mask = percolating_mask(labels, "pore", axis=0)
    assert mask.sum() == 10 and mask[:, 2, 2].all()


def test_connected_fraction_uses_face_connectivity():
    labels = np.full((4, 3, 3), ACTIVE, np.uint8)
    for z in range(4):  # a diagonal staircase touches only along edges: not 6-connected
        labels[z, z % 2, z % 2] = PORE
    assert connected_fraction(labels, "pore", 0) == 0.0


def test_connected_fractions_match_taufactor(three_phase_blob):
    # taufactor.metrics.extract_through_feature(labels, phase, "x")[1]
    assert connected_fraction(three_phase_blob, "pore", 0) == pytest.approx(0.9978125, abs=1e-6)
    assert connected_fraction(three_phase_blob, "cbd", 0) == pytest.approx(0.2721354, abs=1e-6)
    assert connected_fraction(three_phase_blob, "active", 0) == pytest.approx(0.9895182, abs=1e-6)


# --------------------------------------------------------------------------- tortuosity


def test_tortuosity_of_an_open_block_is_one():
    assert tortuosity(np.zeros((5, 6, 7), np.uint8)) == pytest.approx(1.0, abs=1e-12)
    assert tortuosity(np.zeros((5, 6, 7), np.uint8), axis=2) == pytest.approx(1.0, abs=1e-12)
    assert tortuosity(np.full((4, 5, 5), ACTIVE, np.uint8), ("cbd", "active")) == pytest.approx(1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_tortuosity_of_straight_channels_is_one(axis):
    labels = np.full((9, 10, 11), ACTIVE, np.uint8)
    index = [slice(None)] * 3
    others = [a for a in range(3) if a != axis]
    index[others[0]] = slice(0, None, 3)
    index[others[1]] = slice(1, None, 2)
    labels[tuple(index)] = PORE
    assert tortuosity(labels, "pore", axis) == pytest.approx(1.0, abs=1e-9)


def test_tortuosity_of_a_single_layer_is_one():
    labels = blob(3, 0.5, 1.0, shape=(1, 12, 12))
    assert tortuosity(labels, "pore", 0) == pytest.approx(1.0, abs=1e-9)


def test_tortuosity_is_infinite_without_a_percolating_path():
    labels = np.zeros((6, 5, 5), np.uint8)
    labels[3] = ACTIVE  # a closed layer blocks transport along Z
    assert tortuosity(labels, "pore", 0) == math.inf
    assert tortuosity(labels, "pore", 1) == pytest.approx(1.0)  # open along Y
    assert tortuosity(labels, "cbd", 0) == math.inf  # absent phase


STAIRCASE = [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3), (2, 3), (3, 3)]  # (z, y), 7 voxels


def staircase(width_x: int = 1) -> np.ndarray:
    labels = np.full((4, 4, width_x), ACTIVE, np.uint8)
    for z, y in STAIRCASE:
        labels[z, y, 0] = PORE
    return labels


def test_tortuosity_of_a_staircase_channel_is_path_length_over_thickness_squared():
    # A chain of m voxels from face to face has resistance 1/2 + (m - 1) + 1/2 = m, so with
    # L layers and cross-section A: D_rel = L / (m A), eps = m / (L A), tau = (m / L)².
    assert tortuosity(staircase(), "pore", 0) == pytest.approx((7 / 4) ** 2, rel=1e-9)


def test_tortuosity_of_parallel_channels_adds_conductances():
    labels = staircase(width_x=3)
    labels[:, 0, 2] = PORE  # a straight channel (m = 4) beside the staircase (m = 7)
    n_layers, area = 4, 4 * 3
    eps = (7 + 4) / labels.size
    relative_diffusivity = (1 / 7 + 1 / 4) * n_layers / area
    expected = eps / relative_diffusivity
    assert tortuosity(labels, "pore", 0) == pytest.approx(expected, rel=1e-9)


def test_isolated_clusters_count_in_the_volume_fraction_as_in_taufactor():
    labels = np.full((6, 6, 6), ACTIVE, np.uint8)
    labels[:, 1, 1] = PORE  # straight channel: 6 voxels
    assert tortuosity(labels) == pytest.approx(1.0)
    labels[2:4, 3:5, 3:5] = PORE  # isolated 8-voxel pore: eps grows, D_eff does not
    assert tortuosity(labels) == pytest.approx(14 / 6)


def test_tortuosity_does_not_depend_on_how_the_volume_is_oriented():
    labels = blob(11, 0.4, 1.5, shape=(10, 12, 14))
    tau = tortuosity(labels, "pore", 0)
    assert tortuosity(np.ascontiguousarray(labels.transpose(2, 1, 0)), "pore", 2) == pytest.approx(
        tau, rel=1e-6
    )
    assert tortuosity(labels[::-1].copy(), "pore", 0) == pytest.approx(tau, rel=1e-6)


# TauFactor 1.2.1 reference values: taufactor.Solver(mask, device="cpu").solve(conv_crit=1e-5,
# iter_limit=200000) on the mask of the phase moved so that the flux axis comes first
# (float32 SOR; see the table in the physics module docstring).
TAUFACTOR_BLOBS = [
    # seed, porosity, sigma, cbd, phase, axis, tau
    (0, 0.30, 2.0, 0.0, "pore", 0, 4.839239597),
    (6, 0.20, 2.0, 0.0, "pore", 0, 9.245019912),
    (7, 0.40, 2.0, 0.12, "pore", 0, 2.626317024),
    (7, 0.40, 2.0, 0.12, "pore", 1, 4.307446956),
    (7, 0.40, 2.0, 0.12, "pore", 2, 3.047942399),
    (7, 0.40, 2.0, 0.12, ("cbd", "active"), 0, 1.493289351),
    (7, 0.40, 2.0, 0.12, "active", 0, 1.748814463),
    (7, 0.40, 2.0, 0.12, "cbd", 0, 67.73815155),  # TauFactor stopped at its iteration limit
]


@pytest.mark.parametrize("seed,porosity,sigma,cbd,phase,axis,expected", TAUFACTOR_BLOBS)
def test_tortuosity_matches_taufactor(seed, porosity, sigma, cbd, phase, axis, expected):
    labels = blob(seed, porosity, sigma, cbd)
    assert tortuosity(labels, phase, axis) == pytest.approx(expected, rel=1e-5)


def test_torch_solver_agrees_with_scipy_solver():
    pytest.importorskip("torch")
    labels = blob(7, 0.40, 2.0, 0.12)
    assert tortuosity(labels, "pore", 2, device="cpu") == pytest.approx(3.047942399, rel=2e-5)
    assert tortuosity(staircase(), device="cpu") == pytest.approx((7 / 4) ** 2, rel=1e-9)
    assert tortuosity(np.zeros((3, 4, 5), np.uint8), device="cpu") == pytest.approx(1.0)


def test_solver_device_choice():
    torch = pytest.importorskip("torch")
    labels = staircase()
    assert tortuosity(labels, device="auto") == pytest.approx((7 / 4) ** 2, rel=1e-9)
    with pytest.raises(PhysicsError, match="unknown device"):
        tortuosity(labels, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PhysicsError, match="CUDA is not available"):
            tortuosity(labels, device="cuda")


def test_tortuosity_warns_when_the_iteration_limit_is_reached():
    labels = blob(0, 0.30, 2.0)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        tau = tortuosity(labels, max_iter=2)
    assert 1.0 < tau < 4.839239597 * 1.0001  # an underestimate from the dissipated power


# --------------------------------------------------------------------------- summaries


def test_microstructure_metrics_collects_every_descriptor(three_phase_blob):
    metrics = microstructure_metrics(three_phase_blob, 0.398)
    assert list(metrics) == [
        "pore_fraction", "cbd_fraction", "active_fraction", "ssa_active_per_um",
        "ssa_pore_solid_per_um", "tpb_density_per_um2", "pore_connected_fraction_z",
        "active_connected_fraction_z", "cbd_connected_fraction_z", "tortuosity_pore_z",
    ]  # fmt: skip
    assert metrics["pore_fraction"] == pytest.approx(12800 / 32000)
    assert metrics["cbd_fraction"] == pytest.approx(3840 / 32000)
    n = three_phase_blob.size
    assert metrics["ssa_active_per_um"] == pytest.approx((2991 + 7704) / (n * 0.398))
    assert metrics["ssa_pore_solid_per_um"] == pytest.approx((7129 + 2991) / (n * 0.398))
    assert metrics["tpb_density_per_um2"] == pytest.approx(6908 / (n * 0.398**2))
    assert metrics["cbd_connected_fraction_z"] == pytest.approx(0.2721354, abs=1e-6)
    assert metrics["tortuosity_pore_z"] == pytest.approx(2.626317024, rel=2e-5)
    along_x = microstructure_metrics(three_phase_blob, axis=2)
    assert along_x["tortuosity_pore_x"] == pytest.approx(3.047942399, rel=2e-5)
    assert "tortuosity_pore_z" not in along_x


def test_compare_metrics_paired_statistics():
    originals = [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 3.0}, {"a": 4.0, "b": 5.0}]
    recon = [{"a": 1.5, "b": 2.0}, {"a": 2.1, "b": 3.0}, {"a": 4.9, "b": 5.0}]
    result = compare_metrics(originals, recon)
    a = result["a"]
    assert a["n"] == 3 and a["n_excluded"] == 0
    assert a["original_mean"] == pytest.approx(7 / 3)
    assert a["original_std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert a["reconstruction_mean"] == pytest.approx(8.5 / 3)
    assert a["mean_difference"] == pytest.approx(0.5)
    assert a["p_value"] == pytest.approx(stats.ttest_rel([1, 2, 4], [1.5, 2.1, 4.9]).pvalue)
    assert 0 <= a["wilcoxon_p_value"] <= 1
    assert result["b"]["p_value"] == 1.0 and result["b"]["mean_difference"] == 0.0


def test_compare_metrics_is_nan_safe():
    originals = [{"t": 2.0}, {"t": math.inf}, {"t": 3.0}, {"t": float("nan")}]
    recon = [{"t": 2.5}, {"t": 2.0}, {"t": 3.5}, {"t": 1.0}]
    t = compare_metrics(originals, recon)["t"]
    assert t["n"] == 2 and t["n_excluded"] == 2
    assert t["mean_difference"] == pytest.approx(0.5)
    assert t["p_value"] == 0.0  # constant non-zero difference
    single = compare_metrics([{"t": 1.0}], [{"t": 2.0}])["t"]
    assert single["n"] == 1 and math.isnan(single["p_value"]) and single["original_std"] == 0.0
    none_left = compare_metrics([{"t": math.inf}], [{"t": 1.0}])["t"]
    assert none_left["n"] == 0 and math.isnan(none_left["original_mean"])
    assert compare_metrics([], []) == {}
    # keys missing from some dict are skipped
    assert list(compare_metrics([{"x": 1.0, "y": 1.0}], [{"x": 1.0}])) == ["x"]


def test_compare_metrics_on_real_metric_dicts():
    windows = [blob(seed, 0.4, 1.5, cbd=0.1, shape=(6, 16, 16)) for seed in range(3)]
    originals = [microstructure_metrics(w) for w in windows]
    result = compare_metrics(originals, originals)
    assert set(result) == set(originals[0])
    assert all(entry["p_value"] == 1.0 for entry in result.values())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4), np.uint8), "3D"),
        (np.full((2, 2, 2), 3, np.uint8), "found value 3"),
        (np.full((2, 2, 2), -1, np.int16), "found value -1"),
        (np.full((2, 2, 2), 0.5), "non-integer"),
        (np.zeros((0, 2, 2), np.uint8), "empty"),
    ],
)
def test_bad_labels_raise_value_error(bad, match):
    for call in (
        lambda: specific_surface_area(bad),
        lambda: triple_phase_boundary_density(bad),
        lambda: connected_fraction(bad, "pore"),
        lambda: tortuosity(bad),
        lambda: microstructure_metrics(bad),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_float_and_wider_integer_labels_are_accepted():
    labels = np.zeros((3, 4, 4), np.int64)
    labels[:, :, 2:] = ACTIVE
    assert specific_surface_area(labels.astype(float), "active", 1.0) == pytest.approx(12 / 48)
    assert tortuosity(labels) == pytest.approx(1.0)


def test_unknown_phase_names_the_valid_ones():
    labels = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="'pore', 'cbd', 'active'"):
        specific_surface_area(labels, "binder")
    with pytest.raises(ValueError, match="valid phases"):
        tortuosity(labels, ("pore", "solid"))
    with pytest.raises(ValueError, match="valid ids"):
        connected_fraction(labels, 5)
    with pytest.raises(ValueError, match="must not share"):
        interface_area_density(labels, ("pore", "cbd"), "cbd")


def test_other_argument_errors_are_typed():
    labels = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(PhysicsError, match="axis"):
        tortuosity(labels, axis=3)
    with pytest.raises(PhysicsError, match="voxel size"):
        specific_surface_area(labels, voxel_size_um=0)
    with pytest.raises(PhysicsError, match="tol"):
        tortuosity(labels, tol=0)
    with pytest.raises(PhysicsError, match="one reconstruction per original"):
        compare_metrics([{}], [])
    assert issubclass(PhysicsError, ElectrodeCAEError) and issubclass(PhysicsError, ValueError)
