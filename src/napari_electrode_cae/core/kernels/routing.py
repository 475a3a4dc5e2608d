"""The paper's model routed through the CPU kernels: same parameters, same function, faster.

``ConvAutoEncoder3d.encode``/``decode`` call :func:`encode`/:func:`decode` when
``model.routed`` (the paper's architecture with ``model.fold_depth`` on); the plain
``model.encoder``/``model.decoder`` modules are the reference they are tested against
(``tests/core/kernels/test_routing.py``).

* The (1, 3, 3) stride-(1, 2, 2) convolutions run as 2D convolutions over the slices of all
  windows (:mod:`.folded_conv`, with a hand-routed backward), and the (l, 3, 3) one that folds
  the window depth runs either as a 3D convolution in NDHWC memory ("channels_last") or as a 2D
  convolution over l·C channels ("contiguous").
* The Linear layers go through :mod:`.few_rows_linear` (a batch of 2 windows is 2 rows).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelConfigError
from .few_rows_linear import linear
from .folded_conv import conv_stride2, conv_transpose_stride2

#: Memory layouts of the routed path (``ConvAutoEncoder3d.layout``); "auto" picks by device.
#: "channels_last": NHWC in-plane layers, the depth-folding layers as 3D convolutions in NDHWC
#: (no copy between them); "contiguous": NCHW, the depth-folding layers as 2D convolutions over
#: l·C channels.
LAYOUT_CHOICES = ("auto", "channels_last", "contiguous")


def check_layout(layout: str) -> None:
    if layout not in LAYOUT_CHOICES:
        raise ModelConfigError(f"layout must be one of {LAYOUT_CHOICES}, got {layout!r}")


def resolve_layout(layout: str, device: torch.device) -> str:
    """The layout a forward pass on ``device`` uses: "auto" is channels-last on the CPU
    (measured there, ``benchmarks/layouts.py``) and contiguous elsewhere (the layout measured
    on CUDA with the training step's CUDA graph)."""
    check_layout(layout)
    if layout == "auto":
        return "channels_last" if device.type == "cpu" else "contiguous"
    return layout


def _in_plane_format(model, device: torch.device) -> torch.memory_format:
    """Memory format of the (1, 3, 3) layers in a forward pass on ``device``."""
    if resolve_layout(model.layout, device) == "channels_last":
        return torch.channels_last
    return torch.contiguous_format


def _run(layers: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layers`` in turn, the Linear ones through :func:`.few_rows_linear.linear`."""
    for layer in layers:
        h = linear(h, layer) if isinstance(layer, nn.Linear) else layer(h)
    return h


def encode(model, x: torch.Tensor) -> torch.Tensor:
    """``model.encoder(x)`` of the paper's architecture, through the routed kernels."""
    convs = [m for m in model.encoder if isinstance(m, nn.Conv3d)]
    n, _, depth, height, width = x.shape
    last = convs[-1]
    fmt = _in_plane_format(model, x.device)
    # (N, 1, l, H, W) -> (N*l, 1, H, W): the (1, 3, 3) layers see each slice as an image.
    h = x.reshape(n * depth, 1, height, width)
    for conv in convs[:-1]:
        h = conv_stride2(h, conv.weight.squeeze(2), conv.bias, True, fmt)
    c, size = h.shape[1], h.shape[2]
    if fmt == torch.channels_last:
        # NHWC memory (N*l, h, w, C) is NDHWC memory of (N, C, l, h, w): the (l, 3, 3)
        # convolution runs as a 3D one on a view.
        h = h.permute(0, 2, 3, 1).reshape(n, depth, size, size, c).permute(0, 4, 1, 2, 3)
        h = conv_stride2(h, last.weight, last.bias, True, torch.channels_last_3d)
    else:
        # (N*l, C, h, w) -> (N, l*C, h, w), channels ordered (depth, channel): the (l, 3, 3)
        # convolution over the whole depth is a 2D convolution over l*C input channels.
        h = h.contiguous().reshape(n, depth * c, size, size)
        weight = last.weight.permute(0, 2, 1, 3, 4).reshape(last.out_channels, depth * c, 3, 3)
        h = conv_stride2(h, weight, last.bias, True, fmt)
    z = _run(model.encoder[len(convs) * 2 :], h.reshape(n, -1))  # Linear, ReLU, Linear
    return z.contiguous()  # FewRowsLinear's result is column-major


def decode(model, z: torch.Tensor) -> torch.Tensor:
    """``model.decoder(z)`` of the paper's architecture, through the routed kernels."""
    from ..model import in_plane_sizes

    h = _run(model.decoder[:4], z)  # Linear, ReLU, Linear, ReLU
    channels, _, size, _ = model.bottleneck_shape
    n, depth = z.shape[0], model.config.window_length
    convs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose3d)]
    sizes = in_plane_sizes(model.config.crop, model.config.conv_layers)[::-1]
    fmt = _in_plane_format(model, z.device)
    first = convs[0]
    c = first.out_channels
    if fmt == torch.channels_last:
        # (l, 3, 3) transposed convolution from depth 1 to l as a 3D one in NDHWC, whose
        # memory (N, l, h, w, C) is NHWC memory of (N*l, C, h, w).
        h = conv_transpose_stride2(
            h.reshape(n, channels, 1, size, size),
            first.weight,
            first.bias,
            sizes[1],
            True,
            torch.channels_last_3d,
        )
        h = h.permute(0, 2, 3, 4, 1).reshape(n * depth, sizes[1], sizes[1], c)
        h = h.permute(0, 3, 1, 2)
    else:
        # a 2D transposed convolution to l*C output channels ordered (depth, channel)
        weight = first.weight.permute(0, 2, 1, 3, 4).reshape(channels, depth * c, 3, 3)
        h = conv_transpose_stride2(
            h.reshape(n, channels, size, size),
            weight,
            first.bias.repeat(depth),
            sizes[1],
            True,
            fmt,
        )
        h = h.contiguous().reshape(n * depth, c, h.shape[2], h.shape[3])
    for i, conv in enumerate(convs[1:], start=1):
        h = conv_transpose_stride2(
            h, conv.weight.squeeze(2), conv.bias, sizes[i + 1], i < len(convs) - 1, fmt
        )
    return h.contiguous().reshape(n, 1, depth, h.shape[2], h.shape[3])
