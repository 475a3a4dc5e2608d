"""The ``electrode-cae`` command line: sample data, model summary, train, evaluate, encode, decode,
case studies, grid search, physics analysis, prediction and design by target.

One module per group of commands (``data``, ``train``, ``runs``, ``studies``, ``physics``,
``design``, ``gui``), each adding its parsers with ``add_parsers``; ``_common`` holds what they
share. Every failure is one line on stderr and a non-zero exit (see :func:`main`), never a
traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .. import core
from ..core.errors import ElectrodeCAEError
from . import data, design, gui, physics, runs, studies, train
from ._common import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    OneLineParser,
    error,
    one_line,
    version,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "build_parser",
    "main",
]


def build_parser():
    parser = OneLineParser(
        prog="electrode-cae",
        description="3D convolutional auto-encoder for segmented Li-ion electrode stacks "
        "(Energies 2022, 15, 4489).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for commands in (data, train, runs, studies, physics, design, gui):
        commands.add_parsers(sub)
    return parser


#: Commands that write into an existing run folder: they hold its lock while they run.
_RUN_FOLDER_WRITERS = ("evaluate", "physics", "predict", "design")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr and a non-zero exit: 2 for
    bad input or files (the tool's own errors, OS errors), 1 for anything else (out of memory,
    a library's error, a bug: set ELECTRODE_CAE_TRACEBACK=1 to see its traceback), 3 for a
    diverged training, 130 when interrupted."""
    import contextlib

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        lock = (
            core.runfolder.lock_existing(args.run_dir)
            if args.command in _RUN_FOLDER_WRITERS
            else contextlib.nullcontext()
        )
        with lock:
            return args.func(args)
    except ElectrodeCAEError as exc:
        error(args, one_line(exc, 2000))
        return EXIT_BAD_INPUT
    except OSError as exc:
        error(
            args, f"{exc.strerror or one_line(exc)}" + (f": {exc.filename}" if exc.filename else "")
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"electrode-cae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UnicodeError as exc:
        error(
            args,
            f"a file name or text is not valid in this system's encoding ({exc}); "
            "rename it with plain characters",
        )
        return EXIT_BAD_INPUT
    except MemoryError:
        error(args, "out of memory; use smaller stacks, --crop, --batch or --hidden")
        return EXIT_FAILURE
    except Exception as exc:  # the last resort: one line, never a traceback (see docstring)
        if os.environ.get("ELECTRODE_CAE_TRACEBACK"):
            raise
        error(
            args,
            f"{type(exc).__name__}: {one_line(exc)} (unexpected; rerun with "
            "ELECTRODE_CAE_TRACEBACK=1 to see where)",
        )
        return EXIT_FAILURE
