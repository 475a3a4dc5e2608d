"""Speed of the microstructure descriptors on one paper-sized window (24×224×224).

Run: ``python benchmarks/physics_speed.py [--threads 2] [--repeat 3] [--torch-device cpu]``.
For the synthetic CAL and UNCAL electrodes (``core.generate_electrode((24, 224, 224), preset=...,
seed=0)``) it prints, per descriptor, the best and median wall time and the CPU time of the best
run, then the whole :func:`microstructure_metrics`. Thread pools (OpenBLAS, OpenMP, torch) are
limited to ``--threads`` before numpy is imported. ``--torch-device`` adds the torch solver of
:func:`tortuosity` on that device (``cpu`` or ``cuda``). The load average is printed because the
timings are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure")
    parser.add_argument("--torch-device", default=None, help="also time tortuosity(device=...)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if "numpy" in sys.modules:
        print("warning: numpy was imported before the thread limits were set")

    import numpy as np
    import torch

    from napari_electrode_cae import core
    from napari_electrode_cae.core import physics

    torch.set_num_threads(args.threads)

    def timed(label: str, func, *func_args, **kwargs):
        walls, cpus, value = [], [], None
        for _ in range(args.repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            value = func(*func_args, **kwargs)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        best = int(np.argmin(walls))
        shown = f"{value:.4g}" if isinstance(value, float) else ""
        print(
            f"  {label:<40s} best {walls[best] * 1e3:8.1f} ms  median "
            f"{statistics.median(walls) * 1e3:8.1f} ms  (cpu {cpus[best] * 1e3:8.1f} ms)  "
            f"{shown}"
        )
        return value

    print(
        f"threads {args.threads}, repeat {args.repeat}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs"
    )
    for preset in ("CAL", "UNCAL"):
        labels = core.generate_electrode((24, 224, 224), preset=preset, seed=0).labels
        vs = 0.398
        print(f"{preset} 24×224×224, porosity {core.volume_fractions(labels)['pore']:.3f}")
        timed("volume_fractions", core.volume_fractions, labels)
        timed("specific_surface_area(active)", physics.specific_surface_area, labels, "active", vs)
        timed(
            "interface_area_density(pore|solid)",
            physics.interface_area_density,
            labels,
            "pore",
            ("cbd", "active"),
            vs,
        )
        timed("triple_phase_boundary_density", physics.triple_phase_boundary_density, labels, vs)
        for phase in ("pore", "active", "cbd"):
            timed(f"connected_fraction({phase}, z)", physics.connected_fraction, labels, phase, 0)
        timed("tortuosity(pore, z)", physics.tortuosity, labels, "pore", 0)
        timed("tortuosity(pore, x)", physics.tortuosity, labels, "pore", 2)
        if args.torch_device:
            timed(
                f"tortuosity(pore, z, device={args.torch_device})",
                physics.tortuosity,
                labels,
                "pore",
                0,
                device=args.torch_device,
            )
        timed("microstructure_metrics (all)", physics.microstructure_metrics, labels, vs)
        print("  load average now " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
