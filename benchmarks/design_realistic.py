"""Prediction and design by target on the realistic 256³ electrode, quick preset.

Trains the quick preset with the CLI (``electrode-cae train --preset quick``) on the realistic
synthetic electrode (``electrode-cae sample DIR --preset realistic``, 256³, seed 0) unless
``--run`` names an existing run folder, then:

1. ``prediction.fit_prediction``: per-metric Gaussian-process regressors, R² over 5 blocked
   folds of up to 400 non-overlapping windows, beside a never-trained encoder's features;
   prints the R² table (and writes RUN/prediction.json).
2. Three design examples (targets, what was reached as *measured*, time taken).

    OMP_NUM_THREADS=2 python benchmarks/design_realistic.py --work /tmp/design_bench
    python benchmarks/design_realistic.py --run /tmp/design_bench/run   # reuse the training

Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from napari_electrode_cae import core
from napari_electrode_cae.core import design, prediction

EXAMPLES = [
    (["pore_fraction=0.40:0.01"], {}),
    (["pore_fraction=0.45:0.01", "tortuosity_pore_z<=1.6"], {"maximize": "ssa_active_per_um"}),
    (["pore_fraction=0.80:0.01", "cbd_fraction>=0.12"], {}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("design_bench"))
    parser.add_argument("--run", type=Path, help="existing run folder (skip training)")
    parser.add_argument("--max-windows", type=int, default=400)
    args = parser.parse_args()
    run_dir = args.run
    if run_dir is None:
        args.work.mkdir(parents=True, exist_ok=True)
        cli = [sys.executable, "-m", "napari_electrode_cae.cli"]
        subprocess.run([*cli, "sample", str(args.work), "--preset", "realistic"], check=True)
        run_dir = args.work / "run"
        start = time.perf_counter()
        subprocess.run(
            [
                *cli,
                "train",
                str(args.work / "synthetic_REALISTIC.tif"),
                "--preset",
                "quick",
                "--out",
                str(run_dir),
            ],
            check=True,
        )
        print(f"training (quick preset): {time.perf_counter() - start:.0f} s")
    run = core.load_run(run_dir)
    data = run.load_dataset()
    start = time.perf_counter()
    report = prediction.fit_prediction(run.model, data, max_windows=args.max_windows)
    prediction.save_prediction(run_dir, report)
    print(f"\nprediction fitted in {time.perf_counter() - start:.0f} s")
    print(prediction.r2_table(report))
    for targets, kwargs in EXAMPLES:
        start = time.perf_counter()
        result = design.design(
            run.model,
            report.predictor,
            targets,
            candidates=5,
            voxel_size_um=data.voxel_size_um,
            **kwargs,
        )
        seconds = time.perf_counter() - start
        print(f"design {targets} {kwargs}: reached={result.reached}, {seconds:.1f} s")
        for line in design.summary_lines(result):
            print("   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
