"""The paper's model with options: normalisation layers and a three-phase output."""

import pytest
import torch

from napari_electrode_cae.core import (
    ConvAutoEncoder3d,
    ModelConfig,
    ModelConfigError,
    build_model,
    count_parameters,
)


def test_paper_model_is_unchanged_by_the_options():
    model = build_model(ModelConfig(24, 224))
    assert count_parameters(model.encoder) == 1_550_970
    assert count_parameters(model.decoder) == 1_562_609
    assert model.config.is_paper and model.routed


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("output", ["value", "phases"])
def test_options_keep_the_encoder_and_latent_size_and_round_trip_the_shape(norm, output):
    model = ConvAutoEncoder3d(4, 32, 3, 16, 5, norm=norm, output=output)
    x = torch.zeros(2, 1, 4, 32, 32)
    z = model.encode(x)
    out = model.decode(z)
    assert z.shape == (2, 5)
    assert out.shape == (2, 3 if output == "phases" else 1, 4, 32, 32)
    assert model.values(out).shape == (2, 1, 4, 32, 32)
    assert not model.routed  # options run the plain modules
    norms = [
        m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm3d, torch.nn.GroupNorm))
    ]
    assert len(norms) == 2 * 3 - 1  # after every conv but the decoder's last


def test_three_phase_values_are_the_expected_network_value():
    model = ConvAutoEncoder3d(4, 16, 3, 8, 2, output="phases")
    logits = torch.tensor(
        [[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0], [-10.0, -10.0, 10.0], [0.0, -100.0, 0.0]]
    ).T.reshape(1, 3, 1, 1, 4)
    assert model.values(logits).flatten().tolist() == pytest.approx([-1, 0, 1, 0], abs=1e-4)


def test_three_phase_model_snaps_by_argmax_and_one_channel_by_nearest_until_fitted():
    assert ConvAutoEncoder3d(4, 16, output="phases").phase_rule.name == "argmax"
    assert ConvAutoEncoder3d(4, 16).phase_rule.name == "nearest"


def test_build_model_makes_the_configured_model():
    config = ModelConfig(4, 32, 4, 16, 3, "group", "phases")
    assert build_model(config).config == config


@pytest.mark.parametrize("field, value", [("norm", "layer"), ("output", "rgb")])
def test_unknown_options_are_refused_with_the_field(field, value):
    with pytest.raises(ModelConfigError, match=field):
        ConvAutoEncoder3d(4, 32, **{field: value})
