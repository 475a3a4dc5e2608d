"""core.kernels.adam.FusedAdam: torch.optim.Adam's numbers and state dicts, without torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from napari_electrode_cae.core import (
    ConvAutoEncoder3d,
    TrainConfig,
    WindowDataset,
    WindowSpec,
    run_training,
    seed_everything,
    train,
)
from napari_electrode_cae.core.kernels import adam as adam_module
from napari_electrode_cae.core import training
from napari_electrode_cae.core.kernels.adam import FusedAdam
from napari_electrode_cae.core.training import make_optimiser

EXACT = {"rtol": 0.0, "atol": 0.0}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 27, 4))


def _steps(model: nn.Module, optimiser, n: int, seed: int = 1) -> None:
    """``n`` training steps on fixed random batches (the same for every optimiser)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(2, 1, 5, 5, 5, generator=g)
        optimiser.zero_grad(set_to_none=True)
        (model(x) - 1.0).square().mean().backward()
        optimiser.step()


def _assert_same(model_a, model_b, opt_a, opt_b, **tol):
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, **tol)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].keys() == sb[key].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for name in sa[key]:
            torch.testing.assert_close(sa[key][name], sb[key][name], **tol)


def test_matches_torch_fused_adam_exactly():
    ours_model, torch_model = _model(), _model()
    ours = FusedAdam(ours_model.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(torch_model.parameters(), lr=1e-2, fused=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # compared after every step
        x = torch.randn(2, 1, 5, 5, 5, generator=g)
        for model, optimiser in ((ours_model, ours), (torch_model, theirs)):
            optimiser.zero_grad(set_to_none=True)
            (model(x) - 1.0).square().mean().backward()
            optimiser.step()
        _assert_same(ours_model, torch_model, ours, theirs, **EXACT)
    assert ours.param_groups[0]["fused"] is True


def test_matches_torch_default_adam_closely():
    ours_model, torch_model = _model(), _model()
    ours = FusedAdam(ours_model.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(torch_model.parameters(), lr=1e-2)
    _steps(ours_model, ours, 5)
    _steps(torch_model, theirs, 5)
    _assert_same(ours_model, torch_model, ours, theirs, rtol=1e-5, atol=1e-7)


def test_state_dict_has_torch_layout():
    ours_model, torch_model = _model(), _model()
    ours = FusedAdam(ours_model.parameters(), lr=1e-3)
    theirs = torch.optim.Adam(torch_model.parameters(), lr=1e-3, fused=True)
    assert ours.state_dict() == theirs.state_dict() == {"state": {}, "param_groups": [
        theirs.state_dict()["param_groups"][0]]}
    _steps(ours_model, ours, 2)
    _steps(torch_model, theirs, 2)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert list(a["param_groups"][0]) == list(b["param_groups"][0])  # same key order
    assert a["param_groups"][0]["params"] == [0, 1, 2, 3]
    for key in b["state"]:
        assert list(a["state"][key]) == list(b["state"][key]) == ["step", "exp_avg", "exp_avg_sq"]
        step = a["state"][key]["step"]
        assert step.dtype == torch.float32 and step.shape == () and float(step) == 2.0


def test_torch_state_resumes_with_ours_and_back(tmp_path):
    reference = _model()
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2, fused=True)
    _steps(reference, ref_opt, 3)
    start = copy.deepcopy(reference.state_dict())
    saved = copy.deepcopy(ref_opt.state_dict())
    _steps(reference, ref_opt, 2, seed=7)  # torch, uninterrupted

    # torch -> ours, through a checkpoint file loaded like core.checkpoint loads it
    torch.save(saved, tmp_path / "torch.pt")
    model = _model(seed=3)
    model.load_state_dict(start)
    ours = make_optimiser(model, 1.0)  # lr comes from the state, as with torch
    ours.load_state_dict(torch.load(tmp_path / "torch.pt", weights_only=True))
    assert ours.param_groups[0]["lr"] == 1e-2
    _steps(model, ours, 2, seed=7)
    _assert_same(model, reference, ours, ref_opt, **EXACT)

    # ours -> torch
    reference = _model()
    ref_opt = FusedAdam(reference.parameters(), lr=1e-2)
    _steps(reference, ref_opt, 3)
    start = copy.deepcopy(reference.state_dict())
    torch.save(ref_opt.state_dict(), tmp_path / "ours.pt")
    _steps(reference, ref_opt, 2, seed=7)
    model = _model(seed=3)
    model.load_state_dict(start)
    theirs = torch.optim.Adam(model.parameters(), lr=1.0, fused=True)
    theirs.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True))
    _steps(model, theirs, 2, seed=7)
    _assert_same(model, reference, theirs, ref_opt, **EXACT)


def test_state_dict_round_trip_with_ours():
    reference = _model()
    ref_opt = FusedAdam(reference.parameters(), lr=1e-2)
    _steps(reference, ref_opt, 3)
    start = copy.deepcopy(reference.state_dict())
    saved = copy.deepcopy(ref_opt.state_dict())
    _steps(reference, ref_opt, 2, seed=7)
    model = _model(seed=3)
    model.load_state_dict(start)
    ours = FusedAdam(model.parameters(), lr=1.0)
    ours.load_state_dict(saved)
    _steps(model, ours, 2, seed=7)
    _assert_same(model, reference, ours, ref_opt, **EXACT)


def test_zero_grad():
    model = _model()
    ours = FusedAdam(model.parameters())
    _steps(model, ours, 1)
    assert all(p.grad is not None for p in model.parameters())
    ours.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    ours.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_parameters_without_gradient_are_left_alone():
    model = _model()
    frozen = model[0].weight.detach().clone()
    ours = FusedAdam(model.parameters(), lr=1e-2)
    model(torch.ones(1, 1, 5, 5, 5)).sum().backward()
    model[0].weight.grad = None
    ours.step()
    torch.testing.assert_close(model[0].weight, frozen, **EXACT)
    assert set(ours.state_dict()["state"]) == {1, 2, 3}


@pytest.mark.parametrize("how", ["no op", "no device", "op fails"])
def test_fallback_gives_torch_default_numbers(monkeypatch, how):
    if how == "no op":  # a torch without the fused kernel
        monkeypatch.delattr(torch, "_fused_adam_")
    elif how == "no device":  # a device type without it
        monkeypatch.setattr(adam_module, "_fused_devices", lambda: ())
    else:  # listed as supported, but the kernel is missing at run time
        def missing(*args, **kwargs):
            raise NotImplementedError("no kernel for this backend")

        monkeypatch.setattr(torch, "_fused_adam_", missing)
    ours_model, torch_model = _model(), _model()
    ours = FusedAdam(ours_model.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(torch_model.parameters(), lr=1e-2, foreach=False)
    for _ in range(5):
        _steps(ours_model, ours, 1)
        _steps(torch_model, theirs, 1)
        _assert_same(ours_model, torch_model, ours, theirs, **EXACT)
    assert ours.param_groups[0]["fused"] is None
    assert float(ours.state_dict()["state"][0]["step"]) == 5.0


def test_state_of_another_model_is_refused():
    ours = FusedAdam(_model().parameters())
    other = nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters())
    other(torch.ones(1, 3)).sum().backward()
    other_opt.step()
    with pytest.raises(ValueError, match="size"):  # two parameters instead of four
        ours.load_state_dict(other_opt.state_dict())

    same_count = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = FusedAdam(same_count.parameters())
    same_count(torch.ones(1, 2)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="shape"):
        ours.load_state_dict(opt.state_dict())

    amsgrad = torch.optim.Adam(_model().parameters(), amsgrad=True).state_dict()
    with pytest.raises(ValueError, match="amsgrad"):
        ours.load_state_dict(amsgrad)
    with pytest.raises(KeyError):
        ours.load_state_dict({"state": {}})
    with pytest.raises(TypeError):
        ours.load_state_dict([])
    assert ours.state == {}  # nothing was half loaded


def test_constructor_checks():
    with pytest.raises(ValueError):
        FusedAdam([])
    with pytest.raises(ValueError):
        FusedAdam([torch.zeros(2, dtype=torch.int64)])
    with pytest.raises(ValueError):
        FusedAdam([torch.zeros(2, requires_grad=True)], lr=-1.0)


def _tiny_data():
    import numpy as np

    from napari_electrode_cae.core import ElectrodeStack

    rng = np.random.default_rng(0)
    stacks = [ElectrodeStack(rng.integers(0, 3, (12, 32, 32), dtype=np.uint8), calendered=c,
                             name=n, source="") for c, n in ((True, "cal"), (False, "uncal"))]
    return WindowDataset(stacks, WindowSpec(4, 2, crop=16))


def test_resume_from_a_torch_optim_checkpoint(tmp_path, monkeypatch):
    """A last.pt written with torch.optim.Adam(fused=True) resumes to the same weights."""
    config = TrainConfig(epochs=3, batch_size=4, lr=3e-3, seed=2, device="cpu")
    data = _tiny_data()
    seed_everything(2)
    model = ConvAutoEncoder3d(4, crop=16, conv_layers=3, hidden=8, latent_dim=3)
    initial = copy.deepcopy(model.state_dict())
    full = run_training(model, data, config)
    full_state = copy.deepcopy(model.state_dict())

    with monkeypatch.context() as m:  # the old optimiser writes the checkpoint
        m.setattr(training, "make_optimiser",
                  lambda mod, lr: torch.optim.Adam(mod.parameters(), lr=lr, fused=True))
        model.load_state_dict(initial)
        for report in (gen := train(model, data, config, checkpoint_dir=tmp_path)):
            if report.epoch == 2:
                gen.close()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["optimiser"]
    assert saved["param_groups"][0]["fused"] is True
    resumed = run_training(model, data, config, checkpoint_dir=tmp_path, resume=True)
    assert [r.val_mse for r in resumed.history] == [r.val_mse for r in full.history]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, full_state[key], **EXACT)


def test_training_never_imports_dynamo(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        from napari_electrode_cae import core
        from napari_electrode_cae.core.training import make_optimiser

        model = core.ConvAutoEncoder3d(4, crop=16, conv_layers=3, hidden=8, latent_dim=3)
        make_optimiser(model, 1e-3)
        rng = np.random.default_rng(0)
        stacks = [core.ElectrodeStack(rng.integers(0, 3, (12, 32, 32), dtype=np.uint8),
                                      calendered=True, name="cal", source="")]
        data = core.WindowDataset(stacks, core.WindowSpec(4, 2, crop=16))
        config = core.TrainConfig(epochs=2, batch_size=4, lr=1e-3, device="cpu")
        core.run_training(model, data, config, checkpoint_dir={str(tmp_path)!r})
        core.run_training(model, data, core.TrainConfig(epochs=3, batch_size=4, device="cpu"),
                          checkpoint_dir={str(tmp_path)!r}, resume=True)
        print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
