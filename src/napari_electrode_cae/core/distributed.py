"""Data-parallel training across processes, GPUs and nodes under ``torchrun``.

``torchrun --nproc-per-node N -m napari_electrode_cae.cli train …`` starts N copies of the
command; each reads torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) and :func:`setup` joins them into one process group: NCCL on
CUDA GPUs (one GPU per local rank), Gloo on the CPU. ``core.train(..., distributed=ctx)`` then
wraps the model in :class:`torch.nn.parallel.DistributedDataParallel`:

* every optimiser step takes one *global* batch of ``world_size × batch_size`` windows from the
  epoch's seeded order and each rank trains on its share (:func:`shard`), so a run on N ranks
  follows the same trajectory as one process with batch ``N × batch_size`` (the effective batch
  recorded in the run's ``config.json``); a short last batch is split as evenly as possible and
  each rank's loss weighted by its share, so the averaged gradient is the global batch's;
* the validation windows are split between the ranks and their errors gathered
  (:func:`gather_validation`), the epoch's training loss summed over ranks
  (:func:`all_reduce_sum`): every rank sees the same :class:`~.training.EpochReport` and takes
  the same decisions (best epoch, divergence stop);
* rank 0 alone writes checkpoints and the run folder (:attr:`DistributedContext.is_main`); on
  ``--resume`` it reads ``last.pt`` and sends it to the others (no shared file system needed).

A rank that loses its peers (one was stopped with Ctrl-C or killed) gets a
:class:`PeerLostError` instead of a hang or a traceback, so rank 0 can still save what it has.
The GUI never calls :func:`setup`: this module changes process-wide state (the current CUDA
device, the default process group) only for a command started by torchrun.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ElectrodeCAEError

#: torchrun's environment variables that :func:`from_environment` reads.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective waits for a rank that does not answer before failing.
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(ElectrodeCAEError):
    """Distributed training cannot start or go on (bad torchrun environment, no GPU per rank)."""


class PeerLostError(DistributedError):
    """Another rank stopped (Ctrl-C, killed, crashed) while this one waited for it."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a distributed training.

    Attributes
    ----------
    rank, world_size : int
        This process's global rank and the number of processes.
    local_rank : int
        Rank on this node (the GPU index on a multi-GPU node).
    backend : {"gloo", "nccl"}
    device : torch.device
        The device this rank trains on (``cuda:LOCAL_RANK`` with NCCL).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints."""
        return self.rank == 0

    def describe(self) -> dict:
        """What the run's ``config.json`` records about it (without the batch)."""
        return {"world_size": self.world_size, "backend": self.backend, "device": self.device.type}


def environment_ranks(environ=None) -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` from torchrun's variables, or None outside torchrun.

    Raises
    ------
    DistributedError
        If the variables are present but not whole numbers or inconsistent.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    try:
        world = int(environ["WORLD_SIZE"])
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (as torchrun sets them), got "
            + ", ".join(f"{k}={environ.get(k)!r}" for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"rank {rank} does not fit world size {world} (local rank {local})")
    return rank, local, world


def choose_backend(device: str = "auto") -> str:
    """``"nccl"`` when training on CUDA GPUs (``device`` "auto" with a GPU, or "cuda"), else
    ``"gloo"``."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "nccl"
    if device == "mps":
        raise DistributedError(
            "distributed training runs on CUDA GPUs (NCCL) or on the CPU "
            "(Gloo), not on Apple MPS; use --device cpu"
        )
    return "gloo"


def setup(
    device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S, environ=None
) -> DistributedContext | None:
    """Join torchrun's process group; None when not started by torchrun (or one process).

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        The training device asked for; decides the backend (:func:`choose_backend`). With NCCL
        each rank takes the GPU of its local rank.
    timeout_s : float
        How long collectives wait for a silent rank.

    Raises
    ------
    DistributedError
        A bad environment, fewer GPUs on a node than ranks on it, or a failed rendezvous.
    """
    ranks = environment_ranks(environ)
    if ranks is None or ranks[2] == 1:
        return None
    rank, local, world = ranks
    backend = choose_backend(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError("device 'cuda' asked for but this node has no CUDA GPU")
        count = torch.cuda.device_count()
        if local >= count:
            raise DistributedError(
                f"local rank {local} has no GPU of its own ({count} on this node); start at "
                f"most {count} processes per node (--nproc-per-node {count})"
            )
        torch.cuda.set_device(local)
        target = torch.device("cuda", local)
    else:
        target = torch.device("cpu")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                init_method="env://",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(
                f"cannot join the process group ({backend}, rank {rank} of "
                f"{world}): {_first_line(exc)}"
            ) from exc
    return DistributedContext(rank, world, local, backend, target)


def teardown() -> None:
    """Leave the process group (if one was joined); safe to call twice or after a peer died."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError, ValueError):
            dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistributedContext | None]:
    """:func:`setup` on entry and :func:`teardown` on exit, also after an error or Ctrl-C."""
    context = setup(device)
    try:
        yield context
    finally:
        teardown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


#: Words of the errors Gloo and NCCL raise (as plain RuntimeErrors) when a peer went away.
_PEER_ERROR_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer")


def is_peer_error(exc: BaseException) -> bool:
    """True for an error of a collective whose peer went away (not, e.g., out of memory)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in _PEER_ERROR_WORDS)


@contextlib.contextmanager
def peer_guard(context: DistributedContext) -> Iterator[None]:
    """Turn a collective's failure because a peer went away into :class:`PeerLostError`; other
    errors (out of memory, bugs) pass unchanged."""
    try:
        yield
    except RuntimeError as exc:
        if not is_peer_error(exc):
            raise
        raise PeerLostError(
            f"rank {context.rank} of {context.world_size}: another rank stopped "
            f"({_first_line(exc)})"
        ) from exc


# --------------------------------------------------------------------------- batches


def global_batch_size(batch_size: int, context: DistributedContext | None) -> int:
    """Windows per optimiser step over all ranks: ``world_size × batch_size``."""
    return batch_size * (context.world_size if context is not None else 1)


def shard(indices: Sequence[int] | np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``indices``; shares differ by at most one window.

    The shares of ranks 0 … world_size-1, concatenated, are ``indices`` in order.
    """
    indices = np.asarray(indices, dtype=np.int64)
    return np.array_split(indices, world_size)[rank]


def loss_weight(local: int, total: int, world_size: int) -> float:
    """Factor on a rank's mean loss so that DDP's gradient average (the mean over ranks) is the
    gradient of the mean over the whole global batch: ``local × world_size / total`` (1.0 when
    every rank has the same share)."""
    if total <= 0:
        return 0.0
    return local * world_size / total


def epoch_windows(n: int, batch_size: int, world_size: int, min_per_rank: int = 1) -> int:
    """Windows of an epoch of ``n`` that leave every rank at least ``min_per_rank`` windows in
    the last (short) global batch: a remainder too small to share is dropped."""
    if world_size <= 1 and min_per_rank <= 1:
        return n
    rest = n % (batch_size * world_size)
    if 0 < rest < world_size * min_per_rank and n - rest > 0:
        return n - rest
    return n


# --------------------------------------------------------------------------- collectives


def broadcast_object(value, context: DistributedContext):
    """``value`` of rank 0, on every rank (pickled; for small objects and state dicts)."""
    box = [value if context.is_main else None]
    with peer_guard(context):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (in place, also returned). With NCCL the tensor
    must be on this rank's GPU; with Gloo on the CPU."""
    with peer_guard(context):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_validation(
    per_window: np.ndarray, moments: np.ndarray, world_size: int, context: DistributedContext
) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's validation errors, in the order of the windows before :func:`shard`, and the
    moments summed over ranks.

    Parameters
    ----------
    per_window : float64 array (n_r,)
        This rank's per-window MSEs (of its :func:`shard` of the validation windows).
    moments : float64 array (4,)
        This rank's sums of x, x², y, y² (original x, reconstruction y).
    """
    gathered: list = [None] * world_size
    with peer_guard(context):
        dist.all_gather_object(
            gathered, (np.asarray(per_window, np.float64), np.asarray(moments, np.float64))
        )
    errors = np.concatenate([g[0] for g in gathered]) if gathered else np.empty(0)
    total = np.sum([g[1] for g in gathered], axis=0)
    return errors, total


def barrier(context: DistributedContext) -> None:
    """Wait for every rank."""
    with peer_guard(context):
        dist.barrier()


def wrap_model(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel`, which copies rank 0's
    weights and buffers to every rank. Batch-norm layers keep per-rank statistics (of each
    rank's share of the batch); DDP sends rank 0's running statistics to the others."""
    from torch.nn.parallel import DistributedDataParallel

    with peer_guard(context):
        if context.device.type == "cuda":
            return DistributedDataParallel(
                model, device_ids=[context.device.index], output_device=context.device.index
            )
        return DistributedDataParallel(model)
