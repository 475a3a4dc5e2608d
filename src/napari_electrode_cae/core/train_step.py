"""One training step (forward, MSE loss, backward, Adam), replayed from a CUDA graph on GPUs.

With the paper's batch of 2 windows a GPU finishes a step's kernels faster than Python and
PyTorch can launch them: on an H200 the eager step takes 3.7 ms at l = 4, of which the GPU
works a fraction. :class:`TrainingStep` therefore runs the first full-size steps eagerly (they
warm up cuDNN's algorithm choice, the optimiser state and the allocator, on a side stream as
CUDA graphs need), then records one step into a CUDA graph and replays it for every further
batch of that size: one launch per step. Batches of another size (the last of an epoch) and
every step off CUDA run eagerly. The replayed step computes what the eager one computes, with
the same kernels (tested in ``tests/test_cuda.py``).

If recording fails (a torch that cannot capture some operation), training goes on eagerly and
:attr:`TrainingStep.graph_error` says why.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: Use CUDA graphs for full-size batches on CUDA (tests switch it off to compare).
USE_CUDA_GRAPHS = True
#: Eager full-size steps before recording (cuDNN autotuning, optimiser state, allocator).
WARMUP_STEPS = 3


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
        Has ``zero_grad(set_to_none=True)`` and ``step()`` (``core.adam.FusedAdam``).
    device : torch.device
        The model's device.
    precision : {"fp32", "bf16"}
        See ``core.training.PRECISION_CHOICES``.
    batch_size : int
        The full batch size: only batches of this size are replayed from the graph.
    use_graph : bool, optional
        Default :data:`USE_CUDA_GRAPHS` on CUDA, never elsewhere.
    """

    def __init__(self, model: nn.Module, optimiser, device: torch.device, precision: str,
                 batch_size: int, use_graph: bool | None = None) -> None:
        self.model, self.optimiser = model, optimiser
        self.device, self.precision, self.batch_size = device, precision, batch_size
        if use_graph is None:
            use_graph = USE_CUDA_GRAPHS
        self.use_graph = bool(use_graph) and device.type == "cuda"
        self.loss_fn = nn.MSELoss()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        self._warm = 0
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
            self._static_x.copy_(x)
            self.graph.replay()
            return self._static_loss.clone()  # the static loss is overwritten next time
        if self._warm < WARMUP_STEPS:
            self._warm += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss = self._eager(x)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return loss
        try:
            self._record(x)
        except RuntimeError as exc:  # go on eagerly; nothing of the step was applied
            self.graph, self.use_graph = None, False
            self.graph_error = " ".join(str(exc).split())[:200]
            return self._eager(x)
        self._static_x.copy_(x)
        self.graph.replay()
        return self._static_loss.clone()

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        self.optimiser.zero_grad(set_to_none=True)
        with autocast_for(self.device, self.precision):
            loss = self.loss_fn(self.model(x).float(), x)
        loss.backward()
        self.optimiser.step()
        return loss.detach()

    def _record(self, x: torch.Tensor) -> None:
        """Record one step on ``self._static_x`` (recording runs nothing; replay does)."""
        self._static_x = torch.empty_like(x)
        self._static_x.copy_(x)
        graph = torch.cuda.CUDAGraph()
        self.optimiser.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            with autocast_for(self.device, self.precision, cache=False):
                loss = self.loss_fn(self.model(self._static_x).float(), self._static_x)
            loss.backward()
            self.optimiser.step()
        # detached: it shares the replayed memory, but does not keep the recorded autograd
        # graph (and its AccumulateGrad nodes, bound to the recording stream) alive for the
        # eager steps that follow
        self._static_loss = loss.detach()
        self.graph = graph

    def release(self) -> None:
        """Drop the graph and its memory pool."""
        self.graph = self._static_x = self._static_loss = None
