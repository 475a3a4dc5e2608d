"""Training and decoding on a CUDA GPU: the researcher-style baseline against ``core.train``'s path.

Run on a machine with an NVIDIA GPU: ``python benchmarks/cuda_training.py`` (2-4 minutes;
``--steps``/``--rounds`` for shorter). Prints one row per variant: windows/s (median of the
rounds), ratio to the baseline, peak GPU memory, and the loss after the timed steps; then the
largest output difference to the baseline (same weights) and the decode latency.

* ``base``: ``benchmarks/baseline.py`` as a researcher runs it on a GPU: materialised float32
  windows in a DataLoader, ``.to("cuda")`` per batch, plain Conv3d/ConvTranspose3d, torch's
  Adam, ``loss.item()`` every batch, cuDNN defaults.
* ``ours``: what ``core.train`` does (``core.kernels.feeding.BatchFeeder`` cuts batches out of the
  uint8 stack resident on the GPU, folded model, fused Adam, cuDNN autotuning, the loss
  summed on the device; on CUDA the step replayed from a CUDA graph, ``core.kernels.train_step``);
  ``eager``: the same without the graph; ``+sync``: reading every batch's loss (as a script
  printing it would); ``bf16``: mixed precision (``TrainConfig(precision="bf16")``);
  ``conv3d``: the model's plain Conv3d modules instead of the folded 2D route;
  ``staged``: pinned host buffers and non-blocking copies instead of the resident stack.
* ``train()``: one full ``core.train`` run (validation each epoch included) for realism.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baseline import BaselineCAE, baseline_loader, materialise_windows  # noqa: E402

from napari_electrode_cae import core  # noqa: E402
from napari_electrode_cae.core.kernels.feeding import BatchFeeder  # noqa: E402
from napari_electrode_cae.core.kernels.train_step import TrainingStep  # noqa: E402
from napari_electrode_cae.core.training import cudnn_autotune  # noqa: E402

SMOKE = False  # --cpu-smoke: run every code path on the CPU with tiny numbers (no timings)


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def reset_peak() -> None:
    if not SMOKE:
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> int:
    return 0 if SMOKE else torch.cuda.max_memory_allocated()


def timed(step, steps: int, rounds: int, batch: int) -> tuple[float, float]:
    """Median windows/s over ``rounds`` of ``steps`` calls of ``step()`` and the last loss."""
    for _ in range(5):
        loss = step()
    sync()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates), float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[24, 4])
    parser.add_argument("--big-batch", type=int, default=16)
    parser.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SMOKE
    SMOKE = args.cpu_smoke
    if SMOKE:
        args.steps, args.rounds, args.lengths, args.big_batch = 1, 1, [4], 4
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: this benchmark is for GPU machines")
    else:
        device = torch.device("cuda")
        print(
            f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, cuDNN "
            f"{torch.backends.cudnn.version()}, TF32 conv {torch.backends.cudnn.allow_tf32}"
        )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (64, 224, 224), dtype=np.uint8)
    stack = core.ElectrodeStack(labels)
    loss_fn = torch.nn.MSELoss()
    for length in args.lengths:
        data = core.WindowDataset([stack], core.WindowSpec(length, 1, 224))
        order = np.random.default_rng(1).permutation(len(data))
        torch.manual_seed(0)
        init = core.ConvAutoEncoder3d(length, 224, 3, 128, 10).state_dict()
        rows = []

        # -- baseline ------------------------------------------------------------------
        base = BaselineCAE(length).to(device)
        base.load_state_dict(init)
        opt = torch.optim.Adam(base.parameters(), lr=1e-4)
        loader = baseline_loader(materialise_windows(labels, length, 1, 224), 2)
        batches = iter(())

        def base_step():
            nonlocal batches
            try:
                (x,) = next(batches)
            except StopIteration:
                batches = iter(loader)
                (x,) = next(batches)
            x = x.to(device)
            opt.zero_grad()
            loss = loss_fn(base(x), x)
            loss.backward()
            opt.step()
            return loss.item()

        reset_peak()
        rate, loss = timed(base_step, args.steps, args.rounds, 2)
        rows.append(("base fp32 b2", rate, peak_bytes(), loss))
        base_rate = rate

        # -- ours ----------------------------------------------------------------------
        def ours(
            precision="fp32", batch=2, read_loss=False, fold=True, mode="resident", graph=True
        ):
            model = core.ConvAutoEncoder3d(length, 224, 3, 128, 10).to(device)
            model.load_state_dict(init)
            model.fold_depth = fold
            optimiser = core.training.make_optimiser(model, 1e-4)
            feeder = BatchFeeder(data, device, mode=mode)
            train_step = TrainingStep(model, optimiser, device, precision, batch, use_graph=graph)
            position = 0

            def step():
                nonlocal position
                if position + batch > len(order):
                    position = 0
                loss = train_step(feeder(order[position : position + batch]))
                position += batch
                if read_loss:
                    float(loss)
                return loss

            reset_peak()
            with cudnn_autotune(device):
                rate, loss = timed(step, args.steps, args.rounds, batch)
            if graph and not SMOKE and not train_step.replaying:
                print(f"  (not replayed from a CUDA graph: {train_step.graph_error})")
            return rate, peak_bytes(), loss, model

        big = args.big_batch
        variants = [
            ("ours fp32 b2 eager", {"graph": False}),
            ("ours fp32 b2 graph", {}),
            ("ours fp32 b2 graph +sync", {"read_loss": True}),
            ("ours fp32 b2 graph staged", {"mode": "staged"}),
            ("ours fp32 b2 graph conv3d", {"fold": False}),
            ("ours bf16 b2 graph", {"precision": "bf16"}),
            ("ours bf16 b2 graph conv3d", {"precision": "bf16", "fold": False}),
            (f"ours fp32 b{big} eager", {"batch": big, "graph": False}),
            (f"ours fp32 b{big} graph", {"batch": big}),
            (f"ours fp32 b{big} graph conv3d", {"batch": big, "fold": False}),
            (f"ours bf16 b{big} graph", {"batch": big, "precision": "bf16"}),
            (f"ours bf16 b{big} graph conv3d", {"batch": big, "precision": "bf16", "fold": False}),
        ]
        model = None
        for name, kwargs in variants:
            try:
                rate, peak, loss, trained = ours(**kwargs)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"l={length} {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
                continue
            if name == "ours fp32 b2 eager":
                model = trained
            rows.append((name, rate, peak, loss))

        print(
            f"\nl={length}, crop 224, 41 windows per epoch source, {args.steps} steps x "
            f"{args.rounds} rounds"
        )
        print(
            f"  {'variant':<26}{'windows/s':>11}{'vs base':>9}{'peak GPU MiB':>14}{'last loss':>11}"
        )
        for name, rate, peak, loss in rows:
            print(
                f"  {name:<26}{rate:>11.1f}{rate / base_rate:>8.2f}x{peak / 2**20:>14.0f}"
                f"{loss:>11.4f}"
            )

        # same weights, same batch: ours (folded, fp32) against the baseline's output
        if model is not None:
            with torch.no_grad():
                model.load_state_dict(base.state_dict())
                x = data.batch([0, 1]).to(device)
                gap = float((model(x) - base(x)).abs().max())
                scale = float(base(x).abs().max())
            print(
                f"  output gap ours vs base (same weights, TF32 convs): {gap:.2e} "
                f"(outputs up to {scale:.2f})"
            )

            # decode latency: one latent vector -> uint8 phases on the host
            z = torch.zeros(1, 10)
            model.eval()
            times = {"base": [], "ours": []}
            with torch.inference_mode(), cudnn_autotune(device):
                for name, fn in (("base", base.decoder), ("ours", model.decode)):
                    for i in range(25):
                        start = time.perf_counter()
                        fn(z.to(device))[0, 0].float().cpu().numpy()
                        if i >= 5:
                            times[name].append(time.perf_counter() - start)
            print(
                f"  decode one latent vector to host: base "
                f"{statistics.median(times['base']) * 1e3:.2f} ms, ours "
                f"{statistics.median(times['ours']) * 1e3:.2f} ms"
            )

        # one real core.train run: 3 epochs, validation included
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = core.ConvAutoEncoder3d(length, 224, 3, 128, 10)
            config = core.TrainConfig(
                epochs=3, batch_size=2, device=device.type, precision=precision
            )
            start = time.perf_counter()
            result = core.run_training(model, data, config)
            seconds = time.perf_counter() - start
            n_train = len(result.train_idx)
            later = sum(r.seconds for r in result.history[1:])
            print(
                f"  core.train {precision}: 3 epochs in {seconds:.1f} s; epochs 2-3 "
                f"{2 * n_train / later:.1f} training windows/s incl. validation; "
                f"val MSE {[round(r.val_mse, 4) for r in result.history]}; "
                f"cudnn.benchmark restored: {torch.backends.cudnn.benchmark is False}",
                flush=True,
            )


if __name__ == "__main__":
    main()
