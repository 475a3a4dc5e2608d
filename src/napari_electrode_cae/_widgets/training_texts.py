"""Pure helpers of the Train tab: the texts it shows and the preset its settings match.

The training plan (windows, batches), the time estimate, the epoch status line, the warning of
an unhealthy model and the evaluation summary, and the preset a set of model, training and
window settings matches. Plain functions of core objects: no Qt, no viewer, no worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .. import core
from ..core import EpochReport
from ..core.health import Health
from ..core.training import format_duration
from .state import ModelSettings

CUSTOM_PRESET = "custom"
#: Epochs after which a collapse to the mean is shown as a warning during training (the first
#: epochs of a healthy model may still sit near the mean).
COLLAPSE_WARNING_EPOCHS = 3
#: Phase rules a user chooses: value and label. "nearest" stands for the unfitted rule, the
#: paper's nearest value of one-value models and the plain argmax of three-phase ones (as
#: ``core.evaluation.fit_phase_rule`` takes it; the panel relabels it by output kind).
PHASE_RULE_CHOICES: tuple[tuple[str, str], ...] = (
    ("fitted", "fitted to training fractions"),
    ("nearest", "nearest value (paper)"),
)


@dataclass(frozen=True)
class TrainingPlan:
    """What one training run will do, known before its first batch."""

    windows: int
    train_windows: int
    val_windows: int
    split: str  # the resolved split mode ("random" or "blocked")
    per_epoch: int  # training windows visited per epoch
    batches_per_epoch: int
    batch_size: int
    epochs: int

    @classmethod
    def of(
        cls,
        dataset: core.WindowDataset,
        train_idx: Sequence[int],
        val_idx: Sequence[int],
        config: core.TrainConfig,
        norm: str = "none",
    ) -> TrainingPlan:
        per_epoch = core.training.windows_per_epoch(len(train_idx), config, norm)
        return cls(
            len(dataset),
            len(train_idx),
            len(val_idx),
            core.windows.resolve_split(config.split, dataset.spec),
            per_epoch,
            math.ceil(per_epoch / config.batch_size),
            config.batch_size,
            config.epochs,
        )

    @property
    def total_batches(self) -> int:
        return self.epochs * self.batches_per_epoch

    def describe(self) -> str:
        """E.g. ``"14,175 windows: 12,000 training, 2,100 validation (blocked split) ·
        30 epochs × 128 batches of 16 (2,048 of 12,000 training windows per epoch)"``."""
        sampled = (
            f" ({self.per_epoch:,} of {self.train_windows:,} training windows per epoch)"
            if self.per_epoch < self.train_windows
            else ""
        )
        return (
            f"{self.windows:,} windows: {self.train_windows:,} training, "
            f"{self.val_windows:,} validation ({self.split} split) · {self.epochs:,} "
            f"epochs × {self.batches_per_epoch:,} batches of {self.batch_size}{sampled}"
        )


def estimate_text(estimate: core.training.TimeEstimate, epochs_done: int) -> str:
    """The time line of the Train tab: the first estimate, then what is left."""
    if epochs_done == 0:
        return f"estimated training time: {estimate.describe()}"
    left = estimate.remaining_seconds
    return (
        f"~{format_duration(left)} left ({estimate.epoch_seconds:.2g}\u00a0s per epoch)"
        if left > 0
        else f"took {format_duration(estimate.epoch_seconds * epochs_done)}"
    )


def format_epoch_status(history: Sequence[EpochReport]) -> str:
    """'epoch 12/80 · train 0.251 · val 0.362 (best 0.35 @ 10) · NMSE 0.41 · spread 78% ·
    0.5 s/epoch'.

    The unit is glued to its number (no-break space, word joiner) so a narrow dock does not
    wrap it.
    """
    last = history[-1]
    seconds = sum(r.seconds for r in history) / len(history)
    health = ""
    if math.isfinite(last.val_nmse):
        health += f" · NMSE\u00a0{last.val_nmse:.3g}"
    if math.isfinite(last.spread):
        health += f" · spread\u00a0{last.spread:.0%}"
    return (
        f"epoch {last.epoch}/{last.epochs} · train {last.train_mse:.3g} · "
        f"val {last.val_mse:.3g} (best {last.best_val_mse:.3g} @ {last.best_epoch})"
        f"{health} · {seconds:.2g}\u00a0s/\u2060epoch"
    )  # no line break inside "0.5 s/epoch"


def epoch_warning(report: EpochReport, config: core.TrainConfig | None) -> Health | None:
    """The health of an epoch worth a warning: diverged, or collapsed after
    :data:`COLLAPSE_WARNING_EPOCHS` epochs; None otherwise."""
    health = report.health(config)
    if health.state == "diverged":
        return health
    if health.state == "collapsed" and report.epoch >= COLLAPSE_WARNING_EPOCHS:
        return health
    return None


def warning_text(health: Health) -> str:
    """The warning shown for an unhealthy model: what happened and what to do."""
    text = f"Warning: {health.message}."
    if health.advice:
        text += f" Advice: {health.advice}."
    return text


def format_report_status(report: core.EvaluationReport) -> str:
    """One line with the phase judgement and the Table-8 MSE statistics of ``report``."""
    row = report.table8_row()
    text = ""
    p = report.phases
    if p is not None:
        text = (
            f"all {p.windows:,} validation windows: voxel accuracy\u00a0"
            f"{p.voxel_accuracy:.1%} · NMSE\u00a0{p.val_nmse:.3g} · "
        )
    return text + (
        f"train MSE {row['Training MSE']} · val MSE {row['Validation MSE']} · "
        f"p\u00a0=\u00a0{row['p-value for MSE']}"
    )


def settings_of_preset(preset: core.Preset) -> ModelSettings:
    """The model settings of ``preset``."""
    return ModelSettings(
        preset.conv_layers,
        preset.hidden,
        preset.latent_dim,
        preset.norm,
        preset.output,
        preset.phase_rule,
    )


def matching_preset(
    settings: ModelSettings, config: core.TrainConfig, window: core.WindowSpec
) -> str:
    """Name of the preset whose model, training and window settings these are, or 'custom'.

    Compared: the architecture (layers, hidden, latent, normalisation, output), the phase
    rule, the training settings (epochs, batch, learning rate, windows per
    epoch, warm-up, schedule, clipping, and the loss of three-phase models) and the window.
    Device, precision, split, validation fraction and seed belong to no preset.
    """
    for name, preset in core.PRESETS.items():
        p = preset.train
        if (
            settings.conv_layers,
            settings.hidden,
            settings.latent_dim,
            settings.norm,
            settings.output,
        ) != (preset.conv_layers, preset.hidden, preset.latent_dim, preset.norm, preset.output):
            continue
        if settings.phase_rule != preset.phase_rule:
            continue
        if settings.output == "phases" and config.phase_loss != p.phase_loss:
            continue
        if (
            config.epochs,
            config.batch_size,
            config.windows_per_epoch,
            config.warmup_epochs,
            config.schedule,
        ) != (p.epochs, p.batch_size, p.windows_per_epoch, p.warmup_epochs, p.schedule):
            continue
        if not (math.isclose(config.lr, p.lr) and math.isclose(config.grad_clip, p.grad_clip)):
            continue
        if window == preset.window:
            return name
    return CUSTOM_PRESET
