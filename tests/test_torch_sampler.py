"""ffrecord.torch.DistributedSampler: global shuffle, shares, tails, elastic resume."""

import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrecord.torch import DataLoader, DistributedSampler, RecordDataset
from ffrecord.torch.sampler import epoch_order

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402


def shares(n, world, epoch=0, **kw):
    out = []
    for r in range(world):
        s = DistributedSampler(n, num_replicas=world, rank=r, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_epoch_order_is_a_fixed_permutation():
    a = epoch_order(1000, seed=7, epoch=3)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, epoch_order(1000, seed=7, epoch=3))
    assert not np.array_equal(a, epoch_order(1000, seed=7, epoch=4))
    assert not np.array_equal(a, epoch_order(1000, seed=8, epoch=3))
    # Pinned values: the order must not change with library versions, or a
    # saved run would resume with other samples.
    assert epoch_order(10, seed=0, epoch=0).tolist() == GOLDEN_ORDER
    assert epoch_order(5, seed=1, epoch=0, shuffle=False).tolist() == [0, 1, 2, 3, 4]


GOLDEN_ORDER = [0, 7, 8, 2, 5, 9, 4, 6, 3, 1]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shares_are_disjoint_and_cover_a_global_shuffle(world):
    n = 101
    parts = shares(n, world, epoch=1, pad=False, seed=3)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    # Interleaving the shares gives back the one global order of the epoch.
    order = epoch_order(n, 3, 1).tolist()
    for r, p in enumerate(parts):
        assert p == order[r::world]


def test_set_epoch_reshuffles_deterministically():
    s = DistributedSampler(50, num_replicas=2, rank=1, seed=11)
    e0 = list(s)
    assert list(s) == e0  # without set_epoch, the same order (as in torch)
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and len(e1) == len(e0) == 25
    again = DistributedSampler(50, num_replicas=2, rank=1, seed=11)
    again.set_epoch(1)
    assert list(again) == e1


def test_tail_pad_drop_and_uneven():
    n, world = 10, 4
    padded = shares(n, world)  # the default pads, like torch's sampler
    assert [len(p) for p in padded] == [3, 3, 3, 3]
    flat = [i for p in padded for i in p]
    assert set(flat) == set(range(n)) and len(flat) - len(set(flat)) == 2
    dropped = shares(n, world, drop_last=True)
    assert [len(p) for p in dropped] == [2, 2, 2, 2]
    assert len(set(i for p in dropped for i in p)) == 8
    uneven = shares(n, world, pad=False)
    assert [len(p) for p in uneven] == [3, 3, 2, 2]
    assert sorted(i for p in uneven for i in p) == list(range(n))


def test_layout_from_arguments_environment_and_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    s = DistributedSampler(10)
    assert (s.num_replicas, s.rank) == (3, 2)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    s = DistributedSampler(range(10))
    assert (s.num_replicas, s.rank, len(s)) == (1, 0, 10)
    with pytest.raises(ValueError):
        DistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError):
        DistributedSampler(10, num_replicas=0, rank=0)
    with pytest.raises(TypeError):
        DistributedSampler(10, num_replicas=2, rank="0")
    with pytest.raises(TypeError):
        DistributedSampler(10, seed=1.5)


def test_works_as_sampler_of_torch_dataloader(tmp_path):
    path = records.write_dataset(tmp_path / "d.ffr", 40)
    ds = RecordDataset(path, decode=records.index_tensor)
    got = []
    for r in range(2):
        s = DistributedSampler(ds, num_replicas=2, rank=r, seed=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=6, sampler=s)
        got.append([i for b in loader for i in b.tolist()])
    assert sorted(got[0] + got[1]) == list(range(40))
    assert not set(got[0]) & set(got[1])


# ---- sampler-level resume ----------------------------------------------------

def consume(samplers, counts):
    """Takes the first counts[r] samples of each rank's share; returns them."""
    out = []
    for s, k in zip(samplers, counts):
        out.extend(list(s)[:k])
    return out


def make(n, world, **kw):
    return [DistributedSampler(n, num_replicas=world, rank=r, seed=5, **kw) for r in range(world)]


def test_same_world_resume_continues_each_share():
    n = 60
    old = make(n, 3, pad=False)
    full = [list(s) for s in old]
    states = [s.state_dict(consumed=7) for s in old]
    new = make(n, 3, pad=False)
    for s, state in zip(new, states):
        s.load_state_dict(state)
        assert s.start_offset == 7 and len(s) == 13
    assert [list(s) for s in new] == [f[7:] for f in full]
    # The resume is for one iteration; the next one repeats the epoch from its start.
    assert [list(s) for s in new] == full


@pytest.mark.parametrize("old_world,new_world", [(2, 1), (2, 3), (4, 2), (3, 5), (1, 4)])
def test_elastic_resume_exactly_once(old_world, new_world):
    n = 103
    old = make(n, old_world, pad=False)
    counts = [9 + r for r in range(old_world)]  # ranks need not be in step
    before = consume(old, counts)
    states = [s.state_dict(consumed=k) for s, k in zip(old, counts)]
    new = make(n, new_world, pad=False)
    for s in new:
        s.load_state_dict(states)
    per_rank = [list(s) for s in new]
    after = [i for p in per_rank for i in p]
    assert len(before) + len(after) == n
    assert sorted(before + after) == list(range(n))
    # The rest keeps the global order of the epoch, shared the same strided way.
    order = epoch_order(n, 5, 0).tolist()
    rest = [i for i in order if i not in set(before)]
    for r, p in enumerate(per_rank):
        assert p == rest[r::new_world]


def test_elastic_resume_twice_in_one_epoch():
    n = 200
    gen1 = make(n, 4, pad=False)
    before = consume(gen1, [10] * 4)
    states = [s.state_dict(consumed=10) for s in gen1]
    gen2 = make(n, 3, pad=False)
    for s in gen2:
        s.load_state_dict(states)
    middle = [list(s)[:15] for s in gen2]  # the resumed iteration, 15 consumed per rank
    states2 = [s.state_dict(consumed=15) for s in gen2]
    assert all(len(st["history"]) == 1 for st in states2)
    gen3 = make(n, 5, pad=False)
    for s in gen3:
        s.load_state_dict(states2)
    after = [i for s in gen3 for i in s]
    everything = before + [i for m in middle for i in m] + after
    assert sorted(everything) == list(range(n))


def test_single_state_stands_for_all_ranks_in_lockstep():
    n, batch = 50, 4
    old = make(n, 2, pad=False)  # shares of 25: 6 full batches + 1 of 1
    for s in old:
        list(s)
    # After 7 lock-step batches rank 0 and rank 1 each consumed their 25.
    st = old[0].state_dict(consumed=25, batches=7, batch_size=batch)
    new = make(n, 3, pad=False)
    for s in new:
        s.load_state_dict(st)
    assert [len(s) for s in new] == [0, 0, 0]
    # After 3 batches: 12 each.
    st = old[1].state_dict(consumed=12, batches=3, batch_size=batch)
    new = make(n, 1, pad=False)
    new[0].load_state_dict(st)
    taken = [i for s in old for i in list(s)[:12]]
    assert sorted(list(new[0]) + taken) == list(range(n))


def test_padding_and_dropping_across_elastic_resume():
    n = 30
    old = make(n, 4)  # padded shares of 8 (2 repeats)
    before = consume(old, [3] * 4)
    states = [s.state_dict(consumed=3) for s in old]
    new = make(n, 3, drop_last=True)
    for s in new:
        s.load_state_dict(states)
    after = [i for s in new for i in s]
    assert not set(before) & set(after)  # nothing consumed comes again
    assert len(after) == len(set(after)) == (n - 12) // 3 * 3  # 18 left, none dropped


def test_load_state_errors():
    s = DistributedSampler(20, num_replicas=2, rank=0, seed=1)
    list(s)
    good = s.state_dict(consumed=4)
    with pytest.raises(ValueError, match="samples"):
        DistributedSampler(21, num_replicas=2, rank=0, seed=1).load_state_dict(good)
    with pytest.raises(ValueError, match="seed"):
        DistributedSampler(20, num_replicas=2, rank=0, seed=2).load_state_dict(good)
    with pytest.raises(ValueError, match="not a state"):
        s.load_state_dict({"kind": "other"})
    with pytest.raises(ValueError, match="one per old rank"):
        s.load_state_dict([good, good])
    with pytest.raises(ValueError, match="consumed"):
        s.state_dict(consumed=11)
    bad = dict(good, consumed=99)
    with pytest.raises(ValueError, match="consumed"):
        DistributedSampler(20, num_replicas=3, rank=0, seed=1).load_state_dict(bad)
    other = DistributedSampler(20, num_replicas=2, rank=1, seed=1)
    other.set_epoch(3)
    with pytest.raises(ValueError, match="different epochs"):
        s.load_state_dict([good, other.state_dict()])


def test_set_epoch_keeps_or_drops_a_loaded_resume():
    s = DistributedSampler(20, num_replicas=1, rank=0, seed=1)
    s.set_epoch(2)
    list(s)
    st = s.state_dict(consumed=5)
    t = DistributedSampler(20, num_replicas=1, rank=0, seed=1)
    t.load_state_dict(st)
    t.set_epoch(2)  # the usual loop sets the epoch again: the resume stays
    assert len(t) == 15
    t.set_epoch(3)
    assert len(t) == 20


def test_dataloader_level_elastic_resume_with_lockstep_state(tmp_path):
    path = records.write_dataset(tmp_path / "d.ffr", 64)
    ds = RecordDataset(path, decode=records.index_tensor)

    def loader(world, rank):
        s = DistributedSampler(ds, num_replicas=world, rank=rank, seed=9, pad=False)
        return DataLoader(ds, batch_size=5, sampler=s)

    old = [loader(2, r) for r in range(2)]
    its = [iter(x) for x in old]
    before = [i for it in its for _ in range(3) for i in next(it).tolist()]
    state = old[0].state_dict()  # one rank's state, lock-step assumed
    new = [loader(3, r) for r in range(3)]
    for x in new:
        x.load_state_dict(state)
    after = [i for x in new for b in x for i in b.tolist()]
    assert sorted(before + after) == list(range(64))


# ---- property: any chain of elastic resumes delivers each sample exactly once ----



@st.composite
def resume_chains(draw):
    n = draw(st.integers(0, 120))
    worlds = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    fractions = draw(st.lists(st.floats(0, 1), min_size=len(worlds) * 6, max_size=len(worlds) * 6))
    return n, worlds, fractions, draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 50))


@settings(max_examples=60, deadline=None)
@given(resume_chains())
def test_property_elastic_chain_exactly_once(chain):
    n, worlds, fractions, seed, epoch = chain
    consumed = []
    states = None
    fr = iter(fractions)
    for g, world in enumerate(worlds):
        samplers = [DistributedSampler(n, num_replicas=world, rank=r, seed=seed, pad=False) for r in range(world)]
        for s in samplers:
            s.set_epoch(epoch)
            if states is not None:
                s.load_state_dict(states)
        last = g == len(worlds) - 1
        new_states = []
        for s in samplers:
            share = list(s)
            k = len(share) if last else int(next(fr) * len(share))
            consumed.extend(share[:k])
            new_states.append(s.state_dict(consumed=k))
        states = new_states
    assert sorted(consumed) == list(range(n))


def test_state_after_moving_to_a_new_epoch_starts_that_epoch():
    s = DistributedSampler(30, num_replicas=2, rank=0, seed=5, pad=False)
    s.load_state_dict(make(30, 3, pad=False)[0].state_dict(consumed=2))  # elastic: one closed generation
    assert s.state_dict()["history"] != []
    list(s)
    s.set_epoch(1)
    state = s.state_dict()
    assert state["epoch"] == 1 and state["history"] == [] and state["consumed"] == 0
