import pytest
import torch

from napari_electrode_cae.core import ConvAutoEncoder3d, ModelConfigError, count_parameters
from napari_electrode_cae.core.model import layer_summary


def _rows(model):
    return [(r.part, r.name, r.output_shape, r.parameters) for r in layer_summary(model)]


@pytest.mark.parametrize("length, third_conv", [(24, 55_312), (4, 9_232)])
def test_tables_3_and_4_shapes_and_parameter_counts(length, third_conv):
    model = ConvAutoEncoder3d(
        window_length=length, crop=224, conv_layers=3, hidden=128, latent_dim=10
    )
    enc = [r for r in _rows(model) if r[0] == "encoder"]
    dec = [r for r in _rows(model) if r[0] == "decoder"]
    assert [(name, shape, n) for _, name, shape, n in enc] == [
        ("Conv3d-1", (-1, 8, length, 111, 111), 80),
        ("ReLU-2", (-1, 8, length, 111, 111), 0),
        ("Conv3d-3", (-1, 16, length, 55, 55), 1_168),
        ("ReLU-4", (-1, 16, length, 55, 55), 0),
        ("Conv3d-5", (-1, 16, 1, 27, 27), third_conv),
        ("ReLU-6", (-1, 16, 1, 27, 27), 0),
        ("Flatten-7", (-1, 11_664), 0),
        ("Linear-8", (-1, 128), 1_493_120),
        ("ReLU-9", (-1, 128), 0),
        ("Linear-10", (-1, 10), 1_290),
    ]
    assert [(shape, n) for _, _, shape, n in dec] == [
        ((-1, 128), 1_408),
        ((-1, 128), 0),
        ((-1, 11_664), 1_504_656),
        ((-1, 11_664), 0),
        ((-1, 16, 1, 27, 27), 0),
        ((-1, 16, length, 55, 55), third_conv),
        ((-1, 16, length, 55, 55), 0),
        ((-1, 8, length, 111, 111), 1_160),
        ((-1, 8, length, 111, 111), 0),
        ((-1, 1, length, 224, 224), 73),
    ]
    assert [name.split("-")[0] for _, name, _, _ in dec][5::2] == ["ConvTranspose3d"] * 3
    enc_total = 80 + 1_168 + third_conv + 1_493_120 + 1_290
    dec_total = 1_408 + 1_504_656 + third_conv + 1_160 + 73
    assert count_parameters(model.encoder) == enc_total
    assert count_parameters(model.decoder) == dec_total
    if length == 24:
        assert (enc_total, dec_total) == (1_550_970, 1_562_609)


@pytest.mark.parametrize("layers", [3, 4, 5])
@pytest.mark.parametrize("length, crop", [(1, 64), (5, 70), (8, 97), (3, 128)])
def test_any_crop_and_length_round_trips(layers, length, crop):
    model = ConvAutoEncoder3d(length, crop=crop, conv_layers=layers, hidden=16, latent_dim=3)
    x = torch.zeros(2, 1, length, crop, crop)
    z = model.encode(x)
    assert z.shape == (2, 3)
    assert model.decode(z).shape == x.shape


def test_deeper_models_keep_the_paper_pattern():
    model = ConvAutoEncoder3d(8, crop=224, conv_layers=5)
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 64]
    assert [c.kernel_size for c in convs] == [(1, 3, 3)] * 4 + [(8, 3, 3)]
    assert all(c.stride == (1, 2, 2) for c in convs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window_length=4, crop=224, conv_layers=6), "conv_layers must be one of"),
        (dict(window_length=0, crop=64), "window_length must be a positive integer"),
        (dict(window_length=4, crop=20, conv_layers=4), "crop 20 is too small for 4 conv layers"),
        (dict(window_length=4, crop=64, latent_dim=0), "latent_dim"),
    ],
)
def test_bad_architecture_is_refused(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        ConvAutoEncoder3d(**kwargs)
