"""Fully connected layers for batches of a few windows, on the CPU.

Training feeds the auto-encoder's Linear layers (11,664 ↔ 128 for the paper's model, 6 MiB of
weights each) batches of two rows. For matrix products with two rows, MKL runs one thread over
a weight that no longer sits in the cache, so three of the six products of a training step
read or write 6 MiB at about a third of what the two cores can do. :class:`FewRowsLinear` is
``F.linear`` with the same function and gradients, through the orientations that use both cores
(measured on the paper's shapes, cold cache, 2 threads):

* forward ``(W xᵀ + b)ᵀ``: one pass over W for all rows (0.2 instead of 1.0 ms for 128 → 11,664);
* input gradient ``g W`` with a long inner dimension as a batched product over slices of it,
  summed (0.4 instead of 0.9 ms; the sum runs in another order, so equal within float
  tolerance), with a wide W over blocks of its columns (0.25 instead of 0.38 ms); in bfloat16
  it stays one product;
* weight gradient ``gᵀ x``: a wide one (128 × 11,664) as a batched product over blocks of its
  rows (each element is the same sum as before, so equal bit for bit); a tall one
  (11,664 × 128), for one or two rows, as a sum of one outer product per row, element-wise
  kernels over both cores (0.3 instead of 0.9 ms cold; equal within float tolerance, as a
  product may fuse the multiply-adds); in bfloat16 a tall one stays one product (the outer
  products would be rounded before they are summed).
"""

from __future__ import annotations

import torch

from .folded_conv import autocast_operands

#: Below this size of the weight's dimensions the input gradient is one plain product.
SPLIT_MIN = 2048
#: A tall weight gradient is a sum of outer products for batches of up to this many rows (each
#: row is one more pass over the gradient: with 4 rows one product is faster).
OUTER_MAX_ROWS = 2
#: Row blocks of a wide weight gradient: the first of these that divides its row count.
WEIGHT_GRAD_BLOCKS = (16, 4)


def _input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight`` ((N, K) @ (K, M)) as a batched product that both cores share.

    A long K: a sum of products over slices of K (another summation order). A short K and
    a wide M: products over blocks of M's columns (the same sums, which MKL may block
    differently, so equal within float tolerance).
    """
    k, m = weight.shape
    parts = 2 * torch.get_num_threads()
    if g.shape[0] > 8 or g.dtype not in (torch.float32, torch.float64):
        # many rows: MKL does well; reduced precision: the partial products would be rounded
        # before they are summed
        return g @ weight
    if k >= SPLIT_MIN:
        step = k // parts
        head = parts * step
        out = torch.bmm(
            g[:, :head].reshape(g.shape[0], parts, step).transpose(0, 1),
            weight[:head].reshape(parts, step, m),
        ).sum(0)
        if head < k:
            out.addmm_(g[:, head:], weight[head:])
        return out
    if m >= SPLIT_MIN and m % parts == 0:
        blocks = weight.reshape(k, parts, m // parts).transpose(0, 1)
        out = torch.bmm(g.contiguous().expand(parts, *g.shape), blocks)
        return out.transpose(0, 1).reshape(g.shape[0], m)
    return g @ weight


def _weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``gᵀ @ x`` ((out, N) @ (N, in)): outer products when tall, else in blocks of rows."""
    rows, n = g.shape[1], g.shape[0]
    if n > 8 or n == 0:
        return g.t() @ x
    if rows > x.shape[1] and n <= OUTER_MAX_ROWS and g.dtype in (torch.float32, torch.float64):
        out = torch.outer(g[0], x[0])
        for i in range(1, n):
            out.addr_(g[i], x[i])
        return out
    for blocks in WEIGHT_GRAD_BLOCKS:
        if rows % blocks == 0:
            gt = g.t().contiguous().view(blocks, rows // blocks, n)
            return torch.bmm(gt, x.expand(blocks, n, x.shape[1])).view(rows, x.shape[1])
    return g.t() @ x


class FewRowsLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for a 2-D ``x`` of a few rows (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x, weight, bias = autocast_operands(x, weight, bias)
        # row-major x, so that MKL sees xᵀ as a transposed operand: with a column-major x
        # (the transposed output of a previous FewRowsLinear) the product is 3-5× slower
        x = x.contiguous()
        if bias is None:
            yt = weight @ x.t()
        else:
            yt = torch.addmm(bias.unsqueeze(1), weight, x.t())
        ctx.save_for_backward(x, weight)
        return yt.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        gx = _input_grad(g, weight) if ctx.needs_input_grad[0] else None
        gw = _weight_grad(g, x) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer(x)``: :class:`FewRowsLinear` for a few rows on the CPU, else ``F.linear``."""
    if x.device.type == "cpu" and x.dim() == 2 and x.shape[0] <= 8:
        return FewRowsLinear.apply(x, layer.weight, layer.bias)
    return torch.nn.functional.linear(x, layer.weight, layer.bias)
