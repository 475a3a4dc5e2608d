"""Headless numbers users feel: data-set memory, training windows/s, decode latency (CPU).

Run: ``python benchmarks/core_numbers.py [--size 256] [--steps 20] [--threads 2]``. Prints one
line per figure. Pin the allocator for comparable runs, e.g.
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from napari_electrode_cae import core


def rss_mib() -> float:
    """Current resident set size in MiB (from /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic stack")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    stack = core.generate_electrode((args.size,) * 3, preset="CAL", seed=0)
    print(
        f"synthetic {args.size}^3 CAL stack generated in {time.perf_counter() - t0:.2f} s "
        f"({stack.labels.nbytes / 2**20:.1f} MiB uint8)"
    )

    before, peak_before = rss_mib(), peak_rss_mib()
    t0 = time.perf_counter()
    data = core.WindowDataset([stack], core.WindowSpec(24, 1, 224))
    train_idx, val_idx = core.split(data, 0.15, 0)
    built = time.perf_counter() - t0
    after = rss_mib()
    print(
        f"stride-1 l=24 crop-224 dataset: {len(data)} windows ({len(train_idx)} train / "
        f"{len(val_idx)} val) built in {built * 1e3:.1f} ms; RSS +{after - before:.2f} MiB "
        f"(index grid {data.grid.nbytes / 2**10:.1f} KiB; materialised copies would be "
        f"{len(data) * 24 * 224 * 224 * 4 / 2**30:.2f} GiB float32); peak RSS "
        f"{peak_rss_mib():.0f} MiB (before dataset {peak_before:.0f} MiB)"
    )

    core.seed_everything(0)
    model = core.ConvAutoEncoder3d(24, 224, 3, 128, 10)
    config = core.TrainConfig(epochs=1, batch_size=2, lr=1e-4, device="cpu")
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.MSELoss()
    model.train()

    def step(i: int) -> None:
        x = data.batch(train_idx[2 * i : 2 * i + 2])
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), x)
        loss.backward()
        optimiser.step()

    for i in range(3):
        step(i)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i % (len(train_idx) // 2))
    elapsed = time.perf_counter() - t0
    print(
        f"training (paper model, l=24, crop 224, batch 2, {args.threads} threads): "
        f"{2 * args.steps / elapsed:.1f} windows/s"
    )

    model.eval()
    z = torch.zeros(1, 10)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model.decode(z)
        for _ in range(30):
            t0 = time.perf_counter()
            model.decode(z)
            times.append(time.perf_counter() - t0)
    print(
        f"decode one latent vector (paper model): median {statistics.median(times) * 1e3:.1f} ms, "
        f"max {max(times) * 1e3:.1f} ms"
    )
    print(f"peak RSS of the whole benchmark: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
