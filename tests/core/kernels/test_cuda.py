"""The GPU paths of training: batch feeding, mixed precision, cuDNN autotuning, lazy losses.

Everything that can run without a GPU runs here on the CPU (the resident feeder, bf16 autocast
through the folded convolutions, the settings); the tests marked ``cuda`` need a CUDA GPU and
are skipped without one (CI has none; they were run on an H200, see the README).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_electrode_cae import core
from napari_electrode_cae.cli import main as cli_main
from napari_electrode_cae.core.kernels.feeding import BatchFeeder, choose_mode, stack_bytes
from napari_electrode_cae.core.kernels.train_step import autocast_for
from napari_electrode_cae.core.training import cudnn_autotune
from tests.conftest import make_stack

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def data() -> core.WindowDataset:
    stacks = [make_stack((12, 32, 32), seed=0), make_stack((10, 32, 32), seed=1, name="b")]
    return core.WindowDataset(stacks, core.WindowSpec(4, 2, 32))


def small_model(seed: int = 0) -> core.ConvAutoEncoder3d:
    torch.manual_seed(seed)
    return core.ConvAutoEncoder3d(4, 32, 3, 16, 4)


# -- settings -----------------------------------------------------------------------------


def test_precision_is_validated_and_defaults_to_fp32():
    assert core.TrainConfig().precision == "fp32"
    assert core.TrainConfig(precision="bf16").to_dict()["precision"] == "bf16"
    with pytest.raises(core.TrainConfigError, match="precision must be one of"):
        core.TrainConfig(precision="fp16")


def test_cli_refuses_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--out", "x", "--precision", "int8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_cli_trains_in_bf16_and_records_it(tmp_path, capsys):
    stack_path = tmp_path / "stack.npy"
    np.save(stack_path, make_stack((12, 32, 32)).labels)
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            str(stack_path),
            "--out",
            str(out),
            "--window",
            "4",
            "--crop",
            "32",
            "--epochs",
            "2",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--precision",
            "bf16",
        ]
    )
    assert code == 0
    assert "bf16 mixed precision" in capsys.readouterr().err
    run = core.load_run(out)
    assert run.train_config.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in run.model.parameters())


def test_old_run_folders_without_precision_still_load(tmp_path, data):
    model = small_model()
    config = core.TrainConfig(epochs=1, device="cpu")
    result = core.run_training(model, data, config)
    core.save_run(tmp_path, model, data, config, result.train_idx, result.val_idx, result.history)
    import json

    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    del saved["train"]["precision"]  # as written before precision existed
    path.write_text(json.dumps(saved))
    assert core.load_run(tmp_path).train_config.precision == "fp32"


# -- batch feeding --------------------------------------------------------------------------


def test_host_and_resident_feeders_match_dataset_batches(data):
    picks = [0, 5, 3, len(data) - 1]
    expected = data.batch(picks)
    for mode in ("host", "resident"):
        feeder = BatchFeeder(data, "cpu", mode=mode)
        got = feeder(picks)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected), mode
    assert stack_bytes(data) == 12 * 32 * 32 + 10 * 32 * 32


def test_feeder_modes_off_cuda(data):
    assert choose_mode(data, torch.device("cpu")) == "host"
    assert BatchFeeder(data, "cpu").mode == "host"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        BatchFeeder(data, "cpu", mode="staged")
    with pytest.raises(ValueError, match="feed mode must be one of"):
        BatchFeeder(data, "cpu", mode="disk")


def test_window_mse_is_the_same_with_any_feeder(data):
    model = small_model().eval()
    indices = list(range(len(data)))
    plain = core.window_mse(model, data, indices, batch_size=3)
    resident = core.window_mse(
        model, data, indices, batch_size=3, feeder=BatchFeeder(data, "cpu", mode="resident")
    )
    np.testing.assert_array_equal(plain, resident)
    with torch.inference_mode():
        x = data.batch(indices)
        direct = (model(x) - x).pow(2).flatten(1).mean(1).double().numpy()
    np.testing.assert_allclose(plain, direct, rtol=1e-6)


# -- lazy batch losses ---------------------------------------------------------------------


def test_batch_reports_carry_the_loss_without_reading_it(data):
    model = small_model()
    reports = list(
        core.train(model, data, core.TrainConfig(epochs=1, device="cpu"), yield_batches=True)
    )
    batches = [r for r in reports if isinstance(r, core.BatchReport)]
    epoch = reports[-1]
    assert batches and isinstance(batches[0].batch_loss, torch.Tensor)
    assert all(isinstance(b.loss, float) and np.isfinite(b.loss) for b in batches)
    # the epoch's training MSE is the window-weighted mean of the batch losses
    train_idx, _ = core.split(data, 0.15, 0, core.TrainConfig().split)
    sizes = [min(2, len(train_idx) - 2 * i) for i in range(len(batches))]
    weighted = sum(b.loss * s for b, s in zip(batches, sizes)) / len(train_idx)
    assert epoch.train_mse == pytest.approx(weighted, rel=1e-6)
    assert core.BatchReport(1, 1, 5, 0.5).loss == 0.5


# -- mixed precision through the folded convolutions ------------------------------------------


def test_bf16_autocast_folded_matches_plain_conv3d_and_keeps_fp32_gradients():
    folded, plain = small_model(), small_model()
    plain.fold_depth = False
    x = torch.randn(2, 1, 4, 32, 32)
    outs = {}
    for name, model in (("folded", folded), ("plain", plain)):
        with autocast_for(torch.device("cpu"), "bf16"):
            y = model(x)
        assert y.dtype == torch.bfloat16
        (y.float() - x).pow(2).mean().backward()
        outs[name] = y.float().detach()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    # same function in bfloat16 (rounding differs with the order of operations)
    assert torch.allclose(outs["folded"], outs["plain"], atol=0.02)
    for (name, a), b in zip(folded.named_parameters(), plain.parameters()):
        scale = float(b.grad.abs().max()) + 1e-12
        assert float((a.grad - b.grad).abs().max()) <= 0.05 * scale, name


def test_fp32_autocast_context_is_a_no_op():
    model = small_model()
    x = torch.randn(1, 1, 4, 32, 32)
    with autocast_for(torch.device("cpu"), "fp32"):
        y = model(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, model(x))


def test_bf16_training_learns_like_fp32_on_cpu(data):
    results = {}
    for precision in ("fp32", "bf16"):
        model = small_model()
        config = core.TrainConfig(
            epochs=4, lr=3e-3, device="cpu", precision=precision, split="random"
        )
        result = core.run_training(model, data, config)
        results[precision] = [r.val_mse for r in result.history]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert results["bf16"][-1] < results["bf16"][0]  # it learns
    np.testing.assert_allclose(results["bf16"], results["fp32"], rtol=0.05)


def test_cudnn_autotune_is_left_alone_off_cuda():
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before


# -- on a CUDA GPU ------------------------------------------------------------------------


@cuda
def test_cuda_feeders_match_dataset_batches(data):
    picks = [4, 0, len(data) - 1]
    expected = data.batch(picks)
    for mode in ("resident", "staged"):
        feeder = BatchFeeder(data, "cuda", mode=mode)
        for _ in range(3):  # the staged feeder alternates two pinned buffers
            got = feeder(picks)
            assert got.device.type == "cuda"
            assert torch.equal(got.cpu(), expected), mode
        feeder.release()
    assert BatchFeeder(data, "cuda").mode == "resident"  # a tiny stack fits


@cuda
@pytest.mark.filterwarnings("error:The AccumulateGrad node")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_training_matches_cpu_and_saves_a_cpu_loadable_run(data, tmp_path, precision):
    cpu_model, gpu_model = small_model(), small_model()
    config = core.TrainConfig(epochs=3, lr=3e-3, device="cpu")
    cpu = core.run_training(cpu_model, data, config)
    before = torch.backends.cudnn.benchmark
    gpu_config = core.TrainConfig(epochs=3, lr=3e-3, device="cuda", precision=precision)
    gpu = core.run_training(gpu_model, data, gpu_config)
    assert torch.backends.cudnn.benchmark == before  # restored after the run
    assert gpu.device.startswith("cuda")
    assert next(gpu_model.parameters()).device.type == "cuda"
    # TF32 convolutions (cuDNN's default) or bf16 change the last digits, not the learning
    tolerance = 0.02 if precision == "fp32" else 0.06
    np.testing.assert_allclose(
        [r.val_mse for r in gpu.history], [r.val_mse for r in cpu.history], rtol=tolerance
    )
    core.save_run(tmp_path, gpu_model, data, gpu_config, gpu.train_idx, gpu.val_idx, gpu.history)
    run = core.load_run(tmp_path)  # on the CPU
    assert next(run.model.parameters()).device.type == "cpu"
    x = data.batch([0, 1])
    with torch.inference_mode():
        expected = gpu_model(x.cuda()).cpu()
        np.testing.assert_allclose(run.model(x).numpy(), expected.numpy(), atol=2e-3)


@cuda
def test_cuda_folded_model_matches_plain_conv3d(data):
    folded, plain = small_model().cuda(), small_model().cuda()
    plain.fold_depth = False
    x = data.batch([0, 1, 2]).cuda()
    for model in (folded, plain):
        (model(x) - x).pow(2).mean().backward()
    with torch.no_grad():
        assert torch.allclose(folded(x), plain(x), atol=1e-3)
    for a, b in zip(folded.parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-3, rtol=1e-2)


@cuda
def test_cuda_window_mse_and_evaluation_match_cpu(data):
    model = small_model().eval()
    indices = list(range(len(data)))
    on_cpu = core.window_mse(model, data, indices)
    on_gpu = core.window_mse(model.cuda(), data, indices)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-2)


@cuda
def test_cuda_resume_continues_a_run(data, tmp_path):
    config = core.TrainConfig(epochs=2, device="cuda")
    first = small_model()
    stopped = core.train(first, data, config, checkpoint_dir=tmp_path)
    next(stopped)  # epoch 1 written to last.pt
    stopped.close()
    resumed = core.run_training(small_model(), data, config, checkpoint_dir=tmp_path, resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2]
    assert all(np.isfinite(r.val_mse) for r in resumed.history)


# -- the training step (CUDA graphs) -------------------------------------------------------------


def test_training_step_off_cuda_is_the_plain_step(data):
    from napari_electrode_cae.core.kernels.train_step import TrainingStep

    a, b = small_model(), small_model()
    opt_a, opt_b = (core.training.make_optimiser(m, 1e-3) for m in (a, b))
    step = TrainingStep(a, opt_a, torch.device("cpu"), "fp32", 2, use_graph=True)
    assert not step.use_graph  # graphs only on CUDA
    for picks in ([0, 1], [2, 3], [4]):
        x = data.batch(picks)
        loss = step(x)
        opt_b.zero_grad(set_to_none=True)
        expected = torch.nn.functional.mse_loss(b(x), x)
        expected.backward()
        opt_b.step()
        assert torch.equal(loss, expected.detach())
    assert not step.replaying
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@cuda
@pytest.mark.filterwarnings("error:The AccumulateGrad node")  # no autograd graph kept alive
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_matches_eager_steps(data, precision, monkeypatch):
    from napari_electrode_cae.core.kernels import train_step

    histories, weights = {}, {}
    for use_graph in (False, True):
        monkeypatch.setattr(train_step, "USE_CUDA_GRAPHS", use_graph)
        model = small_model()
        # 5 training windows in batches of 2: every epoch ends with an eager batch of 1
        config = core.TrainConfig(
            epochs=4, batch_size=2, lr=3e-3, device="cuda", precision=precision, val_fraction=0.4
        )
        reports = list(core.train(model, data, config, yield_batches=True))
        histories[use_graph] = [r for r in reports if isinstance(r, core.EpochReport)]
        batch_losses = [r.loss for r in reports if isinstance(r, core.BatchReport)]
        assert all(np.isfinite(batch_losses))
        weights[use_graph] = [p.detach().cpu() for p in model.parameters()]
    np.testing.assert_allclose(
        [r.train_mse for r in histories[True]], [r.train_mse for r in histories[False]], rtol=1e-3
    )
    np.testing.assert_allclose(
        [r.val_mse for r in histories[True]], [r.val_mse for r in histories[False]], rtol=1e-3
    )
    for graphed, eager in zip(weights[True], weights[False]):
        assert torch.allclose(graphed, eager, atol=1e-3)


@cuda
def test_cuda_graph_is_recorded_and_replayed(data):
    from napari_electrode_cae.core.kernels.train_step import WARMUP_STEPS, TrainingStep

    model = small_model().cuda()
    optimiser = core.training.make_optimiser(model, 1e-3)
    step = TrainingStep(model, optimiser, torch.device("cuda"), "fp32", 2)
    losses = []
    for i in range(WARMUP_STEPS + 3):
        losses.append(step(data.batch([i % 4, (i + 1) % 4]).cuda()))
    assert step.replaying and step.graph_error is None
    # each returned loss is its own tensor: later replays do not overwrite earlier losses
    assert len({float(v) for v in losses}) > 1
    before = [p.detach().clone() for p in model.parameters()]
    step(data.batch([0, 1]).cuda())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# -- review fixes: devices without float64/autocast, read-only stacks, graph fallbacks ------


def test_bf16_is_refused_where_it_cannot_run():
    from napari_electrode_cae.core.training import check_precision

    check_precision("bf16", torch.device("cpu"))  # fine
    check_precision("fp32", torch.device("mps"))  # fp32 runs anywhere
    with pytest.raises(core.TrainConfigError, match="not on mps; use precision fp32"):
        check_precision("bf16", torch.device("mps"))


def test_folded_convolutions_run_on_devices_without_autocast():
    """Autocast is only asked about on the CPU and CUDA (torch 2.4 raises for other device
    types, e.g. MPS); the meta device stands in for them here."""
    with torch.device("meta"):
        model = core.ConvAutoEncoder3d(4, 32, 3, 16, 4)
        y = model(torch.zeros(2, 1, 4, 32, 32))
    assert y.shape == (2, 1, 4, 32, 32) and y.device.type == "meta"


def test_resident_feeder_reads_a_read_only_memory_mapped_stack_quietly(tmp_path):
    import warnings

    path = tmp_path / "stack.npy"
    np.save(path, make_stack((12, 32, 32)).labels)
    labels = np.load(path, mmap_mode="r")
    assert not labels.flags.writeable
    data = core.WindowDataset([core.ElectrodeStack(labels)], core.WindowSpec(4, 2, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feeder = BatchFeeder(data, "cpu", mode="resident")
    assert torch.equal(feeder([0, 2]), data.batch([0, 2]))


@cuda
def test_cuda_training_goes_on_eagerly_when_recording_fails(data, monkeypatch):
    from napari_electrode_cae.core.kernels import train_step

    def broken_record(self, x):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(train_step.TrainingStep, "_record", broken_record)
    steps = []
    real_init = train_step.TrainingStep.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        steps.append(self)

    monkeypatch.setattr(train_step.TrainingStep, "__init__", keep)
    result = core.run_training(
        small_model(), data, core.TrainConfig(epochs=4, device="cuda", val_fraction=0.4)
    )
    assert len(result.history) == 4 and all(np.isfinite(r.val_mse) for r in result.history)
    assert steps[0].graph is None and "not permitted" in steps[0].graph_error
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


@cuda
def test_cuda_graph_is_skipped_when_a_step_takes_much_of_the_gpu(data, monkeypatch):
    from napari_electrode_cae.core.kernels import train_step

    monkeypatch.setattr(train_step, "GRAPH_MEMORY_FRACTION", 0.0)
    model = small_model().cuda()
    step = train_step.TrainingStep(
        model, core.training.make_optimiser(model, 1e-3), torch.device("cuda"), "fp32", 2
    )
    for i in range(train_step.WARMUP_STEPS + 2):
        assert torch.isfinite(step(data.batch([i % 4, (i + 1) % 4]).cuda()))
    assert not step.replaying and "peaked at" in step.graph_error


@cuda
def test_cuda_tortuosity_solver_matches_the_scipy_solver():
    from napari_electrode_cae.core.physics import tortuosity

    from .test_physics import blob, staircase

    labels = blob(7, 0.40, 2.0, 0.12)
    assert tortuosity(labels, "pore", 2, device="cuda") == pytest.approx(3.047942399, rel=2e-5)
    assert tortuosity(labels, "pore", 2, device="auto") == pytest.approx(3.047942399, rel=2e-5)
    assert tortuosity(staircase(), device="cuda") == pytest.approx((7 / 4) ** 2, rel=1e-9)
