"""Read and write segmented electrode stacks; map stored label values to phases.

Supported inputs are a multi-page TIFF (``.tif``/``.tiff``), a folder of 2D TIFF slices (sorted in
natural order, so ``slice2`` comes before ``slice10``) and a NumPy ``.npy`` array (opened
memory-mapped). Every stack is returned as an :class:`~.stack.ElectrodeStack` whose labels are
(Z, Y, X) uint8 phase ids: 0 pore, 1 carbon-binder domain (CBD), 2 active material.

Stored label values differ between data sets (0/1/2, 0/85/170, 0/128/255 ...) and their order does
not fix their meaning, so a stack is read through a *phase mapping* ``{stored value: phase name}``.
In order of precedence it is: the mapping the caller gives; the mapping a file written by
:func:`write_stack` carries in its metadata; the one :func:`infer_phase_mapping` derives from the
data (lowest value pore, least abundant of the others CBD).

Every problem a user can cause is raised as :class:`~.errors.StackReadError`,
:class:`~.errors.PhaseMappingError` or :class:`~.errors.StackWriteError` with one specific message.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
import secrets
import struct
import threading
import time
import tokenize
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile

from .errors import PhaseMappingError, StackReadError, StackWriteError
from .limits import array_nbytes, check_decoded_size, check_regular_file, read_bounded_text
from .stack import DEFAULT_VOXEL_SIZE_UM, PHASE_IDS, PHASES, ElectrodeStack

__all__ = [
    "MIN_SLICES",
    "NPY_SUFFIX",
    "TIFF_SUFFIXES",
    "count_stored_values",
    "describe_phase_mapping",
    "guess_calendered",
    "infer_phase_mapping",
    "parse_phase_mapping",
    "read_stack",
    "write_stack",
]

#: File name endings read and written as multi-page TIFF.
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
#: File name ending read and written as a NumPy array.
NPY_SUFFIX = ".npy"
#: Fewest Z slices a 3D stack may have.
MIN_SLICES = 2

#: Key of this package's entry in the JSON ImageDescription of TIFFs written by write_stack.
_METADATA_KEY = "napari_electrode_cae"
#: Suffix of a ``.npy`` stack's metadata sidecar (see :func:`sidecar_path`).
_SIDECAR_SUFFIX = ".phases.json"
#: Voxels handled per chunk when counting or mapping values (bounds temporary memory).
_CHUNK_VOXELS = 1 << 22
#: Most distinct values tracked in wide dtypes before the data is declared unsegmented.
_MAX_DISTINCT = 4096
#: Uncompressed, contiguous TIFF stacks of at least this many bytes are opened memory-mapped
#: (read-only, like .npy files) instead of being read into memory; smaller ones are read, so
#: that rewriting a small file in place can never pull the data from under a stack in use.
_MEMMAP_MIN_BYTES = 1 << 28
#: A temporary file of a write untouched for this long was left by a killed writer; the next
#: write of the same file removes it (a live writer keeps changing its temporary file).
_STALE_TEMPORARY_S = 60.0
#: zlib level of written TIFFs: level 1 is about 5x faster than the default 6 on label stacks,
#: for files about 1.5x larger (still 5-10x smaller than uncompressed).
_ZLIB_LEVEL = 1
#: Exceptions tifffile, numpy, zlib and the OS raise for unreadable or corrupt files (found by
#: reading truncated and randomly corrupted TIFFs: tifffile's parsing of a damaged file can fail
#: in its arithmetic, indexing, type handling or internal assertions).
_READ_ERRORS = (
    tifffile.TiffFileError,
    OSError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    ArithmeticError,
    LookupError,
    TypeError,
    RuntimeError,
    AssertionError,
)
#: Exceptions numpy raises for a damaged .npy file (besides ValueError): its header is parsed
#: as a Python literal and its size checked when memory-mapping.
_NPY_HEADER_ERRORS = (
    OSError,
    EOFError,
    SyntaxError,
    tokenize.TokenError,
    ArithmeticError,
    TypeError,
)
#: ImageJ length units that mean micrometres.
_MICRON_UNITS = frozenset({"micron", "microns", "um", "µm", "\\u00b5m", "micrometer", "micrometre"})
_EXAMPLE_MAPPING = "'0=pore,85=active,170=cbd'"


# --------------------------------------------------------------------------------------------
# Phase mappings
# --------------------------------------------------------------------------------------------


def parse_phase_mapping(text: str) -> dict[int, str]:
    """Parse a phase mapping written as text.

    Parameters
    ----------
    text : str
        Comma- or semicolon-separated ``value=phase`` pairs, e.g. ``"0=pore,85=active,170=cbd"``.
        ``:``, ``->`` or ``→`` may replace ``=`` (so the text of :func:`describe_phase_mapping`
        reads back); spaces and the case of phase names are ignored.

    Returns
    -------
    dict of int to str
        Stored value -> phase name (``"pore"``, ``"cbd"`` or ``"active"``), sorted by value.

    Raises
    ------
    PhaseMappingError
        If the text is empty, a pair is malformed, a value is not an integer, a phase name is
        unknown or a value appears twice.
    """
    pairs = [part.strip() for part in re.split(r"[,;]", str(text)) if part.strip()]
    if not pairs:
        raise PhaseMappingError(
            f"empty phase mapping {text!r}: expected value=phase pairs like {_EXAMPLE_MAPPING}"
        )
    mapping: dict[int, str] = {}
    for pair in pairs:
        match = re.fullmatch(r"(.*?)\s*(?:[=:→]|->)\s*(.*)", pair)
        if match is None or not match[1] or not match[2]:
            raise PhaseMappingError(
                f"cannot parse {pair!r} in phase mapping {text!r}: expected value=phase pairs "
                f"like {_EXAMPLE_MAPPING}"
            )
        if re.fullmatch(r"[+-]?\d+", match[1]) is None:
            raise PhaseMappingError(
                f"stored value {match[1]!r} in phase mapping {text!r} is not an integer"
            )
        value = int(match[1])
        if value in mapping:
            raise PhaseMappingError(f"stored value {value} appears twice in phase mapping {text!r}")
        mapping[value] = _phase_name(match[2])
    return dict(sorted(mapping.items()))


def describe_phase_mapping(mapping: Mapping[int, str]) -> str:
    """Describe a phase mapping in one line, e.g. ``"0→pore, 85→active, 170→cbd"``.

    Parameters
    ----------
    mapping : dict of int to str
        Stored value -> phase name.

    Returns
    -------
    str
        The pairs sorted by stored value; ``"(empty mapping)"`` if there are none.
    """
    if not mapping:
        return "(empty mapping)"
    return ", ".join(f"{value}→{name}" for value, name in sorted(mapping.items()))


def infer_phase_mapping(
    values: Sequence[int], counts: Sequence[int], *, dtype: Any = None
) -> dict[int, str]:
    """Choose a phase mapping from the stored values and how often each occurs.

    The lowest value is pore. With three values, the less abundant of the other two is CBD (it is
    10-15 % of a real cathode) and the more abundant one active material; a tie goes to the lower
    value as CBD (the CT grey-level order). With two values they are pore and active material.

    Parameters
    ----------
    values : sequence of int
        Distinct stored values (any order); values whose count is 0 are ignored.
    counts : sequence of int
        Voxel count of each value, same length as ``values``.
    dtype : numpy dtype, optional
        Data type of the stored data; only used to make error messages specific.

    Returns
    -------
    dict of int to str
        Stored value -> phase name, sorted by value.

    Raises
    ------
    PhaseMappingError
        If there are no voxels, a single value, or more than three distinct values.
    """
    if len(values) != len(counts):
        raise PhaseMappingError(
            f"got {len(values)} stored values but {len(counts)} counts; they must pair up"
        )
    present = sorted((int(v), int(c)) for v, c in zip(values, counts) if int(c) > 0)
    in_data = f" in {np.dtype(dtype).name} data" if dtype is not None else ""
    if not present:
        raise PhaseMappingError(f"found no voxels{in_data}: there is nothing to map to phases")
    if len(present) == 1:
        raise PhaseMappingError(
            f"found a single value ({present[0][0]}){in_data}: the stack holds only one phase; "
            "a segmented electrode needs at least pore and active material"
        )
    if len(present) > 3:
        raise PhaseMappingError(
            f"found {len(present)} distinct values{in_data}: the stack does not look segmented "
            "into 3 phases; pass an explicit mapping or segment it first"
        )
    pore = present[0][0]
    if len(present) == 2:
        return {pore: "pore", present[1][0]: "active"}
    (low, low_count), (high, high_count) = present[1], present[2]
    cbd, active = (low, high) if low_count <= high_count else (high, low)
    return dict(sorted({pore: "pore", cbd: "cbd", active: "active"}.items()))


def _phase_name(name: Any) -> str:
    """Normalise a phase name (strip, lower case) and check it is one of :data:`PHASES`."""
    text = str(name).strip().lower()
    if text not in PHASE_IDS:
        raise PhaseMappingError(
            f"unknown phase name {str(name)!r}: expected one of {', '.join(PHASES)}"
        )
    return text


def _stored_value(key: Any) -> int:
    """Convert a mapping key (int, integral float or digit string) to an int stored value."""
    if isinstance(key, (bool, np.bool_)):
        raise PhaseMappingError(f"phase mapping key {key!r} is not a stored value")
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, (float, np.floating)) and float(key).is_integer():
        return int(key)
    if isinstance(key, str) and re.fullmatch(r"\s*[+-]?\d+\s*", key):
        return int(key)
    if isinstance(key, str) and key.strip().lower() in PHASE_IDS:
        raise PhaseMappingError(
            f"phase mapping keys must be stored values, got the phase name {key!r}; write it as "
            "{stored value: phase name}, e.g. {0: 'pore', 85: 'active', 170: 'cbd'}"
        )
    raise PhaseMappingError(f"phase mapping key {key!r} is not an integer stored value")


def _normalise_mapping(phases: Mapping[Any, Any] | str) -> dict[int, str]:
    """Turn a user-given mapping (dict or ``"value=phase,..."`` text) into ``{int: phase}``."""
    if isinstance(phases, str):
        return parse_phase_mapping(phases)
    if not isinstance(phases, Mapping):
        raise PhaseMappingError(
            f"a phase mapping must be a dict {{stored value: phase name}} or a string like "
            f"{_EXAMPLE_MAPPING}, got {type(phases).__name__}"
        )
    if not phases:
        raise PhaseMappingError("the phase mapping is empty: map each stored value to a phase")
    mapping: dict[int, str] = {}
    for key, name in phases.items():
        value = _stored_value(key)
        if value in mapping:
            raise PhaseMappingError(f"stored value {value} appears twice in the phase mapping")
        mapping[value] = _phase_name(name)
    return dict(sorted(mapping.items()))


def _check_mapping_covers(
    mapping: Mapping[int, str], values: Sequence[int], where: str, what: str
) -> None:
    """Raise if some stored values present in the data are missing from ``mapping``."""
    missing = [v for v in values if v not in mapping]
    if missing:
        shown = ", ".join(str(v) for v in missing[:10])
        if len(missing) > 10:
            shown += f", ... ({len(missing)} in all)"
        raise PhaseMappingError(
            f"{where}: stored value{'s' if len(missing) > 1 else ''} {shown} present in the data "
            f"{'are' if len(missing) > 1 else 'is'} not in {what} "
            f"({describe_phase_mapping(mapping)}); map every stored value to a phase"
        )


def guess_calendered(name: str) -> bool | None:
    """Guess the calendering tag from a file or folder name.

    Parameters
    ----------
    name : str
        File stem or folder name.

    Returns
    -------
    bool or None
        False if the name contains ``uncal`` (any case); True if it contains ``CAL`` in upper
        case, or ``cal`` (any case) at the start or after a non-letter (``nmc_cal``,
        ``Calendered``, ``sampleCAL``, but not ``local`` or ``vertical``); None otherwise.
    """
    if re.search("uncal", name, flags=re.IGNORECASE):
        return False
    if re.search(r"(?:C|(?<![A-Za-z])c)(?i:al)", name):
        return True
    return None


# --------------------------------------------------------------------------------------------
# Counting and mapping stored values
# --------------------------------------------------------------------------------------------


def _slabs(n_z: int, plane_voxels: int) -> Iterator[slice]:
    """Slices along Z covering about :data:`_CHUNK_VOXELS` voxels each (at least one plane)."""
    step = max(1, _CHUNK_VOXELS // max(1, plane_voxels))
    for z0 in range(0, n_z, step):
        yield slice(z0, min(n_z, z0 + step))


def _chunks(data: np.ndarray) -> Iterator[np.ndarray]:
    """Chunks of ``data`` along its first axis (the whole array if it has fewer than 2 axes)."""
    if data.ndim < 2:
        yield data
        return
    for sl in _slabs(data.shape[0], math.prod(data.shape[1:])):
        yield data[sl]


def _is_small_int(dtype: np.dtype) -> bool:
    """True for bool and 8/16-bit integers, whose values are counted with a bincount."""
    return dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2)


def _small_int_range(dtype: np.dtype) -> tuple[int, int]:
    """Offset making every value of a bool/8/16-bit dtype non-negative, and the number of values."""
    if dtype.kind == "b":
        return 0, 2
    info = np.iinfo(dtype)
    return -int(info.min), int(info.max) - int(info.min) + 1


def _small_int_index(chunk: np.ndarray, offset: int) -> np.ndarray:
    """Flat non-negative indices (value + offset) of a bool/8/16-bit chunk."""
    flat = chunk.reshape(-1)
    if flat.dtype.kind == "b":
        return flat.view(np.uint8)
    return flat.astype(np.int32) + offset if offset else flat


def _count(data: np.ndarray, where: str) -> tuple[list, list[int]]:
    """Distinct values of ``data`` and their voxel counts; see :func:`count_stored_values`."""
    data = np.asarray(data)
    prefix = f"{where}: " if where else ""
    if data.dtype.kind not in "biuf":
        raise StackReadError(
            f"{prefix}unsupported data type {data.dtype}; a label stack must hold integers "
            "(or whole-number floats)"
        )
    if _is_small_int(data.dtype):
        offset, size = _small_int_range(data.dtype)
        totals = np.zeros(size, dtype=np.int64)
        for chunk in _chunks(data):
            totals += np.bincount(_small_int_index(chunk, offset), minlength=size)
        present = np.flatnonzero(totals)
        return (present - offset).tolist(), totals[present].tolist()

    accumulated: dict[Any, int] = {}
    for chunk in _chunks(data):
        if data.dtype.kind == "f" and not np.isfinite(chunk).all():
            raise StackReadError(f"{prefix}{_non_finite_summary(data)}")
        uniques, counts = np.unique(chunk, return_counts=True)
        if uniques.size + len(accumulated) > _MAX_DISTINCT:
            merged = set(accumulated) | set(uniques.tolist())
            if len(merged) > _MAX_DISTINCT:
                raise PhaseMappingError(
                    f"{prefix}found more than {_MAX_DISTINCT} distinct values in "
                    f"{data.dtype.name} data: the stack does not look segmented into 3 phases; "
                    "segment it first"
                )
        for value, count in zip(uniques.tolist(), counts.tolist()):
            accumulated[value] = accumulated.get(value, 0) + count
    ordered = sorted(accumulated)
    return ordered, [accumulated[v] for v in ordered]


def _non_finite_summary(data: np.ndarray) -> str:
    """Describe the NaN and infinite values of float ``data`` (counted chunk by chunk)."""
    n_nan = n_inf = 0
    first_slice = None
    start = 0
    for chunk in _chunks(data):
        nan, inf = np.isnan(chunk), np.isinf(chunk)
        n_nan += int(nan.sum())
        n_inf += int(inf.sum())
        if first_slice is None and (n_nan or n_inf) and data.ndim >= 2:
            first_slice = start + int(np.argwhere(nan | inf)[0][0])
        start += chunk.shape[0] if data.ndim >= 2 else 0
    parts = [f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n]
    where = f", the first in slice {first_slice}" if first_slice is not None else ""
    return (
        f"{data.dtype.name} data contains {' and '.join(parts)} values{where}; a label stack "
        "must hold finite whole numbers"
    )


def count_stored_values(data: np.ndarray) -> tuple[list, list[int]]:
    """Count the distinct stored values of a label array without copying it whole.

    8- and 16-bit integers are counted with :func:`numpy.bincount`, other dtypes with
    :func:`numpy.unique`, both chunk by chunk along the first axis, so memory-mapped stacks are
    streamed rather than loaded.

    Parameters
    ----------
    data : numpy.ndarray
        Stored labels of any shape, usually (Z, Y, X); bool, integer or float.

    Returns
    -------
    values : list
        Distinct values present, ascending (int for integer data, float for float data).
    counts : list of int
        Voxel count of each value.

    Raises
    ------
    StackReadError
        If the dtype is not numeric, or float data holds NaN or infinite values.
    PhaseMappingError
        If a wide dtype holds more than 4096 distinct values (clearly not segmented).
    """
    return _count(data, "")


def _apply_mapping(
    raw: np.ndarray, mapping: Mapping[int, str], values: Sequence[int], *, inplace: bool
) -> np.ndarray:
    """Map stored values to uint8 phase ids with a lookup table, chunk by chunk.

    Parameters
    ----------
    raw : numpy.ndarray
        (Z, Y, X) stored labels; every value in ``values`` must be a key of ``mapping``.
    mapping : dict of int to str
        Stored value -> phase name.
    values : sequence of int
        The distinct stored values present in ``raw``.
    inplace : bool
        Whether a writable uint8 ``raw`` may be overwritten instead of allocating the result.

    Returns
    -------
    numpy.ndarray
        (Z, Y, X) uint8 phase ids. ``raw`` itself (no copy) when it is uint8 and the mapping is
        the identity on the values present.
    """
    ids = {value: PHASE_IDS[name] for value, name in mapping.items()}
    if raw.dtype == np.uint8 and all(ids[v] == v for v in values):
        return raw
    if inplace and raw.dtype == np.uint8 and raw.flags.writeable:
        out = raw
    else:
        out = np.empty(raw.shape, dtype=np.uint8)
    plane = math.prod(raw.shape[1:])
    if _is_small_int(raw.dtype):
        offset, size = _small_int_range(raw.dtype)
        lut = np.zeros(size, dtype=np.uint8)
        for value in values:
            lut[value + offset] = ids[value]
        for sl in _slabs(raw.shape[0], plane):
            out[sl] = lut[_small_int_index(raw[sl], offset)].reshape(out[sl].shape)
        return out
    keys = np.array(sorted(values), dtype=raw.dtype)
    phase_of_key = np.array([ids[v] for v in sorted(values)], dtype=np.uint8)
    for sl in _slabs(raw.shape[0], plane):
        out[sl] = phase_of_key[np.searchsorted(keys, raw[sl])]
    return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _ThreadErrorCollector(logging.Handler):
    """Collects ERROR records that tifffile logs in the current thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_logged_errors() -> Iterator[list[str]]:
    """Capture the errors tifffile logs (instead of raising) for truncated files."""
    logger = logging.getLogger("tifffile")
    collector = _ThreadErrorCollector()
    logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(n)) for n in shape) + ")"


def _colour_channels(shape: tuple[int, ...], axes: str) -> int | None:
    """Number of colour samples per pixel if the shape looks like colour data, else None."""
    if "S" in axes:
        return shape[axes.index("S")]
    if len(shape) in (3, 4) and shape[-1] in (3, 4) and shape[-2] > shape[-1]:
        return shape[-1]
    return None


def _colour_message(where: str, shape: tuple[int, ...], channels: int) -> str:
    kind = {3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    return (
        f"{where} holds {kind} colour data of shape {_shape_text(shape)} ({channels} samples per "
        "pixel); a segmented stack must be single-channel labels (Z, Y, X): convert it to a label "
        "image first"
    )


def _squeeze_to(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Drop size-1 axes (leading first) while the shape has more than ``ndim`` axes."""
    shape = tuple(shape)
    while len(shape) > ndim and 1 in shape:
        index = shape.index(1)
        shape = shape[:index] + shape[index + 1 :]
    return shape


def _volume_shape(shape: tuple[int, ...], axes: str, where: str) -> tuple[int, int, int]:
    """Check a stored shape describes a 3D single-channel stack; return its (Z, Y, X) shape."""
    shape = tuple(int(n) for n in shape)
    channels = _colour_channels(shape, axes)
    if channels is not None:
        raise StackReadError(_colour_message(where, shape, channels))
    if 0 in shape:
        raise StackReadError(f"{where} is empty: its data has shape {_shape_text(shape)}")
    squeezed = _squeeze_to(shape, 3)
    if len(squeezed) < 2:
        raise StackReadError(
            f"{where} is not an image: its data has shape {_shape_text(shape)}; expected a 3D "
            "(Z, Y, X) stack"
        )
    if len(squeezed) == 2:
        raise StackReadError(
            f"{where} is a single 2D image of shape {_shape_text(squeezed)}; a 3D stack needs at "
            f"least {MIN_SLICES} slices: use a multi-page TIFF, a folder of 2D TIFF slices or a "
            "3D .npy array"
        )
    if len(squeezed) > 3:
        raise StackReadError(
            f"{where} has {len(squeezed)} dimensions, shape {_shape_text(shape)}; expected a 3D "
            "(Z, Y, X) stack of labels"
        )
    if squeezed[0] < MIN_SLICES:
        raise StackReadError(
            f"{where} has only {squeezed[0]} slice, shape {_shape_text(squeezed)}; a 3D stack "
            f"needs at least {MIN_SLICES} slices"
        )
    return squeezed  # type: ignore[return-value]


def _check_nonempty_file(path: Path) -> None:
    """Refuse a file that is empty, or not a regular file (a FIFO or device would block or
    never end), before it is opened."""
    size = check_regular_file(path, "stack file", StackReadError).st_size
    if size == 0:
        raise StackReadError(f"{path} is empty (0 bytes)")


def _positive_float(value: Any) -> float | None:
    """``value`` as a finite positive float, or None if it is not one."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _metadata_entry(entry: Any, where: str) -> dict[str, Any]:
    """Voxel size, calendering tag and phase mapping of a metadata entry written by
    :func:`write_stack` (in a TIFF's description or a ``.npy`` sidecar); {} if it is none."""
    found: dict[str, Any] = {}
    if not isinstance(entry, dict):
        return found
    voxel = _positive_float(entry.get("voxel_size_um"))
    if voxel is not None:
        found["voxel_size_um"] = voxel
    if isinstance(entry.get("calendered"), bool):
        found["calendered"] = entry["calendered"]
    if isinstance(entry.get("phase_mapping"), dict) and entry["phase_mapping"]:
        try:
            found["phase_mapping"] = _normalise_mapping(entry["phase_mapping"])
        except PhaseMappingError as exc:
            raise PhaseMappingError(
                f"{where}: the phase mapping stored in the file is invalid ({exc}); "
                "pass an explicit mapping"
            ) from exc
    return found


def written_by_this_tool(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a stack file that :func:`write_stack` wrote (a TIFF with the tool's
    metadata, or a ``.npy`` with its sidecar); never reads more than a TIFF header."""
    path = Path(path)
    try:
        check_regular_file(path, "file", StackReadError)
    except StackReadError:
        return False
    if path.suffix.lower() == NPY_SUFFIX:
        return sidecar_path(path).is_file()
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            description = getattr(tif.pages[0], "description", "") or ""
        return _METADATA_KEY in json.loads(description) if description.startswith("{") else False
    except (tifffile.TiffFileError, ValueError, TypeError, OSError, IndexError):
        return False


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The metadata sidecar of a ``.npy`` stack: ``NAME.npy.phases.json`` next to it.

    :func:`write_stack` writes it (phase mapping, voxel size, tag, and the array's shape and
    dtype); :func:`read_stack` honours it when the shape and dtype still match the array, so
    the tool's own 0/1/2 files read back exactly (a ``.npy`` itself carries no mapping).
    """
    path = Path(path)
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _npy_sidecar_metadata(path: Path, data: np.ndarray) -> dict[str, Any]:
    """The metadata of ``path``'s sidecar if it describes ``data`` (same shape and dtype)."""
    side = sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        return {}
    where = str(side)
    try:
        sidecar = json.loads(
            read_bounded_text(side, "phase sidecar", max_bytes=2**16, error=StackReadError)
        )
    except (ValueError, RecursionError) as exc:
        raise StackReadError(f"{where} is not valid JSON ({exc}); remove it or fix it") from None
    if not isinstance(sidecar, dict):
        raise StackReadError(f"{where} does not hold a JSON object; remove it or fix it")
    if sidecar.get("shape") != list(data.shape) or sidecar.get("dtype") != data.dtype.str:
        return {}  # it describes another array (the .npy was replaced): not this one's
    return _metadata_entry(sidecar.get(_METADATA_KEY), where)


def _tiff_metadata(tif: tifffile.TiffFile, where: str) -> dict[str, Any]:
    """Voxel size, calendering tag and phase mapping recorded in a TIFF, where present.

    Reads the JSON ImageDescription entry written by :func:`write_stack`; falls back to an ImageJ
    calibration in micrometres for the voxel size.
    """
    found: dict[str, Any] = {}
    page = tif.pages[0]
    description = getattr(page, "description", "") or ""
    if description.lstrip().startswith("{"):
        try:
            entry = json.loads(description).get(_METADATA_KEY)
        except (ValueError, AttributeError):
            entry = None
        found.update(_metadata_entry(entry, where))
    if "voxel_size_um" not in found and tif.is_imagej:
        imagej = tif.imagej_metadata or {}
        if str(imagej.get("unit", "")).strip().lower() in _MICRON_UNITS:
            voxel = None
            tag = page.tags.get("XResolution")
            if tag is not None and isinstance(tag.value, tuple) and len(tag.value) == 2:
                numerator, denominator = tag.value
                if numerator:
                    voxel = _positive_float(denominator / numerator)
            if voxel is None:
                voxel = _positive_float(imagej.get("spacing"))
            if voxel is not None:
                found["voxel_size_um"] = voxel
    return found


def _tiff_memmap(
    path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries
) -> np.ndarray | None:
    """A read-only memory map of ``series`` if it can be one, else None.

    Only uncompressed image data stored contiguously in final form (no predictor, bit packing
    or byte swapping) of at least :data:`_MEMMAP_MIN_BYTES`, lying wholly inside the file, can
    be mapped.
    """
    offset = series.dataoffset
    dtype = series.dtype
    if offset is None or dtype is None or dtype.kind not in "iuf":
        return None
    dtype = np.dtype(tif.byteorder + dtype.char)
    nbytes = math.prod(series.shape) * dtype.itemsize
    if not dtype.isnative or nbytes < max(_MEMMAP_MIN_BYTES, 1):
        return None
    try:
        if offset + nbytes > path.stat().st_size:
            return None  # truncated: the normal reader reports it
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=series.shape)
    except (OSError, ValueError):
        return None  # e.g. no address space for a map: read it the normal way


def _read_tiff(
    path: Path,
    where: str | None = None,
    *,
    memmap: bool = False,
    max_stack_gib: float | None = None,
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Read every image of a TIFF file.

    Parameters
    ----------
    path : pathlib.Path
        The TIFF file.
    where : str, optional
        How error messages name the file; defaults to ``path``.
    memmap : bool
        Open a single large uncompressed contiguous series memory-mapped (read-only) instead
        of reading it, see :func:`_tiff_memmap`.
    max_stack_gib : float, optional
        Bound on the decoded size (see :func:`.limits.check_decoded_size`), checked from the
        pages' shapes and dtypes before anything is decoded.

    Returns
    -------
    data : numpy.ndarray
        The image data as stored (2D for one page, 3D or more for a stack); a read-only
        ``numpy.memmap`` when ``memmap`` is true and the data allows it.
    axes : str
        tifffile's axes codes of ``data`` (``"S"`` marks colour samples).
    metadata : dict
        See :func:`_tiff_metadata`.
    """
    where = where or str(path)
    _check_nonempty_file(path)
    with _tifffile_logged_errors() as logged:
        try:
            with tifffile.TiffFile(path) as tif:
                series = list(tif.series)
                if not series:
                    raise StackReadError(f"{where} contains no images")
                first = series[0]
                for number, other in enumerate(series[1:], start=2):
                    if other.shape != first.shape or other.dtype != first.dtype:
                        raise StackReadError(
                            f"{where}: image {number} has shape {_shape_text(other.shape)} and "
                            f"dtype {other.dtype}, but image 1 has shape "
                            f"{_shape_text(first.shape)} and dtype {first.dtype}; all pages of "
                            "a stack must have the same shape and dtype"
                        )
                mapped = _tiff_memmap(path, tif, first) if memmap and len(series) == 1 else None
                if mapped is None:  # decoded into memory: its size, before decoding
                    check_decoded_size(
                        sum(array_nbytes(s.shape, s.dtype) for s in series), where, max_stack_gib
                    )
                if mapped is not None:
                    data, axes = mapped, first.axes
                elif len(series) == 1:
                    data, axes = first.asarray(), first.axes
                else:
                    data = np.stack([s.asarray() for s in series])
                    axes = "Z" + first.axes
                metadata = _tiff_metadata(tif, where)
        except tifffile.TiffFileError as exc:
            if str(exc).startswith("not a TIFF file"):
                raise StackReadError(
                    f"{where} is not a TIFF image: it does not start with a TIFF header ({exc})"
                ) from exc
            raise StackReadError(f"{where} is truncated or corrupted ({exc})") from exc
        except NotImplementedError as exc:
            raise StackReadError(
                f"{where} uses a TIFF encoding that cannot be read ({exc})"
            ) from exc
        except ImportError as exc:  # a codec package that is not installed (e.g. zstd)
            raise StackReadError(
                f"{where} uses a compression that this installation cannot decode ({exc}); "
                "install the imagecodecs package (pip install imagecodecs)"
            ) from exc
        except MemoryError as exc:
            raise StackReadError(
                f"{where}: not enough memory to read it, or its header is corrupted ({exc})"
            ) from exc
        except _READ_ERRORS as exc:
            raise StackReadError(f"{where} is truncated or corrupted ({exc})") from exc
    if logged:
        raise StackReadError(f"{where} is truncated or corrupted (tifffile: {logged[0]})")
    return data, axes, metadata


def _read_tiff_stack(
    path: Path, max_stack_gib: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a multi-page TIFF as a (Z, Y, X) array of stored values.

    A large uncompressed stack stays on disk as a read-only memory map (see
    :func:`_tiff_memmap`), so stacks larger than the memory can be read.
    """
    data, axes, metadata = _read_tiff(path, memmap=True, max_stack_gib=max_stack_gib)
    shape = _volume_shape(data.shape, axes, str(path))
    return data.reshape(shape), metadata


def _natural_key(path: Path) -> tuple:
    """Sort key putting ``slice2`` before ``slice10`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", path.name.casefold())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), path.name)


def _read_slice_folder(
    folder: Path, max_stack_gib: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a folder of 2D TIFF slices (natural order) as a (Z, Y, X) array of stored values."""
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise StackReadError(f"cannot list folder {folder} ({exc})") from exc
    if not entries:
        raise StackReadError(f"folder {folder} is empty; expected 2D TIFF slices (.tif/.tiff)")
    slices = sorted(
        (p for p in entries if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()), key=_natural_key
    )
    if not slices:
        names = sorted(p.name for p in entries)
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise StackReadError(
            f"folder {folder} contains no TIFF slices (.tif/.tiff); found {len(names)} other "
            f"entr{'ies' if len(names) > 1 else 'y'}: {shown}"
        )

    def read_slice(file: Path) -> tuple[np.ndarray, dict[str, Any]]:
        where = f"slice {file.name} in {folder}"
        data, axes, metadata = _read_tiff(file, where, max_stack_gib=max_stack_gib)
        channels = _colour_channels(data.shape, axes)
        if channels is not None:
            raise StackReadError(_colour_message(where, data.shape, channels))
        shape = _squeeze_to(data.shape, 2)
        if len(shape) != 2:
            raise StackReadError(
                f"{where} has shape {_shape_text(data.shape)}, not a 2D image; a folder must "
                "hold 2D slices (read a multi-page TIFF directly instead)"
            )
        return data.reshape(shape), metadata

    first, metadata = read_slice(slices[0])
    if len(slices) < MIN_SLICES:
        raise StackReadError(
            f"folder {folder} holds a single 2D slice ({slices[0].name}) of shape "
            f"{_shape_text(first.shape)}; a 3D stack needs at least {MIN_SLICES} slices"
        )
    check_decoded_size(
        len(slices) * first.nbytes, f"folder {folder} ({len(slices)} slices)", max_stack_gib
    )
    volume = np.empty((len(slices), *first.shape), dtype=first.dtype)
    volume[0] = first
    for z, file in enumerate(slices[1:], start=1):
        image, _ = read_slice(file)
        if image.shape != first.shape or image.dtype != first.dtype:
            raise StackReadError(
                f"slice {file.name} in {folder} has shape {_shape_text(image.shape)} and dtype "
                f"{image.dtype}, but the first slice {slices[0].name} has shape "
                f"{_shape_text(first.shape)} and dtype {first.dtype}; all slices must match"
            )
        volume[z] = image
    return volume, metadata


def _read_npy(path: Path) -> np.ndarray:
    """Open a ``.npy`` file memory-mapped (read-only) as a (Z, Y, X) array of stored values."""
    _check_nonempty_file(path)
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = None
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(fh)
    except ValueError as exc:
        if "magic" in str(exc):
            raise StackReadError(
                f"{path} is not a NumPy .npy file: it does not start with the .npy header"
            ) from exc
        raise StackReadError(f"{path} is truncated or corrupted ({exc})") from exc
    except _NPY_HEADER_ERRORS as exc:
        raise StackReadError(f"{path} is truncated or corrupted ({exc})") from exc
    if header is not None:
        shape, _, dtype = header
        if dtype.hasobject or dtype.kind not in "biuf":
            raise StackReadError(
                f"{path} holds {dtype} data; a label stack must hold integers (or whole-number "
                "floats)"
            )
        _volume_shape(shape, "", str(path))
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, *_NPY_HEADER_ERRORS) as exc:
        raise StackReadError(f"{path} is truncated or corrupted ({exc})") from exc
    data = data.reshape(_volume_shape(data.shape, "", str(path)))
    if data.nbytes < _MEMMAP_MIN_BYTES:
        # a small stack is copied: a map of a file that is later truncated or rewritten would
        # kill the process (SIGBUS) or change the data under a running training
        data = np.array(data)
    return data


def _default_name(path: Path) -> str:
    """File stem (without ``.ome``) or folder name."""
    if path.is_dir():
        return path.name or path.resolve().name
    stem = path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def read_stack(
    path: str | os.PathLike[str],
    phases: Mapping[Any, str] | str | None = None,
    *,
    voxel_size_um: float | None = None,
    calendered: bool | None = None,
    name: str | None = None,
    max_stack_gib: float | None = None,
) -> ElectrodeStack:
    """Read a segmented electrode stack as (Z, Y, X) uint8 phase ids.

    Parameters
    ----------
    path : str or path-like
        A multi-page TIFF (``.tif``/``.tiff``), a folder of 2D TIFF slices (natural order:
        ``slice2`` before ``slice10``; hidden files ignored) or a ``.npy`` array (opened with
        ``mmap_mode="r"``: it stays on disk, and is returned without a copy when it already holds
        uint8 phase ids under the chosen mapping). A large (256 MiB or more) uncompressed
        multi-page TIFF whose pages lie contiguously in the file (as ImageJ and
        ``tifffile.imwrite`` without compression store them) is memory-mapped the same way, so
        stacks larger than the memory can be read; compressed ones are decompressed into memory.
    phases : dict or str, optional
        Stored value -> phase name (``"pore"``, ``"cbd"``, ``"active"``), e.g.
        ``{0: "pore", 85: "active", 170: "cbd"}`` or ``"0=pore,85=active,170=cbd"``. Several
        values may map to one phase. If None, the mapping stored by :func:`write_stack` is used,
        else :func:`infer_phase_mapping` chooses one; :func:`describe_phase_mapping` of
        ``stack.phase_mapping`` says which.
    voxel_size_um : float, optional
        Voxel edge length in micrometres. If None: the value in the file's metadata (written by
        :func:`write_stack`, or an ImageJ calibration in microns), else
        :data:`~.stack.DEFAULT_VOXEL_SIZE_UM`.
    calendered : bool, optional
        CAL (True) or UNCAL (False). If None: the file's metadata, else
        :func:`guess_calendered` of the file or folder name.
    name : str, optional
        Display name; defaults to the file stem or folder name.
    max_stack_gib : float, optional
        Bound on the memory a compressed TIFF or a slice folder may take once decoded, checked
        from the pages' shapes before decoding (default
        :data:`~.limits.DEFAULT_MAX_STACK_GIB`, at most half the memory); a stack above it is
        refused with :class:`~.errors.ResourceLimitError`. Memory-mapped stacks are not
        decoded; a ``.npy`` below 256 MiB is copied into memory (a map of a file rewritten
        later would fail mid-training), and its sidecar (:func:`sidecar_path`) gives its
        mapping, voxel size and tag.

    Returns
    -------
    ElectrodeStack
        ``labels`` (Z, Y, X) uint8 (0 pore, 1 CBD, 2 active), ``source=str(path)`` and the
        ``phase_mapping`` used.

    Raises
    ------
    StackReadError
        If the path is missing, of an unsupported type, not an image, empty, truncated, 2D,
        colour, inconsistent (folder slices), not numeric, or holds NaN/inf or non-integer floats.
    PhaseMappingError
        If the mapping is malformed, misses stored values present in the data, or cannot be
        inferred (a single value, or more than three distinct values).
    """
    path = Path(path)
    explicit = None if phases is None else _normalise_mapping(phases)  # fail fast on bad text
    if voxel_size_um is not None and _positive_float(voxel_size_um) is None:
        raise StackReadError(
            f"voxel size must be a positive number of micrometres, got {voxel_size_um!r}"
        )
    if not path.exists():
        raise StackReadError(f"{path}: no such file or folder")
    metadata: dict[str, Any] = {}
    owned = True
    if path.is_dir():
        raw, metadata = _read_slice_folder(path, max_stack_gib)
    elif path.suffix.lower() in TIFF_SUFFIXES:
        raw, metadata = _read_tiff_stack(path, max_stack_gib)
        owned = not isinstance(raw, np.memmap)
    elif path.suffix.lower() == NPY_SUFFIX:
        raw = _read_npy(path)
        owned = not isinstance(raw, np.memmap)
        metadata = _npy_sidecar_metadata(path, raw)
    else:
        raise StackReadError(
            f"{path}: unsupported file type {path.suffix!r}; expected a multi-page TIFF "
            f"({', '.join(TIFF_SUFFIXES)}), a {NPY_SUFFIX} array or a folder of 2D TIFF slices"
        )

    if voxel_size_um is None:
        voxel_size_um = metadata.get("voxel_size_um", DEFAULT_VOXEL_SIZE_UM)
    default_name = _default_name(path)
    if calendered is None:
        calendered = metadata.get("calendered", guess_calendered(default_name))
    return stack_from_array(
        raw,
        explicit,
        voxel_size_um=float(voxel_size_um),
        calendered=calendered,
        source=str(path),
        name=name or default_name,
        stored_mapping=metadata.get("phase_mapping"),
        inplace=owned,
    )


def memory_mapped_file(array: np.ndarray) -> Path | None:
    """The file ``array`` is a memory map of (through views), or None if it is in memory."""
    while array is not None:
        if isinstance(array, np.memmap) and getattr(array, "filename", None):
            return Path(array.filename)
        array = array.base if isinstance(array.base, np.ndarray) else None
    return None


def file_state(path: Path) -> tuple[int, int] | None:
    """Size and modification time (ns) of ``path``, or None if it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def check_mapped_unchanged(stacks: Sequence[ElectrodeStack], states: Sequence) -> None:
    """Raise :class:`StackReadError` if a memory-mapped stack's file changed since ``states``
    (from :func:`file_state`, None for stacks in memory) were taken: training on a file that
    is truncated or rewritten underneath would crash (SIGBUS) or learn other data."""
    for stack, state in zip(stacks, states):
        if state is None:
            continue
        path = memory_mapped_file(stack.labels)
        if path is not None and file_state(path) != state:
            raise StackReadError(
                f"{path} changed on disk while it was in use (memory-mapped stack "
                f"{stack.name!r}); stopped: keep the file unchanged until the run ends, or copy it"
            )


def stack_from_array(
    raw: np.ndarray,
    phases: Mapping[Any, str] | str | None = None,
    *,
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM,
    calendered: bool | None = None,
    source: str = "",
    name: str = "",
    stored_mapping: Mapping[int, str] | None = None,
    inplace: bool = False,
) -> ElectrodeStack:
    """An ElectrodeStack from a (Z, Y, X) array of stored label values (e.g. a napari layer).

    Parameters
    ----------
    raw : numpy.ndarray
        (Z, Y, X) stored labels of any integer dtype or whole-number floats.
    phases : dict or str, optional
        Explicit stored value -> phase name mapping; else ``stored_mapping``, else
        :func:`infer_phase_mapping`.
    voxel_size_um, calendered, source, name
        Stack metadata, see :class:`~.stack.ElectrodeStack`.
    stored_mapping : dict, optional
        A mapping that came with the data (file metadata), used when ``phases`` is None.
    inplace : bool
        Whether a writable uint8 ``raw`` may be overwritten instead of copied.

    Raises
    ------
    StackReadError, PhaseMappingError
        As :func:`read_stack`.
    """
    where = source or name or "array"
    raw = np.asarray(raw)
    if raw.ndim != 3:
        raise StackReadError(
            f"{where} has shape {raw.shape}; an electrode stack is a 3D (Z, Y, X) volume"
        )
    explicit = None if phases is None else _normalise_mapping(phases)
    values, counts = _count(raw, where)
    if raw.dtype.kind == "f":
        fractional = [v for v in values if not float(v).is_integer()]
        if fractional and len(values) > 3 and explicit is None:
            raise PhaseMappingError(
                f"{where}: found {len(values)} distinct values in {raw.dtype.name} data, not "
                f"whole numbers (e.g. {fractional[0]:g}): the stack looks like grey levels, not a "
                "segmentation into 3 phases; segment it first"
            )
        if fractional:
            raise StackReadError(
                f"{where} holds {raw.dtype.name} data with non-integer values (e.g. "
                f"{fractional[0]:g}); label values must be whole numbers: save the labels as "
                "integers"
            )
        values = [int(v) for v in values]

    if explicit is not None:
        mapping = explicit
        _check_mapping_covers(mapping, values, where, "the given phase mapping")
    elif stored_mapping:
        mapping = {int(k): v for k, v in stored_mapping.items()}
        _check_mapping_covers(mapping, values, where, "the phase mapping stored in the file")
    else:
        try:
            mapping = infer_phase_mapping(values, counts, dtype=raw.dtype)
        except PhaseMappingError as exc:
            raise PhaseMappingError(f"{where}: {exc}") from None

    labels = _apply_mapping(raw, mapping, values, inplace=inplace)
    return ElectrodeStack(
        labels=labels,
        voxel_size_um=float(voxel_size_um),
        calendered=calendered,
        source=source,
        name=name,
        phase_mapping=dict(sorted(mapping.items())),
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _check_write_labels(labels: np.ndarray) -> None:
    """Raise StackWriteError unless ``labels`` is a 3D integer array of phase ids 0..2."""
    if labels.ndim != 3:
        raise StackWriteError(
            "labels must be a 3D (Z, Y, X) array of phase ids, got shape "
            f"{_shape_text(labels.shape)}"
        )
    if labels.dtype.kind not in "iu":
        raise StackWriteError(
            f"labels must be integer phase ids (0 pore, 1 cbd, 2 active), got dtype {labels.dtype}"
        )
    if labels.size == 0:
        raise StackWriteError(f"labels are empty, shape {_shape_text(labels.shape)}")
    low = min(int(chunk.min()) for chunk in _chunks(labels))
    high = max(int(chunk.max()) for chunk in _chunks(labels))
    if low < 0 or high > 2:
        raise StackWriteError(
            f"labels must be phase ids 0 (pore), 1 (cbd) or 2 (active), found values from {low} "
            f"to {high}"
        )


def _check_write_values(values: Sequence[int]) -> tuple[tuple[int, int, int], np.dtype]:
    """Validate the stored values of phases 0, 1, 2; return them and the smallest fitting dtype."""
    try:
        items = list(values)
    except TypeError as exc:
        raise StackWriteError(f"values must be 3 stored values, got {values!r}") from exc
    if len(items) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items
    ):
        raise StackWriteError(
            f"values must be 3 integers, the stored values of pore, cbd and active; got {values!r}"
        )
    stored = tuple(int(v) for v in items)
    if len(set(stored)) != 3:
        raise StackWriteError(f"values must be 3 distinct integers, got {stored}")
    if min(stored) < 0 or max(stored) > 65535:
        raise StackWriteError(f"values must lie in 0..65535, got {stored}")
    dtype = np.dtype(np.uint8 if max(stored) <= 255 else np.uint16)
    return stored, dtype  # type: ignore[return-value]


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, then ``os.replace`` it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackWriteError(f"cannot create folder {path.parent} ({exc})") from exc
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with temporary.open("xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise StackWriteError(f"cannot write {path} ({exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    # temporary files of this target that a killed writer left behind (untouched for a minute)
    cutoff = time.time() - _STALE_TEMPORARY_S
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()


def write_stack(
    path: str | os.PathLike[str],
    stack: ElectrodeStack | np.ndarray,
    *,
    values: Sequence[int] = (0, 1, 2),
) -> Path:
    """Write a stack's phase ids as stored values, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination: ``.tif``/``.tiff`` (multi-page, zlib-compressed, one page per Z slice; the
        JSON ImageDescription records voxel size in µm, the calendering tag and the phase mapping,
        so :func:`read_stack` round-trips them) or ``.npy`` (the array, and the same record in
        the sidecar ``NAME.npy.phases.json``, see :func:`sidecar_path`). Missing parent
        folders are created; an existing file is replaced only once the new one is complete.
    stack : ElectrodeStack or numpy.ndarray
        The stack, or a raw (Z, Y, X) integer array of phase ids 0 pore, 1 CBD, 2 active (then no
        voxel size or calendering tag is recorded).
    values : sequence of 3 int, default (0, 1, 2)
        Stored values of pore, CBD and active material (phase ids 0, 1, 2), e.g. ``(0, 170, 85)``;
        stored as uint8 when all are at most 255, else uint16.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    StackWriteError
        If the extension is unsupported, the labels are not 3D phase ids 0..2, ``values`` is not
        three distinct integers in 0..65535, or the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES and suffix != NPY_SUFFIX:
        raise StackWriteError(
            f"{path}: unsupported file type {path.suffix!r}; write a "
            f"{', '.join(TIFF_SUFFIXES)} or {NPY_SUFFIX} file"
        )
    stored, dtype = _check_write_values(values)
    entry: dict[str, Any] = {"format_version": 1}
    if isinstance(stack, ElectrodeStack):
        labels = np.asarray(stack.labels)
        entry["voxel_size_um"] = float(stack.voxel_size_um)
        entry["calendered"] = stack.calendered
    else:
        labels = np.asarray(stack)
    _check_write_labels(labels)
    entry["phase_mapping"] = {str(value): PHASES[i] for i, value in enumerate(stored)}
    lut = np.array(stored, dtype=dtype)
    identity = stored == (0, 1, 2) and labels.dtype == np.uint8
    plane = math.prod(labels.shape[1:])

    def stored_slab(sl: slice) -> np.ndarray:
        slab = np.asarray(labels[sl])
        return np.ascontiguousarray(slab if identity else lut[slab])

    if suffix == NPY_SUFFIX:

        def write(fh: IO[bytes]) -> None:
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": tuple(int(n) for n in labels.shape),
            }
            np.lib.format.write_array_header_1_0(fh, header)
            for sl in _slabs(labels.shape[0], plane):
                fh.write(memoryview(stored_slab(sl)).cast("B"))

    else:
        options: dict[str, Any] = {}
        if "voxel_size_um" in entry:
            pixels_per_cm = 1e4 / entry["voxel_size_um"]
            options = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}

        def write(fh: IO[bytes]) -> None:
            pages = (stored_slab(slice(z, z + 1))[0] for z in range(labels.shape[0]))
            tifffile.imwrite(
                fh,
                pages,
                shape=labels.shape,
                dtype=dtype,
                photometric="minisblack",
                compression="zlib",
                compressionargs={"level": _ZLIB_LEVEL},
                bigtiff=labels.size * dtype.itemsize > 2**32 - 2**25,
                metadata={_METADATA_KEY: entry},
                **options,
            )

    _atomic_write(path, write)
    if suffix == NPY_SUFFIX:  # the .npy carries no mapping: its sidecar does
        sidecar = {
            _METADATA_KEY: entry,
            "shape": [int(n) for n in labels.shape],
            "dtype": np.lib.format.dtype_to_descr(dtype),
        }
        payload = json.dumps(sidecar, indent=1).encode("utf-8")
        _atomic_write(sidecar_path(path), lambda fh: fh.write(payload))
    return path
