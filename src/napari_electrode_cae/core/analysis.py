"""Physics of windows and reconstructions, and what the latent features correlate with.

* :func:`window_metrics` — :func:`~napari_electrode_cae.core.physics.microstructure_metrics` of
  every chosen window (volume fractions, specific surface areas, triple-phase-boundary density,
  percolating fractions and, unless ``tortuosity=False``, the pore tortuosity factor along Z), for
  the original and, given a model, for its reconstruction snapped to phases.
* :func:`physics_comparison` — paired comparison (:func:`~napari_electrode_cae.core.physics.
  compare_metrics`) of original vs reconstruction over the validation windows: does the
  auto-encoder keep the physics, not just the grey-level mean the paper tests?
* :func:`latent_metric_correlations` — Spearman rank correlation of each latent feature with each
  per-window metric, the window depth and the CAL/UNCAL tag. Spearman rather than Pearson: it
  catches any monotonic relation, and one extreme window (a tortuosity of 8 in a cracked window)
  cannot make or break a correlation.
* :func:`correlation_study` — the honest version: on non-overlapping windows
  (:func:`independent_windows`), each correlation is kept only if it survives a
  Benjamini-Hochberg false-discovery-rate correction over all pairs *and* beats the strongest
  correlation a never-trained (random) encoder reaches with the same metric on the same windows;
  beside it the partial correlation controlling for the phase fractions (does a latent track
  tortuosity, or only porosity?). It says in words when nothing survives or nothing is defined.
* CSV writers for a run folder: ``metrics.csv`` (one row per window) and ``correlations.csv``.

Tortuosity is by far the most expensive metric (about 1-2 s per 24x224x224 window on a CPU, per
volume: twice per window with a model); ``tortuosity=False`` leaves it out.

Only numpy, scipy and torch are used (no Qt).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from .checkpoint import atomic_write_text
from .evaluation import reconstruct_window
from .model import ConvAutoEncoder3d
from .physics import compare_metrics, microstructure_metrics
from .windows import WindowDataset

#: Columns of a :func:`window_metrics` row that describe the window, not its physics.
META_KEYS: tuple[str, ...] = ("window", "split", "stack", "stack_name", "tag", "z", "y", "x")
#: Prefix of the reconstruction's metrics in a :func:`window_metrics` row.
RECON_PREFIX = "recon_"

__all__ = [
    "META_KEYS",
    "RECON_PREFIX",
    "WindowMetricsProgress",
    "CorrelationStudy",
    "comparison_markdown",
    "correlation_study",
    "correlations_table",
    "encode_indices",
    "independent_windows",
    "iter_window_metrics",
    "latent_metric_correlations",
    "metric_columns",
    "metrics_table",
    "physics_comparison",
    "random_encoder_latents",
    "select_windows",
    "split_metric_rows",
    "strongest_correlations",
    "study_table",
    "volume_metrics",
    "window_metrics",
    "write_correlations_csv",
    "write_metrics_csv",
    "write_study_csv",
]


# --------------------------------------------------------------------------- per-window metrics


def volume_metrics(
    labels: np.ndarray,
    voxel_size_um: float,
    *,
    tortuosity: bool = True,
    axis: int = 0,
    device=None,
) -> dict[str, float]:
    """Physical descriptors of one volume, with or without the (costly) tortuosity.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) uint8 phase ids: 0 pore, 1 CBD, 2 active.
    voxel_size_um : float
        Voxel edge length in µm.
    tortuosity : bool
        Include ``tortuosity_pore_<axis>``; ``False`` skips the diffusion solve.
    axis : int
        Direction of the percolation and tortuosity metrics (0 = Z, through the electrode).
    device : None or str
        Tortuosity solver device, see :func:`~napari_electrode_cae.core.physics.tortuosity`.

    Returns
    -------
    dict
        The keys of :func:`~napari_electrode_cae.core.physics.microstructure_metrics`
        (fractions 0..1, surface densities µm⁻¹, TPB density µm⁻², connected fractions 0..1,
        tortuosity factor), in its order; without ``tortuosity_pore_*`` if ``tortuosity=False``.
    """
    return microstructure_metrics(
        labels, voxel_size_um, axis, device=device, with_tortuosity=tortuosity
    )


@dataclass(frozen=True)
class WindowMetricsProgress:
    """One window done by :func:`iter_window_metrics` (``done`` of ``total``, 1-based)."""

    done: int
    total: int
    row: dict


def _window_row(data: WindowDataset, index: int, split: str | None) -> dict:
    s, z, y, x = data.origin(index)
    stack = data.stacks[s]
    row: dict = {"window": int(index)}
    if split is not None:
        row["split"] = split
    row.update({"stack": s, "stack_name": stack.name, "tag": stack.tag, "z": z, "y": y, "x": x})
    return row


def iter_window_metrics(
    data: WindowDataset,
    indices: Sequence[int],
    model: ConvAutoEncoder3d | None = None,
    *,
    tortuosity: bool = True,
    axis: int = 0,
    splits: Mapping[int, str] | None = None,
    device=None,
) -> Iterator[WindowMetricsProgress]:
    """Generator version of :func:`window_metrics`: yields after every window.

    Closing the generator stops after the current window (a GUI worker's Stop).
    """
    indices = [int(i) for i in indices]
    vs = data.voxel_size_um
    for done, index in enumerate(indices, start=1):
        split = None if splits is None else splits.get(index, "")
        row = _window_row(data, index, split)
        original = np.asarray(data.view(index))
        row.update(volume_metrics(original, vs, tortuosity=tortuosity, axis=axis, device=device))
        if model is not None:
            recon_values, snapped = reconstruct_window(model, data[index])
            recon = volume_metrics(snapped, vs, tortuosity=tortuosity, axis=axis, device=device)
            row.update({RECON_PREFIX + k: v for k, v in recon.items()})
            row[RECON_PREFIX + "mse"] = float(
                np.mean((recon_values.astype(np.float64) - (original.astype(np.float64) - 1)) ** 2)
            )
            row[RECON_PREFIX + "voxel_accuracy"] = float(np.mean(snapped == original))
        yield WindowMetricsProgress(done, len(indices), row)


def window_metrics(
    data: WindowDataset,
    indices: Sequence[int],
    model: ConvAutoEncoder3d | None = None,
    *,
    tortuosity: bool = True,
    axis: int = 0,
    splits: Mapping[int, str] | None = None,
    device=None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Physical metrics of windows ``indices`` (and of their reconstructions).

    Parameters
    ----------
    data : WindowDataset
        The windows; its voxel size (µm) scales every metric with a unit.
    indices : sequence of int
        Window indices to analyse.
    model : ConvAutoEncoder3d, optional
        If given, each window is reconstructed (:func:`~napari_electrode_cae.core.evaluation.
        reconstruct`), snapped to phases and analysed too.
    tortuosity : bool
        Include the pore tortuosity factor (about 1-2 s per 24x224x224 volume).
    axis : int
        Direction of percolation and tortuosity (0 = Z).
    splits : mapping, optional
        Window index -> ``"train"`` / ``"val"``; adds a ``split`` column.
    device : None or str
        Tortuosity solver device (``None``: scipy on the CPU).
    progress : callable, optional
        ``progress(done, total)`` after every window.

    Returns
    -------
    list of dict
        One row per window: ``window``, (``split``), ``stack``, ``stack_name``, ``tag``, ``z``,
        ``y``, ``x`` (origin in voxels), the original's metrics under their
        :func:`~napari_electrode_cae.core.physics.microstructure_metrics` names and, with a
        model, the snapped reconstruction's under ``recon_<name>``, plus ``recon_mse`` (network
        values) and ``recon_voxel_accuracy`` (fraction of voxels with the right phase).
        Non-percolating pores give a tortuosity of ``inf``.
    """
    rows = []
    for report in iter_window_metrics(
        data, indices, model, tortuosity=tortuosity, axis=axis, splits=splits, device=device
    ):
        rows.append(report.row)
        if progress is not None:
            progress(report.done, report.total)
    return rows


def metric_columns(rows: Sequence[Mapping], *, reconstruction: bool = False) -> list[str]:
    """Names of the original's (or, with ``reconstruction=True``, the reconstruction's) metrics
    present in every row, in column order; reconstruction names without the ``recon_`` prefix."""
    if not rows:
        return []
    names = []
    for key in rows[0]:
        if key in META_KEYS:
            continue
        if key.startswith(RECON_PREFIX) != reconstruction:
            continue
        name = key[len(RECON_PREFIX) :] if reconstruction else key
        if name in ("mse", "voxel_accuracy") and reconstruction:
            continue
        if all(key in r for r in rows):
            names.append(name)
    return names


def split_metric_rows(rows: Sequence[Mapping]) -> tuple[list[dict], list[dict] | None]:
    """Rows of :func:`window_metrics` -> (original metric dicts, reconstruction metric dicts or
    ``None`` when the rows carry no reconstruction), paired by position."""
    original_names = metric_columns(rows)
    recon_names = metric_columns(rows, reconstruction=True)
    originals = [{k: r[k] for k in original_names} for r in rows]
    if not recon_names:
        return originals, None
    recons = [{k: r[RECON_PREFIX + k] for k in recon_names} for r in rows]
    return originals, recons


# --------------------------------------------------------------------------- comparison


def select_windows(indices: Sequence[int], max_windows: int | None, seed: int = 0) -> np.ndarray:
    """``indices`` (sorted), or a seeded random subset of ``max_windows`` of them."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, got {max_windows}")
    if max_windows is None or len(indices) <= max_windows:
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=max_windows, replace=False))


def physics_comparison(
    data: WindowDataset,
    val_idx: Sequence[int],
    model: ConvAutoEncoder3d,
    *,
    tortuosity: bool = True,
    max_windows: int | None = None,
    seed: int = 0,
    rows: Sequence[Mapping] | None = None,
    axis: int = 0,
    device=None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Original vs reconstruction physics over the validation windows.

    Parameters
    ----------
    data : WindowDataset
        The run's windows.
    val_idx : sequence of int
        Validation windows; all of them are compared unless ``max_windows`` caps them.
    model : ConvAutoEncoder3d
        The trained auto-encoder.
    tortuosity : bool
        Include the pore tortuosity factor.
    max_windows : int, optional
        Compare a seeded random subset of at most this many validation windows.
    seed : int
        Seed of that subset.
    rows : sequence of dict, optional
        Precomputed :func:`window_metrics` rows (with reconstruction) covering the chosen
        windows; they are reused instead of computing the metrics again.

    Returns
    -------
    dict
        ``n_validation`` (validation windows), ``n_windows`` (compared), ``subset`` (True if
        capped), ``max_windows``, ``seed``, ``windows`` (indices compared), ``voxel_size_um``,
        ``tortuosity`` and ``metrics``: per metric the
        :func:`~napari_electrode_cae.core.physics.compare_metrics` statistics (n, means, stds,
        mean difference, paired t-test and Wilcoxon p-values), plus ``voxel_accuracy`` and
        ``mse`` (mean ± std over the compared windows).
    """
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if len(val_idx) == 0:
        raise ValueError("the physics comparison needs at least one validation window")
    chosen = select_windows(val_idx, max_windows, seed)
    by_window = {int(r["window"]): r for r in rows} if rows is not None else {}
    missing = [
        int(i)
        for i in chosen
        if int(i) not in by_window or not any(k.startswith(RECON_PREFIX) for k in by_window[int(i)])
    ]
    if missing:
        computed = window_metrics(
            data, missing, model, tortuosity=tortuosity, axis=axis, device=device, progress=progress
        )
        by_window.update({int(r["window"]): r for r in computed})
    chosen_rows = [by_window[int(i)] for i in chosen]
    if not tortuosity:  # precomputed rows may carry it; leave it out as asked
        chosen_rows = [{k: v for k, v in r.items() if "tortuosity" not in k} for r in chosen_rows]
    originals, recons = split_metric_rows(chosen_rows)
    comparison = compare_metrics(originals, recons)
    for key in ("voxel_accuracy", "mse"):
        values = np.array([float(r[RECON_PREFIX + key]) for r in chosen_rows])
        comparison_stats = {
            "n": int(len(values)),
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
        comparison[key] = comparison_stats
    return {
        "n_validation": int(len(val_idx)),
        "n_windows": int(len(chosen)),
        "subset": bool(len(chosen) < len(val_idx)),
        "max_windows": max_windows,
        "seed": seed,
        "windows": [int(i) for i in chosen],
        "voxel_size_um": data.voxel_size_um,
        "tortuosity": bool(tortuosity),
        "metrics": comparison,
    }


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def comparison_markdown(comparison: Mapping) -> str:
    """A :func:`physics_comparison` result as a Markdown table (one row per metric)."""
    n, n_val = comparison["n_windows"], comparison["n_validation"]
    scope = (
        f"a seeded random subset (seed {comparison['seed']}) of {n} of the {n_val} "
        "validation windows"
        if comparison["subset"]
        else f"all {n} validation windows"
    )
    lines = [
        "# Physics of original vs reconstruction",
        "",
        f"Over {scope}; voxel size {comparison['voxel_size_um']} µm; reconstructions snapped "
        "to phases. p: paired t-test (Wilcoxon signed-rank in brackets); n: windows with finite "
        "values in both (a tortuosity of inf means the pores do not percolate)."
        + ("" if comparison["tortuosity"] else " Tortuosity not computed."),
        "",
        "| Metric | n | Original mean ± std | Reconstruction mean ± std | Difference | p |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in comparison["metrics"].items():
        if name in ("voxel_accuracy", "mse"):
            continue
        lines.append(
            f"| {name} | {s['n']} | {_fmt(s['original_mean'])} ± {_fmt(s['original_std'], 2)} | "
            f"{_fmt(s['reconstruction_mean'])} ± {_fmt(s['reconstruction_std'], 2)} | "
            f"{_fmt(s['mean_difference'], 3)} | {_fmt_p(s['p_value'])} "
            f"({_fmt_p(s['wilcoxon_p_value'])}) |"
        )
    acc, mse = comparison["metrics"]["voxel_accuracy"], comparison["metrics"]["mse"]
    lines += [
        "",
        f"Voxel accuracy {acc['mean']:.1%} ± {acc['std']:.1%}; reconstruction MSE "
        f"{mse['mean']:.4f} ± {mse['std']:.4f} (network values).",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- correlations


def _metric_arrays(
    metrics: Sequence[Mapping] | Mapping[str, np.ndarray], n: int
) -> dict[str, np.ndarray]:
    if isinstance(metrics, Mapping):
        arrays = {str(k): np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
    else:
        rows = list(metrics)
        arrays = {name: np.array([float(r[name]) for r in rows]) for name in metric_columns(rows)}
    for name, values in arrays.items():
        if values.shape != (n,):
            raise ValueError(f"metric {name!r} has shape {values.shape}, expected ({n},)")
    return arrays


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman rho and two-sided p over pairs finite in both; NaN if < 3 pairs or constant."""
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def latent_metric_correlations(
    latents: np.ndarray,
    metrics: Sequence[Mapping] | Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Spearman rank correlation of every latent feature with every per-window metric.

    Parameters
    ----------
    latents : numpy.ndarray
        (n, k) latent features of n windows.
    metrics : list of dict or dict of arrays
        Per-window metrics of the same n windows, in the same order: rows of
        :func:`window_metrics` (the original's metrics are used; window metadata and
        ``recon_*`` columns are ignored) or ``{name: (n,) array}``.
    extra : dict of arrays, optional
        More per-window variables, e.g. ``{"z": depth, "calendered": tag as 0/1}``.

    Returns
    -------
    names : list of str
        The m metric names (those of ``metrics``, then those of ``extra``).
    rho : numpy.ndarray
        (k, m) Spearman correlation coefficients.
    p_values : numpy.ndarray
        (k, m) two-sided p-values.

    Notes
    -----
    Each pair uses only the windows where both values are finite (a non-percolating tortuosity
    is ``inf``). Where fewer than 3 such windows remain, or either column is constant there
    (e.g. every window has the same tag), rho and p are NaN.
    """
    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim != 2:
        raise ValueError(f"latents must be a 2D (windows, features) array, got {latents.shape}")
    n, k = latents.shape
    columns = _metric_arrays(metrics, n)
    if extra:
        for name, values in _metric_arrays(extra, n).items():
            columns[name] = values
    names = list(columns)
    rho = np.full((k, len(names)), np.nan)
    p = np.full((k, len(names)), np.nan)
    for j in range(k):
        for m, name in enumerate(names):
            rho[j, m], p[j, m] = _spearman(latents[:, j], columns[name])
    return names, rho, p


def strongest_correlations(
    names: Sequence[str], matrix: np.ndarray, p_values: np.ndarray, top: int = 5
) -> list[tuple[int, str, float, float]]:
    """The ``top`` (latent j, metric, rho, p) by |rho|, strongest first; NaNs left out.

    ``j`` is 0-based: latent feature ``j`` is column ``z{j+1}`` of latents.csv.
    """
    matrix, p_values = np.asarray(matrix), np.asarray(p_values)
    entries = [
        (j, names[m], float(matrix[j, m]), float(p_values[j, m]))
        for j in range(matrix.shape[0])
        for m in range(matrix.shape[1])
        if np.isfinite(matrix[j, m])
    ]
    entries.sort(key=lambda e: (-abs(e[2]), e[3]))
    return entries[:top]


# --------------------------------------------------------------------------- CSV


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.8g}"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value)


def metrics_table(rows: Sequence[Mapping]) -> str:
    """CSV text of :func:`window_metrics` rows (columns: union of keys, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[k]) if k in row else "" for k in columns])
    return buffer.getvalue()


def write_metrics_csv(path: str | Path, rows: Sequence[Mapping]) -> Path:
    """Write :func:`window_metrics` rows atomically (``RUN_DIR/metrics.csv``); returns the path."""
    path = Path(path)
    atomic_write_text(path, metrics_table(rows))
    return path


def correlations_table(names: Sequence[str], matrix: np.ndarray, p_values: np.ndarray) -> str:
    """CSV text, one row per (latent, metric): latent (z1..zk), metric, spearman_rho, p_value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["latent", "metric", "spearman_rho", "p_value"])
    for j in range(matrix.shape[0]):
        for m, name in enumerate(names):
            writer.writerow(
                [f"z{j + 1}", name, _cell(float(matrix[j, m])), _cell(float(p_values[j, m]))]
            )
    return buffer.getvalue()


def write_correlations_csv(
    path: str | Path, names: Sequence[str], matrix: np.ndarray, p_values: np.ndarray
) -> Path:
    """Write :func:`latent_metric_correlations` atomically (``RUN_DIR/correlations.csv``)."""
    path = Path(path)
    atomic_write_text(path, correlations_table(names, np.asarray(matrix), np.asarray(p_values)))
    return path


# --------------------------------------------------------------------------- honest statistics


def independent_windows(
    data: WindowDataset,
    indices: Sequence[int] | None = None,
    max_windows: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Windows of ``indices`` (default: all) that share no voxel with each other.

    Overlapping windows (stride < length, or overlapping in-plane tiles) are near copies of each
    other: 233 stride-1 windows of a stack hold about 10 independent samples, and p-values over
    them are far too small. This keeps, per stack, the windows on a grid whose Z, Y and X
    origins are at least a window length / crop apart (greedily from the first origin), then an
    optional seeded random subset of ``max_windows``.

    Returns
    -------
    numpy.ndarray
        Sorted int64 window indices.
    """
    grid = np.asarray(data.grid)
    chosen = np.arange(len(grid)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(chosen) == 0:
        return chosen
    length, crop = data.spec.length, data.spec.crop

    def spaced(values: np.ndarray, gap: int) -> set[int]:
        kept, last = set(), None
        for v in np.unique(values):
            if last is None or v >= last + gap:
                kept.add(int(v))
                last = int(v)
        return kept

    keep = np.zeros(len(chosen), dtype=bool)
    for stack in np.unique(grid[chosen, 0]):
        members = np.flatnonzero(grid[chosen, 0] == stack)
        origins = grid[chosen[members]]
        zs, ys, xs = (spaced(origins[:, c], g) for c, g in ((1, length), (2, crop), (3, crop)))
        ok = np.array(
            [int(o[1]) in zs and int(o[2]) in ys and int(o[3]) in xs for o in origins], dtype=bool
        )
        keep[members[ok]] = True
    return select_windows(chosen[keep], max_windows, seed)


@dataclass
class CorrelationStudy:
    """Latent-metric correlations with the checks that tell meaning from chance.

    Attributes
    ----------
    names : list of str
        The m metrics (columns).
    rho, p_values, q_values : numpy.ndarray
        (k, m) Spearman rho, two-sided p and Benjamini-Hochberg adjusted p (FDR) over all
        finite pairs.
    partial_rho : numpy.ndarray
        (k, m) Spearman partial correlation controlling for the pore and CBD fractions (NaN for
        the fractions themselves, or without them).
    baseline_abs_rho : numpy.ndarray
        (m,) strongest |rho| a random (never-trained) encoder reaches with each metric on the
        same windows (NaN without a baseline).
    survives : numpy.ndarray
        (k, m) bool: q < ``alpha`` and |rho| above the random encoder's strongest.
    n_windows : int
        Windows used (non-overlapping, if the caller chose them so).
    alpha : float
        False-discovery rate.
    note : str
        One sentence for the user: what survives, or that nothing does (and why, when every
        correlation is undefined, e.g. constant latents of a collapsed model).
    """

    names: list[str]
    rho: np.ndarray
    p_values: np.ndarray
    q_values: np.ndarray
    partial_rho: np.ndarray
    baseline_abs_rho: np.ndarray
    survives: np.ndarray
    n_windows: int
    alpha: float
    note: str

    def surviving(self) -> list[tuple[int, str, float, float, float]]:
        """(latent j, metric, rho, q, partial rho) of the surviving pairs, strongest first."""
        out = [
            (
                j,
                self.names[m],
                float(self.rho[j, m]),
                float(self.q_values[j, m]),
                float(self.partial_rho[j, m]),
            )
            for j, m in zip(*np.nonzero(self.survives))
        ]
        out.sort(key=lambda e: -abs(e[2]))
        return out


def _ranks(values: np.ndarray) -> np.ndarray:
    return stats.rankdata(values)


def _partial_spearman(a: np.ndarray, b: np.ndarray, controls: np.ndarray) -> float:
    """Spearman partial correlation of a and b given the columns of ``controls`` (ranks
    regressed out by least squares, then Pearson on the residuals)."""
    finite = np.isfinite(a) & np.isfinite(b) & np.all(np.isfinite(controls), axis=1)
    if np.count_nonzero(finite) < controls.shape[1] + 4:
        return math.nan
    ra, rb = _ranks(a[finite]), _ranks(b[finite])
    design = np.column_stack([np.ones(len(ra))] + [_ranks(c) for c in controls[finite].T])
    res_a = ra - design @ np.linalg.lstsq(design, ra, rcond=None)[0]
    res_b = rb - design @ np.linalg.lstsq(design, rb, rcond=None)[0]
    scale = np.linalg.norm(res_a) * np.linalg.norm(res_b)
    if scale < 1e-12 * len(ra):
        return math.nan
    return float(np.dot(res_a, res_b) / scale)


#: Phase fractions the partial correlation controls for (active = 1 - the other two).
PARTIAL_CONTROLS: tuple[str, ...] = ("pore_fraction", "cbd_fraction")


def correlation_study(
    latents: np.ndarray,
    metrics: Sequence[Mapping] | Mapping[str, np.ndarray],
    *,
    random_latents: np.ndarray | None = None,
    alpha: float = 0.05,
    controls: Sequence[str] = PARTIAL_CONTROLS,
) -> CorrelationStudy:
    """Which latent-metric correlations survive honest checks.

    Parameters
    ----------
    latents : numpy.ndarray
        (n, k) latent features of n windows; pass non-overlapping windows
        (:func:`independent_windows`), or the p-values are meaningless.
    metrics : list of dict or dict of arrays
        Per-window metrics of the same windows (as for :func:`latent_metric_correlations`).
    random_latents : numpy.ndarray, optional
        (n, k') features of the same windows from a never-trained encoder of the same shape.
        A correlation survives only if it is stronger than every one this baseline reaches with
        that metric. Without it, only the FDR correction applies.
    alpha : float
        False-discovery rate of the Benjamini-Hochberg correction
        (``scipy.stats.false_discovery_control``).
    controls : sequence of str
        Metrics held fixed by the partial correlation.
    """
    names, rho, p = latent_metric_correlations(latents, metrics)
    n, k = np.asarray(latents).shape
    q = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    baseline = np.full(len(names), np.nan)
    if random_latents is not None:
        _, rho0, _ = latent_metric_correlations(random_latents, metrics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            baseline = (
                np.nanmax(np.where(np.isfinite(rho0), np.abs(rho0), np.nan), axis=0)
                if np.isfinite(rho0).any()
                else baseline
            )
    columns = _metric_arrays(metrics, n)
    control_names = [c for c in controls if c in columns]
    partial = np.full_like(rho, np.nan)
    if control_names:
        ctrl = np.column_stack([columns[c] for c in control_names])
        lat = np.asarray(latents, dtype=np.float64)
        for m, name in enumerate(names):
            if name in control_names or name == "active_fraction":
                continue
            for j in range(k):
                if np.isfinite(rho[j, m]):
                    partial[j, m] = _partial_spearman(lat[:, j], columns[name], ctrl)
    beats = np.isfinite(rho) & (
        np.isnan(baseline)[None, :]
        | (np.abs(np.nan_to_num(rho)) > np.nan_to_num(baseline)[None, :])
    )
    survives = np.isfinite(q) & (q < alpha) & beats
    if not np.isfinite(rho).any():
        note = (
            f"no correlation is defined over {n} windows: the latent features (or the "
            "metrics) are constant — a collapsed model? Nothing to report."
        )
    elif not survives.any():
        best = np.nanmax(np.abs(rho))
        note = (
            f"nothing survives over {n} non-overlapping windows: the strongest |rho| is "
            f"{best:.2f}"
            + (
                f", a random encoder reaches {np.nanmax(baseline):.2f}"
                if np.isfinite(baseline).any()
                else ""
            )
            + f" (FDR {alpha:g})."
        )
    else:
        note = (
            f"{int(survives.sum())} of {int(np.isfinite(rho).sum())} latent-metric pairs "
            f"survive over {n} non-overlapping windows (FDR {alpha:g}"
            + (", stronger than a random encoder's best" if random_latents is not None else "")
            + ")."
        )
    return CorrelationStudy(names, rho, p, q, partial, baseline, survives, int(n), alpha, note)


def study_table(study: CorrelationStudy) -> str:
    """CSV text of a :func:`correlation_study`: one row per (latent, metric) with rho, p, q,
    partial rho, the random encoder's best |rho| for that metric and whether it survives."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "latent",
            "metric",
            "spearman_rho",
            "p_value",
            "q_value_bh",
            "partial_rho_given_fractions",
            "random_encoder_max_abs_rho",
            "survives",
            "n_windows",
        ]
    )
    for j in range(study.rho.shape[0]):
        for m, name in enumerate(study.names):
            writer.writerow(
                [
                    f"z{j + 1}",
                    name,
                    _cell(float(study.rho[j, m])),
                    _cell(float(study.p_values[j, m])),
                    _cell(float(study.q_values[j, m])),
                    _cell(float(study.partial_rho[j, m])),
                    _cell(float(study.baseline_abs_rho[m])),
                    _cell(bool(study.survives[j, m])),
                    study.n_windows,
                ]
            )
    return buffer.getvalue()


def write_study_csv(path: str | Path, study: CorrelationStudy) -> Path:
    """Write :func:`study_table` atomically (``RUN_DIR/correlations.csv``)."""
    path = Path(path)
    atomic_write_text(path, study_table(study))
    return path


def random_encoder_latents(
    model: ConvAutoEncoder3d, data: WindowDataset, indices: Sequence[int], seed: int = 0
) -> np.ndarray:
    """Features of windows ``indices`` from a never-trained model of the same configuration.

    Its weights come from a private ``torch.Generator`` seeded with ``seed`` (uniform within
    ±1/sqrt(fan-in), torch's default bound), so torch's global random state is neither read nor
    changed: safe beside a training in another thread.
    """
    baseline = never_trained_model(model.config, seed)
    return encode_indices(baseline, data, indices)


def never_trained_model(config, seed: int = 0) -> ConvAutoEncoder3d:
    """A randomly initialised model of ``config`` drawn from its own generator (see
    :func:`random_encoder_latents`); normalisation layers start as identities."""
    import math

    import torch

    from .model import build_model

    with torch.device("meta"):  # no global random numbers are drawn on the meta device
        model = build_model(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if isinstance(module, (torch.nn.BatchNorm3d, torch.nn.GroupNorm)):
                module.reset_parameters()  # ones, zeros and fresh running statistics
            elif isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                bound = 1.0 / math.sqrt(weight.shape[1] * math.prod(weight.shape[2:]))
                weight.uniform_(-bound, bound, generator=generator)
                if isinstance(bias, torch.Tensor):
                    bias.uniform_(-bound, bound, generator=generator)
    return model.eval()


def encode_indices(
    model: ConvAutoEncoder3d, data: WindowDataset, indices: Sequence[int], batch_size: int = 16
) -> np.ndarray:
    """(len(indices), latent_dim) float64 latent features of the chosen windows."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    indices = [int(i) for i in indices]
    out = np.empty((len(indices), model.config.latent_dim), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            out[start : start + len(chunk)] = (
                model.encode(data.batch(chunk).to(device)).float().cpu().numpy()
            )
    return out
