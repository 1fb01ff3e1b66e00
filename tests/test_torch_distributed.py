"""A real two-process torchrun (gloo, CPU): disjoint, complete, deterministic
shares of a global shuffle, exact resume, and elastic resume 2 -> 1 and 2 -> 3."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ffrecord.torch import DataLoader, DistributedSampler, RecordDataset
from ffrecord.torch.sampler import epoch_order

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "torch_scripts"))
import records  # noqa: E402

N = 90
SEED = 17  # as in torch_scripts/dist_run.py


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    data = records.write_dataset(base / "data.ffr", N)
    out = base / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        os.path.join(HERE, "torch_scripts", "dist_run.py"), data, str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    states = [torch.load(out / f"state_rank{r}.pt", weights_only=False) for r in range(2)]
    return data, results, states


def test_shares_are_disjoint_complete_and_a_global_shuffle(torchrun):
    _, (r0, r1), _ = torchrun
    assert (r0["world"], r1["world"]) == (2, 2)
    for key in ("epoch0", "epoch1", "torch_sampler"):
        a, b = r0[key], r1[key]
        assert not set(a) & set(b), key
        assert sorted(a + b) == list(range(N)), key
    # Each rank holds its strided share of the one global order of the epoch.
    for epoch in (0, 1):
        order = epoch_order(N, SEED, epoch).tolist()
        assert r0[f"epoch{epoch}"] == order[0::2]
        assert r1[f"epoch{epoch}"] == order[1::2]
    assert r0["gathered_epoch0"] == [r0["epoch0"], r1["epoch0"]]


def test_deterministic_per_epoch(torchrun):
    _, results, _ = torchrun
    for r in results:
        assert r["epoch0"] == r["epoch0_again"]
        assert r["epoch0"] != r["epoch1"]


def test_resume_in_torchrun_equals_uninterrupted(torchrun):
    _, results, states = torchrun
    for r, state in zip(results, states):
        assert r["epoch1_head"] + r["epoch1_tail"] == r["epoch1"]
        assert r["epoch1_resumed_tail"] == r["epoch1_tail"]
        assert state["batches"] == 3 and state["world_size"] == 2 and state["rank"] == r["rank"]


def resume_on(data, states, world):
    """Loaders of a new job with ``world`` ranks (simulated in this process),
    each loading the old job's states; returns what each new rank delivers."""
    ds = RecordDataset(data, decode=records.index_tensor)
    out = []
    for rank in range(world):
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, seed=SEED, pad=False)
        loader = DataLoader(ds, batch_size=4, sampler=sampler)
        loader.load_state_dict(states)
        sampler.set_epoch(1)
        out.append([i for b in loader for i in b.tolist()])
    return out


@pytest.mark.parametrize("new_world", [1, 3])
@pytest.mark.parametrize("use_all_states", [True, False])
def test_elastic_resume_exactly_once(torchrun, new_world, use_all_states):
    data, results, states = torchrun
    consumed = [i for r in results for i in r["epoch1_head"]]
    assert len(consumed) == 2 * 3 * 4
    # Every new rank loads the list of old states, or (lock-step) rank 0's alone.
    after = resume_on(data, states if use_all_states else states[0], new_world)
    delivered = [i for share in after for i in share]
    assert len(delivered) == len(set(delivered))
    assert not set(delivered) & set(consumed)
    assert sorted(consumed + delivered) == list(range(N))
    assert max(map(len, after)) - min(map(len, after)) <= 1


def test_elastic_resume_can_be_saved_and_resumed_again(torchrun):
    """2 ranks -> 3 ranks (each consumes 2 batches) -> 1 rank: still exactly once."""
    data, results, states = torchrun
    ds = RecordDataset(data, decode=records.index_tensor)
    consumed = [i for r in results for i in r["epoch1_head"]]
    middle_states = []
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, seed=SEED, pad=False)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0)
        loader.load_state_dict(states)
        it = iter(loader)
        consumed += [i for _ in range(2) for i in next(it).tolist()]
        middle_states.append(loader.state_dict())
    final = resume_on(data, middle_states, 1)[0]
    assert len(consumed) == len(set(consumed))
    assert sorted(consumed + final) == list(range(N))
