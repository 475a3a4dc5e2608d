import math

import numpy as np
import pytest
import torch

from napari_electrode_cae.core import (
    BatchReport,
    ConvAutoEncoder3d,
    EpochReport,
    TrainConfig,
    TrainConfigError,
    WindowDataset,
    WindowSpec,
    resolve_device,
    run_training,
    seed_everything,
    split,
    train,
)
from napari_electrode_cae.core.checkpoint import load_state_dict

SPEC = WindowSpec(4, 2, crop=16)


def _setup(stacks, seed=0):
    data = WindowDataset(stacks, SPEC)
    seed_everything(seed)
    model = ConvAutoEncoder3d(4, crop=16, conv_layers=3, hidden=16, latent_dim=3)
    return model, data


def test_train_yields_epoch_reports_and_returns_result(tiny_stacks, tmp_path):
    model, data = _setup(tiny_stacks)
    config = TrainConfig(epochs=3, batch_size=4, lr=3e-3, seed=0, device="cpu", split="random")
    gen = train(model, data, config, checkpoint_dir=tmp_path)
    reports = []
    with pytest.raises(StopIteration) as stop:
        while True:
            reports.append(next(gen))
    result = stop.value.value
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert all(isinstance(r, EpochReport) and math.isfinite(r.val_mse) for r in reports)
    assert result.best_val_mse == min(r.val_mse for r in reports)
    assert result.best_epoch == min(reports, key=lambda r: r.val_mse).epoch
    assert not result.stopped and result.device == "cpu"
    assert len(result.train_idx) + len(result.val_idx) == len(data)
    # the best checkpoint is on disk and equals the weights the model ends with
    saved = load_state_dict(tmp_path / "best.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(saved[key], value)


def test_training_reduces_the_loss(tiny_stacks):
    model, data = _setup(tiny_stacks)
    result = run_training(model, data, TrainConfig(epochs=8, batch_size=4, lr=3e-3, device="cpu"))
    history = result.history
    assert history[-1].train_mse < history[0].train_mse


def test_seeded_training_is_reproducible(tiny_stacks):
    states = []
    for _ in range(2):
        model, data = _setup(tiny_stacks, seed=7)
        result = run_training(
            model, data, TrainConfig(epochs=2, batch_size=4, lr=1e-3, seed=7, device="cpu")
        )
        states.append((model.state_dict(), [r.val_mse for r in result.history]))
    assert states[0][1] == states[1][1]
    for key in states[0][0]:
        torch.testing.assert_close(states[0][0][key], states[1][0][key], rtol=0, atol=0)


def test_closing_between_batches_keeps_the_best_weights(tiny_stacks):
    model, data = _setup(tiny_stacks)
    config = TrainConfig(epochs=50, batch_size=2, lr=3e-3, device="cpu")
    gen = train(model, data, config, yield_batches=True)
    best_state, seen_batches_after_epoch = None, 0
    for report in gen:
        if isinstance(report, EpochReport):
            if report.is_best:
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            if report.epoch == 2:
                seen_batches_after_epoch = 0
        elif isinstance(report, BatchReport) and report.epoch == 3:
            seen_batches_after_epoch += 1
            if seen_batches_after_epoch == 2:  # stop in the middle of epoch 3
                gen.close()
                break
    assert best_state is not None
    assert not model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best_state[key])


def test_mismatched_windows_and_model_are_refused(tiny_stacks):
    data = WindowDataset(tiny_stacks, SPEC)
    model = ConvAutoEncoder3d(8, crop=16, hidden=8, latent_dim=2)
    with pytest.raises(TrainConfigError, match="model expects 8x16x16"):
        next(train(model, data, TrainConfig(epochs=1, device="cpu")))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=-1.0), "learning rate"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(val_fraction=1.0), "validation fraction"),
        (dict(split="diagonal"), "split must be one of"),
        (dict(device="tpu"), "device must be one of"),
    ],
)
def test_bad_train_config(kwargs, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig(**kwargs)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(TrainConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_explicit_split_is_used(tiny_stacks):
    model, data = _setup(tiny_stacks)
    train_idx, val_idx = split(data, 0.3, seed=1, mode="blocked")
    result = run_training(
        model, data, TrainConfig(epochs=1, device="cpu"), train_idx=train_idx, val_idx=val_idx
    )
    np.testing.assert_array_equal(result.val_idx, val_idx)


def test_resume_reaches_the_same_weights_and_history(tiny_stacks, tmp_path):
    config = TrainConfig(epochs=4, batch_size=4, lr=3e-3, seed=2, device="cpu")
    model, data = _setup(tiny_stacks, seed=2)
    full = run_training(model, data, config)
    full_state = {k: v.clone() for k, v in model.state_dict().items()}

    model, data = _setup(tiny_stacks, seed=2)
    gen = train(model, data, config, checkpoint_dir=tmp_path)
    for report in gen:
        if report.epoch == 2:
            gen.close()  # stopped after epoch 2
    assert (tmp_path / "last.pt").exists()
    model, data = _setup(tiny_stacks, seed=5)  # fresh weights: everything must come from disk
    resumed = run_training(model, data, config, checkpoint_dir=tmp_path, resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert [r.val_mse for r in resumed.history] == pytest.approx(
        [r.val_mse for r in full.history], rel=1e-6
    )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, full_state[key])


def test_inference_batch_is_capped_by_voxels():
    from napari_electrode_cae.core.training import INFERENCE_CHUNK_VOXELS, inference_batch_size

    assert inference_batch_size(8, (24, 224, 224)) == 2  # paper windows: 2 at a time
    assert inference_batch_size(8, (4, 224, 224)) == 8  # l = 4: unchanged
    assert inference_batch_size(8, (8, 64, 64)) == 8  # quick preset: unchanged
    assert inference_batch_size(1, (4, 16, 16)) == 1
    assert inference_batch_size(64, (24, 224, 224)) * 24 * 224 * 224 <= INFERENCE_CHUNK_VOXELS
    assert inference_batch_size(8, (48, 448, 448)) == 1  # larger than the cap: one at a time


def test_window_mse_and_latents_in_voxel_capped_chunks_match(tiny_stacks, monkeypatch):
    from napari_electrode_cae.core import encode_windows, evaluate, window_mse
    from napari_electrode_cae.core import training as training_module

    model, data = _setup(tiny_stacks)
    train_idx, val_idx = split(data, 0.15, 0)
    mse = window_mse(model, data, train_idx, 8)
    latents = encode_windows(model, data, 8)
    report = evaluate(model, data, train_idx, val_idx)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: seen.append(len(x)) or forward(x))
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda x: seen.append(len(x)) or encode(x))
    # a cap of 3 windows' voxels: chunks of 3 instead of 8, same numbers
    monkeypatch.setattr(training_module, "INFERENCE_CHUNK_VOXELS", 3 * 4 * 16 * 16)
    np.testing.assert_allclose(window_mse(model, data, train_idx, 8), mse, rtol=1e-5)
    assert seen and max(seen) == 3
    seen.clear()
    np.testing.assert_allclose(encode_windows(model, data, 8), latents, rtol=1e-5, atol=1e-6)
    assert seen and max(seen) == 3
    chunked = evaluate(model, data, train_idx, val_idx)
    assert chunked.mse.n_train == report.mse.n_train and chunked.window == report.window
    for name in ("train_mean", "train_std", "val_mean", "val_std", "p_value"):
        assert getattr(chunked.mse, name) == pytest.approx(getattr(report.mse, name), rel=1e-5)
