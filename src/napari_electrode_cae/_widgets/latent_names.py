"""Latent sliders a person can read: what each feature tracks, and where it sits in the data.

A slider is named after the strongest correlation its feature has with a measured variable, once
one is known: ``"z5 · pore fraction +0.67"``, read from the run's ``correlations.csv``
(``electrode-cae physics``; only pairs that survived the FDR correction and beat the random
encoder). Next to it, the slider's value in units of the training windows' spread
(``"+1.2 σ"``, 0 = the mean code), with the raw value in the tooltip: raw latent values are in
the tens to hundreds and mean nothing by themselves.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QGridLayout, QLabel

#: The run folder's correlation table (written by ``electrode-cae physics``).
CORRELATIONS_FILE = "correlations.csv"
#: Readable names of the correlated variables that are not physics metrics.
VARIABLE_NAMES = {"z": "depth", "calendered": "calendering"}


def variable_label(name: str) -> str:
    """``"pore_fraction"`` -> ``"pore fraction"``, ``"tortuosity_pore_z"`` -> ``"tortuosity
    pore z"``, ``"z"`` -> ``"depth"``; units suffixes (``_per_um``) are left out."""
    if name in VARIABLE_NAMES:
        return VARIABLE_NAMES[name]
    for suffix in ("_per_um2", "_per_um"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("_", " ")


def latent_tracks(run_dir: str | Path | None, k: int) -> list[tuple[str, float] | None]:
    """Per latent feature, its strongest surviving correlation ``(variable, rho)`` or None.

    Read from ``run_dir/correlations.csv``; an absent, unreadable or other-sized table (a
    model with another number of latents) gives None for every feature.
    """
    tracks: list[tuple[str, float] | None] = [None] * k
    if not run_dir:
        return tracks
    path = Path(run_dir) / CORRELATIONS_FILE
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return tracks
    best: dict[int, tuple[str, float]] = {}
    latents = set()
    for row in rows:
        try:
            j = int(str(row.get("latent", "")).lstrip("z")) - 1
            rho = float(row.get("spearman_rho", "nan"))
        except ValueError:
            continue
        latents.add(j)
        if str(row.get("survives", "True")).lower() != "true" or not math.isfinite(rho):
            continue
        if j not in best or abs(rho) > abs(best[j][1]):
            best[j] = (str(row.get("metric", "")), rho)
    if latents != set(range(k)):
        return tracks
    return [best.get(j) for j in range(k)]


def study_tracks(study: Any, k: int) -> list[tuple[str, float] | None]:
    """Per latent feature, its strongest surviving pair of a ``CorrelationStudy`` (the Physics
    tab's), or None; None for every feature if the study has another number of latents."""
    tracks: list[tuple[str, float] | None] = [None] * k
    if study is None or np.shape(study.survives)[0] != k:
        return tracks
    for j, name, rho, _q, _partial in study.surviving():  # strongest first
        if tracks[j] is None:
            tracks[j] = (name, rho)
    return tracks


def slider_title(j: int, track: tuple[str, float] | None) -> str:
    """``"z5 · pore fraction +0.67"``, or ``"z5"`` while nothing is known."""
    if track is None:
        return f"z{j + 1}"
    return f"z{j + 1} · {variable_label(track[0])} {track[1]:+.2f}"


def slider_tooltip(
    j: int, track: tuple[str, float] | None, source: str = f"{CORRELATIONS_FILE} of the run"
) -> str:
    if track is None:
        return (
            f"latent feature z{j + 1}: no measured correlation yet (run electrode-cae "
            "physics on the saved run to name it)"
        )
    return (
        f"latent feature z{j + 1}: its strongest correlation that survived the FDR "
        f"correction is with {variable_label(track[0])} (Spearman rho {track[1]:+.2f}, "
        f"{source})"
    )


class SpreadLabels:
    """One label per slider: its value in training-set spreads, the raw value in tooltips.

    ``attach`` adds the labels to the slider grid (column 2) and follows the sliders;
    ``set_spread`` takes the encoded windows (mean and standard deviation per feature).
    """

    def __init__(self) -> None:
        self.labels: list[QLabel] = []
        self._sliders: list[Any] = []
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None

    def attach(self, grid: QGridLayout, sliders: list[Any], column: int = 2) -> list[QLabel]:
        """Labels for ``sliders`` (rows 0..k-1 of ``grid``); returns them (the caller removes
        them with the sliders)."""
        self._sliders = list(sliders)
        self.labels = []
        for j, slider in enumerate(self._sliders):
            label = QLabel()
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance("+8.8 σ") + 4)
            grid.addWidget(label, j, column)
            slider.valueChanged.connect(lambda _value, j=j: self._show(j))
            self.labels.append(label)
        self.refresh()
        return self.labels

    def set_spread(self, latents: np.ndarray | None) -> None:
        k = len(self._sliders)
        if latents is None or latents.ndim != 2 or latents.shape[1] != k or not len(latents):
            self._mean = self._std = None
        else:
            values = latents.astype(np.float64)
            self._mean, self._std = values.mean(axis=0), values.std(axis=0)
        self.refresh()

    def refresh(self) -> None:
        for j in range(len(self.labels)):
            self._show(j)

    def spread_units(self, j: int, value: float) -> float | None:
        """``value`` of feature ``j`` in standard deviations from the mean (None: unknown)."""
        if self._mean is None or self._std[j] <= 1e-9:
            return None
        return float((value - self._mean[j]) / self._std[j])

    def _show(self, j: int) -> None:
        if j >= len(self.labels):
            return
        value = float(self._sliders[j].value())
        units = self.spread_units(j, value)
        label = self.labels[j]
        label.setText("" if units is None else f"{units:+.1f} σ")
        where = (
            ""
            if units is None
            else (
                f"; {units:+.2f} standard deviations from the training windows' mean "
                f"({self._mean[j]:.4g} ± {self._std[j]:.4g})"
            )
        )
        tip = f"raw value {value:.6g}{where}"
        label.setToolTip(tip)
