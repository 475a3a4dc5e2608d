"""Physical descriptors of segmented 3-phase electrode microstructures.

Every function takes a (Z, Y, X) array of phase ids (0 pore, 1 CBD, 2 active; see
:mod:`napari_electrode_cae.core.stack`) and, where a unit is involved, the voxel edge length in
micrometres. Only numpy and scipy are needed; :func:`tortuosity` can optionally run its solver
with torch (on a GPU when ``device="cuda"``).

Phases are named ``"pore"``, ``"cbd"`` and ``"active"``. Wherever a function takes a phase it also
accepts a *group* of phases, e.g. ``("cbd", "active")`` for the solid.

Descriptors
-----------
* Volume fractions: :func:`napari_electrode_cae.core.stack.volume_fractions`.
* :func:`specific_surface_area` and :func:`interface_area_density` (µm⁻¹): area of the voxel
  faces between two phases (groups) per total volume. Face counting is exact for surfaces aligned
  with the voxel grid but overestimates smooth, randomly oriented surfaces: a plane with unit
  normal n is counted as ``|n_x| + |n_y| + |n_z|`` times its area, which averages to **1.5** over
  all orientations (e.g. a voxelised sphere). Divide by 1.5 for a rough estimate of the smooth
  area; comparisons between volumes of the same kind (original vs reconstruction) need no
  correction. Faces on the outer boundary of the volume are not counted.
* :func:`triple_phase_boundary_density` (µm⁻²): total length of the voxel edges at which all three
  phases meet (among the 4 voxels sharing the edge) per total volume. Only interior edges count.
* :func:`connected_fraction`: fraction of a phase's voxels in 6-connected clusters that touch both
  faces perpendicular to an axis (the percolating part).
* :func:`tortuosity`: tortuosity factor as TauFactor defines it (Cooper et al., SoftwareX 5, 2016),
  ``tau = eps * D_bulk / D_eff``, with ``eps`` the volume fraction of the phase (all of its voxels,
  percolating or not, as TauFactor does). Steady-state diffusion is solved in the phase with
  conductance 1 between 6-neighbours, c = 1 and c = 0 held on the two faces perpendicular to
  ``axis`` at half a voxel from the first and last layers (conductance 2 from a boundary voxel to
  its face), and no flux through the other faces. Clusters that do not connect the two faces
  carry no flux and are removed first, which makes the system non-singular. The linear system is
  solved by a preconditioned conjugate gradient from the linear profile: on the CPU with
  scipy.sparse and a two-level preconditioner (Jacobi plus an exact coarse solve on aggregates of
  4³-voxel blocks; ~45 iterations for a 24×224×224 window whichever the axis), or matrix-free
  with torch and a Jacobi preconditioner (``device="cuda"`` for a GPU). ``D_eff / D_bulk =
  G * L / A`` with ``G`` the network conductance between the faces, ``L`` the number of layers
  along ``axis`` and ``A`` the cross-section in voxels. ``G`` is taken from the dissipated power
  ``sum g (c_i - c_j)^2``, which equals ``G`` plus the squared energy norm of the solver error,
  so the error in tau is quadratic in the error of the field.
* :func:`microstructure_metrics`: all of the above for one volume (window).
* :func:`compare_metrics`: original vs reconstruction over many windows (paired tests).

Validation against TauFactor
----------------------------
``taufactor`` 1.2.1 (Kench et al.; ``taufactor.Solver(mask, device="cpu").solve(conv_crit=1e-5,
iter_limit=200000)``, float32 SOR, flux along its first axis; the mask moved so that its first
axis is ours) was run in a throw-away venv on 20×40×40 blobs made by::

    noise = np.random.default_rng(seed).standard_normal((20, 40, 40))
    field = ndimage.gaussian_filter(noise, sigma)
    labels = np.digitize(field, np.quantile(field, [porosity, porosity + cbd])).astype(np.uint8)

(pore below the ``porosity`` quantile, then ``cbd``, active above). "conn." is
:func:`connected_fraction` of the phase; TauFactor, like this module, counts the non-percolating
voxels in ``eps``.

====  ========  ====  =====  ==========  ====  =====  ==========  ===========  =========
seed  porosity  cbd   sigma  phase       axis  conn.  τ here      τ taufactor  rel. diff
====  ========  ====  =====  ==========  ====  =====  ==========  ===========  =========
0     0.30      0     2.0    pore        z     0.943  4.839252    4.839240     +2.5e-06
1     0.35      0     2.0    pore        z     0.865  2.667487    2.667486     +5.0e-07
2     0.40      0     2.0    pore        z     0.997  2.290837    2.290837     -1.9e-08
3     0.45      0     1.5    pore        z     0.999  2.256898    2.256898     +3.8e-08
4     0.50      0     2.5    pore        z     0.999  2.048211    2.048211     +6.4e-08
5     0.25      0     3.0    pore        z     0.833  3.157280    3.157278     +6.3e-07
6     0.20      0     2.0    pore        z     0.617  9.245021    9.245020     +8.8e-08
7     0.40      0.12  2.0    pore        z     0.998  2.626315    2.626317     -8.0e-07
7     0.40      0.12  2.0    pore        y     0.998  4.307447    4.307447     -2.5e-08
7     0.40      0.12  2.0    pore        x     0.998  3.047944    3.047942     +6.0e-07
7     0.40      0.12  2.0    active      z     0.990  1.748814    1.748814     -3.4e-07
7     0.40      0.12  2.0    cbd+active  z     1.000  1.493290    1.493289     +3.5e-07
7     0.40      0.12  2.0    cbd         z     0.272  67.738347   67.738152*   +2.9e-06
8     0.35      0.12  2.0    cbd+active  z     1.000  1.548146    1.548145     +5.8e-07
====  ========  ====  =====  ==========  ====  =====  ==========  ===========  =========

Starred: TauFactor stopped at its 200000-iteration limit.

The differences are TauFactor's stopping criterion and float32 arithmetic (with
``conv_crit=1e-6`` they drop to ≤ 2.2e-7 for seeds 0–6). On the 3-phase blob of seed 7 and on
two 20×48×48 synthetic volumes (``generate_electrode(..., preset="CAL"/"UNCAL", seed=1)``) the
face-counted areas of every phase pair and the TPB edge count equal those of
``taufactor.metrics.interfacial_areas`` and ``triple_phase_boundary`` exactly, and the connected
fractions equal ``extract_through_feature`` to float32 precision. The seed-7 numbers are fixed in
``tests/test_physics.py``; taufactor is not a dependency of this project.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse, stats
from scipy.sparse import csgraph
from scipy.sparse.linalg import splu

from .errors import ElectrodeCAEError
from .stack import DEFAULT_VOXEL_SIZE_UM, PHASE_IDS, PHASES

__all__ = [
    "PhysicsError",
    "compare_metrics",
    "connected_fraction",
    "interface_area_density",
    "microstructure_metrics",
    "percolating_mask",
    "specific_surface_area",
    "tortuosity",
    "triple_phase_boundary_density",
]

#: Axis letters used in metric names: axis 0 is Z (through the electrode), 1 is Y, 2 is X.
AXIS_NAMES: tuple[str, str, str] = ("z", "y", "x")

# Conjugate gradient: iterations over which the energy decrease is summed for the stopping test,
# and the relative residual at which the field counts as exact.
_WINDOW = 20
_RESIDUAL_FLOOR = 1e-13
# Target size of the coarse system of the two-level preconditioner (unknowns).
_COARSE_TARGET = 30_000

# 6-connectivity (faces only) in 3D.
_FACE_CONNECTIVITY = ndi.generate_binary_structure(3, 1)

PhaseSpec = str | int | Iterable[str | int]


class PhysicsError(ElectrodeCAEError, ValueError):
    """Invalid input to a microstructure descriptor (array, phase name, axis, voxel size)."""


# --------------------------------------------------------------------------- validation


def _as_labels(labels: Any) -> np.ndarray:
    """Validate a (Z, Y, X) phase-id array and return it as uint8 (no copy if already uint8)."""
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise PhysicsError(f"labels must be a 3D (Z, Y, X) array, got shape {arr.shape}")
    if arr.size == 0:
        raise PhysicsError(f"labels must not be empty, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        if int(arr.max()) > 2:
            raise PhysicsError(
                f"labels must be phase ids 0 (pore), 1 (cbd), 2 (active); found value "
                f"{int(arr.max())}"
            )
        return arr
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise PhysicsError("labels must be integer phase ids 0, 1, 2; found non-integer values")
    elif arr.dtype.kind not in "iu":
        raise PhysicsError(f"labels must be integer phase ids, got dtype {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 2:
        bad = lo if lo < 0 else hi
        raise PhysicsError(
            f"labels must be phase ids 0 (pore), 1 (cbd), 2 (active); found value {bad}"
        )
    return arr.astype(np.uint8)


def _phase_ids(phase: PhaseSpec, what: str = "phase") -> tuple[int, ...]:
    """Phase name, id, or group of them -> sorted tuple of unique phase ids."""
    items = [phase] if isinstance(phase, (str, int, np.integer)) else list(phase)
    if not items:
        raise PhysicsError(f"{what} is an empty group; valid phases are {', '.join(PHASES)}")
    ids = set()
    for item in items:
        if isinstance(item, str):
            key = item.strip().lower()
            if key not in PHASE_IDS:
                raise PhysicsError(
                    f"unknown {what} {item!r}; valid phases are {', '.join(map(repr, PHASES))}"
                )
            ids.add(PHASE_IDS[key])
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < len(PHASES):
                raise PhysicsError(
                    f"unknown {what} id {item}; valid ids are 0 (pore), 1 (cbd), 2 (active)"
                )
            ids.add(int(item))
        else:
            raise PhysicsError(
                f"{what} must be a phase name ({', '.join(PHASES)}), a phase id or a group of "
                f"them, got {item!r}"
            )
    return tuple(sorted(ids))


def _phase_mask(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    if len(ids) == 1:
        return labels == ids[0]
    lut = np.zeros(256, dtype=bool)
    lut[list(ids)] = True
    return lut[labels]


def _check_voxel_size(voxel_size_um: float) -> float:
    try:
        value = float(voxel_size_um)
    except (TypeError, ValueError):
        raise PhysicsError(f"voxel size must be a number, got {voxel_size_um!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise PhysicsError(f"voxel size must be positive and finite, got {voxel_size_um!r}")
    return value


def _check_axis(axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
        raise PhysicsError(f"axis must be 0 (Z), 1 (Y) or 2 (X), got {axis!r}")
    return int(axis)


def _pairs(ndim_axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples of the lower and upper voxel of every neighbour pair along one axis."""
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[ndim_axis] = slice(None, -1)
    hi[ndim_axis] = slice(1, None)
    return tuple(lo), tuple(hi)


# --------------------------------------------------------------------------- surfaces


def _count_interface_faces(in_a: np.ndarray, in_b: np.ndarray) -> int:
    faces = 0
    for axis in range(3):
        lo, hi = _pairs(axis)
        faces += np.count_nonzero(in_a[lo] & in_b[hi])
        faces += np.count_nonzero(in_b[lo] & in_a[hi])
    return int(faces)


def interface_area_density(
    labels: np.ndarray,
    a: PhaseSpec,
    b: PhaseSpec,
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Area of the interface between two phases (or phase groups) per total volume.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) phase ids: 0 pore, 1 CBD, 2 active.
    a, b : str, int or sequence of them
        The two sides, e.g. ``"pore"`` and ``("cbd", "active")``. Must not share a phase.
    voxel_size_um : float
        Voxel edge length in µm.

    Returns
    -------
    float
        Interface area density in µm⁻¹ (µm² of interface per µm³ of volume), from counting the
        voxel faces between the two sides. Face counting overestimates smooth surfaces by about
        1.5× (see the module notes).
    """
    labels = _as_labels(labels)
    vs = _check_voxel_size(voxel_size_um)
    ids_a, ids_b = _phase_ids(a, "phase a"), _phase_ids(b, "phase b")
    shared = set(ids_a) & set(ids_b)
    if shared:
        names = ", ".join(PHASES[i] for i in sorted(shared))
        raise PhysicsError(f"the two sides of an interface must not share a phase ({names})")
    faces = _count_interface_faces(_phase_mask(labels, ids_a), _phase_mask(labels, ids_b))
    return faces / (labels.size * vs)


def specific_surface_area(
    labels: np.ndarray,
    phase: PhaseSpec = "active",
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Surface area of a phase (against every other phase) per total volume.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) phase ids: 0 pore, 1 CBD, 2 active.
    phase : str, int or sequence of them
        The phase (or group), default ``"active"``.
    voxel_size_um : float
        Voxel edge length in µm.

    Returns
    -------
    float
        Specific surface area in µm⁻¹: voxel faces between ``phase`` and any other phase, times
        the face area, divided by the total volume. Overestimates smooth surfaces by about 1.5×.
    """
    ids = _phase_ids(phase)
    others = tuple(i for i in range(len(PHASES)) if i not in ids)
    labels = _as_labels(labels)
    vs = _check_voxel_size(voxel_size_um)
    if not others:
        return 0.0
    in_phase = _phase_mask(labels, ids)
    return _count_interface_faces(in_phase, ~in_phase) / (labels.size * vs)


def triple_phase_boundary_density(
    labels: np.ndarray, voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM
) -> float:
    """Length of the triple-phase boundary per total volume.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) phase ids: 0 pore, 1 CBD, 2 active.
    voxel_size_um : float
        Voxel edge length in µm.

    Returns
    -------
    float
        TPB density in µm⁻²: the number of interior voxel edges whose 4 surrounding voxels contain
        all three phases, times the voxel edge length, divided by the total volume.
    """
    labels = _as_labels(labels)
    vs = _check_voxel_size(voxel_size_um)
    bits = np.left_shift(np.uint8(1), labels)  # 1, 2, 4 for pore, cbd, active
    edges = 0
    for along in range(3):
        p, q = (ax for ax in range(3) if ax != along)
        corners = []
        for dp in (0, 1):
            for dq in (0, 1):
                index = [slice(None)] * 3
                index[p] = slice(dp, bits.shape[p] - 1 + dp)
                index[q] = slice(dq, bits.shape[q] - 1 + dq)
                corners.append(bits[tuple(index)])
        union = corners[0] | corners[1]
        union |= corners[2]
        union |= corners[3]
        edges += int(np.count_nonzero(union == 7))
    return edges * vs / (labels.size * vs**3)


# --------------------------------------------------------------------------- connectivity


def _percolating(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels of ``mask`` in 6-connected clusters touching both faces normal to ``axis``."""
    if not mask.any():
        return np.zeros_like(mask)
    clusters, n = ndi.label(mask, structure=_FACE_CONNECTIVITY)
    first = np.unique(np.take(clusters, 0, axis=axis))
    last = np.unique(np.take(clusters, -1, axis=axis))
    spanning = np.intersect1d(first, last)
    spanning = spanning[spanning > 0]
    keep = np.zeros(n + 1, dtype=bool)
    keep[spanning] = True
    return keep[clusters]


def percolating_mask(labels: np.ndarray, phase: PhaseSpec = "pore", axis: int = 0) -> np.ndarray:
    """Boolean (Z, Y, X) mask of the voxels of ``phase`` that connect the two faces normal to
    ``axis`` through 6-connected paths of the phase."""
    labels = _as_labels(labels)
    return _percolating(_phase_mask(labels, _phase_ids(phase)), _check_axis(axis))


def connected_fraction(labels: np.ndarray, phase: PhaseSpec = "pore", axis: int = 0) -> float:
    """Fraction of a phase's voxels that percolate along an axis.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) phase ids: 0 pore, 1 CBD, 2 active.
    phase : str, int or sequence of them
        The phase (or group).
    axis : int
        0 (Z, through the electrode), 1 (Y) or 2 (X).

    Returns
    -------
    float
        Voxels in 6-connected clusters touching both faces perpendicular to ``axis``, divided by
        all voxels of the phase; 0.0 when the phase is absent.
    """
    labels = _as_labels(labels)
    axis = _check_axis(axis)
    mask = _phase_mask(labels, _phase_ids(phase))
    total = int(np.count_nonzero(mask))
    if total == 0:
        return 0.0
    return int(np.count_nonzero(_percolating(mask, axis))) / total


# --------------------------------------------------------------------------- tortuosity


def _pcg(matvec, b, x, precondition, dot, const: float, tol: float, max_iter: int):
    """Preconditioned conjugate gradient on numpy arrays or torch tensors (``x`` in place).

    Minimises the dissipation ``D(x) = x.A.x - 2 b.x + const``; iteration k lowers it by exactly
    ``alpha_k r_k.z_k``. ``D(x) - D(x*)`` is the squared energy norm of the error, so the run
    stops when the decrease over the last ``_WINDOW`` iterations (a lower bound of that error
    ``_WINDOW`` iterations ago, and in practice above the current one) is below ``tol * D``, or
    when the residual has vanished. ``const`` is the dissipation of the zero field.
    Returns ``(x, iterations, converged)``.
    """
    ax = matvec(x)
    r = b - ax
    b_norm2 = float(dot(b, b))
    if b_norm2 == 0.0:
        return x, 0, True
    energy = float(dot(x, ax)) - 2.0 * float(dot(b, x)) + const
    z = precondition(r)
    p = z.clone() if hasattr(z, "clone") else z.copy()
    rz = float(dot(r, z))
    decreases: list[float] = []
    for iteration in range(max_iter + 1):
        if float(dot(r, r)) <= _RESIDUAL_FLOOR**2 * b_norm2:
            return x, iteration, True
        if len(decreases) >= _WINDOW and sum(decreases[-_WINDOW:]) <= tol * energy:
            return x, iteration, True
        if iteration == max_iter:
            break
        q = matvec(p)
        alpha = rz / float(dot(p, q))
        x += alpha * p
        r -= alpha * q
        decreases.append(alpha * rz)
        energy -= alpha * rz
        z = precondition(r)
        rz_new = float(dot(r, z))
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, max_iter, False


def _coarse_block_edge(n_unknowns: int) -> int:
    """Edge (voxels) of the cubic blocks of the coarse level: 4, or larger for big volumes so
    that the coarse system stays around ``_COARSE_TARGET`` unknowns."""
    return max(4, math.ceil((n_unknowns / _COARSE_TARGET) ** (1.0 / 3.0)))


def _conductance_scipy(keep: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, bool]:
    """Solve the network on the voxels of ``keep`` (flow along axis 0); return the field.

    Conjugate gradient with an additive two-level preconditioner ``D^-1 + P Ac^-1 P^T``: Jacobi
    on the voxels plus an exact solve on aggregates (the 6-connected pieces of the phase inside
    cubic blocks of 4³ voxels, ``Ac = P^T A P`` with piecewise-constant ``P``). The coarse level
    keeps the iteration count nearly independent of the domain length (about 45 iterations for
    a 24×224×224 window along Z or along X, against 180 and 950 with Jacobi alone).
    """
    n_layers = keep.shape[0]
    n = int(np.count_nonzero(keep))
    index = np.full(keep.shape, -1, dtype=np.int64)
    index[keep] = np.arange(n)
    first, second = [], []
    for axis in range(3):
        lo, hi = _pairs(axis)
        both = keep[lo] & keep[hi]
        first.append(index[lo][both])
        second.append(index[hi][both])
    del index
    i, j = np.concatenate(first), np.concatenate(second)
    del first, second
    diag = (np.bincount(i, minlength=n) + np.bincount(j, minlength=n)).astype(np.float64)
    n_inlet = int(np.count_nonzero(keep[0]))
    n_outlet = int(np.count_nonzero(keep[-1]))
    diag[:n_inlet] += 2.0  # unknowns are numbered in C order, so the first layer comes first
    diag[n - n_outlet :] += 2.0
    arange = np.arange(n)
    matrix = sparse.csr_matrix(
        (
            np.concatenate([np.full(2 * len(i), -1.0), diag]),
            (np.concatenate([i, j, arange]), np.concatenate([j, i, arange])),
        ),
        shape=(n, n),
    )
    rhs = np.zeros(n)
    rhs[:n_inlet] = 2.0
    coords = np.nonzero(keep)
    x0 = 1.0 - (coords[0] + 0.5) / n_layers

    # Coarse level: connected pieces of the phase inside cubic blocks.
    edge = _coarse_block_edge(n)
    blocks = [-(-size // edge) for size in keep.shape]
    block_id = np.ravel_multi_index(tuple(c // edge for c in coords), blocks)
    del coords
    inside = block_id[i] == block_id[j]
    links = sparse.coo_matrix((np.ones(np.count_nonzero(inside)), (i[inside], j[inside])), (n, n))
    n_coarse, aggregate = csgraph.connected_components(links, directed=False)
    del links, inside, i, j, block_id
    prolongation = sparse.csr_matrix((np.ones(n), (arange, aggregate)), shape=(n, n_coarse))
    restriction = prolongation.T.tocsr()
    coarse_lu = splu((restriction @ matrix @ prolongation).tocsc())
    inv_diag = 1.0 / diag

    def precondition(r: np.ndarray) -> np.ndarray:
        out = coarse_lu.solve(restriction @ r)[aggregate]
        out += inv_diag * r
        return out

    # np.vdot, not np.dot: multi-threaded OpenBLAS ddot is slow for vectors of this size.
    x, _, converged = _pcg(matrix.dot, rhs, x0, precondition, np.vdot, 2.0 * n_inlet, tol, max_iter)
    field = np.zeros(keep.shape)
    field[keep] = x
    return field, converged


def _conductance_torch(
    keep: np.ndarray, tol: float, max_iter: int, device: Any
) -> tuple[np.ndarray, bool]:
    """Matrix-free version of :func:`_conductance_scipy` with torch (CPU or GPU), float64,
    Jacobi-preconditioned; vectors are full (L, Y, X) grids, zero outside ``keep``."""
    import torch

    n_layers = keep.shape[0]
    mask = torch.as_tensor(keep, device=device)
    keepf = mask.to(torch.float64)
    padded = torch.nn.functional.pad(keepf, (1, 1, 1, 1, 1, 1))
    degree = (
        padded[2:, 1:-1, 1:-1]
        + padded[:-2, 1:-1, 1:-1]
        + padded[1:-1, 2:, 1:-1]
        + padded[1:-1, :-2, 1:-1]
        + padded[1:-1, 1:-1, 2:]
        + padded[1:-1, 1:-1, :-2]
    )
    diag = degree * keepf
    diag[0] += 2.0 * keepf[0]
    diag[-1] += 2.0 * keepf[-1]
    inv_diag = torch.where(mask, 1.0 / diag.clamp_min(1.0), torch.zeros_like(diag))
    rhs = torch.zeros_like(keepf)
    rhs[0] = 2.0 * keepf[0]
    profile = 1.0 - (torch.arange(n_layers, dtype=torch.float64, device=device) + 0.5) / n_layers
    x0 = profile[:, None, None] * keepf
    buffer = torch.zeros_like(padded)

    def matvec(p):
        buffer[1:-1, 1:-1, 1:-1] = p
        neighbours = buffer[2:, 1:-1, 1:-1] + buffer[:-2, 1:-1, 1:-1]
        neighbours += buffer[1:-1, 2:, 1:-1]
        neighbours += buffer[1:-1, :-2, 1:-1]
        neighbours += buffer[1:-1, 1:-1, 2:]
        neighbours += buffer[1:-1, 1:-1, :-2]
        out = diag * p
        out -= neighbours
        out *= keepf
        return out

    def dot(u, v):
        return torch.sum(u * v)

    with torch.inference_mode():
        const = 2.0 * float(keepf[0].sum())
        x, _, converged = _pcg(matvec, rhs, x0, lambda r: inv_diag * r, dot, const, tol, max_iter)
        return x.cpu().numpy(), converged


def _dissipation(field: np.ndarray, keep: np.ndarray) -> float:
    """Power dissipated in the network (flow along axis 0, faces held at 1 and 0)."""
    total = 2.0 * float(np.sum((1.0 - field[0][keep[0]]) ** 2))
    total += 2.0 * float(np.sum(field[-1][keep[-1]] ** 2))
    for axis in range(3):
        lo, hi = _pairs(axis)
        both = keep[lo] & keep[hi]
        total += float(np.sum((field[hi] - field[lo])[both] ** 2))
    return total


def _solver_device(device: Any):
    """``None`` for the scipy solver, else the ``torch.device`` of the torch solver."""
    if device is None:
        return None
    import torch

    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PhysicsError(
            f"unknown device {device!r}; use None (scipy), 'auto', 'cpu' or 'cuda'"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PhysicsError("device 'cuda' requested but CUDA is not available; use None or 'auto'")
    return resolved


def tortuosity(
    labels: np.ndarray,
    phase: PhaseSpec = "pore",
    axis: int = 0,
    *,
    tol: float = 1e-6,
    device: Any = None,
    max_iter: int | None = None,
) -> float:
    """Tortuosity factor of one phase along an axis (TauFactor's definition).

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) phase ids: 0 pore, 1 CBD, 2 active.
    phase : str, int or sequence of them
        The conducting phase (or group, e.g. ``("cbd", "active")``), default ``"pore"``.
    axis : int
        Transport direction: 0 (Z, through the electrode), 1 (Y) or 2 (X).
    tol : float
        Target relative accuracy of tau. The conjugate gradient stops when the dissipated power
        (from which tau is computed) fell by less than ``tol`` (relative) over the last 20
        iterations, or when the residual vanishes. The open block and straight channels are
        solved exactly by the starting profile.
    device : None, str or torch.device
        ``None`` (default): scipy.sparse solver on the CPU. ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or
        a ``torch.device``: matrix-free torch solver on that device (needs torch). ``"auto"``:
        torch on CUDA when available, otherwise scipy.
    max_iter : int, optional
        Iteration limit of the conjugate gradient; default ``max(2000, 20 * sum(shape))``. A
        ``RuntimeWarning`` is issued if it is reached before ``tol``; the value returned is then
        a lower bound.

    Returns
    -------
    float
        ``tau = eps * D_bulk / D_eff`` (dimensionless, >= 1; 1 for straight channels), with
        ``eps`` the volume fraction of the phase, percolating or not. ``inf`` if the phase does
        not connect the two faces perpendicular to ``axis``.
    """
    labels = _as_labels(labels)
    ids = _phase_ids(phase)
    axis = _check_axis(axis)
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise PhysicsError(f"tol must be a number between 0 and 1, got {tol!r}") from None
    if not 0 < tol < 1:
        raise PhysicsError(f"tol must be a number between 0 and 1, got {tol!r}")
    solver_device = _solver_device(device)
    mask = np.moveaxis(_phase_mask(labels, ids), axis, 0)
    keep = _percolating(mask, 0)
    if not keep.any():
        return math.inf
    n_layers, cross_section = mask.shape[0], mask.shape[1] * mask.shape[2]
    volume_fraction = float(np.count_nonzero(mask)) / mask.size
    if max_iter is None:
        max_iter = max(2000, 20 * sum(mask.shape))

    if solver_device is None:
        field, converged = _conductance_scipy(keep, tol, max_iter)
    else:
        field, converged = _conductance_torch(
            np.ascontiguousarray(keep), tol, max_iter, solver_device
        )
    if not converged:
        warnings.warn(
            f"tortuosity: conjugate gradient did not reach tol={tol} in {max_iter} iterations; "
            "the value is a lower bound",
            RuntimeWarning,
            stacklevel=2,
        )
    conductance = _dissipation(field, keep)
    relative_diffusivity = conductance * n_layers / cross_section
    return volume_fraction / relative_diffusivity


# --------------------------------------------------------------------------- summaries


def microstructure_metrics(
    labels: np.ndarray,
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM,
    axis: int = 0,
    *,
    device: Any = None,
    with_tortuosity: bool = True,
) -> dict[str, float]:
    """All descriptors of one volume (window) in one dict.

    ``with_tortuosity=False`` leaves out ``tortuosity_pore_*``, the only slow one. The metrics,
    their order, labels and units are declared in :mod:`napari_electrode_cae.core.metrics`.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) phase ids: 0 pore, 1 CBD, 2 active.
    voxel_size_um : float
        Voxel edge length in µm.
    axis : int
        Direction of the connectivity and tortuosity metrics; 0 (Z) by default. The key suffix
        names it (``_z``, ``_y``, ``_x``).
    device : None, str or torch.device
        Passed to :func:`tortuosity`.

    Returns
    -------
    dict
        Metric name -> value for every metric of ``metrics.REGISTRY`` in its order (phase
        fractions, surface densities, TPB density, connected fractions and the pore tortuosity
        factor, ``inf`` where the pores do not percolate), directional ones suffixed by axis.
    """
    from .metrics import metrics_for_axis  # the registry: metrics are declared there, once

    labels = _as_labels(labels)
    vs = _check_voxel_size(voxel_size_um)
    axis = _check_axis(axis)
    return {
        m.name: m(labels, vs, axis, device) for m in metrics_for_axis(axis, costly=with_tortuosity)
    }


def _paired_p_values(original: np.ndarray, reconstruction: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test and Wilcoxon signed-rank p-values (NaN if undefined)."""
    n = len(original)
    if n < 2:
        return math.nan, math.nan
    diff = reconstruction - original
    if np.all(diff == 0):
        return 1.0, 1.0
    if np.all(diff == diff[0]):
        t_p = 0.0
    else:
        t_p = float(stats.ttest_rel(original, reconstruction).pvalue)
    try:
        w_p = float(stats.wilcoxon(original, reconstruction).pvalue)
    except ValueError:
        w_p = math.nan
    return t_p, w_p


def compare_metrics(
    originals: Sequence[Mapping[str, float]],
    reconstructions: Sequence[Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Compare per-window metrics of originals and their reconstructions.

    Parameters
    ----------
    originals, reconstructions : sequence of dict
        One :func:`microstructure_metrics` dict per validation window, paired by position.

    Returns
    -------
    dict
        For each metric present in every dict: ``n`` (pairs where both values are finite; pairs
        with NaN or ``inf``, e.g. a non-percolating tortuosity, are left out), ``n_excluded``,
        ``original_mean``, ``original_std``, ``reconstruction_mean``, ``reconstruction_std``
        (std with ddof=1, 0 for a single pair), ``mean_difference`` (reconstruction − original),
        ``p_value`` (two-sided paired t-test, ``scipy.stats.ttest_rel``) and
        ``wilcoxon_p_value``. Statistics are NaN when no pair is left; p-values are NaN for fewer
        than 2 pairs, 1 when all pairs are equal.
    """
    if len(originals) != len(reconstructions):
        raise PhysicsError(
            f"need one reconstruction per original, got {len(originals)} originals and "
            f"{len(reconstructions)} reconstructions"
        )
    if not originals:
        return {}
    keys = [k for k in originals[0] if all(k in d for d in (*originals, *reconstructions))]
    result: dict[str, dict[str, float]] = {}
    for key in keys:
        o = np.array([float(d[key]) for d in originals])
        r = np.array([float(d[key]) for d in reconstructions])
        finite = np.isfinite(o) & np.isfinite(r)
        o, r = o[finite], r[finite]
        n = len(o)
        ddof = 1 if n > 1 else 0
        t_p, w_p = _paired_p_values(o, r)
        result[key] = {
            "n": n,
            "n_excluded": int(np.count_nonzero(~finite)),
            "original_mean": float(o.mean()) if n else math.nan,
            "original_std": float(o.std(ddof=ddof)) if n else math.nan,
            "reconstruction_mean": float(r.mean()) if n else math.nan,
            "reconstruction_std": float(r.std(ddof=ddof)) if n else math.nan,
            "mean_difference": float((r - o).mean()) if n else math.nan,
            "p_value": t_p,
            "wilcoxon_p_value": w_p,
        }
    return result
