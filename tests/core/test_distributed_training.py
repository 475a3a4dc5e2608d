"""Data-parallel training (DDP, Gloo on the CPU) against one process at the same effective batch.

Two ranks are spawned with ``torch.multiprocessing`` and join a Gloo group on 127.0.0.1; each
trains on its half of every global batch of 2 × 2 windows. A single process trains with batch 4
from the same seed. The trajectories agree to floating-point reduction order: per epoch the
training and validation MSE within a relative 1e-4 (measured: about 1e-7 after 3 epochs).
"""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_electrode_cae import core
from napari_electrode_cae.core import distributed as ddp
from tests.conftest import make_stack

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch has no torch.distributed"
)

#: Relative agreement of per-epoch MSEs between 2 ranks and 1 process (float reduction order).
RTOL = 1e-4
EPOCHS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setting(norm: str = "none", windows_per_epoch: int = 0, batch: int = 2):
    stacks = [make_stack((20, 16, 16), seed=3)]
    data = core.WindowDataset(stacks, core.WindowSpec(length=4, stride=1, crop=16))
    model_config = core.ModelConfig(4, 16, 3, 16, 4, norm)
    config = core.TrainConfig(
        epochs=EPOCHS,
        batch_size=batch,
        lr=3e-3,
        seed=5,
        split="random",
        device="cpu",
        windows_per_epoch=windows_per_epoch,
    )
    return data, model_config, config


def _train(data, model_config, config, **kwargs):
    core.seed_everything(config.seed)
    model = core.build_model(model_config)
    result = core.training.run_training(model, data, config, **kwargs)
    return model, result


def _rank_main(rank: int, port: int, out: str) -> None:
    """One rank: the three distributed trainings the tests below look at, in one process group
    (spawning ranks costs more than these tiny trainings)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    results = {}
    with ddp.distributed_session("cpu") as context:
        for name, windows, resume_from in (("plain", 0, 0), ("short", 11, 0), ("resumed", 0, 1)):
            data, model_config, config = _setting(windows_per_epoch=windows)
            ckpt = os.path.join(out, "run") if name == "resumed" else None
            if resume_from:  # a first run cut short, then resumed in the same folder
                short = core.TrainConfig(**{**config.to_dict(), "epochs": resume_from})
                _train(data, model_config, short, checkpoint_dir=ckpt, distributed=context)
            model, result = _train(
                data,
                model_config,
                config,
                distributed=context,
                checkpoint_dir=ckpt,
                resume=bool(resume_from),
            )
            results[name] = {
                "history": [(r.train_mse, r.val_mse) for r in result.history],
                "state": model.state_dict(),
                "best": result.best_epoch,
            }
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of two Gloo ranks on 127.0.0.1 trained (see :func:`_rank_main`)."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "run").mkdir()
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=2, join=True)
    saved = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return saved, out / "run"


def _single(windows=0):
    data, model_config, config = _setting(windows_per_epoch=windows, batch=4)  # 2 ranks x 2
    return _train(data, model_config, config)


def _assert_close_trajectories(ranks, name, result):
    single = [(r.train_mse, r.val_mse) for r in result.history]
    assert len(single) == EPOCHS
    for saved in ranks:
        ranked = np.asarray(saved[name]["history"])
        worst = float(np.max(np.abs(ranked / np.asarray(single) - 1)))
        print(f"{name}: largest relative difference of a per-epoch MSE {worst:.2e}")
        assert worst <= RTOL, (ranked, single)


def test_two_ranks_follow_the_single_process_trajectory_at_the_same_effective_batch(ranks):
    saved, _run = ranks
    model, result = _single()
    _assert_close_trajectories(saved, "plain", result)
    # every rank ends with the same weights, and they are the single process's
    for key, value in model.state_dict().items():
        assert torch.equal(saved[0]["plain"]["state"][key], saved[1]["plain"]["state"][key])
        assert torch.allclose(saved[0]["plain"]["state"][key], value, rtol=1e-3, atol=1e-5)
    assert saved[0]["plain"]["best"] == saved[1]["plain"]["best"] == result.best_epoch
    # and the loss fell: the ranks did train
    history = saved[0]["plain"]["history"]
    assert history[-1][0] < history[0][0]


def test_a_short_last_batch_is_weighted_so_the_average_gradient_matches(ranks):
    # 11 windows per epoch: two global batches of 4 and a last one of 3 (ranks get 2 and 1)
    _model, result = _single(windows=11)
    _assert_close_trajectories(ranks[0], "short", result)
    # not the same as the plain run: the weighting is what makes it match
    assert not np.allclose(ranks[0][0]["short"]["history"], ranks[0][0]["plain"]["history"])


def test_rank_zero_alone_writes_checkpoints_and_a_resumed_run_matches_an_unbroken_one(ranks):
    saved, run = ranks
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt"]
    assert core.checkpoint.load_training_state(run / "last.pt")["epoch"] == EPOCHS
    _model, result = _single()
    _assert_close_trajectories(saved, "resumed", result)


def test_windows_are_shared_contiguously_and_a_remainder_too_small_to_share_is_dropped():
    order = np.arange(7)
    parts = [ddp.shard(order, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), order)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert ddp.loss_weight(3, 7, 3) == pytest.approx(9 / 7)
    assert ddp.loss_weight(2, 4, 2) == 1.0
    # 2 ranks x batch 2: 9 windows leave one for the last batch, one rank would get none
    assert ddp.epoch_windows(9, 2, 2) == 8
    assert ddp.epoch_windows(10, 2, 2) == 10
    # batch norm needs two windows on every rank
    assert ddp.epoch_windows(11, 2, 2, min_per_rank=2) == 8
    config = core.TrainConfig(batch_size=2)
    assert core.training.windows_per_epoch(9, config, "none", 2) == 8


def test_torchrun_environment_is_read_and_a_bad_one_is_one_clear_error():
    assert ddp.environment_ranks({}) is None
    assert ddp.environment_ranks({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 1, 4)
    assert ddp.setup("cpu", environ={"WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(ddp.DistributedError, match="whole numbers"):
        ddp.environment_ranks({"WORLD_SIZE": "two"})
    with pytest.raises(ddp.DistributedError, match="does not fit world size"):
        ddp.environment_ranks({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ddp.DistributedError, match="MPS"):
        ddp.choose_backend("mps")
    assert ddp.choose_backend("cpu") == "gloo"
    assert issubclass(ddp.PeerLostError, core.errors.ElectrodeCAEError)


def test_too_few_training_windows_for_the_ranks_is_a_config_error():
    data, model_config, config = _setting()
    context = ddp.DistributedContext(0, 64, 0, "gloo", torch.device("cpu"))
    model = core.build_model(model_config)
    with pytest.raises(core.errors.TrainConfigError, match="cannot be shared by 64 ranks"):
        next(core.train(model, data, config, distributed=context))
    assert math.isfinite(float(next(model.parameters()).detach().sum()))


def test_a_plain_run_records_world_size_one_and_its_batch_as_the_effective_batch(tmp_path):
    import json

    data, model_config, config = _setting()
    model = core.build_model(model_config)
    train_idx, val_idx = core.split(data, config.val_fraction, config.seed, config.split)
    core.save_run(tmp_path / "run", model, data, config, train_idx, val_idx, latents=False)
    record = json.loads((tmp_path / "run" / "config.json").read_text())["distributed"]
    assert record == {"world_size": 1, "batch_per_rank": 2, "effective_batch": 2}
    context = ddp.DistributedContext(0, 3, 0, "gloo", torch.device("cpu"))
    core.save_run(
        tmp_path / "ddp",
        model,
        data,
        config,
        train_idx,
        val_idx,
        latents=False,
        distributed=context.describe(),
    )
    record = json.loads((tmp_path / "ddp" / "config.json").read_text())["distributed"]
    assert record == {
        "world_size": 3,
        "backend": "gloo",
        "device": "cpu",
        "batch_per_rank": 2,
        "effective_batch": 6,
    }
    assert core.load_run(tmp_path / "ddp").train_config.batch_size == 2


def test_a_lost_peer_is_a_peer_lost_error_and_other_errors_pass_unchanged():
    context = ddp.DistributedContext(1, 2, 1, "gloo", torch.device("cpu"))
    with pytest.raises(ddp.PeerLostError, match="rank 1 of 2: another rank stopped"):
        with ddp.peer_guard(context):
            raise RuntimeError(
                "[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:49325: "
                "Connection reset by peer"
            )
    with pytest.raises(torch.OutOfMemoryError):
        with ddp.peer_guard(context):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        with ddp.peer_guard(context):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
