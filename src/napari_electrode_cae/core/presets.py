"""Named settings: the paper's optimum and a quick CPU preset.

``paper``: Tables 3 and 5 (case study 1) — l = 24, stride 1, crop 224, 3 conv layers,
128 hidden neurons, 10 latent features, Adam lr 1e-4, batch 2, 3,500 epochs.
``quick``: a first faithful reconstruction in minutes on a 2-core CPU, also on a real-size
256³ electrode: shorter, smaller, half-overlapping windows, batch norm, a three-phase output,
a larger batch and learning rate with warm-up, cosine decay and gradient clipping, and a bounded
number of windows per epoch. Its values are provisional until measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ModelConfig
from .training import TrainConfig
from .windows import WindowSpec

#: The quick preset (chosen by measurement on the realistic 256³ electrode, see
#: benchmarks/presets_realistic.py).
QUICK_WINDOW = WindowSpec(length=8, stride=4, crop=32, tile_stride=16)
QUICK_TRAIN = TrainConfig(
    epochs=30,
    batch_size=16,
    lr=2e-3,
    windows_per_epoch=2048,
    warmup_epochs=2,
    schedule="cosine",
    grad_clip=1.0,
    phase_loss="ce_dice",
)
QUICK_DESCRIPTION = (
    "a first faithful reconstruction in minutes on a 2-core CPU, also of a 256³ stack: l=8, "
    "stride 4, crop 32 with half-overlapping tiles, 3 layers, 128 hidden, 10 latent, batch "
    "norm, three-phase output (cross-entropy + Dice, argmax with fitted offsets), batch 16, "
    "lr 2e-3 with warm-up and "
    "cosine decay, gradient clipping, 2048 windows per epoch, 30 epochs, blocked split"
)


@dataclass(frozen=True)
class Preset:
    """A named combination of window, model, training and phase-rule settings."""

    name: str
    description: str
    window: WindowSpec
    conv_layers: int
    hidden: int
    latent_dim: int
    train: TrainConfig
    norm: str = "none"
    output: str = "value"
    #: How a one-channel model's output becomes phases after training ("fitted" or the
    #: paper's "nearest"); three-phase models use argmax.
    phase_rule: str = "fitted"

    def model_config(self) -> ModelConfig:
        """The preset's model for its window."""
        return ModelConfig(
            self.window.length,
            self.window.crop,
            self.conv_layers,
            self.hidden,
            self.latent_dim,
            self.norm,
            self.output,
        )


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper",
        "the paper's optimum (Table 3/5, case study 1): l=24, stride 1, crop 224, 3 layers, "
        "128 hidden, 10 latent, batch 2, lr 1e-4, 3500 epochs, nearest-value phases",
        WindowSpec(length=24, stride=1, crop=224),
        conv_layers=3,
        hidden=128,
        latent_dim=10,
        train=TrainConfig(epochs=3500, batch_size=2, lr=1e-4),
        phase_rule="nearest",
    ),
    "quick": Preset(
        "quick",
        QUICK_DESCRIPTION,
        QUICK_WINDOW,
        conv_layers=3,
        hidden=128,
        latent_dim=10,
        train=QUICK_TRAIN,
        norm="batch",
        output="phases",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``"paper"`` or ``"quick"``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
