"""``train``: windows, training (alone or one rank under torchrun), evaluation and the run
folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import core
from ._common import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    add_model_args,
    add_stack_args,
    evaluate_with_progress,
    fraction,
    info,
    positive_float,
    positive_int,
    print_phases,
    print_row,
    read_stacks,
    report_health,
)


def add_parsers(sub) -> None:
    """Add this module's commands to ``sub`` (the subparsers of build_parser)."""
    p = sub.add_parser(
        "train",
        help="train an auto-encoder on electrode stacks",
        description="Cut STACKs into windows, train, evaluate and save a run "
        "folder. Settings not given come from --preset.",
    )
    p.add_argument(
        "stacks",
        nargs="+",
        type=Path,
        metavar="STACK",
        help="multi-page TIFF, folder of TIFF slices, or .npy",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="run folder to write")
    p.add_argument(
        "--preset",
        choices=sorted(core.PRESETS),
        default="quick",
        help="base settings (default quick)",
    )
    p.add_argument(
        "--tune-malloc",
        action="store_true",
        help="Linux/glibc: keep freed training buffers in this process instead of "
        "returning them to the system (faster CPU steps, ~45 MiB more peak memory)",
    )
    add_model_args(p, defaults_from_preset=True)
    p.add_argument("--stride", "-s", type=positive_int, help="window stride along Z")
    p.add_argument(
        "--tile-stride",
        type=positive_int,
        help="step between in-plane tiles (default: the preset's; crop = no overlap)",
    )
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch", type=positive_int, help="batch size")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate")
    p.add_argument("--val-fraction", type=fraction, default=0.15)
    p.add_argument(
        "--split",
        choices=core.windows.SPLIT_MODES,
        default="auto",
        help="auto (default): blocked by depth when windows overlap along Z, else "
        "random; random is the paper's split, which leaks overlapping windows "
        "into validation",
    )
    p.add_argument(
        "--windows-per-epoch",
        type=int,
        metavar="N",
        help="training windows sampled per epoch (0 = all; default: the preset's)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        metavar="N",
        help="epochs of linear learning-rate warm-up (default: the preset's)",
    )
    p.add_argument(
        "--schedule",
        choices=core.training.SCHEDULE_CHOICES,
        help="learning rate after the warm-up (default: the preset's)",
    )
    p.add_argument(
        "--grad-clip",
        type=float,
        metavar="NORM",
        help="clip the gradient norm (0 = off; default: the preset's)",
    )
    p.add_argument(
        "--phase-loss",
        choices=core.losses.PHASE_LOSS_CHOICES,
        help="loss of --output phases models (default ce)",
    )
    p.add_argument(
        "--phase-rule",
        choices=("fitted", "nearest", "argmax"),
        help="how the output becomes phases: fitted to the training fractions "
        "(thresholds, or per-phase offsets of three-phase logits), or unfitted: "
        "the paper's nearest value for one channel, argmax for three (default: "
        "the preset's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=core.training.DEVICE_CHOICES, default="auto")
    p.add_argument(
        "--precision",
        choices=core.training.PRECISION_CHOICES,
        default="fp32",
        help="fp32 (default, the paper's numerics) or bf16 mixed precision "
        "(faster on GPUs with bfloat16 units; validation stays fp32)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from RUN_DIR/last.pt (same settings and "
        "stacks, else refused naming the field; --epochs may grow)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run folder of this tool (only its own files are removed); "
        "a folder holding other files is always refused",
    )
    add_stack_args(p)
    p.set_defaults(func=_malloc_tuned(cmd_train))


def _train_settings(
    args: argparse.Namespace,
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
        val_fraction=args.val_fraction,
        seed=args.seed,
        split=args.split,
        device=args.device,
        precision=args.precision,
        windows_per_epoch=given(args.windows_per_epoch, p.windows_per_epoch),
        warmup_epochs=given(args.warmup_epochs, p.warmup_epochs),
        schedule=given(args.schedule, p.schedule),
        grad_clip=given(args.grad_clip, p.grad_clip),
        phase_loss=given(args.phase_loss, p.phase_loss),
    )
    model = core.ModelConfig(
        spec.length,
        spec.crop,
        args.layers or preset.conv_layers,
        args.hidden or preset.hidden,
        args.latent or preset.latent_dim,
        args.norm or preset.norm,
        args.output or preset.output,
    )
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
        from ..core.kernels.allocator import reuse_freed_memory

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
        with core.runfolder.claim_for_training(
            args.out, resume=args.resume, overwrite=args.overwrite
        ) as found:
            if args.resume and found != "resume":
                info(f"nothing to resume in {args.out} (no last.pt): starting a new run")
            elif found == "replace":
                info(f"replacing the run in {args.out} (--overwrite)")
            return _train_rank(args, context)
    finally:
        core.distributed.teardown()


def _train_rank(args: argparse.Namespace, context) -> int:
    from tqdm import tqdm

    spec, model_config, config, rule = _train_settings(args)
    main_rank = context is None or context.is_main
    world = 1 if context is None else context.world_size
    stacks = read_stacks(args)
    data = core.WindowDataset(stacks, spec)
    core.limits.check_model_size(model_config, training=True)  # before it is allocated
    mapped = [
        core.io.file_state(path) if (path := core.io.memory_mapped_file(s.labels)) else None
        for s in stacks
    ]  # a mapped file must not change during training
    train_idx, val_idx = core.split(data, config.val_fraction, config.seed, config.split)
    core.seed_everything(config.seed)
    model = core.build_model(model_config)
    device = core.resolve_device(config.device) if context is None else context.device
    per_epoch = core.training.windows_per_epoch(len(train_idx), config, model_config.norm, world)
    n_batches = -(-per_epoch // (config.batch_size * world))
    info(
        f"{len(data)} windows of {spec.length}x{spec.crop}x{spec.crop} (stride {spec.stride}): "
        f"{len(train_idx)} training, {len(val_idx)} validation "
        f"({_split_label(config.split, spec)}); "
        f"{core.count_parameters(model):,} parameters on {device}"
        + (" (bf16 mixed precision)" if config.precision == "bf16" else "")
    )
    info(
        f"{config.epochs} epochs of {n_batches} batches of {config.batch_size}"
        + (
            f" per rank on {world} ranks ({context.backend}; effective batch "
            f"{config.batch_size * world})"
            if context is not None
            else ""
        )
        + (
            f" ({per_epoch} of {len(train_idx)} training windows sampled per epoch)"
            if per_epoch < len(train_idx)
            else ""
        )
    )
    history: list[core.EpochReport] = []
    generator = core.train(
        model,
        data,
        config,
        train_idx=train_idx,
        val_idx=val_idx,
        checkpoint_dir=args.out,
        resume=args.resume,
        yield_batches=True,
        distributed=context,
    )
    estimate = core.training.TimeEstimate(n_batches, config.epochs, len(val_idx), config.batch_size)
    interrupted = False
    result = None
    with tqdm(
        total=config.epochs * n_batches,
        unit="batch",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if main_rank else True,
    ) as bar:
        if args.resume and main_rank and (args.out / "last.pt").exists():
            saved = core.checkpoint.load_training_state(args.out / "last.pt")
            history = [core.EpochReport(**row) for row in saved["history"]]
            bar.update(len(history) * n_batches)
            estimate.skip_epochs(len(history))
            info(
                f"resuming after epoch {len(history)} from {args.out / 'last.pt'}"
                + (
                    f": all {config.epochs} epochs are done, finishing the run"
                    if config.epochs == saved["epoch"]
                    else ""
                )
            )
        try:
            while True:
                report = next(generator)
                if isinstance(report, core.BatchReport):
                    bar.update(1)
                    if estimate.batch_done() and main_rank:
                        bar.write(
                            f"estimated training time: {estimate.describe()}", file=sys.stderr
                        )
                else:
                    history.append(report)
                    estimate.epoch_done(report.seconds)
                    core.io.check_mapped_unchanged(stacks, mapped)
                    bar.set_postfix(
                        epoch=report.epoch,
                        train=f"{report.train_mse:.4f}",
                        val=f"{report.val_mse:.4f}",
                        nmse=f"{report.val_nmse:.2f}",
                        spread=f"{report.spread:.2f}",
                    )
        except StopIteration as stop:
            result = stop.value
        except (KeyboardInterrupt, core.distributed.PeerLostError):
            # Ctrl-C, or (under torchrun) another rank was stopped: keep what was trained
            generator.close()
            interrupted = True
    if not main_rank:  # rank 0 alone evaluates and writes the run; an interrupted other rank
        return 0  # ends with 0 so that torchrun leaves rank 0 the time to save
    if not history:
        info("stopped before the first epoch finished; nothing saved")
        return EXIT_INTERRUPTED
    health = result.health if result is not None else core.training.history_health(history, config)
    diverged = health.state == "diverged"
    core.evaluation.fit_phase_rule(model, data, train_idx, "nearest" if diverged else rule)
    report = evaluate_with_progress(model, data, train_idx, val_idx, config.seed, diverged=diverged)
    try:
        core.save_run(
            args.out,
            model,
            data,
            config,
            train_idx,
            val_idx,
            history,
            report,
            health=health if diverged else report_health(report),
            distributed=None if context is None else context.describe(),
        )
    except core.errors.ElectrodeCAEError as exc:  # e.g. the disk filled up while saving
        kept = (args.out / "last.pt").exists()
        raise core.RunFolderError(
            f"the run folder {args.out} is incomplete: {exc}"
            + (
                "; its last.pt is kept: run the same command with --resume to finish it"
                if kept
                else ""
            )
        ) from exc
    if not interrupted:  # last.pt stays after Ctrl-C so that --resume can continue
        for name in ("best.pt", "last.pt"):
            (args.out / name).unlink(missing_ok=True)
    finite = [r for r in history if r.finite]
    if finite:
        best = min(finite, key=lambda r: r.val_mse)
        info(
            f"best validation MSE {best.val_mse:.4f} (NMSE {best.val_nmse:.3f}) at epoch "
            f"{best.epoch}; run saved to {args.out}"
        )
    print_row(report)
    print_phases(report)
    if diverged:
        return EXIT_DIVERGED
    return EXIT_INTERRUPTED if interrupted else 0
