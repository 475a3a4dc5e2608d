"""The paper's experimental protocol: the three case studies (Table 8).

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

The Table 2 grid search is :mod:`.grid`; both run locally or on a Dask cluster
(:mod:`.cluster`).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoint import atomic_write_text
from .cluster import (
    _Cluster,
    _gpu_resources,
    _use_dask,
    open_shared_stacks,
    share_stacks,
)
from .errors import ElectrodeCAEError, StudyError
from .evaluation import evaluate, format_p
from .model import ModelConfig, build_model
from .runs import save_run
from .stack import ElectrodeStack
from .training import EpochReport, TrainConfig, seed_everything, train
from .windows import WindowDataset, WindowSpec, split

__all__ = [
    "CASE_STUDIES",
    "StudyError",
    "format_study_table",
    "iter_study",
    "run_study",
    "write_study_files",
]


SPLITS = ("random", "blocked")


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
