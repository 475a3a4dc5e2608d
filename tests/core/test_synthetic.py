"""Tests of the synthetic CAL/UNCAL/REALISTIC electrode generator (core/synthetic.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_electrode_cae.core.stack import ElectrodeStack, volume_fractions
from napari_electrode_cae.core.synthetic import (
    DEFAULT_SHAPE,
    PRESETS,
    SyntheticSpec,
    SyntheticSpecError,
    default_shape,
    generate_electrode,
    generate_labels,
)

SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def stacks() -> dict[str, ElectrodeStack]:
    return {name: generate_electrode(SHAPE, name, seed=0) for name in ("CAL", "UNCAL")}


@pytest.mark.parametrize("preset", ["CAL", "UNCAL"])
def test_fractions_match_preset(stacks, preset):
    fractions = volume_fractions(stacks[preset].labels)
    for phase, target in PRESETS[preset].targets.items():
        assert abs(fractions[phase] - target) <= 0.02, (phase, fractions[phase], target)


def test_presets_follow_table_1():
    cal, uncal = PRESETS["CAL"], PRESETS["UNCAL"]
    assert 0.34 <= cal.porosity <= 0.37 and abs(cal.active_fraction - 0.49) <= 0.01
    assert abs(cal.cbd_fraction - 0.14) <= 0.01 and cal.calendered
    assert 0.47 <= uncal.porosity <= 0.495 and abs(uncal.active_fraction - 0.40) <= 0.01
    assert abs(uncal.cbd_fraction - 0.11) <= 0.01 and not uncal.calendered


def test_cal_is_denser_than_uncal(stacks):
    cal = volume_fractions(stacks["CAL"].labels)
    uncal = volume_fractions(stacks["UNCAL"].labels)
    assert cal["pore"] < uncal["pore"]
    assert cal["active"] > uncal["active"]


def test_stack_metadata(stacks):
    cal, uncal = stacks["CAL"], stacks["UNCAL"]
    for stack in (cal, uncal):
        assert isinstance(stack, ElectrodeStack)
        assert stack.labels.dtype == np.uint8
        assert stack.shape == SHAPE
        assert set(np.unique(stack.labels)) == {0, 1, 2}
        assert stack.voxel_size_um == pytest.approx(0.398)
    assert cal.calendered is True and cal.tag == "CAL"
    assert uncal.calendered is False and uncal.tag == "UNCAL"
    assert cal.source == "synthetic:CAL seed=0"
    assert cal.name == "synthetic_CAL_s0"


@pytest.mark.parametrize("preset", ["CAL", "UNCAL"])
def test_cbd_sits_on_active_material(stacks, preset):
    labels = stacks[preset].labels
    distance = ndimage.distance_transform_edt(labels != 2)
    cbd_distance = distance[labels == 1]
    assert np.mean(cbd_distance <= 1.0) > 0.6  # face-touching a particle
    assert np.mean(cbd_distance <= 2.0) > 0.9


def test_cbd_is_not_dust(stacks):
    clusters, n = ndimage.label(stacks["CAL"].labels == 1)
    sizes = np.bincount(clusters.ravel())[1:]
    assert sizes.max() > 0.5 * sizes.sum()  # one coating network dominates
    assert sizes.min() >= 2


def test_particles_have_the_requested_size():
    small = generate_labels(SHAPE, SyntheticSpec(mean_radius=3.0), seed=0) == 2
    large = generate_labels(SHAPE, SyntheticSpec(mean_radius=8.0), seed=0) == 2

    # surface voxels per active voxel falls as the particles grow
    def surface_ratio(active):
        return np.count_nonzero(active & ~ndimage.binary_erosion(active)) / active.sum()

    assert surface_ratio(large) < 0.75 * surface_ratio(small)


def test_calendering_flattens_particles_along_z():
    def mean_chord(active, axis):
        boundaries = np.count_nonzero(np.diff(active.astype(np.int8), axis=axis))
        return 2 * active.sum() / max(boundaries, 1)

    flat = generate_labels(SHAPE, SyntheticSpec(calendered=True, calendering_strain=0.3), 0) == 2
    round_ = generate_labels(SHAPE, SyntheticSpec(calendered=False), 0) == 2
    assert mean_chord(flat, 0) / mean_chord(flat, 2) < mean_chord(round_, 0) / mean_chord(round_, 2)


def test_same_seed_same_volume_and_different_seed_differs():
    a = generate_electrode(SHAPE, "UNCAL", seed=7).labels
    b = generate_electrode(SHAPE, "UNCAL", seed=7).labels
    c = generate_electrode(SHAPE, "UNCAL", seed=8).labels
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.2


def test_spec_and_overrides():
    spec = SyntheticSpec(porosity=0.3, cbd_fraction=0.1, calendered=False, label="mine")
    stack = generate_electrode((16, 32, 32), spec=spec, seed=2)
    assert stack.calendered is False
    assert stack.name == "synthetic_mine_s2"
    assert abs(volume_fractions(stack.labels)["pore"] - 0.3) <= 0.02

    stack = generate_electrode((16, 32, 32), "cal", seed=1, porosity=0.4, mean_radius=4)
    assert abs(volume_fractions(stack.labels)["pore"] - 0.4) <= 0.02
    assert stack.source == "synthetic:CAL seed=1 mean_radius=4 porosity=0.4"
    assert generate_electrode((4, 8, 8)).calendered is True  # default preset is CAL


def test_tiny_volume_works():
    labels = generate_electrode((8, 32, 32), "UNCAL", seed=0).labels
    assert labels.shape == (8, 32, 32) and labels.dtype == np.uint8
    assert labels.max() <= 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(porosity=1.2), "porosity"),
        (dict(porosity=0.0), "porosity"),
        (dict(cbd_fraction=-0.1), "cbd_fraction"),
        (dict(porosity=0.6, cbd_fraction=0.4), "porosity \\+ cbd_fraction"),
        (dict(mean_radius=0.5), "mean_radius"),
        (dict(radius_spread=-1), "radius_spread"),
        (dict(porosity="a lot"), "porosity"),
        (dict(porosity=float("nan")), "porosity"),
        (dict(voxel_size_um=0), "voxel_size_um"),
        (dict(bogus=1), "unknown SyntheticSpec field"),
        (dict(preset="DRY"), "unknown preset"),
        (dict(preset="CAL", spec=SyntheticSpec()), "not both"),
        (dict(shape=(64, 64)), "shape"),
        (dict(shape=(8, 0, 8)), "shape"),
        (dict(shape=(8, 8.5, 8)), "shape"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(cbd_style="foam"), "cbd_style"),
        (dict(cbd_grain=5.0), "cbd_grain"),
        (dict(cbd_cloud=0.5), "cbd_cloud"),
        (dict(cbd_affinity=-1), "cbd_affinity"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    kwargs.setdefault("shape", (8, 16, 16))
    with pytest.raises(ValueError, match=message):
        generate_electrode(**kwargs)


def test_error_type_is_typed():
    from napari_electrode_cae.core.errors import ElectrodeCAEError

    with pytest.raises(SyntheticSpecError) as info:
        SyntheticSpec(porosity=0.9, cbd_fraction=0.2)
    assert isinstance(info.value, ElectrodeCAEError)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------------------------
# REALISTIC preset: modelled on a real segmented NMC cathode (large separate particles, speckled
# CBD). Its statistics against the real volume are in benchmarks/realistic_electrode.py.

REALISTIC_SHAPE = (48, 64, 64)


@pytest.fixture(scope="module")
def realistic_and_cal() -> dict[str, np.ndarray]:
    return {
        name: generate_electrode(REALISTIC_SHAPE, name, seed=0).labels
        for name in ("REALISTIC", "CAL")
    }


def _cbd_clusters_per_voxel(labels: np.ndarray) -> float:
    return ndimage.label(labels == 1)[1] / labels.size


def _share_of_cbd_touching_active(labels: np.ndarray) -> float:
    near_active = ndimage.binary_dilation(labels == 2)  # face neighbours
    return float(np.mean(near_active[labels == 1]))


def test_realistic_preset_hits_its_phase_voxel_counts_exactly(realistic_and_cal):
    labels = realistic_and_cal["REALISTIC"]
    counts = np.bincount(labels.ravel(), minlength=3)
    spec = PRESETS["REALISTIC"]
    assert (spec.porosity, spec.cbd_fraction, spec.active_fraction) == pytest.approx(
        (0.45, 0.15, 0.40)
    )
    assert counts[2] == round(spec.active_fraction * labels.size)
    assert counts[1] == round(spec.cbd_fraction * labels.size)
    assert counts[0] == labels.size - counts[1] - counts[2]


def test_realistic_preset_name_is_case_insensitive_and_tagged_calendered():
    stack = generate_electrode((8, 16, 16), "realistic", seed=3)
    assert stack.calendered is True
    assert stack.source == "synthetic:REALISTIC seed=3"
    assert stack.name == "synthetic_REALISTIC_s3"
    assert stack.voxel_size_um == pytest.approx(0.398)
    assert PRESETS["REALISTIC"].cbd_style == "speckled"


def test_realistic_is_deterministic_per_seed(realistic_and_cal):
    again = generate_electrode(REALISTIC_SHAPE, "REALISTIC", seed=0).labels
    other = generate_electrode(REALISTIC_SHAPE, "REALISTIC", seed=1).labels
    np.testing.assert_array_equal(again, realistic_and_cal["REALISTIC"])
    assert np.mean(other != again) > 0.2


def test_realistic_cbd_is_speckled_not_a_shell(realistic_and_cal):
    realistic, cal = realistic_and_cal["REALISTIC"], realistic_and_cal["CAL"]
    # many more CBD clusters per voxel (real: ~1,300 per 1e6 voxels, shell CBD: ~100-200)
    assert _cbd_clusters_per_voxel(realistic) > 4 * _cbd_clusters_per_voxel(cal)
    assert _cbd_clusters_per_voxel(realistic) * 1e6 > 700
    # a much lower share of CBD touches the particles (real: ~35 %, shell CBD: ~78 %)
    assert _share_of_cbd_touching_active(realistic) < 0.6 * _share_of_cbd_touching_active(cal)
    # ...and some of it lies in the pore space well away from every particle
    distance = ndimage.distance_transform_edt(realistic != 2)
    assert np.mean(distance[realistic == 1] > 2.0) > 0.2


def test_realistic_particles_are_larger_than_cal(realistic_and_cal):
    def mean_depth(labels):  # mean distance (voxels) of active voxels to the particle surface
        active = labels == 2
        return ndimage.distance_transform_edt(active)[active].mean()

    assert mean_depth(realistic_and_cal["REALISTIC"]) > 1.25 * mean_depth(realistic_and_cal["CAL"])


def test_default_shape_is_256_cubed_for_realistic_only():
    assert default_shape("REALISTIC") == default_shape("realistic") == (256, 256, 256)
    assert default_shape("CAL") == default_shape("UNCAL") == default_shape() == DEFAULT_SHAPE
    with pytest.raises(SyntheticSpecError, match="unknown preset"):
        default_shape("DRY")


def test_custom_specs_keep_the_shell_cbd_by_default():
    assert SyntheticSpec().cbd_style == "shell"
    assert PRESETS["CAL"].cbd_style == PRESETS["UNCAL"].cbd_style == "shell"


def test_speckled_cbd_can_be_put_on_other_materials():
    labels = generate_electrode((16, 32, 32), "CAL", seed=0, cbd_style="speckled").labels
    counts = np.bincount(labels.ravel(), minlength=3)
    assert counts[1] == round(PRESETS["CAL"].cbd_fraction * labels.size)


def test_cli_sample_writes_the_realistic_preset(tmp_path, capsys):
    from napari_electrode_cae.cli import main
    from napari_electrode_cae.core.io import read_stack

    assert (
        main(
            [
                "sample",
                str(tmp_path),
                "--preset",
                "realistic",
                "--shape",
                "16",
                "32",
                "32",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_REALISTIC.tif"]
    stack = read_stack(tmp_path / "synthetic_REALISTIC.tif")
    expected = generate_electrode((16, 32, 32), "REALISTIC", seed=2).labels
    np.testing.assert_array_equal(stack.labels, expected)
    assert stack.calendered is True
    assert "REALISTIC" in capsys.readouterr().out


def test_cli_sample_without_preset_writes_cal_and_uncal(tmp_path):
    from napari_electrode_cae.cli import main

    assert main(["sample", str(tmp_path), "--shape", "8", "16", "16"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synthetic_CAL.tif",
        "synthetic_UNCAL.tif",
    ]


def test_cli_sample_rejects_an_unknown_preset_in_one_line(tmp_path, capsys):
    from napari_electrode_cae.cli import main

    with pytest.raises(SystemExit) as info:
        main(["sample", str(tmp_path), "--preset", "dry"])
    assert info.value.code != 0
    error = capsys.readouterr().err
    assert "--preset" in error and "REALISTIC" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
