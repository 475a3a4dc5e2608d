"""Design by target: latent vectors whose decoded microstructures meet stated physics targets.

The user states targets and bounds on any registry metric (:mod:`~napari_electrode_cae.core.
metrics`) — ``pore_fraction=0.40:0.01`` (0.40 ± 0.01), ``tortuosity_pore_z<=1.6``,
``cbd_fraction>=0.12`` — and optionally an objective (maximise or minimise one metric).

1. **Surrogate search.** ``scipy.optimize.minimize`` (L-BFGS-B) minimises, over the latent
   space, the squared target violations of the :class:`~napari_electrode_cae.core.prediction.
   Predictor`'s mean (in units of each metric's spread over the windows), plus a small penalty
   on its uncertainty and the objective. Latents are bounded by the encoded windows' range
   (per feature, min..max): candidates stay near what the model was trained on. Starts are the
   encoded windows whose *measured* metrics come closest to the targets.
2. **Measurement.** Every candidate is decoded by the run's model, snapped to phases by its
   phase rule, and its metrics are *measured* on that volume; only measured values decide
   whether a target is met.
3. **Correction.** For a candidate that misses, the surrogate's error at that point (measured −
   predicted) shifts the targets it aims for, and the search restarts from there (a few rounds):
   the surrogate guides, the measurements correct it. A candidate that still misses is refined
   by Powell's derivative-free method on its *measured* violations (a bounded number of
   decodes), which stops as soon as every target is met.

A target outside what the model can reach is answered honestly: ``reached`` is False, the
nearest measured values are reported, and :attr:`DesignResult.binding` says which constraint
binds (the metric's range over the encoded windows, latent features at the edge of the trained
range).

The slow metric (pore tortuosity, ``costly`` in the registry) is measured only when a target or
the objective uses it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize

from . import metrics as metric_registry
from .errors import ElectrodeCAEError
from .model import ConvAutoEncoder3d
from .prediction import Predictor

__all__ = [
    "Candidate",
    "DesignError",
    "DesignProgress",
    "DesignResult",
    "Target",
    "decode_latent",
    "design",
    "iter_design",
    "parse_target",
    "summary_lines",
    "write_candidate",
    "write_design",
]

#: Weight of target violations against the objective and uncertainty terms (both in units of
#: a metric's spread over the windows).
TARGET_WEIGHT = 100.0
UNCERTAINTY_WEIGHT = 0.5
#: Half-width of the box (fraction of each feature's encoded range) searched around each
#: starting window: candidates stay near distinct encoded windows instead of all converging
#: to the surrogate's one optimum.
TRUST_REGION = 0.25
#: Correction rounds (measure, shift the surrogate's aim, search again) per candidate.
DEFAULT_ROUNDS = 4
#: Decodes and measurements of the last, derivative-free refinement of a candidate that still
#: misses its targets (Powell's method on the measured violations).
DEFAULT_REFINE_EVALUATIONS = 80


class DesignError(ElectrodeCAEError, ValueError):
    """Unusable targets or objective (unknown metric, impossible bound, bad syntax)."""


@dataclass(frozen=True)
class Target:
    """A target on one metric.

    ``kind`` is ``"equal"`` (``value ± tolerance``), ``"at_most"`` (``<= value``) or
    ``"at_least"`` (``>= value``).
    """

    metric: str
    kind: str
    value: float
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        m = metric_registry.get(self.metric)
        if self.kind not in ("equal", "at_most", "at_least"):
            raise DesignError(f"target kind must be equal, at_most or at_least, got {self.kind}")
        if not math.isfinite(self.value) or not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise DesignError(
                f"target on {self.metric}: value and tolerance must be finite, tolerance >= 0"
            )
        if self.kind == "equal" and self.tolerance == 0:
            raise DesignError(
                f"target {self.metric}={self.value:g} needs a tolerance, e.g. "
                f"{self.metric}={self.value:g}:0.01"
            )
        lo, hi = (
            (self.value - self.tolerance, self.value + self.tolerance)
            if self.kind == "equal"
            else (self.value, self.value)
        )
        if (self.kind != "at_least" and lo < m.lower and hi < m.lower) or (
            self.kind != "at_most" and hi > m.upper and lo > m.upper
        ):
            raise DesignError(
                f"target {self.describe()} is outside the possible values of "
                f"{self.metric} ({m.lower:g}..{m.upper:g})"
            )

    def describe(self) -> str:
        if self.kind == "equal":
            return f"{self.metric} = {self.value:g} ± {self.tolerance:g}"
        return f"{self.metric} {'<=' if self.kind == 'at_most' else '>='} {self.value:g}"

    def violation(self, value: float) -> float:
        """How far ``value`` is outside the target (0 inside; ``inf`` for a NaN/inf value
        that cannot meet it)."""
        if math.isnan(value):
            return math.inf
        if self.kind == "equal":
            return max(0.0, abs(value - self.value) - self.tolerance)
        if self.kind == "at_most":
            return max(0.0, value - self.value)
        return max(0.0, self.value - value)

    def met(self, value: float) -> bool:
        return self.violation(value) == 0.0

    def aim(self) -> float:
        """The value the surrogate aims for: the centre, or inside a one-sided bound."""
        return self.value

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "value": self.value,
            "tolerance": self.tolerance,
            "text": self.describe(),
        }


_TARGET = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|=)\s*([^:\s]+)\s*(?::\s*(\S+))?\s*$")


def parse_target(text: str) -> Target:
    """``"pore_fraction=0.40:0.01"``, ``"tortuosity_pore_z<=1.6"``, ``"cbd_fraction>=0.12"``.

    Raises
    ------
    DesignError
        For bad syntax, an unknown metric, or a value outside the metric's possible range.
    """
    match = _TARGET.match(str(text))
    if not match:
        raise DesignError(
            f"cannot read target {text!r}; write NAME=VALUE:TOLERANCE, "
            "NAME<=VALUE or NAME>=VALUE, e.g. pore_fraction=0.40:0.01"
        )
    name, op, value, tol = match.groups()
    try:
        value_f = float(value)
        tol_f = float(tol) if tol is not None else 0.0
    except ValueError:
        raise DesignError(f"target {text!r}: {value!r} or {tol!r} is not a number") from None
    if op != "=" and tol is not None:
        raise DesignError(f"target {text!r}: a tolerance (:{tol}) only goes with '='")
    try:
        metric_registry.get(name)
    except metric_registry.MetricError as exc:
        raise DesignError(str(exc)) from None
    kind = {"=": "equal", "<=": "at_most", ">=": "at_least"}[op]
    return Target(name, kind, value_f, tol_f)


@dataclass
class Candidate:
    """One designed microstructure.

    ``predicted``/``predicted_std``/``measured`` are dicts keyed by metric name; ``labels`` is
    the decoded, phase-snapped (l, crop, crop) uint8 volume.
    """

    latent: np.ndarray
    predicted: dict[str, float]
    predicted_std: dict[str, float]
    measured: dict[str, float]
    meets_targets: bool
    violation: float
    objective: float | None
    labels: np.ndarray = field(repr=False)
    rank: int = 0

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "latent": [float(v) for v in self.latent],
            "predicted": dict(self.predicted),
            "predicted_std": dict(self.predicted_std),
            "measured": dict(self.measured),
            "meets_targets": bool(self.meets_targets),
            "violation": self.violation,
            "objective": self.objective,
        }


@dataclass
class DesignResult:
    """Ranked candidates (targets met first, then by measured violation, then objective)."""

    candidates: list[Candidate]
    targets: list[Target]
    objective: tuple[str, str] | None
    reached: bool
    nearest: dict[str, float]
    binding: list[str]
    seconds: float
    latent_bounds: tuple[np.ndarray, np.ndarray]

    def to_dict(self) -> dict:
        return {
            "reached": bool(self.reached),
            "targets": [t.to_dict() for t in self.targets],
            "objective": (
                None
                if self.objective is None
                else {"sense": self.objective[0], "metric": self.objective[1]}
            ),
            "candidates": [c.to_dict() for c in self.candidates],
            "nearest": dict(self.nearest),
            "binding": list(self.binding),
            "seconds": self.seconds,
            "latent_bounds": {
                "low": self.latent_bounds[0].tolist(),
                "high": self.latent_bounds[1].tolist(),
            },
        }


@dataclass(frozen=True)
class DesignProgress:
    """``done`` of ``total`` steps; ``message`` says which."""

    done: int
    total: int
    message: str


@torch.inference_mode()
def decode_latent(model: ConvAutoEncoder3d, latent: np.ndarray) -> np.ndarray:
    """(k,) latent vector -> (l, crop, crop) uint8 phase ids by the model's phase rule."""
    model.eval()
    device = next(model.parameters()).device
    z = torch.as_tensor(np.asarray(latent, dtype=np.float32)[None], device=device)
    return model.phase_labels(model.decode(z))[0]


def _check_objective(maximize: str | None, minimize: str | None) -> tuple[str, str] | None:
    if maximize and minimize:
        raise DesignError("give either an objective to maximise or one to minimise, not both")
    if not (maximize or minimize):
        return None
    name = maximize or minimize
    try:
        metric_registry.get(name)
    except metric_registry.MetricError as exc:
        raise DesignError(str(exc)) from None
    return ("maximize" if maximize else "minimize", name)


class _Search:
    """The pieces of one design: surrogate and measured losses, searches, measurement."""

    def __init__(
        self,
        model,
        predictor: Predictor,
        targets: list[Target],
        objective,
        voxel_size_um: float,
        refine_evaluations: int,
        device,
    ) -> None:
        self.model, self.predictor, self.targets = model, predictor, targets
        self.objective = objective
        self.voxel_size_um, self.refine_evaluations, self.device = (
            voxel_size_um,
            refine_evaluations,
            device,
        )
        self.used = list(
            dict.fromkeys([t.metric for t in targets] + ([objective[1]] if objective else []))
        )
        missing = [n for n in self.used if n not in predictor.names]
        if missing:
            raise DesignError(
                f"no regressor for {', '.join(missing)} in this run's "
                f"prediction; it predicts {', '.join(predictor.names)} (refit "
                "with that metric: electrode-cae predict RUN, with tortuosity)"
            )
        # measure every cheap metric the predictor knows, and costly ones only when used
        self.measured_names = [
            n for n in predictor.names if not metric_registry.get(n).costly or n in self.used
        ]
        self.scales = {n: predictor.scale(n) for n in self.used}
        self.low, self.high = predictor.latent_bounds()

    def surrogate_loss(self, z: np.ndarray, shift: Mapping[str, float]) -> float:
        mean, std = self.predictor.predict(z, self.used)
        loss = 0.0
        for t in self.targets:
            scale = self.scales[t.metric]
            aim = mean[t.metric] + shift.get(t.metric, 0.0)
            v = (aim - t.value) / scale if t.kind == "equal" else t.violation(aim) / scale
            loss += TARGET_WEIGHT * v * v + UNCERTAINTY_WEIGHT * std[t.metric] / scale
        if self.objective is not None:
            sense, name = self.objective
            sign = -1.0 if sense == "maximize" else 1.0
            loss += (sign * mean[name] + UNCERTAINTY_WEIGHT * std[name]) / self.scales[name]
        return float(loss)

    def start_points(self, n_starts: int) -> list[np.ndarray]:
        """Encoded windows closest to the targets by their *measured* metrics."""
        p = self.predictor
        scores = np.zeros(len(p.latents))
        for t in self.targets:
            v = np.array([t.violation(x) for x in p.values[t.metric]])
            scores += np.where(np.isfinite(v), v / self.scales[t.metric], 1e6)
        if self.objective is not None:
            sense, name = self.objective
            vals = np.nan_to_num(p.values[name], nan=0.0, posinf=0.0, neginf=0.0)
            scores += (-1.0 if sense == "maximize" else 1.0) * vals / self.scales[name] * 1e-3
        points: list[np.ndarray] = []
        for i in np.argsort(scores, kind="stable"):
            if all(np.linalg.norm(p.latents[i] - s) > 1e-6 for s in points):
                points.append(p.latents[i])
            if len(points) == n_starts:
                break
        return points

    def search(
        self, z0: np.ndarray, shift: Mapping[str, float], trust: float | None = None
    ) -> np.ndarray:
        """L-BFGS-B on the surrogate from ``z0``, in the encoded range (or a box around z0)."""
        low, high = self.low, self.high
        if trust is None:
            box = list(zip(low, high))
        else:
            reach = trust * (high - low)
            box = list(zip(np.maximum(low, z0 - reach), np.minimum(high, z0 + reach)))
        result = optimize.minimize(
            self.surrogate_loss,
            z0,
            args=(shift,),
            method="L-BFGS-B",
            bounds=box,
            options={"maxiter": 60},
        )
        return np.clip(result.x, low, high)

    def evaluate(self, z: np.ndarray) -> Candidate:
        """Decode, snap and measure ``z``."""
        labels = decode_latent(self.model, z)
        measured = metric_registry.compute(
            labels, self.voxel_size_um, self.measured_names, device=self.device
        )
        mean, std = self.predictor.predict(z)
        violation = sum(
            t.violation(measured[t.metric]) / self.scales[t.metric] for t in self.targets
        )
        obj = None if self.objective is None else float(measured[self.objective[1]])
        return Candidate(
            np.asarray(z, dtype=np.float64),
            mean,
            std,
            measured,
            all(t.met(measured[t.metric]) for t in self.targets),
            violation,
            obj,
            labels,
        )

    def key(self, c: Candidate) -> tuple:
        return (c.violation, _neg(c.objective, self.objective))

    def correct(self, best: Candidate) -> Candidate:
        """One round: the surrogate's error at ``best`` shifts its aim; search, measure."""
        shift = {
            t.metric: best.measured[t.metric] - best.predicted[t.metric]
            for t in self.targets
            if math.isfinite(best.measured[t.metric] - best.predicted[t.metric])
        }
        trial = self.evaluate(self.search(best.latent, shift))
        return trial if self.key(trial) < self.key(best) else best

    def refine(self, start: Candidate) -> Candidate:
        """Derivative-free (Powell) search on the *measured* violations near ``start``."""
        best = [start]

        def measured_violation(z: np.ndarray) -> float:
            trial = self.evaluate(np.clip(z, self.low, self.high))
            if self.key(trial) < self.key(best[0]):
                best[0] = trial
            if trial.meets_targets:
                raise _TargetsMet
            return sum(
                (t.violation(trial.measured[t.metric]) / self.scales[t.metric]) ** 2
                if math.isfinite(trial.measured[t.metric])
                else 1e6
                for t in self.targets
            )

        try:
            optimize.minimize(
                measured_violation,
                start.latent,
                method="Powell",
                bounds=list(zip(self.low, self.high)),
                options={"maxfev": self.refine_evaluations, "xtol": 1e-4},
            )
        except _TargetsMet:
            pass
        return best[0]


def _distinct(
    optima: list[tuple[float, np.ndarray]], spread: np.ndarray, n: int
) -> list[np.ndarray]:
    """The best ``n`` optima that differ by more than 2 % of the range in some feature."""
    chosen: list[np.ndarray] = []
    for _, z in sorted(optima, key=lambda e: e[0]):
        if all(np.max(np.abs(z - c) / spread) > 0.02 for c in chosen):
            chosen.append(z)
        if len(chosen) == n:
            break
    return chosen


def iter_design(
    model: ConvAutoEncoder3d,
    predictor: Predictor,
    targets: Sequence[Target | str],
    *,
    maximize: str | None = None,
    minimize: str | None = None,
    candidates: int = 5,
    voxel_size_um: float,
    rounds: int = DEFAULT_ROUNDS,
    starts: int | None = None,
    refine_evaluations: int = DEFAULT_REFINE_EVALUATIONS,
    device=None,
) -> Iterator[DesignProgress]:
    """Generator of :func:`design`: yields progress, returns a :class:`DesignResult`.

    Closing the generator stops after the current step (a GUI worker's Stop).
    """
    started = time.perf_counter()
    targets = [parse_target(t) if isinstance(t, str) else t for t in targets]
    objective = _check_objective(maximize, minimize)
    if not targets and objective is None:
        raise DesignError("state at least one target or an objective")
    if candidates < 1:
        raise DesignError(f"candidates must be at least 1, got {candidates}")
    run = _Search(model, predictor, targets, objective, voxel_size_um, refine_evaluations, device)
    start_points = run.start_points(starts or max(3 * candidates, 6))
    total = len(start_points) + candidates * rounds
    done = 0
    optima: list[tuple[float, np.ndarray]] = []
    for z0 in start_points:
        # a trust region around each start keeps candidates near distinct encoded windows
        z = run.search(z0, {}, TRUST_REGION)
        optima.append((run.surrogate_loss(z, {}), z))
        done += 1
        yield DesignProgress(done, total, "searching the surrogate")
    results: list[Candidate] = []
    for z in _distinct(optima, np.maximum(run.high - run.low, 1e-9), candidates):
        best = run.evaluate(z)
        for r in range(rounds):
            done += 1
            yield DesignProgress(done, total, f"measuring candidate {len(results) + 1}")
            if best.meets_targets or not targets:
                continue
            if r < rounds - 1:
                best = run.correct(best)
            elif refine_evaluations > 0:
                best = run.refine(best)
        results.append(best)
    results.sort(key=lambda c: (not c.meets_targets, *run.key(c)))
    for rank, c in enumerate(results, start=1):
        c.rank = rank
    reached = any(c.meets_targets for c in results)
    nearest = {t.metric: results[0].measured[t.metric] for t in targets} if results else {}
    binding = (
        []
        if reached
        else _binding(results[0] if results else None, targets, predictor, run.low, run.high)
    )
    return DesignResult(
        results,
        targets,
        objective,
        reached,
        nearest,
        binding,
        time.perf_counter() - started,
        (run.low, run.high),
    )


_PHASE_FRACTIONS = ("pore_fraction", "cbd_fraction", "active_fraction")


class _TargetsMet(Exception):
    """Ends the measured refinement as soon as a candidate meets every target."""


def _neg(value: float | None, objective) -> float:
    if value is None or objective is None or not math.isfinite(value):
        return 0.0
    return -value if objective[0] == "maximize" else value


def _binding(
    best: Candidate | None,
    targets: Sequence[Target],
    predictor: Predictor,
    low: np.ndarray,
    high: np.ndarray,
) -> list[str]:
    """Why the best candidate misses: the missed targets, the metric's range over the encoded
    windows, and the latent features at the edge of the trained range."""
    if best is None:
        return ["no candidate could be decoded"]
    lines = []
    spread = np.maximum(high - low, 1e-12)
    near_low = best.latent - low < 0.01 * spread
    near_high = high - best.latent < 0.01 * spread
    at_edge = [
        f"z{j + 1} at its {'lower' if near_low[j] else 'upper'} bound"
        for j in range(len(low))
        if near_low[j] or near_high[j]
    ]
    for t in targets:
        value = best.measured[t.metric]
        if t.met(value):
            continue
        lo, hi = predictor.value_range(t.metric)
        outside = (t.kind in ("equal", "at_least") and t.value - t.tolerance > hi) or (
            t.kind in ("equal", "at_most") and t.value + t.tolerance < lo
        )
        text = (
            f"{t.describe()}: nearest reached {metric_registry.format_value(t.metric, value)}"
            f"; the encoded windows span {lo:.4g}..{hi:.4g}"
        )
        if outside:
            text += " — the target is outside the range the model was trained on"
        else:
            text += " — the target conflicts with the other targets or the decoder's reach"
        lines.append(text)
    need = sum(
        max(0.0, t.value - t.tolerance) if t.kind == "equal" else t.value
        for t in targets
        if t.metric in _PHASE_FRACTIONS and t.kind != "at_most"
    )
    if need > 1.0:
        lines.append(
            f"the phase-fraction targets need at least {need:.3g} of the volume: "
            "pore, CBD and active fractions add up to 1"
        )
    if at_edge:
        lines.append("latent range of the encoded windows binds: " + ", ".join(at_edge))
    return lines


def design(
    model: ConvAutoEncoder3d,
    predictor: Predictor,
    targets: Sequence[Target | str],
    *,
    progress: Callable[[DesignProgress], None] | None = None,
    **kwargs,
) -> DesignResult:
    """Search, decode and measure candidates that meet ``targets`` (see the module docstring).

    Parameters
    ----------
    model : ConvAutoEncoder3d
        The run's trained model (decodes candidates; its phase rule snaps them).
    predictor : Predictor
        The run's regressors (:func:`~napari_electrode_cae.core.prediction.load_predictor`).
    targets : sequence of Target or str
        E.g. ``["pore_fraction=0.40:0.01", "tortuosity_pore_z<=1.6"]``.
    progress : callable, optional
        Called with each :class:`DesignProgress`.
    **kwargs
        ``maximize``/``minimize`` (a metric name), ``candidates`` (5), ``voxel_size_um``
        (required), ``rounds`` (correction rounds, 4), ``starts``, ``device`` (tortuosity).
    """
    gen = iter_design(model, predictor, targets, **kwargs)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)


# --------------------------------------------------------------------------- files


def write_candidate(candidate: Candidate, tif_path, voxel_size_um: float) -> tuple:
    """Write one candidate as a phase TIFF (read back exactly by
    :func:`~napari_electrode_cae.core.io.read_stack`) and its latent vector as a one-row CSV
    next to it (``<stem>_latent.csv``, columns z1..zk). Returns both paths."""
    from pathlib import Path

    from .checkpoint import atomic_write_text
    from .io import write_stack
    from .stack import ElectrodeStack

    tif_path = Path(tif_path)
    stack = ElectrodeStack(
        np.ascontiguousarray(candidate.labels, dtype=np.uint8),
        voxel_size_um=voxel_size_um,
        name=tif_path.stem,
        source=f"design:{tif_path.stem}",
    )
    write_stack(tif_path, stack)
    latent_path = tif_path.with_name(f"{tif_path.stem}_latent.csv")
    header = ",".join(f"z{j + 1}" for j in range(len(candidate.latent)))
    row = ",".join(f"{v:.9g}" for v in candidate.latent)
    atomic_write_text(latent_path, f"{header}\n{row}\n")
    return tif_path, latent_path


def candidates_table(result: DesignResult) -> str:
    """CSV text: one row per candidate (rank, meets_targets, violation, objective, latent,
    then measured_<metric>, predicted_<metric>, predicted_std_<metric>)."""
    import csv
    import io

    if not result.candidates:
        return "rank,meets_targets\n"
    first = result.candidates[0]
    names = list(first.measured)
    pred_names = list(first.predicted)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "rank",
            "meets_targets",
            "violation",
            "objective",
            *[f"z{j + 1}" for j in range(len(first.latent))],
            *[f"measured_{n}" for n in names],
            *[f"predicted_{n}" for n in pred_names],
            *[f"predicted_std_{n}" for n in pred_names],
        ]
    )
    for c in result.candidates:
        writer.writerow(
            [
                c.rank,
                c.meets_targets,
                f"{c.violation:.6g}",
                "" if c.objective is None else f"{c.objective:.6g}",
                *[f"{v:.6g}" for v in c.latent],
                *[f"{c.measured[n]:.6g}" for n in names],
                *[f"{c.predicted[n]:.6g}" for n in pred_names],
                *[f"{c.predicted_std[n]:.6g}" for n in pred_names],
            ]
        )
    return buffer.getvalue()


def write_design(result: DesignResult, out_dir, voxel_size_um: float) -> list:
    """Write every candidate (``candidate_01.tif`` + ``candidate_01_latent.csv`` …), the table
    ``candidates.csv`` and ``design.json`` into ``out_dir``; returns the written paths."""
    import json
    from pathlib import Path

    from .checkpoint import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in result.candidates:
        paths += write_candidate(c, out_dir / f"candidate_{c.rank:02d}.tif", voxel_size_um)
    atomic_write_text(out_dir / "candidates.csv", candidates_table(result))
    atomic_write_text(out_dir / "design.json", json.dumps(_json_safe(result.to_dict()), indent=1))
    return [*paths, out_dir / "candidates.csv", out_dir / "design.json"]


def _json_safe(value):
    """NaN and inf become null, so that the output is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_lines(result: DesignResult) -> list[str]:
    """Human-readable lines: one per candidate (measured vs targets, pass/fail), then the verdict
    and, when not reached, the nearest values and the binding constraints."""
    lines = []
    for c in result.candidates:
        parts = []
        for t in result.targets:
            v = c.measured[t.metric]
            parts.append(
                f"{t.metric} {metric_registry.format_value(t.metric, v)} "
                f"({'ok' if t.met(v) else 'miss'})"
            )
        if result.objective is not None and c.objective is not None:
            parts.append(
                f"{result.objective[0]} {result.objective[1]} "
                f"{metric_registry.format_value(result.objective[1], c.objective)}"
            )
        lines.append(f"#{c.rank} {'PASS' if c.meets_targets else 'fail'}: " + "; ".join(parts))
    if result.reached:
        lines.append(
            f"targets reached by {sum(c.meets_targets for c in result.candidates)} of "
            f"{len(result.candidates)} candidates (measured) in {result.seconds:.1f} s"
        )
    else:
        lines.append(
            "targets NOT reached (measured); nearest: "
            + ", ".join(
                f"{k} {metric_registry.format_value(k, v)}" for k, v in result.nearest.items()
            )
        )
        lines += [f"  binding: {b}" for b in result.binding]
    return lines
