"""What the latent features predict: per-metric regressors from latent vector to physics.

For a trained run, :func:`fit_prediction` measures the physics metrics
(:mod:`~napari_electrode_cae.core.metrics`) of non-overlapping windows
(:func:`~napari_electrode_cae.core.analysis.independent_windows`), encodes them, and fits per
metric a Gaussian-process regressor (scikit-learn: constant x anisotropic RBF + white noise, on
standardised latents, ``normalize_y``) from the latent vector to the metric. It reports, per
metric:

* R² cross-validated over blocked folds: contiguous blocks of Z positions per stack, and no
  training window shares a slice with a test window of its fold;
* the error (RMSE, MAE) in the metric's own units, beside the spread of the metric (the error
  of always predicting the mean);
* the same fit on the features of a never-trained (random) encoder of the same shape — a metric
  the trained latents do not predict better than that says so (``predicts`` is False).

The fitted regressors (their training data and kernel hyperparameters, not pickles) are saved
as ``RUN_DIR/prediction.json`` and rebuilt by :func:`load_predictor` without refitting the
hyperparameters. :class:`Predictor` answers ``predict(z)`` with mean and standard deviation for
the Latents tab and is the surrogate of :mod:`~napari_electrode_cae.core.design`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as metric_registry
from .analysis import encode_indices, independent_windows, random_encoder_latents
from .checkpoint import atomic_write_text
from .errors import ElectrodeCAEError, RunFolderError
from .model import ConvAutoEncoder3d
from .windows import WindowDataset

__all__ = [
    "MetricFit",
    "PREDICTION_FILE",
    "PredictionError",
    "PredictionProgress",
    "PredictionReport",
    "Predictor",
    "blocked_folds",
    "cross_validate",
    "fit_prediction",
    "fit_predictor",
    "iter_fit_prediction",
    "load_predictor",
    "load_prediction_report",
    "r2_table",
]

PREDICTION_FILE = "prediction.json"
PREDICTION_FORMAT = "napari-electrode-cae prediction"
#: Default number of non-overlapping windows measured and fitted.
DEFAULT_MAX_WINDOWS = 400
DEFAULT_FOLDS = 5
#: A metric counts as predicted when its cross-validated R² is at least this much above the
#: random encoder's and above this floor.
R2_MARGIN = 0.05
R2_FLOOR = 0.1


class PredictionError(ElectrodeCAEError, ValueError):
    """Too few windows, folds or finite values to fit or cross-validate."""


# --------------------------------------------------------------------------- folds


def blocked_folds(
    data: WindowDataset, indices: Sequence[int], n_folds: int = DEFAULT_FOLDS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Blocked cross-validation folds over windows ``indices``.

    Per stack the distinct Z origins are cut into ``n_folds`` contiguous blocks; fold f tests
    the windows of block f of every stack and trains on every window that shares no slice with
    them (windows overlapping a test window in Z and in the plane are dropped from training).

    Returns
    -------
    list of (train positions, test positions)
        Positions into ``indices`` (not window indices), int64, sorted.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if n_folds < 2:
        raise PredictionError(f"cross-validation needs at least 2 folds, got {n_folds}")
    grid = np.asarray(data.grid)[indices]
    fold_of = np.full(len(indices), -1)
    for stack in np.unique(grid[:, 0]):
        members = np.flatnonzero(grid[:, 0] == stack)
        starts = np.unique(grid[members, 1])
        if len(starts) < n_folds:
            raise PredictionError(
                f"stack {int(stack)} has {len(starts)} window positions along Z among the "
                f"chosen windows: too few for {n_folds} blocked folds (use fewer folds, a "
                "shorter window or a deeper stack)"
            )
        blocks = np.array_split(starts, n_folds)
        for f, block in enumerate(blocks):
            fold_of[members[np.isin(grid[members, 1], block)]] = f
    length, crop = data.spec.length, data.spec.crop
    folds = []
    for f in range(n_folds):
        test = np.flatnonzero(fold_of == f)
        others = np.flatnonzero(fold_of != f)
        clash = np.zeros(len(others), dtype=bool)
        for t in test:
            s, z, y, x = grid[t]
            o = grid[others]
            clash |= (
                (o[:, 0] == s)
                & (np.abs(o[:, 1] - z) < length)
                & (np.abs(o[:, 2] - y) < crop)
                & (np.abs(o[:, 3] - x) < crop)
            )
        folds.append((others[~clash], test))
    return folds


# --------------------------------------------------------------------------- regressor


def _gaussian_process(n_features: int, kernel=None):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    if kernel is None:
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(
            np.full(n_features, 3.0), (1e-2, 1e3)
        ) + WhiteKernel(0.1, (1e-6, 1e1))
        return GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
    return GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None)


class _Standard:
    """Column standardisation fitted on training latents (constant columns keep scale 1)."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def _fit_one(x: np.ndarray, y: np.ndarray, kernel=None):
    scale = _Standard(x)
    gp = _gaussian_process(x.shape[1], kernel)
    with warnings.catch_warnings():
        # hyperparameters at a bound (e.g. an irrelevant latent's length scale) are expected
        warnings.simplefilter("ignore")
        gp.fit(scale(x), y)
    return scale, gp


def cross_validate(
    x: np.ndarray, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """Out-of-fold predictions of a fresh regressor per fold; pooled R², RMSE, MAE.

    Windows with a non-finite ``y`` (a non-percolating tortuosity) are left out of both sides.
    ``r2_mean_baseline`` is the R² of predicting each fold's training mean (about 0 or below):
    the trivial baseline every fit must beat.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    truth, guess, trivial = [], [], []
    for train, test in folds:
        train, test = train[ok[train]], test[ok[test]]
        if len(test) == 0:
            continue
        if len(train) < 3:
            raise PredictionError(
                f"a fold has only {len(train)} training windows with finite "
                "values; use more windows or fewer folds"
            )
        if np.ptp(y[train]) == 0:
            pred = np.full(len(test), y[train][0])
        else:
            scale, gp = _fit_one(x[train], y[train])
            pred = gp.predict(scale(x[test]))
        truth.append(y[test])
        guess.append(pred)
        trivial.append(np.full(len(test), y[train].mean()))
    if not truth:
        return {
            "n": 0,
            "r2": math.nan,
            "rmse": math.nan,
            "mae": math.nan,
            "r2_mean_baseline": math.nan,
        }
    t, g, b = np.concatenate(truth), np.concatenate(guess), np.concatenate(trivial)
    sst = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum((t - g) ** 2)) / sst if sst > 0 else math.nan
    r2_b = 1.0 - float(np.sum((t - b) ** 2)) / sst if sst > 0 else math.nan
    return {
        "n": int(len(t)),
        "r2": r2,
        "rmse": float(np.sqrt(np.mean((t - g) ** 2))),
        "mae": float(np.mean(np.abs(t - g))),
        "r2_mean_baseline": r2_b,
    }


@dataclass
class Predictor:
    """Per-metric Gaussian processes from latent vector to metric value.

    Attributes
    ----------
    names : list of str
        Metrics it predicts (registry names).
    latents : numpy.ndarray
        (n, k) latent features of the windows it was fitted on.
    values : dict
        Metric -> (n,) measured values of those windows (``inf``/NaN where undefined).
    """

    names: list[str]
    latents: np.ndarray
    values: dict[str, np.ndarray]
    kernels: dict[str, dict] = field(default_factory=dict)
    _models: dict = field(default_factory=dict, repr=False)

    @property
    def latent_dim(self) -> int:
        return int(self.latents.shape[1])

    def latent_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature (min, max) of the encoded windows: the range the model has seen."""
        return self.latents.min(axis=0), self.latents.max(axis=0)

    def value_range(self, name: str) -> tuple[float, float]:
        """(min, max) of the finite measured values of ``name`` over the fitted windows."""
        v = self.values[name]
        v = v[np.isfinite(v)]
        return (float(v.min()), float(v.max())) if len(v) else (math.nan, math.nan)

    def scale(self, name: str) -> float:
        """Standard deviation of the measured values of ``name`` (1 if constant)."""
        v = self.values[name]
        v = v[np.isfinite(v)]
        s = float(v.std()) if len(v) > 1 else 0.0
        return s if s > 1e-12 else 1.0

    def _model(self, name: str):
        if name not in self._models:
            if name not in self.values:
                raise PredictionError(
                    f"no regressor for {name!r}; this run predicts {', '.join(self.names)}"
                )
            y = self.values[name]
            ok = np.isfinite(y)
            kernel = None
            if name in self.kernels:
                from sklearn.gaussian_process.kernels import Kernel  # noqa: F401

                kernel = _kernel_from_dict(self.kernels[name], self.latent_dim)
            if np.count_nonzero(ok) < 3 or np.ptp(y[ok]) == 0:
                self._models[name] = ("constant", float(y[ok].mean()) if ok.any() else math.nan)
            else:
                scale, gp = _fit_one(self.latents[ok], y[ok], kernel)
                self._models[name] = (scale, gp)
                self.kernels[name] = _kernel_to_dict(gp.kernel_)
        return self._models[name]

    def fit_all(self) -> Predictor:
        """Fit (or rebuild) every metric's regressor now; returns self."""
        for name in self.names:
            self._model(name)
        return self

    def predict(
        self, z: np.ndarray, names: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Mean and standard deviation of each metric at latent vectors ``z``.

        Parameters
        ----------
        z : numpy.ndarray
            (k,) one latent vector or (n, k) several.
        names : sequence of str, optional
            Metrics to predict (default all).

        Returns
        -------
        mean, std : dict
            Metric -> value (float for one vector, (n,) array for several), in its units.
        """
        z = np.asarray(z, dtype=np.float64)
        single = z.ndim == 1
        z2 = np.atleast_2d(z)
        if z2.shape[1] != self.latent_dim:
            raise PredictionError(
                f"latent vector has {z2.shape[1]} features, the predictor expects {self.latent_dim}"
            )
        mean, std = {}, {}
        for name in names or self.names:
            model = self._model(name)
            if model[0] == "constant":
                mu, sd = np.full(len(z2), model[1]), np.zeros(len(z2))
            else:
                scale, gp = model
                mu, sd = gp.predict(scale(z2), return_std=True)
            mean[name] = float(mu[0]) if single else mu
            std[name] = float(sd[0]) if single else sd
        return mean, std


def _kernel_to_dict(kernel) -> dict:
    """Hyperparameters of a fitted ConstantKernel * RBF + WhiteKernel as plain numbers."""
    params = kernel.get_params()
    return {
        "constant": float(params["k1__k1__constant_value"]),
        "length_scale": np.atleast_1d(params["k1__k2__length_scale"]).astype(float).tolist(),
        "noise": float(params["k2__noise_level"]),
    }


def _kernel_from_dict(record: Mapping, n_features: int):
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    scales = np.asarray(record["length_scale"], dtype=float)
    if scales.size not in (1, n_features):
        raise RunFolderError(
            f"prediction.json: {scales.size} length scales for {n_features} latent features"
        )
    return ConstantKernel(float(record["constant"]), "fixed") * RBF(scales, "fixed") + WhiteKernel(
        float(record["noise"]), "fixed"
    )


def fit_predictor(latents: np.ndarray, values: Mapping[str, np.ndarray]) -> Predictor:
    """Fit one regressor per metric on all given windows (hyperparameters by marginal
    likelihood); see :class:`Predictor`."""
    latents = np.asarray(latents, dtype=np.float64)
    vals = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    return Predictor(list(vals), latents, vals).fit_all()


# --------------------------------------------------------------------------- report


@dataclass
class MetricFit:
    """Cross-validated quality of one metric's regressor (units: the metric's)."""

    name: str
    label: str
    unit: str
    n: int
    r2: float
    rmse: float
    mae: float
    spread: float
    r2_random: float
    rmse_random: float
    r2_mean_baseline: float
    predicts: bool


@dataclass
class PredictionReport:
    """What :func:`fit_prediction` found; ``fits`` in registry order."""

    fits: list[MetricFit]
    n_windows: int
    n_folds: int
    windows: list[int]
    seconds: float
    predictor: Predictor | None = None

    def to_dict(self) -> dict:
        return {
            "n_windows": self.n_windows,
            "n_folds": self.n_folds,
            "seconds": self.seconds,
            "metrics": {f.name: asdict(f) for f in self.fits},
        }


@dataclass(frozen=True)
class PredictionProgress:
    """A step of :func:`iter_fit_prediction`: ``stage`` ("metrics", "fit"), done of total."""

    stage: str
    done: int
    total: int


def iter_fit_prediction(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    *,
    indices: Sequence[int] | None = None,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    n_folds: int = DEFAULT_FOLDS,
    tortuosity: bool = True,
    seed: int = 0,
    names: Sequence[str] | None = None,
    device=None,
) -> Iterator[PredictionProgress]:
    """Generator of :func:`fit_prediction`: yields progress, returns the PredictionReport."""
    start = time.perf_counter()
    windows = independent_windows(data, indices, max_windows, seed)
    if len(windows) < 2 * n_folds:
        raise PredictionError(
            f"only {len(windows)} non-overlapping windows: prediction needs at least "
            f"{2 * n_folds} (a deeper or wider stack, a shorter window or a smaller crop)"
        )
    chosen = (
        [metric_registry.get(n) for n in names]
        if names is not None
        else list(metric_registry.metrics_for_axis(0, costly=tortuosity))
    )
    values = {m.name: np.empty(len(windows)) for m in chosen}
    vs = data.voxel_size_um
    for i, w in enumerate(windows):
        labels = np.asarray(data.view(int(w)))
        for m in chosen:
            values[m.name][i] = m(labels, vs, None, device)
        yield PredictionProgress("metrics", i + 1, len(windows))
    latents = encode_indices(model, data, windows)
    random = random_encoder_latents(model, data, windows, seed)
    folds = blocked_folds(data, windows, n_folds)
    fits = []
    for j, m in enumerate(chosen):
        y = values[m.name]
        ours = cross_validate(latents, y, folds)
        base = cross_validate(random, y, folds)
        finite = y[np.isfinite(y)]
        spread = float(finite.std()) if len(finite) > 1 else math.nan
        predicts = bool(
            np.isfinite(ours["r2"])
            and ours["r2"] >= R2_FLOOR
            and (not np.isfinite(base["r2"]) or ours["r2"] >= base["r2"] + R2_MARGIN)
        )
        fits.append(
            MetricFit(
                m.name,
                m.label,
                m.unit,
                ours["n"],
                ours["r2"],
                ours["rmse"],
                ours["mae"],
                spread,
                base["r2"],
                base["rmse"],
                ours["r2_mean_baseline"],
                predicts,
            )
        )
        yield PredictionProgress("fit", j + 1, len(chosen))
    predictor = fit_predictor(latents, values)
    return PredictionReport(
        fits,
        len(windows),
        n_folds,
        [int(w) for w in windows],
        time.perf_counter() - start,
        predictor,
    )


def fit_prediction(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    *,
    progress: Callable[[PredictionProgress], None] | None = None,
    **kwargs,
) -> PredictionReport:
    """Measure, cross-validate and fit per-metric regressors (see the module docstring).

    Keyword arguments are those of :func:`iter_fit_prediction`: ``indices`` (default all
    windows), ``max_windows`` (400), ``n_folds`` (5), ``tortuosity`` (True), ``seed``,
    ``names`` (metrics; default the registry's along Z), ``device`` (tortuosity solver).
    """
    gen = iter_fit_prediction(model, data, **kwargs)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)


def _finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def save_prediction(run_dir: str | Path, report: PredictionReport) -> Path:
    """Write ``RUN_DIR/prediction.json`` atomically: the R² table and the fitted regressors."""
    predictor = report.predictor
    if predictor is None:
        raise PredictionError("the report carries no fitted predictor")
    record = {
        "format": PREDICTION_FORMAT,
        "version": 1,
        **_json_safe(report.to_dict()),
        "windows": report.windows,
        "latents": predictor.latents.tolist(),
        "values": {
            k: [
                _finite_or_none(x)
                if np.isfinite(x)
                else ("inf" if x > 0 else None)
                if not np.isnan(x)
                else None
                for x in v
            ]
            for k, v in predictor.values.items()
        },
        "kernels": predictor.kernels,
    }
    path = Path(run_dir) / PREDICTION_FILE
    atomic_write_text(path, json.dumps(record))
    return path


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / PREDICTION_FILE
    if not path.exists():
        raise RunFolderError(
            f"{Path(run_dir)} has no {PREDICTION_FILE}: run `electrode-cae predict {run_dir}` first"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from exc
    if record.get("format") != PREDICTION_FORMAT:
        raise RunFolderError(f"{path} is not a napari-electrode-cae prediction file")
    return record


def load_predictor(run_dir: str | Path) -> Predictor:
    """Rebuild the saved regressors of ``RUN_DIR/prediction.json`` (no refitting of
    hyperparameters; a few ms per metric)."""
    record = _read_record(run_dir)
    try:
        latents = np.asarray(record["latents"], dtype=np.float64)
        values = {
            k: np.array(
                [math.inf if x == "inf" else (math.nan if x is None else float(x)) for x in v]
            )
            for k, v in record["values"].items()
        }
        predictor = Predictor(list(values), latents, values, dict(record.get("kernels", {})))
        return predictor.fit_all()
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"invalid {PREDICTION_FILE} in {run_dir}: {exc}") from exc


def load_prediction_report(run_dir: str | Path) -> dict:
    """The saved R² table: ``{"n_windows", "n_folds", "seconds", "metrics": {name: fit}}``."""
    record = _read_record(run_dir)
    return {k: record[k] for k in ("n_windows", "n_folds", "seconds", "metrics")}


def r2_table(report: PredictionReport | Mapping) -> str:
    """A plain-text table: metric, R² (trained) vs R² (random encoder), error in units."""
    fits = (
        [asdict(f) for f in report.fits]
        if isinstance(report, PredictionReport)
        else list(report["metrics"].values())
    )
    n = report.n_windows if isinstance(report, PredictionReport) else report["n_windows"]
    k = report.n_folds if isinstance(report, PredictionReport) else report["n_folds"]

    def num(v, fmt):
        return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)

    lines = [
        f"Latent -> metric regressors (Gaussian process), R² over {k} blocked folds of "
        f"{n} non-overlapping windows; random = a never-trained encoder's features.",
        f"{'metric':<30} {'R²':>7} {'random':>7} {'RMSE':>10} {'spread':>10}  unit    predicted?",
    ]
    for f in fits:
        lines.append(
            f"{f['name']:<30} {num(f['r2'], '.3f'):>7} {num(f['r2_random'], '.3f'):>7} "
            f"{num(f['rmse'], '.4g'):>10} {num(f['spread'], '.4g'):>10}  {f['unit'] or '-':<6}"
            f"  {'yes' if f['predicts'] else 'no'}"
        )
    if not any(f["predicts"] for f in fits):
        lines.append("No metric is predicted better than by a random encoder.")
    return "\n".join(lines) + "\n"
