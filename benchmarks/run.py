"""Speed and memory users feel, against the researcher-style baseline, in one table.

Run: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/run.py``
(add ``--quick`` for a smaller stack and fewer steps). Both implementations run in the same
process with the same threads, interleaved, and the table reports their ratio. Memory figures
come from fresh subprocesses so that one measurement cannot inflate the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baseline import BaselineCAE, baseline_loader  # noqa: E402

from napari_electrode_cae import core  # noqa: E402

MEMORY_PROBE = r"""
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
size, which = int(sys.argv[2]), sys.argv[3]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
from napari_electrode_cae import core
from baseline import materialise_windows
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, (size, size, size), dtype=np.uint8)
stack = core.ElectrodeStack(labels)
before = rss()
if which == "baseline":
    data = materialise_windows(labels, 24, 1, 224)
else:
    data = core.WindowDataset([stack], core.WindowSpec(24, 1, 224))
    core.split(data)
print(json.dumps({"added_mib": rss() - before, "stack_mib": labels.nbytes / 2**20,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory(size: int, which: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(HERE), str(size), which],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_speed(length: int, steps: int, rounds: int) -> tuple[float, float, float]:
    """windows/s of baseline and ours (same init, same batches), and their max loss gap."""
    torch.manual_seed(0)
    ours = core.ConvAutoEncoder3d(length, 224, 3, 128, 10)
    base = BaselineCAE(length)
    base.load_state_dict(ours.state_dict())
    x_all = torch.randn(2 * steps, 1, length, 224, 224).sign()
    loss_fn = torch.nn.MSELoss()
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-4) for m in (ours, base)}
    rates: dict[int, list[float]] = {id(ours): [], id(base): []}
    gap = 0.0
    for _ in range(rounds):
        for model in (base, ours):
            opt = opts[id(model)]
            # the baseline draws shuffled batches from a DataLoader over materialised windows
            batches = (iter(baseline_loader(x_all, 2)) if model is base else
                       (x_all[2 * i : 2 * i + 2] for i in range(steps)))
            start = time.perf_counter()
            for _ in range(steps):
                x = next(batches)
                if isinstance(x, (list, tuple)):
                    x = x[0]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), x)
                loss.backward()
                opt.step()
            rates[id(model)].append(2 * steps / (time.perf_counter() - start))
    with torch.no_grad():
        x = x_all[:2]
        gap = float((ours(x) - base(x)).abs().max())
    return statistics.median(rates[id(base)]), statistics.median(rates[id(ours)]), gap


def decode_latency(length: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    ours = core.ConvAutoEncoder3d(length, 224, 3, 128, 10).eval()
    base = BaselineCAE(length).eval()
    base.load_state_dict(ours.state_dict())
    z = torch.zeros(1, 10)
    times = {"base": [], "ours": []}
    with torch.inference_mode():
        for _ in range(3):
            base.decoder(z), ours.decode(z)
        for _ in range(repeats):
            for name, fn in (("base", base.decoder), ("ours", ours.decode)):
                start = time.perf_counter()
                fn(z)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["base"]) * 1e3, statistics.median(times["ours"]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (3, 2) if args.quick else (8, 3)
    size = 256

    rows = []
    for length in (24, 4):
        base, ours, gap = train_speed(length, steps, rounds)
        rows.append((f"training windows/s, l={length}, crop 224, batch 2", "≥ 2× baseline",
                     f"{base:.1f}", f"{ours:.1f}", f"{ours / base:.2f}×",
                     f"max |Δoutput| {gap:.1e}"))
    for length in (24,):
        base, ours = decode_latency(length, 20)
        rows.append((f"decode one latent vector, l={length} (ms)", "—", f"{base:.1f}",
                     f"{ours:.1f}", f"{base / ours:.2f}× faster", ""))
    mem_base, mem_ours = memory(size, "baseline"), memory(size, "ours")
    rows.append((f"stride-1 l=24 data set over a {size}³ stack: added RSS (MiB)",
                 f"≤ {0.1 * mem_ours['stack_mib']:.1f} (10 % of stack)",
                 f"{mem_base['added_mib']:.0f}", f"{mem_ours['added_mib']:.2f}",
                 f"{mem_base['added_mib'] / max(mem_ours['added_mib'], 1e-3):.0f}× less", ""))

    header = ("figure", "target", "baseline", "ours", "ratio", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(f"torch {torch.__version__}, {args.threads} threads, {torch.get_num_threads()} used")
    for row in (header, *rows):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
