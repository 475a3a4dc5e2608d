"""The paper's statistics (Tables 6-8) plus phase-aware checks of a reconstruction.

* Per-window MSE of the training and validation windows, mean ± std, and the Welch t-test
  between them (does the model over- or under-fit?).
* For one validation window: mean and std of the original and reconstructed network values and
  the t-test from those statistics and the voxel counts (``scipy.stats.ttest_ind_from_stats``).
* Beyond the paper: voxel accuracy after snapping the reconstruction to the nearest phase, and
  the per-phase volume fractions of original and reconstruction, since a reconstruction can
  match the mean while losing a whole phase (usually the thin CBD).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from .model import ConvAutoEncoder3d
from .stack import snap_to_phases, volume_fractions
from .training import window_mse
from .windows import WindowDataset


@dataclass(frozen=True)
class MSEStats:
    """Per-window MSE statistics of the training and validation sets (Table 6)."""

    n_train: int
    n_val: int
    train_mean: float
    train_std: float
    val_mean: float
    val_std: float
    p_value: float  # Welch t-test, train vs validation per-window MSE


@dataclass(frozen=True)
class WindowComparison:
    """Original vs reconstruction of one window (Table 7) plus phase checks."""

    window: int
    origin: tuple[int, int, int, int]
    n_voxels: int
    original_mean: float
    original_std: float
    reconstruction_mean: float
    reconstruction_std: float
    p_value: float  # t-test from means, stds and voxel counts
    voxel_accuracy: float  # fraction of voxels whose snapped phase matches
    original_fractions: dict
    reconstruction_fractions: dict


@dataclass(frozen=True)
class EvaluationReport:
    """Everything the Table-8 row and the run report need."""

    mse: MSEStats
    window: WindowComparison

    def to_dict(self) -> dict:
        return {"mse": asdict(self.mse), "window": asdict(self.window)}

    def table8_row(self) -> dict[str, str]:
        """The paper's Table 8 columns as formatted strings."""
        m, w = self.mse, self.window
        return {
            "Training dataset": str(m.n_train),
            "Validation dataset": str(m.n_val),
            "Training MSE": f"{m.train_mean:.3f} ± {m.train_std:.3f}",
            "Validation MSE": f"{m.val_mean:.3f} ± {m.val_std:.3f}",
            "p-value for MSE": format_p(m.p_value),
            "Original mean": f"{w.original_mean:.3f} ± {w.original_std:.3f}",
            "Reconstruction mean": f"{w.reconstruction_mean:.3f} ± {w.reconstruction_std:.3f}",
            "p-value": format_p(w.p_value),
            "Voxel accuracy": f"{w.voxel_accuracy:.1%}",
        }

    def to_markdown(self) -> str:
        """The report as Markdown: the Table-8 row and the phase fractions."""
        row = self.table8_row()
        w = self.window
        lines = [
            "# Evaluation",
            "",
            "| " + " | ".join(row) + " |",
            "|" + "---|" * len(row),
            "| " + " | ".join(row.values()) + " |",
            "",
            f"Window {w.window} at (stack, z, y, x) = {w.origin}, {w.n_voxels} voxels.",
            "",
            "| Phase | Original | Reconstruction (snapped) |",
            "|---|---|---|",
        ]
        for phase, value in w.original_fractions.items():
            lines.append(f"| {phase} | {value:.1%} | {w.reconstruction_fractions[phase]:.1%} |")
        return "\n".join(lines) + "\n"


def format_p(p: float) -> str:
    """p-values as the paper prints them: ``<0.0001`` or four decimals."""
    if not np.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value; NaN if either sample has fewer than 2 values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def mse_statistics(train_mse: np.ndarray, val_mse: np.ndarray) -> MSEStats:
    """Mean ± std (ddof=1) of per-window MSEs and their Welch p-value."""
    train_mse, val_mse = np.asarray(train_mse, float), np.asarray(val_mse, float)
    ddof = lambda a: 1 if len(a) > 1 else 0  # noqa: E731
    return MSEStats(
        len(train_mse), len(val_mse),
        float(train_mse.mean()), float(train_mse.std(ddof=ddof(train_mse))),
        float(val_mse.mean()), float(val_mse.std(ddof=ddof(val_mse))),
        welch_p(train_mse, val_mse),
    )


@torch.inference_mode()
def reconstruct(model: ConvAutoEncoder3d, window: torch.Tensor) -> np.ndarray:
    """Reconstruction of one (1, l, crop, crop) window as a float32 (l, crop, crop) array."""
    model.eval()
    device = next(model.parameters()).device
    return model(window[None].to(device))[0, 0].float().cpu().numpy()


def compare_window(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    index: int,
    reconstruction: np.ndarray | None = None,
) -> WindowComparison:
    """Original vs reconstruction statistics of window ``index`` (Table 7 and phase checks).

    ``reconstruction`` ((l, crop, crop) network values) skips running the model again when the
    caller already has it.
    """
    original = data[index][0].numpy().astype(np.float64)
    if reconstruction is None:
        reconstruction = reconstruct(model, data[index])
    recon = np.asarray(reconstruction, dtype=np.float64)
    n = original.size
    o_mean, o_std = float(original.mean()), float(original.std(ddof=1))
    r_mean, r_std = float(recon.mean()), float(recon.std(ddof=1))
    if o_std == 0 and r_std == 0:
        p = 1.0 if o_mean == r_mean else 0.0
    else:
        p = float(stats.ttest_ind_from_stats(o_mean, o_std, n, r_mean, r_std, n,
                                             equal_var=False).pvalue)
    labels = data.view(index)
    snapped = snap_to_phases(recon)
    return WindowComparison(
        window=int(index),
        origin=data.origin(index),
        n_voxels=int(n),
        original_mean=o_mean,
        original_std=o_std,
        reconstruction_mean=r_mean,
        reconstruction_std=r_std,
        p_value=p,
        voxel_accuracy=float(np.mean(snapped == labels)),
        original_fractions=volume_fractions(labels),
        reconstruction_fractions=volume_fractions(snapped),
    )


def evaluate(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    *,
    window: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> EvaluationReport:
    """The paper's evaluation of a trained model.

    Parameters
    ----------
    model : ConvAutoEncoder3d
        The trained auto-encoder.
    data : WindowDataset
        The windows it was trained on.
    train_idx, val_idx : sequence of int
        The split used for training.
    window : int, optional
        Window to compare original vs reconstruction; by default a seeded random validation
        window (as in the paper).
    seed : int
        Seed for picking that window.
    """
    if len(val_idx) == 0:
        raise ValueError("evaluation needs at least one validation window")
    if window is None:
        window = int(np.random.default_rng(seed).choice(np.asarray(val_idx)))
    mse = mse_statistics(
        window_mse(model, data, train_idx, batch_size), window_mse(model, data, val_idx, batch_size)
    )
    return EvaluationReport(mse, compare_window(model, data, window))
