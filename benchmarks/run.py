"""Speed and memory users feel, against the researcher-style baseline, in one table (issue 4).

Run: ``python benchmarks/run.py`` (about 10 minutes; ``--quick`` for fewer steps and a
3-epoch GUI run, ``--no-gui`` / ``--no-memory`` to skip parts). Under no display the napari
figures run under ``xvfb-run``.

* Training throughput: baseline (``benchmarks/baseline.py``: materialised windows, DataLoader,
  plain Conv3d, Adam) and ours (``core.train``'s ``BatchFeeder`` and ``TrainingStep``: folded
  model, torch.optim.Adam fused), same initial weights; three times: with glibc's malloc pinned
  through ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (the way to compare two
  implementations on this machine; both interleaved in one fresh process), with glibc's
  defaults as users run it, and with ``electrode-cae train --tune-malloc``'s buffer keeping
  (``core.kernels.allocator``, which changes the process's malloc thresholds; ours only). The
  last two run each side in a fresh process of its own.
* Decode latency and the stride-1 data-set memory, in this process / fresh subprocesses.
* Peak RSS of a whole training run: ``benchmarks/memory_training.py`` (glibc default).
* Live decode, GUI stalls and launch → first reconstruction: ``live_decode.py``,
  ``gui_stall_training.py`` and ``time_to_first_result.py``.

Prints progress rows on stderr and the table on stdout: figure, target, baseline, ours, ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baseline import BaselineCAE, baseline_loader, materialise_windows  # noqa: E402

from napari_electrode_cae import core  # noqa: E402
from napari_electrode_cae.core.kernels.allocator import reuse_freed_memory  # noqa: E402
from napari_electrode_cae.core.kernels.feeding import BatchFeeder  # noqa: E402
from napari_electrode_cae.core.kernels.train_step import TrainingStep  # noqa: E402

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
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(HERE), str(size), which],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_speed(
    length: int, steps: int, rounds: int, keep_buffers: bool = False, which: str = "both"
) -> tuple[float | None, float | None, float | None]:
    """windows/s of the baseline and of our training step, and their max output gap.

    Both draw batches of 2 windows (l, 224, 224) from the same random three-phase stack: the
    baseline from a DataLoader over materialised float32 copies, ours from the uint8 stack
    through ``core.train``'s ``BatchFeeder`` and ``TrainingStep`` (its step and optimiser).
    Same initial weights; rounds are interleaved.
    ``keep_buffers``: with ``which="ours"``, the whole measurement runs inside
    ``core.kernels.allocator.reuse_freed_memory()`` as ``electrode-cae train --tune-malloc``
    does (only matters when glibc's malloc is not pinned through the environment).
    ``which``: "both" (interleaved), or only "base" / "ours" (the others are None); with
    glibc's defaults each runs in a process of its own, because ``reuse_freed_memory`` leaves
    the process's malloc thresholds where they would be after a training run.
    """
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (64, 224, 224), dtype=np.uint8)
    data = core.WindowDataset([core.ElectrodeStack(labels)], core.WindowSpec(length, 1, 224))
    loader = baseline_loader(materialise_windows(labels, length, 1, 224), 2)
    torch.manual_seed(0)
    ours = core.ConvAutoEncoder3d(length, 224, 3, 128, 10)
    base = BaselineCAE(length)
    base.load_state_dict(ours.state_dict())
    opt_base = torch.optim.Adam(base.parameters(), lr=1e-4)
    # ours: the step and the batches exactly as core.train makes them
    our_step = TrainingStep(
        ours, core.training.make_optimiser(ours, 1e-4), torch.device("cpu"), "fp32", 2
    )
    feeder = BatchFeeder(data, torch.device("cpu"))
    order = np.random.default_rng(1).permutation(len(data))
    loss_fn = torch.nn.MSELoss()

    def base_step(x) -> None:
        opt_base.zero_grad(set_to_none=True)
        loss_fn(base(x), x).backward()
        opt_base.step()

    def run(step, batches) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        return 2 * steps / (time.perf_counter() - start)

    def our_batches():
        while True:
            for i in range(0, len(order) - 1, 2):
                yield feeder(order[i : i + 2])

    def base_batches():
        while True:
            for (x,) in loader:
                yield x

    sides = {"base": (base_step, base_batches()), "ours": (our_step, our_batches())}
    if which != "both":
        sides = {which: sides[which]}
    rates = {name: [] for name in sides}
    # as core.train: one reuse_freed_memory() around the whole run (ours alone in its process)
    allocator = reuse_freed_memory() if keep_buffers and which == "ours" else nullcontext()
    with allocator:
        for step, batches in sides.values():
            run(step, batches)  # warm-up (oneDNN primitive creation)
        for _ in range(rounds):
            for name, (step, batches) in sides.items():
                rates[name].append(run(step, batches))
    gap = None
    if which == "both":
        with torch.no_grad():
            x = data.batch([0, 1])
            ours.load_state_dict(base.state_dict())
            gap = float((ours(x) - base(x)).abs().max())
    median = {name: statistics.median(r) for name, r in rates.items()}
    return median.get("base"), median.get("ours"), gap


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


PINNED = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    return env | extra


def script_lines(
    command: list[str], env: dict[str, str] | None = None, timeout: float = 1800
) -> dict[str, str]:
    """Run a benchmark script; its ``name: value`` lines as a dict (last one wins)."""
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    found = {}
    for line in out.stdout.splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            found[name.strip()] = value.strip()
    return found


def gui_command(script: str, *args: str) -> list[str]:
    """Run a GUI benchmark under Xvfb when there is no display."""
    command = [sys.executable, str(HERE / script), *args]
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *command]
    return command


def number(text: str) -> float:
    """The first number in ``text`` ('53.2 ms (p95 60)' -> 53.2)."""
    return float(re.search(r"-?\d+(?:\.\d+)?", text.replace(",", "")).group())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument(
        "--no-gui",
        action="store_true",
        help="skip the napari figures (live decode, stalls, first result)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-RSS-of-a-training-run figures"
    )
    parser.add_argument(
        "--train-child", nargs=3, metavar=("L", "MODE", "WHICH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (3, 2) if args.quick else (8, 5)
    if args.train_child:  # one training comparison in this (fresh) process
        length, mode, which = int(args.train_child[0]), args.train_child[1], args.train_child[2]
        base, ours, gap = train_speed(
            length, steps, rounds, keep_buffers=mode == "tuned", which=which
        )
        print(json.dumps({"base": base, "ours": ours, "gap": gap}))
        return
    size = 256
    rows = []

    def row(figure, target, base, ours, ratio, note=""):
        rows.append((figure, target, base, ours, ratio, note))
        print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)

    for mode, label in (
        ("pinned", "allocator pinned"),
        ("default", "glibc default, as users run it"),
        ("tuned", "glibc default, train --tune-malloc"),
    ):
        env = clean_env(**PINNED) if mode == "pinned" else clean_env()
        for length in (24, 4):

            def child(which: str) -> dict:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--train-child",
                        str(length),
                        mode,
                        which,
                    ]
                    + (["--quick"] if args.quick else []),
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                return json.loads(out.stdout.strip().splitlines()[-1])

            if mode == "pinned":  # interleaved in one process
                r = child("both")
                note = f"max |Δoutput| {r['gap']:.1e}; interleaved in one process"
            else:  # one fresh process each: --tune-malloc changes the malloc thresholds
                r = {"base": child("base")["base"], "ours": child("ours")["ours"]}
                note = "one fresh process each"
            row(
                f"training windows/s, l={length}, crop 224, batch 2 ({label})",
                "≥ 2× baseline",
                f"{r['base']:.1f}",
                f"{r['ours']:.1f}",
                f"{r['ours'] / r['base']:.2f}×",
                note,
            )

    base, ours = decode_latency(24, 20)
    row(
        "decode one latent vector, l=24 (ms)",
        "—",
        f"{base:.1f}",
        f"{ours:.1f}",
        f"{base / ours:.2f}× faster",
    )
    mem_base, mem_ours = memory(size, "baseline"), memory(size, "ours")
    row(
        f"stride-1 l=24 data set over a {size}³ stack: added RSS (MiB)",
        f"≤ {0.1 * mem_ours['stack_mib']:.1f} (10 % of stack)",
        f"{mem_base['added_mib']:.0f}",
        f"{mem_ours['added_mib']:.2f}",
        f"{mem_base['added_mib'] / max(mem_ours['added_mib'], 1e-3):.0f}× less",
    )

    if not args.no_memory:
        for case, what in (
            ("paper", "l=24, 256³ stack"),
            ("l4", "l=4, 256³ stack"),
            ("quick", "quick preset, sample data"),
        ):
            found = script_lines(
                [
                    sys.executable,
                    str(HERE / "memory_training.py"),
                    "--case",
                    case,
                    "--alloc",
                    "default",
                ]
                + (["--quick-epochs", "5"] if args.quick else []),
                env=clean_env(),
            )
            excess = number(found["verdict"].split("=", 1)[1])
            dynamo = found.get("torch._dynamo imported during the run", "?")
            row(
                f"peak RSS of a training run above import + stack + model, {what} (MiB)",
                "≤ 300",
                "—",
                f"{excess:.0f}",
                "",
                f"glibc default; train + evaluate + save run; torch._dynamo imported: {dynamo}",
            )

    if not args.no_gui:
        add_gui_rows(row, args.quick)

    header = ("figure", "target", "baseline", "ours", "ratio", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )
    for r in (header, *rows):
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def add_gui_rows(row, quick: bool) -> None:
    """Live decode, GUI stalls and time to first result, from the napari benchmark scripts.

    Each script runs in its own process (under Xvfb when there is no display), with the
    environment of this one.
    """
    live = script_lines(gui_command("live_decode.py"))
    for name in ("quick", "paper"):
        bare = number(live[f"[{name}] bare decode"])
        ready = number(live[f"[{name}/thread] slider → decoded array (worker)"])
        layer = number(live[f"[{name}/thread] slider → layer data updated"])
        napari_ms = number(live[f"[{name}] napari layer.data update"])
        overhead = number(live[f"[{name}/thread] plugin overhead on top of napari's update"])
        # the faster of 1 and 2 torch threads, after the isolated moves' pause spent busy
        busy_key = next(
            (k for k in live if k.startswith(f"[{name}] bare decode after") and "busy" in k), None
        )
        busy_ms = min(
            (float(t) for t in re.findall(r"(\d+(?:\.\d+)?) ms", live.get(busy_key, ""))),
            default=None,
        )
        busy_pause = re.search(r"after (\d+) ms", busy_key or "")
        row(
            f"live decode, {name} model: slider → decoded array (ms, median)",
            "≤ 1.2× bare decode",
            f"{bare:.1f} (bare decode)",
            f"{ready:.1f}",
            f"{ready / bare:.2f}×",
            f"slider → layer shown {layer:.1f} ms; bare decode back to "
            "back, warm caches, no snapping"
            + (
                ""
                if busy_ms is None or busy_pause is None
                else f"; after {busy_pause.group(1)} ms of busy waiting {busy_ms:.1f} ms (1 or 2 "
                "threads, the faster)"
            ),
        )
        # the same work alone under the same conditions: decode + snap to phases, each after
        # the pause that separates the isolated slider moves, with 1 or 2 torch threads
        # (whichever is faster: the panel picks the thread count per decode size)
        cold = next(v for k, v in live.items() if k.startswith(f"[{name}] bare decode after a"))
        snaps = [float(v) for v in re.findall(r"decode \+ snap (\d+(?:\.\d+)?) ms", cold)]
        alone = min(snaps)
        row(
            f"live decode, {name} model: slider → decoded array vs the same decode + snap alone "
            "after the same pause (ms, median)",
            "≤ 1.2×",
            f"{alone:.1f} (decode + snap alone)",
            f"{ready:.1f}",
            f"{ready / alone:.2f}×",
            "the plugin's own share of a slider move",
        )
        row(
            f"live decode, {name} model: plugin time on top of napari's layer update (ms)",
            "≤ 10",
            f"{napari_ms:.1f} (napari alone)",
            f"{overhead:.1f}",
            "",
            "median; layer shown − array ready − napari's own update",
        )
        row(
            f"GUI stall while dragging a latent slider at 60 Hz, {name} model (ms)",
            "≤ 50",
            f"{number(live[f'[{name}] napari alone, 60 Hz layer.data updates, max stall']):.0f}"
            " (napari alone)",
            f"{number(live[f'[{name}/thread] 60 Hz drag max stall']):.0f}",
            "",
            live[f"[{name}/thread] 60 Hz drag"].split(";")[0],
        )
    epochs = ["--epochs", "3"] if quick else []
    stalls = script_lines(gui_command("gui_stall_training.py", *epochs))
    for phase in ("train press", "epochs", "first results", "latents tab", "slider drag"):
        key = f"{phase} max stall"
        if key in stalls:
            row(
                f"longest GUI stall: {phase} (ms, 10 ms QTimer)",
                "≤ 50",
                f"{number(stalls['idle max stall']):.0f} (idle viewer)"
                if "idle max stall" in stalls
                else "—",
                f"{number(stalls[key]):.0f}",
                "",
                stalls.get(f"{phase} longest plugin call", ""),
            )
    first = script_lines(gui_command("time_to_first_result.py", *epochs))
    row(
        "README launch → first reconstruction, quick preset, sample data (s)",
        "< 120",
        "—",
        f"{number(first['launch to first reconstruction']):.0f}",
        "",
        first.get("training 80 epochs of the quick preset", "") if not quick else "3 epochs",
    )


if __name__ == "__main__":
    main()
