"""The REALISTIC synthetic electrode against a real NMC cathode and the CAL preset.

Run: ``python benchmarks/realistic_electrode.py [--shape Z Y X] [--seed 0] [--blocks 4]
[--no-tortuosity]``.

Generates the REALISTIC electrode (default 256³, seed 0) and the CAL electrode at the same shape,
times both, and prints one table of microstructure statistics beside the ranges measured on a
real segmented 256³ NMC cathode (0.398 µm voxels). All lengths are in voxels, all areas per
volume in µm⁻¹ (voxel-face counting, :mod:`napari_electrode_cae.core.physics`).

How each statistic is measured here:

* **fractions**: :func:`core.volume_fractions`.
* **active equivalent diameter** (median, p10, p90): the active phase is split into particles by
  a watershed of its Euclidean distance map (markers: its local maxima at least 5 voxels apart,
  ``skimage.feature.peak_local_max(min_distance=5)``). Diameter ``(6 V / pi)**(1/3)`` of each
  particle; particles touching the volume faces (truncated) and fragments under 27 voxels are
  left out. This split gives the CAL electrode (fused particle clumps) a median of ~13 voxels
  (p10-p90 ~9-18), the figure measured for it beside the real volume; stronger merging (e.g.
  h-maxima with h = 2) would give ~16.
* **active chord along X**: active voxels divided by the number of active runs along X (runs
  cut by the volume faces included).
* **active SSA**: :func:`physics.specific_surface_area` of ``"active"``;
  **pore/solid interface**: :func:`physics.interface_area_density` of ``"pore"`` against
  ``("cbd", "active")``.
* **CBD touching active**: share of CBD voxels with an active voxel among their 6 face
  neighbours. **CBD clusters**: face-connected CBD components per 10⁶ voxels.
* **pore tau Z**: :func:`core.tortuosity` (pore, axis 0) of the whole volume and the mean over
  ``--blocks`` disjoint 48×96×96 blocks (or all that fit).
* **generation time**: wall time of :func:`core.generate_electrode` (thread pools as the
  environment sets them); **generation peak memory**: peak of the memory traced by
  ``tracemalloc`` (numpy's arrays included) in a second, separate generation.

The last column says whether the REALISTIC value lies in the real range, or how far it is from
the range's nearest end. A full run at 256³ takes about two minutes on two CPU cores, mostly the
tortuosity solves.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from scipy import ndimage as ndi

from napari_electrode_cae import core
from napari_electrode_cae.core import physics
from napari_electrode_cae.core.synthetic import PRESETS

#: Ranges measured on the real segmented 256³ NMC cathode (voxel 0.398 µm): (low, high).
REAL = {
    "pore fraction": (0.45, 0.45),
    "CBD fraction": (0.15, 0.15),
    "active fraction": (0.40, 0.40),
    "eq. diameter median (vox)": (19.0, 19.0),
    "eq. diameter p10 (vox)": (14.0, 14.0),
    "eq. diameter p90 (vox)": (31.0, 31.0),
    "active chord X (vox)": (16.0, 16.0),
    "active SSA (1/um)": (0.36, 0.39),
    "pore/solid interface (1/um)": (0.72, 0.85),
    "CBD touching active (%)": (33.0, 36.0),
    "CBD clusters per 1e6 vox": (1100.0, 1450.0),
    "pore tau Z, whole volume": (2.08, 2.08),
    "pore tau Z, 48x96x96 blocks": (1.9, 2.2),
}

BLOCK = (48, 96, 96)


def particle_diameters(active: np.ndarray) -> np.ndarray:
    """Equivalent diameters (voxels) of the watershed-split active particles, border-free."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndi.distance_transform_edt(active)
    peaks = peak_local_max(distance, min_distance=5, labels=active, exclude_border=False)
    markers = np.zeros(active.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    particles = watershed(-distance, markers, mask=active)
    sizes = np.bincount(particles.ravel())
    border = np.zeros(sizes.size, dtype=bool)
    for axis in range(3):
        for index in (0, -1):
            border[np.unique(np.take(particles, index, axis=axis))] = True
    keep = ~border & (sizes >= 27)
    keep[0] = False
    return (6.0 * sizes[keep] / np.pi) ** (1.0 / 3.0)


def mean_chord(mask: np.ndarray, axis: int) -> float:
    """Mean length (voxels) of the runs of ``mask`` along ``axis``."""
    m = np.moveaxis(mask, axis, -1)
    starts = np.count_nonzero(m[..., 1:] & ~m[..., :-1]) + np.count_nonzero(m[..., 0])
    return float(m.sum()) / max(starts, 1)


def touching_share(cbd: np.ndarray, active: np.ndarray) -> float:
    """Share of ``cbd`` voxels with a face neighbour in ``active``."""
    near = ndi.binary_dilation(active, structure=ndi.generate_binary_structure(3, 1))
    return float(np.count_nonzero(cbd & near)) / max(int(cbd.sum()), 1)


def block_tortuosity(labels: np.ndarray, n_blocks: int) -> float:
    """Mean pore tortuosity factor along Z over disjoint 48×96×96 blocks."""
    starts = [
        (z, y, x)
        for z in range(0, labels.shape[0] - BLOCK[0] + 1, BLOCK[0])
        for y in range(0, labels.shape[1] - BLOCK[1] + 1, BLOCK[1])
        for x in range(0, labels.shape[2] - BLOCK[2] + 1, BLOCK[2])
    ]
    if not starts:
        return float("nan")
    step = max(1, len(starts) // n_blocks)
    taus = [
        core.tortuosity(
            labels[z : z + BLOCK[0], y : y + BLOCK[1], x : x + BLOCK[2]], "pore", axis=0
        )
        for z, y, x in starts[::step][:n_blocks]
    ]
    return float(np.mean(taus))


def statistics(labels: np.ndarray, voxel_um: float, n_blocks: int, tau: bool) -> dict:
    """Every statistic of the table for one (Z, Y, X) phase-id volume."""
    active, cbd = labels == 2, labels == 1
    fractions = core.volume_fractions(labels)
    diameters = particle_diameters(active)
    _, n_clusters = ndi.label(cbd)
    p10, p50, p90 = np.percentile(diameters, [10, 50, 90]) if diameters.size else [np.nan] * 3
    stats = {
        "pore fraction": fractions["pore"],
        "CBD fraction": fractions["cbd"],
        "active fraction": fractions["active"],
        "eq. diameter median (vox)": p50,
        "eq. diameter p10 (vox)": p10,
        "eq. diameter p90 (vox)": p90,
        "active chord X (vox)": mean_chord(active, 2),
        "active SSA (1/um)": physics.specific_surface_area(labels, "active", voxel_um),
        "pore/solid interface (1/um)": physics.interface_area_density(
            labels, "pore", ("cbd", "active"), voxel_um
        ),
        "CBD touching active (%)": 100.0 * touching_share(cbd, active),
        "CBD clusters per 1e6 vox": n_clusters * 1e6 / labels.size,
        "pore tau Z, whole volume": np.nan,
        "pore tau Z, 48x96x96 blocks": np.nan,
    }
    if tau:
        stats["pore tau Z, whole volume"] = core.tortuosity(labels, "pore", axis=0)
        stats["pore tau Z, 48x96x96 blocks"] = block_tortuosity(labels, n_blocks)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=(256, 256, 256)
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", type=int, default=4, help="48x96x96 blocks for tau")
    parser.add_argument("--no-tortuosity", action="store_true", help="skip the (slow) tau rows")
    args = parser.parse_args()
    shape = tuple(args.shape)

    columns, times, memory = {}, {}, {}
    for preset in ("REALISTIC", "CAL"):
        start = time.perf_counter()
        stack = core.generate_electrode(shape, preset=preset, seed=args.seed)
        times[preset] = time.perf_counter() - start
        columns[preset] = statistics(
            stack.labels, PRESETS[preset].voxel_size_um, args.blocks, not args.no_tortuosity
        )
        del stack
        tracemalloc.start()
        core.generate_electrode(shape, preset=preset, seed=args.seed)
        memory[preset] = tracemalloc.get_traced_memory()[1] / 2**30
        tracemalloc.stop()

    print(f"shape {shape}, seed {args.seed}, voxel {PRESETS['REALISTIC'].voxel_size_um} um")
    print(f"{'statistic':<30}{'REALISTIC':>10}{'real':>12}{'CAL':>10}  REALISTIC vs real")
    for name, (low, high) in REAL.items():
        value = columns["REALISTIC"][name]
        real = f"{low:g}" if low == high else f"{low:g}-{high:g}"
        print(
            f"{name:<30}{value:>10.3f}{real:>12}{columns['CAL'][name]:>10.3f}  "
            f"{verdict(value, low, high)}"
        )
    print(f"{'generation time (s)':<30}{times['REALISTIC']:>10.1f}{'':>12}{times['CAL']:>10.1f}")
    print(
        f"{'generation peak memory (GiB)':<30}{memory['REALISTIC']:>10.2f}{'':>12}"
        f"{memory['CAL']:>10.2f}"
    )


def verdict(value: float, low: float, high: float) -> str:
    """``"in range"``, or the deviation (%) from the nearest end of ``[low, high]``."""
    if not np.isfinite(value):
        return "not measured"
    if low <= value <= high:
        return "in range" if low < high else "equal"
    end = low if value < low else high
    return f"{100.0 * (value - end) / end:+.1f} %"


if __name__ == "__main__":
    main()
