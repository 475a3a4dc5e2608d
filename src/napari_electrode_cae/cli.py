"""The ``electrode-cae`` command line: sample data, model summary, train, evaluate, encode, decode.

Bad input is reported as one line on stderr with exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import core
from .core.errors import ElectrodeCAEError

EXIT_BAD_INPUT = 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="electrode-cae",
        description="3D convolutional auto-encoder for segmented Li-ion electrode stacks "
        "(Energies 2022, 15, 4489).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sample", help="write synthetic CAL and UNCAL electrode stacks",
                       description="Write synthetic calendered and uncalendered 3-phase stacks "
                       "(multi-page TIFF, values 0 pore / 1 CBD / 2 active).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--shape", type=_positive_int, nargs=3, metavar=("Z", "Y", "X"),
                   default=(64, 128, 128), help="stack shape (default 64 128 128)")
    p.add_argument("--seed", type=int, default=0)
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
    _add_model_args(p, defaults_from_preset=True)
    p.add_argument("--stride", "-s", type=_positive_int, help="window stride along Z")
    p.add_argument("--tile-stride", type=_positive_int,
                   help="step between in-plane tiles (default: the preset's; crop = no overlap)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch", type=_positive_int, help="batch size")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate")
    p.add_argument("--val-fraction", type=_fraction, default=0.15)
    p.add_argument("--split", choices=core.windows.SPLIT_MODES, default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from RUN_DIR/last.pt (same settings)")
    _add_stack_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="print the Table-8-style row and write the report",
                       description="Evaluate a run: train/val MSE statistics and an original "
                       "vs reconstruction comparison; writes report.json and report.md.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--window", type=int, help="window index to compare (default: seeded random "
                   "validation window)")
    p.add_argument("--seed", type=int, default=0)
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

    p = sub.add_parser("gui", help="open napari with the Electrode CAE widget",
                       description="Open napari with STACKs loaded (with none: the synthetic "
                       "CAL and UNCAL sample stacks) and the Electrode CAE widget docked.")
    p.add_argument("stacks", nargs="*", type=Path, metavar="STACK",
                   help="multi-page TIFF, folder of TIFF slices, or .npy")
    p.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="run folder to open in the Train panel")
    p.add_argument("--no-sample", action="store_true",
                   help="with no STACK, start empty instead of loading the sample stacks")
    _add_stack_args(p)
    p.set_defaults(func=cmd_gui)
    return parser


def _add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phases", help='stored value to phase, e.g. "0=pore,85=active,170=cbd" '
                   "(default: inferred from the data and reported)")
    p.add_argument("--voxel-size", type=_positive_float, help="voxel size in µm (default: from "
                   "file metadata, else 0.398)")
    p.add_argument("--tag", choices=("CAL", "UNCAL"), help="calendering state of all stacks "
                   "(default: from metadata or file name)")


def _version() -> str:
    from . import __version__

    return __version__


def _read_stacks(args: argparse.Namespace) -> list[core.ElectrodeStack]:
    phases = core.parse_phase_mapping(args.phases) if args.phases else None
    calendered = None if args.tag is None else args.tag == "CAL"
    stacks = []
    for path in args.stacks:
        stack = core.read_stack(path, phases, voxel_size_um=args.voxel_size, calendered=calendered)
        _info(f"{stack.name}: {stack.shape[0]}x{stack.shape[1]}x{stack.shape[2]} voxels, "
              f"{stack.tag}, {stack.voxel_size_um} µm, phases "
              f"{core.io.describe_phase_mapping(stack.phase_mapping)}")
        stacks.append(stack)
    return stacks


def _info(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> int:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for offset, preset in enumerate(("CAL", "UNCAL")):
        stack = core.generate_electrode(tuple(args.shape), preset=preset, seed=args.seed + offset)
        path = args.out_dir / f"synthetic_{preset}.tif"
        core.write_stack(path, stack)
        fractions = ", ".join(f"{k} {v:.1%}" for k, v in core.volume_fractions(stack.labels).items())
        print(f"{path}: {preset}, shape {stack.shape}, {fractions}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    model = core.ConvAutoEncoder3d(args.window, args.crop, args.layers, args.hidden, args.latent)
    print(f"Input [-1, 1, {args.window}, {args.crop}, {args.crop}]")
    print(core.format_summary(model), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    preset = core.get_preset(args.preset)
    spec = core.WindowSpec(
        length=args.window or preset.window.length,
        stride=args.stride or preset.window.stride,
        crop=args.crop or preset.window.crop,
        tile_stride=args.tile_stride or (preset.window.tile_stride if not args.crop else None),
    )
    config = core.TrainConfig(
        epochs=args.epochs or preset.train.epochs,
        batch_size=args.batch or preset.train.batch_size,
        lr=args.lr or preset.train.lr,
        val_fraction=args.val_fraction, seed=args.seed, split=args.split, device=args.device,
    )
    stacks = _read_stacks(args)
    data = core.WindowDataset(stacks, spec)
    train_idx, val_idx = core.split(data, config.val_fraction, config.seed, config.split)
    core.seed_everything(config.seed)
    model = core.ConvAutoEncoder3d(spec.length, spec.crop, args.layers or preset.conv_layers,
                                   args.hidden or preset.hidden, args.latent or preset.latent_dim)
    device = core.resolve_device(config.device)
    _info(f"{len(data)} windows of {spec.length}x{spec.crop}x{spec.crop} (stride {spec.stride}): "
          f"{len(train_idx)} training, {len(val_idx)} validation ({config.split} split); "
          f"{core.count_parameters(model):,} parameters on {device}")
    history: list[core.EpochReport] = []
    generator = core.train(model, data, config, train_idx=train_idx, val_idx=val_idx,
                           checkpoint_dir=args.out, resume=args.resume, yield_batches=True)
    n_batches = -(-len(train_idx) // config.batch_size)
    interrupted = False
    with tqdm(total=config.epochs * n_batches, unit="batch", file=sys.stderr,
              dynamic_ncols=True, disable=None) as bar:
        if args.resume and (args.out / "last.pt").exists():
            saved = core.checkpoint.load_training_state(args.out / "last.pt")
            history = [core.EpochReport(**row) for row in saved["history"]]
            bar.update(len(history) * n_batches)
            _info(f"resuming after epoch {len(history)} from {args.out / 'last.pt'}")
        try:
            for report in generator:
                if isinstance(report, core.BatchReport):
                    bar.update(1)
                else:
                    history.append(report)
                    bar.set_postfix(epoch=report.epoch, train=f"{report.train_mse:.4f}",
                                    val=f"{report.val_mse:.4f}", best=f"{report.best_val_mse:.4f}")
        except KeyboardInterrupt:
            generator.close()
            interrupted = True
    if not history:
        _info("stopped before the first epoch finished; nothing saved")
        return EXIT_INTERRUPTED
    report = core.evaluate(model, data, train_idx, val_idx, seed=config.seed)
    core.save_run(args.out, model, data, config, train_idx, val_idx, history, report)
    if not interrupted:  # last.pt stays after Ctrl-C so that --resume can continue
        for name in ("best.pt", "last.pt"):
            (args.out / name).unlink(missing_ok=True)
    best = min(history, key=lambda r: r.val_mse)
    _info(f"best validation MSE {best.val_mse:.4f} at epoch {best.epoch}; run saved to {args.out}")
    _print_row(report)
    return EXIT_INTERRUPTED if interrupted else 0


def _print_row(report: core.EvaluationReport) -> None:
    row = report.table8_row()
    widths = [max(len(k), len(v)) for k, v in row.items()]
    print("  ".join(k.ljust(w) for k, w in zip(row, widths)))
    print("  ".join(v.ljust(w) for v, w in zip(row.values(), widths)))


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = core.load_run(args.run_dir)
    data = run.load_dataset()
    if args.window is not None and not 0 <= args.window < len(data):
        raise core.WindowSpecError(f"window {args.window} out of range: the run has {len(data)}")
    report = core.evaluate(run.model, data, run.train_idx, run.val_idx,
                           window=args.window, seed=args.seed)
    core.write_report(args.run_dir, report)
    _print_row(report)
    fr = report.window
    print("phase fractions original / reconstruction: " + ", ".join(
        f"{k} {fr.original_fractions[k]:.1%} / {fr.reconstruction_fractions[k]:.1%}"
        for k in fr.original_fractions))
    return 0


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
        volume = run.model.decode(torch.tensor([values], dtype=torch.float32))[0, 0].numpy()
    suffix = args.out.suffix.lower()
    if args.continuous:
        if suffix == ".npy":
            np.save(args.out, volume)
        else:
            import tifffile

            tifffile.imwrite(args.out, volume)
    else:
        voxel = run.stacks[0].get("voxel_size_um", core.DEFAULT_VOXEL_SIZE_UM) if run.stacks else None
        core.write_stack(args.out, core.ElectrodeStack(core.snap_to_phases(volume),
                                                        voxel or core.DEFAULT_VOXEL_SIZE_UM,
                                                        source="decoded", name=args.out.stem))
    fractions = core.volume_fractions(core.snap_to_phases(volume))
    print(f"{args.out}: {volume.shape} " + ", ".join(f"{p} {f:.1%}" for p, f in fractions.items()))
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from ._launch import launch  # imports napari (Qt) only now

    stacks = _read_stacks(args)  # before any window opens; reports each phase mapping
    launch(stacks, run_dir=args.run, sample=not args.no_sample, show=True)
    import napari

    napari.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ElectrodeCAEError as exc:
        print(f"electrode-cae {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"electrode-cae {args.command}: error: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"electrode-cae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
