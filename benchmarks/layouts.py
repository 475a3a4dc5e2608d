"""Training-step time of the model's memory layouts, interleaved in one process (tuning aid).

Times ``core.train``'s own step (``TrainingStep``: forward, MSE, backward, fused Adam; batch 2,
crop 224) for the plain ``Conv3d`` modules and for each layout of the folded path
(``ConvAutoEncoder3d.layout``: "contiguous" and "channels_last"), same weights, rounds
interleaved, and prints the median step time and windows/s of each. Run with the allocator
pinned, on an otherwise idle machine::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        python benchmarks/layouts.py --length 24

``--profile`` prints torch's per-operator profile of a few steps of the fastest layout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_electrode_cae import core
from napari_electrode_cae.core.train_step import TrainingStep

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
    print(f"l={args.length}, crop {args.crop}, batch 2, {args.threads} threads, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    base = statistics.median(times["plain"])
    for name in VARIANTS:
        t = statistics.median(times[name])
        print(f"{name:>14}: {t * 1e3:7.1f} ms/step  {2 / t:6.1f} windows/s  "
              f"{base / t:4.2f}x plain")
    if args.profile:
        best = min(VARIANTS, key=lambda v: statistics.median(times[v]))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(3):
                steps[best](x)
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=32,
            max_shapes_column_width=60))


if __name__ == "__main__":
    main()
