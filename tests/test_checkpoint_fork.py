"""async_save(staging="fork"): a child process writes a copy-on-write
snapshot of the state; the caller may change its tensors at once."""

import os
import signal

import numpy as np
import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from ffrecord.checkpoint import commit


def make_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(700, 1000, generator=g),  # 2.8 MB
        "t": torch.randn(300, 200, generator=g).t(),  # non-contiguous
        "small": [torch.randn(k, generator=g) for k in range(1, 40)],
        "np": np.arange(1000),
        "step": seed,
    }


def snapshot(state):
    return {
        "w": state["w"].clone(), "t": state["t"].clone(), "small": [t.clone() for t in state["small"]],
        "np": state["np"].copy(), "step": state["step"],
    }


def assert_equal_states(a, b):
    assert a["step"] == b["step"] and np.array_equal(a["np"], b["np"])
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["t"], b["t"])
    assert all(torch.equal(x, y) for x, y in zip(a["small"], b["small"]))


def zombie_children():
    """Our children that exited and were never waited for."""
    me, out = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            out.append(int(pid))
    return out


def test_the_checkpoint_holds_the_state_of_the_call(tmp_path):
    state = make_state(1)
    before = snapshot(state)
    fut = ck.async_save(state, tmp_path / "c", staging="fork")
    assert fut.staged()  # nothing to wait for: the child has its own snapshot
    state["w"].add_(1.0)  # changed at once, while the child may still be writing
    state["t"].zero_()
    state["small"][0].fill_(7.0)
    state["np"][:] = -1
    assert fut.result(timeout=120) == str(tmp_path / "c")
    assert_equal_states(ck.load(tmp_path / "c"), before)
    assert zombie_children() == []


def test_a_killed_child_leaves_the_previous_checkpoint(tmp_path):
    ck.save({"v": 1}, tmp_path / "c")
    parent = os.getpid()

    def die(name):  # runs in the child only: the parent writes nothing itself
        if name == "record-written" and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    commit._sync_hook = die
    try:
        fut = ck.async_save(make_state(2), tmp_path / "c", staging="fork")
        with pytest.raises(ffrecord.FFRecordError, match="killed by SIGKILL"):
            fut.result(timeout=120)
    finally:
        commit._sync_hook = None
    assert ck.load(tmp_path / "c") == {"v": 1}
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []  # no temporary directory left
    assert zombie_children() == []
    ck.async_save({"v": 2}, tmp_path / "c", staging="fork").result(timeout=120)  # the next save works
    assert ck.load(tmp_path / "c") == {"v": 2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_outside_host_memory_are_refused(tmp_path):
    state = {"cpu": torch.ones(3), "elsewhere": torch.ones(4, device="cuda")}
    with pytest.raises(ValueError, match=r"\['elsewhere'\].*blocking"):
        ck.async_save(state, tmp_path / "c", staging="fork")
    assert os.listdir(tmp_path) == []  # nothing was started


def test_overlapping_fork_saves_are_serialised(tmp_path):
    states = [make_state(k) for k in range(3)]
    futures = [ck.async_save(s, tmp_path / f"c{k % 2}", staging="fork") for k, s in enumerate(states)]
    for f in futures:
        f.result(timeout=120)
    assert_equal_states(ck.load(tmp_path / "c0"), states[2])
    assert_equal_states(ck.load(tmp_path / "c1"), states[1])
    assert zombie_children() == []
