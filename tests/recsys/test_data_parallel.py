"""Data-parallel training: two processes (gloo, CPU) reach the parameters one process reaches on the same global batch.

The loop shards every batch by rank when it runs in a ``torch.distributed`` process group
(:class:`recsys._loop._DataParallelStep`); each test spawns two processes (a few seconds).
"""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from recsys.data import synthetic
from recsys.embedding import PlainEmbedding
from recsys.models import MF
from recsys.train import TrainConfig, TrainHooks, train_bpr

DATA = synthetic(n_users=120, n_items=90, mean_items_per_user=8.0, seed=0)
#: 61 examples do not split evenly between two processes, and the last batch of an epoch is smaller.
CONFIG = TrainConfig(epochs=4, batch_size=61, lr=5e-3, reg=1e-3, eval_every=1, patience=10, seed=0, threads=1)


def _mf() -> MF:
    return MF(PlainEmbedding(DATA.rows(), 8, std=0.1, seed=0))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One process of the group: train, then train again from the state after epoch 2 (a resume)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        states, seen = {}, []

        def loss(model: MF, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
            seen.append(len(users))  # the examples this process computes
            return model.bpr_loss(users, pos, neg, reg)

        model = _mf()
        result = train_bpr(model, DATA, CONFIG, progress=False, hooks=TrainHooks(
            loss=loss, on_epoch_end=lambda s: states.setdefault(s["epoch"], copy.deepcopy(s))))
        resumed = _mf()
        train_bpr(resumed, DATA, CONFIG, progress=False, hooks=TrainHooks(resume=states[2]))
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/model.safetensors")
            save_file({k: v.contiguous() for k, v in resumed.state_dict().items()}, f"{out}/resumed.safetensors")
            Path(out, "history.json").write_text(json.dumps([h["loss"] for h in result.history]))
        Path(out, f"seen-{rank}.json").write_text(json.dumps(sum(seen)))
        dist.barrier()  # both processes leave the group together (gloo aborts one torn down under the other)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2])
def test_two_processes_reach_one_process_parameters_and_resume(tmp_path: Path, world: int):
    single = _mf()
    history = train_bpr(single, DATA, CONFIG, progress=False).history
    mp.start_processes(_rank, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="spawn")
    parallel, resumed = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "resumed.safetensors")
    moved = max(float((single.state_dict()[k] - _mf().state_dict()[k]).abs().max()) for k in parallel)
    assert moved > 1e-2  # the training did move the weights, so agreeing below means something
    for name, value in single.state_dict().items():
        torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(resumed[name], parallel[name], rtol=1e-4, atol=1e-5)
    seen = [json.loads((tmp_path / f"seen-{rank}.json").read_text()) for rank in range(world)]
    batches = CONFIG.epochs * -(-DATA.train.nnz // CONFIG.batch_size)
    assert sum(seen) == CONFIG.epochs * DATA.train.nnz  # every example computed once, by one process
    assert max(seen) - min(seen) <= batches  # half each (one more for rank 0 where a batch is odd)
    losses = json.loads((tmp_path / "history.json").read_text())
    assert losses == pytest.approx([h["loss"] for h in history], rel=1e-4)  # the epoch's loss over the whole batch
