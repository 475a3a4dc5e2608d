"""A briefly trained model on a small realistic electrode, shared by the prediction, design,
CLI and Design-tab tests (trained once per test process, ~5 s on 2 CPU cores)."""

from __future__ import annotations

import functools

import torch

from napari_electrode_cae import core
from napari_electrode_cae.core import prediction

#: Small windows so that a (32, 64, 64) stack holds 128 non-overlapping ones.
SPEC = core.WindowSpec(length=4, stride=4, crop=16)
MODEL = core.ModelConfig(4, 16, 3, 32, 4, "batch", "phases")
TRAIN = core.TrainConfig(
    epochs=8, batch_size=16, lr=3e-3, seed=0, split="blocked", device="cpu", phase_loss="ce_dice"
)
#: Metrics the shared predictor fits (cheap ones: tests stay fast).
NAMES = ("pore_fraction", "cbd_fraction", "ssa_active_per_um")


@functools.lru_cache(maxsize=1)
def trained():
    """(model, data, TrainResult) — do not modify the model in a test."""
    stack = core.generate_electrode(preset="REALISTIC", shape=(32, 64, 64), seed=0)
    data = core.WindowDataset([stack], SPEC)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = core.build_model(MODEL)
        result = core.run_training(model, data, TRAIN)
    model.eval()
    return model, data, result


@functools.lru_cache(maxsize=1)
def fitted_report() -> prediction.PredictionReport:
    model, data, _ = trained()
    return prediction.fit_prediction(model, data, n_folds=4, names=list(NAMES))


def save_tiny_run(run_dir, *, with_prediction: bool = True):
    """Write the trained model as a run folder (and its prediction.json)."""
    model, data, result = trained()
    core.save_run(run_dir, model, data, TRAIN, result.train_idx, result.val_idx, result.history)
    if with_prediction:
        prediction.save_prediction(run_dir, fitted_report())
    return run_dir
