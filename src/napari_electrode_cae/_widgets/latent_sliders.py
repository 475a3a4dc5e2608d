"""The Latents panel's slider rows: one named slider per latent feature, with its range.

:class:`LatentSliders` holds the rows (name, slider, spread label); :func:`latent_ranges` gives
each slider's range from the encoded windows and :func:`slider_decimals` its precision. What a
slider move decodes is the panel's business (:mod:`.latent_panel`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider

from .latent_names import (
    CORRELATIONS_FILE,
    SpreadLabels,
    latent_tracks,
    slider_title,
    slider_tooltip,
    study_tracks,
)

#: Half-width of a slider's range when no encoded windows are available.
FALLBACK_HALF_RANGE = 3.0


def latent_ranges(latents: np.ndarray | None, k: int) -> np.ndarray:
    """(k, 2) slider ranges: mean ± 3 std of each feature, widened to the observed min/max.

    A feature with (almost) no spread gets mean ± 1; without encoded windows every range is
    ±3 around 0.

    Parameters
    ----------
    latents : numpy.ndarray or None
        float32 (n_windows, k) encodings of the windows.
    k : int
        Number of latent features.
    """
    if latents is None or latents.ndim != 2 or latents.shape[1] != k or len(latents) == 0:
        return np.tile([-FALLBACK_HALF_RANGE, FALLBACK_HALF_RANGE], (k, 1))
    values = latents.astype(np.float64)
    mean, std = values.mean(axis=0), values.std(axis=0)
    half = np.where(std > 1e-6, 3.0 * std, 1.0)
    low = np.minimum(mean - half, values.min(axis=0))
    high = np.maximum(mean + half, values.max(axis=0))
    return np.stack([low, high], axis=1)


def slider_decimals(low: float, high: float) -> int:
    """Decimals so that a slider of this range has at least ~200 distinct steps."""
    width = max(high - low, 1e-9)
    return int(np.clip(np.ceil(-np.log10(width / 200.0)), 2, 6))


class LatentSliders(QWidget):
    """Rows of (name, slider, spread label), one per latent feature.

    Attributes
    ----------
    moved : Signal(float)
        Emitted when the user (or :meth:`QLabeledDoubleSlider.setValue`) moves one slider;
        :meth:`set_values` moves them all without it.
    sliders : list of QLabeledDoubleSlider
    names : list of QLabel
        Each slider's name: ``z1``.., or what the feature tracks (see :mod:`.latent_names`).
    spread_labels : SpreadLabels
        Each slider's value in the encoded windows' spread ("+1.2 σ").
    """

    moved = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout()
        self.grid.setColumnStretch(1, 1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addLayout(self.grid)
        outer.addStretch(1)
        self.sliders: list[QLabeledDoubleSlider] = []
        self.names: list[QLabel] = []
        self.spread_labels = SpreadLabels()
        self._rows: list[QWidget] = []

    def rebuild(self, k: int, run_dir: str | Path | None, study: object | None = None) -> None:
        """Replace the sliders by ``k`` new ones (k = 0 removes them); kept if there are k."""
        if k == len(self.sliders) and k > 0:
            return
        for row in self._rows:
            self.grid.removeWidget(row)
            row.deleteLater()
        self._rows, self.sliders, self.names = [], [], []
        for j in range(k):
            name = QLabel(f"z{j + 1}")
            name.setWordWrap(True)  # a long name wraps instead of squeezing its slider
            name.setMaximumWidth(name.fontMetrics().horizontalAdvance("z10 · pore fraction +0.00"))
            self.names.append(name)
            slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
            slider.valueChanged.connect(self.moved.emit)
            self.grid.addWidget(name, j, 0)
            self.grid.addWidget(slider, j, 1)
            self._rows += [name, slider]
            self.sliders.append(slider)
        self._rows += self.spread_labels.attach(self.grid, self.sliders)
        self.name_sliders(run_dir, study)

    def name_sliders(self, run_dir: str | Path | None, study: object | None = None) -> None:
        """Name each slider by what its feature tracks: the Physics tab's correlation ``study``
        of these latents when there is one, else the run's correlations.csv."""
        k = len(self.sliders)
        if study is not None and np.shape(study.survives)[0] == k:
            tracks, source = study_tracks(study, k), "the Physics tab's correlation study"
        else:
            tracks, source = latent_tracks(run_dir, k), f"{CORRELATIONS_FILE} of the run"
        for j, (name, slider) in enumerate(zip(self.names, self.sliders)):
            name.setText(slider_title(j, tracks[j]))
            name.setToolTip(slider_tooltip(j, tracks[j], source))
            slider.setToolTip(slider_tooltip(j, tracks[j], source))

    def apply_ranges(self, latents: np.ndarray | None) -> None:
        """Set each slider's range (and the spread labels) from the encoded windows."""
        ranges = latent_ranges(latents, len(self.sliders))
        self.spread_labels.set_spread(latents)  # "+1.2 σ" beside each slider
        for slider, (low, high) in zip(self.sliders, ranges):
            slider.blockSignals(True)
            slider.setDecimals(slider_decimals(low, high))
            slider.setRange(float(low), float(high))
            slider.blockSignals(False)

    def values(self) -> np.ndarray:
        """The sliders' current values as a float32 (k,) vector."""
        return np.array([s.value() for s in self.sliders], dtype=np.float32)

    def set_values(self, latent: np.ndarray) -> None:
        """Move all sliders at once, without :attr:`moved`."""
        for slider, value in zip(self.sliders, np.asarray(latent, dtype=float)):
            slider.blockSignals(True)
            slider.setValue(float(value))
            slider.blockSignals(False)

    @property
    def dragging(self) -> bool:
        """True while a slider is held down."""
        return any(slider.isSliderDown() for slider in self.sliders)
