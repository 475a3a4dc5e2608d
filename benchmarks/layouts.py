"""Training-step time of the model's memory layouts, interleaved in one process (tuning aid).

Times ``core.train``'s own step (``TrainingStep``: forward, MSE, backward, fused Adam; batch 2,
crop 224) for the plain ``Conv3d`` modules and for each layout of the folded path
(``ConvAutoEncoder3d.layout``: "contiguous" and "channels_last"), same weights, rounds
interleaved, and prints the median step time and windows/s of each. Run with the allocator
pinned, on an otherwise idle machine::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        python benchmarks/layouts.py --length 24

``--profile`` prints torch's per-operator profile of a few steps of the fastest layout.
``--breakdown`` prints where the time of one channels-last step goes: the execution time of
oneDNN's kernels (from its verbose log, by primitive kind), the fused Adam update, and
everything else (the Linear layers' MKL products, torch's and oneDNN's per-call set-up, small
element-wise operations, Python and autograd); then the step time at crop 32, where the
arithmetic is negligible and what is left is the fixed cost of the step's ~60 torch calls.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

import torch

from napari_electrode_cae import core
from napari_electrode_cae.core.kernels.train_step import TrainingStep

VARIANTS = ("plain", "contiguous", "channels_last")


def make(variant: str, length: int, crop: int, state: dict) -> TrainingStep:
    model = core.ConvAutoEncoder3d(length, crop)
    model.load_state_dict(state)
    model.fold_depth = variant != "plain"
    if variant != "plain":
        model.layout = variant
    optimiser = core.training.make_optimiser(model, 1e-4)
    return TrainingStep(model, optimiser, torch.device("cpu"), "fp32", 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state = core.ConvAutoEncoder3d(args.length, args.crop).state_dict()
    x = torch.randint(0, 3, (2, 1, args.length, args.crop, args.crop)).float() - 1
    steps = {v: make(v, args.length, args.crop, state) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for step in steps.values():
        step(x)  # warm-up: oneDNN primitive creation
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(x)
            times[name].append((time.perf_counter() - start) / args.steps)
    print(
        f"l={args.length}, crop {args.crop}, batch 2, {args.threads} threads, "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    base = statistics.median(times["plain"])
    for name in VARIANTS:
        t = statistics.median(times[name])
        print(f"{name:>14}: {t * 1e3:7.1f} ms/step  {2 / t:6.1f} windows/s  {base / t:4.2f}x plain")
    if args.profile:
        best = min(VARIANTS, key=lambda v: statistics.median(times[v]))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(3):
                steps[best](x)
        print(
            prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total",
                row_limit=20,
                max_name_column_width=32,
                max_shapes_column_width=60,
            )
        )

    if args.breakdown:
        breakdown(steps["channels_last"], x, args.length)


def onednn_kernel_ms(run) -> dict[str, float]:
    """Milliseconds of oneDNN kernel execution during ``run()``, by primitive kind.

    oneDNN writes its verbose log to the process's standard output from C, so file descriptor
    1 is sent to a temporary file meanwhile.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().splitlines()
    kinds: dict[str, float] = collections.defaultdict(float)
    for line in lines:
        fields = line.split(",")
        if len(fields) > 6 and fields[2] == "primitive" and fields[3] == "exec":
            kind = fields[5] if fields[5] != "convolution" else f"convolution {fields[7]}"
            kinds[kind] += float(fields[-1])
    return dict(kinds)


def median_ms(run, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def breakdown(step: TrainingStep, x: torch.Tensor, length: int) -> None:
    """Print where one channels-last training step's time goes (see the module docstring)."""
    optimiser = step.optimiser
    step_ms = median_ms(lambda: step(x))
    adam_ms = []
    for _ in range(20):  # Adam alone, on the gradients of a step
        optimiser.zero_grad(set_to_none=True)
        step.loss_fn(step.model(x), x).backward()
        start = time.perf_counter()
        optimiser.step()
        adam_ms.append(time.perf_counter() - start)
    adam = statistics.median(adam_ms) * 1e3
    kernels = [onednn_kernel_ms(lambda: step(x)) for _ in range(5)]
    kinds = sorted(set().union(*kernels))
    per_kind = {k: statistics.median(run.get(k, 0.0) for run in kernels) for k in kinds}
    total = sum(per_kind.values())
    print(f"\nbreakdown of one channels-last step, l={length}, crop {x.shape[-1]}:")
    print(f"  step: {step_ms:.2f} ms")
    for kind, ms in per_kind.items():
        print(f"  oneDNN kernels, {kind}: {ms:.2f} ms")
    print(f"  oneDNN kernels, all: {total:.2f} ms ({100 * total / step_ms:.0f} % of the step)")
    print(f"  fused Adam: {adam:.2f} ms")
    print(
        f"  everything else (Linear layers, per-call set-up, element-wise, Python): "
        f"{step_ms - total - adam:.2f} ms"
    )
    small = make("channels_last", length, 32, core.ConvAutoEncoder3d(length, 32).state_dict())
    xs = torch.randint(0, 3, (2, 1, length, 32, 32)).float() - 1
    small(xs)
    fixed = median_ms(lambda: small(xs))
    print(f"  the same step at crop 32 (fixed per-step cost): {fixed:.2f} ms")


if __name__ == "__main__":
    main()
