"""The routed kernels compute the plain modules' function and gradients (the reference)."""

import pytest
import torch

from napari_electrode_cae.core import ConvAutoEncoder3d, ModelConfigError
from napari_electrode_cae.core.kernels.routing import resolve_layout


@pytest.mark.parametrize("layers, length, crop", [(3, 6, 64), (4, 3, 70), (5, 2, 97)])
def test_routed_path_is_the_plain_modules_function_and_gradient(layers, length, crop):
    torch.manual_seed(0)
    model = ConvAutoEncoder3d(length, crop=crop, conv_layers=layers, hidden=16, latent_dim=4)
    x = torch.randn(3, 1, length, crop, crop, requires_grad=True)
    results = []
    for fold, layout in ((False, "auto"), (True, "contiguous"), (True, "channels_last")):
        model.fold_depth, model.layout = fold, layout
        model.zero_grad()
        x.grad = None
        z = model.encode(x)
        assert z.is_contiguous()
        y = model.decode(z)
        ((y - x.detach()) ** 2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
        results.append((z.detach(), y.detach(), grads))
    (z0, y0, g0), *folded = results
    for z1, y1, g1 in folded:
        torch.testing.assert_close(z1, z0, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-6)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)


def test_channels_last_model_trains_under_bf16_autocast_with_float32_gradients():
    torch.manual_seed(0)
    model = ConvAutoEncoder3d(3, crop=32, hidden=16, latent_dim=4)
    model.layout = "channels_last"
    x = torch.randn(2, 1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16
    ((y.float() - x) ** 2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_layout_is_chosen_by_device_and_checked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_layout("auto", cpu) == "channels_last"
    assert resolve_layout("auto", cuda) == "contiguous"  # the route measured with CUDA graphs
    assert resolve_layout("contiguous", cpu) == "contiguous"
    model = ConvAutoEncoder3d(2, crop=16, hidden=8, latent_dim=2)
    with pytest.raises(ModelConfigError, match="layout must be one of"):
        model.layout = "nhwc"
    assert model.layout == "auto"
    with pytest.raises(ModelConfigError, match="layout must be one of"):
        resolve_layout("nhwc", cpu)
