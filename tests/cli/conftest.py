import pytest

from napari_electrode_cae import core
from tests.conftest import make_stack


@pytest.fixture
def stack_file(tmp_path):
    """A tiny CAL stack (12x32x32) written as a TIFF."""
    path = tmp_path / "tiny_CAL.tif"
    core.write_stack(path, make_stack((12, 32, 32), seed=0))
    return path
