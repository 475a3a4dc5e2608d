"""Regenerate the synthetic sample stacks in this folder, deterministically.

Run from the repository root (the package installed, or ``PYTHONPATH=src``)::

    python sample_data/make_sample_data.py

Writes ``synthetic_CAL.tif`` and ``synthetic_UNCAL.tif`` next to this script: 48 x 96 x 96
(Z, Y, X) uint8 multi-page TIFFs, zlib-compressed, values 0 pore / 1 CBD / 2 active, with the
metadata (voxel size, calendered flag, phase mapping) as JSON in the TIFF description, through
:func:`napari_electrode_cae.core.io.write_stack`. Prints the achieved phase fractions.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import napari_electrode_cae  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))
from napari_electrode_cae.core.io import write_stack
from napari_electrode_cae.core.stack import volume_fractions
from napari_electrode_cae.core.synthetic import generate_electrode

#: (file name, preset, seed) of every sample; all share SHAPE.
SAMPLES = (
    ("synthetic_CAL.tif", "CAL", 0),
    ("synthetic_UNCAL.tif", "UNCAL", 0),
)
#: (Z, Y, X) in voxels.
SHAPE = (48, 96, 96)


def main() -> None:
    for file_name, preset, seed in SAMPLES:
        stack = generate_electrode(SHAPE, preset, seed=seed)
        path = HERE / file_name
        write_stack(path, stack)
        fractions = volume_fractions(stack.labels)
        print(
            f"{file_name}: preset={preset} seed={seed} shape={SHAPE} "
            + " ".join(f"{k}={100 * v:.1f}%" for k, v in fractions.items())
            + f" ({path.stat().st_size / 1024:.0f} KiB)"
        )


if __name__ == "__main__":
    main()
