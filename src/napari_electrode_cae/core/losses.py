"""What training minimises: the paper's MSE, or cross-entropy for three-phase outputs.

A loss here maps the model's raw output and the input batch (network values: pore -1, CBD 0,
active +1) to ``(objective, mse)``: the objective is what the optimiser minimises, ``mse`` the
mean squared error of the output's network values (``ConvAutoEncoder3d.values``), reported for
every kind of model so that learning curves compare across output kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.nn import functional as F

from .stack import PHASES

#: Losses of three-phase outputs: plain cross-entropy, cross-entropy weighted by the inverse
#: training phase fractions (the thin CBD counts as much as the abundant phases), or
#: cross-entropy plus a soft Dice term averaged over the phases.
PHASE_LOSS_CHOICES = ("ce", "weighted_ce", "ce_dice")

Loss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def phase_targets(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, l, H, W) network values -> (N, l, H, W) int64 phase ids (0 pore, 1 CBD, 2 active)."""
    return (torch.round(x[:, 0]) + 1).long()


def balanced_weights(fractions: Mapping[str, float]) -> torch.Tensor:
    """Class weights proportional to 1 / fraction, averaging 1 over the voxels."""
    f = torch.tensor([max(float(fractions[p]), 1e-3) for p in PHASES], dtype=torch.float32)
    w = 1.0 / f
    return w / (w * f).sum()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over phases of the soft Dice coefficient of softmax(logits) and the target."""
    probabilities = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target, 3).movedim(-1, 1).float()
    dims = (0, *range(2, logits.dim()))
    overlap = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2 * overlap + 1.0) / (total + 1.0)).mean()


def make_loss(model, phase_loss: str = "ce", fractions: Mapping[str, float] | None = None) -> Loss:
    """The loss of ``model`` (a ``ConvAutoEncoder3d``).

    Parameters
    ----------
    model : ConvAutoEncoder3d
        ``config.output == "value"``: MSE (the paper); ``"phases"``: ``phase_loss``.
    phase_loss : {"ce", "weighted_ce", "ce_dice"}
        See :data:`PHASE_LOSS_CHOICES`.
    fractions : mapping, optional
        Training phase fractions, needed by ``"weighted_ce"``.
    """
    if model.config.output == "value":

        def mse(output: torch.Tensor, x: torch.Tensor):
            loss = F.mse_loss(output.float(), x)
            return loss, loss.detach()

        return mse

    weight = None
    if phase_loss == "weighted_ce":
        if fractions is None:
            raise ValueError("weighted_ce needs the training phase fractions")
        weight = balanced_weights(fractions).to(next(model.parameters()).device)

    def phases(output: torch.Tensor, x: torch.Tensor):
        logits = output.float()
        target = phase_targets(x)
        loss = F.cross_entropy(logits, target, weight=weight)
        if phase_loss == "ce_dice":
            loss = loss + soft_dice_loss(logits, target)
        with torch.no_grad():
            mse = F.mse_loss(model.values(logits), x)
        return loss, mse

    return phases
