"""Batches of windows on the device that trains: no copies on the CPU, no stalls on a GPU.

:class:`BatchFeeder` hands ``core.train`` its batches as float32 tensors (pore -1, CBD 0,
active +1) already on the training device:

* **CPU** (and Apple MPS): :meth:`WindowDataset.batch`, one float32 copy per batch.
* **CUDA, stacks resident** (the usual case): the uint8 stacks are copied to the GPU once
  (1 byte per voxel; a 256³ stack is 16 MiB) and every batch is cut out of them on the GPU.
  Nothing crosses the PCIe bus per batch and the CPU only queues a few slicing kernels.
* **CUDA, staged** (when the stacks would take more than :data:`RESIDENT_FRACTION` of the free
  GPU memory): each batch is written into one of two pinned (page-locked) host buffers and
  copied with ``non_blocking=True``, so the copy of batch k+1 overlaps the step of batch k; an
  event per buffer keeps a buffer from being rewritten while its copy is in flight.

All three give the same values as ``WindowDataset.batch`` (tested, on CUDA by
``tests/test_cuda.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..windows import WindowDataset

#: Largest share of the GPU's free memory that resident stacks may take.
RESIDENT_FRACTION = 0.25

FEED_MODES = ("host", "resident", "staged")


def stack_bytes(data: WindowDataset) -> int:
    """Bytes of all of ``data``'s stacks as uint8 (what resident mode puts on the device)."""
    return sum(int(np.prod(s.shape)) for s in data.stacks)


def choose_mode(data: WindowDataset, device: torch.device) -> str:
    """``"host"`` off CUDA; on CUDA ``"resident"`` if the stacks fit, else ``"staged"``."""
    if device.type != "cuda":
        return "host"
    free, _total = torch.cuda.mem_get_info(device)
    return "resident" if stack_bytes(data) <= RESIDENT_FRACTION * free else "staged"


class BatchFeeder:
    """Callable: window indices -> (N, 1, l, crop, crop) float32 tensor on ``device``.

    Parameters
    ----------
    data : WindowDataset
        The windows.
    device : torch.device or str
        Where the batches are wanted.
    mode : {"host", "resident", "staged"}, optional
        Default: :func:`choose_mode`. ``"resident"`` also works on the CPU (the stacks then
        become torch tensors that batches are cut from); ``"staged"`` needs CUDA.
    """

    def __init__(
        self, data: WindowDataset, device: torch.device | str, mode: str | None = None
    ) -> None:
        self.data = data
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.mode = choose_mode(data, self.device) if mode is None else mode
        if self.mode not in FEED_MODES:
            raise ValueError(f"feed mode must be one of {FEED_MODES}, got {self.mode!r}")
        if self.mode == "staged" and self.device.type != "cuda":
            raise ValueError("staged feeding (pinned buffers) needs a CUDA device")
        self._stacks: list[torch.Tensor] = []
        if self.mode == "resident":
            # np.ascontiguousarray reads a memory-mapped stack once; the device copy is uint8.
            # A read-only (memory-mapped) stack is only read here: torch's warning about
            # non-writable arrays does not apply.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writ")
                self._stacks = [
                    torch.from_numpy(np.ascontiguousarray(s.labels)).to(self.device)
                    for s in data.stacks
                ]
        self._pinned: dict[int, list] = {}  # batch size -> [buffer, event] x 2
        self._turn = 0

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        if self.mode == "resident":
            return self._resident(indices)
        if self.mode == "staged":
            return self._staged(indices)
        return self.data.batch(indices).to(self.device)

    def _resident(self, indices: Sequence[int]) -> torch.Tensor:
        l, c = self.data.spec.length, self.data.spec.crop
        out = torch.empty((len(indices), 1, l, c, c), dtype=torch.float32, device=self.device)
        for row, index in enumerate(indices):
            s, z, y, x = self.data.origin(int(index))
            out[row, 0].copy_(self._stacks[s][z : z + l, y : y + c, x : x + c])
        return out.sub_(1.0)

    def _staged(self, indices: Sequence[int]) -> torch.Tensor:
        n = len(indices)
        if n not in self._pinned:
            shape = (n, 1, self.data.spec.length, self.data.spec.crop, self.data.spec.crop)
            self._pinned[n] = [
                [torch.empty(shape, dtype=torch.float32, pin_memory=True), None] for _ in range(2)
            ]
        slot = self._pinned[n][self._turn]
        self._turn = 1 - self._turn
        buffer, copied = slot
        if copied is not None:
            copied.synchronize()  # the copy that last read this buffer has finished
        host = buffer.numpy()
        for row, index in enumerate(indices):
            np.subtract(self.data.view(int(index)), 1, out=host[row, 0], dtype=np.float32)
        batch = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        slot[1] = event
        return batch

    def release(self) -> None:
        """Drop the device copies and pinned buffers (the feeder is unusable afterwards)."""
        self._stacks = []
        self._pinned = {}
