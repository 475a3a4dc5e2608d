"""The in-memory electrode stack and the phase conventions.

Phase ids in memory: 0 = pore, 1 = carbon-binder domain (CBD), 2 = active material (the grey-level
order in X-ray CT). The network sees pore as -1, CBD as 0 and active as +1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Phase names in phase-id order (id 0, 1, 2).
PHASES: tuple[str, str, str] = ("pore", "cbd", "active")
#: Phase id of each phase name.
PHASE_IDS: dict[str, int] = {name: i for i, name in enumerate(PHASES)}
#: Network value of each phase id (pore -1, CBD 0, active +1).
PHASE_VALUES = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
#: Display colours (RGBA, 0..1) used by every view of a stack: pore dark blue-grey, CBD orange,
#: active material light grey.
PHASE_COLORS: dict[int, tuple[float, float, float, float]] = {
    0: (0.12, 0.16, 0.30, 1.0),
    1: (0.95, 0.55, 0.10, 1.0),
    2: (0.82, 0.84, 0.88, 1.0),
}
#: Voxel edge length of the NREL NMC data in micrometres.
DEFAULT_VOXEL_SIZE_UM = 0.398


@dataclass
class ElectrodeStack:
    """A segmented 3-phase electrode volume.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) uint8 phase ids: 0 pore, 1 CBD, 2 active. Z is the through-plane direction
        along which windows slide. May be a read-only or memory-mapped array.
    voxel_size_um : float
        Voxel edge length in micrometres.
    calendered : bool or None
        True for a calendered (CAL) electrode, False for uncalendered (UNCAL), None if unknown.
    source : str
        Where the stack came from (a path, ``"synthetic:..."`` or a layer name).
    name : str
        Short display name.
    phase_mapping : dict
        Stored value -> phase name used when the stack was read (empty if not read from a file).
    """

    labels: np.ndarray
    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM
    calendered: bool | None = None
    source: str = ""
    name: str = ""
    phase_mapping: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 3:
            raise ValueError(f"labels must be 3D (Z, Y, X), got shape {labels.shape}")
        if labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 phase ids, got {labels.dtype}")
        self.labels = labels
        if not self.voxel_size_um > 0:
            raise ValueError(f"voxel size must be positive, got {self.voxel_size_um}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) in voxels."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    @property
    def tag(self) -> str:
        """``"CAL"``, ``"UNCAL"`` or ``"?"``."""
        if self.calendered is None:
            return "?"
        return "CAL" if self.calendered else "UNCAL"


def volume_fractions(labels: np.ndarray) -> dict[str, float]:
    """Volume fraction of each phase.

    Parameters
    ----------
    labels : numpy.ndarray
        Phase ids (any shape), 0 pore, 1 CBD, 2 active.

    Returns
    -------
    dict
        ``{"pore": f0, "cbd": f1, "active": f2}``, fractions of all voxels (sum to 1).
    """
    labels = np.atleast_1d(np.asarray(labels))
    counts = np.zeros(256, dtype=np.int64)
    # count slab by slab: bincount casts to intp, which would copy a whole volume at 8 B/voxel
    plane = max(labels[0].size, 1) if len(labels) else 1
    step = max(1, (1 << 22) // plane)
    for start in range(0, len(labels), step):
        slab = labels[start : start + step].astype(np.uint8, copy=False).ravel()
        counts += np.bincount(slab, minlength=256)
    total = max(int(labels.size), 1)
    return {name: float(counts[i]) / total for i, name in enumerate(PHASES)}


def to_network_values(labels: np.ndarray) -> np.ndarray:
    """Map phase ids to network values (pore -1, CBD 0, active +1) as float32."""
    return PHASE_VALUES[np.asarray(labels, dtype=np.intp)]


def snap_to_phases(values: np.ndarray) -> np.ndarray:
    """Snap continuous network values to the nearest phase id (uint8).

    Values below -0.5 become pore, above +0.5 active, the rest CBD.
    """
    values = np.asarray(values)
    out = np.ones(values.shape, dtype=np.uint8)
    out[values < -0.5] = 0
    out[values > 0.5] = 2
    return out
