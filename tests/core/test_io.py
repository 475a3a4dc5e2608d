"""Tests of reading/writing electrode stacks and of phase mappings (core/io.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_electrode_cae.core.errors import PhaseMappingError, StackReadError, StackWriteError
from napari_electrode_cae.core.io import (
    count_stored_values,
    describe_phase_mapping,
    guess_calendered,
    infer_phase_mapping,
    parse_phase_mapping,
    read_stack,
    write_stack,
)
from napari_electrode_cae.core.stack import DEFAULT_VOXEL_SIZE_UM, ElectrodeStack

SHAPE = (6, 16, 16)


def make_labels(fractions=(0.40, 0.12, 0.48), seed=0) -> np.ndarray:
    """(6, 16, 16) uint8 phase ids with the given pore/CBD/active fractions."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.arange(3, dtype=np.uint8), size=SHAPE, p=list(fractions))


def stored(labels: np.ndarray, values, dtype=np.uint8) -> np.ndarray:
    """Phase ids 0/1/2 replaced by stored values (pore, cbd, active)."""
    return np.asarray(values, dtype=dtype)[labels]


# ------------------------------------------------------------------ round trips


def test_tiff_round_trip_keeps_labels_and_metadata(tmp_path):
    labels = make_labels()
    stack = ElectrodeStack(labels, voxel_size_um=0.5, calendered=False, name="orig")
    written = write_stack(tmp_path / "stack.tif", stack)
    assert written == tmp_path / "stack.tif"
    back = read_stack(written)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.labels.dtype == np.uint8
    assert back.voxel_size_um == pytest.approx(0.5)
    assert back.calendered is False
    assert back.phase_mapping == {0: "pore", 1: "cbd", 2: "active"}
    assert back.source == str(written)
    assert back.name == "stack"
    with tifffile.TiffFile(written) as tif:
        assert len(tif.pages) == SHAPE[0]
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_tiff_round_trip_uses_stored_mapping_even_when_abundance_would_mislead(tmp_path):
    # CBD more abundant than active: inference alone would swap them, the stored mapping must not.
    labels = make_labels((0.3, 0.5, 0.2))
    path = write_stack(tmp_path / "odd.tiff", ElectrodeStack(labels), values=(0, 170, 85))
    assert set(np.unique(tifffile.imread(path)).tolist()) == {0, 85, 170}
    back = read_stack(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.phase_mapping == {0: "pore", 85: "active", 170: "cbd"}


def test_tiff_round_trip_uint16_values(tmp_path):
    labels = make_labels()
    path = write_stack(tmp_path / "wide.tif", labels, values=(0, 1000, 60000))
    assert tifffile.imread(path).dtype == np.uint16
    back = read_stack(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.phase_mapping == {0: "pore", 1000: "cbd", 60000: "active"}


def test_npy_round_trip_is_memory_mapped_without_copy(tmp_path, monkeypatch):
    from napari_electrode_cae.core import io as io_module

    labels = make_labels()
    path = write_stack(tmp_path / "stack.npy", ElectrodeStack(labels, voxel_size_um=0.7))
    np.testing.assert_array_equal(np.load(path), labels)
    back = read_stack(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.phase_mapping == {0: "pore", 1: "cbd", 2: "active"}
    # the .npy carries no metadata, its sidecar NAME.npy.phases.json does
    assert back.voxel_size_um == 0.7
    assert back.labels.flags.writeable  # small: copied, a rewritten file cannot change it
    monkeypatch.setattr(io_module, "_MEMMAP_MIN_BYTES", 1)  # every stack counts as large
    mapped = read_stack(path)
    # The 0/1/2 uint8 array is the read-only memory map itself, not an in-memory copy.
    assert not mapped.labels.flags.owndata
    assert not mapped.labels.flags.writeable


def test_npy_with_other_values_is_mapped_into_memory(tmp_path):
    labels = make_labels()
    np.save(tmp_path / "s.npy", stored(labels, (0, 128, 255)))
    back = read_stack(tmp_path / "s.npy")
    np.testing.assert_array_equal(back.labels, labels)
    assert back.labels.flags.writeable


def test_write_raw_array_records_no_voxel_size(tmp_path):
    labels = make_labels()
    path = write_stack(tmp_path / "raw.tif", labels)
    back = read_stack(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.voxel_size_um == DEFAULT_VOXEL_SIZE_UM
    assert back.calendered is None


def test_write_is_atomic_replaces_existing_and_creates_parents(tmp_path):
    labels = make_labels()
    path = tmp_path / "new" / "sub" / "stack.tif"
    write_stack(path, labels)
    write_stack(path, ElectrodeStack(np.zeros(SHAPE, np.uint8) + 2, voxel_size_um=1.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["stack.tif"]
    assert np.all(tifffile.imread(path) == 2)


def test_write_leaves_no_temporary_file_when_it_fails(tmp_path):
    with pytest.raises(StackWriteError, match="phase ids 0"):
        write_stack(tmp_path / "bad.tif", np.full(SHAPE, 3, np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": (0, 1)}, "3 integers"),
        ({"values": (0, 1, 1)}, "distinct"),
        ({"values": (0, 1, 70000)}, "0..65535"),
        ({"values": (0.0, 1, 2)}, "3 integers"),
    ],
)
def test_write_rejects_bad_values(tmp_path, kwargs, match):
    with pytest.raises(StackWriteError, match=match):
        write_stack(tmp_path / "x.tif", make_labels(), **kwargs)


def test_write_rejects_bad_labels_and_extension(tmp_path):
    with pytest.raises(StackWriteError, match=r"unsupported file type '\.png'"):
        write_stack(tmp_path / "x.png", make_labels())
    with pytest.raises(StackWriteError, match=r"3D \(Z, Y, X\)"):
        write_stack(tmp_path / "x.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(StackWriteError, match="float32"):
        write_stack(tmp_path / "x.tif", np.zeros(SHAPE, np.float32))


# ------------------------------------------------------------------ folders of slices


def test_folder_of_slices_is_read_in_natural_order(tmp_path):
    folder = tmp_path / "NMC_UNCAL_slices"
    folder.mkdir()
    for k in range(1, 13):  # slice_1 ... slice_12, unpadded: lexical order would be wrong
        image = np.zeros(SHAPE[1:], np.uint8)
        image[0, :k] = 2  # k active voxels identify slice k
        image[15, 15] = 1
        tifffile.imwrite(folder / f"slice_{k}.tif", image)
    (folder / "notes.txt").write_text("not a slice")
    (folder / ".hidden.tif").write_bytes(b"ignored")
    stack = read_stack(folder)
    assert stack.shape == (12, 16, 16)
    assert [int((stack.labels[z, 0] == 2).sum()) for z in range(12)] == list(range(1, 13))
    assert stack.name == "NMC_UNCAL_slices"
    assert stack.calendered is False
    assert stack.source == str(folder)


def test_folder_slices_with_different_shape_name_the_file(tmp_path):
    for k in range(1, 5):
        shape = (16, 16) if k != 3 else (16, 15)
        tifffile.imwrite(tmp_path / f"slice_{k}.tif", np.zeros(shape, np.uint8))
    with pytest.raises(StackReadError, match=r"slice_3\.tif .*shape \(16, 15\)"):
        read_stack(tmp_path)


def test_folder_slices_with_different_dtype_name_the_file(tmp_path):
    for k in range(1, 5):
        dtype = np.uint8 if k != 2 else np.uint16
        tifffile.imwrite(tmp_path / f"s{k}.tif", np.zeros((16, 16), dtype))
    with pytest.raises(StackReadError, match=r"s2\.tif .*dtype uint16"):
        read_stack(tmp_path)


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StackReadError, match="is empty"):
        read_stack(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes(b"x")
    with pytest.raises(StackReadError, match=r"no TIFF slices .*a\.png"):
        read_stack(other)
    single = tmp_path / "single"
    single.mkdir()
    tifffile.imwrite(single / "only.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(StackReadError, match=r"single 2D slice \(only\.tif\)"):
        read_stack(single)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for k in range(3):
        tifffile.imwrite(rgb / f"{k}.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(StackReadError, match=r"0\.tif .*RGB colour"):
        read_stack(rgb)


# ------------------------------------------------------------------ phase mappings


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_85_170_least_abundant_is_cbd(tmp_path, suffix):
    # Like a public NMC volume: 85 is active material (abundant), 170 is CBD (rare).
    labels = make_labels()
    data = stored(labels, (0, 170, 85))
    path = tmp_path / f"nmc{suffix}"
    tifffile.imwrite(path, data) if suffix == ".tif" else np.save(path, data)
    stack = read_stack(path)
    assert stack.phase_mapping == {0: "pore", 85: "active", 170: "cbd"}
    np.testing.assert_array_equal(stack.labels, labels)
    assert describe_phase_mapping(stack.phase_mapping) == "0→pore, 85→active, 170→cbd"


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ((0, 1, 2), np.uint8),
        ((0, 85, 170), np.uint8),
        ((0, 128, 255), np.uint8),
        ((0, 1000, 2000), np.uint16),
        ((-1, 0, 1), np.int8),
        ((0, 5, 9), np.int32),
        ((0.0, 85.0, 170.0), np.float32),
    ],
)
def test_standard_value_sets(tmp_path, values, dtype):
    labels = make_labels()
    np.save(tmp_path / "s.npy", stored(labels, values, dtype))
    stack = read_stack(tmp_path / "s.npy")
    np.testing.assert_array_equal(stack.labels, labels)
    assert stack.phase_mapping == {
        int(values[0]): "pore",
        int(values[1]): "cbd",
        int(values[2]): "active",
    }


def test_two_values_are_pore_and_active(tmp_path):
    labels = make_labels((0.5, 0.0, 0.5))
    np.save(tmp_path / "s.npy", stored(labels, (0, 0, 255)))
    stack = read_stack(tmp_path / "s.npy")
    assert stack.phase_mapping == {0: "pore", 255: "active"}
    np.testing.assert_array_equal(stack.labels, labels)


def test_explicit_mapping_overrides_inference_and_file_metadata(tmp_path):
    labels = make_labels()  # 1 (CBD) is rare
    data = stored(labels, (0, 85, 170))  # inference: 85 -> cbd
    np.save(tmp_path / "s.npy", data)
    explicit = read_stack(tmp_path / "s.npy", phases={0: "pore", 85: "active", 170: "cbd"})
    assert explicit.phase_mapping == {0: "pore", 85: "active", 170: "cbd"}
    np.testing.assert_array_equal(explicit.labels, np.array([0, 2, 1], np.uint8)[labels])
    as_text = read_stack(tmp_path / "s.npy", phases="0=pore, 85=active, 170=cbd")
    np.testing.assert_array_equal(as_text.labels, explicit.labels)
    # Overrides the mapping a written TIFF carries, and values may merge into one phase.
    path = write_stack(tmp_path / "w.tif", labels)
    merged = read_stack(path, phases={0: "pore", 1: "active", 2: "active"})
    np.testing.assert_array_equal(merged.labels, np.where(labels == 0, 0, 2))


def test_explicit_mapping_missing_values_are_named(tmp_path):
    np.save(tmp_path / "s.npy", stored(make_labels(), (0, 85, 170)))
    with pytest.raises(PhaseMappingError, match=r"stored value 170 .*not in the given phase"):
        read_stack(tmp_path / "s.npy", phases={0: "pore", 85: "active"})


@pytest.mark.parametrize(
    ("phases", "match"),
    [
        ({0: "pore", 1: "binder"}, "unknown phase name 'binder'"),
        ({"pore": 0, "active": 1}, "must be stored values"),
        ({}, "empty"),
        ("0=pore,1=", "cannot parse"),
        ([0, 1, 2], "must be a dict"),
    ],
)
def test_bad_explicit_mappings(tmp_path, phases, match):
    np.save(tmp_path / "s.npy", make_labels())
    with pytest.raises(PhaseMappingError, match=match):
        read_stack(tmp_path / "s.npy", phases=phases)


def test_parse_phase_mapping():
    assert parse_phase_mapping("0=pore,85=active,170=cbd") == {0: "pore", 85: "active", 170: "cbd"}
    assert parse_phase_mapping(" 170 : CBD ; 0=Pore ;85= active ,") == {
        0: "pore",
        85: "active",
        170: "cbd",
    }
    assert parse_phase_mapping("-1=pore,1=active") == {-1: "pore", 1: "active"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty phase mapping"),
        (" , ", "empty phase mapping"),
        ("0pore", "cannot parse '0pore'"),
        ("x=pore", "stored value 'x' .* not an integer"),
        ("1.5=pore", "not an integer"),
        ("0=pore,1=binder", "unknown phase name 'binder'"),
        ("0=pore,0=cbd", "stored value 0 appears twice"),
    ],
)
def test_parse_phase_mapping_rejects_bad_text(text, match):
    with pytest.raises(PhaseMappingError, match=match):
        parse_phase_mapping(text)


def test_infer_phase_mapping_rules():
    assert infer_phase_mapping([170, 0, 85], [10, 50, 40]) == {0: "pore", 85: "active", 170: "cbd"}
    assert infer_phase_mapping([0, 128, 255], [50, 10, 40]) == {
        0: "pore",
        128: "cbd",
        255: "active",
    }
    assert infer_phase_mapping([0, 1, 2], [5, 3, 3]) == {0: "pore", 1: "cbd", 2: "active"}  # tie
    assert infer_phase_mapping([0, 7, 9], [5, 0, 4]) == {0: "pore", 9: "active"}  # zero count
    with pytest.raises(PhaseMappingError, match=r"single value \(3\)"):
        infer_phase_mapping([3], [100])
    with pytest.raises(PhaseMappingError, match="found 5 distinct values in uint16 data"):
        infer_phase_mapping(range(5), [1] * 5, dtype=np.uint16)


def test_describe_phase_mapping():
    assert describe_phase_mapping({170: "cbd", 0: "pore", 85: "active"}) == (
        "0→pore, 85→active, 170→cbd"
    )
    assert describe_phase_mapping({}) == "(empty mapping)"


def test_count_stored_values_across_dtypes():
    data = np.array([[[0, 0, 255], [255, 255, 7]]], np.uint8)
    assert count_stored_values(data) == ([0, 7, 255], [2, 1, 3])
    assert count_stored_values(np.array([-3, -3, 5], np.int16)) == ([-3, 5], [2, 1])
    assert count_stored_values(np.array([1.0, 2.0, 2.0], np.float64)) == ([1.0, 2.0], [1, 2])
    assert count_stored_values(np.array([True, False, True])) == ([0, 1], [1, 2])


def test_too_many_distinct_values_is_not_segmented(tmp_path):
    data = (np.arange(np.prod(SHAPE)) % 212).astype(np.uint16).reshape(SHAPE)
    tifffile.imwrite(tmp_path / "grey.tif", data)
    with pytest.raises(PhaseMappingError, match="found 212 distinct values in uint16 data"):
        read_stack(tmp_path / "grey.tif")


def test_single_value_stack_is_rejected(tmp_path):
    np.save(tmp_path / "flat.npy", np.full(SHAPE, 85, np.uint8))
    with pytest.raises(PhaseMappingError, match=r"single value \(85\)"):
        read_stack(tmp_path / "flat.npy")


# ------------------------------------------------------------------ metadata and names


def test_explicit_arguments_override_file_metadata(tmp_path):
    path = write_stack(
        tmp_path / "uncal.tif", ElectrodeStack(make_labels(), voxel_size_um=0.25, calendered=True)
    )
    stack = read_stack(path)
    assert (stack.voxel_size_um, stack.calendered) == (pytest.approx(0.25), True)  # metadata wins
    stack = read_stack(path, voxel_size_um=1.5, calendered=False, name="mine")
    assert (stack.voxel_size_um, stack.calendered, stack.name) == (1.5, False, "mine")


def test_imagej_micron_calibration_gives_voxel_size(tmp_path):
    data = stored(make_labels(), (0, 1, 2))
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(1 / 0.6, 1 / 0.6),
        metadata={"unit": "um", "spacing": 0.6, "axes": "ZYX"},
    )
    assert read_stack(tmp_path / "ij.tif").voxel_size_um == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("NMC_CAL_01.tif", True),
        ("nmc-uncal-01.tif", False),
        ("Uncalendered.tif", False),
        ("calendered_sample.tif", True),
        ("sampleCAL.tif", True),
        ("electrode.tif", None),
        ("local_vertical.tif", None),
    ],
)
def test_calendering_guessed_from_file_name(tmp_path, filename, expected):
    path = write_stack(tmp_path / filename, make_labels())  # raw array: no calendering metadata
    stack = read_stack(path)
    assert stack.calendered is expected
    assert stack.tag == {True: "CAL", False: "UNCAL", None: "?"}[expected]
    assert read_stack(path, calendered=True).calendered is True


def test_guess_calendered():
    assert guess_calendered("cal") is True
    assert guess_calendered("UNCAL") is False
    assert guess_calendered("scale_local") is None


def test_path_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "données électrode 電極"
    labels = make_labels()
    tif = write_stack(folder / "pile ü 1.tif", ElectrodeStack(labels, voxel_size_um=0.3))
    npy = write_stack(folder / "pile ü 2.npy", labels)
    for path in (tif, npy):
        stack = read_stack(str(path))
        np.testing.assert_array_equal(stack.labels, labels)
    assert read_stack(tif).name == "pile ü 1"
    slices = folder / "tranches é"
    slices.mkdir()
    for z in range(SHAPE[0]):
        tifffile.imwrite(slices / f"coupe {z}.tif", labels[z])
    np.testing.assert_array_equal(read_stack(slices).labels, labels)


# ------------------------------------------------------------------ multi-series TIFFs


def test_tiff_written_page_by_page_reads_as_stack(tmp_path):
    labels = make_labels()
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for z in range(SHAPE[0]):
            tif.write(labels[z])
    np.testing.assert_array_equal(read_stack(tmp_path / "pages.tif").labels, labels)


def test_tiff_pages_of_different_shapes(tmp_path):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(np.zeros((16, 16), np.uint8))
        tif.write(np.zeros((16, 16), np.uint8))
        tif.write(np.zeros((8, 16), np.uint8))
    with pytest.raises(StackReadError, match=r"image 3 has shape \(8, 16\)"):
        read_stack(tmp_path / "mixed.tif")


# ------------------------------------------------------------------ bad input


def test_missing_path(tmp_path):
    with pytest.raises(StackReadError, match="no such file or folder"):
        read_stack(tmp_path / "nope.tif")


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(StackReadError, match=r"unsupported file type '\.png'"):
        read_stack(tmp_path / "a.png")


def test_text_file_renamed_tif(tmp_path):
    (tmp_path / "notes.tif").write_text("hello, I am not an image\n")
    with pytest.raises(StackReadError, match="is not a TIFF image"):
        read_stack(tmp_path / "notes.tif")


def test_empty_files(tmp_path):
    for name in ("empty.tif", "empty.npy"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(StackReadError, match=r"is empty \(0 bytes\)"):
            read_stack(tmp_path / name)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 100])
def test_truncated_tiff(tmp_path, compression, keep):
    data = make_labels(seed=1)
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, data, compression=compression)
    raw = path.read_bytes()
    size = int(len(raw) * keep) if keep < 1 else keep
    (tmp_path / "cut.tif").write_bytes(raw[:size])
    with pytest.raises(StackReadError, match="truncated or corrupted"):
        read_stack(tmp_path / "cut.tif")


def test_corrupted_compressed_data(tmp_path):
    path = write_stack(tmp_path / "full.tif", make_labels())
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x00" * count
    (tmp_path / "bad.tif").write_bytes(bytes(raw))
    with pytest.raises(StackReadError, match="truncated or corrupted"):
        read_stack(tmp_path / "bad.tif")


def test_single_2d_image(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((16, 12), np.uint8))
    message = r"single 2D image of shape \(16, 12\); a 3D stack needs at least 2 slices"
    with pytest.raises(StackReadError, match=message):
        read_stack(tmp_path / "one.tif")
    np.save(tmp_path / "one.npy", np.zeros((16, 12), np.uint8))
    with pytest.raises(StackReadError, match=r"single 2D image of shape \(16, 12\)"):
        read_stack(tmp_path / "one.npy")
    np.save(tmp_path / "thin.npy", np.zeros((1, 16, 12), np.uint8))
    with pytest.raises(StackReadError, match="only 1 slice"):
        read_stack(tmp_path / "thin.npy")


def test_colour_data(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(StackReadError, match=r"RGB colour data of shape \(16, 16, 3\)"):
        read_stack(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "rgbs.tif", np.zeros((4, 16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(StackReadError, match="RGB colour data"):
        read_stack(tmp_path / "rgbs.tif")
    np.save(tmp_path / "rgba.npy", np.zeros((4, 16, 16, 4), np.uint8))
    with pytest.raises(StackReadError, match=r"RGBA colour data of shape \(4, 16, 16, 4\)"):
        read_stack(tmp_path / "rgba.npy")


def test_too_many_dimensions(tmp_path):
    np.save(tmp_path / "4d.npy", np.zeros((2, 5, 16, 16), np.uint8))
    with pytest.raises(StackReadError, match="has 4 dimensions"):
        read_stack(tmp_path / "4d.npy")
    np.save(tmp_path / "squeezable.npy", stored(make_labels(), (0, 1, 2))[None])
    assert read_stack(tmp_path / "squeezable.npy").shape == SHAPE


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_data(tmp_path, bad):
    data = make_labels().astype(np.float32)
    data[2, 3, 4] = bad
    np.save(tmp_path / "f.npy", data)
    kind = "NaN" if np.isnan(bad) else "infinite"
    message = f"float32 data contains 1 {kind} values, the first in slice 2"
    with pytest.raises(StackReadError, match=message):
        read_stack(tmp_path / "f.npy")


def test_float_grey_levels_are_not_a_segmentation(tmp_path):
    np.save(tmp_path / "grey.npy", np.random.default_rng(0).random(SHAPE, dtype=np.float32))
    with pytest.raises(PhaseMappingError, match="values in float32 data, not whole numbers"):
        read_stack(tmp_path / "grey.npy")
    np.save(tmp_path / "half.npy", make_labels().astype(np.float64) / 2)
    with pytest.raises(StackReadError, match=r"non-integer values \(e\.g\. 0\.5\)"):
        read_stack(tmp_path / "half.npy")


def test_bad_npy_files(tmp_path):
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(StackReadError, match=r"not a NumPy \.npy file"):
        read_stack(tmp_path / "text.npy")
    np.save(tmp_path / "full.npy", make_labels())
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StackReadError, match="truncated or corrupted"):
        read_stack(tmp_path / "cut.npy")
    np.save(tmp_path / "complex.npy", np.zeros(SHAPE, np.complex64))
    with pytest.raises(StackReadError, match="complex64"):
        read_stack(tmp_path / "complex.npy")


def test_invalid_voxel_size_argument(tmp_path):
    np.save(tmp_path / "s.npy", make_labels())
    with pytest.raises(StackReadError, match="voxel size must be a positive number"):
        read_stack(tmp_path / "s.npy", voxel_size_um=-1)


def test_unreadable_slice_in_folder_is_named(tmp_path):
    for k in range(3):
        tifffile.imwrite(tmp_path / f"s{k}.tif", np.zeros((16, 16), np.uint8))
    (tmp_path / "s1.tif").write_text("oops")
    with pytest.raises(StackReadError, match=r"slice s1\.tif .* is not a TIFF image"):
        read_stack(tmp_path)


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_randomly_corrupted_files_raise_only_typed_errors(tmp_path, suffix):
    path = tmp_path / f"good{suffix}"
    labels = make_labels()
    write_stack(path, labels, values=(0, 85, 170))
    original = path.read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / f"damaged{suffix}"
    for _ in range(150):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(0, min(len(data), 400)))] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(1, len(data)))]
        damaged.write_bytes(bytes(data))
        try:
            stack = read_stack(damaged)
        except (StackReadError, PhaseMappingError):
            continue
        assert stack.labels.dtype == np.uint8 and stack.labels.max() <= 2
