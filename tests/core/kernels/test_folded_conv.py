"""The hand-routed stride-2 convolutions equal PyTorch's own, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from napari_electrode_cae.core.kernels.folded_conv import (
    conv_stride2,
    conv_transpose_stride2,
    in_layout,
)

FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("size, cin, cout", [(7, 1, 3), (8, 2, 4), (11, 3, 2)])
def test_conv_stride2_matches_conv2d_and_passes_gradcheck(size, cin, cout, relu, memory_format):
    torch.manual_seed(0)
    x = torch.randn(2, cin, size, size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, stride=2)
    ref = F.relu(ref) if relu else ref
    out = conv_stride2(x, w, b, relu, memory_format)
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv_stride2(x, w, b, relu, memory_format), (x, w, b)
    )


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize(
    "size, pad, cin, cout", [(3, 0, 2, 1), (5, 1, 2, 1), (4, 1, 1, 3), (5, 1, 3, 2), (6, 0, 2, 2)]
)
def test_conv_transpose_stride2_matches_and_passes_gradcheck(
    size, pad, cin, cout, relu, memory_format
):
    torch.manual_seed(0)
    x = torch.randn(2, cin, size, size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cin, cout, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    out_size = 2 * (size - 1) + 3 + pad
    ref = F.conv_transpose2d(x, w, b, stride=2, output_padding=pad)
    ref = F.relu(ref) if relu else ref
    out = conv_transpose_stride2(x, w, b, out_size, relu, memory_format)
    assert out.shape[-2:] == (out_size, out_size)
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv_transpose_stride2(x, w, b, out_size, relu, memory_format),
        (x, w, b),
    )


def test_input_gradient_is_skipped_when_not_needed():
    x = torch.randn(1, 1, 9, 9)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    conv_stride2(x, w, b).sum().backward()
    assert x.grad is None and w.grad is not None and b.grad is not None


def test_weight_gradient_in_batch_slices_is_the_same(monkeypatch):
    from napari_electrode_cae.core.kernels import folded_conv

    torch.manual_seed(0)
    x = torch.randn(5, 1, 9, 9, dtype=torch.float64)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    xt = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    wt = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bt = torch.randn(1, dtype=torch.float64, requires_grad=True)
    grads = []
    for chunk in (10**9, 50):  # one call, then slices of one or two items
        monkeypatch.setattr(folded_conv, "WEIGHT_GRAD_CHUNK", chunk)
        for p in (w, b, wt, bt):
            p.grad = None
        conv_stride2(x, w, b).square().sum().backward()
        conv_transpose_stride2(xt, wt, bt, 10, relu=False).square().sum().backward()
        grads.append([p.grad.clone() for p in (w, b, wt, bt)])
    for one, sliced in zip(*grads):
        torch.testing.assert_close(sliced, one)
    ref = torch.autograd.grad(F.conv2d(x, w, b, stride=2).relu().square().sum(), (w, b))
    torch.testing.assert_close(grads[1][0], ref[0])
    torch.testing.assert_close(grads[1][1], ref[1])


def test_layers_without_bias_or_trainable_bias():
    x = torch.randn(2, 1, 9, 9)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    conv_stride2(x, w, None).sum().backward()
    ref = torch.autograd.grad(F.conv2d(x, w, None, stride=2).relu().sum(), w)[0]
    torch.testing.assert_close(w.grad, ref)
    frozen = torch.zeros(3)  # a bias that does not train
    w.grad = None
    conv_stride2(x, w, frozen).sum().backward()
    torch.testing.assert_close(w.grad, ref)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize(
    "depth, size, pad, cin, cout", [(3, 7, 0, 2, 3), (2, 6, 1, 1, 2), (4, 5, 1, 3, 1)]
)
def test_depth_folding_3d_layers_match_conv3d_and_pass_gradcheck(
    depth, size, pad, cin, cout, relu, memory_format
):
    """The (d, 3, 3) layers as 3D convolutions (the channels-last layout's route)."""
    torch.manual_seed(0)
    x = torch.randn(2, cin, depth, size, size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin, depth, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    ref = F.conv3d(x, w, b, stride=(1, 2, 2))
    ref = F.relu(ref) if relu else ref
    torch.testing.assert_close(conv_stride2(x, w, b, relu, memory_format), ref)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv_stride2(x, w, b, relu, memory_format), (x, w, b)
    )
    # the decoder's mirror: depth 1 -> depth d
    z = torch.randn(2, cout, 1, size, size, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(cout, cin, depth, 3, 3, dtype=torch.float64, requires_grad=True)
    bt = torch.randn(cin, dtype=torch.float64, requires_grad=True)
    out_size = 2 * (size - 1) + 3 + pad
    ref = F.conv_transpose3d(z, wt, bt, stride=(1, 2, 2), output_padding=(0, pad, pad))
    ref = F.relu(ref) if relu else ref
    out = conv_transpose_stride2(z, wt, bt, out_size, relu, memory_format)
    assert out.shape == (2, cin, depth, out_size, out_size)
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(
        lambda z, w, b: conv_transpose_stride2(z, w, b, out_size, relu, memory_format), (z, wt, bt)
    )


def test_one_channel_tensors_get_channels_last_strides_over_the_same_memory():
    """oneDNN picks its kernels from the strides: a one-channel NCHW tensor is given NHWC
    strides without a copy, so the 8-channel result comes out channels-last."""
    x = torch.randn(2, 1, 9, 9)
    y = in_layout(x, torch.channels_last)
    assert y.data_ptr() == x.data_ptr() and y.stride() == (81, 1, 9, 1)
    torch.testing.assert_close(y, x)
    w = torch.randn(8, 1, 3, 3)
    out = conv_stride2(x, w, None, False, torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, F.conv2d(x, w, None, stride=2))
    # many channels: an ordinary conversion; contiguous format: left as it is
    many = torch.randn(2, 3, 5, 5)
    assert in_layout(many, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert in_layout(x, torch.contiguous_format) is x
    x3 = torch.randn(2, 1, 3, 5, 5)
    assert in_layout(x3, torch.channels_last_3d).stride() == (75, 1, 25, 5, 1)
    # a slice of a batch (storage offset): the same values, in its own memory
    sliced = torch.randn(3, 1, 9, 9)[1:]
    y = in_layout(sliced, torch.channels_last)
    assert y.data_ptr() == sliced.data_ptr() and torch.equal(y, sliced)
    torch.testing.assert_close(
        conv_stride2(sliced, w, None, False, torch.channels_last),
        F.conv2d(sliced, w, None, stride=2),
    )


def test_relu_mask_is_applied_in_place_in_every_dense_layout():
    from napari_electrode_cae.core.kernels.folded_conv import _relu_backward

    for shape, fmt in (
        ((2, 3, 4, 4), torch.channels_last),
        ((2, 3, 2, 4, 4), torch.channels_last_3d),
        ((2, 3, 4, 4), torch.contiguous_format),
    ):
        y = torch.randn(shape).relu().contiguous(memory_format=fmt)
        grad = torch.randn(shape).contiguous(memory_format=fmt)
        expected = torch.where(y > 0, grad, torch.zeros(()))
        out = _relu_backward(grad, y)
        assert out.data_ptr() == grad.data_ptr()
        torch.testing.assert_close(out, expected)
