"""The physics metrics, declared once: name, label, unit, function, cost.

Every per-volume metric the project reports — in the physics report, ``metrics.csv``, the CLI
tables, the GUI's Physics and Design tabs, prediction and design by target — is one
:class:`Metric` in :data:`REGISTRY`. Adding a metric is one edit: append a :class:`Metric` to
the tuple below; :func:`~napari_electrode_cae.core.physics.microstructure_metrics` computes it,
the tables and CSV columns name it, and prediction and design can use it.

Metrics that depend on a direction (percolation, tortuosity) are declared with an ``{axis}``
placeholder in the name and label (``tortuosity_pore_{axis}``); :func:`metrics_for_axis` gives
the concrete ones for Z (0, through the electrode, the default), Y (1) or X (2).

Example
-------
>>> from napari_electrode_cae.core import metrics
>>> m = metrics.get("tortuosity_pore_z")
>>> m.label, m.unit, m.costly
('Pore tortuosity factor (Z)', '', True)
>>> metrics.format_value("ssa_active_per_um", 0.81234)
'0.8123 µm⁻¹'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import ElectrodeCAEError

__all__ = [
    "AXIS_NAMES",
    "Metric",
    "MetricError",
    "REGISTRY",
    "compute",
    "format_value",
    "get",
    "label",
    "metric_names",
    "metrics_for_axis",
    "table_header",
    "unit",
]

#: Axis letters used in metric names: axis 0 is Z (through the electrode), 1 is Y, 2 is X.
AXIS_NAMES: tuple[str, str, str] = ("z", "y", "x")


class MetricError(ElectrodeCAEError, KeyError):
    """An unknown metric name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


#: ``function(labels, voxel_size_um, axis, device) -> float``.
MetricFunction = Callable[[np.ndarray, float, int, Any], float]


@dataclass(frozen=True)
class Metric:
    """One per-volume physics metric.

    Attributes
    ----------
    name : str
        Key in reports, CSV columns and on the command line, e.g. ``"pore_fraction"``; with
        ``{axis}`` for direction-dependent metrics until :meth:`for_axis` fills it in.
    label : str
        Human-readable name for tables and the GUI.
    unit : str
        Unit of the value (``""`` for dimensionless ones), e.g. ``"µm⁻¹"``.
    function : callable
        ``function(labels, voxel_size_um, axis, device) -> float`` for a (Z, Y, X) uint8
        phase-id volume.
    costly : bool
        True for metrics that solve a diffusion problem (seconds per large window); callers
        may leave them out (``with_tortuosity=False``).
    digits : int
        Significant digits for display.
    lower, upper : float
        Range of possible values (``inf`` when open), used to keep design targets sane.
    """

    name: str
    label: str
    unit: str
    function: MetricFunction
    costly: bool = False
    digits: int = 4
    lower: float = -math.inf
    upper: float = math.inf
    #: The axis a directional metric was made for by :meth:`for_axis` (None before).
    axis: int | None = None
    #: A short label for narrow tables ("" = the label).
    short: str = ""

    @property
    def short_label(self) -> str:
        """:attr:`short` or, if empty, :attr:`label`."""
        return self.short or self.label

    @property
    def is_fraction(self) -> bool:
        """True for dimensionless metrics bounded by 0..1 (shown as percentages)."""
        return not self.unit and self.lower == 0.0 and self.upper == 1.0

    @property
    def directional(self) -> bool:
        """True when the name still carries the ``{axis}`` placeholder."""
        return "{axis}" in self.name

    def for_axis(self, axis: int) -> Metric:
        """This metric along ``axis`` (0 Z, 1 Y, 2 X); itself if not directional."""
        if not self.directional:
            return self
        letter = AXIS_NAMES[axis]
        return replace(
            self,
            name=self.name.format(axis=letter),
            label=self.label.format(axis=letter.upper()),
            short=self.short.format(axis=letter.upper()),
            axis=int(axis),
        )

    def format(self, value: float) -> str:
        """``value`` with this metric's digits and unit ("n/a" for NaN, "inf")."""
        return format_value(self, value)

    def __call__(
        self, labels: np.ndarray, voxel_size_um: float, axis: int | None = None, device: Any = None
    ) -> float:
        """The metric of one volume, along its own axis (or ``axis``, default Z)."""
        if axis is None:
            axis = self.axis if self.axis is not None else 0
        return float(self.function(labels, voxel_size_um, axis, device))


# --------------------------------------------------------------------------- functions
# physics is imported lazily: physics.microstructure_metrics reads this registry.


def _fraction(phase: str) -> MetricFunction:
    def compute_fraction(labels, voxel_size_um, axis, device):
        from .stack import volume_fractions

        return volume_fractions(labels)[phase]

    compute_fraction.__doc__ = f"Volume fraction of {phase} (0..1)."
    return compute_fraction


def _ssa_active(labels, voxel_size_um, axis, device):
    from .physics import specific_surface_area

    return specific_surface_area(labels, "active", voxel_size_um)


def _ssa_pore_solid(labels, voxel_size_um, axis, device):
    from .physics import interface_area_density

    return interface_area_density(labels, "pore", ("cbd", "active"), voxel_size_um)


def _tpb(labels, voxel_size_um, axis, device):
    from .physics import triple_phase_boundary_density

    return triple_phase_boundary_density(labels, voxel_size_um)


def _connected(phase: str) -> MetricFunction:
    def compute_connected(labels, voxel_size_um, axis, device):
        from .physics import connected_fraction

        return connected_fraction(labels, phase, axis)

    compute_connected.__doc__ = f"Percolating fraction of {phase} along the axis (0..1)."
    return compute_connected


def _tortuosity_pore(labels, voxel_size_um, axis, device):
    from .physics import tortuosity

    return tortuosity(labels, "pore", axis, device=device)


#: Every metric, in report order. Append here to add one.
REGISTRY: tuple[Metric, ...] = (
    Metric("pore_fraction", "Pore fraction", "", _fraction("pore"), lower=0.0, upper=1.0),
    Metric("cbd_fraction", "CBD fraction", "", _fraction("cbd"), lower=0.0, upper=1.0),
    Metric("active_fraction", "Active fraction", "", _fraction("active"), lower=0.0, upper=1.0),
    Metric(
        "ssa_active_per_um",
        "Active specific surface area",
        "µm⁻¹",
        _ssa_active,
        lower=0.0,
        short="SSA active",
    ),
    Metric(
        "ssa_pore_solid_per_um",
        "Pore/solid interface area",
        "µm⁻¹",
        _ssa_pore_solid,
        lower=0.0,
        short="SSA pore/solid",
    ),
    Metric(
        "tpb_density_per_um2",
        "Triple-phase boundary density",
        "µm⁻²",
        _tpb,
        lower=0.0,
        short="TPB density",
    ),
    Metric(
        "pore_connected_fraction_{axis}",
        "Percolating pore fraction ({axis})",
        "",
        _connected("pore"),
        lower=0.0,
        upper=1.0,
        short="Pore connected ({axis})",
    ),
    Metric(
        "active_connected_fraction_{axis}",
        "Percolating active fraction ({axis})",
        "",
        _connected("active"),
        lower=0.0,
        upper=1.0,
        short="Active connected ({axis})",
    ),
    Metric(
        "cbd_connected_fraction_{axis}",
        "Percolating CBD fraction ({axis})",
        "",
        _connected("cbd"),
        lower=0.0,
        upper=1.0,
        short="CBD connected ({axis})",
    ),
    Metric(
        "tortuosity_pore_{axis}",
        "Pore tortuosity factor ({axis})",
        "",
        _tortuosity_pore,
        costly=True,
        lower=1.0,
        short="Pore tortuosity ({axis})",
    ),
)


def metrics_for_axis(axis: int = 0, *, costly: bool = True) -> tuple[Metric, ...]:
    """The registry's metrics along ``axis`` (0 Z, 1 Y, 2 X), in report order.

    ``costly=False`` leaves out the slow ones (the pore tortuosity).
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
        raise MetricError(f"axis must be 0 (Z), 1 (Y) or 2 (X), got {axis!r}")
    return tuple(m.for_axis(int(axis)) for m in REGISTRY if costly or not m.costly)


_NAMED_CACHE: dict[int, dict[str, Metric]] = {}


def _named() -> dict[str, Metric]:
    """Every concrete metric (all axes) by name, rebuilt when :data:`REGISTRY` is replaced."""
    named = _NAMED_CACHE.get(id(REGISTRY))
    if named is None:
        named = {}
        for axis in range(3):
            for m in metrics_for_axis(axis):
                named.setdefault(m.name, m)
        _NAMED_CACHE.clear()
        _NAMED_CACHE[id(REGISTRY)] = named
    return named


def metric_names(axis: int = 0, *, costly: bool = True) -> list[str]:
    """Names of :func:`metrics_for_axis`, in report order."""
    return [m.name for m in metrics_for_axis(axis, costly=costly)]


def get(name: str | Metric) -> Metric:
    """The metric called ``name`` (any axis suffix, e.g. ``tortuosity_pore_x``).

    Raises
    ------
    MetricError
        For an unknown name; the message lists the known ones.
    """
    if isinstance(name, Metric):
        return name
    key = str(name).strip()
    try:
        return _named()[key]
    except KeyError:
        raise MetricError(
            f"unknown metric {name!r}; known metrics: {', '.join(metric_names())}"
        ) from None


def label(name: str) -> str:
    """Label of metric ``name``, or ``name`` itself if it is not a registered metric."""
    m = _named().get(name)
    return m.label if m is not None else name


def unit(name: str) -> str:
    """Unit of metric ``name`` (``""`` if dimensionless or unknown)."""
    m = _named().get(name)
    return m.unit if m is not None else ""


def format_value(metric: str | Metric, value: float, *, with_unit: bool = True) -> str:
    """A metric value for display: its digits, then its unit (``"n/a"`` for NaN)."""
    m = metric if isinstance(metric, Metric) else _named().get(metric)
    digits = m.digits if m is not None else 4
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        text = "inf" if value > 0 else "-inf"
    else:
        text = f"{value:.{digits}g}"
    if with_unit and m is not None and m.unit:
        text += f" {m.unit}"
    return text


def compute(
    labels: np.ndarray,
    voxel_size_um: float,
    names: Iterable[str] | None = None,
    *,
    axis: int = 0,
    device: Any = None,
    costly: bool = True,
) -> dict[str, float]:
    """Metrics of one (Z, Y, X) phase-id volume, keyed by name.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) uint8 phase ids: 0 pore, 1 CBD, 2 active.
    voxel_size_um : float
        Voxel edge length in µm.
    names : iterable of str, optional
        Only these metrics (any axis suffix); default: every metric along ``axis``.
    axis : int
        Direction of the directional metrics when ``names`` is not given.
    device : None or str
        Tortuosity solver device, see :func:`~napari_electrode_cae.core.physics.tortuosity`.
    costly : bool
        With ``names=None``: include the slow metrics (pore tortuosity).
    """
    if names is None:
        chosen: Iterable[Metric] = metrics_for_axis(axis, costly=costly)
    else:
        chosen = [get(n) for n in names]
    out: dict[str, float] = {}
    for m in chosen:
        out[m.name] = m(labels, voxel_size_um, m.axis if m.axis is not None else axis, device)
    return out


def table_header(names: Iterable[str]) -> Mapping[str, str]:
    """``{name: "label (unit)"}`` for column headers."""
    return {n: label(n) + (f" ({unit(n)})" if unit(n) else "") for n in names}
