"""``gui``: napari with the plugin docked."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    add_stack_args,
    read_stacks,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "gui",
        help="open napari with the Electrode CAE widget",
        description="Open napari with STACKs loaded (with none and no --run: "
        "the synthetic CAL and UNCAL sample stacks) and the Electrode CAE widget "
        "docked.",
    )
    p.add_argument(
        "stacks",
        nargs="*",
        type=Path,
        metavar="STACK",
        help="multi-page TIFF, folder of TIFF slices, or .npy",
    )
    p.add_argument(
        "--run", type=Path, metavar="RUN_DIR", help="run folder to open in the Train panel"
    )
    p.add_argument(
        "--no-sample",
        action="store_true",
        help="with no STACK and no --run, start empty instead of loading the sample stacks",
    )
    add_stack_args(p)
    p.set_defaults(func=cmd_gui)


def cmd_gui(args: argparse.Namespace) -> int:
    from .._launch import launch  # imports napari (Qt) only now

    stacks = read_stacks(args)  # before any window opens; reports each phase mapping
    # a run folder brings its own stacks: no sample stacks beside them
    launch(
        stacks,
        run_dir=args.run,
        sample=not args.no_sample and args.run is None,
        show=True,
        freeze_gc=True,
    )
    import napari

    napari.run()
    return 0
