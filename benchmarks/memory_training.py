"""Peak memory of a full training run (train -> evaluate -> save run), as the CLI does it.

Target (issue 4): the peak RSS of a full training run stays within 300 MiB of the import
baseline plus the stacks plus the model (parameters + gradients + Adam state).

Run: ``python benchmarks/memory_training.py [--case paper l4 quick] [--alloc default pinned
mmap128k] [--stride N] [--quick-epochs N] [--optimiser torch ours]`` (all cases, default and
pinned: a few minutes on a 2-core CPU, mostly the quick preset's 80 epochs; ``--quick-epochs 10``
reaches the same peak).

Every measurement runs in a fresh subprocess, so one cannot inflate the next. In it:

* ``import baseline``: RSS after ``import torch, napari_electrode_cae.core``;
* ``stack``: the stacks' uint8 bytes (the 256³ case reads a ``.npy`` written beforehand by
  another subprocess with ``core.read_stack``, so the generator's own peak is not counted);
* ``model``: parameters + gradients + Adam state, summed over the real tensors of the
  optimiser that ``core.train`` builds (captured after its first step, by wrapping
  ``core.training.make_optimiser``);
* peaks per phase: the kernel's high-water mark (``VmHWM``), reset between phases by writing
  ``5`` to ``/proc/self/clear_refs``, so every page that was ever resident counts (no sampling
  gaps). Phases: training (``core.train`` with ``checkpoint_dir`` and ``yield_batches``, as
  ``electrode-cae train`` calls it), evaluation (``core.evaluate``) and saving the run
  (``core.save_run``, which encodes every window for latents.csv).

Allocator modes: ``default`` runs without any ``MALLOC_*``/``GLIBC_TUNABLES`` variable, as
users run it (the honest figure; whatever the package itself tells glibc counts); ``pinned`` sets
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`` as the timing
benchmarks do: large blocks then come from the heap and freed memory is never given back,
which makes timings repeatable but can inflate RSS; ``mmap128k`` (diagnostic, not run by
default) fixes the mmap threshold at 128 KiB, which turns off glibc's dynamic threshold, so
the difference to ``default`` is what glibc's heap keeps of freed activation buffers.

The verdict line uses the import baseline as defined above. ``core.train`` uses
``torch.optim.Adam(fused=True)`` (issue 16 replaced the package's hand-written Adam; see
``benchmarks/optimiser_step.py``); both ``--optimiser`` choices now run it, and torch's first
``torch.optim`` optimiser lazily imports ``torch._dynamo`` (with sympy and more), a fixed cost of
torch whatever the data, which ``torch`` imports before training and reports on its own line.

Cases: ``paper`` = synthetic 256³ CAL stack, l = 24, crop 224, 3 layers, 128 hidden, 10
latent, batch 2, lr 1e-4, 2 epochs; ``l4`` = the same with l = 4; ``quick`` = the quick preset
on sample_data/synthetic_CAL.tif + synthetic_UNCAL.tif. TrainConfig has no step cap, so the
256³ cases use a Z stride that leaves ~20 windows (12 for l = 24, 13 for l = 4; ``--stride``
overrides): memory per step does not depend on the number of windows (the data set is an
index grid, built as views; its stride-1 cost is measured by ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 2**20
PINNED = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
#: Allocator modes: environment added to the subprocess, and a description.
ALLOCATORS = {
    "default": ({}, "no MALLOC_* variables, as users run it"),
    "pinned": (PINNED, "MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1 GiB, as for timings"),
    # diagnostic: a fixed threshold turns off glibc's dynamic one, so every block of 128 KiB or
    # more is mmapped and given back when freed (shows how much the heap keeps)
    "mmap128k": ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "MALLOC_MMAP_THRESHOLD_=131072"),
}
TARGET_MIB = 300.0
SIZE = 256


# ---------------------------------------------------------------------------------------------
# inside the measured subprocess


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / MiB


def hwm_mib() -> float:
    """Peak RSS since the last reset (VmHWM), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def mapped(array) -> bool:
    """Whether ``array`` is (a view of) a memory-mapped file."""
    import mmap

    import numpy as np

    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def code_state(core) -> str:
    """``(git abc1234, uncommitted changes in N files under src/)`` when run from this checkout."""
    src = ROOT / "src"
    if Path(core.__file__).resolve().parent.parent.parent != src:
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f"(git {head}" + (
        f", uncommitted changes in {len(dirty)} files under src/)" if dirty else ")"
    )


def say(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def child(args: argparse.Namespace) -> None:
    start = rss_mib()
    import torch

    from napari_electrode_cae import core

    baseline = rss_mib()
    say("RSS python only (MiB)", f"{start:.1f}")
    say(
        "RSS after import torch, napari_electrode_cae.core = import baseline (MiB)",
        f"{baseline:.1f}",
    )
    say("torch threads", torch.get_num_threads())
    say("napari_electrode_cae from", f"{Path(core.__file__).parent.parent} {code_state(core)}")
    say(
        "optimiser",
        "torch.optim.Adam(fused=True)"
        if args.optimiser == "torch"
        else "core.training.make_optimiser (torch.optim.Adam, fused)",
    )
    lazy_mib = 0.0
    if args.optimiser == "torch":
        # The first torch.optim optimiser imports torch._dynamo (and sympy, torch.distributed,
        # ...) lazily (Optimizer.add_param_group is wrapped by torch._disable_dynamo); import it
        # here so that this fixed cost of torch shows on its own line instead of inside the
        # training peak.
        import torch._dynamo  # noqa: F401

        lazy_mib = rss_mib() - baseline
    say(
        "RSS added by torch's lazy import of torch._dynamo on the first optimiser (MiB)",
        f"{lazy_mib:.1f}" + ("" if args.optimiser == "torch" else " (not imported)"),
    )
    overall_peak = hwm_mib()

    before_read = rss_mib()
    if args.child == "quick":
        preset = core.get_preset("quick")
        stacks = [
            core.read_stack(ROOT / "sample_data" / name)
            for name in ("synthetic_CAL.tif", "synthetic_UNCAL.tif")
        ]
        spec = preset.window
        layers, hidden, latent = preset.conv_layers, preset.hidden, preset.latent_dim
        config = core.TrainConfig(
            epochs=args.quick_epochs, batch_size=preset.train.batch_size, lr=preset.train.lr
        )
    else:
        length = 24 if args.child == "paper" else 4
        stride = args.stride or (12 if length == 24 else 13)
        stacks = [core.read_stack(args.npy, calendered=True, name="synthetic_CAL_256")]
        spec = core.WindowSpec(length=length, stride=stride, crop=224)
        layers, hidden, latent = 3, 128, 10
        config = core.TrainConfig(epochs=2, batch_size=2, lr=1e-4)
    stack_mib = sum(s.labels.nbytes for s in stacks) / MiB
    loaded = rss_mib()
    say(
        "stacks",
        ", ".join(
            f"{s.name} {'x'.join(map(str, s.shape))} "
            f"({'memory-mapped' if mapped(s.labels) else 'in memory'})"
            for s in stacks
        ),
    )
    say("stack size, uint8 (MiB)", f"{stack_mib:.1f}")
    say(
        "RSS after reading the stacks (MiB)",
        f"{loaded:.1f} (+{loaded - before_read:.1f}; mapped pages count once read)",
    )

    data = core.WindowDataset(stacks, spec)
    train_idx, val_idx = core.split(data, config.val_fraction, config.seed, config.split)
    core.seed_everything(config.seed)
    model = core.ConvAutoEncoder3d(spec.length, spec.crop, layers, hidden, latent)
    say(
        "windows",
        f"{len(data)} of {spec.length}x{spec.crop}x{spec.crop} (stride "
        f"{spec.stride}, tile stride {spec.in_plane_step}): {len(train_idx)} train, "
        f"{len(val_idx)} val; batch {config.batch_size}, {config.epochs} epochs",
    )
    param_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MiB
    say("parameters", f"{core.count_parameters(model):,} ({param_mib:.1f} MiB)")
    before_train = rss_mib()
    say("RSS before training (MiB)", f"{before_train:.1f}")
    overall_peak = max(overall_peak, hwm_mib())

    captured: dict[str, float] = {}

    def capture(optimiser) -> None:
        params = [p for g in optimiser.param_groups for p in g["params"]]
        captured["params"] = sum(p.numel() * p.element_size() for p in params) / MiB
        captured["grads"] = (
            sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None) / MiB
        )
        captured["adam"] = (
            sum(
                t.numel() * t.element_size()
                for state in optimiser.state.values()
                for t in state.values()
                if torch.is_tensor(t)
            )
            / MiB
        )

    original = core.training.make_optimiser

    def capturing(model, lr):
        """core.train's optimiser, whose sizes are captured after its first step."""
        if args.optimiser == "torch":
            optimiser = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        else:
            optimiser = original(model, lr)
        step = optimiser.step

        def first_step(*step_args, **step_kwargs):
            result = step(*step_args, **step_kwargs)
            if not captured:
                capture(optimiser)
            return result

        optimiser.step = first_step
        return optimiser

    core.training.make_optimiser = capturing
    run_dir = Path(args.tmp) / f"run_{args.child}_{os.getpid()}"
    reset_peak()
    generator = core.train(
        model,
        data,
        config,
        train_idx=train_idx,
        val_idx=val_idx,
        checkpoint_dir=run_dir,
        yield_batches=True,
    )
    history = [r for r in generator if isinstance(r, core.EpochReport)]
    train_peak = hwm_mib()
    core.training.make_optimiser = original
    after_train = rss_mib()
    model_mib = captured["params"] + captured["grads"] + captured["adam"]
    say(
        "model = params + grads + Adam state (MiB)",
        f"{model_mib:.1f} ({captured['params']:.1f} + {captured['grads']:.1f} + "
        f"{captured['adam']:.1f})",
    )
    seconds = sorted(r.seconds for r in history)
    say(
        "training seconds",
        f"{sum(seconds):.1f} over {len(history)} epochs "
        f"(median epoch {seconds[len(seconds) // 2]:.2f} s)",
    )

    reset_peak()
    report = core.evaluate(model, data, train_idx, val_idx, seed=config.seed)
    eval_peak = hwm_mib()
    after_eval = rss_mib()

    reset_peak()
    core.save_run(run_dir, model, data, config, train_idx, val_idx, history, report)
    save_peak = hwm_mib()
    end = rss_mib()

    budget = baseline + stack_mib + model_mib
    say("peak RSS during training (MiB)", f"{train_peak:.1f} (RSS after {after_train:.1f})")
    say("peak RSS during evaluation (MiB)", f"{eval_peak:.1f} (RSS after {after_eval:.1f})")
    say("peak RSS during save_run incl. latents (MiB)", f"{save_peak:.1f} (RSS after {end:.1f})")
    peak = max(overall_peak, train_peak, eval_peak, save_peak)
    say("peak RSS of the whole run (MiB)", f"{peak:.1f}")
    say(
        "import baseline + stack + model (MiB)",
        f"{budget:.1f} = {baseline:.1f} + {stack_mib:.1f} + {model_mib:.1f}",
    )
    for label, value in (
        ("training", train_peak),
        ("evaluation", eval_peak),
        ("save_run", save_peak),
    ):
        say(f"  {label}: peak - budget (MiB)", f"{value - budget:.1f}")
    excess = peak - budget
    say(
        "verdict",
        f"peak - (import baseline + stack + model) = {excess:.1f} MiB "
        f"(target <= {TARGET_MIB:.0f}): {'PASS' if excess <= TARGET_MIB else 'FAIL'}",
    )
    say("torch._dynamo imported during the run", "yes" if "torch._dynamo" in sys.modules else "no")
    say(
        "  the same without torch's lazy torch._dynamo import",
        f"{excess - lazy_mib:.1f} MiB: {'PASS' if excess - lazy_mib <= TARGET_MIB else 'FAIL'}",
    )


# ---------------------------------------------------------------------------------------------
# parent: prepares the stack and runs one subprocess per case and allocator mode

GENERATE = r"""
import sys, numpy as np
from napari_electrode_cae import core
stack = core.generate_electrode((int(sys.argv[2]),) * 3, preset="CAL", seed=0)
np.save(sys.argv[1], stack.labels)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--case", nargs="+", choices=("paper", "l4", "quick"), default=["paper", "l4", "quick"]
    )
    parser.add_argument(
        "--alloc", nargs="+", choices=tuple(ALLOCATORS), default=["default", "pinned"]
    )
    parser.add_argument("--stride", type=int, help="Z stride of the 256³ cases")
    parser.add_argument(
        "--quick-epochs",
        type=int,
        default=80,
        help="epochs of the quick case (default: the preset's 80)",
    )
    parser.add_argument(
        "--optimiser",
        choices=("ours", "torch"),
        default="ours",
        help="Adam used by core.train: the package's own (default) or "
        "torch.optim.Adam(fused=True), for comparison",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--npy", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="cae_mem_") as tmp:
        npy = Path(tmp) / f"synthetic_CAL_{SIZE}.npy"
        if any(c != "quick" for c in args.case):
            subprocess.run([sys.executable, "-c", GENERATE, str(npy), str(SIZE)], check=True)
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
        }
        for case in args.case:
            for alloc in args.alloc:
                extra, description = ALLOCATORS[alloc]
                env = clean | extra
                print(f"== case {case}, allocator {alloc} ({description})", flush=True)
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    case,
                    "--npy",
                    str(npy),
                    "--tmp",
                    tmp,
                    "--quick-epochs",
                    str(args.quick_epochs),
                    "--optimiser",
                    args.optimiser,
                ]
                if args.stride:
                    command += ["--stride", str(args.stride)]
                subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
