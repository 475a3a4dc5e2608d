"""Without dask.distributed (the ``cluster`` extra) the core imports, ``grid --workers N``
falls back to the process pool, and asking for a cluster is one clear error."""

from __future__ import annotations

import sys

import pytest

from napari_electrode_cae.core import cluster, studies
from napari_electrode_cae.core import grid as grids
from tests.conftest import make_stack


@pytest.fixture
def no_dask(monkeypatch):
    for name in ("distributed", "dask", "dask.distributed"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def test_without_dask_parallel_work_falls_back_to_the_process_pool(no_dask):
    assert cluster.dask_available() is False
    assert cluster._use_dask(None, 4, "auto") is False


def test_asking_for_a_cluster_without_dask_says_what_to_install(no_dask, tmp_path):
    with pytest.raises(studies.StudyError, match=r"pip install 'napari-electrode-cae\[cluster\]'"):
        grids.run_grid(
            [make_stack((12, 16, 16))],
            {"window": [4], "crop": [16]},
            out_dir=tmp_path,
            scheduler="tcp://127.0.0.1:1",
            device="cpu",
        )


def test_without_dask_workers_train_in_a_process_pool_reading_the_shared_stacks(no_dask, tmp_path):
    grid = {
        "window": [4],
        "stride": [4],
        "crop": [16],
        "layers": [3],
        "hidden": [8],
        "latent": [2],
        "epochs": [1],
        "batch": [2],
        "lr": [1e-3, 2e-3],
    }
    rows = grids.run_grid(
        [make_stack((16, 16, 16))], grid, out_dir=tmp_path, workers=2, device="cpu"
    )
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert len(list((tmp_path / "stacks").glob("*.npy"))) == 1  # one file, mapped by both
