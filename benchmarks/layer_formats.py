"""Which memory format each folded convolution should run in (tuning aid, not a test).

Times one training step (batch 2, crop 224, Adam, MSE) of the paper model for every
combination of contiguous / channels-last per convolution layer, interleaved over several
rounds, and prints the fastest combinations next to the model's default
(``model.default_memory_formats``). Run with the allocator pinned, on an otherwise idle machine::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        python benchmarks/layer_formats.py --length 24

Formats are written encoder layers first, then decoder layers; ``c`` = contiguous,
``L`` = channels-last.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from napari_electrode_cae import core
from napari_electrode_cae.core.model import default_memory_formats

CODES = {torch.contiguous_format: "c", torch.channels_last: "L"}


def step_time(model, optimiser, x, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        F.mse_loss(model(x), x).backward()
        optimiser.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = core.ConvAutoEncoder3d(args.length, args.crop)
    optimiser = core.training.make_optimiser(model, 1e-4)
    x = torch.randn(2, 1, args.length, args.crop, args.crop).sign()
    n_layers = 2 * model.config.conv_layers
    combos = list(itertools.product((torch.contiguous_format, torch.channels_last),
                                    repeat=n_layers))
    best: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for combo in combos:
            model.memory_formats = list(combo)
            step_time(model, optimiser, x, 1)  # warm-up: oneDNN primitive creation
            t = step_time(model, optimiser, x, args.steps)
            best[combo] = min(best.get(combo, float("inf")), t)
    default = tuple(default_memory_formats(model.config.conv_layers))
    ranked = sorted(best, key=best.get)
    print(f"l={args.length}, crop {args.crop}, batch 2, {torch.get_num_threads()} threads; "
          "best-of-rounds ms per step")
    for combo in ranked[:6]:
        mark = "  <- default" if combo == default else ""
        print(f"  {''.join(CODES[f] for f in combo)}  {best[combo] * 1e3:7.1f}{mark}")
    print(f"  default {''.join(CODES[f] for f in default)}: {best[default] * 1e3:.1f} ms, "
          f"rank {ranked.index(default) + 1} of {len(ranked)}")


if __name__ == "__main__":
    main()
