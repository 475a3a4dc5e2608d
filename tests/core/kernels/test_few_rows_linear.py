"""FewRowsLinear is F.linear: same values and gradients, whichever route each product takes."""

import pytest
import torch
import torch.nn.functional as F

from napari_electrode_cae.core.kernels import few_rows_linear
from napari_electrode_cae.core.kernels.few_rows_linear import FewRowsLinear, linear


@pytest.mark.parametrize("rows", [0, 1, 2, 3])
@pytest.mark.parametrize("n_in, n_out", [(12, 8), (7, 13), (5, 40), (40, 6), (12, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_linear_and_passes_gradcheck(monkeypatch, rows, n_in, n_out, with_bias):
    # a small threshold so that these sizes take the split routes: K = 13, 40 slices of K (13
    # leaves a remainder), M = 12, 40 column blocks, 7 none; weight gradients with more rows
    # than columns (13 × 7, 40 × 5) are outer products for 1 or 2 rows, 8 × 12 divides into
    # row blocks of 4, 6 × 40 and 3 × 12 into none; 0 rows: zero gradients
    monkeypatch.setattr(few_rows_linear, "SPLIT_MIN", 4)
    torch.manual_seed(0)
    x = torch.randn(rows, n_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n_out, n_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n_out, dtype=torch.float64, requires_grad=True) if with_bias else None
    torch.testing.assert_close(FewRowsLinear.apply(x, w, b), F.linear(x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: FewRowsLinear.apply(x, w, b), (x, w, b))


def test_column_major_input_and_the_dispatch():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    x = torch.randn(6, 2).t()  # column-major rows, as a previous layer's transposed output
    torch.testing.assert_close(linear(x, layer), layer(x))
    # many rows, or not 2-D: the ordinary F.linear
    many = torch.randn(20, 6)
    assert linear(many, layer).grad_fn.name() != "FewRowsLinearBackward"
    assert linear(x, layer).grad_fn.name() == "FewRowsLinearBackward"
    assert linear(torch.randn(2, 3, 6), layer).shape == (2, 3, 5)


def test_paper_sized_layers_match_in_float32():
    """The split routes on the real sizes (11,664 ↔ 128) agree with F.linear in float32."""
    torch.manual_seed(0)
    for n_in, n_out in ((11664, 128), (128, 11664)):
        x = torch.randn(2, n_in, requires_grad=True)
        w = torch.randn(n_out, n_in, requires_grad=True)
        b = torch.randn(n_out, requires_grad=True)
        g = torch.randn(2, n_out)
        ours = torch.autograd.grad(FewRowsLinear.apply(x, w, b), (x, w, b), g)
        ref = torch.autograd.grad(F.linear(x, w, b), (x, w, b), g)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 3])
def test_any_thread_count_gives_the_same_gradients(threads):
    """The splits follow the thread count; 11,665 divides by none of them."""
    before = torch.get_num_threads()
    torch.manual_seed(0)
    x = torch.randn(2, 11665, dtype=torch.float64, requires_grad=True)
    w = torch.randn(128, 11665, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 128, dtype=torch.float64)
    try:
        torch.set_num_threads(threads)
        ours = torch.autograd.grad(FewRowsLinear.apply(x, w, None), (x, w), g)
    finally:
        torch.set_num_threads(before)
    ref = torch.autograd.grad(F.linear(x, w), (x, w), g)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)


def test_bf16_autocast_keeps_float32_gradients_and_float64_inputs():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3000, 4)
    x = torch.randn(2, 3000, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear(x, layer)
        wide = linear(x.detach().double(), torch.nn.Linear(3000, 4).double())
    assert y.dtype == torch.bfloat16 and wide.dtype == torch.float64  # as F.linear
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_second_derivatives_are_refused():
    x = torch.randn(2, 5, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    (gx,) = torch.autograd.grad(
        FewRowsLinear.apply(x, w, None).square().sum(), x, create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        gx.sum().backward()
