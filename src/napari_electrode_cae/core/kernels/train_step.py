"""One training step (forward, MSE loss, backward, Adam), replayed from a CUDA graph on GPUs.

With the paper's batch of 2 windows a GPU finishes a step's kernels faster than Python and
PyTorch can launch them: on an H200 the eager step takes 3.7 ms at l = 4, of which the GPU
works a fraction. :class:`TrainingStep` therefore runs the first full-size steps eagerly (they
warm up cuDNN's algorithm choice, the optimiser state and the allocator, on a side stream as
CUDA graphs need), then records one step into a CUDA graph and replays it for every further
batch of that size: one launch per step. Batches of another size (the last of an epoch) and
every step off CUDA run eagerly. The replayed step computes what the eager one computes, with
the same kernels (tested in ``tests/test_cuda.py``).

If recording fails (a torch that cannot capture some operation), or the warm-up steps used more
than :data:`GRAPH_MEMORY_FRACTION` of the GPU's memory (the graph keeps a step's memory
reserved), training goes on eagerly and :attr:`TrainingStep.graph_error` says why.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: Use CUDA graphs for full-size batches on CUDA (tests switch it off to compare).
USE_CUDA_GRAPHS = True
#: Eager full-size steps before recording (cuDNN autotuning, optimiser state, allocator).
WARMUP_STEPS = 3
#: No graph when the warm-up steps peaked above this share of the GPU's memory: the graph
#: keeps a step's activations reserved, and the eager last batch and the validation need
#: theirs on top.
GRAPH_MEMORY_FRACTION = 0.4


def autocast_for(device: torch.device, precision: str, cache: bool = True):
    """The autocast context of a training step: bfloat16 for ``"bf16"``, none for ``"fp32"``.

    ``cache=False`` while recording a CUDA graph (autocast's cast cache must not outlive it).
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


class TrainingStep:
    """Callable: a batch ``x`` (on the model's device) -> its loss as a detached 0-d tensor.

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    optimiser
        Has ``zero_grad(set_to_none=True)`` and ``step()`` (``torch.optim.Adam``).
    device : torch.device
        The model's device.
    precision : {"fp32", "bf16"}
        See ``core.training.PRECISION_CHOICES``.
    batch_size : int
        The full batch size: only batches of this size are replayed from the graph.
    use_graph : bool, optional
        Default :data:`USE_CUDA_GRAPHS` on CUDA, never elsewhere.
    loss : callable, optional
        ``(output, x) -> (objective, mse)`` (:func:`.losses.make_loss`); the step minimises
        the objective and returns the MSE. Default: the paper's MSE.
    grad_clip : float
        Clip the gradients' total norm to this before each step; 0 does not clip.
    """

    def __init__(
        self,
        model: nn.Module,
        optimiser,
        device: torch.device,
        precision: str,
        batch_size: int,
        use_graph: bool | None = None,
        loss=None,
        grad_clip: float = 0.0,
    ) -> None:
        self.model, self.optimiser = model, optimiser
        self.device, self.precision, self.batch_size = device, precision, batch_size
        if use_graph is None:
            use_graph = USE_CUDA_GRAPHS
        self.use_graph = bool(use_graph) and device.type == "cuda"
        self.loss = loss if loss is not None else _mse
        self.grad_clip = float(grad_clip)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        self._warm = 0
        self._side: torch.cuda.Stream | None = None
        self._static_x: torch.Tensor | None = None
        self._static_loss: torch.Tensor | None = None

    @property
    def replaying(self) -> bool:
        """True once the step is recorded and full-size batches replay it."""
        return self.graph is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_graph or x.shape[0] != self.batch_size:
            return self._eager(x)
        if self.graph is not None:
            return self._replay(x)
        main = torch.cuda.current_stream(self.device)
        if self._warm < WARMUP_STEPS:
            self._warm += 1
            if self._side is None:
                self._side = torch.cuda.Stream(self.device)
            self._side.wait_stream(main)
            with torch.cuda.stream(self._side):
                loss = self._eager(x)
            main.wait_stream(self._side)
            loss.record_stream(main)  # made on the side stream, used on the main one
            return loss
        peak, total = torch.cuda.max_memory_allocated(self.device), self._total_memory()
        if peak > GRAPH_MEMORY_FRACTION * total:
            self.use_graph = False
            self.graph_error = (
                f"not recorded: a step peaked at {peak / 2**20:.0f} MiB of "
                f"{total / 2**20:.0f} MiB; the graph would keep that reserved"
            )
            return self._eager(x)
        try:
            self._record(x)
        except RuntimeError as exc:  # go on eagerly; nothing of the step was applied
            # A failed recording can leave this thread on the capture stream: go back to the
            # stream it was on and let everything queued there finish.
            torch.cuda.set_stream(main)
            torch.cuda.synchronize(self.device)
            self.graph, self._static_x, self._static_loss = None, None, None
            self.use_graph = False
            cause = exc.__context__ if exc.__context__ is not None else exc
            self.graph_error = " ".join(str(cause).split())[:200]
            return self._eager(x)
        return self._replay(x)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        self._static_x.copy_(x)
        self.graph.replay()
        return self._static_loss.clone()  # the static loss is overwritten by the next replay

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        self.optimiser.zero_grad(set_to_none=True)
        with autocast_for(self.device, self.precision):
            objective, mse = self.loss(self.model(x), x)
        objective.backward()
        self._clip()
        self.optimiser.step()
        return mse.detach()

    def _clip(self) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)

    def _record(self, x: torch.Tensor) -> None:
        """Record one step on ``self._static_x`` (recording runs nothing; replay does)."""
        self._static_x = torch.empty_like(x)
        self._static_x.copy_(x)
        graph = torch.cuda.CUDAGraph()
        self.optimiser.zero_grad(set_to_none=True)
        # thread_local: a GPU allocation by another thread (a GUI decode) meanwhile does not
        # invalidate the recording
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            with autocast_for(self.device, self.precision, cache=False):
                objective, loss = self.loss(self.model(self._static_x), self._static_x)
            objective.backward()
            self._clip()
            self.optimiser.step()
        # detached: it shares the replayed memory, but does not keep the recorded autograd
        # graph (and its AccumulateGrad nodes, bound to the recording stream) alive for the
        # eager steps that follow
        self._static_loss = loss.detach()
        self.graph = graph

    def _total_memory(self) -> int:
        return torch.cuda.get_device_properties(self.device).total_memory

    def release(self) -> None:
        """Drop the graph and its memory pool."""
        self.graph = self._static_x = self._static_loss = None


def _mse(output: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's loss: MSE of the network values, as (objective, mse)."""
    loss = nn.functional.mse_loss(output.float(), x)
    return loss, loss.detach()
