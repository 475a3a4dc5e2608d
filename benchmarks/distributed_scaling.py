"""Beyond one process: DDP under torchrun against one process, and the grid on a local Dask
cluster against the process pool (numbers in benchmarks/README.md, "Beyond one machine").

    python benchmarks/distributed_scaling.py ddp  [--epochs 10] [--shape 64 128 128] [--crop 32]
    python benchmarks/distributed_scaling.py grid [--workers 2]

``ddp`` trains the paper's model (MSE, no batch norm: the trajectories are comparable) on a
realistic synthetic electrode three ways through the CLI, each a fresh process: one process
with batch 4 and one torch thread, one process with batch 4 and two threads, and
``torchrun --nproc-per-node 2`` with batch 2 per rank (effective batch 4) and one thread per
rank. It prints wall time (process start to exit, including reading, evaluation and saving),
training time (the epochs' seconds), the last epoch's train and validation MSE and how far
each run's per-epoch MSEs are from the first run's. Every epoch samples ``--windows-per-epoch``
windows (a multiple of 4), so that all three see the same whole batches.

``grid`` runs one small grid (4 configurations) sequentially, on a process pool and on a
local Dask cluster of ``--workers`` processes, each into a fresh folder, and prints the wall
times.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from napari_electrode_cae import core
from napari_electrode_cae.core import grid as grids


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def bench_ddp(args: argparse.Namespace, tmp: Path) -> None:
    stack = core.generate_electrode(tuple(args.shape), preset="REALISTIC", seed=0)
    path = tmp / "realistic.tif"
    core.write_stack(path, stack)
    common = [
        "train",
        str(path),
        "--preset",
        "paper",
        "--window",
        "8",
        "--stride",
        "8",
        "--crop",
        str(args.crop),
        "--epochs",
        str(args.epochs),
        "--lr",
        "1e-3",
        "--split",
        "random",
        "--device",
        "cpu",
        "--windows-per-epoch",
        str(args.windows_per_epoch),
    ]
    single = [sys.executable, "-m", "napari_electrode_cae.cli"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "napari_electrode_cae.cli",
    ]
    cases = [
        ("1 process, batch 4, 1 thread", single, "4", "1"),
        ("1 process, batch 4, 2 threads", single, "4", "2"),
        ("torchrun 2 ranks x batch 2, 1 thread each", torchrun, "2", "1"),
    ]
    print(f"stack {args.shape}, paper model at l=8, crop {args.crop}, {args.epochs} epochs")
    print(
        "| Run | Wall s | Training s | Final train MSE | Final val MSE | Largest relative "
        "difference of a per-epoch MSE from the first run |"
    )
    print("|---|---|---|---|---|---|")
    reference = None
    for label, launcher, batch, threads in cases:
        out = tmp / label.replace(" ", "_").replace(",", "")
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        start = time.perf_counter()
        done = subprocess.run(
            launcher + common + ["--out", str(out), "--batch", batch],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"| {label} | failed: {done.stderr.strip().splitlines()[-1]} |||")
            continue
        history = _history(out)
        seconds = sum(float(r["seconds"]) for r in history)
        last = history[-1]
        mses = [(float(r["train_mse"]), float(r["val_mse"])) for r in history]
        reference = reference or mses
        worst = max(abs(a / b - 1) for x, y in zip(mses, reference) for a, b in zip(x, y))
        print(
            f"| {label} | {wall:.1f} | {seconds:.1f} | {float(last['train_mse']):.5f} | "
            f"{float(last['val_mse']):.5f} | {worst:.1e} |"
        )


def bench_grid(args: argparse.Namespace, tmp: Path) -> None:
    stack = core.generate_electrode((32, 64, 64), preset="REALISTIC", seed=0)
    grid = {
        "window": [4],
        "stride": [4],
        "crop": [32],
        "layers": [3],
        "hidden": [32, 128],
        "latent": [10],
        "epochs": [3],
        "batch": [8],
        "lr": [1e-3, 3e-3],
    }
    print(
        f"grid of {len(grids.expand_grid(grid))} configurations on a (32, 64, 64) "
        "realistic stack, l=4, crop 32, 3 epochs each"
    )
    print("| How | Workers | Wall s |")
    print("|---|---|---|")
    for label, workers, parallel in (
        ("one by one", 1, "auto"),
        ("process pool", args.workers, "processes"),
        ("local Dask cluster", args.workers, "dask"),
    ):
        start = time.perf_counter()
        rows = grids.run_grid(
            [stack],
            grid,
            out_dir=tmp / label.replace(" ", "_"),
            workers=workers,
            parallel=parallel,
            device="cpu",
        )
        wall = time.perf_counter() - start
        ok = sum(r["status"] == "ok" for r in rows)
        print(f"| {label} | {workers} | {wall:.1f} ({ok} ok) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ddp")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    p.add_argument("--crop", type=int, default=32)
    p.add_argument(
        "--windows-per-epoch",
        type=int,
        default=96,
        help="a multiple of 4, so that every batch is whole in all three runs",
    )
    p = sub.add_parser("grid")
    p.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (bench_ddp if args.what == "ddp" else bench_grid)(args, Path(tmp))


if __name__ == "__main__":
    main()
