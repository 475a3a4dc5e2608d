"""Training loop of the auto-encoder as a generator (Adam + MSE, best-validation weights kept).

Beyond the paper (all off in its preset): a learning-rate warm-up and cosine decay, gradient
clipping, a bounded number of windows sampled per epoch, and cross-entropy for three-phase
models (:mod:`.losses`). Every epoch measures the validation NMSE and the reconstruction's
spread, and a model that collapses to the mean or diverges is said so (:mod:`.health`); a
non-finite loss stops training.

``train`` yields an :class:`EpochReport` after every epoch (and, with ``yield_batches=True``, a
:class:`BatchReport` after every batch, so a GUI worker can stop between batches) and returns a
:class:`TrainResult`. Closing the generator stops training at the next yield; the model then
holds the best-validation weights seen so far, in every case.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as ddp
from .checkpoint import load_training_state, save_state_dict, save_training_state
from .errors import RunFolderError, TrainConfigError, TrainingMemoryError
from .health import Health, diagnose
from .kernels.feeding import BatchFeeder
from .kernels.train_step import TrainingStep
from .losses import PHASE_LOSS_CHOICES, make_loss
from .model import ConvAutoEncoder3d
from .runfolder import run_settings, settings_difference
from .stack import volume_fractions
from .windows import SPLIT_MODES, WindowDataset, split

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: "fp32": plain float32 (the paper's numerics). "bf16": mixed precision, the convolutions and
#: linear layers in bfloat16 under ``torch.autocast`` with float32 weights, optimiser and loss
#: (no loss scaling needed: bfloat16 has float32's exponent range). Meant for GPUs.
PRECISION_CHOICES = ("fp32", "bf16")
#: Learning-rate schedules after the warm-up: constant (the paper) or cosine decay to 0.
SCHEDULE_CHOICES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (paper: Adam, MSE, batch 2, lr 1e-4, up to 3,500 epochs).

    Parameters
    ----------
    epochs : int
        Passes over the training windows.
    batch_size : int
        Windows per optimiser step.
    lr : float
        Adam learning rate.
    val_fraction : float
        Fraction of windows held out for validation.
    seed : int
        Seeds the split, the shuffling and (via :func:`seed_everything`) the initial weights.
    split : {"auto", "random", "blocked"}
        Split mode, see :func:`napari_electrode_cae.core.windows.split`; ``"auto"`` is
        blocked when windows overlap along Z (stride < length), else random.
    device : {"auto", "cpu", "cuda", "mps"}
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    precision : {"fp32", "bf16"}
        ``"bf16"``: mixed precision for the training steps (see :data:`PRECISION_CHOICES`);
        validation always runs in float32. Pays on GPUs with bfloat16 units; on most CPUs it
        is slower than fp32.
    windows_per_epoch : int
        Training windows sampled (without replacement, seeded) for each epoch; 0 uses all of
        them every epoch (the paper). Bounds an epoch's time on large stacks.
    warmup_epochs : int
        Epochs over which the learning rate rises linearly from ``lr / 10`` to ``lr``.
    schedule : {"constant", "cosine"}
        After the warm-up the rate stays (the paper) or decays along a cosine to 0 at the end.
    grad_clip : float
        Largest gradient norm (clipped to it before each step); 0 switches clipping off.
    phase_loss : {"ce", "weighted_ce", "ce_dice"}
        Loss of three-phase models (:data:`.losses.PHASE_LOSS_CHOICES`); one-channel models
        always use MSE.
    """

    epochs: int = 5
    batch_size: int = 2
    lr: float = 1e-4
    val_fraction: float = 0.15
    seed: int = 0
    split: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    windows_per_epoch: int = 0
    warmup_epochs: int = 0
    schedule: str = "constant"
    grad_clip: float = 0.0
    phase_loss: str = "ce"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise TrainConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainConfigError(
                f"validation fraction must be between 0 and 1, got {self.val_fraction!r}"
            )
        for name in ("windows_per_epoch", "warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not (
            isinstance(self.grad_clip, (int, float))
            and math.isfinite(self.grad_clip)
            and self.grad_clip >= 0
        ):
            raise TrainConfigError(f"grad_clip must be 0 (off) or positive, got {self.grad_clip!r}")
        if self.schedule not in SCHEDULE_CHOICES:
            raise TrainConfigError(
                f"schedule must be one of {SCHEDULE_CHOICES}, got {self.schedule!r}"
            )
        if self.phase_loss not in PHASE_LOSS_CHOICES:
            raise TrainConfigError(
                f"phase_loss must be one of {PHASE_LOSS_CHOICES}, got {self.phase_loss!r}"
            )
        if self.split not in SPLIT_MODES:
            raise TrainConfigError(f"split must be one of {SPLIT_MODES}, got {self.split!r}")
        if self.device not in DEVICE_CHOICES:
            raise TrainConfigError(f"device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        if self.precision not in PRECISION_CHOICES:
            raise TrainConfigError(
                f"precision must be one of {PRECISION_CHOICES}, got {self.precision!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_paper_schedule(self) -> bool:
        """True without warm-up, decay or clipping (a plain Adam step, as in the paper)."""
        return self.warmup_epochs == 0 and self.schedule == "constant" and self.grad_clip == 0


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` for optimiser step ``step`` (0-based).

    Linear warm-up from 0.1 to 1 over ``config.warmup_epochs``, then 1 (``"constant"``) or a
    cosine from 1 down to 0 at the last step (``"cosine"``).
    """
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    if config.schedule == "constant":
        return 1.0
    total = max(config.epochs * steps_per_epoch - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total) / total))


@dataclass(frozen=True)
class BatchReport:
    """Progress inside an epoch (only yielded with ``yield_batches=True``).

    ``batch_loss`` is the batch's loss as a float or, from :func:`train`, as a 0-d tensor on
    the training device: reading :attr:`loss` waits for the GPU, so a progress bar that only
    counts batches never makes the GPU wait.
    """

    epoch: int
    batch: int  # 1-based
    batches: int
    batch_loss: float | torch.Tensor = field(repr=False)

    @property
    def loss(self) -> float:
        """The batch's MSE loss (network values)."""
        return float(self.batch_loss)


@dataclass(frozen=True)
class EpochReport:
    """Result of one epoch. MSEs are voxel means of network values (pore -1, CBD 0, active 1).

    ``val_nmse`` is the validation MSE over the validation windows' variance and ``spread``
    the reconstruction's standard deviation over the original's (see :mod:`.health`); both
    NaN in histories written before they were measured.
    """

    epoch: int  # 1-based
    epochs: int
    train_mse: float
    val_mse: float
    seconds: float
    best_epoch: int
    best_val_mse: float
    val_nmse: float = math.nan
    spread: float = math.nan

    @property
    def is_best(self) -> bool:
        return self.epoch == self.best_epoch

    @property
    def finite(self) -> bool:
        return math.isfinite(self.train_mse) and math.isfinite(self.val_mse)

    def health(self, config: TrainConfig | None = None) -> Health:
        """The :class:`~.health.Health` of the model after this epoch."""
        return diagnose(
            self.val_nmse, self.spread, finite=self.finite, lr=None if config is None else config.lr
        )


@dataclass
class TrainResult:
    """What a finished (or stopped) training run produced."""

    history: list[EpochReport]
    best_epoch: int
    best_val_mse: float
    train_idx: np.ndarray
    val_idx: np.ndarray
    device: str
    stopped: bool = False
    extras: dict = field(default_factory=dict)
    health: Health = field(default_factory=lambda: Health("ok"))

    @property
    def diverged(self) -> bool:
        return self.health.state == "diverged"


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``device``: ``"auto"`` picks CUDA, then MPS, then the CPU.

    Raises
    ------
    TrainConfigError
        If an explicitly requested accelerator is not available.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("device 'cuda' requested but no CUDA GPU is available")
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TrainConfigError("device 'mps' requested but Apple MPS is not available")
    if device not in DEVICE_CHOICES:
        raise TrainConfigError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
    return torch.device(device)


def available_devices() -> list[str]:
    """Devices usable here, e.g. ``["cpu"]`` or ``["cuda", "cpu"]``."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def make_optimiser(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam as in the paper (``torch.optim.Adam`` with its defaults), as one fused kernel where
    torch has one for the model's device (CPU and CUDA), else torch's multi-tensor loop.

    Call after moving the model to its device. ``benchmarks/optimiser_step.py`` measured the
    package's former hand-written fused Adam at 1.03-1.06x this one's whole-step time.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except RuntimeError:  # no fused kernel for this device (e.g. an older MPS build)
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`TrainConfigError` if ``precision`` cannot run on ``device``."""
    if precision != "bf16":
        return
    if device.type not in ("cpu", "cuda"):
        raise TrainConfigError(
            f"bf16 mixed precision runs on the CPU or a CUDA GPU, not on {device.type}; "
            "use precision fp32"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainConfigError(
            f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support; "
            "use precision fp32"
        )


@contextlib.contextmanager
def cudnn_autotune(device: torch.device):
    """On CUDA, let cuDNN time its algorithms once per shape (every batch has the same shape)
    for the duration of a run; the previous setting is restored afterwards."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) so that model initialisation and training are repeatable."""
    torch.manual_seed(seed)


def train(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    config: TrainConfig,
    *,
    train_idx: Sequence[int] | None = None,
    val_idx: Sequence[int] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    yield_batches: bool = False,
    distributed: ddp.DistributedContext | None = None,
) -> Iterator[EpochReport | BatchReport]:
    """Train ``model`` on ``data``; a generator of progress reports.

    Parameters
    ----------
    model : ConvAutoEncoder3d
        Trained in place; holds the best-validation weights when the generator ends or is closed.
    data : WindowDataset
        Windows of shape (1, l, crop, crop) matching the model.
    config : TrainConfig
        Optimiser, split and device settings.
    train_idx, val_idx : sequence of int, optional
        A precomputed split; by default ``split(data, config.val_fraction, config.seed,
        config.split)``.
    checkpoint_dir : path, optional
        If given, ``best.pt`` (best weights) is written there atomically whenever validation
        improves, and ``last.pt`` (weights, optimiser, best weights and history) after every
        epoch, so a stopped or killed run can be resumed.
    resume : bool
        Continue from ``checkpoint_dir/last.pt`` if it exists: the run then ends with the same
        weights and history as an uninterrupted one (on the CPU, same seed and settings).
    yield_batches : bool
        Also yield a :class:`BatchReport` after every batch.
    distributed : DistributedContext, optional
        From :func:`.distributed.setup` under torchrun: the model trains wrapped in
        DistributedDataParallel on ``distributed.device``, each optimiser step takes a global
        batch of ``world_size × config.batch_size`` windows shared between the ranks, losses
        and validation are gathered over the ranks (every rank yields the same reports) and
        only rank 0 writes checkpoints. CUDA graphs are not used under DDP (eager steps).

    Yields
    ------
    EpochReport or BatchReport

    Returns
    -------
    TrainResult
        As the generator's return value (``StopIteration.value``).

    Raises
    ------
    TrainConfigError
        If the windows do not fit the model, a side of the split is empty or the device is
        unavailable.
    TrainingMemoryError
        If a training step or the validation runs out of memory (``torch.OutOfMemoryError`` or
        ``MemoryError``); the message names the batch size and window shape. The model then
        holds the best weights found so far.
    RunFolderError
        If ``resume`` finds a ``last.pt`` that is corrupt, not a plain training checkpoint or
        written for another model; the model is then left unchanged.
    """
    train_idx, val_idx = _checked_split(model, data, config, train_idx, val_idx)
    device = distributed.device if distributed is not None else resolve_device(config.device)
    check_precision(config.precision, device)
    ranks = _Ranks(distributed)
    model.to(device)
    optimiser = make_optimiser(model, config.lr)
    per_epoch = windows_per_epoch(len(train_idx), config, model.config.norm, ranks.world)
    if per_epoch < ranks.world * (2 if model.config.norm == "batch" else 1):
        raise TrainConfigError(
            f"{per_epoch} training windows cannot be shared by {ranks.world} "
            "ranks; use fewer processes or more windows"
        )
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # what this run is, recorded in last.pt: a resume with other settings or stacks is refused
    settings = (
        run_settings(model.config, data, config, train_idx, val_idx)
        if checkpoint_dir is not None
        else None
    )
    progress = _Progress(copy.deepcopy(model.state_dict()))
    if resume and checkpoint_dir is not None:
        saved = _read_last(checkpoint_dir / "last.pt", distributed)
        if saved is not None:
            progress = _restore(
                saved, checkpoint_dir / "last.pt", model, optimiser, settings, config
            )
    writes = checkpoint_dir is not None and ranks.writes
    health, stage = Health("ok"), "training"
    resources = contextlib.ExitStack()  # closed in the finally below, last in first out
    resources.enter_context(cudnn_autotune(device))
    try:
        feeder = BatchFeeder(data, device)
        resources.callback(feeder.release)
        step = _training_step(model, optimiser, device, data, train_idx, config, ranks)
        resources.callback(step.release)
        epochs = _Epochs(
            model,
            data,
            config,
            train_idx,
            val_idx,
            per_epoch,
            device,
            feeder,
            step,
            optimiser,
            ranks,
        )
        for epoch in range(progress.first_epoch, config.epochs + 1):
            start = time.perf_counter()
            train_mse = yield from epochs.train(epoch, yield_batches)
            stage = "validation"
            checked = epochs.validate()
            stage = "training"
            improved = progress.record(
                model, epoch, train_mse, checked, config, time.perf_counter() - start
            )
            if improved and writes:
                save_state_dict(progress.best_state, checkpoint_dir / "best.pt")
            report = progress.history[-1]
            if report.health(config).state == "diverged":  # stop, keep the best weights
                health = report.health(config)
                yield report
                break
            if writes:
                save_training_state(
                    checkpoint_dir / "last.pt",
                    progress.checkpoint(epoch, model, optimiser, settings),
                )
            yield report
        finished = health.state != "diverged"
    except (torch.OutOfMemoryError, MemoryError) as exc:
        # without its traceback, whose frames would keep the failed batch's tensors alive
        raise TrainingMemoryError(
            out_of_memory_message(device, config.batch_size, data.spec.window_shape(), stage)
        ) from exc.with_traceback(None)
    finally:
        resources.close()
        model.load_state_dict(progress.best_state)
        model.eval()
    if health.ok and progress.best_epoch:
        health = history_health(progress.history, config)
    return TrainResult(
        progress.history,
        progress.best_epoch,
        progress.best_val,
        train_idx,
        val_idx,
        str(device),
        stopped=not finished,
        health=health,
    )


def _checked_split(
    model, data: WindowDataset, config: TrainConfig, train_idx, val_idx
) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation indices (``config``'s split unless given), checked: the
    windows fit the model, both sides hold windows, the settings can train together."""
    spec, mc = data.spec, model.config
    if (spec.length, spec.crop) != (mc.window_length, mc.crop):
        raise TrainConfigError(
            f"windows are {spec.length}x{spec.crop}x{spec.crop} but the model expects "
            f"{mc.window_length}x{mc.crop}x{mc.crop}"
        )
    if train_idx is None or val_idx is None:
        train_idx, val_idx = split(data, config.val_fraction, config.seed, config.split)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainConfigError(
            f"training needs windows on both sides: {len(train_idx)} training, "
            f"{len(val_idx)} validation"
        )
    check_trainable(model.config, config)
    return train_idx, val_idx


@dataclass
class _Ranks:
    """How this process shares training with others: alone (``context`` None) or one rank of a
    torchrun job, whose batches are shards of a global batch and whose loss is weighted."""

    context: ddp.DistributedContext | None
    #: the objective's weight for the current shard (see :func:`.distributed.loss_weight`)
    share: list = field(default_factory=lambda: [1.0])

    @property
    def world(self) -> int:
        return self.context.world_size if self.context is not None else 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes checkpoints."""
        return self.context is None or self.context.is_main

    def shard(self, batch_idx: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch (all of it when alone)."""
        if self.context is None:
            return batch_idx
        mine = ddp.shard(batch_idx, self.context.rank, self.world)
        self.share[0] = ddp.loss_weight(len(mine), len(batch_idx), self.world)
        return mine

    def guard(self):
        """Turns a lost peer into :class:`.distributed.PeerLostError` around a step."""
        return contextlib.nullcontext() if self.context is None else ddp.peer_guard(self.context)


def _training_step(
    model, optimiser, device, data, train_idx, config: TrainConfig, ranks: _Ranks
) -> TrainingStep:
    """The step (forward, loss, backward, Adam) of ``config``'s loss, wrapped for DDP."""
    fractions = None
    if model.config.output == "phases" and config.phase_loss == "weighted_ce":
        fractions = training_fractions(data, train_idx)
    objective = make_loss(model, config.phase_loss, fractions)
    net = model
    if ranks.context is not None:
        net = ddp.wrap_model(model, ranks.context)
        objective = _weighted_loss(objective, ranks.share)
    # a schedule changes the rate between steps, which a recorded CUDA graph would not see;
    # under DDP every step runs eagerly (the weight of a short last batch changes too)
    graph = None if config.is_paper_schedule and ranks.context is None else False
    return TrainingStep(
        net,
        optimiser,
        device,
        config.precision,
        config.batch_size,
        use_graph=graph,
        loss=objective,
        grad_clip=config.grad_clip,
    )


@dataclass
class _Epochs:
    """One epoch's training pass and validation."""

    model: ConvAutoEncoder3d
    data: WindowDataset
    config: TrainConfig
    train_idx: np.ndarray
    val_idx: np.ndarray
    per_epoch: int
    device: torch.device
    feeder: BatchFeeder
    step: TrainingStep
    optimiser: torch.optim.Optimizer
    ranks: _Ranks

    def train(self, epoch: int, yield_batches: bool) -> Iterator[BatchReport]:
        """Yields a :class:`BatchReport` per batch if asked; returns the epoch's train MSE."""
        config, ranks = self.config, self.ranks
        global_batch = config.batch_size * ranks.world  # windows per step, all ranks together
        n_batches = math.ceil(self.per_epoch / global_batch)
        self.step.model.train()
        # one generator per epoch, so a resumed run shuffles exactly like an unbroken one
        order = np.random.default_rng((config.seed, epoch)).permutation(self.train_idx)
        order = order[: self.per_epoch]
        # summed on the device in float64 (the CPU for Apple MPS, which has none): a GPU is not
        # made to wait for every batch's loss (only a GUI asking for each batch's loss reads
        # it), and on the CPU the sum is the same as Python's float sum
        sum_device = self.device if self.device.type in ("cpu", "cuda") else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float64, device=sum_device)
        for b in range(n_batches):
            if not config.is_paper_schedule:
                set_lr(
                    self.optimiser,
                    config.lr * lr_factor((epoch - 1) * n_batches + b, n_batches, config),
                )
            batch_idx = ranks.shard(order[b * global_batch : (b + 1) * global_batch])
            with ranks.guard():
                loss = self.step(self.feeder(batch_idx))
            total += loss.to(sum_device, torch.float64) * len(batch_idx)
            if yield_batches:
                yield BatchReport(epoch, b + 1, n_batches, loss)
        if ranks.context is not None:
            total = ddp.all_reduce_sum(total, ranks.context)
        return float(total) / len(order)

    def validate(self) -> ValidationStats:
        if self.ranks.context is None:
            return validate(
                self.model, self.data, self.val_idx, self.config.batch_size, feeder=self.feeder
            )
        return _validate_sharded(
            self.model,
            self.data,
            self.val_idx,
            self.config.batch_size,
            self.feeder,
            self.ranks.context,
        )


@dataclass
class _Progress:
    """The run so far: its epochs and its best-validation weights (restored on resume)."""

    best_state: dict
    best_val: float = math.inf
    best_epoch: int = 0
    history: list[EpochReport] = field(default_factory=list)
    first_epoch: int = 1

    def record(
        self,
        model,
        epoch: int,
        train_mse: float,
        checked: ValidationStats,
        config: TrainConfig,
        seconds: float,
    ) -> bool:
        """Add the epoch to the history; True if its validation MSE is the best so far (its
        weights are then kept)."""
        val_mse = checked.mse
        improved = math.isfinite(train_mse) and math.isfinite(val_mse) and val_mse < self.best_val
        if improved:
            self.best_val, self.best_epoch = val_mse, epoch
            self.best_state = copy.deepcopy(model.state_dict())
        self.history.append(
            EpochReport(
                epoch,
                config.epochs,
                train_mse,
                val_mse,
                seconds,
                self.best_epoch,
                self.best_val,
                checked.nmse,
                checked.spread,
            )
        )
        return improved

    def checkpoint(self, epoch: int, model, optimiser, settings) -> dict:
        """What ``last.pt`` holds after ``epoch``."""
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "best_model": self.best_state,
            "best_val_mse": self.best_val,
            "best_epoch": self.best_epoch,
            "history": [asdict(r) for r in self.history],
            "settings": settings,
        }


def _read_last(path: Path, distributed: ddp.DistributedContext | None) -> dict | None:
    """``last.pt`` if there is one; under torchrun rank 0 reads it for every rank."""
    if distributed is not None:
        return _resume_state_for_ranks(path, distributed)
    return load_training_state(path) if path.exists() else None


def _restore(saved: dict, path: Path, model, optimiser, settings, config: TrainConfig) -> _Progress:
    """Load a ``last.pt`` into ``model`` and ``optimiser``, after checking that it was written
    for these settings and stacks and for no more epochs than ``config`` asks for; the model is
    left unchanged when it does not fit."""
    if isinstance(saved.get("settings"), dict):
        difference = settings_difference(saved["settings"], settings)
        if difference:
            raise RunFolderError(
                f"cannot resume from {path}: it was written for another model or settings "
                f"({difference}); resume with the run's settings and stacks, or train into a "
                "new folder"
            )
    if saved["epoch"] > config.epochs:
        raise TrainConfigError(
            f"epochs {config.epochs} is fewer than the {saved['epoch']} epochs this run has "
            f"done; resume with {saved['epoch']} epochs (finish it as it is) or more"
        )
    initial = copy.deepcopy(model.state_dict())
    try:
        model.load_state_dict(saved["best_model"])  # checks that the best weights fit too
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        model.load_state_dict(initial)  # undo a partial load: the model is unchanged
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise RunFolderError(
            f"cannot resume from {path}: it was written for another model or settings "
            f"({detail}); use another output folder or train without resuming"
        ) from exc
    return _Progress(
        saved["best_model"],
        saved["best_val_mse"],
        saved["best_epoch"],
        [EpochReport(**row) for row in saved["history"]],
        saved["epoch"] + 1,
    )


def history_health(history: Sequence[EpochReport], config: TrainConfig | None = None) -> Health:
    """The health of a run's best weights: its best epoch's, or diverged if the last epoch's
    loss was not finite."""
    if not history:
        return Health("ok")
    if not history[-1].finite:
        return history[-1].health(config)
    best = min((r for r in history if r.finite), key=lambda r: r.val_mse, default=history[-1])
    return best.health(config)


def check_trainable(model_config, config: TrainConfig) -> None:
    """Raise :class:`TrainConfigError` for settings that cannot train together: batch
    normalisation needs batches of at least two windows (``model_config``: a ModelConfig)."""
    if model_config.norm == "batch" and config.batch_size < 2:
        raise TrainConfigError(
            "batch norm cannot train on one window at a time (batch size 1); use a batch of 2 "
            "or more, or group normalisation"
        )


def windows_per_epoch(
    n_train: int, config: TrainConfig, norm: str = "none", world_size: int = 1
) -> int:
    """Training windows one epoch visits: all, or ``config.windows_per_epoch`` if fewer; with
    batch normalisation (``norm="batch"``) a last batch of one window is dropped (batch norm
    cannot normalise a single window). On ``world_size`` ranks (batches of ``world_size ×
    config.batch_size``) a last batch too short to give every rank a window (two with batch
    norm) is dropped."""
    n = min(n_train, config.windows_per_epoch) if config.windows_per_epoch else n_train
    if world_size > 1:
        return ddp.epoch_windows(n, config.batch_size, world_size, 2 if norm == "batch" else 1)
    if norm == "batch" and n > 1 and n % config.batch_size == 1:
        n -= 1
    return n


def _weighted_loss(loss, share: list):
    """``loss`` with its objective times ``share[0]`` (a rank's weight, see
    :func:`.distributed.loss_weight`), read at every call."""

    def weighted(output: torch.Tensor, x: torch.Tensor):
        objective, mse = loss(output, x)
        return (objective if share[0] == 1.0 else objective * share[0]), mse

    return weighted


def _resume_state_for_ranks(path: Path, context: ddp.DistributedContext) -> dict | None:
    """``last.pt`` as read by rank 0 (None if it has none), on every rank; an unreadable one
    raises the same :class:`RunFolderError` everywhere."""
    message, saved = None, None
    if context.is_main and path.exists():
        try:
            saved = load_training_state(path)
        except RunFolderError as exc:
            message = str(exc)
    message, saved = ddp.broadcast_object((message, saved), context)
    if message is not None:
        raise RunFolderError(message)
    return saved


def _validate_sharded(
    model,
    data: WindowDataset,
    indices,
    batch_size: int,
    feeder: BatchFeeder,
    context: ddp.DistributedContext,
) -> ValidationStats:
    """:func:`validate` with the windows shared between the ranks; the same result on each."""
    indices = np.asarray(indices, dtype=np.int64)
    mine = ddp.shard(indices, context.rank, context.world_size)
    per_window, moments = _validation_sums(model, data, mine, batch_size, feeder=feeder)
    per_window, moments = ddp.gather_validation(per_window, moments, context.world_size, context)
    return _validation_stats(per_window, moments, len(indices), data.spec.window_shape())


def set_lr(optimiser, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimiser``."""
    for group in optimiser.param_groups:
        group["lr"] = lr


def training_fractions(
    data: WindowDataset, train_idx: Sequence[int], max_windows: int = 256
) -> dict[str, float]:
    """Phase fractions of (an evenly spaced subset of at most ``max_windows`` of) the training
    windows."""
    idx = np.asarray(train_idx)
    if len(idx) > max_windows:
        idx = idx[np.linspace(0, len(idx) - 1, max_windows).astype(np.int64)]
    counts = np.zeros(3)
    for i in idx:
        f = volume_fractions(data.view(int(i)))
        counts += [f["pore"], f["cbd"], f["active"]]
    counts /= max(len(idx), 1)
    return {"pore": float(counts[0]), "cbd": float(counts[1]), "active": float(counts[2])}


class TimeEstimate:
    """Estimated training time, from the first batches and then from finished epochs.

    Feed it :meth:`batch_done` after every batch and :meth:`epoch_done` after every epoch;
    :meth:`batch_done` returns True once, when an estimate from the first batches is ready
    (after :data:`ESTIMATE_BATCHES` batches past the first, which warms up). Validation is
    estimated as a forward pass, a third of a training step per window.
    """

    ESTIMATE_BATCHES = 5

    def __init__(self, batches: int, epochs: int, val_windows: int, batch_size: int) -> None:
        self.batches, self.epochs = batches, epochs
        self.val_batches = math.ceil(val_windows / batch_size)
        self._count = 0
        self._start = 0.0
        self._epoch_seconds: list[float] = []
        self._skipped = 0
        self.seconds_per_batch = math.nan

    def skip_epochs(self, n: int) -> None:
        """Epochs already done before this estimate started (a resumed run)."""
        self._skipped = n

    def batch_done(self) -> bool:
        self._count += 1
        if self._count == 1:
            self._start = time.perf_counter()
            return False
        ready = self._count == 1 + self.ESTIMATE_BATCHES or self._count == self.batches
        if ready and math.isnan(self.seconds_per_batch):  # once
            self.seconds_per_batch = (time.perf_counter() - self._start) / (self._count - 1)
            return True
        return False

    def epoch_done(self, seconds: float) -> None:
        self._epoch_seconds.append(seconds)

    @property
    def epoch_seconds(self) -> float:
        """Seconds of one epoch: measured once one has finished, else estimated."""
        if self._epoch_seconds:
            return float(np.median(self._epoch_seconds))
        return self.seconds_per_batch * (self.batches + self.val_batches / 3)

    @property
    def total_seconds(self) -> float:
        return self.epoch_seconds * (self.epochs - self._skipped)

    @property
    def remaining_seconds(self) -> float:
        return self.epoch_seconds * (self.epochs - self._skipped - len(self._epoch_seconds))

    def describe(self) -> str:
        """E.g. ``"about 4 min 10 s (8.3 s per epoch, 30 epochs)"``."""
        return (
            f"about {format_duration(self.total_seconds)} "
            f"({self.epoch_seconds:.1f} s per epoch, {self.epochs - self._skipped} epochs)"
        )


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"4 min 10 s"`` or ``"2 h 5 min"``."""
    if not math.isfinite(seconds):
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def out_of_memory_message(
    device: torch.device, batch_size: int, window_shape: Sequence[int], stage: str = "training"
) -> str:
    """The message of a :class:`TrainingMemoryError`: what was used and what to try instead.

    Parameters
    ----------
    device : torch.device
        Where the model ran.
    batch_size : int
        Windows per batch.
    window_shape : sequence of 3 int
        (l, crop, crop) of one window in voxels.
    stage : str
        ``"training"`` or ``"validation"``.

    Returns
    -------
    str
        E.g. ``"ran out of memory on cuda during training with batch 8 of 24x224x224 windows;
        try a smaller batch (e.g. 4) or crop"``.
    """
    shape = "x".join(str(int(n)) for n in window_shape)
    if batch_size > 1:
        advice = f"try a smaller batch (e.g. {batch_size // 2}) or crop"
    else:
        advice = "try a smaller crop or window length (the batch is already 1)"
    return (
        f"ran out of memory on {device.type} during {stage} with batch {batch_size} of "
        f"{shape} windows; {advice}"
    )


def run_training(
    model: ConvAutoEncoder3d, data: WindowDataset, config: TrainConfig, **kwargs
) -> TrainResult:
    """Drive :func:`train` to the end and return its :class:`TrainResult`."""
    generator = train(model, data, config, **kwargs)
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


#: Most voxels that validation, evaluation and encoding push through the model at once: two
#: paper windows (l = 24, crop 224). A batch of 8 such windows needs 220-290 MiB of
#: activations, 2 need 55-75 MiB (less than one training step), at about the same speed on a
#: CPU; windows of the quick preset (8 x 64 x 64) still go 8 or more at a time.
INFERENCE_CHUNK_VOXELS = 2 * 24 * 224 * 224


def inference_batch_size(batch_size: int, window_shape: Sequence[int]) -> int:
    """Windows per inference chunk: ``batch_size``, capped at :data:`INFERENCE_CHUNK_VOXELS`.

    Parameters
    ----------
    batch_size : int
        The requested number of windows per chunk.
    window_shape : sequence of 3 int
        (l, crop, crop) of one window.

    Returns
    -------
    int
        At least 1, at most ``batch_size``.
    """
    voxels = max(1, math.prod(int(n) for n in window_shape))
    return max(1, min(int(batch_size), INFERENCE_CHUNK_VOXELS // voxels))


@dataclass(frozen=True)
class ValidationStats:
    """Per-window MSE of some windows and how much their reconstruction varies.

    ``per_window``: float64 (n,) MSE of network values; ``nmse``: their mean over the
    variance of the originals' values; ``spread``: std of the reconstructions' values over the
    originals' (see :mod:`.health`).
    """

    per_window: np.ndarray
    nmse: float
    spread: float

    @property
    def mse(self) -> float:
        return float(np.mean(self.per_window)) if len(self.per_window) else math.nan


@torch.inference_mode()
def validate(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    indices: Sequence[int],
    batch_size: int = 8,
    *,
    feeder: BatchFeeder | None = None,
) -> ValidationStats:
    """Per-window reconstruction MSE (network values) of windows ``indices``, with NMSE and
    spread.

    Windows go through the model ``batch_size`` at a time, fewer for large windows (see
    :func:`inference_batch_size`), so the memory peak does not grow with ``batch_size``.
    ``feeder``: a :class:`BatchFeeder` of ``data`` for the model's device (``core.train``
    passes its own); by default one is made for this call.
    """
    per_window, moments = _validation_sums(model, data, indices, batch_size, feeder=feeder)
    return _validation_stats(per_window, moments, len(indices), data.spec.window_shape())


@torch.inference_mode()
def _validation_sums(
    model,
    data: WindowDataset,
    indices: Sequence[int],
    batch_size: int,
    *,
    feeder: BatchFeeder | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window MSEs (float64 (n,)) of windows ``indices`` and the float64 sums of x, x²,
    y, y² (original x, reconstruction y) over their voxels."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sum_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    out = np.empty(len(indices), dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    batch_size = inference_batch_size(batch_size, data.spec.window_shape())
    if feeder is None:  # one chunk: not worth putting the stacks on a GPU first
        feeder = BatchFeeder(data, device, mode="host" if len(indices) <= batch_size else None)
    errors = []
    # sums of x, x², y, y² (original x, reconstruction y) in float64 for the spread
    moments = torch.zeros(4, dtype=torch.float64, device=sum_device)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        x = feeder(chunk)
        y = model.values(model(x)).float()
        errors.append((y - x).pow(2).flatten(1).mean(1))
        xd, yd = x.to(sum_device, torch.float64), y.to(sum_device, torch.float64)
        moments += torch.stack([xd.sum(), xd.square().sum(), yd.sum(), yd.square().sum()])
    if errors:  # one copy back at the end: the GPU is not made to wait for every chunk
        out[:] = torch.cat(errors).cpu().double().numpy()  # on the CPU: MPS has no float64
    model.train(was_training)
    return out, moments.cpu().numpy()


def _validation_stats(
    per_window: np.ndarray, moments: np.ndarray, n_windows: int, window_shape: Sequence[int]
) -> ValidationStats:
    """:class:`ValidationStats` from :func:`_validation_sums` over ``n_windows`` windows."""
    n = max(n_windows * math.prod(window_shape), 1)
    sx, sxx, sy, syy = (float(v) for v in moments)
    var_x = max(sxx / n - (sx / n) ** 2, 0.0)
    var_y = max(syy / n - (sy / n) ** 2, 0.0)
    mean_mse = float(per_window.mean()) if len(per_window) else math.nan
    nmse = mean_mse / var_x if var_x > 0 else math.nan
    spread = math.sqrt(var_y / var_x) if var_x > 0 and math.isfinite(var_y) else math.nan
    return ValidationStats(per_window, nmse, spread)


def window_mse(
    model: ConvAutoEncoder3d,
    data: WindowDataset,
    indices: Sequence[int],
    batch_size: int = 8,
    *,
    feeder: BatchFeeder | None = None,
) -> np.ndarray:
    """Per-window reconstruction MSE (network values) of windows ``indices``; float64 (n,).
    See :func:`validate`."""
    return validate(model, data, indices, batch_size, feeder=feeder).per_window
