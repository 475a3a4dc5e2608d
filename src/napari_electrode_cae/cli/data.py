"""``sample`` (synthetic electrodes) and ``summary`` (the model's layer table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import core
from ._common import (
    add_model_args,
    positive_int,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "sample",
        help="write synthetic electrode stacks (CAL and UNCAL, or one --preset)",
        description="Write synthetic 3-phase stacks as synthetic_<PRESET>.tif "
        "(multi-page TIFF, values 0 pore / 1 CBD / 2 active): the calendered and "
        "uncalendered ones by default, or one preset, e.g. --preset realistic (a "
        "cathode modelled on a real segmented NMC electrode, speckled CBD).",
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--preset",
        type=str.upper,
        choices=sorted(core.synthetic.PRESETS),
        default=None,
        help="write only this preset (case-insensitive; default: CAL and UNCAL)",
    )
    p.add_argument(
        "--shape",
        type=positive_int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help="stack shape (default 64 128 128 for CAL and UNCAL, 256 256 256 for REALISTIC)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="generator seed (default 0; UNCAL gets seed + 1 when both are written)",
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "summary",
        help="print the layer table (like the paper's Table 3)",
        description="Print each layer's output shape and parameter count.",
    )
    add_model_args(p, defaults_from_preset=False)
    p.set_defaults(func=cmd_summary)


def cmd_sample(args: argparse.Namespace) -> int:
    presets = ("CAL", "UNCAL") if args.preset is None else (args.preset,)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for offset, preset in enumerate(presets):
        if args.shape is not None:
            shape = tuple(args.shape)
        elif preset in ("CAL", "UNCAL"):
            shape = (64, 128, 128)  # quick to write; the generator's own default is larger
        else:
            shape = core.synthetic.default_shape(preset)
        path = args.out_dir / f"synthetic_{preset}.tif"
        if (path.exists() or path.is_symlink()) and not core.io.written_by_this_tool(path):
            raise core.errors.StackWriteError(
                f"{path} exists and was not written by this tool; nothing was overwritten: "
                "choose another folder"
            )
        stack = core.generate_electrode(shape, preset=preset, seed=args.seed + offset)
        core.write_stack(path, stack)
        fractions = ", ".join(
            f"{k} {v:.1%}" for k, v in core.volume_fractions(stack.labels).items()
        )
        print(f"{path}: {preset}, shape {stack.shape}, {fractions}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    model = core.build_model(
        core.ModelConfig(
            args.window, args.crop, args.layers, args.hidden, args.latent, args.norm, args.output
        )
    )
    print(f"Input [-1, 1, {args.window}, {args.crop}, {args.crop}]")
    print(core.format_summary(model), end="")
    return 0
