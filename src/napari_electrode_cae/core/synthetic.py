"""Synthetic 3-phase NMC-like cathode microstructures (pore, CBD, active material).

The generator builds a volume in three steps:

1. **Active material.** Polydisperse, slightly anisotropic, randomly oriented ellipsoidal
   particles (lognormal equivalent radii) are placed by random sequential addition, largest
   first, each accepted only if at most ``max_overlap`` of its volume overlaps the particles
   already placed (the allowance is relaxed step by step if the packing jams). Every accepted
   particle stamps its approximate signed distance (voxels, positive inside) into a field; the
   field plus a smooth noise of amplitude ``roughness`` is then cut at the exact quantile that
   gives the target active fraction, which roughens the surfaces and fixes the fraction.
   Calendered electrodes have particles flattened along Z (through-plane) by
   ``calendering_strain`` (volume preserving).
2. **Carbon-binder domain.** Every non-active voxel gets a score; the highest-scoring voxels
   become CBD until the target CBD fraction is met. Two models (``SyntheticSpec.cbd_style``):

   * ``"shell"`` (CAL, UNCAL): the score prefers voxels close to the active surface, voxels in
     necks and crevices between particles (high local density of active material) and, through
     a smooth random field, patches; voxels more than 3 voxels from a particle are used last.
     CBD bridges contacts first and then forms a thin, patchy coating (~80 % of its voxels
     touch a particle, ~100 clusters per 10⁶ voxels). CBD clusters under 10 voxels are moved
     onto the larger ones.
   * ``"speckled"`` (REALISTIC): the CBD of a segmented tomogram is a grainy, porous network
     (carbon black and binder with sub-voxel porosity) that fills part of the pore space. The
     score is the sum of a fine random texture (correlation length ``cbd_grain``, which makes
     the CBD grainy and gives it much pore/CBD surface), a coarse random field (correlation
     length ``cbd_cloud``) that gathers the grains into clouds, so they connect into a network
     instead of dust, and ``cbd_affinity`` times a preference for the voxels right on the
     particle surface (decaying over one voxel) and, weakly, for necks. Most CBD lies in the
     pore space away from the surfaces (about a third of its voxels touch a particle) and it
     falls apart into over a thousand clusters per 10⁶ voxels, most of them a few voxels in
     size, around one dominant network. Single-voxel islands are moved onto the larger
     clusters.
3. **Pores.** Everything else.

Phase ids follow :mod:`napari_electrode_cae.core.stack`: 0 pore, 1 CBD, 2 active. Volumes are
(Z, Y, X) with Z the through-plane direction. Only numpy and scipy are used.

Presets (:data:`PRESETS`, case-insensitive names):

* ``"CAL"`` and ``"UNCAL"`` follow Table 1 of Energies 2022, 15, 4489 (sample 1): uncalendered
  49.1 % porosity, 39.7 % active, 11.2 % CBD; calendered 36.8 % porosity, 49.3 % active,
  13.9 % CBD. Shell CBD, small particles (mean radius 6 voxels). Default shape
  :data:`DEFAULT_SHAPE`.
* ``"REALISTIC"`` is modelled on a real segmented 256³ calendered NMC cathode (0.398 µm
  voxels): 45 % pore, 40 % active, 15 % CBD; separate, polydisperse, roughly spheroidal
  particles (watershed equivalent diameter median ~19 voxels, p10–p90 ~13–30), speckled CBD.
  On 256³ (seed 0) it matches the real volume's active chord length (~16 voxels), active
  specific surface (~0.37 µm⁻¹), pore/solid interface density (~0.74 µm⁻¹), share of CBD
  touching active material (~34 %), CBD clusters per 10⁶ voxels (~1,300) and pore tortuosity
  factor along Z (~2.1); ``benchmarks/realistic_electrode.py`` prints the comparison. Default
  shape 256³ (:func:`default_shape`); about 10 s and 1.2 GB on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import ElectrodeCAEError
from .stack import DEFAULT_VOXEL_SIZE_UM, PHASE_IDS, ElectrodeStack

__all__ = [
    "CBD_STYLES",
    "DEFAULT_SHAPE",
    "PRESETS",
    "SyntheticSpec",
    "SyntheticSpecError",
    "default_shape",
    "generate_electrode",
    "generate_labels",
]

#: Default volume shape (Z, Y, X) in voxels of the CAL and UNCAL presets and of custom specs.
DEFAULT_SHAPE: tuple[int, int, int] = (64, 256, 256)
#: Default volume shape (Z, Y, X) of the presets whose default is not :data:`DEFAULT_SHAPE`:
#: REALISTIC is as large as the real volume it is modelled on, and large enough to hold
#: ~1,000 of its particles.
_PRESET_SHAPES: dict[str, tuple[int, int, int]] = {"REALISTIC": (256, 256, 256)}

_PORE = PHASE_IDS["pore"]
_CBD = PHASE_IDS["cbd"]
_ACTIVE = PHASE_IDS["active"]

# Signed-distance field: how far (voxels) outside each particle its field is stamped, and the
# value of the field far from every particle.
_FIELD_MARGIN = 3.0
_FIELD_FLOOR = -(_FIELD_MARGIN + 1.0)
# Placement: random positions tried per particle, and how much the overlap allowance grows
# every time a pool of particles is used up before the target fraction is reached.
_TRIES_PER_PARTICLE = 12
_OVERLAP_STEP = 0.1
_MAX_ROUNDS = 40
# CBD score weights (distance is in voxels, local density in 0..1, noise has unit std).
_CBD_NECK_WEIGHT = 3.0
_CBD_PATCH_WEIGHT = 0.5
_CBD_MAX_DISTANCE = 3.0
_CBD_FAR_PENALTY = 100.0
# Speckled CBD: weight of the coarse field, decay length (voxels) of the preference for voxels
# near the particles, and weight of the local active density (necks) in that preference.
_SPECKLE_CLOUD_WEIGHT = 1.9
_SPECKLE_REACH = 1.0
_SPECKLE_NECK_WEIGHT = 0.25
# Speckled CBD: single voxels are moved onto the larger clusters (the segmentation of a real
# tomogram rarely keeps a one-voxel CBD island).
_SPECKLE_MIN_CLUSTER = 2
# CBD clusters smaller than this (voxels, face-connected) are moved onto the larger clusters.
_CBD_MIN_CLUSTER = 10


#: Models of the carbon-binder domain (``SyntheticSpec.cbd_style``).
CBD_STYLES: tuple[str, ...] = ("shell", "speckled")


class SyntheticSpecError(ElectrodeCAEError, ValueError):
    """A synthetic electrode specification or generation argument is invalid."""


@dataclass(frozen=True)
class SyntheticSpec:
    """Material description of a synthetic NMC-like cathode.

    The volume shape and the random seed are arguments of :func:`generate_electrode`, so one
    spec describes a material at any size.

    Parameters
    ----------
    porosity : float
        Target pore volume fraction, in (0, 1).
    cbd_fraction : float
        Target carbon-binder-domain volume fraction, in [0, 1). The active fraction is
        ``1 - porosity - cbd_fraction`` and must be positive.
    mean_radius : float
        Mean equivalent-sphere radius of the active particles, in voxels (>= 2). Generation
        time grows like the number of particles, i.e. like ``1 / mean_radius**3``.
    radius_spread : float
        Standard deviation of the log of the radius (lognormal shape parameter), in [0, 1].
        0 gives monodisperse particles.
    calendered : bool
        True for a calendered (CAL) electrode: particles are flattened along Z.
    voxel_size_um : float
        Voxel edge length in micrometres (metadata of the result; the geometry is in voxels).
    calendering_strain : float
        Through-plane (Z) shortening of each particle when ``calendered``, in [0, 0.6); the
        in-plane axes grow so the particle volume is kept. Ignored when not calendered.
    anisotropy : float
        Standard deviation of the log of each particle's semi-axis ratios (random orientation),
        in [0, 0.5]. 0 gives spheres.
    roughness : float
        Amplitude (voxels) of the smooth noise added to the particle surfaces, in [0, 3].
    max_overlap : float
        Largest fraction of a new particle's volume that may overlap particles already placed,
        in [0, 1]. Raised automatically if the packing jams before the target is reached.
    label : str
        Short name used in the stack's ``source`` and ``name`` (e.g. ``"CAL"``).
    cbd_style : {"shell", "speckled"}
        Model of the carbon-binder domain (see the module notes): ``"shell"`` (default) a thin,
        patchy coating on the particles that bridges their contacts; ``"speckled"`` a grainy,
        porous network filling the pore space, denser near and between particles.
    cbd_grain : float
        Speckled CBD only: correlation length (voxels, Gaussian sigma) of the fine texture that
        makes the CBD grainy, in [0, 4] (0: white noise). Larger grains give fewer, larger CBD
        clusters with less surface.
    cbd_cloud : float
        Speckled CBD only: correlation length (voxels) of the coarse field that gathers the
        grains into clouds, in [1, 16].
    cbd_affinity : float
        Speckled CBD only: strength of the preference for voxels near the particles and in the
        necks between them, in [0, 10]. 0 spreads the CBD over the pore space at random; large
        values give a coating much like ``"shell"``.
    """

    porosity: float = 0.368
    cbd_fraction: float = 0.139
    mean_radius: float = 6.0
    radius_spread: float = 0.3
    calendered: bool = True
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM
    calendering_strain: float = 0.2
    anisotropy: float = 0.1
    roughness: float = 0.5
    max_overlap: float = 0.15
    label: str = "custom"
    cbd_style: str = "shell"
    cbd_grain: float = 1.0
    cbd_cloud: float = 4.0
    cbd_affinity: float = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            is_number = isinstance(value, (int, float, np.integer, np.floating))
            if isinstance(value, bool) or not is_number:
                raise SyntheticSpecError(f"{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise SyntheticSpecError(f"{name} must be finite, got {value}")
            return value

        porosity = number("porosity")
        cbd = number("cbd_fraction")
        if not 0.0 < porosity < 1.0:
            raise SyntheticSpecError(f"porosity must be in (0, 1), got {porosity}")
        if not 0.0 <= cbd < 1.0:
            raise SyntheticSpecError(f"cbd_fraction must be in [0, 1), got {cbd}")
        if porosity + cbd >= 1.0:
            raise SyntheticSpecError(
                f"porosity + cbd_fraction must be < 1 to leave room for active material, "
                f"got {porosity} + {cbd} = {porosity + cbd:.4g}"
            )
        checks = {
            "mean_radius": (2.0, math.inf, "[2, inf)"),
            "radius_spread": (0.0, 1.0, "[0, 1]"),
            "anisotropy": (0.0, 0.5, "[0, 0.5]"),
            "roughness": (0.0, 3.0, "[0, 3]"),
            "max_overlap": (0.0, 1.0, "[0, 1]"),
            "cbd_grain": (0.0, 4.0, "[0, 4]"),
            "cbd_cloud": (1.0, 16.0, "[1, 16]"),
            "cbd_affinity": (0.0, 10.0, "[0, 10]"),
        }
        for name, (low, high, text) in checks.items():
            value = number(name)
            if not low <= value <= high:
                raise SyntheticSpecError(f"{name} must be in {text}, got {value}")
        strain = number("calendering_strain")
        if not 0.0 <= strain < 0.6:
            raise SyntheticSpecError(f"calendering_strain must be in [0, 0.6), got {strain}")
        voxel = number("voxel_size_um")
        if not voxel > 0.0:
            raise SyntheticSpecError(f"voxel_size_um must be positive, got {voxel}")
        if not isinstance(self.calendered, (bool, np.bool_)):
            raise SyntheticSpecError(f"calendered must be True or False, got {self.calendered!r}")
        if not isinstance(self.label, str) or not self.label:
            raise SyntheticSpecError(f"label must be a non-empty string, got {self.label!r}")
        if self.cbd_style not in CBD_STYLES:
            raise SyntheticSpecError(
                f"cbd_style must be one of {', '.join(map(repr, CBD_STYLES))}, "
                f"got {self.cbd_style!r}"
            )

    @property
    def active_fraction(self) -> float:
        """Target active-material volume fraction, ``1 - porosity - cbd_fraction``."""
        return 1.0 - self.porosity - self.cbd_fraction

    @property
    def targets(self) -> dict[str, float]:
        """Target fractions ``{"pore": .., "cbd": .., "active": ..}`` (sum to 1)."""
        return {"pore": self.porosity, "cbd": self.cbd_fraction, "active": self.active_fraction}


#: Presets after Table 1 (sample 1) of Energies 2022, 15, 4489.
PRESETS: dict[str, SyntheticSpec] = {
    "CAL": SyntheticSpec(porosity=0.368, cbd_fraction=0.139, calendered=True, label="CAL"),
    "UNCAL": SyntheticSpec(porosity=0.491, cbd_fraction=0.112, calendered=False, label="UNCAL"),
    "REALISTIC": SyntheticSpec(
        porosity=0.45,
        cbd_fraction=0.15,
        mean_radius=10.8,
        radius_spread=0.36,
        calendered=True,
        calendering_strain=0.05,
        anisotropy=0.15,
        roughness=0.8,
        max_overlap=0.05,
        label="REALISTIC",
        cbd_style="speckled",
        cbd_grain=0.5,
        cbd_cloud=2.0,
        cbd_affinity=3.0,
    ),
}


def default_shape(preset: str | None = None) -> tuple[int, int, int]:
    """Default volume shape of a preset.

    Parameters
    ----------
    preset : str, optional
        Name in :data:`PRESETS` (case-insensitive); ``None`` means ``"CAL"``.

    Returns
    -------
    tuple of 3 int
        (Z, Y, X) in voxels: (256, 256, 256) for ``"REALISTIC"``, :data:`DEFAULT_SHAPE` for
        ``"CAL"`` and ``"UNCAL"``.

    Raises
    ------
    SyntheticSpecError
        For an unknown preset.
    """
    return _PRESET_SHAPES.get(_preset_key(preset), DEFAULT_SHAPE)


def generate_electrode(
    shape: Sequence[int] | None = None,
    preset: str | None = None,
    *,
    spec: SyntheticSpec | None = None,
    seed: int = 0,
    **overrides: object,
) -> ElectrodeStack:
    """Generate a synthetic 3-phase NMC-like cathode stack.

    Parameters
    ----------
    shape : sequence of 3 int, optional
        Volume shape (Z, Y, X) in voxels; Z is the through-plane direction. Default: the
        preset's :func:`default_shape` (256³ for ``"REALISTIC"``, :data:`DEFAULT_SHAPE`
        otherwise), or :data:`DEFAULT_SHAPE` with ``spec``.
    preset : {"CAL", "UNCAL", "REALISTIC"}, optional
        Named material preset from :data:`PRESETS` (case-insensitive). Defaults to ``"CAL"``
        when neither ``preset`` nor ``spec`` is given. Not allowed together with ``spec``.
    spec : SyntheticSpec, optional
        Full material description instead of a preset.
    seed : int
        Non-negative random seed; the same seed, shape and spec give an identical volume.
    **overrides
        :class:`SyntheticSpec` fields replacing those of the preset or spec, e.g.
        ``porosity=0.4`` or ``mean_radius=5``.

    Returns
    -------
    ElectrodeStack
        ``labels`` (Z, Y, X) uint8 phase ids (0 pore, 1 CBD, 2 active), ``voxel_size_um`` and
        ``calendered`` from the spec, ``source`` like ``"synthetic:CAL seed=0"`` (overrides
        appended) and ``name`` like ``"synthetic_CAL_s0"``.

    Raises
    ------
    SyntheticSpecError
        (a ``ValueError``) for an unknown preset or field, both ``preset`` and ``spec``, a bad
        shape or seed, or fractions out of range.
    """
    spec = _resolve_spec(preset, spec, overrides)
    if shape is None:
        shape = DEFAULT_SHAPE if preset is None else default_shape(preset)
    shape3 = _check_shape(shape)
    seed = _check_seed(seed)
    labels = generate_labels(shape3, spec, seed=seed)
    extra = "".join(f" {key}={overrides[key]!r}" for key in sorted(overrides))
    return ElectrodeStack(
        labels=labels,
        voxel_size_um=float(spec.voxel_size_um),
        calendered=bool(spec.calendered),
        source=f"synthetic:{spec.label} seed={seed}{extra}",
        name=f"synthetic_{spec.label}_s{seed}",
    )


def generate_labels(shape: Sequence[int], spec: SyntheticSpec, seed: int = 0) -> np.ndarray:
    """Generate the phase-id volume of a synthetic electrode.

    Parameters
    ----------
    shape : sequence of 3 int
        Volume shape (Z, Y, X) in voxels.
    spec : SyntheticSpec
        Material description.
    seed : int
        Non-negative random seed.

    Returns
    -------
    numpy.ndarray
        (Z, Y, X) uint8 phase ids: 0 pore, 1 CBD, 2 active. Each phase's voxel count equals
        its target fraction times the voxel count, rounded.
    """
    if not isinstance(spec, SyntheticSpec):
        raise SyntheticSpecError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
    shape3 = _check_shape(shape)
    seed = _check_seed(seed)
    rng_place, rng_rough, rng_patch = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    n_voxels = shape3[0] * shape3[1] * shape3[2]
    n_active = int(round(spec.active_fraction * n_voxels))
    n_cbd = min(int(round(spec.cbd_fraction * n_voxels)), n_voxels - n_active)

    field = _place_particles(shape3, spec, n_active, rng_place)
    if spec.roughness > 0:
        field += np.float32(spec.roughness) * _smooth_noise(shape3, 1.2, rng_rough)

    labels = np.full(shape3, _PORE, dtype=np.uint8)
    flat = labels.reshape(-1)
    if n_active > 0:
        flat[_top_k(field.reshape(-1), n_active)] = _ACTIVE
    del field
    if n_cbd > 0 and spec.cbd_style == "speckled":
        score = _speckled_cbd_score(labels, spec, rng_patch)
        flat[_top_k(score.reshape(-1), n_cbd)] = _CBD
        _merge_specks(labels, _CBD, _SPECKLE_MIN_CLUSTER, score)
    elif n_cbd > 0:
        score = _cbd_score(labels, spec, rng_patch)
        flat[_top_k(score.reshape(-1), n_cbd)] = _CBD
        _merge_specks(labels, _CBD, _CBD_MIN_CLUSTER, score)
    return labels


# ----------------------------------------------------------------------------------------------
# argument checks


def _resolve_spec(
    preset: str | None, spec: SyntheticSpec | None, overrides: dict[str, object]
) -> SyntheticSpec:
    if preset is not None and spec is not None:
        raise SyntheticSpecError("give either preset or spec, not both")
    if spec is None:
        spec = PRESETS[_preset_key(preset)]
    elif not isinstance(spec, SyntheticSpec):
        raise SyntheticSpecError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
    if overrides:
        valid = {f.name for f in dataclasses.fields(SyntheticSpec)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise SyntheticSpecError(
                f"unknown SyntheticSpec field(s) {', '.join(unknown)}; "
                f"valid fields: {', '.join(sorted(valid))}"
            )
        spec = dataclasses.replace(spec, **overrides)  # re-validates in __post_init__
    return spec


def _preset_key(preset: str | None) -> str:
    """The key in :data:`PRESETS` of a case-insensitive preset name (``None``: ``"CAL"``)."""
    name = "CAL" if preset is None else preset
    if not isinstance(name, str) or name.upper() not in PRESETS:
        raise SyntheticSpecError(
            f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    return name.upper()


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    message = f"shape must be 3 positive integers (Z, Y, X), got {shape!r}"
    try:
        dims = tuple(shape)
    except TypeError:
        raise SyntheticSpecError(message) from None
    if len(dims) != 3 or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims
    ):
        raise SyntheticSpecError(message)
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticSpecError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------------------------
# active material


def _place_particles(
    shape: tuple[int, int, int], spec: SyntheticSpec, n_target: int, rng: np.random.Generator
) -> np.ndarray:
    """Random sequential addition of ellipsoids until their union covers ``n_target`` voxels.

    Returns the float32 (Z, Y, X) field: the largest approximate signed distance (voxels,
    positive inside) to any placed particle, floored at ``_FIELD_FLOOR``.
    """
    field = np.full(shape, _FIELD_FLOOR, dtype=np.float32)
    occupied = np.zeros(shape, dtype=bool)
    n_occupied = 0
    size = np.asarray(shape, dtype=np.float64)
    sigma = float(spec.radius_spread)
    mu = math.log(spec.mean_radius) - 0.5 * sigma**2  # E[r] = mean_radius
    mean_volume = 4.0 / 3.0 * math.pi * math.exp(3.0 * mu + 4.5 * sigma**2)
    r_max = 3.0 * spec.mean_radius
    allowed = float(spec.max_overlap)

    for _ in range(_MAX_ROUNDS):
        if n_occupied >= n_target:
            break
        n_pool = int(math.ceil((n_target - n_occupied) / mean_volume)) + 4
        radii = np.clip(rng.lognormal(mu, sigma, n_pool), 1.0, r_max)
        radii = np.sort(radii)[::-1]
        shapes = _shape_matrices(radii, spec, rng)  # (n, 3, 3): p = M u, |u| <= 1
        cov = shapes @ np.transpose(shapes, (0, 2, 1))  # M M^T
        inv_cov = np.linalg.inv(cov)
        half = np.sqrt(np.einsum("nii->ni", cov))  # half-extent per axis, voxels
        # Centres may lie up to one half-extent outside the volume, so the particle density is
        # uniform up to the faces.
        low = -half
        span = size[None, :] - 1.0 + 2.0 * half
        centres = low[:, None, :] + rng.random((n_pool, _TRIES_PER_PARTICLE, 3)) * span[:, None, :]

        for i in range(n_pool):
            placed = False
            for c in centres[i]:
                sl, q = _quadratic_form(c, half[i], inv_cov[i], shape, 0.0)
                if q is None:
                    continue
                inside = q <= 1.0
                n_in = int(np.count_nonzero(inside))
                if n_in == 0:
                    continue
                region = occupied[sl]
                n_overlap = int(np.count_nonzero(region & inside))
                if n_overlap > allowed * n_in:
                    continue
                region |= inside
                n_occupied += n_in - n_overlap
                _stamp_distance(field, c, half[i], inv_cov[i], radii[i], shape)
                placed = True
                break
            if placed and n_occupied >= n_target:
                break
        allowed = min(1.0, allowed + _OVERLAP_STEP)
    return field


def _shape_matrices(radii: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) matrices mapping the unit ball onto each particle, in (z, y, x) voxels."""
    n = radii.shape[0]
    log_axes = rng.normal(0.0, spec.anisotropy, (n, 3)) if spec.anisotropy > 0 else np.zeros((n, 3))
    log_axes -= log_axes.mean(axis=1, keepdims=True)  # keep the volume of the sphere of radius r
    axes = radii[:, None] * np.exp(log_axes)
    rotations = _random_rotations(n, rng)
    shapes = rotations * axes[:, None, :]  # R @ diag(axes)
    if spec.calendered and spec.calendering_strain > 0:
        z_scale = 1.0 - spec.calendering_strain
        squeeze = np.array([z_scale, z_scale**-0.5, z_scale**-0.5])
        shapes = squeeze[None, :, None] * shapes  # diag(squeeze) @ R @ diag(axes)
    return shapes


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) uniformly random rotation matrices (from random unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )


def _quadratic_form(
    centre: np.ndarray,
    half: np.ndarray,
    inv_cov: np.ndarray,
    shape: tuple[int, int, int],
    margin: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray | None]:
    """Ellipsoid quadratic form ``p^T C^-1 p`` (1 on the surface) on the clipped bounding box.

    Returns the box as slices and the (bz, by, bx) float64 form, or ``None`` if the box misses
    the volume.
    """
    lo = np.maximum(np.floor(centre - half - margin).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half + margin).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return (slice(0, 0),) * 3, None
    dz = np.arange(lo[0], hi[0]) - centre[0]
    dy = np.arange(lo[1], hi[1]) - centre[1]
    dx = np.arange(lo[2], hi[2]) - centre[2]
    a = inv_cov
    q = (
        (a[0, 0] * dz * dz)[:, None, None]
        + (a[1, 1] * dy * dy)[None, :, None]
        + (a[2, 2] * dx * dx)[None, None, :]
        + 2.0 * a[0, 1] * dz[:, None, None] * dy[None, :, None]
        + 2.0 * a[0, 2] * dz[:, None, None] * dx[None, None, :]
        + 2.0 * a[1, 2] * dy[None, :, None] * dx[None, None, :]
    )
    sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return sl, q


def _stamp_distance(
    field: np.ndarray,
    centre: np.ndarray,
    half: np.ndarray,
    inv_cov: np.ndarray,
    radius: float,
    shape: tuple[int, int, int],
) -> None:
    """Raise ``field`` to the particle's radial signed distance within its box plus margin.

    The radial distance along the ray from the centre is ``R_ray * (1 - sqrt(q))`` with
    ``R_ray = |p| / sqrt(q)`` the ellipsoid radius in that direction (voxels).
    """
    sl, q = _quadratic_form(centre, half, inv_cov, shape, _FIELD_MARGIN)
    if q is None:
        return
    zz, yy, xx = np.ogrid[sl]
    norm2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    root_q = np.sqrt(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ray_radius = np.where(root_q > 1e-9, np.sqrt(norm2) / root_q, radius)
    dist = (ray_radius * (1.0 - root_q)).astype(np.float32)
    np.maximum(field[sl], dist, out=field[sl])


# ----------------------------------------------------------------------------------------------
# carbon-binder domain


def _cbd_score(labels: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """CBD preference of every voxel (float32, (Z, Y, X)); active voxels get ``-inf``.

    Higher for voxels next to the active surface, in necks between particles (high local
    active density) and in random smooth patches; voxels farther than ``_CBD_MAX_DISTANCE``
    from any active voxel are heavily penalised and only used if nothing else is left.
    """
    active = labels == _ACTIVE
    if active.any():
        distance = ndi.distance_transform_edt(~active).astype(np.float32)
    else:
        distance = np.zeros(labels.shape, dtype=np.float32)
    width = 2 * int(math.ceil(0.5 * spec.mean_radius)) + 1
    density = ndi.uniform_filter(active.astype(np.float32), size=width, mode="nearest")
    score = _CBD_NECK_WEIGHT * density
    score -= distance
    score += np.float32(_CBD_PATCH_WEIGHT) * _smooth_noise(labels.shape, 1.5, rng)
    score[distance > _CBD_MAX_DISTANCE] -= _CBD_FAR_PENALTY
    score[active] = -np.inf
    return score


def _speckled_cbd_score(
    labels: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator
) -> np.ndarray:
    """Speckled-CBD preference of every voxel (float32, (Z, Y, X)); active voxels get ``-inf``.

    The sum of a fine random texture (unit std, correlation length ``cbd_grain`` voxels), a
    coarse random field (std ``_SPECKLE_CLOUD_WEIGHT``, correlation length ``cbd_cloud``) and
    ``cbd_affinity`` times a proximity term: ``exp(-(d - 1) / _SPECKLE_REACH)`` for a voxel at
    distance ``d`` (voxels) from the nearest active voxel (1 on the particle surface), plus
    ``_SPECKLE_NECK_WEIGHT`` times the local active fraction in a cube about one particle radius
    wide (necks and crevices).
    """
    shape = labels.shape
    active = labels == _ACTIVE
    score = _smooth_noise(shape, spec.cbd_grain, rng)
    score += np.float32(_SPECKLE_CLOUD_WEIGHT) * _smooth_noise(shape, spec.cbd_cloud, rng)
    if spec.cbd_affinity > 0 and active.any():
        distance = ndi.distance_transform_edt(~active).astype(np.float32)
        distance -= np.float32(1.0)
        distance *= np.float32(-1.0 / _SPECKLE_REACH)
        proximity = np.exp(distance, out=distance)
        width = 2 * int(math.ceil(0.5 * spec.mean_radius)) + 1
        proximity += _SPECKLE_NECK_WEIGHT * ndi.uniform_filter(
            active.astype(np.float32), size=width, mode="nearest"
        )
        proximity *= np.float32(spec.cbd_affinity)
        score += proximity
        del proximity
    score[active] = -np.inf
    return score


def _merge_specks(labels: np.ndarray, phase: int, min_size: int, score: np.ndarray) -> None:
    """Move clusters of ``phase`` smaller than ``min_size`` voxels onto the larger clusters.

    The speck voxels become pore; the same number of pore voxels touching the remaining
    clusters, those with the highest ``score``, take the phase, so the phase's voxel count is
    unchanged. Works in place on the (Z, Y, X) uint8 ``labels``.
    """
    mask = labels == phase
    clusters, n = ndi.label(mask)
    if n == 0:
        return
    small = np.bincount(clusters.ravel()) < min_size
    small[0] = False
    if not small[1:].any() or small[1:].all():
        return
    speck = small[clusters]
    del clusters
    n_speck = int(np.count_nonzero(speck))
    mask &= ~speck
    labels[speck] = _PORE
    frontier = ndi.binary_dilation(mask) & (labels == _PORE) & ~speck
    candidates = np.flatnonzero(frontier)
    flat = labels.reshape(-1)
    chosen = candidates[_top_k(score.reshape(-1)[candidates], min(n_speck, candidates.size))]
    flat[chosen] = phase
    missing = n_speck - chosen.size
    if missing > 0:  # not enough room next to the clusters: keep the best specks
        speck_index = np.flatnonzero(speck)
        flat[speck_index[_top_k(score.reshape(-1)[speck_index], missing)]] = phase


# ----------------------------------------------------------------------------------------------
# helpers


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise, float32, zero mean and unit standard deviation."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, sigma, mode="wrap")
    std = float(noise.std())
    if std > 0:
        noise -= np.float32(noise.mean())
        noise /= np.float32(std)
    return noise


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` largest entries of a 1D array (ties broken deterministically)."""
    if k >= values.size:
        return np.arange(values.size)
    return np.argpartition(values, values.size - k)[values.size - k :]
