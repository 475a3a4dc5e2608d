"""Presets x splits x output kinds on the realistic 256³ electrode, judged by phases.

Trains each named configuration on one stack for a wall-clock budget (or its epochs, whichever
ends first), then evaluates it like ``electrode-cae evaluate``: validation NMSE, voxel accuracy,
per-phase fractions and IoU, TPB density, the collapse flag, and the pore tortuosity factor
along Z on up to 12 validation windows (original vs reconstruction, finite values only).
Prints one table row per configuration and writes them as JSON lines.

    python benchmarks/presets_realistic.py --minutes 5 --only quick,paper
    python benchmarks/presets_realistic.py STACK.tif --minutes 2 --only old_quick
    python benchmarks/presets_realistic.py --epochs 10 --minutes 60 --only quick,quick_no_norm

Without a stack the realistic synthetic electrode (``generate_electrode(preset="REALISTIC")``,
256³, seed 0) is generated. Timings depend on the machine and its load: the configurations
run one after another, each alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_electrode_cae import core
from napari_electrode_cae.core.evaluation import fit_phase_rule, reconstruct_window

QUICK = core.get_preset("quick")
PAPER = core.get_preset("paper")


def _config(name: str) -> tuple[core.WindowSpec, core.ModelConfig, core.TrainConfig, str]:
    """(window, model, training, phase rule) of the configuration ``name``."""
    q, p = QUICK, PAPER
    old_quick_window = core.WindowSpec(8, 2, 64, tile_stride=32)
    old_quick_train = core.TrainConfig(epochs=80, batch_size=8, lr=2e-3, split="random")
    table = {
        # the quick preset before this change: the paper's model at lr 2e-3, random split
        "old_quick": (old_quick_window, core.ModelConfig(8, 64), old_quick_train, "nearest"),
        # what stops the collapse: one change at a time on top of the old quick preset
        "old_quick_batch_norm": (
            old_quick_window,
            core.ModelConfig(8, 64, norm="batch"),
            old_quick_train,
            "nearest",
        ),
        "old_quick_warmup_clip": (
            old_quick_window,
            core.ModelConfig(8, 64),
            dataclasses.replace(old_quick_train, warmup_epochs=2, schedule="cosine", grad_clip=1.0),
            "nearest",
        ),
        "old_quick_lr5e-4": (
            old_quick_window,
            core.ModelConfig(8, 64),
            dataclasses.replace(old_quick_train, lr=5e-4),
            "nearest",
        ),
        "quick": (q.window, q.model_config(), q.train, (q.phase_rule, "argmax")),
        "quick_random": (
            q.window,
            q.model_config(),
            dataclasses.replace(q.train, split="random"),
            q.phase_rule,
        ),
        "quick_value": (
            q.window,
            dataclasses.replace(q.model_config(), output="value"),
            q.train,
            ("fitted", "nearest"),
        ),
        "quick_ce": (
            q.window,
            q.model_config(),
            dataclasses.replace(q.train, phase_loss="ce"),
            q.phase_rule,
        ),
        "quick_no_norm": (
            q.window,
            dataclasses.replace(q.model_config(), norm="none"),
            q.train,
            q.phase_rule,
        ),
        "quick_no_schedule": (
            q.window,
            q.model_config(),
            dataclasses.replace(q.train, warmup_epochs=0, schedule="constant", grad_clip=0.0),
            q.phase_rule,
        ),
        "quick_weighted_ce": (
            q.window,
            q.model_config(),
            dataclasses.replace(q.train, phase_loss="weighted_ce"),
            q.phase_rule,
        ),
        "quick_crop64": (
            core.WindowSpec(8, 4, 64, tile_stride=32),
            dataclasses.replace(q.model_config(), crop=64),
            q.train,
            q.phase_rule,
        ),
        "paper": (p.window, p.model_config(), p.train, ("nearest", "fitted")),
        "paper_random": (
            p.window,
            p.model_config(),
            dataclasses.replace(p.train, split="random"),
            ("nearest", "fitted"),
        ),
    }
    return table[name]


def _tortuosity(labels: np.ndarray) -> float:
    try:
        return core.tortuosity(labels, "pore", axis=0)
    except core.PhysicsError:
        return math.nan


def run(
    name: str, stack: core.ElectrodeStack, minutes: float, seed: int, epochs: int | None = None
) -> list[dict]:
    """Train configuration ``name`` once; one row per phase rule it is judged by."""
    spec, model_config, config, rules = _config(name)
    rules = (rules,) if isinstance(rules, str) else rules
    config = dataclasses.replace(config, seed=seed, device="cpu", epochs=epochs or config.epochs)
    data = core.WindowDataset([stack], spec)
    train_idx, val_idx = core.split(data, config.val_fraction, config.seed, config.split)
    core.seed_everything(seed)
    model = core.build_model(model_config)
    start = time.perf_counter()
    generator = core.train(model, data, config, train_idx=train_idx, val_idx=val_idx)
    history = []
    result = None
    try:
        while True:
            report = next(generator)
            history.append(report)
            if time.perf_counter() - start > 60 * minutes:
                generator.close()
                break
    except StopIteration as stop:
        result = stop.value
    train_s = time.perf_counter() - start
    diverged = result is not None and result.diverged
    rows = []
    for rule in rules:
        t0 = time.perf_counter()
        fit_phase_rule(model, data, train_idx, rule)
        report = core.evaluate(model, data, train_idx, val_idx, seed=seed, diverged=diverged)
        eval_s = time.perf_counter() - t0
        taus = []
        for i in np.asarray(val_idx)[
            np.linspace(0, len(val_idx) - 1, min(12, len(val_idx))).astype(int)
        ]:
            _, labels = reconstruct_window(model, data[int(i)])
            taus.append((_tortuosity(np.asarray(data.view(int(i)))), _tortuosity(labels)))
        taus = np.array(taus)
        finite = np.isfinite(taus).all(axis=1)
        summary = report.summary()
        rows.append(
            {
                "config": name if len(rules) == 1 else f"{name}[{rule}]",
                "split": core.windows.resolve_split(config.split, spec),
                "output": model_config.output,
                "rule": model.phase_rule.describe(),
                "windows": len(data),
                "train": len(train_idx),
                "val": len(val_idx),
                "epochs": len(history),
                "train_s": round(train_s, 1),
                "eval_s": round(eval_s, 1),
                **{
                    k: summary[k]
                    for k in (
                        "val_nmse",
                        "voxel_accuracy",
                        "phase_fractions",
                        "phase_iou",
                        "tpb_density_per_um2",
                        "collapsed",
                        "diverged",
                    )
                },
                "tau_pore_z": {
                    "original": float(np.mean(taus[finite, 0])) if finite.any() else None,
                    "reconstruction": float(np.mean(taus[finite, 1])) if finite.any() else None,
                    "windows_finite": int(finite.sum()),
                    "windows": len(taus),
                },
            }
        )
    return rows


def format_row(r: dict) -> str:
    fo, fr = r["phase_fractions"]["original"], r["phase_fractions"]["reconstruction"]
    iou, tpb, tau = r["phase_iou"], r["tpb_density_per_um2"], r["tau_pore_z"]

    def pct(d):
        return "/".join(f"{100 * d[k]:.0f}" for k in ("pore", "cbd", "active"))

    tau_text = (
        "n/a" if tau["original"] is None else f"{tau['original']:.2f}->{tau['reconstruction']:.2f}"
    )
    return (
        f"{r['config']:<24} {r['split']:<8} {r['output']:<7} {r['epochs']:>4} "
        f"{r['train_s']:>6.0f}s {r['val_nmse']:>6.3f} {100 * r['voxel_accuracy']:>5.1f}% "
        f"{pct(fo):>9} -> {pct(fr):<9} "
        f"{'/'.join(f'{iou[k]:.2f}' for k in ('pore', 'cbd', 'active')):<15} "
        f"{tpb['original']:.3f}->{tpb['reconstruction']:.3f} {tau_text:<11} "
        f"{'COLLAPSED' if r['collapsed'] else ('DIVERGED' if r['diverged'] else 'ok')}"
    )


HEADER = (
    f"{'config':<24} {'split':<8} {'output':<7} {'ep':>4} {'train':>7} {'NMSE':>6} "
    f"{'acc':>6} {'p/c/a % orig -> recon':<22} {'IoU p/c/a':<15} {'TPB µm⁻²':<13} "
    f"{'τ pore Z':<11} health"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", nargs="?", type=Path)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per config")
    parser.add_argument(
        "--only", default="old_quick,quick,paper", help="comma-separated configuration names"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs",
        type=int,
        help="train every configuration this many epochs (its schedule follows)"
        "; compares configurations fairly on a loaded machine",
    )
    parser.add_argument("--out", type=Path, help="append the rows as JSON lines here")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    if args.stack:
        stack = core.read_stack(args.stack)
    else:
        t0 = time.perf_counter()
        stack = core.generate_electrode(preset="REALISTIC", seed=0)
        print(
            f"generated {stack.name} {stack.shape} in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    print(
        f"stack {stack.name}: {stack.shape}, fractions "
        + ", ".join(f"{k} {v:.1%}" for k, v in core.volume_fractions(stack.labels).items())
    )
    print(HEADER)
    for name in args.only.split(","):
        for row in run(name.strip(), stack, args.minutes, args.seed, args.epochs):
            print(format_row(row), flush=True)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
