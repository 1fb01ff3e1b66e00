"""Checkpoints on the network filesystem: two nodes load one checkpoint at once, and a
torch.distributed.checkpoint written by 2 ranks, each through its own node, loads
on one rank through the other node."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.api import CheckpointException

import ffrecord.checkpoint as ck
from ffrecord.checkpoint import StorageReader, StorageWriter
from netfs_ranks import Failed, RankPool

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def state():
    g = torch.Generator().manual_seed(5)
    return {"model": {"w": torch.randn(257, 129, generator=g), "b": torch.randn(129, generator=g).half()},
            "step": 1200, "opt": [torch.arange(7), {"lr": 0.1}]}


def assert_state(got):
    want = state()
    assert torch.equal(got["model"]["w"], want["model"]["w"])
    assert got["model"]["b"].dtype == torch.float16 and torch.equal(got["model"]["b"], want["model"]["b"])
    assert got["step"] == 1200 and torch.equal(got["opt"][0], want["opt"][0]) and got["opt"][1] == {"lr": 0.1}


def load_and_check(path):
    assert_state(ck.load(path))
    return "ok"


def test_both_nodes_load_one_checkpoint_at_once(netfs):
    d = netfs.new_dir("ck")
    ck.save(state(), os.path.join(d.a, "ckpt"))
    with RankPool(2) as pool:
        for _ in range(5):
            got = pool.together([(load_and_check, (os.path.join(d.a, "ckpt"),)),
                                 (load_and_check, (os.path.join(d.b, "ckpt"),))])
            assert got == ["ok", "ok"], got
        missing = pool.call(1, load_and_check, os.path.join(d.b, "nothing"))
    assert isinstance(missing, Failed) and "nothing" in missing.message


def rank_state(rank):
    """Each rank owns its own tensors, so each rank writes data files of its own."""
    g = torch.Generator().manual_seed(100 + rank)
    return {f"rank{rank}.w": torch.randn(64, 33, generator=g), f"rank{rank}.i": torch.arange(10 * rank, 10 * rank + 9)}


def save_rank(rank, paths, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        dcp.save(rank_state(rank), storage_writer=StorageWriter(paths[rank]))
    finally:
        dist.destroy_process_group()


def test_dcp_two_ranks_write_through_their_own_nodes_one_loads_through_the_other(netfs):
    d = netfs.new_dir("dcp")
    paths = [os.path.join(d.a, "ckpt"), os.path.join(d.b, "ckpt")]
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(save_rank, args=(paths, os.path.join(tmp, "init")), nprocs=2, join=True,
                           start_method="spawn")
    files = os.listdir(os.path.join(d.backing, "ckpt"))
    assert len([f for f in files if f.startswith("rank")]) >= 2, files  # both ranks wrote

    want = {**rank_state(0), **rank_state(1)}
    got = {k: torch.zeros_like(v) for k, v in want.items()}
    dcp.load(got, storage_reader=StorageReader(os.path.join(d.b, "ckpt")))
    for k, v in want.items():
        assert torch.equal(got[k], v), k

    wrong = {"rank0.w": torch.zeros(3)}  # a shape the checkpoint does not have
    with pytest.raises(CheckpointException) as e:
        dcp.load(wrong, storage_reader=StorageReader(os.path.join(d.a, "ckpt")))
    assert "rank0.w" in str(e.value)
