"""Runs torch.distributed.checkpoint with ffrecord's backends on several gloo ranks.

    dcp_ranks.py save WORLD PATH ASYNC_PATH
        each rank holds DTensor shards (row- and column-sharded, uneven) plus a
        replicated tensor and plain values; saves with dcp.save to PATH and
        with dcp.async_save to ASYNC_PATH.
    dcp_ranks.py load WORLD PATH [BAD_PATH EXPECTED_ERROR]
        loads PATH into DTensors sharded differently from how they were saved
        and checks every rank's shard against the global values; then, if
        given, loading BAD_PATH must fail with EXPECTED_ERROR in the message.

Prints "OK" when every rank passed.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import Shard, distribute_tensor  # noqa: E402

from ffrecord.checkpoint import StorageReader, StorageWriter  # noqa: E402


def global_state():
    """The full values every rank agrees on."""
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "w": torch.randn(37, 16, generator=g),  # 37 rows: uneven shards
            "b": torch.randn(16, generator=g).to(torch.bfloat16),
            "col": torch.randn(8, 10, generator=g),
        },
        "rep": torch.arange(10, dtype=torch.int64),
        "step": 42,
        "cfg": {"lr": 0.5, "name": "run-1"},
    }


SAVE_PLACEMENT = {"w": Shard(0), "b": Shard(0), "col": Shard(1)}
LOAD_PLACEMENT = {"w": Shard(1), "b": Shard(0), "col": Shard(0)}  # resharded on load


def sharded(full, mesh, placements, zero=False):
    out = dict(full)
    out["model"] = {
        k: distribute_tensor(torch.zeros_like(v) if zero else v, mesh, [placements[k]]) for k, v in full["model"].items()
    }
    if zero:
        out.update(rep=torch.zeros(10, dtype=torch.int64), step=0, cfg={"lr": 0.0, "name": ""})
    return out


def run(rank, world, init_file, mode, args):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = global_state()
        if mode == "save":
            path, async_path = args
            dcp.save(sharded(full, mesh, SAVE_PLACEMENT), storage_writer=StorageWriter(path))
            fut = dcp.async_save(sharded(full, mesh, SAVE_PLACEMENT), storage_writer=StorageWriter(async_path))
            fut.result()
        else:
            state = sharded(full, mesh, LOAD_PLACEMENT, zero=True)
            dcp.load(state, storage_reader=StorageReader(args[0]))
            for k, v in full["model"].items():
                expect = distribute_tensor(v, mesh, [LOAD_PLACEMENT[k]]).to_local()
                got = state["model"][k].to_local()
                assert got.dtype == expect.dtype and torch.equal(got, expect), (rank, k)
            assert torch.equal(state["rep"], full["rep"])
            assert state["step"] == 42 and state["cfg"] == full["cfg"], (state["step"], state["cfg"])
            if len(args) > 1:
                bad_path, expected_error = args[1], args[2]
                try:
                    dcp.load(sharded(full, mesh, LOAD_PLACEMENT, zero=True), storage_reader=StorageReader(bad_path))
                except CheckpointException as e:  # DCP's collective error (a BaseException)
                    assert expected_error in str(e), str(e)
                else:
                    raise AssertionError(f"rank {rank}: loading {bad_path} succeeded, expected {expected_error!r}")
    finally:
        dist.destroy_process_group()
    # A passing rank leaves without interpreter shutdown: the device mesh keeps
    # the gloo process group alive until then, and a gloo worker thread that
    # frees a finished collective's tensors while the interpreter finalizes
    # aborts the process (seen as SIGABRT in about one load in ten).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv):
    mode, world, args = argv[0], int(argv[1]), argv[2:]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(run, args=(world, os.path.join(d, "init"), mode, args), nprocs=world, join=True)
    print("OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
