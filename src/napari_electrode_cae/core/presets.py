"""Named settings: the paper's optimum and a quick CPU preset.

``paper``: Tables 3 and 5 (case study 1) — l = 24, stride 1, crop 224, 3 conv layers,
128 hidden neurons, 10 latent features, Adam lr 1e-4, batch 2, 3,500 epochs.
``quick``: a run that finishes in about a minute on a 2-core CPU on the bundled sample data and
still reconstructs recognisable particles: shorter, smaller, half-overlapping windows, stride 2,
a larger batch and learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from .training import TrainConfig
from .windows import WindowSpec


@dataclass(frozen=True)
class Preset:
    """A named combination of window, model and training settings."""

    name: str
    description: str
    window: WindowSpec
    conv_layers: int
    hidden: int
    latent_dim: int
    train: TrainConfig


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper",
        "the paper's optimum (Table 3/5, case study 1): l=24, stride 1, crop 224, 3 layers, "
        "128 hidden, 10 latent, batch 2, lr 1e-4, 3500 epochs",
        WindowSpec(length=24, stride=1, crop=224),
        conv_layers=3, hidden=128, latent_dim=10,
        train=TrainConfig(epochs=3500, batch_size=2, lr=1e-4),
    ),
    "quick": Preset(
        "quick",
        "under a minute on a 2-core CPU with the sample data: l=8, stride 2, crop 64 with "
        "half-overlapping tiles, 3 layers, 128 hidden, 10 latent, batch 8, lr 2e-3, 80 epochs",
        WindowSpec(length=8, stride=2, crop=64, tile_stride=32),
        conv_layers=3, hidden=128, latent_dim=10,
        train=TrainConfig(epochs=80, batch_size=8, lr=2e-3),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``"paper"`` or ``"quick"``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
