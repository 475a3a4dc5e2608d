"""The paper's experimental protocol: the three case studies (Table 8) and the Table 2 grid.

Case studies (section 3 of Energies 2022, 15, 4489), each run with the paper's random 85/15 split
*and* with a blocked split side by side, so that the leakage of overlapping stride-1 windows
across a random split (the same slices on both sides) shows as a gap between the two:

==== ============= ============ ====================================================
case type          stride       paper's optimum (Tables 3-5)
==== ============= ============ ====================================================
1    CAL           1            l=24, 3 layers, 128 hidden, 10 latent, batch 2, lr 1e-4
2    CAL           l            l=4,  3 layers, 128 hidden, 10 latent, batch 8, lr 1e-4
3a   CAL & UNCAL   1            l=24, 3 layers, 1000 hidden, 10 latent, batch 2, lr 1e-4
3b   CAL & UNCAL   l            l=4,  3 layers, 1000 hidden, 10 latent, batch 2, lr 1e-4
==== ============= ============ ====================================================

All at crop 224 and 3,500 epochs. The ``quick`` variant keeps each case's model and batch but
uses a 32-voxel crop, l=8 (stride 1) or l=4 (stride l), lr 1e-3 and 3 epochs, so that all eight
runs finish in well under a minute on a CPU with the bundled 48x96x96 sample stacks.

:func:`run_grid` trains every combination of a hyper-parameter grid (Table 2 by default), each in
its own run folder named by a hash of its settings, ranks them by best validation MSE and skips
finished configurations when called again.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text
from .errors import ElectrodeCAEError
from .evaluation import evaluate, format_p
from .model import ModelConfig, build_model, validate_model_config
from .presets import get_preset
from .runs import read_history, save_run
from .stack import ElectrodeStack
from .training import EpochReport, TrainConfig, seed_everything, train
from .windows import WindowDataset, WindowSpec, split

__all__ = [
    "CASE_STUDIES",
    "GRID_KEYS",
    "TABLE2_GRID",
    "CaseSettings",
    "CaseStudy",
    "GridProgress",
    "StudyError",
    "StudyProgress",
    "config_id",
    "default_grid",
    "expand_grid",
    "format_grid_table",
    "format_study_table",
    "iter_study",
    "run_grid",
    "run_study",
]

SPLITS = ("random", "blocked")


class StudyError(ElectrodeCAEError):
    """A study or grid cannot run as asked (no stacks, unknown grid key, foreign out folder)."""


# --------------------------------------------------------------------------- case studies


@dataclass(frozen=True)
class CaseSettings:
    """Window, model and training settings of one case study."""

    window: int
    crop: int
    layers: int
    hidden: int
    latent: int
    batch: int
    lr: float
    epochs: int


@dataclass(frozen=True)
class CaseStudy:
    """One of the paper's case studies.

    ``stride_is_length``: the stride equals the window length (no slice in two windows);
    otherwise the stride is 1.
    """

    case: str
    description: str
    uncalendered: bool
    stride_is_length: bool
    paper: CaseSettings
    quick: CaseSettings

    @property
    def type(self) -> str:
        """``"CAL"`` or ``"CAL & UNCAL"`` (Table 8's Type column)."""
        return "CAL & UNCAL" if self.uncalendered else "CAL"

    def settings(self, quick: bool) -> CaseSettings:
        return self.quick if quick else self.paper

    def stride(self, settings: CaseSettings) -> int:
        return settings.window if self.stride_is_length else 1


CASE_STUDIES: tuple[CaseStudy, ...] = (
    CaseStudy(
        "1",
        "calendered, stride 1 (section 3.1, Table 3)",
        False,
        False,
        CaseSettings(24, 224, 3, 128, 10, 2, 1e-4, 3500),
        CaseSettings(8, 32, 3, 128, 10, 2, 1e-3, 3),
    ),
    CaseStudy(
        "2",
        "calendered, stride = window length (section 3.2, Table 4)",
        False,
        True,
        CaseSettings(4, 224, 3, 128, 10, 8, 1e-4, 3500),
        CaseSettings(4, 32, 3, 128, 10, 8, 1e-3, 3),
    ),
    CaseStudy(
        "3a",
        "calendered + uncalendered, stride 1 (section 3.3, Table 5)",
        True,
        False,
        CaseSettings(24, 224, 3, 1000, 10, 2, 1e-4, 3500),
        CaseSettings(8, 32, 3, 1000, 10, 2, 1e-3, 3),
    ),
    CaseStudy(
        "3b",
        "calendered + uncalendered, stride = window length (section 3.3, Table 5)",
        True,
        True,
        CaseSettings(4, 224, 3, 1000, 10, 2, 1e-4, 3500),
        CaseSettings(4, 32, 3, 1000, 10, 2, 1e-3, 3),
    ),
)


@dataclass(frozen=True)
class StudyProgress:
    """Progress of :func:`iter_study`: run ``run`` (1-based) of ``runs``, at ``epoch``.

    ``epoch`` is 0 when a run starts, and ``row`` is set (the run's finished row) when it ends.
    """

    run: int
    runs: int
    name: str
    epoch: int
    epochs: int
    message: str
    row: dict | None = None


def _study_row(case: CaseStudy, split_mode: str, settings: CaseSettings, stride: int) -> dict:
    return {
        "case": case.case,
        "type": case.type,
        "stride": stride,
        "stride_label": "l" if case.stride_is_length else "1",
        "window": settings.window,
        "crop": settings.crop,
        "split": split_mode,
        "layers": settings.layers,
        "hidden": settings.hidden,
        "latent": settings.latent,
        "batch": settings.batch,
        "lr": settings.lr,
        "epochs": settings.epochs,
        "status": "",
        "note": "",
        "n_train": None,
        "n_val": None,
        "train_mse_mean": None,
        "train_mse_std": None,
        "val_mse_mean": None,
        "val_mse_std": None,
        "mse_p_value": None,
        "original_mean": None,
        "original_std": None,
        "reconstruction_mean": None,
        "reconstruction_std": None,
        "p_value": None,
        "voxel_accuracy": None,
        "best_epoch": None,
        "best_val_mse": None,
        "seconds": None,
        "run_dir": "",
    }


def iter_study(
    cal_stacks: Sequence[ElectrodeStack],
    uncal_stacks: Sequence[ElectrodeStack] = (),
    *,
    quick: bool,
    out_dir: str | Path,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    crop: int | None = None,
    cases: Sequence[str] | None = None,
) -> Iterator[StudyProgress]:
    """Generator version of :func:`run_study`; yields progress, returns the rows.

    Closing it stops after the current epoch; finished runs stay saved.
    """
    cal_stacks, uncal_stacks = list(cal_stacks), list(uncal_stacks)
    if not cal_stacks:
        raise StudyError("the case studies need at least one calendered (CAL) stack")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in CASE_STUDIES if cases is None or c.case in cases]
    plan = [(case, mode) for case in chosen for mode in SPLITS]
    rows: list[dict] = []
    for number, (case, mode) in enumerate(plan, start=1):
        settings = case.settings(quick)
        if epochs is not None:
            settings = replace(settings, epochs=int(epochs))
        if crop is not None:
            settings = replace(settings, crop=int(crop))
        stride = case.stride(settings)
        row = _study_row(case, mode, settings, stride)
        name = f"{case.case}_{mode}"
        rows.append(row)
        if case.uncalendered and not uncal_stacks:
            row.update(
                status="skipped", note="no UNCAL stacks given (case 3 needs CAL and UNCAL stacks)"
            )
            yield StudyProgress(number, len(plan), name, 0, settings.epochs, row["note"], row)
            continue
        stacks = cal_stacks + (uncal_stacks if case.uncalendered else [])
        yield StudyProgress(
            number,
            len(plan),
            name,
            0,
            settings.epochs,
            f"case {case.case} ({case.type}, stride {stride}, l={settings.window}, {mode} split)",
        )
        yield from _study_run(
            row,
            case,
            mode,
            settings,
            stacks,
            out_dir / name,
            seed,
            device,
            (number, len(plan), name),
        )
    write_study_files(out_dir, rows, quick=quick)
    return rows


def _study_run(
    row: dict,
    case: CaseStudy,
    mode: str,
    settings: CaseSettings,
    stacks: Sequence[ElectrodeStack],
    run_dir: Path,
    seed: int,
    device: str,
    where: tuple[int, int, str],
) -> Iterator[StudyProgress]:
    """Train, evaluate and save one (case, split) into ``run_dir``, filling ``row``; yields
    progress (``where``: run number, runs, name). Errors of the settings or data become a
    ``failed`` row."""
    number, runs, name = where
    stride = row["stride"]
    start = time.perf_counter()
    try:
        spec = WindowSpec(length=settings.window, stride=stride, crop=settings.crop)
        data = WindowDataset(list(stacks), spec)
        config = TrainConfig(
            epochs=settings.epochs,
            batch_size=settings.batch,
            lr=settings.lr,
            seed=seed,
            split=mode,
            device=device,
        )
        train_idx, val_idx = split(data, config.val_fraction, seed, mode)
        seed_everything(seed)
        model = build_model(
            ModelConfig(
                settings.window, settings.crop, settings.layers, settings.hidden, settings.latent
            )
        )
        history: list[EpochReport] = []
        for report in train(model, data, config, train_idx=train_idx, val_idx=val_idx):
            history.append(report)
            yield StudyProgress(
                number,
                runs,
                name,
                report.epoch,
                settings.epochs,
                f"epoch {report.epoch}: train {report.train_mse:.4f}, val {report.val_mse:.4f}",
            )
        report = evaluate(model, data, train_idx, val_idx, seed=seed)
        saved_to = save_run(run_dir, model, data, config, train_idx, val_idx, history, report)
    except ElectrodeCAEError as exc:
        row.update(status="failed", note=str(exc), seconds=time.perf_counter() - start)
        yield StudyProgress(number, runs, name, 0, settings.epochs, str(exc), row)
        return
    m, w = report.mse, report.window
    best = min(history, key=lambda r: r.val_mse)
    row.update(
        status="ok",
        n_train=m.n_train,
        n_val=m.n_val,
        train_mse_mean=m.train_mean,
        train_mse_std=m.train_std,
        val_mse_mean=m.val_mean,
        val_mse_std=m.val_std,
        mse_p_value=m.p_value,
        original_mean=w.original_mean,
        original_std=w.original_std,
        reconstruction_mean=w.reconstruction_mean,
        reconstruction_std=w.reconstruction_std,
        p_value=w.p_value,
        voxel_accuracy=w.voxel_accuracy,
        best_epoch=best.epoch,
        best_val_mse=best.val_mse,
        seconds=time.perf_counter() - start,
        run_dir=str(saved_to),
    )
    yield StudyProgress(
        number, runs, name, settings.epochs, settings.epochs, f"done in {row['seconds']:.1f} s", row
    )


def run_study(
    cal_stacks: Sequence[ElectrodeStack],
    uncal_stacks: Sequence[ElectrodeStack] = (),
    *,
    quick: bool,
    out_dir: str | Path,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[StudyProgress], None] | None = None,
    crop: int | None = None,
    cases: Sequence[str] | None = None,
    scheduler: str | None = None,
    workers: int = 1,
    parallel: str = "auto",
) -> list[dict]:
    """Run the paper's case studies 1, 2, 3a, 3b, each with a random and a blocked split.

    Parameters
    ----------
    cal_stacks, uncal_stacks : sequence of ElectrodeStack
        Calendered and uncalendered electrodes. Without UNCAL stacks cases 3a/3b are skipped
        (rows with ``status="skipped"`` and the reason in ``note``).
    quick : bool
        The CPU-sized variant (crop 32, l=8 / l=4, lr 1e-3, 3 epochs) instead of the paper's
        settings (crop 224, l=24 / l=4, lr 1e-4, 3,500 epochs); see :data:`CASE_STUDIES`.
    out_dir : path
        Each run is saved to ``out_dir/<case>_<split>/`` (a full run folder); the summary to
        ``out_dir/study.csv`` and ``out_dir/study.md``.
    epochs : int, optional
        Overrides every case's number of epochs.
    device : {"auto", "cpu", "cuda", "mps"}
    seed : int
        Seeds splits, initial weights, shuffling and the evaluated validation window.
    progress : callable, optional
        Called with every :class:`StudyProgress`.
    crop : int, optional
        Overrides every case's in-plane crop (voxels).
    cases : sequence of str, optional
        Only these cases (``"1"``, ``"2"``, ``"3a"``, ``"3b"``).
    scheduler, workers, parallel
        As in :func:`run_grid`: each (case, split) one task on a Dask cluster, or on a local
        one with ``workers > 1``; ``progress`` then hears of each run when it ends. Ctrl-C
        cancels what has not started, writes the finished rows and is raised again.

    Returns
    -------
    list of dict
        One row per (case, split), Table 8's columns as numbers: ``case``, ``type``, ``stride``,
        ``window``, ``split``, ``n_train``, ``n_val``, ``train_mse_mean``/``_std``,
        ``val_mse_mean``/``_std``, ``mse_p_value`` (Welch), ``original_mean``/``_std``,
        ``reconstruction_mean``/``_std``, ``p_value`` (one seeded validation window),
        ``voxel_accuracy``, plus settings, ``status`` (ok / skipped / failed), ``note``,
        ``seconds`` and ``run_dir``. A case the stacks cannot give (window deeper than a stack,
        a blocked split with no training window left) is ``failed`` with the reason.
    """
    if _use_dask(scheduler, workers, parallel):
        return _run_study_on_cluster(
            list(cal_stacks),
            list(uncal_stacks),
            quick=quick,
            out_dir=Path(out_dir),
            epochs=epochs,
            device=device,
            seed=seed,
            crop=crop,
            cases=cases,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
        )
    generator = iter_study(
        cal_stacks,
        uncal_stacks,
        quick=quick,
        out_dir=out_dir,
        epochs=epochs,
        device=device,
        seed=seed,
        crop=crop,
        cases=cases,
    )
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


def _run_study_on_cluster(
    cal_stacks,
    uncal_stacks,
    *,
    quick,
    out_dir: Path,
    epochs,
    device,
    seed,
    crop,
    cases,
    scheduler,
    workers,
    progress,
) -> list[dict]:
    """:func:`run_study` with every (case, split) a task on a Dask cluster."""
    if not cal_stacks:
        raise StudyError("the case studies need at least one calendered (CAL) stack")
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in CASE_STUDIES if cases is None or c.case in cases]
    plan = [(case, mode) for case in chosen for mode in SPLITS]
    cal_records = share_stacks(cal_stacks, out_dir / "stacks" / "cal")
    uncal_records = share_stacks(uncal_stacks, out_dir / "stacks" / "uncal")
    rows: list[dict] = []
    tasks: list[tuple[str, Callable, tuple]] = []
    numbers: dict[str, int] = {}
    for number, (case, mode) in enumerate(plan, start=1):
        settings = case.settings(quick)
        if epochs is not None:
            settings = replace(settings, epochs=int(epochs))
        if crop is not None:
            settings = replace(settings, crop=int(crop))
        row = _study_row(case, mode, settings, case.stride(settings))
        rows.append(row)
        name = f"{case.case}_{mode}"
        numbers[name] = number
        if case.uncalendered and not uncal_stacks:
            row.update(
                status="skipped", note="no UNCAL stacks given (case 3 needs CAL and UNCAL stacks)"
            )
            if progress is not None:
                progress(
                    StudyProgress(number, len(plan), name, 0, settings.epochs, row["note"], row)
                )
            continue
        records = cal_records + (uncal_records if case.uncalendered else [])
        tasks.append(
            (
                name,
                _study_task,
                (row, case.case, mode, vars(settings), records, str(out_dir / name), seed, device),
            )
        )

    def done(name: str, result: dict | None, error: str) -> None:
        row = rows[numbers[name] - 1]
        if result is None:
            row.update(status="failed", note=error)
        else:
            row.update(result)
        if progress is not None:
            message = f"done in {row['seconds']:.1f} s" if row["status"] == "ok" else row["note"]
            progress(
                StudyProgress(
                    numbers[name], len(plan), name, row["epochs"], row["epochs"], message, row
                )
            )

    try:
        with _Cluster(scheduler, workers) as cluster:
            cluster.run(
                [(n, f, a + (cluster.torch_threads,)) for n, f, a in tasks],
                _gpu_resources(scheduler, device),
                done,
            )
    except KeyboardInterrupt:
        for row in rows:
            if not row["status"]:
                row.update(status="cancelled", note="interrupted before it finished")
        write_study_files(out_dir, rows, quick=quick)
        raise
    write_study_files(out_dir, rows, quick=quick)
    return rows


STUDY_CSV_FIELDS = (
    "case",
    "type",
    "stride",
    "stride_label",
    "window",
    "crop",
    "split",
    "n_train",
    "n_val",
    "train_mse_mean",
    "train_mse_std",
    "val_mse_mean",
    "val_mse_std",
    "mse_p_value",
    "original_mean",
    "original_std",
    "reconstruction_mean",
    "reconstruction_std",
    "p_value",
    "voxel_accuracy",
    "best_epoch",
    "best_val_mse",
    "layers",
    "hidden",
    "latent",
    "batch",
    "lr",
    "epochs",
    "seconds",
    "status",
    "note",
    "run_dir",
)


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


def _csv_text(rows: Sequence[Mapping], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_csv_cell(row.get(f)) for f in fields])
    return buffer.getvalue()


def _pm(mean, std, digits: int = 3) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _p(value) -> str:
    return "—" if value is None else format_p(value)


def format_study_table(rows: Sequence[Mapping]) -> str:
    """Markdown: Table 8 with the random and blocked split of each case on adjacent lines, then
    a compact leakage table with the two splits side by side."""
    lines = [
        "| Case | Type | Stride | l | Split | Training set | Validation set | Training MSE | "
        "Validation MSE | p-value (MSE) | Original mean | Reconstruction mean | p-value | "
        "Voxel accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stride = "1" if r["stride_label"] == "1" else f"l = {r['stride']}"
        if r["status"] != "ok":
            lines.append(
                f"| {r['case']} | {r['type']} | {stride} | {r['window']} | {r['split']} "
                f"| {r['status']}: {r['note']} | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['case']} | {r['type']} | {stride} | {r['window']} | {r['split']} | "
            f"{r['n_train']} | {r['n_val']} | {_pm(r['train_mse_mean'], r['train_mse_std'])} | "
            f"{_pm(r['val_mse_mean'], r['val_mse_std'])} | {_p(r['mse_p_value'])} | "
            f"{_pm(r['original_mean'], r['original_std'])} | "
            f"{_pm(r['reconstruction_mean'], r['reconstruction_std'])} | {_p(r['p_value'])} | "
            f"{r['voxel_accuracy']:.1%} |"
        )
    by_case: dict[str, dict[str, Mapping]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["split"]] = r
    lines += [
        "",
        "Leakage check: validation MSE / training MSE with a random split (overlapping stride-1 "
        "windows share slices across the split) vs a blocked split (no slice on both sides).",
        "",
        "| Case | Stride | Val MSE random | Val MSE blocked | Val/train random | "
        "Val/train blocked | p (MSE) random | p (MSE) blocked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, pair in by_case.items():
        cells = []
        for key in ("val", "ratio", "p"):
            for mode in SPLITS:
                r = pair.get(mode)
                if r is None or r["status"] != "ok":
                    cells.append("—")
                elif key == "val":
                    cells.append(_pm(r["val_mse_mean"], r["val_mse_std"]))
                elif key == "ratio":
                    ratio = (
                        r["val_mse_mean"] / r["train_mse_mean"] if r["train_mse_mean"] else math.nan
                    )
                    cells.append(f"{ratio:.2f}")
                else:
                    cells.append(_p(r["mse_p_value"]))
        any_row = next(iter(pair.values()))
        stride = "1" if any_row["stride_label"] == "1" else f"l = {any_row['stride']}"
        lines.append(f"| {case} | {stride} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study_files(out_dir: str | Path, rows: Sequence[Mapping], *, quick: bool) -> None:
    """Write ``study.csv`` and ``study.md`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "study.csv", _csv_text(rows, STUDY_CSV_FIELDS))
    title = "quick CPU variant" if quick else "the paper's settings"
    md = (
        f"# Case studies (Energies 2022, 15, 4489, Table 8) — {title}\n\n"
        "Each case with the paper's random 85/15 split and with a blocked split (a block of "
        "depth positions held out; training windows overlapping it dropped). MSE: per-window "
        "mean ± std (network values -1/0/+1), Welch t-test train vs validation. Original vs "
        "reconstruction: one seeded random validation window, t-test from means, stds and voxel "
        "counts. Voxel accuracy: phase-snapped reconstruction of that window.\n\n"
        + format_study_table(rows)
    )
    atomic_write_text(out_dir / "study.md", md)


# --------------------------------------------------------------------------- grid

#: Grid keys: Table 2's hyper-parameters plus window stride, crop and latent size.
GRID_KEYS = ("window", "stride", "crop", "layers", "hidden", "latent", "epochs", "batch", "lr")
#: The paper's Table 2 grid (360 configurations).
TABLE2_GRID: dict[str, list] = {
    "window": [4, 8, 16, 24, 32],
    "layers": [3, 4, 5],
    "hidden": [128, 1000],
    "epochs": [2000, 3500],
    "batch": [2, 4, 8],
    "lr": [1e-3, 1e-4],
}
GRID_FILE_FIELDS = (
    "rank",
    "id",
    "status",
    "window",
    "stride",
    "crop",
    "tile_stride",
    "layers",
    "hidden",
    "latent",
    "epochs",
    "batch",
    "lr",
    "split",
    "seed",
    "n_train",
    "n_val",
    "best_val_mse",
    "best_epoch",
    "train_mse_mean",
    "train_mse_std",
    "val_mse_mean",
    "val_mse_std",
    "mse_p_value",
    "voxel_accuracy",
    "seconds",
    "error",
    "run_dir",
)


@dataclass(frozen=True)
class GridProgress:
    """A configuration of :func:`run_grid` finished (``done`` of ``total``)."""

    done: int
    total: int
    row: dict


def _base_settings(base: str) -> dict:
    preset = get_preset(base)
    return {
        "window": preset.window.length,
        "stride": preset.window.stride,
        "crop": preset.window.crop,
        "tile_stride": preset.window.tile_stride,
        "layers": preset.conv_layers,
        "hidden": preset.hidden,
        "latent": preset.latent_dim,
        "epochs": preset.train.epochs,
        "batch": preset.train.batch_size,
        "lr": preset.train.lr,
    }


def default_grid(base: str = "quick", stacks: Sequence[ElectrodeStack] = ()) -> dict[str, list]:
    """Table 2's values restricted to what the ``base`` preset's sizes allow.

    Window lengths no longer than the shallowest stack (and, for ``quick``, than the preset's
    window); conv layers whose encoder fits the preset's crop; for ``quick`` the preset's number
    of epochs instead of Table 2's 2,000 / 3,500. Hidden, batch and lr: Table 2's.
    """
    settings = _base_settings(base)
    depth = min((s.shape[0] for s in stacks), default=None)
    windows = [w for w in TABLE2_GRID["window"] if depth is None or w <= depth]
    if base == "quick":
        windows = [w for w in windows if w <= settings["window"]]
    layers = []
    for n in TABLE2_GRID["layers"]:
        try:
            validate_model_config(ModelConfig(4, settings["crop"], n))
        except ElectrodeCAEError:
            continue
        layers.append(n)
    grid = dict(TABLE2_GRID)
    grid["window"] = windows or [min(TABLE2_GRID["window"])]
    grid["layers"] = layers
    if base == "quick":
        grid["epochs"] = [settings["epochs"]]
    return grid


def expand_grid(grid: Mapping[str, Sequence], base: str = "quick") -> list[dict]:
    """Every combination of ``grid``'s values over the ``base`` preset's settings.

    ``stride`` may be ``"l"`` (stride = window length). Giving ``crop`` drops the preset's
    in-plane tile overlap (tiles every ``crop`` voxels).
    """
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise StudyError(f"unknown grid key(s) {unknown}; use {list(GRID_KEYS)}")
    for key, values in grid.items():
        if len(values) == 0:
            raise StudyError(f"grid key {key!r} has no values")
    settings = _base_settings(base)
    if "crop" in grid:
        settings["tile_stride"] = None
    keys = [k for k in GRID_KEYS if k in grid]
    configs, seen = [], set()
    for values in itertools.product(*(grid[k] for k in keys)):
        config = dict(settings)
        config.update(zip(keys, values))
        if config["stride"] == "l":
            config["stride"] = config["window"]
        config["lr"] = float(config["lr"])
        for key in ("window", "stride", "crop", "layers", "hidden", "latent", "epochs", "batch"):
            config[key] = int(config[key])
        marker = json.dumps(config, sort_keys=True)
        if marker not in seen:
            seen.add(marker)
            configs.append(config)
    return configs


def config_id(config: Mapping) -> str:
    """Stable 10-hex-digit id of a configuration: a hash of its settings (sorted JSON)."""
    text = json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def _stacks_fingerprint(stacks: Sequence[ElectrodeStack]) -> list[dict]:
    prints = []
    for s in stacks:
        digest = hashlib.sha1()
        labels = np.ascontiguousarray(s.labels[:: max(1, s.shape[0] // 8)])  # a few slices
        digest.update(labels.tobytes())
        prints.append(
            {
                "name": s.name,
                "shape": list(s.shape),
                "tag": s.tag,
                "voxel_size_um": s.voxel_size_um,
                "sample_sha1": digest.hexdigest()[:12],
            }
        )
    return prints


def _finished(run_dir: Path, config: Mapping) -> bool:
    """A run folder with weights, report and a complete history (all epochs)."""
    if not all(
        (run_dir / f).exists()
        for f in ("weights.pt", "config.json", "report.json", "history.csv", "result.json")
    ):
        return False
    try:
        history = read_history(run_dir / "history.csv")
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        return False
    return result.get("status") == "ok" and len(history) == int(config["epochs"])


def _grid_row(config: Mapping, cid: str, run_dir: Path, seed: int, split_mode: str) -> dict:
    row = {
        "id": cid,
        "status": "",
        "split": split_mode,
        "seed": seed,
        **dict(config),
        "run_dir": str(run_dir),
        "error": "",
    }
    return row


def _train_config(
    config: Mapping,
    stacks: Sequence[ElectrodeStack],
    run_dir: Path,
    *,
    seed: int,
    split_mode: str,
    device: str,
    resume: bool,
) -> dict:
    """Train, evaluate and save one configuration; errors become a ``failed`` row."""
    cid = config_id({**config, "seed": seed, "split": split_mode})
    row = _grid_row(config, cid, run_dir, seed, split_mode)
    start = time.perf_counter()
    try:
        spec = WindowSpec(config["window"], config["stride"], config["crop"], config["tile_stride"])
        # the paper's architecture (Table 2's grid), whatever the base preset's options
        model_config = ModelConfig(
            config["window"], config["crop"], config["layers"], config["hidden"], config["latent"]
        )
        validate_model_config(model_config)
        data = WindowDataset(list(stacks), spec)
        train_config = TrainConfig(
            epochs=config["epochs"],
            batch_size=config["batch"],
            lr=config["lr"],
            seed=seed,
            split=split_mode,
            device=device,
        )
        train_idx, val_idx = split(data, train_config.val_fraction, seed, split_mode)
        seed_everything(seed)
        model = build_model(model_config)
        run_dir.mkdir(parents=True, exist_ok=True)
        history: list[EpochReport] = []
        generator = train(
            model,
            data,
            train_config,
            train_idx=train_idx,
            val_idx=val_idx,
            checkpoint_dir=run_dir,
            resume=resume,
        )
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                history = stop.value.history
                break
        report = evaluate(model, data, train_idx, val_idx, seed=seed)
        save_run(run_dir, model, data, train_config, train_idx, val_idx, history, report)
        for name in ("best.pt", "last.pt"):
            (run_dir / name).unlink(missing_ok=True)
    except (ElectrodeCAEError, RuntimeError, ValueError, OSError) as exc:
        row.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}".splitlines()[0],
            seconds=time.perf_counter() - start,
        )
        if run_dir.exists():
            atomic_write_text(run_dir / "result.json", json.dumps(row, indent=1))
        return row
    best = min(history, key=lambda r: r.val_mse)
    m, w = report.mse, report.window
    row.update(
        status="ok",
        n_train=m.n_train,
        n_val=m.n_val,
        best_val_mse=best.val_mse,
        best_epoch=best.epoch,
        train_mse_mean=m.train_mean,
        train_mse_std=m.train_std,
        val_mse_mean=m.val_mean,
        val_mse_std=m.val_std,
        mse_p_value=m.p_value,
        voxel_accuracy=w.voxel_accuracy,
        seconds=time.perf_counter() - start,
    )
    atomic_write_text(run_dir / "result.json", json.dumps(row, indent=1))
    return row


_WORKER_STACKS: list[ElectrodeStack] = []


def _init_worker(records: list[dict]) -> None:
    """Process-pool initialiser: one thread per process, the stacks memory-mapped from the
    files :func:`share_stacks` wrote (not a pickled copy per process)."""
    torch.set_num_threads(1)
    _WORKER_STACKS[:] = open_shared_stacks(records)


def _worker_train(
    config: dict, run_dir: str, seed: int, split_mode: str, device: str, resume: bool
) -> dict:
    return _train_config(
        config,
        _WORKER_STACKS,
        Path(run_dir),
        seed=seed,
        split_mode=split_mode,
        device=device,
        resume=resume,
    )


def _rank(rows: list[dict]) -> list[dict]:
    def key(r):
        ok = r.get("status") == "ok" and r.get("best_val_mse") is not None
        return (0 if ok else 1, r.get("best_val_mse") if ok else 0.0, r["id"])

    ranked = sorted(rows, key=key)
    for position, row in enumerate(ranked, start=1):
        row["rank"] = position if row.get("status") == "ok" else ""
    return ranked


def run_grid(
    stacks: Sequence[ElectrodeStack],
    grid: Mapping[str, Sequence] | None = None,
    *,
    out_dir: str | Path,
    base: str = "quick",
    workers: int = 1,
    resume: bool = True,
    seed: int = 0,
    split_mode: str = "random",
    device: str = "auto",
    progress: Callable[[GridProgress], None] | None = None,
    scheduler: str | None = None,
    parallel: str = "auto",
) -> list[dict]:
    """Train every configuration of a hyper-parameter grid and rank them.

    Parameters
    ----------
    stacks : sequence of ElectrodeStack
        The electrodes (all configurations use all of them).
    grid : dict of lists, optional
        Values per key of :data:`GRID_KEYS` (Table 2: ``window``, ``layers``, ``hidden``,
        ``epochs``, ``batch``, ``lr``; also ``stride`` (int or ``"l"``), ``crop``, ``latent``);
        keys left out take the ``base`` preset's value. Default: :func:`default_grid`.
    out_dir : path
        Each configuration trains into ``out_dir/<id>/`` (a full run folder plus
        ``result.json``), ``id`` = :func:`config_id` of its settings, seed and split. The
        ranking goes to ``out_dir/grid.csv``; ``out_dir/grid.json`` records the stacks.
    base : {"quick", "paper"}
        Preset supplying the settings the grid does not vary.
    workers : int
        Configurations trained at once without a scheduler; above 1, on a local Dask cluster
        of that many worker processes (``parallel="auto"`` with dask.distributed installed,
        or ``"dask"``) or in a pool of spawned processes (``"processes"``, or without dask).
    resume : bool
        Skip configurations whose folder holds a finished run (weights, report, complete
        history); continue interrupted ones from their ``last.pt``. ``False`` retrains all.
    seed, split_mode, device
        As in :class:`~napari_electrode_cae.core.training.TrainConfig`.
    progress : callable, optional
        Called with a :class:`GridProgress` after each configuration.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://HOST:PORT``): every configuration is a
        task there (one GPU worker resource each with ``device="cuda"``); stacks go to
        ``out_dir/stacks/`` once and tasks memory-map them, so ``out_dir`` must be on a path
        every worker sees.
    parallel : {"auto", "dask", "processes"}
        See ``workers``.

    Ctrl-C cancels the configurations not started yet (on a local cluster also the running
    ones, which keep their ``last.pt`` for the next call) and is raised again; the finished
    ones are in ``grid.csv`` and are skipped next time.

    Returns
    -------
    list of dict
        One row per configuration, ranked by best validation MSE (``rank`` 1 = best); failed
        configurations (e.g. crop too small for 5 layers) last, with ``status="failed"`` and
        ``error``; reused ones have ``reused=True``.
    """
    stacks = list(stacks)
    if not stacks:
        raise StudyError("the grid needs at least one stack")
    if workers < 1:
        raise StudyError(f"workers must be at least 1, got {workers}")
    configs = expand_grid(grid if grid is not None else default_grid(base, stacks), base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_grid_folder(out_dir, stacks, base, seed, split_mode, resume)
    rows: list[dict] = []

    def finished(row: dict) -> None:
        row.setdefault("reused", False)
        rows.append(row)
        atomic_write_text(out_dir / "grid.csv", _csv_text(_rank(list(rows)), GRID_FILE_FIELDS))
        if progress is not None:
            progress(GridProgress(len(rows), len(configs), row))

    todo: list[tuple[dict, Path]] = []
    for config in configs:
        run_dir = out_dir / config_id({**config, "seed": seed, "split": split_mode})
        if resume and _finished(run_dir, config):
            finished(
                {
                    **json.loads((run_dir / "result.json").read_text(encoding="utf-8")),
                    "reused": True,
                }
            )
        else:
            todo.append((config, run_dir))
    job = _GridJob(stacks, out_dir, seed, split_mode, device, resume, finished)
    if todo and _use_dask(scheduler, workers if len(todo) > 1 else 1, parallel):
        job.on_dask(todo, scheduler, workers)
    elif workers == 1 or len(todo) <= 1:
        job.here(todo)
    else:
        job.in_processes(todo, workers)
    ranked = _rank(rows)
    atomic_write_text(out_dir / "grid.csv", _csv_text(ranked, GRID_FILE_FIELDS))
    return ranked


def _claim_grid_folder(
    out_dir: Path, stacks, base: str, seed: int, split_mode: str, resume: bool
) -> None:
    """Record the grid's stacks and settings in ``grid.json``; a folder holding a grid over
    other stacks is refused when resuming."""
    fingerprint = _stacks_fingerprint(stacks)
    meta_path = out_dir / "grid.json"
    if meta_path.exists() and resume:
        try:
            previous = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("stacks") and previous["stacks"] != fingerprint:
            raise StudyError(
                f"{out_dir} holds a grid over other stacks; choose another output folder "
                "(or resume=False / --no-resume to retrain there)"
            )
    atomic_write_text(
        meta_path,
        json.dumps(
            {"base": base, "seed": seed, "split": split_mode, "stacks": fingerprint}, indent=1
        ),
    )


@dataclass
class _GridJob:
    """Trains the grid's configurations that are not done yet, in one of three places; each
    result row goes to ``finished`` as it arrives."""

    stacks: list
    out_dir: Path
    seed: int
    split_mode: str
    device: str
    resume: bool
    finished: Callable[[dict], None]

    def failed_row(self, config: dict, run_dir: Path, error: str) -> dict:
        row = _grid_row(config, run_dir.name, run_dir, self.seed, self.split_mode)
        row.update(status="failed", error=error)
        return row

    def here(self, todo) -> None:
        """One after the other in this process."""
        for config, run_dir in todo:
            self.finished(
                _train_config(
                    config,
                    self.stacks,
                    run_dir,
                    seed=self.seed,
                    split_mode=self.split_mode,
                    device=self.device,
                    resume=self.resume,
                )
            )

    def on_dask(self, todo, scheduler: str | None, workers: int) -> None:
        """As tasks on a Dask cluster (``scheduler``, or a local one of ``workers``)."""
        records = share_stacks(self.stacks, self.out_dir / "stacks")
        by_name = {run_dir.name: (config, run_dir) for config, run_dir in todo}

        def done(name: str, row: dict | None, error: str) -> None:
            # row None: the task itself failed (e.g. its worker died)
            self.finished(row if row is not None else self.failed_row(*by_name[name], error))

        with _Cluster(scheduler, workers) as cluster:
            cluster.run(
                [
                    (
                        run_dir.name,
                        _grid_task,
                        (
                            config,
                            records,
                            str(run_dir),
                            self.seed,
                            self.split_mode,
                            self.device,
                            self.resume,
                            cluster.torch_threads,
                        ),
                    )
                    for config, run_dir in todo
                ],
                _gpu_resources(scheduler, self.device),
                done,
            )

    def in_processes(self, todo, workers: int) -> None:
        """In a pool of spawned processes (without dask)."""
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(share_stacks(self.stacks, self.out_dir / "stacks"),),
        ) as pool:
            futures = {
                pool.submit(
                    _worker_train,
                    config,
                    str(run_dir),
                    self.seed,
                    self.split_mode,
                    self.device,
                    self.resume,
                ): (config, run_dir)
                for config, run_dir in todo
            }
            for future in concurrent.futures.as_completed(futures):
                config, run_dir = futures[future]
                try:
                    row = future.result()
                except concurrent.futures.process.BrokenProcessPool as exc:
                    row = self.failed_row(config, run_dir, f"worker process died: {exc}")
                self.finished(row)


def format_grid_table(rows: Sequence[Mapping], top: int | None = None) -> str:
    """Markdown table of ranked :func:`run_grid` rows (best first)."""
    lines = [
        "| Rank | Id | l | Stride | Crop | Layers | Hidden | Epochs | Batch | lr | "
        "Best val MSE | Epoch | Train/Val | Voxel acc. | Status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    shown = list(rows)[:top] if top else list(rows)
    for r in shown:
        ok = r.get("status") == "ok"
        status = ("reused" if r.get("reused") else "ok") if ok else f"failed: {r.get('error')}"
        lines.append(
            f"| {r.get('rank', '')} | {r['id']} | {r['window']} | {r['stride']} | {r['crop']} | "
            f"{r['layers']} | {r['hidden']} | {r['epochs']} | {r['batch']} | {r['lr']:g} | "
            + (
                f"{r['best_val_mse']:.4f} | {r['best_epoch']} | {r['n_train']}/{r['n_val']} | "
                f"{r['voxel_accuracy']:.1%} | "
                if ok
                else "— | — | — | — | "
            )
            + f"{status} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- on a Dask cluster
#
# ``run_grid`` and ``run_study`` with ``scheduler="tcp://HOST:PORT"`` submit every
# configuration as one task to a running ``dask.distributed`` cluster (workers started with
# ``dask worker ADDRESS``, or by dask-jobqueue on SLURM/PBS); with ``workers > 1`` and no
# scheduler they start a LocalCluster of that many worker processes in this process. Stacks
# travel as paths: they are written once, as uint8 ``.npy`` files under ``OUT/stacks/``, and
# every task memory-maps them (pages shared between the workers of one machine, read on demand
# on another), so the output folder must be on a path every worker sees (as the run folders
# the tasks write are). dask is imported only here, when a cluster is asked for.

#: How ``workers > 1`` runs without a scheduler: "auto" (a local Dask cluster when
#: dask.distributed is installed, else a process pool), "dask" or "processes".
PARALLEL_CHOICES = ("auto", "dask", "processes")
#: Seconds to wait for the scheduler named by ``scheduler=``.
SCHEDULER_TIMEOUT_S = 20.0
#: Worker resource a configuration asks for when it trains on a GPU (``device="cuda"``) on a
#: cluster: start GPU workers with ``dask worker ADDRESS --nthreads 1 --resources GPU=1``.
GPU_RESOURCE = "GPU"


def dask_available() -> bool:
    """True when ``dask.distributed`` can be imported (the ``cluster`` extra)."""
    import importlib.util

    try:
        return importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise StudyError(
            "a Dask cluster needs dask.distributed: pip install 'napari-electrode-cae[cluster]'"
        ) from exc
    return distributed


class _Cluster:
    """A ``distributed.Client`` on ``scheduler``, or on a LocalCluster of ``workers`` worker
    processes (one thread each) started here; closed (and a local cluster stopped) on exit."""

    def __init__(self, scheduler: str | None, workers: int) -> None:
        self.scheduler, self.workers = scheduler, workers
        self.client = self.cluster = None

    def __enter__(self):
        distributed = _import_distributed()
        if self.scheduler:
            try:
                self.client = distributed.Client(self.scheduler, timeout=SCHEDULER_TIMEOUT_S)
            except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
                raise StudyError(
                    f"cannot reach the Dask scheduler at {self.scheduler}: {_one_line(exc)}"
                ) from exc
        else:
            self.cluster = distributed.LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = distributed.Client(self.cluster)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def torch_threads(self) -> int:
        """torch threads per task: the local cores shared by the local workers; 0 (leave the
        worker's own setting) on a cluster someone else started."""
        if self.cluster is None:
            return 0
        return max(1, (os.cpu_count() or 1) // self.workers)

    def run(
        self,
        tasks: Sequence[tuple[str, Callable, tuple]],
        resources: dict | None,
        done: Callable[[str, dict | None, str], None],
    ) -> None:
        """Submit ``(name, function, args)`` tasks; call ``done(name, result, error)`` as each
        ends (``error`` "" on success). Ctrl-C (or a KeyboardInterrupt raised by ``done``)
        cancels every task not finished yet and is raised again."""
        distributed = _import_distributed()
        if resources:
            self._wait_for_resources(resources)
        token = hashlib.sha1(f"{time.time_ns()}-{os.getpid()}".encode()).hexdigest()[:8]
        futures = {}
        try:
            for name, function, args in tasks:
                future = self.client.submit(
                    function,
                    *args,
                    key=f"electrode-cae-{name}-{token}",
                    pure=False,
                    resources=resources,
                )
                futures[future] = name
            for future in distributed.as_completed(list(futures)):
                name = futures[future]
                if future.status == "finished":
                    done(name, future.result(), "")
                elif future.status == "error":
                    error = future.exception()
                    done(name, None, f"{type(error).__name__}: {_one_line(error)}")
                else:  # cancelled or lost with its worker
                    done(name, None, f"task {future.status}")
        except KeyboardInterrupt:
            self.client.cancel(list(futures), force=True)  # queued tasks never start
            raise

    def _wait_for_resources(self, resources: dict) -> None:
        """Wait up to :data:`SCHEDULER_TIMEOUT_S` for a worker that offers ``resources`` (workers
        of dask-jobqueue join late); none is a :class:`StudyError`, not tasks queued forever."""
        deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
        while True:
            workers = self.client.scheduler_info().get("workers", {}).values()
            if any(
                all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
                for w in workers
            ):
                return
            if time.monotonic() >= deadline:
                wanted = ", ".join(f"{k}={v}" for k, v in resources.items())
                raise StudyError(
                    f"no worker of the Dask scheduler offers {wanted}: start GPU workers with "
                    f"'dask worker ADDRESS --nthreads 1 --resources {wanted}', or train on "
                    "the CPU (--device cpu or auto)"
                )
            time.sleep(0.5)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def share_stacks(stacks: Sequence[ElectrodeStack], folder: str | Path) -> list[dict]:
    """Write each stack once as a uint8 ``.npy`` file in ``folder`` (kept when a file of the same
    content is there) and return records :func:`open_shared_stacks` reads back memory-mapped."""
    from .checkpoint import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, stack in enumerate(stacks):
        labels = np.ascontiguousarray(stack.labels)
        digest = hashlib.sha1(labels.tobytes()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stack.name)[:40]
        path = folder / f"{i:02d}_{safe}_{digest}.npy"
        if not path.exists():
            buffer = io.BytesIO()
            np.save(buffer, labels)
            atomic_write_bytes(path, buffer.getvalue())
        records.append(
            {
                "path": str(path.resolve()),
                "voxel_size_um": stack.voxel_size_um,
                "calendered": stack.calendered,
                "source": stack.source,
                "name": stack.name,
                "phase_mapping": dict(stack.phase_mapping),
            }
        )
    return records


def open_shared_stacks(records: Sequence[Mapping]) -> list[ElectrodeStack]:
    """The stacks of :func:`share_stacks`' records, memory-mapped read-only."""
    stacks = []
    for r in records:
        try:
            labels = np.load(r["path"], mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise StudyError(
                f"cannot read the shared stack {r['path']} ({_one_line(exc)}); "
                "the output folder must be on a path every worker sees"
            ) from exc
        stacks.append(
            ElectrodeStack(
                labels,
                r["voxel_size_um"],
                r["calendered"],
                r["source"],
                r["name"],
                dict(r["phase_mapping"]),
            )
        )
    return stacks


def _grid_task(
    config: dict,
    records: list[dict],
    run_dir: str,
    seed: int,
    split_mode: str,
    device: str,
    resume: bool,
    torch_threads: int,
) -> dict:
    """One grid configuration on a Dask worker."""
    if torch_threads:
        torch.set_num_threads(torch_threads)
    return _train_config(
        config,
        open_shared_stacks(records),
        Path(run_dir),
        seed=seed,
        split_mode=split_mode,
        device=device,
        resume=resume,
    )


def _study_task(
    row: dict,
    case_name: str,
    mode: str,
    settings: dict,
    records: list[dict],
    run_dir: str,
    seed: int,
    device: str,
    torch_threads: int,
) -> dict:
    """One (case, split) of the case studies on a Dask worker; returns its row."""
    if torch_threads:
        torch.set_num_threads(torch_threads)
    case = next(c for c in CASE_STUDIES if c.case == case_name)
    for _event in _study_run(
        row,
        case,
        mode,
        CaseSettings(**settings),
        open_shared_stacks(records),
        Path(run_dir),
        seed,
        device,
        (0, 0, case_name),
    ):
        pass
    return row


def _gpu_resources(scheduler: str | None, device: str) -> dict | None:
    """A task on a cluster that trains on CUDA asks for one GPU worker resource."""
    return {GPU_RESOURCE: 1} if scheduler and device == "cuda" else None


def _use_dask(scheduler: str | None, workers: int, parallel: str) -> bool:
    if parallel not in PARALLEL_CHOICES:
        raise StudyError(f"parallel must be one of {PARALLEL_CHOICES}, got {parallel!r}")
    if scheduler:
        return True
    if workers <= 1 or parallel == "processes":
        return False
    return parallel == "dask" or dask_available()
