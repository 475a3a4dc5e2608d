"""The Table 2 hyper-parameter grid search.

:func:`run_grid` trains every combination of a hyper-parameter grid (Table 2 by default), each in
its own run folder named by a hash of its settings, ranks them by best validation MSE and skips
finished configurations when called again. It trains here, in a pool of processes or on a Dask
cluster (:mod:`.cluster`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
from .evaluation import evaluate
from .model import ModelConfig, build_model, validate_model_config
from .presets import get_preset
from .runs import read_history, save_run
from .stack import ElectrodeStack
from .studies import _csv_text
from .training import EpochReport, TrainConfig, seed_everything, train
from .windows import WindowDataset, WindowSpec, split

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
