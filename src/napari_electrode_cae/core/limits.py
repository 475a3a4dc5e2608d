"""Bounds on what a file or a flag may make the tool do: memory, sizes, file kinds.

A file is untrusted: a 73 KB compressed TIFF can decode to gigabytes, a config.json can name a
window of a million slices, a "file" can be a FIFO that never ends or a device that never stops.
Every size that comes from a file or a flag is checked here *before* anything is allocated or
read, and a refusal names the limit and how to raise it.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from .errors import ElectrodeCAEError, ResourceLimitError, RunFolderError

GIB = 2**30
#: Default bound on the memory a stack may take once decoded (``--max-stack-gib`` raises it).
DEFAULT_MAX_STACK_GIB = 4.0
#: The largest small file the tool reads whole (config.json, history.csv, report.json, sidecars).
MAX_TEXT_FILE_BYTES = 64 * 2**20
#: Bytes per window of the index grid (stack, z, y, x as int64) plus meshgrid temporaries.
GRID_BYTES_PER_WINDOW = 4 * 8 + 3 * 8
#: Training keeps each parameter about five times: weights, gradient, two Adam moments, best copy.
TRAINING_COPIES_PER_PARAMETER = 5


def memory_bytes() -> int | None:
    """The memory this process may use: physical memory, or a lower address-space limit.

    None where the platform does not say.
    """
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            sizes.append(int(soft))
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    return min(sizes) if sizes else None


def gib(nbytes: float) -> str:
    """``nbytes`` in GiB (or MiB below 1 GiB) for messages."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:.1f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"


def stack_limit_bytes(max_stack_gib: float | None = None) -> int:
    """The bound on a decoded stack: ``max_stack_gib`` if given, else the default bound, and
    never more than half this machine's memory unless ``max_stack_gib`` asks for it."""
    if max_stack_gib is not None:
        if not (
            isinstance(max_stack_gib, (int, float))
            and math.isfinite(max_stack_gib)
            and max_stack_gib > 0
        ):
            raise ResourceLimitError(
                f"the stack size limit must be a positive number of GiB, got {max_stack_gib!r}"
            )
        return int(max_stack_gib * GIB)
    limit = int(DEFAULT_MAX_STACK_GIB * GIB)
    memory = memory_bytes()
    return min(limit, memory // 2) if memory else limit


def check_decoded_size(nbytes: int, where: str, max_stack_gib: float | None = None) -> None:
    """Refuse to decode ``nbytes`` of image data above the stack limit or the machine's memory.

    Raises
    ------
    ResourceLimitError
        Naming the decoded size, the limit and ``--max-stack-gib``.
    """
    memory = memory_bytes()
    if memory is not None and nbytes > memory:
        raise ResourceLimitError(
            f"{where} decodes to {gib(nbytes)}, more than this machine's memory "
            f"({gib(memory)}); it was not read"
        )
    limit = stack_limit_bytes(max_stack_gib)
    if nbytes > limit:
        raise ResourceLimitError(
            f"{where} decodes to {gib(nbytes)}, more than the {gib(limit)} limit for one stack; "
            f"it was not read (pass --max-stack-gib {math.ceil(nbytes / GIB)} to read it, or "
            "max_stack_gib= in Python)"
        )


def check_window_grid(n_windows: int, what: str) -> None:
    """Refuse a window index grid that would not fit in memory (e.g. stride 1, tile stride 1).

    Raises
    ------
    ResourceLimitError
        Naming the window count, the grid's memory and what to change.
    """
    nbytes = n_windows * GRID_BYTES_PER_WINDOW
    memory = memory_bytes()
    limit = memory // 4 if memory else 8 * GIB
    if nbytes > limit:
        raise ResourceLimitError(
            f"{what} make {n_windows:,} windows, whose index alone needs {gib(nbytes)} (more "
            f"than a quarter of the {gib(limit * 4)} memory); use a larger --stride or "
            "--tile-stride"
        )


def parameter_count(model_config) -> int:
    """Parameters of the model ``model_config`` (a ModelConfig) describes, without allocating
    it (built on PyTorch's ``meta`` device)."""
    import torch

    from .model import build_model

    with torch.device("meta"):
        model = build_model(model_config)
    return sum(p.numel() for p in model.parameters())


def meta_state_shapes(model_config) -> dict[str, tuple[int, ...]]:
    """Shapes of the state dict of the model ``model_config`` describes, without allocating it."""
    import torch

    from .model import build_model

    with torch.device("meta"):
        model = build_model(model_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_model_size(model_config, *, training: bool, where: str = "the model") -> int:
    """Refuse a model whose weights (and, for ``training``, gradients and optimiser state) do
    not fit this machine's memory; returns its parameter count.

    Raises
    ------
    ResourceLimitError
        Naming the parameter count, the memory it needs and the fields that set it.
    """
    count = parameter_count(model_config)
    nbytes = count * 4 * (TRAINING_COPIES_PER_PARAMETER if training else 1)
    memory = memory_bytes()
    if memory is not None and nbytes > memory // 2:
        c = model_config
        raise ResourceLimitError(
            f"{where} has {count:,} parameters ({gib(nbytes)} "
            + ("with gradients and optimiser state" if training else "of weights")
            + f"), more than half this machine's {gib(memory)} memory; lower hidden "
            f"({c.hidden}), latent ({c.latent_dim}) or crop ({c.crop})"
        )
    return count


def check_regular_file(path: Path, what: str = "file", error=RunFolderError) -> os.stat_result:
    """``os.stat`` of ``path`` (following links) if it is a regular file, else ``error``.

    A FIFO, socket or device (or a link to one) is refused before it is opened: reading it could
    block forever or never end.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as exc:
        raise error(f"cannot access {what} {path} ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a file"
        )
        raise error(f"{what} {path} is {kind}, not a regular file; it was not read")
    return info


def read_bounded_bytes(
    path: str | os.PathLike[str],
    what: str = "file",
    *,
    max_bytes: int = MAX_TEXT_FILE_BYTES,
    error=RunFolderError,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; never blocks on a FIFO.

    The file is opened non-blocking and checked with ``fstat`` on the opened descriptor, so a
    file swapped for a FIFO between a check and the open is refused too.
    """
    path = Path(path)
    check_regular_file(path, what, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"cannot open {what} {path} ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file; it was not read")
        if info.st_size > max_bytes:
            raise error(
                f"{what} {path} is {gib(info.st_size)}, more than the "
                f"{gib(max_bytes)} such a file may have; it was not read"
            )
        payload = handle.read(max_bytes + 1)
    if len(payload) > max_bytes:
        raise error(f"{what} {path} grew beyond {gib(max_bytes)} while being read")
    return payload


def read_bounded_text(
    path: str | os.PathLike[str],
    what: str = "file",
    *,
    max_bytes: int = MAX_TEXT_FILE_BYTES,
    error=RunFolderError,
) -> str:
    """UTF-8 text of a regular file of at most ``max_bytes`` (see :func:`read_bounded_bytes`)."""
    payload = read_bounded_bytes(path, what, max_bytes=max_bytes, error=error)
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def array_nbytes(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python ints: no overflow)."""
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize


__all__ = [
    "DEFAULT_MAX_STACK_GIB",
    "ElectrodeCAEError",
    "ResourceLimitError",
    "array_nbytes",
    "check_decoded_size",
    "check_model_size",
    "check_regular_file",
    "check_window_grid",
    "meta_state_shapes",
    "memory_bytes",
    "parameter_count",
    "read_bounded_bytes",
    "read_bounded_text",
    "stack_limit_bytes",
]
