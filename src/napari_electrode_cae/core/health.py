"""Is a model learning? Collapse to the mean and divergence, detected and explained.

An auto-encoder that has not learnt outputs (nearly) the same value everywhere — the data's
mean, which reaches the data's variance as MSE — and snapped to phases that is a cube of one
phase. On a realistic electrode the paper's model with a too large learning rate sits there for
good. Two numbers tell it apart from a model that learns:

* ``nmse``: validation MSE divided by the variance of the validation windows' network values
  (1 for the mean predictor, 0 for a perfect reconstruction);
* ``spread``: standard deviation of the reconstruction's network values divided by the
  original's (about 0 for a constant output; a faithful model approaches 1).

A non-finite loss is divergence, and so is a reconstruction error more than
:data:`DIVERGED_NMSE` times the data's variance (far worse than predicting the mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Below this spread ratio and above this NMSE the model is called collapsed to the mean.
COLLAPSE_SPREAD = 0.15
COLLAPSE_NMSE = 0.9
#: Above this NMSE a finite model is called diverged.
DIVERGED_NMSE = 10.0

HEALTH_STATES = ("ok", "collapsed", "diverged")


@dataclass(frozen=True)
class Health:
    """The verdict on a model: ``state`` in :data:`HEALTH_STATES`, a message and advice."""

    state: str
    message: str = ""
    advice: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def is_collapsed(nmse: float, spread: float) -> bool:
    """True for a reconstruction that sits at the mean (see the module docstring)."""
    return (
        math.isfinite(nmse)
        and math.isfinite(spread)
        and spread < COLLAPSE_SPREAD
        and nmse > COLLAPSE_NMSE
    )


def diagnose(nmse: float, spread: float, *, finite: bool = True, lr: float | None = None) -> Health:
    """The :class:`Health` of a model from its validation ``nmse`` and ``spread``.

    ``finite`` False (a non-finite training or validation loss) means diverged; a NaN ``nmse``
    with finite losses means not measured (an older history, or validation windows without
    variance) and is not judged. ``lr`` makes the advice concrete.
    """
    lr_text = f" (now {lr:g})" if lr is not None else ""
    if not finite or nmse == math.inf or (math.isfinite(nmse) and nmse > DIVERGED_NMSE):
        what = (
            "the loss became infinite or NaN"
            if not finite or nmse == math.inf
            else f"its error is {nmse:.3g} times the data's variance"
        )
        return Health(
            "diverged",
            f"training diverged: {what}",
            f"lower the learning rate{lr_text}, e.g. tenfold, or use the quick preset "
            "(batch norm, warm-up, gradient clipping)",
        )
    if is_collapsed(nmse, spread):
        return Health(
            "collapsed",
            f"the model collapsed to the mean: its reconstruction varies {spread:.0%} as much "
            f"as the data (NMSE {nmse:.2f}), so every window snaps to about one phase",
            f"lower the learning rate{lr_text}, e.g. to 5e-4, or use the quick preset (batch "
            "norm, warm-up, gradient clipping); a model early in training may still leave "
            "the mean",
        )
    if math.isnan(nmse):  # not measured: a history from before, or windows of one phase
        return Health("ok", "learning (NMSE not measured)")
    return Health("ok", f"learning: NMSE {nmse:.2f}, spread {spread:.0%} of the data's")
