"""``predict`` (latent -> metric regressors) and ``design`` (latent vectors that meet physics
targets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import core
from ._common import (
    comma_list,
    info,
    json_safe,
    positive_int,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "predict",
        help="fit and cross-validate latent -> metric regressors",
        description="For a run folder: measure the physics metrics of "
        "non-overlapping windows, fit per metric a Gaussian-process regressor "
        "from the latent vector, and print R² cross-validated over blocked "
        "folds beside the same fit on a never-trained encoder's features "
        "(RUN_DIR/prediction.json; refreshed on every call).",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--max-windows",
        type=positive_int,
        default=400,
        help="non-overlapping windows measured and fitted (default %(default)s)",
    )
    p.add_argument(
        "--folds",
        type=positive_int,
        default=5,
        help="blocked cross-validation folds (default %(default)s)",
    )
    p.add_argument(
        "--no-tortuosity",
        action="store_true",
        help="leave out the pore tortuosity (the costly metric)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the window subset")
    p.add_argument(
        "--metrics",
        type=lambda t: comma_list(t, str, "metric names"),
        help="only these metrics, e.g. pore_fraction,tortuosity_pore_z (default: "
        "all of the physics report's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "design",
        help="latent vectors that meet physics targets, measured",
        description="Search the latent space of a run for microstructures "
        "that meet targets: on the run's regressors first (prediction.json, "
        "fitted now if absent), then every candidate is decoded, snapped to "
        "phases and measured; only measured values decide. Writes "
        "candidate_NN.tif (+ _latent.csv), candidates.csv and design.json.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="SPEC",
        help="NAME=VALUE:TOL, NAME<=VALUE or NAME>=VALUE with a metric name of "
        "the physics report, e.g. pore_fraction=0.40:0.01 (repeatable)",
    )
    p.add_argument("--maximize", metavar="METRIC", help="objective to maximise")
    p.add_argument("--minimize", metavar="METRIC", help="objective to minimise")
    p.add_argument(
        "--candidates",
        type=positive_int,
        default=5,
        help="candidates to return (default %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the candidates")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_design)


def _fit_prediction(args: argparse.Namespace, run, *, quiet: bool = False):
    from ..core import prediction

    data = run.load_dataset()
    state = {"last": -1}

    def progress(step: prediction.PredictionProgress) -> None:
        tenth = step.done * 10 // step.total
        if not quiet and (tenth != state["last"] or step.done == step.total):
            state["last"] = tenth
            info(f"  {step.stage}: {step.done}/{step.total}")

    report = prediction.fit_prediction(
        run.model,
        data,
        max_windows=getattr(args, "max_windows", 400),
        n_folds=getattr(args, "folds", 5),
        tortuosity=not getattr(args, "no_tortuosity", False),
        seed=getattr(args, "seed", 0),
        names=getattr(args, "metrics", None),
        progress=progress,
    )
    prediction.save_prediction(args.run_dir, report)
    return report


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from ..core import metrics, prediction

    for name in args.metrics or ():
        metrics.get(name)  # an unknown name is one error line, before any work
    run = core.load_run(args.run_dir)
    if not args.json:
        info(
            f"measuring up to {args.max_windows} non-overlapping windows, {args.folds} "
            "blocked folds"
        )
    report = _fit_prediction(args, run, quiet=args.json)
    if args.json:
        print(json.dumps(json_safe({"run": str(args.run_dir), **report.to_dict()})))
    else:
        print(prediction.r2_table(report), end="")
        info(f"wrote {args.run_dir / prediction.PREDICTION_FILE} ({report.seconds:.1f} s)")
    return 0


def cmd_design(args: argparse.Namespace) -> int:
    import json

    from ..core import design, prediction

    targets = [design.parse_target(t) for t in args.target]
    run = core.load_run(args.run_dir)
    if not (args.run_dir / prediction.PREDICTION_FILE).exists():
        info(f"no {prediction.PREDICTION_FILE} yet: fitting the regressors first")
        _fit_prediction(args, run, quiet=args.json)
    predictor = prediction.load_predictor(args.run_dir)
    voxel = float(run.stacks[0].get("voxel_size_um") or core.DEFAULT_VOXEL_SIZE_UM)

    def progress(step: design.DesignProgress) -> None:
        if not args.json and (step.done == step.total or step.done % 5 == 0):
            info(f"  {step.message}: {step.done}/{step.total}")

    result = design.design(
        run.model,
        predictor,
        targets,
        maximize=args.maximize,
        minimize=args.minimize,
        candidates=args.candidates,
        voxel_size_um=voxel,
        progress=progress,
    )
    paths = design.write_design(result, args.out, voxel)
    if args.json:
        print(
            json.dumps(
                json_safe(
                    {**result.to_dict(), "out": str(args.out), "files": [str(p) for p in paths]}
                )
            )
        )
    else:
        print("\n".join(design.summary_lines(result)))
        info(
            f"wrote {len(result.candidates)} candidates, candidates.csv and design.json in "
            f"{args.out}"
        )
    return 0
