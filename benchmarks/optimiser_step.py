"""Whole training steps with the package's old hand-written Adam against ``torch.optim.Adam``.

Issue 16 asked to replace ``core.kernels.adam.FusedAdam`` (which called ``torch._fused_adam_``
directly) with ``torch.optim.Adam`` unless a whole training step measures more than 5 % slower.
This script times whole steps (forward, loss, backward, optimiser step, as
``core.kernels.train_step.TrainingStep`` runs them) of the quick preset's model and of the
paper's model, alternating the optimisers in one process so load and allocator mode hit both
alike, and prints the median step time of each and their ratio.

Run: ``python benchmarks/optimiser_step.py [--steps 40] [--rounds 5]``. The old optimiser is
only importable from a checkout before its removal; without it the script times
``torch.optim.Adam`` with ``fused=True`` against ``foreach=True``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_electrode_cae.core import ModelConfig, build_model
from napari_electrode_cae.core.kernels.train_step import TrainingStep
from napari_electrode_cae.core.losses import make_loss

CASES = {
    # the quick preset's model: l = 8, crop 32 (tiles of 16 in the trainer), batch norm, phases
    "quick": (ModelConfig(8, 32, 3, 128, 10, norm="batch", output="phases"), 16),
    # the paper's model (routed CPU kernels), l = 4, crop 64, batch 2
    "paper": (ModelConfig(4, 64, 3, 128, 10), 2),
}


def optimisers():
    found = {
        "torch.optim.Adam(fused)": lambda p, lr: torch.optim.Adam(p, lr=lr, fused=True),
        "torch.optim.Adam(foreach)": lambda p, lr: torch.optim.Adam(p, lr=lr, foreach=True),
    }
    try:
        from napari_electrode_cae.core.kernels.adam import FusedAdam
    except ImportError:
        pass
    else:
        found["hand-written FusedAdam"] = lambda p, lr: FusedAdam(p, lr=lr)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    for case, (config, batch) in CASES.items():
        times: dict[str, list[float]] = {}
        x = torch.rand(batch, *build_model(config).input_shape) * 2 - 1
        for _ in range(args.rounds):
            for name, make in optimisers().items():
                torch.manual_seed(0)
                model = build_model(config)
                step = TrainingStep(
                    model,
                    make(model.parameters(), 1e-3),
                    torch.device("cpu"),
                    "fp32",
                    batch,
                    loss=make_loss(model, "ce_dice", None) if config.output == "phases" else None,
                )
                model.train()
                for _ in range(3):  # warm-up
                    step(x)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(x)
                times.setdefault(name, []).append((time.perf_counter() - start) / args.steps)
        reference = statistics.median(times["torch.optim.Adam(fused)"])
        print(f"{case}: batch {batch}, {torch.get_num_threads()} threads")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:28s} {median * 1e3:8.2f} ms/step  x{median / reference:.3f}")


if __name__ == "__main__":
    main()
