"""The ``electrode-cae`` command line: sample data, model summary, train, evaluate, encode, decode,
case studies, grid search, physics analysis, prediction and design by target.

Bad input is reported as one line on stderr with exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import core
from .core.errors import ElectrodeCAEError

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
#: A training that diverged (non-finite loss): the run folder is written and flagged.
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports usage errors in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _comma_list(text: str, convert, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
    return [convert(t) for t in items]


def _int_list(text: str) -> list[int]:
    return _comma_list(text, _positive_int, "whole numbers")


def _float_list(text: str) -> list[float]:
    return _comma_list(text, _positive_float, "numbers")


def _count_or_all(text: str) -> int | None:
    """A positive whole number, or ``all`` (None: no limit)."""
    return None if text.strip().lower() == "all" else _positive_int(text)


#: Windows ``electrode-cae physics`` analyses by default (a seeded sample; ``--max-windows all``
#: for every one): 6,125 windows of a 256³ stack took minutes without a word.
PHYSICS_WINDOWS = 400
#: Of those, windows whose pore tortuosity is solved by default (~1-2 s each, twice: original
#: and reconstruction).
PHYSICS_TORTUOSITY = 40


def _stride_list(text: str) -> list:
    return _comma_list(text, lambda t: "l" if t.lower() == "l" else _positive_int(t),
                       "strides (numbers or l)")


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_model_args(p: argparse.ArgumentParser, *, defaults_from_preset: bool) -> None:
    d = None if defaults_from_preset else core.get_preset("paper")
    p.add_argument("--window", "-l", type=_positive_int,
                   default=None if d is None else d.window.length,
                   help="window length l in slices" + ("" if d is None else " (default %(default)s)"))
    p.add_argument("--crop", type=_positive_int, default=None if d is None else d.window.crop,
                   help="in-plane crop in voxels" + ("" if d is None else " (default %(default)s)"))
    p.add_argument("--layers", type=int, choices=(3, 4, 5),
                   default=None if d is None else d.conv_layers, help="conv layers (3, 4 or 5)")
    p.add_argument("--hidden", type=_positive_int, default=None if d is None else d.hidden,
                   help="hidden neurons of the fully connected layer")
    p.add_argument("--latent", type=_positive_int, default=None if d is None else d.latent_dim,
                   help="number of latent features")
    p.add_argument("--norm", choices=core.model.NORM_CHOICES,
                   default=None if d is None else d.norm,
                   help="normalisation after each convolution (the paper: none)")
    p.add_argument("--output", choices=core.model.OUTPUT_CHOICES,
                   default=None if d is None else d.output,
                   help="value: one channel of network values, MSE (the paper); phases: three "
                        "phase channels, cross-entropy, argmax")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="electrode-cae",
        description="3D convolutional auto-encoder for segmented Li-ion electrode stacks "
        "(Energies 2022, 15, 4489).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sample", help="write synthetic electrode stacks (CAL and UNCAL, or "
                       "one --preset)",
                       description="Write synthetic 3-phase stacks as synthetic_<PRESET>.tif "
                       "(multi-page TIFF, values 0 pore / 1 CBD / 2 active): the calendered and "
                       "uncalendered ones by default, or one preset, e.g. --preset realistic (a "
                       "cathode modelled on a real segmented NMC electrode, speckled CBD).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--preset", type=str.upper, choices=sorted(core.synthetic.PRESETS),
                   default=None, help="write only this preset (case-insensitive; default: CAL "
                   "and UNCAL)")
    p.add_argument("--shape", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"),
                   default=None, help="stack shape (default 64 128 128 for CAL and UNCAL, "
                   "256 256 256 for REALISTIC)")
    p.add_argument("--seed", type=int, default=0,
                   help="generator seed (default 0; UNCAL gets seed + 1 when both are written)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("summary", help="print the layer table (like the paper's Table 3)",
                       description="Print each layer's output shape and parameter count.")
    _add_model_args(p, defaults_from_preset=False)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train an auto-encoder on electrode stacks",
                       description="Cut STACKs into windows, train, evaluate and save a run "
                       "folder. Settings not given come from --preset.")
    p.add_argument("stacks", nargs="+", type=Path, metavar="STACK",
                   help="multi-page TIFF, folder of TIFF slices, or .npy")
    p.add_argument("--out", "-o", type=Path, required=True, help="run folder to write")
    p.add_argument("--preset", choices=sorted(core.PRESETS), default="quick",
                   help="base settings (default quick)")
    p.add_argument("--tune-malloc", action="store_true",
                   help="Linux/glibc: keep freed training buffers in this process instead of "
                   "returning them to the system (faster CPU steps, ~45 MiB more peak memory)")
    _add_model_args(p, defaults_from_preset=True)
    p.add_argument("--stride", "-s", type=_positive_int, help="window stride along Z")
    p.add_argument("--tile-stride", type=_positive_int,
                   help="step between in-plane tiles (default: the preset's; crop = no overlap)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch", type=_positive_int, help="batch size")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate")
    p.add_argument("--val-fraction", type=_fraction, default=0.15)
    p.add_argument("--split", choices=core.windows.SPLIT_MODES, default="auto",
                   help="auto (default): blocked by depth when windows overlap along Z, else "
                        "random; random is the paper's split, which leaks overlapping windows "
                        "into validation")
    p.add_argument("--windows-per-epoch", type=int, metavar="N",
                   help="training windows sampled per epoch (0 = all; default: the preset's)")
    p.add_argument("--warmup-epochs", type=int, metavar="N",
                   help="epochs of linear learning-rate warm-up (default: the preset's)")
    p.add_argument("--schedule", choices=core.training.SCHEDULE_CHOICES,
                   help="learning rate after the warm-up (default: the preset's)")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the gradient norm (0 = off; default: the preset's)")
    p.add_argument("--phase-loss", choices=core.losses.PHASE_LOSS_CHOICES,
                   help="loss of --output phases models (default ce)")
    p.add_argument("--phase-rule", choices=("fitted", "nearest", "argmax"),
                   help="how the output becomes phases: fitted to the training fractions "
                        "(thresholds, or per-phase offsets of three-phase logits), or unfitted: "
                        "the paper's nearest value for one channel, argmax for three (default: "
                        "the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument("--precision", choices=core.training.PRECISION_CHOICES, default="fp32",
                   help="fp32 (default, the paper's numerics) or bf16 mixed precision "
                        "(faster on GPUs with bfloat16 units; validation stays fp32)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from RUN_DIR/last.pt (same settings and "
                   "stacks, else refused naming the field; --epochs may grow)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run folder of this tool (only its own files are removed); "
                   "a folder holding other files is always refused")
    _add_stack_args(p)
    p.set_defaults(func=_malloc_tuned(cmd_train))

    p = sub.add_parser("evaluate", help="print the Table-8-style row and write the report",
                       description="Evaluate a run: train/val MSE statistics and an original "
                       "vs reconstruction comparison; writes report.json and report.md.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (val_mse, val_nmse, voxel_accuracy, "
                        "phase_fractions, phase_iou, collapsed, ...) instead of tables")
    p.add_argument("--window", type=int, help="window index to compare (default: seeded random "
                   "validation window)")
    p.add_argument("--seed", type=int, default=0)
    _add_max_stack_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("encode", help="write the latent features of every window as CSV",
                       description="Encode every window of STACKs with a run's model.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("stacks", nargs="+", type=Path, metavar="STACK")
    p.add_argument("--out", "-o", type=Path, required=True, help="CSV file to write")
    p.add_argument("--stride", "-s", type=_positive_int, help="stride (default: the run's)")
    _add_stack_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a latent vector to a volume",
                       description="Decode latent features to a 3-phase volume (TIFF/.npy).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--latent", required=True, help="comma-separated values, one per feature")
    p.add_argument("--out", "-o", type=Path, required=True, help=".tif or .npy to write")
    p.add_argument("--continuous", action="store_true",
                   help="write the raw float32 network output instead of phase labels")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("study", help="run the paper's case studies (Table 8), random vs blocked",
                       description="Train and evaluate case studies 1 (CAL, stride 1), 2 (CAL, "
                       "stride = l), 3a/3b (CAL + UNCAL, stride 1 / l), each with a random and a "
                       "blocked split; prints the table and writes OUT/study.csv, OUT/study.md "
                       "and one run folder per run. Without --uncal, case 3 is skipped.")
    p.add_argument("stacks", nargs="+", type=Path, metavar="CAL_STACK",
                   help="calendered stacks (TIFF, folder of slices or .npy)")
    p.add_argument("--uncal", nargs="+", type=Path, default=[], metavar="UNCAL_STACK",
                   help="uncalendered stacks (enable case 3)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized variant: crop 32, l=8 / l=4, lr 1e-3, 3 epochs (default: the "
                   "paper's settings, crop 224, 3500 epochs)")
    p.add_argument("--epochs", type=_positive_int, help="override every case's epochs")
    p.add_argument("--crop", type=_positive_int, help="override every case's in-plane crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument("--phases", help='stored value to phase, e.g. "0=pore,85=active,170=cbd" '
                   "(default: inferred from the data and reported)")
    p.add_argument("--voxel-size", type=_positive_float, help="voxel size in µm")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="runs trained at once on a local Dask cluster (default 1: one by one)")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("grid", help="hyper-parameter grid search (Table 2), ranked, resumable",
                       description="Train every combination of the given values (comma lists) "
                       "over the --preset's other settings; each configuration in OUT/<id>/ "
                       "(id: hash of its settings); ranking by best validation MSE in "
                       "OUT/grid.csv. Finished configurations are skipped when run again. "
                       "Default values: Table 2's, restricted to what the preset allows "
                       "(windows <= the stack depth, and <= 8 for quick; layers that fit the "
                       "crop; quick: the preset's epochs).")
    p.add_argument("stacks", nargs="+", type=Path, metavar="STACK")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--preset", choices=sorted(core.PRESETS), default="quick",
                   help="settings the grid does not vary (default quick)")
    p.add_argument("--window", "-l", type=_int_list, help="window lengths, e.g. 4,8,16,24,32")
    p.add_argument("--stride", type=_stride_list, help="strides, e.g. 1,l (l = window length)")
    p.add_argument("--crop", type=_int_list, help="in-plane crops, e.g. 64,224")
    p.add_argument("--layers", type=_int_list, help="conv layers, e.g. 3,4,5")
    p.add_argument("--hidden", type=_int_list, help="hidden neurons, e.g. 128,1000")
    p.add_argument("--latent", type=_int_list, help="latent features, e.g. 10")
    p.add_argument("--epochs", type=_int_list, help="epochs, e.g. 2000,3500")
    p.add_argument("--batch", type=_int_list, help="batch sizes, e.g. 2,4,8")
    p.add_argument("--lr", type=_float_list, help="learning rates, e.g. 1e-3,1e-4")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="configurations trained at once on a local Dask cluster (a process "
                   "pool without dask.distributed; default 1)")
    _add_cluster_args(p)
    p.add_argument("--split", choices=core.windows.SPLIT_MODES, default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument("--no-resume", action="store_true",
                   help="retrain configurations that already finished")
    _add_stack_args(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("physics", help="physics of originals vs reconstructions; latent "
                       "correlations",
                       description="For a run folder: microstructure metrics of every window "
                       "and its phase-snapped reconstruction (RUN_DIR/metrics.csv), their "
                       "comparison over the validation windows (physics.json, physics.md) and "
                       "the Spearman correlation of each latent feature with each metric over "
                       "non-overlapping windows, FDR-corrected, against a random encoder, with "
                       "partial correlations given the phase fractions (correlations.csv).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--no-tortuosity", action="store_true",
                   help="skip the pore tortuosity (the costly metric: ~1-2 s per 24x224x224 "
                   "volume)")
    p.add_argument("--max-windows", type=_count_or_all, default=PHYSICS_WINDOWS,
                   help="analyse a seeded random subset of at most N windows (and of N "
                   f"validation windows for the comparison); default {PHYSICS_WINDOWS}, "
                   "'all' for every window")
    p.add_argument("--tortuosity-windows", type=_count_or_all, default=PHYSICS_TORTUOSITY,
                   help="of those, solve the pore tortuosity (the costly metric) on a seeded "
                   f"subset of at most N; default {PHYSICS_TORTUOSITY}, 'all' for every one "
                   "(the others get no tortuosity value: nan)")
    p.add_argument("--seed", type=int, default=0, help="seed of those subsets")
    p.add_argument("--device", choices=("auto", "scipy", "cpu", "cuda"), default="auto",
                   help="tortuosity solver: auto (default) = torch on a CUDA GPU if there is "
                   "one, else scipy; scipy; or torch on cpu/cuda")
    p.add_argument("--top", type=_positive_int, default=5,
                   help="surviving correlations to print (default 5)")
    _add_max_stack_arg(p)
    p.set_defaults(func=cmd_physics)

    p = sub.add_parser("predict", help="fit and cross-validate latent -> metric regressors",
                       description="For a run folder: measure the physics metrics of "
                       "non-overlapping windows, fit per metric a Gaussian-process regressor "
                       "from the latent vector, and print R² cross-validated over blocked "
                       "folds beside the same fit on a never-trained encoder's features "
                       "(RUN_DIR/prediction.json; refreshed on every call).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-windows", type=_positive_int, default=400,
                   help="non-overlapping windows measured and fitted (default %(default)s)")
    p.add_argument("--folds", type=_positive_int, default=5,
                   help="blocked cross-validation folds (default %(default)s)")
    p.add_argument("--no-tortuosity", action="store_true",
                   help="leave out the pore tortuosity (the costly metric)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window subset")
    p.add_argument("--metrics", type=lambda t: _comma_list(t, str, "metric names"),
                   help="only these metrics, e.g. pore_fraction,tortuosity_pore_z (default: "
                   "all of the physics report's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("design", help="latent vectors that meet physics targets, measured",
                       description="Search the latent space of a run for microstructures "
                       "that meet targets: on the run's regressors first (prediction.json, "
                       "fitted now if absent), then every candidate is decoded, snapped to "
                       "phases and measured; only measured values decide. Writes "
                       "candidate_NN.tif (+ _latent.csv), candidates.csv and design.json.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--target", action="append", default=[], metavar="SPEC",
                   help="NAME=VALUE:TOL, NAME<=VALUE or NAME>=VALUE with a metric name of "
                   "the physics report, e.g. pore_fraction=0.40:0.01 (repeatable)")
    p.add_argument("--maximize", metavar="METRIC", help="objective to maximise")
    p.add_argument("--minimize", metavar="METRIC", help="objective to minimise")
    p.add_argument("--candidates", type=_positive_int, default=5,
                   help="candidates to return (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="folder for the candidates")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_design)

    p = sub.add_parser("gui", help="open napari with the Electrode CAE widget",
                       description="Open napari with STACKs loaded (with none and no --run: "
                       "the synthetic CAL and UNCAL sample stacks) and the Electrode CAE widget "
                       "docked.")
    p.add_argument("stacks", nargs="*", type=Path, metavar="STACK",
                   help="multi-page TIFF, folder of TIFF slices, or .npy")
    p.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="run folder to open in the Train panel")
    p.add_argument("--no-sample", action="store_true",
                   help="with no STACK and no --run, start empty instead of loading the "
                   "sample stacks")
    _add_stack_args(p)
    p.set_defaults(func=cmd_gui)
    return parser


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="submit each run as a task to this running Dask scheduler, e.g. "
                   "tcp://10.0.0.5:8786 (OUT must be on a path every worker sees; with "
                   "--device cuda each task asks for a GPU=1 worker resource)")


def _add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phases", help='stored value to phase, e.g. "0=pore,85=active,170=cbd" '
                   "(default: inferred from the data and reported)")
    p.add_argument("--voxel-size", type=_positive_float, help="voxel size in µm (default: from "
                   "file metadata, else 0.398)")
    p.add_argument("--tag", choices=("CAL", "UNCAL"), help="calendering state of all stacks "
                   "(default: from metadata or file name)")
    _add_max_stack_arg(p)


def _add_max_stack_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-stack-gib", type=_positive_float, metavar="GIB",
                   help="largest memory a compressed stack may take once decoded (default "
                   f"{core.limits.DEFAULT_MAX_STACK_GIB:g} GiB, at most half the memory); "
                   "checked before decoding")


def _version() -> str:
    from . import __version__

    return __version__


def _read_stacks(args: argparse.Namespace) -> list[core.ElectrodeStack]:
    phases = core.parse_phase_mapping(args.phases) if args.phases else None
    calendered = None if args.tag is None else args.tag == "CAL"
    stacks = []
    for path in args.stacks:
        stack = core.read_stack(path, phases, voxel_size_um=args.voxel_size, calendered=calendered,
                                max_stack_gib=getattr(args, "max_stack_gib", None))
        _info(f"{stack.name}: {stack.shape[0]}x{stack.shape[1]}x{stack.shape[2]} voxels, "
              f"{stack.tag}, {stack.voxel_size_um} µm, phases "
              f"{core.io.describe_phase_mapping(stack.phase_mapping)}")
        stacks.append(stack)
    return stacks


def _info(message: str) -> None:
    """A progress line on stderr; under torchrun only rank 0's (``RANK`` is set there)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


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
                "choose another folder")
        stack = core.generate_electrode(shape, preset=preset, seed=args.seed + offset)
        core.write_stack(path, stack)
        fractions = ", ".join(f"{k} {v:.1%}" for k, v in core.volume_fractions(stack.labels).items())
        print(f"{path}: {preset}, shape {stack.shape}, {fractions}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    model = core.build_model(core.ModelConfig(args.window, args.crop, args.layers, args.hidden,
                                              args.latent, args.norm, args.output))
    print(f"Input [-1, 1, {args.window}, {args.crop}, {args.crop}]")
    print(core.format_summary(model), end="")
    return 0


def _train_settings(args: argparse.Namespace
                    ) -> tuple[core.WindowSpec, core.ModelConfig, core.TrainConfig, str]:
    """Window, model, training settings and phase rule: the flags, else the preset's."""
    preset = core.get_preset(args.preset)
    spec = core.WindowSpec(
        length=args.window or preset.window.length,
        stride=args.stride or preset.window.stride,
        crop=args.crop or preset.window.crop,
        tile_stride=args.tile_stride or (preset.window.tile_stride if not args.crop else None),
    )
    p = preset.train

    def given(value, default):
        return default if value is None else value

    config = core.TrainConfig(
        epochs=args.epochs or p.epochs,
        batch_size=args.batch or p.batch_size,
        lr=args.lr or p.lr,
        val_fraction=args.val_fraction, seed=args.seed, split=args.split, device=args.device,
        precision=args.precision,
        windows_per_epoch=given(args.windows_per_epoch, p.windows_per_epoch),
        warmup_epochs=given(args.warmup_epochs, p.warmup_epochs),
        schedule=given(args.schedule, p.schedule),
        grad_clip=given(args.grad_clip, p.grad_clip),
        phase_loss=given(args.phase_loss, p.phase_loss),
    )
    model = core.ModelConfig(spec.length, spec.crop, args.layers or preset.conv_layers,
                             args.hidden or preset.hidden, args.latent or preset.latent_dim,
                             args.norm or preset.norm, args.output or preset.output)
    return spec, model, config, args.phase_rule or preset.phase_rule


def _split_label(mode: str, spec: core.WindowSpec) -> str:
    resolved = core.windows.resolve_split(mode, spec)
    leaks = resolved == "random" and spec.stride < spec.length
    return resolved + (" — leaks: overlapping windows share slices across it" if leaks else "")


def _malloc_tuned(command):
    """``command`` run inside ``core.kernels.allocator.reuse_freed_memory()`` when the user
    asked for it with ``--tune-malloc`` (an opt-in: it changes this process's malloc settings)."""

    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "tune_malloc", False):
            return command(args)
        from .core.kernels.allocator import reuse_freed_memory

        with reuse_freed_memory():
            return command(args)

    return run


def cmd_train(args: argparse.Namespace) -> int:
    """``train``; started by torchrun (``WORLD_SIZE`` > 1), one rank of a data-parallel run."""
    context = core.distributed.setup(args.device)  # None outside torchrun
    try:
        if context is not None and not context.is_main:
            return _train_rank(args, context)
        # --out is checked and locked before anything else: never into files the tool did
        # not write, never two trainings in one folder (only rank 0 writes it)
        with core.runfolder.claim_for_training(args.out, resume=args.resume,
                                               overwrite=args.overwrite) as found:
            if args.resume and found != "resume":
                _info(f"nothing to resume in {args.out} (no last.pt): starting a new run")
            elif found == "replace":
                _info(f"replacing the run in {args.out} (--overwrite)")
            return _train_rank(args, context)
    finally:
        core.distributed.teardown()


def _train_rank(args: argparse.Namespace, context) -> int:
    from tqdm import tqdm

    spec, model_config, config, rule = _train_settings(args)
    main_rank = context is None or context.is_main
    world = 1 if context is None else context.world_size
    stacks = _read_stacks(args)
    data = core.WindowDataset(stacks, spec)
    core.limits.check_model_size(model_config, training=True)  # before it is allocated
    mapped = [core.io.file_state(path) if (path := core.io.memory_mapped_file(s.labels))
              else None for s in stacks]  # a mapped file must not change during training
    train_idx, val_idx = core.split(data, config.val_fraction, config.seed, config.split)
    core.seed_everything(config.seed)
    model = core.build_model(model_config)
    device = core.resolve_device(config.device) if context is None else context.device
    per_epoch = core.training.windows_per_epoch(len(train_idx), config, model_config.norm,
                                                world)
    n_batches = -(-per_epoch // (config.batch_size * world))
    _info(f"{len(data)} windows of {spec.length}x{spec.crop}x{spec.crop} (stride {spec.stride}): "
          f"{len(train_idx)} training, {len(val_idx)} validation "
          f"({_split_label(config.split, spec)}); "
          f"{core.count_parameters(model):,} parameters on {device}"
          + (" (bf16 mixed precision)" if config.precision == "bf16" else ""))
    _info(f"{config.epochs} epochs of {n_batches} batches of {config.batch_size}"
          + (f" per rank on {world} ranks ({context.backend}; effective batch "
             f"{config.batch_size * world})" if context is not None else "")
          + (f" ({per_epoch} of {len(train_idx)} training windows sampled per epoch)"
             if per_epoch < len(train_idx) else ""))
    history: list[core.EpochReport] = []
    generator = core.train(model, data, config, train_idx=train_idx, val_idx=val_idx,
                           checkpoint_dir=args.out, resume=args.resume, yield_batches=True,
                           distributed=context)
    estimate = core.training.TimeEstimate(n_batches, config.epochs, len(val_idx),
                                          config.batch_size)
    interrupted = False
    result = None
    with tqdm(total=config.epochs * n_batches, unit="batch", file=sys.stderr,
              dynamic_ncols=True, disable=None if main_rank else True) as bar:
        if args.resume and main_rank and (args.out / "last.pt").exists():
            saved = core.checkpoint.load_training_state(args.out / "last.pt")
            history = [core.EpochReport(**row) for row in saved["history"]]
            bar.update(len(history) * n_batches)
            estimate.skip_epochs(len(history))
            _info(f"resuming after epoch {len(history)} from {args.out / 'last.pt'}"
                  + (f": all {config.epochs} epochs are done, finishing the run"
                     if config.epochs == saved["epoch"] else ""))
        try:
            while True:
                report = next(generator)
                if isinstance(report, core.BatchReport):
                    bar.update(1)
                    if estimate.batch_done() and main_rank:
                        bar.write(f"estimated training time: {estimate.describe()}",
                                  file=sys.stderr)
                else:
                    history.append(report)
                    estimate.epoch_done(report.seconds)
                    core.io.check_mapped_unchanged(stacks, mapped)
                    bar.set_postfix(epoch=report.epoch, train=f"{report.train_mse:.4f}",
                                    val=f"{report.val_mse:.4f}", nmse=f"{report.val_nmse:.2f}",
                                    spread=f"{report.spread:.2f}")
        except StopIteration as stop:
            result = stop.value
        except (KeyboardInterrupt, core.distributed.PeerLostError):
            # Ctrl-C, or (under torchrun) another rank was stopped: keep what was trained
            generator.close()
            interrupted = True
    if not main_rank:  # rank 0 alone evaluates and writes the run; an interrupted other rank
        return 0  # ends with 0 so that torchrun leaves rank 0 the time to save
    if not history:
        _info("stopped before the first epoch finished; nothing saved")
        return EXIT_INTERRUPTED
    health = result.health if result is not None else core.training.history_health(history,
                                                                                   config)
    diverged = health.state == "diverged"
    core.evaluation.fit_phase_rule(model, data, train_idx, "nearest" if diverged else rule)
    report = _evaluate_with_progress(model, data, train_idx, val_idx, config.seed,
                                     diverged=diverged)
    try:
        core.save_run(args.out, model, data, config, train_idx, val_idx, history, report,
                      health=health if diverged else _report_health(report),
                      distributed=None if context is None else context.describe())
    except core.errors.ElectrodeCAEError as exc:  # e.g. the disk filled up while saving
        kept = (args.out / "last.pt").exists()
        raise core.RunFolderError(
            f"the run folder {args.out} is incomplete: {exc}"
            + ("; its last.pt is kept: run the same command with --resume to finish it"
               if kept else "")) from exc
    if not interrupted:  # last.pt stays after Ctrl-C so that --resume can continue
        for name in ("best.pt", "last.pt"):
            (args.out / name).unlink(missing_ok=True)
    finite = [r for r in history if r.finite]
    if finite:
        best = min(finite, key=lambda r: r.val_mse)
        _info(f"best validation MSE {best.val_mse:.4f} (NMSE {best.val_nmse:.3f}) at epoch "
              f"{best.epoch}; run saved to {args.out}")
    _print_row(report)
    _print_phases(report)
    if diverged:
        return EXIT_DIVERGED
    return EXIT_INTERRUPTED if interrupted else 0


def _report_health(report: core.EvaluationReport) -> core.health.Health:
    p = report.phases
    return core.health.Health(p.health, p.message, p.advice)


def _evaluate_with_progress(model, data, train_idx, val_idx, seed, *, window=None,
                            diverged=False) -> core.EvaluationReport:
    from tqdm import tqdm

    total = len(train_idx) + len(val_idx)
    with tqdm(total=total, unit="window", desc="evaluating", file=sys.stderr,
              dynamic_ncols=True, disable=None, leave=False) as bar:
        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        return core.evaluate(model, data, train_idx, val_idx, window=window, seed=seed,
                             progress=progress, diverged=diverged)


def _print_row(report: core.EvaluationReport) -> None:
    row = report.table8_row()
    widths = [max(len(k), len(v)) for k, v in row.items()]
    print("  ".join(k.ljust(w) for k, w in zip(row, widths)))
    print("  ".join(v.ljust(w) for v, w in zip(row.values(), widths)))


def _print_phases(report: core.EvaluationReport) -> None:
    """The phase-level judgement of all validation windows, and a warning if not healthy."""
    p = report.phases
    fo, fr = p.phase_fractions["original"], p.phase_fractions["reconstruction"]
    print(f"all {p.windows} validation windows, phases by {p.rule}: voxel accuracy "
          f"{p.voxel_accuracy:.1%}, NMSE {p.val_nmse:.3f}, spread {p.spread:.2f}")
    print("phase fractions original / reconstruction (IoU): " + ", ".join(
        f"{k} {fo[k]:.1%} / {fr[k]:.1%} ({p.phase_iou[k]:.2f})" for k in fo))
    t = p.tpb_density_per_um2
    print(f"TPB density original / reconstruction: {t['original']:.4f} / "
          f"{t['reconstruction']:.4f} µm⁻²")
    if p.health != "ok":
        _info(f"warning: {p.message}; {p.advice}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    run = core.load_run(args.run_dir)
    data = run.load_dataset()
    if args.window is not None and not 0 <= args.window < len(data):
        raise core.WindowSpecError(f"window {args.window} out of range: the run has {len(data)}")
    diverged = run.health.get("state") == "diverged"
    report = _evaluate_with_progress(run.model, data, run.train_idx, run.val_idx, args.seed,
                                     window=args.window, diverged=diverged)
    core.write_report(args.run_dir, report)
    if args.json:
        print(json.dumps(_json_safe(report.summary())))
    else:
        _print_row(report)
        _print_phases(report)
    return EXIT_DIVERGED if diverged else 0


def cmd_encode(args: argparse.Namespace) -> int:
    run = core.load_run(args.run_dir)
    spec = core.WindowSpec(run.window.length, args.stride or run.window.stride, run.window.crop,
                           run.window.tile_stride)
    data = core.WindowDataset(_read_stacks(args), spec)
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
        raise core.ModelConfigError(f"--latent must be comma-separated numbers, got {args.latent!r}") from None
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
        voxel = run.stacks[0].get("voxel_size_um", core.DEFAULT_VOXEL_SIZE_UM) if run.stacks else None
        core.write_stack(args.out, core.ElectrodeStack(labels,
                                                        voxel or core.DEFAULT_VOXEL_SIZE_UM,
                                                        source="decoded", name=args.out.stem))
    fractions = core.volume_fractions(labels)
    print(f"{args.out}: {volume.shape} " + ", ".join(f"{p} {f:.1%}" for p, f in fractions.items())
          + f" ({run.model.phase_rule.describe()})")
    return 0


def _read_tagged(paths: Sequence[Path], args: argparse.Namespace, calendered: bool
                 ) -> list[core.ElectrodeStack]:
    phases = core.parse_phase_mapping(args.phases) if args.phases else None
    stacks = []
    for path in paths:
        stack = core.read_stack(path, phases, voxel_size_um=args.voxel_size, calendered=calendered,
                                max_stack_gib=getattr(args, "max_stack_gib", None))
        _info(f"{stack.name}: {stack.shape[0]}x{stack.shape[1]}x{stack.shape[2]} voxels, "
              f"{stack.tag}, {stack.voxel_size_um} µm, phases "
              f"{core.io.describe_phase_mapping(stack.phase_mapping)}")
        stacks.append(stack)
    return stacks


def cmd_study(args: argparse.Namespace) -> int:
    from .core import studies

    cal = _read_tagged(args.stacks, args, True)
    uncal = _read_tagged(args.uncal, args, False)

    def progress(event: studies.StudyProgress) -> None:
        if event.epoch == 0 and event.row is None:
            _info(f"[{event.run}/{event.runs}] {event.name}: {event.message}")
        elif event.row is not None:
            _info(f"[{event.run}/{event.runs}] {event.name}: "
                  + (event.message if event.row["status"] == "ok"
                     else f"{event.row['status']}: {event.row['note']}"))

    rows = studies.run_study(cal, uncal, quick=args.quick, out_dir=args.out, epochs=args.epochs,
                             device=args.device, seed=args.seed, crop=args.crop,
                             progress=progress, scheduler=args.scheduler,
                             workers=args.workers)
    print(studies.format_study_table(rows), end="")
    _info(f"wrote {args.out / 'study.csv'}, {args.out / 'study.md'} and "
          f"{sum(r['status'] == 'ok' for r in rows)} run folders")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from .core import studies

    stacks = _read_stacks(args)
    grid = studies.default_grid(args.preset, stacks)
    for key in studies.GRID_KEYS:
        values = getattr(args, key)
        if values is not None:
            grid[key] = values
    total = len(studies.expand_grid(grid, args.preset))
    _info(f"{total} configurations over the {args.preset} preset: "
          + ", ".join(f"{k}={','.join(str(v) for v in vals)}" for k, vals in grid.items()))

    def progress(event: studies.GridProgress) -> None:
        r = event.row
        state = ("reused" if r.get("reused") else f"best val MSE {r['best_val_mse']:.4f}"
                 ) if r["status"] == "ok" else f"failed: {r['error']}"
        _info(f"[{event.done}/{event.total}] {r['id']} l={r['window']} layers={r['layers']} "
              f"hidden={r['hidden']} epochs={r['epochs']} batch={r['batch']} lr={r['lr']:g}: "
              f"{state}")

    if args.scheduler:
        _info(f"submitting to the Dask scheduler at {args.scheduler}")
    try:
        rows = studies.run_grid(stacks, grid, out_dir=args.out, base=args.preset,
                                workers=args.workers, resume=not args.no_resume,
                                seed=args.seed, split_mode=args.split, device=args.device,
                                progress=progress, scheduler=args.scheduler)
    except KeyboardInterrupt:
        _info(f"interrupted: queued configurations cancelled; the finished ones are in "
              f"{args.out / 'grid.csv'} and are skipped when the grid runs again")
        return EXIT_INTERRUPTED
    print(studies.format_grid_table(rows), end="")
    _info(f"ranking written to {args.out / 'grid.csv'}")
    return 0


def cmd_physics(args: argparse.Namespace) -> int:
    import json

    from .core import analysis

    run = core.load_run(args.run_dir)
    data = run.load_dataset()
    tortuosity = not args.no_tortuosity
    every = analysis.select_windows(np.arange(len(data)), args.max_windows, args.seed)
    val = analysis.select_windows(run.val_idx, args.max_windows, args.seed)
    windows = np.union1d(every, val)
    solved = (analysis.select_windows(windows, args.tortuosity_windows, args.seed)
              if tortuosity else np.array([], dtype=np.int64))
    splits = {int(i): "train" for i in run.train_idx} | {int(i): "val" for i in run.val_idx}
    _info(f"{len(windows):,} of {len(data):,} windows (original and reconstruction)"
          + (": a seeded sample; --max-windows all for every window"
             if len(windows) < len(data) else ""))
    _info(f"pore tortuosity on {len(solved):,} of them" + (
        " (--tortuosity-windows all for every one, --no-tortuosity for none)"
        if tortuosity and len(solved) < len(windows) else "" if tortuosity
        else " (--no-tortuosity)"))
    device = None if args.device == "scipy" else args.device
    rest = np.setdiff1d(windows, solved)
    rows = _physics_rows(analysis, data, run.model, rest, solved, splits, device)
    analysis.write_metrics_csv(args.run_dir / "metrics.csv", rows)
    comparison = analysis.physics_comparison(
        data, run.val_idx, run.model, tortuosity=tortuosity, max_windows=args.max_windows,
        seed=args.seed, rows=rows, device=device)
    core.checkpoint.atomic_write_text(args.run_dir / "physics.json",
                                      json.dumps(_json_safe(comparison), indent=1))
    markdown = analysis.comparison_markdown(comparison)
    core.checkpoint.atomic_write_text(args.run_dir / "physics.md", markdown)
    # correlations only over windows that share no voxel (overlapping ones are near copies)
    independent = set(int(i) for i in analysis.independent_windows(data, every))
    selected = [r for r in rows if r["window"] in independent]
    chosen = [r["window"] for r in selected]
    columns = {name: np.array([float(r[name]) for r in selected])
               for name in analysis.metric_columns(selected)}
    columns["z"] = np.array([r["z"] for r in selected], dtype=float)
    columns["calendered"] = np.array([{"CAL": 1.0, "UNCAL": 0.0}.get(r["tag"], np.nan)
                                      for r in selected])
    study = analysis.correlation_study(
        analysis.encode_indices(run.model, data, chosen), columns,
        random_latents=analysis.random_encoder_latents(run.model, data, chosen, args.seed))
    analysis.write_study_csv(args.run_dir / "correlations.csv", study)
    print(markdown)
    print(f"Latent-metric correlations (Spearman, {len(selected)} non-overlapping windows, "
          "Benjamini-Hochberg FDR, against a random encoder): " + study.note)
    for j, name, r, q, partial in study.surviving()[:args.top]:
        print(f"  z{j + 1:<3} {name:<28} rho = {r:+.3f}  q = {core.evaluation.format_p(q)}  "
              f"partial (given fractions) = "
              + ("n/a" if not np.isfinite(partial) else f"{partial:+.3f}"))
    _info(f"wrote metrics.csv, physics.json, physics.md and correlations.csv in {args.run_dir}")
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

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                left = (time.perf_counter() - start) / done * (total - done)
                _info(f"  {done:,}/{total:,} {what}"
                      + (f", about {_duration(left)} left" if done < total else ""))

        rows += analysis.window_metrics(data, indices, model, tortuosity=with_tortuosity,
                                        splits=splits, progress=progress, device=device)
    with_keys = next((r for r in rows if any("tortuosity" in k for k in r)), None)
    if with_keys is not None:  # one set of columns, in order: nan where not solved
        rows = [{k: r.get(k, math.nan) for k in with_keys} for r in rows]
    return sorted(rows, key=lambda r: r["window"])


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _fit_prediction(args: argparse.Namespace, run, *, quiet: bool = False):
    from .core import prediction

    data = run.load_dataset()
    state = {"last": -1}

    def progress(step: prediction.PredictionProgress) -> None:
        tenth = step.done * 10 // step.total
        if not quiet and (tenth != state["last"] or step.done == step.total):
            state["last"] = tenth
            _info(f"  {step.stage}: {step.done}/{step.total}")

    report = prediction.fit_prediction(
        run.model, data, max_windows=getattr(args, "max_windows", 400),
        n_folds=getattr(args, "folds", 5), tortuosity=not getattr(args, "no_tortuosity", False),
        seed=getattr(args, "seed", 0), names=getattr(args, "metrics", None), progress=progress)
    prediction.save_prediction(args.run_dir, report)
    return report


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .core import metrics, prediction

    for name in args.metrics or ():
        metrics.get(name)  # an unknown name is one error line, before any work
    run = core.load_run(args.run_dir)
    if not args.json:
        _info(f"measuring up to {args.max_windows} non-overlapping windows, {args.folds} "
              "blocked folds")
    report = _fit_prediction(args, run, quiet=args.json)
    if args.json:
        print(json.dumps(_json_safe({"run": str(args.run_dir), **report.to_dict()})))
    else:
        print(prediction.r2_table(report), end="")
        _info(f"wrote {args.run_dir / prediction.PREDICTION_FILE} ({report.seconds:.1f} s)")
    return 0


def cmd_design(args: argparse.Namespace) -> int:
    import json

    from .core import design, prediction

    targets = [design.parse_target(t) for t in args.target]
    run = core.load_run(args.run_dir)
    if not (args.run_dir / prediction.PREDICTION_FILE).exists():
        _info(f"no {prediction.PREDICTION_FILE} yet: fitting the regressors first")
        _fit_prediction(args, run, quiet=args.json)
    predictor = prediction.load_predictor(args.run_dir)
    voxel = float(run.stacks[0].get("voxel_size_um") or core.DEFAULT_VOXEL_SIZE_UM)

    def progress(step: design.DesignProgress) -> None:
        if not args.json and (step.done == step.total or step.done % 5 == 0):
            _info(f"  {step.message}: {step.done}/{step.total}")

    result = design.design(run.model, predictor, targets, maximize=args.maximize,
                           minimize=args.minimize, candidates=args.candidates,
                           voxel_size_um=voxel, progress=progress)
    paths = design.write_design(result, args.out, voxel)
    if args.json:
        print(json.dumps(_json_safe({**result.to_dict(), "out": str(args.out),
                                     "files": [str(p) for p in paths]})))
    else:
        print("\n".join(design.summary_lines(result)))
        _info(f"wrote {len(result.candidates)} candidates, candidates.csv and design.json in "
              f"{args.out}")
    return 0


def _json_safe(value):
    """NaN and inf become null, so that the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def cmd_gui(args: argparse.Namespace) -> int:
    from ._launch import launch  # imports napari (Qt) only now

    stacks = _read_stacks(args)  # before any window opens; reports each phase mapping
    # a run folder brings its own stacks: no sample stacks beside them
    launch(stacks, run_dir=args.run, sample=not args.no_sample and args.run is None, show=True,
           freeze_gc=True)
    import napari

    napari.run()
    return 0


#: Commands that write into an existing run folder: they hold its lock while they run.
_RUN_FOLDER_WRITERS = ("evaluate", "physics", "predict", "design")


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (torch's span several), at most ``limit`` chars."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(args: argparse.Namespace, message: str) -> None:
    print(f"electrode-cae {args.command}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr and a non-zero exit: 2 for
    bad input or files (the tool's own errors, OS errors), 1 for anything else (out of memory,
    a library's error, a bug: set ELECTRODE_CAE_TRACEBACK=1 to see its traceback), 3 for a
    diverged training, 130 when interrupted."""
    import contextlib

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        lock = (core.runfolder.lock_existing(args.run_dir)
                if args.command in _RUN_FOLDER_WRITERS else contextlib.nullcontext())
        with lock:
            return args.func(args)
    except ElectrodeCAEError as exc:
        _error(args, _one_line(exc, 2000))
        return EXIT_BAD_INPUT
    except OSError as exc:
        _error(args, f"{exc.strerror or _one_line(exc)}"
               + (f": {exc.filename}" if exc.filename else ""))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"electrode-cae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UnicodeError as exc:
        _error(args, f"a file name or text is not valid in this system's encoding ({exc}); "
               "rename it with plain characters")
        return EXIT_BAD_INPUT
    except MemoryError:
        _error(args, "out of memory; use smaller stacks, --crop, --batch or --hidden")
        return EXIT_FAILURE
    except Exception as exc:  # the last resort: one line, never a traceback (see docstring)
        if os.environ.get("ELECTRODE_CAE_TRACEBACK"):
            raise
        _error(args, f"{type(exc).__name__}: {_one_line(exc)} (unexpected; rerun with "
               "ELECTRODE_CAE_TRACEBACK=1 to see where)")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
