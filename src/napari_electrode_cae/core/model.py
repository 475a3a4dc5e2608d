"""The paper's 3D convolutional auto-encoder (Energies 2022, 15, 4489; Tables 2-4).

Encoder: ``conv_layers - 1`` in-plane convolutions, kernel (1, 3, 3), stride (1, 2, 2), then one
convolution with kernel (l, 3, 3), stride (1, 2, 2) that folds the whole window depth into one,
each followed by ReLU; flatten; Linear to ``hidden``, ReLU; Linear to ``latent_dim``.
The decoder mirrors it with ConvTranspose3d and ends without an activation. With 3 layers,
l = 24, crop 224, 128 hidden and 10 latent features it is exactly Table 3 (encoder 1,550,970 and
decoder 1,562,609 parameters); with l = 4 it is Table 4.

Channels: 8, 16 for the first two convolutions as in the paper, doubling for each further layer,
and the last (depth-folding) convolution keeps its input's channels.

Options beyond the paper (``ModelConfig``), both off in the paper's model:

* ``norm="batch"`` or ``"group"``: a normalisation layer after every convolution but the
  decoder's last (the paper's section 4 proposes it; on a realistic electrode it keeps a larger
  learning rate from collapsing the model to the mean). Weights of normalised models start from
  He (Kaiming) initialisation, suited to ReLU.
* ``output="phases"``: the decoder ends in three channels, one logit per phase (pore, CBD,
  active), trained with cross-entropy and snapped by argmax, instead of the paper's one
  network value (pore -1, CBD 0, active +1) trained with MSE. Encoder and latent size stay the
  paper's, so latent features mean the same kind of thing.

The modules below are the whole model, and ``encoder(x)`` / ``decoder(z)`` compute it. The
paper's own architecture is routed through faster kernels of the same function
(:mod:`.kernels.routing`, switched by :attr:`ConvAutoEncoder3d.fold_depth`, tested against these
modules); a model with an option always runs the plain modules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .errors import ModelConfigError
from .kernels import routing
from .phases import PhaseRule

CONV_LAYER_CHOICES = (3, 4, 5)
#: Normalisation after each convolution: none (the paper), BatchNorm3d or GroupNorm.
NORM_CHOICES = ("none", "batch", "group")
#: What the decoder outputs: "value" (the paper: one channel of network values, MSE) or
#: "phases" (three channels of phase logits, cross-entropy, argmax).
OUTPUT_CHOICES = ("value", "phases")
#: Groups of a GroupNorm layer (fewer when a layer has fewer channels).
GROUPS = 4


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`ConvAutoEncoder3d` (everything needed to rebuild it)."""

    window_length: int
    crop: int = 224
    conv_layers: int = 3
    hidden: int = 128
    latent_dim: int = 10
    norm: str = "none"
    output: str = "value"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_paper(self) -> bool:
        """True for the paper's architecture (no normalisation, one output channel)."""
        return self.norm == "none" and self.output == "value"

    @property
    def output_channels(self) -> int:
        """Channels of the decoder's output: 1 network value or 3 phase logits."""
        return 3 if self.output == "phases" else 1


def conv_channels(conv_layers: int) -> list[int]:
    """Output channels of each encoder convolution: 8, 16, 32, ... and the last repeated."""
    widths = [8 * 2**i for i in range(conv_layers - 1)]
    return widths + [widths[-1]]


def in_plane_sizes(crop: int, conv_layers: int) -> list[int]:
    """Feature-map edge after each encoder convolution (kernel 3, stride 2, no padding)."""
    sizes = [crop]
    for _ in range(conv_layers):
        sizes.append((sizes[-1] - 3) // 2 + 1)
    return sizes


def validate_model_config(config: ModelConfig) -> None:
    """Raise :class:`ModelConfigError` with the offending field if ``config`` is unusable."""
    for name in ("window_length", "crop", "conv_layers", "hidden", "latent_dim"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelConfigError(f"model {name} must be a positive integer, got {value!r}")
    if config.norm not in NORM_CHOICES:
        raise ModelConfigError(f"norm must be one of {NORM_CHOICES}, got {config.norm!r}")
    if config.output not in OUTPUT_CHOICES:
        raise ModelConfigError(f"output must be one of {OUTPUT_CHOICES}, got {config.output!r}")
    if config.conv_layers not in CONV_LAYER_CHOICES:
        raise ModelConfigError(
            f"conv_layers must be one of {CONV_LAYER_CHOICES} (Table 2), got {config.conv_layers}"
        )
    minimum = 3
    for _ in range(config.conv_layers - 1):
        minimum = 2 * minimum + 1
    if config.crop < minimum:
        raise ModelConfigError(
            f"crop {config.crop} is too small for {config.conv_layers} conv layers "
            f"(needs at least {minimum})"
        )


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation layer of ``kind`` (see :data:`NORM_CHOICES`) for ``channels``."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


class ConvAutoEncoder3d(nn.Module):
    """3D convolutional auto-encoder for (N, 1, l, crop, crop) windows.

    Parameters
    ----------
    window_length : int
        Window length ``l`` (Z slices).
    crop : int
        In-plane edge of the windows in voxels.
    conv_layers : int
        3, 4 or 5 encoder convolutions (the decoder mirrors them).
    hidden : int
        Neurons of the fully connected hidden layer (128 or 1000 in the paper).
    latent_dim : int
        Number of latent features (10 in the paper).
    norm : {"none", "batch", "group"}
        Normalisation after each convolution (not in the paper).
    output : {"value", "phases"}
        One channel of network values (the paper) or three phase logits.
    """

    def __init__(
        self,
        window_length: int,
        crop: int = 224,
        conv_layers: int = 3,
        hidden: int = 128,
        latent_dim: int = 10,
        norm: str = "none",
        output: str = "value",
    ) -> None:
        super().__init__()
        self.config = ModelConfig(
            window_length, crop, conv_layers, hidden, latent_dim, norm, output
        )
        validate_model_config(self.config)
        channels = conv_channels(conv_layers)
        sizes = in_plane_sizes(crop, conv_layers)
        self.bottleneck_shape = (channels[-1], 1, sizes[-1], sizes[-1])
        flat = channels[-1] * sizes[-1] * sizes[-1]

        encoder: list[nn.Module] = []
        decoder_convs: list[nn.Module] = []  # first decoder layer last
        in_ch = 1
        for i, out_ch in enumerate(channels):
            depth = window_length if i == conv_layers - 1 else 1
            encoder.append(nn.Conv3d(in_ch, out_ch, kernel_size=(depth, 3, 3), stride=(1, 2, 2)))
            if norm != "none":
                encoder.append(norm_layer(norm, out_ch))
            encoder.append(nn.ReLU())
            # The matching transposed convolution restores this layer's input size exactly;
            # the decoder's last one gives the output channels.
            pad = sizes[i] - (2 * (sizes[i + 1] - 1) + 3)
            decoder_convs.append(
                nn.ConvTranspose3d(
                    out_ch,
                    self.config.output_channels if i == 0 else in_ch,
                    kernel_size=(depth, 3, 3),
                    stride=(1, 2, 2),
                    output_padding=(0, pad, pad),
                )
            )
            in_ch = out_ch
        encoder += [
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Linear(hidden, latent_dim),
        ]
        decoder: list[nn.Module] = [
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, flat),
            nn.ReLU(),
            nn.Unflatten(1, self.bottleneck_shape),
        ]
        for j, conv in enumerate(reversed(decoder_convs)):
            decoder.append(conv)
            if j < len(decoder_convs) - 1:
                if norm != "none":
                    decoder.append(norm_layer(norm, conv.out_channels))
                decoder.append(nn.ReLU())
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        if norm != "none":
            self.apply(_he_init)
        #: How this model's output becomes phase ids (:class:`~.phases.PhaseRule`): argmax
        #: for phase logits; for network values the paper's nearest value until thresholds are
        #: fitted on the training windows (``core.evaluation.fit_phase_rule``). Saved with
        #: the run.
        self.phase_rule = PhaseRule("argmax" if output == "phases" else "nearest")
        #: The one switch of the speed-ups: run the paper's architecture through
        #: :mod:`.kernels.routing` (same parameters, same function, faster on CPUs); False runs
        #: the plain modules. Models with options always run the plain modules.
        self.fold_depth = self.config.is_paper
        #: Memory layout of the routed path, one of ``kernels.routing.LAYOUT_CHOICES``.
        self.layout = "auto"

    @classmethod
    def from_config(cls, config: ModelConfig) -> ConvAutoEncoder3d:
        """The model described by ``config`` (freshly initialised)."""
        return cls(**config.to_dict())

    @property
    def routed(self) -> bool:
        """True when forward passes take the routed kernels (see :attr:`fold_depth`)."""
        return self.fold_depth and self.config.is_paper

    @property
    def layout(self) -> str:
        return self._layout

    @layout.setter
    def layout(self, value: str) -> None:
        routing.check_layout(value)
        self._layout = value

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(1, l, crop, crop) of one window."""
        c = self.config
        return (1, c.window_length, c.crop, c.crop)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, l, crop, crop) windows -> (N, latent_dim) latent features."""
        if self.routed:
            return routing.encode(self, x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) latent features -> (N, C, l, crop, crop) raw output: network values
        (C = 1) or phase logits (C = 3, ``output="phases"``); see :meth:`values`."""
        if self.routed:
            return routing.decode(self, z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def values(self, output: torch.Tensor) -> torch.Tensor:
        """Raw output (N, C, l, H, W) -> (N, 1, l, H, W) network values (pore -1, CBD 0,
        active +1): the output itself, or for phase logits the expected value under their
        softmax, so that MSE and continuous views mean the same for both kinds."""
        if self.config.output == "value":
            return output
        probabilities = torch.softmax(output.float(), dim=1)
        return (probabilities[:, 2:3] - probabilities[:, 0:1]).to(output.dtype)

    def phase_labels(self, output: torch.Tensor) -> np.ndarray:
        """Raw output (N, C, l, H, W) -> (N, l, H, W) uint8 phase ids by :attr:`phase_rule`."""
        array = output.detach().float().cpu().numpy()
        return (
            np.stack([self.phase_rule.labels(item) for item in array])
            if len(array)
            else (np.zeros((0, *array.shape[2:]), dtype=np.uint8))
        )


def build_model(config: ModelConfig) -> ConvAutoEncoder3d:
    """The one way to build a model from a config: ``ConvAutoEncoder3d.from_config``."""
    return ConvAutoEncoder3d.from_config(config)


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation for layers followed by ReLU; zero biases."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@dataclass(frozen=True)
class LayerRow:
    """One row of a layer summary (like the paper's Table 3)."""

    part: str  # "encoder" or "decoder"
    name: str  # e.g. "Conv3d-1"
    output_shape: tuple[int, ...]  # with -1 for the batch axis
    parameters: int


def layer_summary(model: ConvAutoEncoder3d) -> list[LayerRow]:
    """Output shape and parameter count of every encoder and decoder layer.

    Runs one zero window through the model on the CPU (meta tensors would do, but the model is
    small enough); numbering restarts for the decoder as in Table 3.
    """
    rows: list[LayerRow] = []
    device = next(model.parameters()).device
    x = torch.zeros((1, *model.input_shape), device=device)
    with torch.no_grad():
        for part, seq in (("encoder", model.encoder), ("decoder", model.decoder)):
            for i, layer in enumerate(seq, start=1):
                x = layer(x)
                rows.append(
                    LayerRow(
                        part,
                        f"{type(layer).__name__}-{i}",
                        (-1, *x.shape[1:]),
                        count_parameters(layer),
                    )
                )
    return rows


def format_summary(model: ConvAutoEncoder3d) -> str:
    """A plain-text table of :func:`layer_summary` with encoder and decoder totals."""
    rows = layer_summary(model)
    lines = []
    for part, seq in (("Encoder", model.encoder), ("Decoder", model.decoder)):
        lines.append(f"{part}")
        lines.append(f"  {'Layer (type)':<22}{'Output shape':<28}{'Param #':>12}")
        for row in rows:
            if row.part == part.lower():
                shape = "[" + ", ".join(str(d) for d in row.output_shape) + "]"
                lines.append(f"  {row.name:<22}{shape:<28}{row.parameters:>12,}")
        lines.append(f"  {'Total':<50}{count_parameters(seq):>12,}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
