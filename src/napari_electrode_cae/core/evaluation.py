"""The paper's statistics (Tables 6-8) plus phase-aware checks of a reconstruction.

* Per-window MSE of the training and validation windows, mean ± std, and the Welch t-test
  between them (does the model over- or under-fit?).
* For one validation window: mean and std of the original and reconstructed network values and
  the t-test from those statistics and the voxel counts (``scipy.stats.ttest_ind_from_stats``).
* Beyond the paper, over all validation windows: NMSE, the reconstruction's spread and the
  collapse/divergence verdict (:mod:`.health`), and, after snapping by the model's
  :class:`~.phases.PhaseRule`, voxel accuracy, per-phase IoU and volume fractions of original
  and reconstruction, and the triple-phase-boundary density. A reconstruction can match the
  mean, and pass the paper's t-tests, while losing a whole phase (usually the thin CBD) or
  being one phase everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats

from .health import Health, diagnose
from .kernels.feeding import BatchFeeder
from .model import ConvAutoEncoder3d
from .phases import PhaseRule, PhaseScores, fit_offsets, fit_thresholds
from .physics import triple_phase_boundary_density
from .stack import volume_fractions
from .training import inference_batch_size, training_fractions, window_mse
from .windows import WindowDataset

#: Most output voxels :func:`fit_phase_rule` keeps to fit thresholds or offsets on.
FIT_MAX_VOXELS = 2_000_000

#: Progress callback of long evaluations: (windows done, windows in all).
Progress = Callable[[int, int], None]


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
class PhaseEvaluation:
    """Phase-level judgement of the reconstructions of all validation windows."""

    windows: int
    rule: str  # PhaseRule.describe()
    val_nmse: float
    spread: float  # std of reconstructed / original network values
    voxel_accuracy: float
    phase_fractions: dict  # {"original": {...}, "reconstruction": {...}}
    phase_iou: dict
    tpb_density_per_um2: dict  # {"original": .., "reconstruction": ..}, mean over windows
    health: str  # "ok", "collapsed" or "diverged"
    message: str = ""
    advice: str = ""
    confusion: list = field(default_factory=list)

    @property
    def collapsed(self) -> bool:
        return self.health == "collapsed"


@dataclass(frozen=True)
class EvaluationReport:
    """Everything the Table-8 row, the phase judgement and the run report need."""

    mse: MSEStats
    window: WindowComparison
    phases: PhaseEvaluation | None = None

    def to_dict(self) -> dict:
        out = {"mse": asdict(self.mse), "window": asdict(self.window)}
        if self.phases is not None:
            out["phases"] = asdict(self.phases)
        return out

    def summary(self) -> dict:
        """The flat record of ``electrode-cae evaluate --json``: ``val_mse``, ``val_nmse``,
        ``voxel_accuracy``, ``phase_fractions``, ``phase_iou``, ``collapsed`` and more."""
        p = self.phases
        return {
            "val_mse": self.mse.val_mean,
            "train_mse": self.mse.train_mean,
            "val_nmse": p.val_nmse,
            "spread": p.spread,
            "voxel_accuracy": p.voxel_accuracy,
            "phase_fractions": p.phase_fractions,
            "phase_iou": p.phase_iou,
            "tpb_density_per_um2": p.tpb_density_per_um2,
            "collapsed": p.collapsed,
            "diverged": p.health == "diverged",
            "health": p.health,
            "message": p.message,
            "advice": p.advice,
            "phase_rule": p.rule,
            "n_train": self.mse.n_train,
            "n_val": self.mse.n_val,
            "p_value_mse": self.mse.p_value,
        }

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
        """The report as Markdown: the phase judgement, the Table-8 row and one window."""
        row = self.table8_row()
        w = self.window
        lines = ["# Evaluation", ""]
        p = self.phases
        if p is not None:
            if p.health != "ok":
                lines += [f"**Warning: {p.message}.** {p.advice}.", ""]
            lines += [
                f"All {p.windows} validation windows, phases by {p.rule}: voxel accuracy "
                f"{p.voxel_accuracy:.1%}, NMSE {p.val_nmse:.3f}, spread {p.spread:.0%}.",
                "",
                "| Phase | Original | Reconstruction | IoU |",
                "|---|---|---|---|",
            ]
            for phase, value in p.phase_fractions["original"].items():
                lines.append(
                    f"| {phase} | {value:.1%} | "
                    f"{p.phase_fractions['reconstruction'][phase]:.1%} | "
                    f"{p.phase_iou[phase]:.2f} |"
                )
            t = p.tpb_density_per_um2
            lines += [
                "",
                f"TPB density (µm⁻²): original {t['original']:.4f}, "
                f"reconstruction {t['reconstruction']:.4f}.",
                "",
                "The paper's statistics (Table 8):",
                "",
            ]
        lines += [
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
        len(train_mse),
        len(val_mse),
        float(train_mse.mean()),
        float(train_mse.std(ddof=ddof(train_mse))),
        float(val_mse.mean()),
        float(val_mse.std(ddof=ddof(val_mse))),
        welch_p(train_mse, val_mse),
    )


@torch.inference_mode()
def reconstruct(model: ConvAutoEncoder3d, window: torch.Tensor) -> np.ndarray:
    """Reconstruction of one (1, l, crop, crop) window as float32 (l, crop, crop) network
    values (for a three-phase model, the expected value; see ``ConvAutoEncoder3d.values``)."""
    return reconstruct_window(model, window)[0]


@torch.inference_mode()
def reconstruct_window(
    model: ConvAutoEncoder3d, window: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """One (1, l, crop, crop) window -> its reconstruction as float32 (l, crop, crop) network
    values and uint8 (l, crop, crop) phase ids by the model's phase rule."""
    model.eval()
    device = next(model.parameters()).device
    output = model(window[None].to(device))
    values = model.values(output)[0, 0].float().cpu().numpy()
    return values, model.phase_labels(output)[0]


def compare_window(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    index: int,
    reconstruction: np.ndarray | None = None,
) -> WindowComparison:
    """Original vs reconstruction statistics of window ``index`` (Table 7 and phase checks).

    ``reconstruction``: the window's (values, phase ids) from :func:`reconstruct_window`, which
    skips running the model again when the caller already has it.
    """
    original = data[index][0].numpy().astype(np.float64)
    if reconstruction is None:
        reconstruction = reconstruct_window(model, data[index])
    values, snapped = reconstruction
    recon = np.asarray(values, dtype=np.float64)
    n = original.size
    o_mean, o_std = float(original.mean()), float(original.std(ddof=1))
    r_mean, r_std = float(recon.mean()), float(recon.std(ddof=1))
    if o_std == 0 and r_std == 0:
        p = 1.0 if o_mean == r_mean else 0.0
    else:
        p = float(
            stats.ttest_ind_from_stats(o_mean, o_std, n, r_mean, r_std, n, equal_var=False).pvalue
        )
    labels = data.view(index)
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
    progress: Progress | None = None,
    diverged: bool = False,
) -> EvaluationReport:
    """The paper's evaluation of a trained model, and the phase-level judgement.

    Parameters
    ----------
    model : ConvAutoEncoder3d
        The trained auto-encoder; its ``phase_rule`` snaps the reconstructions.
    data : WindowDataset
        The windows it was trained on.
    train_idx, val_idx : sequence of int
        The split used for training.
    window : int, optional
        Window to compare original vs reconstruction; by default a seeded random validation
        window (as in the paper).
    seed : int
        Seed for picking that window.
    progress : callable, optional
        Called as ``progress(done, total)`` with windows evaluated so far (validation first,
        then training).
    diverged : bool
        The training diverged (a non-finite loss): reported as such whatever the weights do.
    """
    if len(val_idx) == 0:
        raise ValueError("evaluation needs at least one validation window")
    if window is None:
        window = int(np.random.default_rng(seed).choice(np.asarray(val_idx)))
    total = len(val_idx) + len(train_idx)
    val_mse, phases = judge_phases(
        model,
        data,
        val_idx,
        batch_size,
        progress=None if progress is None else (lambda done: progress(done, total)),
        diverged=diverged,
    )
    train_mse = window_mse(model, data, train_idx, batch_size)
    if progress is not None:
        progress(total, total)
    return EvaluationReport(
        mse_statistics(train_mse, val_mse), compare_window(model, data, window), phases
    )


@torch.inference_mode()
def judge_phases(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    indices: Sequence[int],
    batch_size: int = 8,
    *,
    progress: Callable[[int], None] | None = None,
    diverged: bool = False,
) -> tuple[np.ndarray, PhaseEvaluation]:
    """Per-window MSE and the :class:`PhaseEvaluation` of windows ``indices`` (one pass)."""
    model.eval()
    device = next(model.parameters()).device
    indices = np.asarray(indices, dtype=np.int64)
    chunk_size = inference_batch_size(batch_size, data.spec.window_shape())
    feeder = BatchFeeder(data, device, mode="host")
    voxel_um = float(np.mean([s.voxel_size_um for s in data.stacks]))
    scores = PhaseScores()
    mse = np.empty(len(indices))
    moments = np.zeros(4)  # sums of x, x², y, y²
    tpb = np.zeros(2)
    for start in range(0, len(indices), chunk_size):
        chunk = indices[start : start + chunk_size]
        x = feeder(chunk)
        output = model(x)
        y = model.values(output).float()
        mse[start : start + len(chunk)] = (y - x).pow(2).flatten(1).mean(1).double().cpu().numpy()
        xd, yd = x.double(), y.double()
        moments += [
            float(xd.sum()),
            float(xd.square().sum()),
            float(yd.sum()),
            float(yd.square().sum()),
        ]
        labels = model.phase_labels(output)
        for k, i in enumerate(chunk):
            original = data.view(int(i))
            scores.add(original, labels[k])
            tpb += [
                triple_phase_boundary_density(original, voxel_um),
                triple_phase_boundary_density(labels[k], voxel_um),
            ]
        if progress is not None:
            progress(start + len(chunk))
    n = max(scores.voxels, 1)
    var_x = max(moments[1] / n - (moments[0] / n) ** 2, 0.0)
    var_y = max(moments[3] / n - (moments[2] / n) ** 2, 0.0)
    nmse = float(mse.mean()) / var_x if var_x > 0 else math.nan
    spread = math.sqrt(var_y / var_x) if var_x > 0 and math.isfinite(var_y) else math.nan
    health: Health = diagnose(nmse, spread, finite=not diverged and bool(np.all(np.isfinite(mse))))
    summary = scores.to_dict()
    return mse, PhaseEvaluation(
        windows=len(indices),
        rule=model.phase_rule.describe(),
        val_nmse=nmse,
        spread=spread,
        voxel_accuracy=summary["voxel_accuracy"],
        phase_fractions=summary["phase_fractions"],
        phase_iou=summary["phase_iou"],
        tpb_density_per_um2={
            "original": float(tpb[0] / max(len(indices), 1)),
            "reconstruction": float(tpb[1] / max(len(indices), 1)),
        },
        health=health.state,
        message=health.message,
        advice=health.advice,
        confusion=summary["confusion"],
    )


@torch.inference_mode()
def fit_phase_rule(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    train_idx: Sequence[int],
    rule: str = "fitted",
    *,
    max_windows: int = 256,
    batch_size: int = 8,
) -> PhaseRule:
    """The phase rule of a trained model; also sets ``model.phase_rule``.

    ``rule``: ``"fitted"`` fits on the reconstructions of (an evenly spaced subset of at most
    ``max_windows``) training windows so that their phase fractions match the training data's:
    thresholds of one-channel outputs, per-phase offsets of three-phase logits. Otherwise the
    unfitted rule: ``"nearest"`` (the paper's) for one channel, ``"argmax"`` for three. A model
    whose outputs are not finite keeps the unfitted rule.
    """
    phases = model.config.output == "phases"
    plain = PhaseRule("argmax" if phases else "nearest")
    if rule != "fitted":
        model.phase_rule = plain
        return model.phase_rule
    idx = np.asarray(train_idx, dtype=np.int64)
    if len(idx) > max_windows:
        idx = idx[np.linspace(0, len(idx) - 1, max_windows).astype(np.int64)]
    model.eval()
    device = next(model.parameters()).device
    chunk_size = inference_batch_size(batch_size, data.spec.window_shape())
    # every step-th voxel of each chunk, so that at most FIT_MAX_VOXELS are kept (paper-size
    # windows would otherwise hold gigabytes of outputs)
    step = max(1, -(-len(idx) * math.prod(data.spec.window_shape()) // FIT_MAX_VOXELS))
    outputs = []
    for s in range(0, len(idx), chunk_size):
        out = model(data.batch(idx[s : s + chunk_size]).to(device)).float()
        outputs.append(out.movedim(1, 0).reshape(out.shape[1], -1)[:, ::step].cpu())
    # (C, voxels): the phase (or value) axis first
    flat = torch.cat(outputs, dim=1).numpy() if outputs else np.zeros((1, 0), np.float32)
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        model.phase_rule = plain
    elif phases:
        model.phase_rule = fit_offsets(flat, training_fractions(data, idx, max_windows))
    else:
        model.phase_rule = fit_thresholds(flat, training_fractions(data, idx, max_windows))
    return model.phase_rule
