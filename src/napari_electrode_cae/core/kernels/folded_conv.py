"""Stride-2, 3×3 convolutions of the CAE with hand-picked kernels and memory layouts.

The paper's (1, 3, 3) layers act on every slice alike, so :mod:`.model` runs them as 2D
convolutions over the slices of all windows; the (l, 3, 3) layers that fold the window depth run
either as 3D convolutions (channels-last layout) or as 2D convolutions over l·C channels
(contiguous layout). The two autograd functions here compute exactly the same function and
gradients as ``F.conv2d``/``F.conv3d`` and ``F.conv_transpose2d``/``F.conv_transpose3d`` (stride 2
in-plane, 1 in depth, no padding) followed by an optional ReLU, but choose faster routes through
PyTorch's CPU kernels (oneDNN), measured on the paper's shapes:

* in the channels-last layout (NHWC / NDHWC) oneDNN's transposed convolutions and weight
  gradients on 8-16 channels run 2-4× faster than in NCHW; a one-channel tensor is the same
  memory in both layouts, so it is only given channels-last strides (no copy), which is what makes
  the layout pay: the 19 MiB activations next to the one-channel input and output are never
  reordered;
* a transposed convolution with a bias is 3-4× slower than the same one without a bias plus an
  in-place bias add, so the bias is added separately;
* the backward pass of a transposed convolution is an ordinary forward convolution (input
  gradient) and a weight gradient, both much faster than autograd's transposed backward;
* a transposed convolution to one output channel (the decoder's last layer) runs as a 2×2
  convolution to the four output phases and one interleaving copy;
* the ReLU runs in place on the fresh convolution output, and its mask is applied in the
  backward pass of the same node (one tensor fewer per layer);
* gradients are put into the layer's memory format before the kernels see them, so oneDNN
  does not reorder them behind our back.

Nothing here is CPU specific: on CUDA the same calls go to cuDNN. Under ``torch.autocast``
(mixed precision) both functions cast their input, weight and bias to the autocast type, as
autocast does for ``F.conv2d``; the backward pass then runs in that type and autograd hands the
float32 weights float32 gradients.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _geometry(weight: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Stride, padding and dilation of a 2D (3×3) or 3D (d×3×3) layer: stride 2 in-plane."""
    if weight.dim() == 4:
        return [2, 2], [0, 0], [1, 1]
    return [1, 2, 2], [0, 0, 0], [1, 1, 1]


def in_layout(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` dense in ``memory_format``, with channels-last strides when that is asked for.

    A tensor with one channel is channels-last contiguous already, but keeps its NCHW strides
    and oneDNN would then pick NCHW kernels (and reorder the other operand); such a tensor gets
    channels-last strides over the same memory.
    """
    t = t.contiguous(memory_format=memory_format)
    if (
        memory_format in (torch.channels_last, torch.channels_last_3d)
        and t.shape[1] == 1
        and t.stride(1) != 1
    ):
        # dense apart from the channel axis: a channel stride of 1 is the only change
        t = t.as_strided(t.shape, (t.stride(0), 1, *t.stride()[2:]))
    return t


def _relu_backward(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zero ``grad`` where the ReLU output ``y`` is 0; in place when ``grad`` is dense.

    Inside the auto-encoder the incoming gradient of a ReLU layer is always the input gradient
    that the next layer's backward has just made (every activation has one consumer), so
    masking it in place saves one activation-sized buffer per layer. Expanded or overlapping
    gradients (e.g. from ``y.sum().backward()``) get a new tensor.
    """
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(grad.dim())
    dense = grad.is_contiguous() or (last is not None and grad.is_contiguous(memory_format=last))
    if dense and grad.shape == y.shape and grad.requires_grad is False:
        return torch.ops.aten.threshold_backward.grad_input(grad, y, 0, grad_input=grad)
    return torch.ops.aten.threshold_backward(grad, y, 0)


#: Largest activation (elements) handed to oneDNN's weight-gradient kernel in one call. oneDNN
#: reorders its operands into channel blocks of 16, so an 8-channel activation briefly takes
#: twice its size; slicing the batch bounds that scratch memory (the sum of the slices'
#: gradients is the gradient).
WEIGHT_GRAD_CHUNK = 2**22


def _weight_grad(
    grad_out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, with_bias: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dL/dweight (and dL/dbias) of the stride-2 ``conv(inp, weight)`` given ``grad_out``."""
    stride, padding, dilation = _geometry(weight)
    n = grad_out.shape[0]
    per_item = max(grad_out[0].numel(), inp[0].numel())
    step = max(1, min(n, WEIGHT_GRAD_CHUNK // max(per_item, 1)))
    gw = gb = None
    for start in range(0, n, step):
        _, w_part, b_part = torch.ops.aten.convolution_backward(
            grad_out[start : start + step],
            inp[start : start + step],
            weight,
            [weight.shape[0]] if with_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0] * len(stride),
            1,
            [False, True, with_bias],
        )
        gw = w_part if gw is None else gw.add_(w_part)
        if with_bias:
            gb = b_part if gb is None else gb.add_(b_part)
    return gw, gb


# Row k of the 3×3 kernel that row u of the 2×2 sub-kernel of output phase a takes, for
# (a, u) = (0, 0), (0, 1), (1, 0), (1, 1); 3 (a zero row) where that phase has no tap. Output
# row 2m + a of a stride-2 transposed convolution reads input rows m - 1 + u of the input
# padded by one: phase 0 through kernel rows 2 and 0, phase 1 through row 1 only.
_SUBPIXEL_ROWS = (2, 0, 3, 1)


@functools.cache
def _subpixel_rows(device: torch.device) -> torch.Tensor:
    """:data:`_SUBPIXEL_ROWS` as an index on ``device``, made once: a CUDA step recorded into a
    graph must not copy from the host, and the warm-up steps before it make this index."""
    return torch.tensor(_SUBPIXEL_ROWS, device=device)


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, 3, 3) stride-2 transposed-convolution weight -> (4·C_out, C_in, 2, 2).

    Output channels are ordered (a, b, c): phase row, phase column, channel. A 2×2 convolution
    with this weight over the input padded by one computes all four output phases at once.
    Built with two gathers (it runs in every forward pass of the decoder's last layer).
    """
    c_in, c_out = weight.shape[:2]
    rows = _subpixel_rows(weight.device)
    taps = F.pad(weight, (0, 1, 0, 1)).index_select(2, rows).index_select(3, rows)
    # (C_in, C_out, (a, u), (b, v)) -> (a, b, C_out, C_in, u, v)
    taps = taps.view(c_in, c_out, 2, 2, 2, 2).permute(2, 4, 1, 0, 3, 5)
    return taps.reshape(4 * c_out, c_in, 2, 2)


#: An integer/complex type twice as wide as a float type of the given item size.
_PAIR_DTYPES = {2: torch.int32, 4: torch.int64, 8: torch.complex128}


def _one_channel_transposed(x, weight, bias, out_size: int) -> torch.Tensor:
    """Stride-2 transposed convolution to one output channel as a sub-pixel convolution.

    oneDNN's transposed kernel is slow for a single output channel (the decoder's last layer:
    2× the time of this route on the paper's shapes). A 2×2 convolution to the four output
    phases, then one interleaving copy, gives the same values.
    """
    n, _, h, w = x.shape
    phases = F.conv2d(
        x.contiguous(memory_format=torch.channels_last),
        subpixel_weight(weight),
        None if bias is None else bias.repeat(4),
        padding=1,
    )
    # channels-last phases: memory (n, m, k, a, b). Read each (b = 0, 1) pair as one item twice
    # as wide so that the interleave (n, m, k, a) -> (n, m, a, k) moves whole pairs.
    pair_type = _PAIR_DTYPES[phases.element_size()]
    pairs = phases.permute(0, 2, 3, 1).contiguous().view(pair_type)  # (n, h+1, w+1, 2)
    out = torch.empty((n, h + 1, 2, w + 1), dtype=pair_type, device=x.device)
    out.copy_(pairs.permute(0, 1, 3, 2))
    out = out.view(x.dtype).view(n, 1, 2 * h + 2, 2 * w + 2)
    return out[:, :, :out_size, :out_size]


def autocast_operands(x, weight, bias):
    """``x``, ``weight`` and ``bias`` in the autocast type of ``x``'s device, if autocast is on
    there (what autocast would do for ``F.conv2d`` or ``F.linear``, which it cannot see inside
    a Function)."""
    device_type = x.device.type
    # asked for the CPU and CUDA only: torch 2.4 raises for device types without autocast
    # (MPS got it in 2.5), and core.train runs bf16 only on these two
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):  # as autocast: float32 (and half) tensors only, float64 stays
        return t.to(dtype) if t is not None and t.dtype in (torch.float32, torch.float16) else t

    return cast(x), cast(weight), cast(bias)


def _finish_forward(ctx, x, weight, y, relu: bool, memory_format) -> torch.Tensor:
    """Apply the ReLU in place and save what the backward pass needs."""
    if relu:
        y.relu_()
    ctx.relu, ctx.memory_format = relu, memory_format
    ctx.save_for_backward(x, weight, y if relu else None)
    return y


def _incoming_grad(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Saved input and weight, and ``grad`` through the ReLU in the layer's memory format."""
    x, weight, y = ctx.saved_tensors
    if ctx.relu:
        grad = _relu_backward(grad, y)
    return x, weight, in_layout(grad, ctx.memory_format)


def _conv(x, weight, bias):
    """The layer's forward convolution (stride 2 in-plane)."""
    stride = _geometry(weight)[0]
    conv = F.conv2d if weight.dim() == 4 else F.conv3d
    return conv(x, weight, bias, stride=stride)


def _add_bias_(y: torch.Tensor, bias: torch.Tensor) -> None:
    """``y += bias`` per channel, in place.

    In a channels-last ``y`` the channels are the innermost 8-16 values, too few for the
    vectorised broadcast (1.6 ms for the paper's 19 MiB activation); the same add over rows
    of one image row (W·C values) against the bias repeated W times takes 0.2 ms.
    """
    channels, width = y.shape[1], y.shape[-1]
    order = (0, *range(2, y.dim()), 1)
    if y.permute(order).is_contiguous():
        y.permute(order).view(-1, width * channels).add_(bias.repeat(width))
    else:
        y.add_(bias.view((1, -1) + (1,) * (y.dim() - 2)))


class ConvStride2(torch.autograd.Function):
    """``relu?(conv(x, weight, bias))``, stride 2 in-plane, with a pinned memory format.

    A 4-D weight (C_out, C_in, 3, 3) is ``F.conv2d`` with stride 2; a 5-D weight
    (C_out, C_in, d, 3, 3) is ``F.conv3d`` with stride (1, 2, 2).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, relu: bool, memory_format: torch.memory_format):
        x, weight, bias = autocast_operands(x, weight, bias)
        x = in_layout(x, memory_format)
        y = _conv(x, weight, bias)
        return _finish_forward(ctx, x, weight, y, relu, memory_format)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, grad = _incoming_grad(ctx, grad)
        if not ctx.needs_input_grad[0]:  # the first layer: weights only, in slices
            gw, gb = _weight_grad(grad, x, weight, with_bias=ctx.needs_input_grad[2])
            return None, gw, gb, None, None
        stride, padding, dilation = _geometry(weight)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]],
            stride,
            padding,
            dilation,
            False,
            [0] * len(stride),
            1,
            [True, ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
        )
        return gx, gw, gb, None, None


class ConvTransposeStride2(torch.autograd.Function):
    """``relu?(conv_transpose(x, weight, bias))``, stride 2 in-plane, cropped/padded in-plane to
    ``out_size``.

    ``out_size`` is the output edge: 2·(in - 1) + 3 plus an output padding of 0 or 1. A 4-D
    weight (C_in, C_out, 3, 3) is ``F.conv_transpose2d``; a 5-D weight (C_in, C_out, d, 3, 3)
    is ``F.conv_transpose3d`` with stride (1, 2, 2) (output depth = input depth + d - 1).
    """

    @staticmethod
    def forward(
        ctx, x, weight, bias, out_size: int, relu: bool, memory_format: torch.memory_format
    ):
        x, weight, bias = autocast_operands(x, weight, bias)
        x = in_layout(x, memory_format)
        if weight.dim() == 4 and weight.shape[1] == 1 and x.shape[-1] == x.shape[-2]:
            y = _one_channel_transposed(x, weight, bias, out_size)
        else:
            pad = out_size - (2 * (x.shape[-1] - 1) + 3)
            if weight.dim() == 4:
                y = F.conv_transpose2d(x, weight, None, stride=2, output_padding=pad)
            else:
                y = F.conv_transpose3d(
                    x, weight, None, stride=(1, 2, 2), output_padding=(0, pad, pad)
                )
            if bias is not None:
                _add_bias_(y, bias)
        return _finish_forward(ctx, x, weight, y, relu, memory_format)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, grad = _incoming_grad(ctx, grad)
        # The adjoint of a transposed convolution is the forward convolution with the same
        # weight; its weight gradient is that convolution's, with the roles of x and grad
        # swapped. (A last output row/column added by the output padding is never read.)
        gx = _conv(grad, weight, None) if ctx.needs_input_grad[0] else None
        gw = _weight_grad(x, grad, weight)[0] if ctx.needs_input_grad[1] else None
        dims = (0,) + tuple(range(2, grad.dim()))
        gb = grad.sum(dims) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


def conv_stride2(x, weight, bias, relu=True, memory_format=torch.contiguous_format):
    """Apply :class:`ConvStride2`."""
    return ConvStride2.apply(x, weight, bias, relu, memory_format)


def conv_transpose_stride2(
    x, weight, bias, out_size, relu=True, memory_format=torch.contiguous_format
):
    """Apply :class:`ConvTransposeStride2`."""
    return ConvTransposeStride2.apply(x, weight, bias, out_size, relu, memory_format)
