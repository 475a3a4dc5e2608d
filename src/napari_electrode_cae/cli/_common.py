"""Shared by the commands: exit codes, argument types and groups, stack reading, one-line output."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import core

EXIT_FAILURE = 1


EXIT_BAD_INPUT = 2


#: A training that diverged (non-finite loss): the run folder is written and flagged.
EXIT_DIVERGED = 3


EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser that reports usage errors in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def comma_list(text: str, convert, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
    return [convert(t) for t in items]


def int_list(text: str) -> list[int]:
    return comma_list(text, positive_int, "whole numbers")


def float_list(text: str) -> list[float]:
    return comma_list(text, positive_float, "numbers")


def count_or_all(text: str) -> int | None:
    """A positive whole number, or ``all`` (None: no limit)."""
    return None if text.strip().lower() == "all" else positive_int(text)


def stride_list(text: str) -> list:
    return comma_list(
        text, lambda t: "l" if t.lower() == "l" else positive_int(t), "strides (numbers or l)"
    )


def fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_model_args(p: argparse.ArgumentParser, *, defaults_from_preset: bool) -> None:
    d = None if defaults_from_preset else core.get_preset("paper")
    p.add_argument(
        "--window",
        "-l",
        type=positive_int,
        default=None if d is None else d.window.length,
        help="window length l in slices" + ("" if d is None else " (default %(default)s)"),
    )
    p.add_argument(
        "--crop",
        type=positive_int,
        default=None if d is None else d.window.crop,
        help="in-plane crop in voxels" + ("" if d is None else " (default %(default)s)"),
    )
    p.add_argument(
        "--layers",
        type=int,
        choices=(3, 4, 5),
        default=None if d is None else d.conv_layers,
        help="conv layers (3, 4 or 5)",
    )
    p.add_argument(
        "--hidden",
        type=positive_int,
        default=None if d is None else d.hidden,
        help="hidden neurons of the fully connected layer",
    )
    p.add_argument(
        "--latent",
        type=positive_int,
        default=None if d is None else d.latent_dim,
        help="number of latent features",
    )
    p.add_argument(
        "--norm",
        choices=core.model.NORM_CHOICES,
        default=None if d is None else d.norm,
        help="normalisation after each convolution (the paper: none)",
    )
    p.add_argument(
        "--output",
        choices=core.model.OUTPUT_CHOICES,
        default=None if d is None else d.output,
        help="value: one channel of network values, MSE (the paper); phases: three "
        "phase channels, cross-entropy, argmax",
    )


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="submit each run as a task to this running Dask scheduler, e.g. "
        "tcp://10.0.0.5:8786 (OUT must be on a path every worker sees; with "
        "--device cuda each task asks for a GPU=1 worker resource)",
    )


def add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--phases",
        help='stored value to phase, e.g. "0=pore,85=active,170=cbd" '
        "(default: inferred from the data and reported)",
    )
    p.add_argument(
        "--voxel-size",
        type=positive_float,
        help="voxel size in µm (default: from file metadata, else 0.398)",
    )
    p.add_argument(
        "--tag",
        choices=("CAL", "UNCAL"),
        help="calendering state of all stacks (default: from metadata or file name)",
    )
    add_max_stack_arg(p)


def add_max_stack_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-stack-gib",
        type=positive_float,
        metavar="GIB",
        help="largest memory a compressed stack may take once decoded (default "
        f"{core.limits.DEFAULT_MAX_STACK_GIB:g} GiB, at most half the memory); "
        "checked before decoding",
    )


def version() -> str:
    from .. import __version__

    return __version__


def read_stacks(args: argparse.Namespace) -> list[core.ElectrodeStack]:
    phases = core.parse_phase_mapping(args.phases) if args.phases else None
    calendered = None if args.tag is None else args.tag == "CAL"
    stacks = []
    for path in args.stacks:
        stack = core.read_stack(
            path,
            phases,
            voxel_size_um=args.voxel_size,
            calendered=calendered,
            max_stack_gib=getattr(args, "max_stack_gib", None),
        )
        info(
            f"{stack.name}: {stack.shape[0]}x{stack.shape[1]}x{stack.shape[2]} voxels, "
            f"{stack.tag}, {stack.voxel_size_um} µm, phases "
            f"{core.io.describe_phase_mapping(stack.phase_mapping)}"
        )
        stacks.append(stack)
    return stacks


def info(message: str) -> None:
    """A progress line on stderr; under torchrun only rank 0's (``RANK`` is set there)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def report_health(report: core.EvaluationReport) -> core.health.Health:
    p = report.phases
    return core.health.Health(p.health, p.message, p.advice)


def evaluate_with_progress(
    model, data, train_idx, val_idx, seed, *, window=None, diverged=False
) -> core.EvaluationReport:
    from tqdm import tqdm

    total = len(train_idx) + len(val_idx)
    with tqdm(
        total=total,
        unit="window",
        desc="evaluating",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,
        leave=False,
    ) as bar:

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        return core.evaluate(
            model,
            data,
            train_idx,
            val_idx,
            window=window,
            seed=seed,
            progress=progress,
            diverged=diverged,
        )


def print_row(report: core.EvaluationReport) -> None:
    row = report.table8_row()
    widths = [max(len(k), len(v)) for k, v in row.items()]
    print("  ".join(k.ljust(w) for k, w in zip(row, widths)))
    print("  ".join(v.ljust(w) for v, w in zip(row.values(), widths)))


def print_phases(report: core.EvaluationReport) -> None:
    """The phase-level judgement of all validation windows, and a warning if not healthy."""
    p = report.phases
    fo, fr = p.phase_fractions["original"], p.phase_fractions["reconstruction"]
    print(
        f"all {p.windows} validation windows, phases by {p.rule}: voxel accuracy "
        f"{p.voxel_accuracy:.1%}, NMSE {p.val_nmse:.3f}, spread {p.spread:.2f}"
    )
    print(
        "phase fractions original / reconstruction (IoU): "
        + ", ".join(f"{k} {fo[k]:.1%} / {fr[k]:.1%} ({p.phase_iou[k]:.2f})" for k in fo)
    )
    t = p.tpb_density_per_um2
    print(
        f"TPB density original / reconstruction: {t['original']:.4f} / "
        f"{t['reconstruction']:.4f} µm⁻²"
    )
    if p.health != "ok":
        info(f"warning: {p.message}; {p.advice}")


def read_tagged(
    paths: Sequence[Path], args: argparse.Namespace, calendered: bool
) -> list[core.ElectrodeStack]:
    phases = core.parse_phase_mapping(args.phases) if args.phases else None
    stacks = []
    for path in paths:
        stack = core.read_stack(
            path,
            phases,
            voxel_size_um=args.voxel_size,
            calendered=calendered,
            max_stack_gib=getattr(args, "max_stack_gib", None),
        )
        info(
            f"{stack.name}: {stack.shape[0]}x{stack.shape[1]}x{stack.shape[2]} voxels, "
            f"{stack.tag}, {stack.voxel_size_um} µm, phases "
            f"{core.io.describe_phase_mapping(stack.phase_mapping)}"
        )
        stacks.append(stack)
    return stacks


def duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def json_safe(value):
    """NaN and inf become null, so that the file is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (torch's span several), at most ``limit`` chars."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error(args: argparse.Namespace, message: str) -> None:
    print(f"electrode-cae {args.command}: error: {message}", file=sys.stderr)
