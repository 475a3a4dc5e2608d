"""From the network's output to phases, and how well the phases match.

A model's raw output is either the paper's one channel of network values (pore -1, CBD 0,
active +1) or three phase logits (``ModelConfig.output == "phases"``). A :class:`PhaseRule`
turns it into phase ids (0 pore, 1 CBD, 2 active):

* ``"nearest"`` — the paper's rule: the nearest network value, i.e. thresholds -0.5 and +0.5.
  A smooth output never jumps from below -0.5 to above +0.5 between neighbouring voxels, so it
  paints CBD on every blurred pore/active boundary and pore never touches active (no triple
  phase boundaries).
* ``"fitted"`` — fitted on the training windows' reconstructions so that the reconstructed
  phase fractions equal the training data's: for one channel, thresholds at quantiles of the
  output; for three phase logits, an offset per phase added before the argmax (a thin, rarely
  most likely phase such as CBD would otherwise all but vanish).
* ``"argmax"`` — the most likely phase of a three-channel output.

:class:`PhaseScores` accumulates a confusion matrix over many windows and reports voxel
accuracy, per-phase IoU and phase fractions of original and reconstruction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelConfigError
from .stack import PHASES

PHASE_RULES = ("nearest", "fitted", "argmax")
#: The paper's thresholds between pore/CBD and CBD/active network values.
NEAREST_THRESHOLDS = (-0.5, 0.5)


@dataclass(frozen=True)
class PhaseRule:
    """How raw model output becomes phase ids.

    Parameters
    ----------
    name : {"nearest", "fitted", "argmax"}
        See the module docstring.
    thresholds : (float, float)
        Network values separating pore | CBD | active for one-channel outputs; ``(-0.5, 0.5)``
        for ``"nearest"``.
    offsets : (float, float, float)
        Added to the pore, CBD and active logits of a three-channel output before the argmax
        (zero for ``"argmax"``).
    channels : {1, 3}
        The output the rule was made for: one channel of values (thresholds) or three phase
        logits (argmax, with offsets if fitted).
    """

    name: str = "nearest"
    thresholds: tuple[float, float] = NEAREST_THRESHOLDS
    offsets: tuple[float, float, float] = (0.0, 0.0, 0.0)
    channels: int = 1

    def __post_init__(self) -> None:
        if self.name not in PHASE_RULES:
            raise ModelConfigError(f"phase rule must be one of {PHASE_RULES}, got {self.name!r}")
        low, high = (float(t) for t in self.thresholds)
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise ModelConfigError(
                f"phase thresholds must be finite and ordered, got {self.thresholds!r}"
            )
        object.__setattr__(self, "thresholds", (low, high))
        offsets = tuple(float(o) for o in self.offsets)
        if len(offsets) != 3 or not all(np.isfinite(offsets)):
            raise ModelConfigError(f"phase offsets must be 3 finite numbers, got {self.offsets!r}")
        object.__setattr__(self, "offsets", offsets)
        if self.name == "argmax":
            object.__setattr__(self, "channels", 3)
        if self.channels not in (1, 3):
            raise ModelConfigError(f"a phase rule is for 1 or 3 channels, got {self.channels!r}")

    def labels(self, output: np.ndarray) -> np.ndarray:
        """Phase ids (uint8) of a raw output ``(C, ...)``: C = 1 values or C = 3 logits.

        Raises
        ------
        ModelConfigError
            If the rule does not fit the number of channels.
        """
        output = np.asarray(output)
        channels = output.shape[0]
        if channels == 3 and self.name in ("argmax", "fitted"):
            offsets = np.asarray(self.offsets, dtype=output.dtype).reshape(
                3, *[1] * (output.ndim - 1)
            )
            return np.argmax(output + offsets, axis=0).astype(np.uint8)
        if channels == 1 and self.name in ("nearest", "fitted"):
            return threshold_values(output[0], self.thresholds)
        raise ModelConfigError(
            f"the {self.name} rule does not apply to {channels} output "
            "channel(s): one channel takes nearest or fitted thresholds, "
            "3 phase channels take argmax"
        )

    def describe(self) -> str:
        """A short label for reports, e.g. ``"fitted thresholds -0.31 / 0.27"``."""
        if self.name == "argmax":
            return "argmax of the phase channels"
        low, high = self.thresholds
        if self.name == "nearest":
            return "nearest value (the paper's rule)"
        if self.channels == 3:
            return (
                "argmax with offsets fitted to the training fractions ("
                + " / ".join(f"{o:+.2f}" for o in self.offsets)
                + ")"
            )
        return f"thresholds fitted to the training fractions ({low:+.2f} / {high:+.2f})"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "thresholds": list(self.thresholds),
            "offsets": list(self.offsets),
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, record: Mapping | None) -> PhaseRule:
        """The rule saved by :meth:`to_dict`; the paper's nearest rule for ``None``."""
        if not record:
            return cls()
        offsets = tuple(record.get("offsets", (0.0, 0.0, 0.0)))
        channels = record.get("channels", 3 if any(offsets) else 1)
        return cls(
            str(record["name"]),
            tuple(record.get("thresholds", NEAREST_THRESHOLDS)),
            offsets,
            int(channels),
        )


def threshold_values(values: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """Phase ids (uint8) of network values cut at ``thresholds`` (pore | CBD | active)."""
    values = np.asarray(values)
    out = np.ones(values.shape, dtype=np.uint8)
    out[values < thresholds[0]] = 0
    out[values > thresholds[1]] = 2
    return out


def fit_thresholds(values: np.ndarray, fractions: Mapping[str, float]) -> PhaseRule:
    """The ``"fitted"`` rule: thresholds at the quantiles of ``values`` that give ``fractions``.

    Parameters
    ----------
    values : numpy.ndarray
        Reconstructed network values of training windows, any shape.
    fractions : mapping
        Target phase fractions ``{"pore": .., "cbd": .., "active": ..}`` (the training data's).
    """
    flat = np.asarray(values, dtype=np.float32).ravel()
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ModelConfigError("thresholds need finite reconstructed values")
    pore = float(fractions["pore"])
    below_active = pore + float(fractions["cbd"])
    low, high = np.quantile(flat, [min(max(pore, 0.0), 1.0), min(max(below_active, 0.0), 1.0)])
    return PhaseRule("fitted", (float(low), float(high)))


def fit_offsets(
    logits: np.ndarray,
    fractions: Mapping[str, float],
    *,
    max_iterations: int = 300,
    tolerance: float = 0.002,
    max_voxels: int = 2_000_000,
) -> PhaseRule:
    """The ``"fitted"`` rule of three-phase outputs: per-phase logit offsets such that the
    argmax of ``logits + offsets`` gives ``fractions``.

    Parameters
    ----------
    logits : numpy.ndarray
        (3, ...) phase logits of training windows (phase axis first).
    fractions : mapping
        Target phase fractions (the training data's).
    max_iterations, tolerance : int, float
        Updates ``offset += step * log(target / obtained)`` (the step halves whenever the
        largest fraction error grows) until every fraction is within ``tolerance``; the best
        offsets seen are kept.
    max_voxels : int
        Fit on an evenly spaced subset of at most this many voxels.
    """
    flat = np.asarray(logits, dtype=np.float32).reshape(3, -1)
    if flat.shape[1] > max_voxels:
        flat = flat[:, :: -(-flat.shape[1] // max_voxels)]
    if flat.shape[1] == 0 or not np.all(np.isfinite(flat)):
        raise ModelConfigError("offsets need finite phase logits")
    target = np.array([max(float(fractions[p]), 1e-4) for p in PHASES])
    offsets = np.zeros(3)
    best, best_error, last_error, step = offsets.copy(), np.inf, np.inf, 1.0
    for _ in range(max_iterations):
        counts = np.bincount(
            np.argmax(flat + offsets[:, None].astype(np.float32), axis=0), minlength=3
        )
        obtained = counts / flat.shape[1]
        error = float(np.abs(obtained - target).max())
        if error < best_error:
            best, best_error = offsets.copy(), error
        if error < tolerance:
            break
        if error > last_error:
            step *= 0.5
        last_error = error
        offsets = offsets + step * np.log(target / np.maximum(obtained, 1e-4))
        offsets -= offsets.mean()
    return PhaseRule("fitted", offsets=tuple(float(o) for o in best), channels=3)


@dataclass
class PhaseScores:
    """Confusion matrix of original (rows) vs reconstructed (columns) phase ids.

    Add windows with :meth:`add`; read :attr:`voxel_accuracy`, :meth:`iou` and the fractions.
    """

    confusion: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), dtype=np.int64))

    def add(self, original: np.ndarray, reconstruction: np.ndarray) -> None:
        """Count one pair of equally shaped phase-id arrays."""
        pairs = (
            np.asarray(original, np.int64).ravel() * 3
            + np.asarray(reconstruction, np.int64).ravel()
        )
        self.confusion += np.bincount(pairs, minlength=9)[:9].reshape(3, 3)

    @property
    def voxels(self) -> int:
        return int(self.confusion.sum())

    @property
    def voxel_accuracy(self) -> float:
        """Share of voxels whose reconstructed phase is the original's."""
        return float(np.trace(self.confusion)) / max(self.voxels, 1)

    def fractions(self, which: str) -> dict[str, float]:
        """Phase fractions of ``"original"`` or ``"reconstruction"``."""
        counts = self.confusion.sum(axis=1 if which == "original" else 0)
        return {phase: float(counts[i]) / max(self.voxels, 1) for i, phase in enumerate(PHASES)}

    def iou(self) -> dict[str, float]:
        """Intersection over union of each phase (NaN where a phase is in neither)."""
        out = {}
        for i, phase in enumerate(PHASES):
            union = self.confusion[i, :].sum() + self.confusion[:, i].sum() - self.confusion[i, i]
            out[phase] = float(self.confusion[i, i]) / union if union else float("nan")
        return out

    def to_dict(self) -> dict:
        return {
            "voxel_accuracy": self.voxel_accuracy,
            "phase_fractions": {
                "original": self.fractions("original"),
                "reconstruction": self.fractions("reconstruction"),
            },
            "phase_iou": self.iou(),
            "confusion": self.confusion.tolist(),
        }
