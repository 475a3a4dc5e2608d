"""Keep freed activation buffers in the process while training (glibc only; opt-in).

Only ``electrode-cae train --tune-malloc`` uses this: it changes the whole process's malloc
settings, which a library (``core.train``) or a napari plugin must not do behind its host's back.
Setting ``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=268435456`` in the
environment before Python starts has the same effect for any program.

Every training step allocates and frees the same few tens of MiB-sized tensors. With glibc's
default settings, blocks that big are returned to the kernel when freed and faulted in again,
page by page, on the next step: on the paper's shapes that is ~60,000 page faults and 40-80 %
more time per step on a 2-core CPU. Raising glibc's mmap and trim thresholds for the duration
of training keeps those blocks in the heap for reuse; afterwards the thresholds go back to
where glibc's own dynamic thresholds settle in such a process (32 MiB / 64 MiB) and the kept
memory is handed back (``malloc_trim``). The price is some heap
fragmentation: the peak RSS of a paper-sized training run is ~45 MiB higher
(``benchmarks/memory_training.py``).

Nothing happens on other C libraries, when the user tunes malloc through the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``), or with
``ELECTRODE_CAE_KEEP_BUFFERS=0`` (lower peak memory, slower steps).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 256 * 2**20  # larger than any single activation of the paper model (~20 MiB)
# Afterwards: where glibc's dynamic thresholds settle in a process that frees large tensors
# (mmap threshold raised to the largest freed block, at most 32 MiB; trim threshold twice
# that). Any mallopt call switches the dynamic adjustment off for good, so restoring glibc's
# initial 128 KiB would leave every later block over 128 KiB mmapped and faulted in anew.
_RESTORE_MMAP_BYTES = 32 * 2**20
_RESTORE_TRIM_BYTES = 64 * 2**20
_ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_users = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _ENV_SETTINGS):
        return None
    if os.environ.get("ELECTRODE_CAE_KEEP_BUFFERS", "1").strip() in ("0", "false", "no"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for name in ("mallopt", "malloc_trim", "gnu_get_libc_version"):  # not on musl & co.
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    return libc


def _set_thresholds(libc: ctypes.CDLL, mmap_bytes: int, trim_bytes: int) -> bool:
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, glibc keeps freed large blocks for reuse; yields whether it applies.

    Re-entrant and thread-safe: the thresholds are raised by the first user and restored by
    the last one.
    """
    global _users
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        applied = _set_thresholds(libc, _KEEP_BYTES, _KEEP_BYTES) if _users == 0 else True
        if applied:
            _users += 1
    try:
        yield applied
    finally:
        if applied:
            with _lock:
                _users -= 1
                if _users == 0:
                    _set_thresholds(libc, _RESTORE_MMAP_BYTES, _RESTORE_TRIM_BYTES)
                    libc.malloc_trim(0)
