"""napari sample data: the synthetic calendered (CAL) and uncalendered (UNCAL) electrodes, and
the realistic 256³ electrode.

Each sample is generated on the fly with the same settings as ``sample_data/make_sample_data.py``
(shape 48 x 96 x 96, preset CAL or UNCAL, seed 0), so it equals the shipped
``sample_data/synthetic_CAL.tif`` / ``synthetic_UNCAL.tif`` voxel for voxel (a test checks it) and
opens as the same Labels layer the reader makes from those files. Synthetic data, not measured
X-ray CT (see sample_data/README.md). Generating one takes about a second.
"""

from __future__ import annotations

from typing import Any

#: (Z, Y, X) in voxels, as in sample_data/make_sample_data.py.
SAMPLE_SHAPE: tuple[int, int, int] = (48, 96, 96)
#: Generator seed of every sample, as in sample_data/make_sample_data.py.
SAMPLE_SEED = 0

#: Shape of the realistic sample (None: the generator's default for it, 256³).
REALISTIC_SHAPE: tuple[int, int, int] | None = None

LayerData = tuple[Any, dict[str, Any], str]


def synthetic_stack(preset: str) -> Any:
    """The synthetic ElectrodeStack of ``preset`` ("CAL" or "UNCAL"), named like its sample file.

    Returns
    -------
    ElectrodeStack
        (48, 96, 96) uint8 phase ids, voxel size 0.398 µm, ``calendered`` from the preset,
        name ``synthetic_<preset>``.
    """
    from .core import generate_electrode

    stack = generate_electrode(SAMPLE_SHAPE, preset=preset, seed=SAMPLE_SEED)
    stack.name = f"synthetic_{preset}"
    return stack


def _layer_data(preset: str) -> LayerData:
    from ._layers import labels_layer_kwargs

    stack = synthetic_stack(preset)
    return (stack.labels, labels_layer_kwargs(stack), "labels")


def synthetic_cal() -> list[LayerData]:
    """Sample "Synthetic calendered electrode (CAL)": one phase Labels layer."""
    return [_layer_data("CAL")]


def synthetic_uncal() -> list[LayerData]:
    """Sample "Synthetic uncalendered electrode (UNCAL)": one phase Labels layer."""
    return [_layer_data("UNCAL")]


def synthetic_realistic() -> list[LayerData]:
    """Sample "Realistic NMC electrode": the 256³ realistic synthetic electrode (seed 0), whose
    particle sizes, surface areas, speckled CBD and pore tortuosity match a real segmented NMC
    cathode (generated in about 10 s; ``benchmarks/realistic_electrode.py``)."""
    from ._layers import labels_layer_kwargs
    from .core import generate_electrode

    stack = generate_electrode(REALISTIC_SHAPE, preset="REALISTIC", seed=SAMPLE_SEED)
    stack.name = "synthetic_REALISTIC"
    return [(stack.labels, labels_layer_kwargs(stack), "labels")]


def synthetic_both() -> list[LayerData]:
    """Sample "Synthetic CAL and UNCAL electrodes": both layers (UNCAL hidden, on top)."""
    cal, uncal = _layer_data("CAL"), _layer_data("UNCAL")
    uncal[1]["visible"] = False
    return [cal, uncal]
