"""The reader claims segmented stacks by content and leaves other images to napari."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_electrode_cae import _reader


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_segmented_stacks_are_claimed(tmp_path, rng):
    np.save(tmp_path / "labels.npy", rng.integers(0, 3, (6, 16, 16), dtype=np.uint8))
    tifffile.imwrite(
        tmp_path / "stored.tif", (rng.integers(0, 3, (6, 16, 16)) * 85).astype(np.uint8)
    )
    (tmp_path / "slices").mkdir()
    for z in range(3):
        tifffile.imwrite(
            tmp_path / "slices" / f"s{z}.tif", (rng.integers(0, 3, (16, 16)) * 127).astype(np.uint8)
        )
    for name in ("labels.npy", "stored.tif", "slices"):
        assert _reader.napari_get_reader(str(tmp_path / name)) is _reader.read_electrode_stacks


def test_grey_level_colour_and_2d_images_are_left_to_napari(tmp_path, rng):
    np.save(tmp_path / "grey.npy", rng.integers(0, 255, (6, 16, 16), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "grey.tif", rng.integers(0, 255, (6, 16, 16), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "float.tif", rng.random((4, 16, 16), dtype=np.float32))
    tifffile.imwrite(tmp_path / "one_slice.tif", rng.integers(0, 3, (16, 16), dtype=np.uint8))
    tifffile.imwrite(
        tmp_path / "rgb.tif", rng.integers(0, 3, (16, 16, 3), dtype=np.uint8), photometric="rgb"
    )
    np.save(tmp_path / "flat.npy", rng.integers(0, 3, (16, 16), dtype=np.uint8))
    (tmp_path / "grey_slices").mkdir()
    tifffile.imwrite(
        tmp_path / "grey_slices" / "s0.tif", rng.integers(0, 255, (16, 16), dtype=np.uint8)
    )
    for name in (
        "grey.npy",
        "grey.tif",
        "float.tif",
        "one_slice.tif",
        "rgb.tif",
        "flat.npy",
        "grey_slices",
    ):
        assert _reader.napari_get_reader(str(tmp_path / name)) is None, name


def test_a_file_that_cannot_be_inspected_is_claimed_so_its_reason_is_shown(tmp_path):
    (tmp_path / "damaged.tif").write_bytes(b"II*\x00" + bytes(range(256)))
    assert _reader.napari_get_reader(str(tmp_path / "damaged.tif")) is not None


def test_napari_opens_a_grey_level_tiff_with_its_own_reader(make_napari_viewer, tmp_path, rng):
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (6, 16, 16), dtype=np.uint8))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path))
    assert layer.__class__.__name__ == "Image"
