"""``study`` (the paper's case studies) and ``grid`` (Table 2's search), locally or on Dask."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import core
from ._common import (
    EXIT_INTERRUPTED,
    add_cluster_args,
    add_stack_args,
    float_list,
    info,
    int_list,
    positive_float,
    positive_int,
    read_stacks,
    read_tagged,
    stride_list,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "study",
        help="run the paper's case studies (Table 8), random vs blocked",
        description="Train and evaluate case studies 1 (CAL, stride 1), 2 (CAL, "
        "stride = l), 3a/3b (CAL + UNCAL, stride 1 / l), each with a random and a "
        "blocked split; prints the table and writes OUT/study.csv, OUT/study.md "
        "and one run folder per run. Without --uncal, case 3 is skipped.",
    )
    p.add_argument(
        "stacks",
        nargs="+",
        type=Path,
        metavar="CAL_STACK",
        help="calendered stacks (TIFF, folder of slices or .npy)",
    )
    p.add_argument(
        "--uncal",
        nargs="+",
        type=Path,
        default=[],
        metavar="UNCAL_STACK",
        help="uncalendered stacks (enable case 3)",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized variant: crop 32, l=8 / l=4, lr 1e-3, 3 epochs (default: the "
        "paper's settings, crop 224, 3500 epochs)",
    )
    p.add_argument("--epochs", type=positive_int, help="override every case's epochs")
    p.add_argument("--crop", type=positive_int, help="override every case's in-plane crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument(
        "--phases",
        help='stored value to phase, e.g. "0=pore,85=active,170=cbd" '
        "(default: inferred from the data and reported)",
    )
    p.add_argument("--voxel-size", type=positive_float, help="voxel size in µm")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="runs trained at once on a local Dask cluster (default 1: one by one)",
    )
    add_cluster_args(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "grid",
        help="hyper-parameter grid search (Table 2), ranked, resumable",
        description="Train every combination of the given values (comma lists) "
        "over the --preset's other settings; each configuration in OUT/<id>/ "
        "(id: hash of its settings); ranking by best validation MSE in "
        "OUT/grid.csv. Finished configurations are skipped when run again. "
        "Default values: Table 2's, restricted to what the preset allows "
        "(windows <= the stack depth, and <= 8 for quick; layers that fit the "
        "crop; quick: the preset's epochs).",
    )
    p.add_argument("stacks", nargs="+", type=Path, metavar="STACK")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument(
        "--preset",
        choices=sorted(core.PRESETS),
        default="quick",
        help="settings the grid does not vary (default quick)",
    )
    p.add_argument("--window", "-l", type=int_list, help="window lengths, e.g. 4,8,16,24,32")
    p.add_argument("--stride", type=stride_list, help="strides, e.g. 1,l (l = window length)")
    p.add_argument("--crop", type=int_list, help="in-plane crops, e.g. 64,224")
    p.add_argument("--layers", type=int_list, help="conv layers, e.g. 3,4,5")
    p.add_argument("--hidden", type=int_list, help="hidden neurons, e.g. 128,1000")
    p.add_argument("--latent", type=int_list, help="latent features, e.g. 10")
    p.add_argument("--epochs", type=int_list, help="epochs, e.g. 2000,3500")
    p.add_argument("--batch", type=int_list, help="batch sizes, e.g. 2,4,8")
    p.add_argument("--lr", type=float_list, help="learning rates, e.g. 1e-3,1e-4")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="configurations trained at once on a local Dask cluster (a process "
        "pool without dask.distributed; default 1)",
    )
    add_cluster_args(p)
    p.add_argument("--split", choices=core.windows.SPLIT_MODES, default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument(
        "--no-resume", action="store_true", help="retrain configurations that already finished"
    )
    add_stack_args(p)
    p.set_defaults(func=cmd_grid)


def cmd_study(args: argparse.Namespace) -> int:
    from ..core import studies

    cal = read_tagged(args.stacks, args, True)
    uncal = read_tagged(args.uncal, args, False)

    def progress(event: studies.StudyProgress) -> None:
        if event.epoch == 0 and event.row is None:
            info(f"[{event.run}/{event.runs}] {event.name}: {event.message}")
        elif event.row is not None:
            info(
                f"[{event.run}/{event.runs}] {event.name}: "
                + (
                    event.message
                    if event.row["status"] == "ok"
                    else f"{event.row['status']}: {event.row['note']}"
                )
            )

    rows = studies.run_study(
        cal,
        uncal,
        quick=args.quick,
        out_dir=args.out,
        epochs=args.epochs,
        device=args.device,
        seed=args.seed,
        crop=args.crop,
        progress=progress,
        scheduler=args.scheduler,
        workers=args.workers,
    )
    print(studies.format_study_table(rows), end="")
    info(
        f"wrote {args.out / 'study.csv'}, {args.out / 'study.md'} and "
        f"{sum(r['status'] == 'ok' for r in rows)} run folders"
    )
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from ..core import grid as grids

    stacks = read_stacks(args)
    grid = grids.default_grid(args.preset, stacks)
    for key in grids.GRID_KEYS:
        values = getattr(args, key)
        if values is not None:
            grid[key] = values
    total = len(grids.expand_grid(grid, args.preset))
    info(
        f"{total} configurations over the {args.preset} preset: "
        + ", ".join(f"{k}={','.join(str(v) for v in vals)}" for k, vals in grid.items())
    )

    def progress(event: grids.GridProgress) -> None:
        r = event.row
        state = (
            ("reused" if r.get("reused") else f"best val MSE {r['best_val_mse']:.4f}")
            if r["status"] == "ok"
            else f"failed: {r['error']}"
        )
        info(
            f"[{event.done}/{event.total}] {r['id']} l={r['window']} layers={r['layers']} "
            f"hidden={r['hidden']} epochs={r['epochs']} batch={r['batch']} lr={r['lr']:g}: "
            f"{state}"
        )

    if args.scheduler:
        info(f"submitting to the Dask scheduler at {args.scheduler}")
    try:
        rows = grids.run_grid(
            stacks,
            grid,
            out_dir=args.out,
            base=args.preset,
            workers=args.workers,
            resume=not args.no_resume,
            seed=args.seed,
            split_mode=args.split,
            device=args.device,
            progress=progress,
            scheduler=args.scheduler,
        )
    except KeyboardInterrupt:
        info(
            f"interrupted: queued configurations cancelled; the finished ones are in "
            f"{args.out / 'grid.csv'} and are skipped when the grid runs again"
        )
        return EXIT_INTERRUPTED
    print(grids.format_grid_table(rows), end="")
    info(f"ranking written to {args.out / 'grid.csv'}")
    return 0
