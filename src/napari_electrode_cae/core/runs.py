"""Run folders: everything a training run produced, saved and loaded back.

Layout::

    RUN_DIR/
      config.json     model, window, training settings, stacks (source, mapping, tag), split,
                      phase rule (how the output becomes phases), health (ok/collapsed/diverged)
      weights.pt      best-validation weights (torch, loaded with weights_only=True)
      history.csv     epoch, train_mse, val_mse, seconds, best_val_mse, val_nmse, spread
      latents.csv     one row per window: index, split, stack, tag, z, y, x, z1..zk
      report.json     evaluation (Tables 6-8 and phase checks), once evaluated
      report.md       the same as Markdown
      stacks/         copies of stacks that had no file of their own (e.g. synthetic ones)
      .electrode-cae-run.json   marker: the folder is this tool's, and its state (see
                      :mod:`.runfolder`); saving into a non-empty folder without it is refused

Every file is written atomically; loading reads only regular files of bounded size and checks
the config against the weights' shapes before building the model (nothing is allocated for a
config that names a huge window or layer).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import runfolder
from .checkpoint import atomic_write_text, load_state_dict, save_state_dict
from .errors import ElectrodeCAEError, RunFolderError
from .evaluation import EvaluationReport
from .health import Health
from .limits import check_model_size, meta_state_shapes, read_bounded_text
from .model import ConvAutoEncoder3d, ModelConfig, build_model
from .phases import PhaseRule
from .stack import ElectrodeStack
from .training import EpochReport, TrainConfig, inference_batch_size
from .windows import WindowDataset, WindowSpec, resolve_split

RUN_FORMAT = runfolder.RUN_FORMAT
RUN_VERSION = 1
HISTORY_FIELDS = ("epoch", "train_mse", "val_mse", "seconds", "best_val_mse", "val_nmse", "spread")


@dataclass
class Run:
    """A loaded run folder."""

    path: Path
    model: ConvAutoEncoder3d
    window: WindowSpec
    train_config: TrainConfig
    stacks: list[dict]
    train_idx: np.ndarray
    val_idx: np.ndarray
    history: list[dict] = field(default_factory=list)
    report: dict | None = None
    health: dict = field(default_factory=lambda: {"state": "ok"})

    def load_dataset(self, *, max_stack_gib: float | None = None) -> WindowDataset:
        """Re-read the run's stacks (with their saved phase mappings) as a WindowDataset.

        ``max_stack_gib`` raises the bound on a decoded stack (see :func:`.io.read_stack`).
        """
        from .io import read_stack  # local: io is only needed when stacks are re-read

        stacks = []
        for meta in self.stacks:
            source = Path(meta["file"]) if meta.get("file") else None
            if source is not None and not source.is_absolute():
                source = self.path / source
            if source is None or not source.exists():
                raise RunFolderError(
                    f"stack {meta.get('name')!r} of run {self.path} is not available "
                    f"(source {meta.get('source')!r})"
                )
            mapping = {int(k): v for k, v in meta.get("phase_mapping", {}).items()} or None
            stacks.append(
                read_stack(
                    source,
                    mapping,
                    voxel_size_um=meta.get("voxel_size_um"),
                    calendered=meta.get("calendered"),
                    name=meta.get("name"),
                    max_stack_gib=max_stack_gib,
                )
            )
        data = WindowDataset(stacks, self.window)
        if (
            len(data) != len(self.train_idx) + len(self.val_idx)
            and self.train_config.split == "random"
        ):
            raise RunFolderError(
                f"the stacks now give {len(data)} windows but the run was trained on "
                f"{len(self.train_idx) + len(self.val_idx)}"
            )
        return data


def stack_record(stack: ElectrodeStack, run_dir: Path, index: int) -> dict:
    """Metadata of ``stack`` for config.json; copies it into the run if it has no file."""
    source = Path(stack.source) if stack.source else None
    if source is not None and source.exists():
        file = str(source.resolve())
        mapping = {str(k): v for k, v in stack.phase_mapping.items()}
    else:
        from .io import write_stack

        rel = Path("stacks") / f"{index:02d}_{_safe_name(stack.name or 'stack')}.tif"
        write_stack(run_dir / rel, stack)
        file = str(rel)
        mapping = {"0": "pore", "1": "cbd", "2": "active"}
    return {
        "name": stack.name,
        "source": stack.source,
        "file": file,
        "shape": list(stack.shape),
        "voxel_size_um": stack.voxel_size_um,
        "calendered": stack.calendered,
        "phase_mapping": mapping,
    }


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def save_run(
    run_dir: str | Path,
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    train_config: TrainConfig,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    history: Sequence[EpochReport] = (),
    report: EvaluationReport | None = None,
    *,
    latents: bool = True,
    health: Health | None = None,
    distributed: dict | None = None,
) -> Path:
    """Write a complete run folder (see the module docstring) and return its path.

    ``distributed``: how the run was trained across processes (``world_size``, ``backend``,
    …, from :meth:`.distributed.DistributedContext.describe`); config.json records it with
    the effective batch (windows per optimiser step over all ranks) under ``"distributed"``.
    """
    run_dir = Path(run_dir)
    runfolder.check_output_folder(run_dir, what="run folder")  # never into someone's files
    run_dir.mkdir(parents=True, exist_ok=True)
    runfolder.write_marker(run_dir, "saving")  # until every file is written
    config = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "model": model.config.to_dict(),
        "window": {
            "length": data.spec.length,
            "stride": data.spec.stride,
            "crop": data.spec.crop,
            "tile_stride": data.spec.tile_stride,
        },
        "train": train_config.to_dict(),
        "stacks": [stack_record(s, run_dir, i) for i, s in enumerate(data.stacks)],
        "split": {
            "train": [int(i) for i in train_idx],
            "val": [int(i) for i in val_idx],
            "mode": resolve_split(train_config.split, data.spec),
        },
        "phase_rule": model.phase_rule.to_dict(),
        "health": asdict(health) if health is not None else {"state": "ok"},
        "distributed": _distributed_record(distributed, train_config),
    }
    save_state_dict(model.state_dict(), run_dir / "weights.pt")
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=1))
    write_history(run_dir / "history.csv", history)
    if latents:
        write_latents(run_dir / "latents.csv", model, data, train_idx, val_idx)
    if report is not None:
        write_report(run_dir, report)
    runfolder.write_marker(run_dir, "complete")
    return run_dir


def _distributed_record(distributed: dict | None, train_config: TrainConfig) -> dict:
    """config.json's ``"distributed"``: world size (1 for one process), batch per rank and the
    effective batch."""
    record = {"world_size": 1, **(distributed or {})}
    record["batch_per_rank"] = train_config.batch_size
    record["effective_batch"] = train_config.batch_size * int(record["world_size"])
    return record


def write_history(path: Path, history: Sequence[EpochReport]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_FIELDS)
    for r in history:
        writer.writerow(
            [
                r.epoch,
                f"{r.train_mse:.8g}",
                f"{r.val_mse:.8g}",
                f"{r.seconds:.4f}",
                f"{r.best_val_mse:.8g}",
                f"{r.val_nmse:.6g}",
                f"{r.spread:.6g}",
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def write_report(run_dir: str | Path, report: EvaluationReport) -> None:
    """Write report.json and report.md into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "report.json", json.dumps(report.to_dict(), indent=1))
    atomic_write_text(run_dir / "report.md", report.to_markdown())


@torch.inference_mode()
def encode_windows(
    model: ConvAutoEncoder3d, data: WindowDataset, batch_size: int = 8, *, progress=None
) -> np.ndarray:
    """Latent features of every window of ``data``: float32 (n_windows, latent_dim).

    Windows are encoded ``batch_size`` at a time, fewer for large windows (see
    :func:`~.training.inference_batch_size`); ``progress(done, total)`` is called after each
    chunk.
    """
    model.eval()
    device = next(model.parameters()).device
    batch_size = inference_batch_size(batch_size, data.spec.window_shape())
    out = np.empty((len(data), model.config.latent_dim), dtype=np.float32)
    for start in range(0, len(data), batch_size):
        idx = range(start, min(start + batch_size, len(data)))
        out[start : start + len(idx)] = model.encode(data.batch(idx).to(device)).cpu().numpy()
        if progress is not None:
            progress(idx.stop, len(data))
    return out


def latents_table(
    latents: np.ndarray,
    data: WindowDataset,
    train_idx: Sequence[int] = (),
    val_idx: Sequence[int] = (),
) -> str:
    """CSV text: one row per window with its split, stack, tag, origin and latent features."""
    side = {int(i): "train" for i in train_idx} | {int(i): "val" for i in val_idx}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "window",
            "split",
            "stack",
            "stack_name",
            "tag",
            "z",
            "y",
            "x",
            *[f"z{k + 1}" for k in range(latents.shape[1])],
        ]
    )
    for i in range(len(data)):
        s, z, y, x = data.origin(i)
        stack = data.stacks[s]
        writer.writerow(
            [
                i,
                side.get(i, ""),
                s,
                stack.name,
                stack.tag,
                z,
                y,
                x,
                *[f"{v:.6g}" for v in latents[i]],
            ]
        )
    return buffer.getvalue()


def write_latents(
    path: str | Path,
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    train_idx: Sequence[int] = (),
    val_idx: Sequence[int] = (),
) -> np.ndarray:
    """Encode every window and write the latents CSV; returns the latents array."""
    latents = encode_windows(model, data)
    atomic_write_text(path, latents_table(latents, data, train_idx, val_idx))
    return latents


def _read_json(path: Path) -> dict:
    """A JSON object from a regular file of bounded size (never a FIFO or a device)."""
    if not path.exists() and not path.is_symlink():
        raise RunFolderError(f"{path.parent} is not a run folder: {path.name} is missing")
    try:
        value = json.loads(read_bounded_text(path, path.name))
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise RunFolderError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{path} does not hold a JSON object")
    return value


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a run folder written by :func:`save_run`.

    Raises
    ------
    RunFolderError
        If files are missing, the config is invalid, or the weights do not match the config.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    marker = runfolder.read_marker(run_dir)
    if marker is not None and marker.get("state") != "complete" and not marker.get("completed"):
        raise RunFolderError(
            f"{run_dir} is an incomplete run folder (state {marker.get('state')!r}): it is "
            "still training, or its training or saving was interrupted; finish it with "
            "`electrode-cae train ... --resume` (same stacks and settings)"
        )
    config = _read_json(run_dir / "config.json")
    if config.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{run_dir / 'config.json'} is not a napari-electrode-cae run config")
    try:
        model_config = ModelConfig(**config["model"])
        shapes = meta_state_shapes(model_config)  # validates; allocates nothing
        phase_rule = PhaseRule.from_dict(config.get("phase_rule"))
        window = WindowSpec(**config["window"])
        train_config = TrainConfig(**config["train"])
        stacks = list(config["stacks"])
        train_idx = np.asarray(config["split"]["train"], dtype=np.int64)
        val_idx = np.asarray(config["split"]["val"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, ElectrodeCAEError) as exc:
        raise RunFolderError(f"invalid config in {run_dir / 'config.json'}: {exc}") from exc
    if (window.length, window.crop) != (model_config.window_length, model_config.crop):
        raise RunFolderError(
            f"config window {window.length}x{window.crop} does not match the model's "
            f"window_length {model_config.window_length} and crop {model_config.crop}"
        )
    # the weights must fit the config before anything of the config's size is built: a config
    # naming a window of 10^6 slices is refused here, not by the allocator
    expected = sum(math.prod(shape) for shape in shapes.values()) * 4
    state = load_state_dict(run_dir / "weights.pt", max_bytes=expected + expected // 4 + 2**20)
    check_weight_shapes(shapes, state, run_dir / "weights.pt", model_config)
    check_model_size(model_config, training=False, where=f"the model of {run_dir}")
    model = build_model(model_config)
    model.phase_rule = phase_rule
    model.load_state_dict(state)
    model.to(device).eval()
    history = read_history(run_dir / "history.csv")
    report_path = run_dir / "report.json"
    report = _read_json(report_path) if report_path.exists() else None
    return Run(
        run_dir,
        model,
        window,
        train_config,
        stacks,
        train_idx,
        val_idx,
        history,
        report,
        dict(config.get("health") or {"state": "ok"}),
    )


def check_weight_shapes(shapes: dict, state: dict, path: Path, config: ModelConfig) -> None:
    """Raise :class:`RunFolderError` unless ``state`` has exactly the tensors of ``shapes`` (see
    :func:`.limits.meta_state_shapes` of ``config``), naming the config fields that disagree."""
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise RunFolderError(
            f"{path} does not match conv_layers={config.conv_layers}, norm={config.norm!r}, "
            f"output={config.output!r} in config.json (missing {missing[:3]}, unexpected "
            f"{extra[:3]})"
        )
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            fields = (
                f"window_length={config.window_length}, crop={config.crop}, "
                f"hidden={config.hidden}, latent_dim={config.latent_dim}"
            )
            raise RunFolderError(
                f"{path}: {key} has shape {tuple(state[key].shape)} but config.json "
                f"({fields}) implies {shape}"
            )


def check_weights_match(model: ConvAutoEncoder3d, state: dict, path: Path) -> None:
    """Raise :class:`RunFolderError` naming the config field that disagrees with the weights."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise RunFolderError(
            f"{path} does not match conv_layers={model.config.conv_layers} in config.json "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise RunFolderError(
                f"{path}: {key} has shape {tuple(state[key].shape)} but config.json "
                f"({_field_for(key, model)}) implies {tuple(tensor.shape)}"
            )


def _field_for(key: str, model: ConvAutoEncoder3d) -> str:
    c = model.config
    if key.startswith("encoder") and key.endswith(f"{len(model.encoder) - 1}.weight"):
        return f"latent_dim={c.latent_dim}, hidden={c.hidden}"
    if key.startswith("decoder.0"):
        return f"latent_dim={c.latent_dim}, hidden={c.hidden}"
    if "Linear" in type(dict(model.named_modules())[key.rsplit(".", 1)[0]]).__name__:
        return f"hidden={c.hidden}, crop={c.crop}"
    return f"window_length={c.window_length}, crop={c.crop}"


def read_history(path: Path) -> list[dict]:
    """history.csv as a list of dicts with numeric values (empty if the file is absent)."""
    if not path.exists() and not path.is_symlink():
        return []
    text = read_bounded_text(path, "history")
    rows = []
    try:
        for number, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
            try:
                rows.append(
                    {
                        "epoch": int(row["epoch"]),
                        **{
                            k: float(row[k])
                            for k in HISTORY_FIELDS[1:]
                            if row.get(k) not in (None, "")
                        },
                    }
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise RunFolderError(f"{path} line {number} is not a history row ({exc})") from None
    except csv.Error as exc:
        raise RunFolderError(f"{path} is not a CSV history ({exc})") from None
    return rows
