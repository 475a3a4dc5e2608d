"""``physics``: the physics of originals against reconstructions, and latent-metric correlations."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from .. import core
from ._common import (
    add_max_stack_arg,
    count_or_all,
    duration,
    info,
    json_safe,
    positive_int,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "physics",
        help="physics of originals vs reconstructions; latent correlations",
        description="For a run folder: microstructure metrics of every window "
        "and its phase-snapped reconstruction (RUN_DIR/metrics.csv), their "
        "comparison over the validation windows (physics.json, physics.md) and "
        "the Spearman correlation of each latent feature with each metric over "
        "non-overlapping windows, FDR-corrected, against a random encoder, with "
        "partial correlations given the phase fractions (correlations.csv).",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--no-tortuosity",
        action="store_true",
        help="skip the pore tortuosity (the costly metric: ~1-2 s per 24x224x224 volume)",
    )
    p.add_argument(
        "--max-windows",
        type=count_or_all,
        default=PHYSICS_WINDOWS,
        help="analyse a seeded random subset of at most N windows (and of N "
        f"validation windows for the comparison); default {PHYSICS_WINDOWS}, "
        "'all' for every window",
    )
    p.add_argument(
        "--tortuosity-windows",
        type=count_or_all,
        default=PHYSICS_TORTUOSITY,
        help="of those, solve the pore tortuosity (the costly metric) on a seeded "
        f"subset of at most N; default {PHYSICS_TORTUOSITY}, 'all' for every one "
        "(the others get no tortuosity value: nan)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of those subsets")
    p.add_argument(
        "--device",
        choices=("auto", "scipy", "cpu", "cuda"),
        default="auto",
        help="tortuosity solver: auto (default) = torch on a CUDA GPU if there is "
        "one, else scipy; scipy; or torch on cpu/cuda",
    )
    p.add_argument(
        "--top", type=positive_int, default=5, help="surviving correlations to print (default 5)"
    )
    add_max_stack_arg(p)
    p.set_defaults(func=cmd_physics)


#: Windows ``electrode-cae physics`` analyses by default (a seeded sample; ``--max-windows all``
#: for every one): 6,125 windows of a 256³ stack took minutes without a word.
PHYSICS_WINDOWS = 400


#: Of those, windows whose pore tortuosity is solved by default (~1-2 s each, twice: original
#: and reconstruction).
PHYSICS_TORTUOSITY = 40


def cmd_physics(args: argparse.Namespace) -> int:
    import json

    from ..core import analysis

    run = core.load_run(args.run_dir)
    data = run.load_dataset()
    tortuosity = not args.no_tortuosity
    every = analysis.select_windows(np.arange(len(data)), args.max_windows, args.seed)
    val = analysis.select_windows(run.val_idx, args.max_windows, args.seed)
    windows = np.union1d(every, val)
    solved = (
        analysis.select_windows(windows, args.tortuosity_windows, args.seed)
        if tortuosity
        else np.array([], dtype=np.int64)
    )
    splits = {int(i): "train" for i in run.train_idx} | {int(i): "val" for i in run.val_idx}
    info(
        f"{len(windows):,} of {len(data):,} windows (original and reconstruction)"
        + (
            ": a seeded sample; --max-windows all for every window"
            if len(windows) < len(data)
            else ""
        )
    )
    info(
        f"pore tortuosity on {len(solved):,} of them"
        + (
            " (--tortuosity-windows all for every one, --no-tortuosity for none)"
            if tortuosity and len(solved) < len(windows)
            else ""
            if tortuosity
            else " (--no-tortuosity)"
        )
    )
    device = None if args.device == "scipy" else args.device
    rest = np.setdiff1d(windows, solved)
    rows = _physics_rows(analysis, data, run.model, rest, solved, splits, device)
    analysis.write_metrics_csv(args.run_dir / "metrics.csv", rows)
    comparison = analysis.physics_comparison(
        data,
        run.val_idx,
        run.model,
        tortuosity=tortuosity,
        max_windows=args.max_windows,
        seed=args.seed,
        rows=rows,
        device=device,
    )
    core.checkpoint.atomic_write_text(
        args.run_dir / "physics.json", json.dumps(json_safe(comparison), indent=1)
    )
    markdown = analysis.comparison_markdown(comparison)
    core.checkpoint.atomic_write_text(args.run_dir / "physics.md", markdown)
    # correlations only over windows that share no voxel (overlapping ones are near copies)
    independent = set(int(i) for i in analysis.independent_windows(data, every))
    selected = [r for r in rows if r["window"] in independent]
    chosen = [r["window"] for r in selected]
    columns = {
        name: np.array([float(r[name]) for r in selected])
        for name in analysis.metric_columns(selected)
    }
    columns["z"] = np.array([r["z"] for r in selected], dtype=float)
    columns["calendered"] = np.array(
        [{"CAL": 1.0, "UNCAL": 0.0}.get(r["tag"], np.nan) for r in selected]
    )
    study = analysis.correlation_study(
        analysis.encode_indices(run.model, data, chosen),
        columns,
        random_latents=analysis.random_encoder_latents(run.model, data, chosen, args.seed),
    )
    analysis.write_study_csv(args.run_dir / "correlations.csv", study)
    print(markdown)
    print(
        f"Latent-metric correlations (Spearman, {len(selected)} non-overlapping windows, "
        "Benjamini-Hochberg FDR, against a random encoder): " + study.note
    )
    for j, name, r, q, partial in study.surviving()[: args.top]:
        print(
            f"  z{j + 1:<3} {name:<28} rho = {r:+.3f}  q = {core.evaluation.format_p(q)}  "
            f"partial (given fractions) = "
            + ("n/a" if not np.isfinite(partial) else f"{partial:+.3f}")
        )
    info(f"wrote metrics.csv, physics.json, physics.md and correlations.csv in {args.run_dir}")
    return 0


def _physics_rows(analysis, data, model, rest, solved, splits, device) -> list[dict]:
    """Metrics of windows ``rest`` (no tortuosity) and ``solved`` (with it), by window index,
    with progress lines and the time left on stderr; ``rest`` rows get nan tortuosities."""
    rows = []
    for indices, with_tortuosity in ((rest, False), (solved, True)):
        if not len(indices):
            continue
        what = "windows with tortuosity" if with_tortuosity else "windows"
        step, start = max(1, len(indices) // 20), time.perf_counter()

        def progress(done: int, total: int, step=step, start=start, what=what) -> None:
            if done % step == 0 or done == total:
                left = (time.perf_counter() - start) / done * (total - done)
                info(
                    f"  {done:,}/{total:,} {what}"
                    + (f", about {duration(left)} left" if done < total else "")
                )

        rows += analysis.window_metrics(
            data,
            indices,
            model,
            tortuosity=with_tortuosity,
            splits=splits,
            progress=progress,
            device=device,
        )
    with_keys = next((r for r in rows if any("tortuosity" in k for k in r)), None)
    if with_keys is not None:  # one set of columns, in order: nan where not solved
        rows = [{k: r.get(k, math.nan) for k in with_keys} for r in rows]
    return sorted(rows, key=lambda r: r["window"])
