"""Training's optimiser is torch.optim.Adam (fused where torch has the kernel)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from napari_electrode_cae import core
from napari_electrode_cae.core import training


def _tiny():
    rng = np.random.default_rng(0)
    stack = core.ElectrodeStack(rng.integers(0, 3, (12, 32, 32), dtype=np.uint8))
    data = core.WindowDataset([stack], core.WindowSpec(4, 2, crop=16))
    return data, core.ModelConfig(4, 16, 3, 8, 3)


def test_the_optimiser_is_torch_adam_fused_on_the_cpu():
    _, config = _tiny()
    optimiser = training.make_optimiser(core.build_model(config), 1e-3)
    assert isinstance(optimiser, torch.optim.Adam)
    assert optimiser.param_groups[0]["fused"] is True
    assert optimiser.param_groups[0]["lr"] == 1e-3


def test_a_run_resumes_from_a_checkpoint_of_the_unfused_adam(tmp_path, monkeypatch):
    """last.pt files written before the switch (torch's default Adam layout) still resume."""
    data, model_config = _tiny()
    config = core.TrainConfig(epochs=3, batch_size=4, lr=3e-3, seed=2, device="cpu")
    core.seed_everything(2)
    model = core.build_model(model_config)
    initial = copy.deepcopy(model.state_dict())
    full = core.run_training(model, data, config)

    with monkeypatch.context() as m:
        m.setattr(
            training, "make_optimiser", lambda mod, lr: torch.optim.Adam(mod.parameters(), lr=lr)
        )
        model.load_state_dict(initial)
        for report in (gen := core.train(model, data, config, checkpoint_dir=tmp_path)):
            if report.epoch == 2:
                gen.close()
    resumed = core.run_training(model, data, config, checkpoint_dir=tmp_path, resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(
        [r.val_mse for r in resumed.history], [r.val_mse for r in full.history], rtol=1e-4
    )
