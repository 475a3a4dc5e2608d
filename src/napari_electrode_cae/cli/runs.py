"""``evaluate``, ``encode`` and ``decode``: what a saved run folder gives."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import core
from ._common import (
    EXIT_DIVERGED,
    add_max_stack_arg,
    add_stack_args,
    evaluate_with_progress,
    json_safe,
    positive_int,
    print_phases,
    print_row,
    read_stacks,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "evaluate",
        help="print the Table-8-style row and write the report",
        description="Evaluate a run: train/val MSE statistics and an original "
        "vs reconstruction comparison; writes report.json and report.md.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (val_mse, val_nmse, voxel_accuracy, "
        "phase_fractions, phase_iou, collapsed, ...) instead of tables",
    )
    p.add_argument(
        "--window",
        type=int,
        help="window index to compare (default: seeded random validation window)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_max_stack_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "encode",
        help="write the latent features of every window as CSV",
        description="Encode every window of STACKs with a run's model.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("stacks", nargs="+", type=Path, metavar="STACK")
    p.add_argument("--out", "-o", type=Path, required=True, help="CSV file to write")
    p.add_argument("--stride", "-s", type=positive_int, help="stride (default: the run's)")
    add_stack_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="decode a latent vector to a volume",
        description="Decode latent features to a 3-phase volume (TIFF/.npy).",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--latent", required=True, help="comma-separated values, one per feature")
    p.add_argument("--out", "-o", type=Path, required=True, help=".tif or .npy to write")
    p.add_argument(
        "--continuous",
        action="store_true",
        help="write the raw float32 network output instead of phase labels",
    )
    p.set_defaults(func=cmd_decode)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    run = core.load_run(args.run_dir)
    data = run.load_dataset()
    if args.window is not None and not 0 <= args.window < len(data):
        raise core.WindowSpecError(f"window {args.window} out of range: the run has {len(data)}")
    diverged = run.health.get("state") == "diverged"
    report = evaluate_with_progress(
        run.model,
        data,
        run.train_idx,
        run.val_idx,
        args.seed,
        window=args.window,
        diverged=diverged,
    )
    core.write_report(args.run_dir, report)
    if args.json:
        print(json.dumps(json_safe(report.summary())))
    else:
        print_row(report)
        print_phases(report)
    return EXIT_DIVERGED if diverged else 0


def cmd_encode(args: argparse.Namespace) -> int:
    run = core.load_run(args.run_dir)
    spec = core.WindowSpec(
        run.window.length, args.stride or run.window.stride, run.window.crop, run.window.tile_stride
    )
    data = core.WindowDataset(read_stacks(args), spec)
    latents = core.encode_windows(run.model, data)
    core.checkpoint.atomic_write_text(args.out, core.runs.latents_table(latents, data))
    print(f"{args.out}: {len(data)} windows x {latents.shape[1]} latent features")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import torch

    run = core.load_run(args.run_dir)
    try:
        values = [float(v) for v in args.latent.split(",") if v.strip()]
    except ValueError:
        raise core.ModelConfigError(
            f"--latent must be comma-separated numbers, got {args.latent!r}"
        ) from None
    k = run.model.config.latent_dim
    if len(values) != k or not all(np.isfinite(values)):
        raise core.ModelConfigError(f"--latent needs {k} finite values, got {len(values)}")
    with torch.inference_mode():
        output = run.model.decode(torch.tensor([values], dtype=torch.float32))
        volume = run.model.values(output)[0, 0].numpy()  # network values, also of 3-phase models
        labels = run.model.phase_labels(output)[0]  # by the run's phase rule
    suffix = args.out.suffix.lower()
    if args.continuous:  # written whole, then moved into place: never a half file
        import io

        buffer = io.BytesIO()
        if suffix == ".npy":
            np.save(buffer, volume)
        else:
            import tifffile

            tifffile.imwrite(buffer, volume)
        core.checkpoint.atomic_write_bytes(args.out, buffer.getvalue())
    else:
        voxel = (
            run.stacks[0].get("voxel_size_um", core.DEFAULT_VOXEL_SIZE_UM) if run.stacks else None
        )
        core.write_stack(
            args.out,
            core.ElectrodeStack(
                labels, voxel or core.DEFAULT_VOXEL_SIZE_UM, source="decoded", name=args.out.stem
            ),
        )
    fractions = core.volume_fractions(labels)
    print(
        f"{args.out}: {volume.shape} "
        + ", ".join(f"{p} {f:.1%}" for p, f in fractions.items())
        + f" ({run.model.phase_rule.describe()})"
    )
    return 0
