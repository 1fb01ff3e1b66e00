"""DataLoader.state_dict() / load_state_dict(): a resumed loader yields exactly
the batches the uninterrupted run would have yielded next."""

import io
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
from torch.utils.data import DistributedSampler as TorchDistributedSampler

import ffrecord.torch as fft

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402

N = 53


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = records.write_dataset(tmp_path_factory.mktemp("resume") / "data.ffr", N)
    return fft.RecordDataset(path, decode=records.index_tensor)


def run_epoch(loader):
    return [b.tolist() for b in loader]


def roundtrip(state):
    """Through torch.save / torch.load, as a checkpoint would carry it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def check_resume_at(make_loader, stop_points, epochs_before=0):
    """For each stop point k: run k batches, save, restore into a fresh loader
    and compare what it yields with the uninterrupted epoch."""
    ref = make_loader()
    for _ in range(epochs_before):
        run_epoch(ref)
    full = run_epoch(ref)
    for k in stop_points:
        loader = make_loader()
        for _ in range(epochs_before):
            run_epoch(loader)
        it = iter(loader)
        head = [next(it).tolist() for _ in range(k)]
        state = roundtrip(loader.state_dict())
        assert state["batches"] == k
        assert state["samples"] == sum(len(b) for b in head)
        tail_same_process = [b.tolist() for b in it]
        del it
        fresh = make_loader()
        fresh.load_state_dict(state)
        assert len(fresh) == len(full) - k
        tail = run_epoch(fresh)
        assert head + tail == full, f"resume after {k} batches differs"
        assert tail == tail_same_process
    return full


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size,drop_last", [(4, False), (5, True)])
def test_resume_with_shuffle_equals_uninterrupted(dataset, num_workers, batch_size, drop_last):
    def make():
        return fft.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              drop_last=drop_last, seed=1234)

    full = check_resume_at(make, [1, 3, 7, 10], epochs_before=1)
    flat = [i for b in full for i in b]
    assert len(flat) == len(set(flat)) == (N // batch_size * batch_size if drop_last else N)


def test_resume_persistent_workers_and_prefetch_do_not_count(dataset):
    # Workers fetched far ahead when the state is taken: only handed-out batches count.
    def make():
        return fft.DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2, seed=7,
                              persistent_workers=True, prefetch_factor=4)

    check_resume_at(make, [2, 9])


def test_auto_epoch_advances_and_survives_resume(dataset):
    def make():
        return fft.DataLoader(dataset, batch_size=6, shuffle=True, seed=3)

    ref = make()
    epochs = [run_epoch(ref) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    loader = make()
    run_epoch(loader)
    it = iter(loader)
    next(it)
    next(it)
    state = loader.state_dict()
    assert state["epoch"] == 1
    fresh = make()
    fresh.load_state_dict(state)
    assert epochs[1][2:] == run_epoch(fresh)
    assert epochs[2] == run_epoch(fresh)  # and the following epoch is the next one


def test_finished_and_unstarted_states(dataset):
    def make():
        return fft.DataLoader(dataset, batch_size=10, shuffle=True, seed=3)

    ref = make()
    e0, e1 = run_epoch(ref), run_epoch(ref)
    loader = make()
    assert loader.state_dict()["started"] is False
    run_epoch(loader)
    state = loader.state_dict()
    assert state["finished"] is True
    fresh = make()
    fresh.load_state_dict(state)
    assert run_epoch(fresh) == e1
    # A state taken before the first iteration starts at the beginning.
    fresh = make()
    fresh.load_state_dict(make().state_dict())
    assert run_epoch(fresh) == e0


def test_state_right_after_the_last_batch(dataset):
    def make():
        return fft.DataLoader(dataset, batch_size=10, shuffle=True, seed=3)

    ref = make()
    run_epoch(ref)
    e1 = run_epoch(ref)
    loader = make()
    it = iter(loader)
    for _ in range(6):
        next(it)
    state = loader.state_dict()  # all 6 consumed, StopIteration not seen yet
    assert not state["finished"] and state["batches"] == 6
    fresh = make()
    fresh.load_state_dict(state)
    assert run_epoch(fresh) == []
    assert run_epoch(fresh) == e1


def test_state_of_a_loaded_loader_before_iterating(dataset):
    def make():
        return fft.DataLoader(dataset, batch_size=4, shuffle=True, seed=3)

    ref = make()
    full = run_epoch(ref)
    loader = make()
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    relay = make()
    relay.load_state_dict(state)
    again = relay.state_dict()  # saved again at once, e.g. a checkpoint right after resuming
    assert again["batches"] == 4 and again["samples"] == 16
    fresh = make()
    fresh.load_state_dict(again)
    assert run_epoch(fresh) == full[4:]


@pytest.mark.parametrize("kind", ["random_generator", "random_global", "sequential", "batch_sampler"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_torch_samplers(dataset, kind, num_workers):
    def make():
        if kind == "random_generator":
            gen = torch.Generator().manual_seed(99)
            return fft.DataLoader(dataset, batch_size=4, sampler=RandomSampler(dataset, generator=gen),
                                  num_workers=num_workers)
        if kind == "random_global":
            return fft.DataLoader(dataset, batch_size=4, sampler=RandomSampler(dataset), num_workers=num_workers)
        if kind == "sequential":
            return fft.DataLoader(dataset, batch_size=4, sampler=SequentialSampler(dataset), num_workers=num_workers)
        gen = torch.Generator().manual_seed(5)
        bs = BatchSampler(RandomSampler(dataset, generator=gen), batch_size=6, drop_last=False)
        return fft.DataLoader(dataset, batch_sampler=bs, num_workers=num_workers)

    torch.manual_seed(0)
    ref = make()
    run_epoch(ref)  # the generator / global RNG moves on between epochs
    full = run_epoch(ref)
    following = run_epoch(ref)
    torch.manual_seed(0)
    loader = make()
    run_epoch(loader)
    it = iter(loader)
    head = [next(it).tolist() for _ in range(5)]
    state = roundtrip(loader.state_dict())
    del it
    torch.manual_seed(12345)  # the resumed process's RNG is somewhere else
    fresh = make()
    fresh.load_state_dict(state)
    assert head + run_epoch(fresh) == full
    if kind != "random_global":  # a sampler's own generator also gives the next epochs back
        assert run_epoch(fresh) == following


def test_resume_with_torch_distributed_sampler(dataset):
    def make(rank):
        s = TorchDistributedSampler(dataset, num_replicas=2, rank=rank, seed=4)
        return fft.DataLoader(dataset, batch_size=4, sampler=s), s

    for rank in range(2):
        ref, s = make(rank)
        s.set_epoch(3)
        full = run_epoch(ref)
        loader, s = make(rank)
        s.set_epoch(3)
        it = iter(loader)
        head = [next(it).tolist() for _ in range(2)]
        state = loader.state_dict()
        assert (state["epoch"], state["world_size"], state["rank"]) == (3, 2, rank)
        fresh, s = make(rank)
        fresh.load_state_dict(state)
        s.set_epoch(3)  # the training loop sets the epoch again: the resume stays
        assert head + run_epoch(fresh) == full
        # Elastic resume needs ffrecord's sampler.
        other = fft.DataLoader(dataset, batch_size=4,
                               sampler=TorchDistributedSampler(dataset, num_replicas=3, rank=0))
        with pytest.raises(ValueError, match="elastic"):
            other.load_state_dict(state)


def test_set_epoch_to_another_epoch_drops_the_resume(dataset):
    s = fft.DistributedSampler(dataset, num_replicas=1, rank=0, seed=2)
    loader = fft.DataLoader(dataset, batch_size=5, sampler=s)
    s.set_epoch(4)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    s2 = fft.DistributedSampler(dataset, num_replicas=1, rank=0, seed=2)
    fresh = fft.DataLoader(dataset, batch_size=5, sampler=s2)
    fresh.load_state_dict(state)
    fresh.set_epoch(5)
    ref_s = fft.DistributedSampler(dataset, num_replicas=1, rank=0, seed=2)
    ref_s.set_epoch(5)
    assert run_epoch(fresh) == run_epoch(fft.DataLoader(dataset, batch_size=5, sampler=ref_s))


def test_load_state_errors(dataset, tmp_path):
    loader = fft.DataLoader(dataset, batch_size=4, shuffle=True, seed=1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="not a state"):
        loader.load_state_dict({"format": "x"})
    with pytest.raises(ValueError, match="version"):
        loader.load_state_dict(dict(state, version=99))
    other = fft.RecordDataset(records.write_dataset(tmp_path / "o.ffr", 10))
    with pytest.raises(ValueError, match="53 samples, this one has 10"):
        fft.DataLoader(other, batch_size=4, shuffle=True).load_state_dict(state)
    plain = fft.DataLoader(dataset, batch_size=4, sampler=SequentialSampler(dataset))
    with pytest.raises(ValueError, match="DistributedSampler"):
        fft.DataLoader(dataset, batch_size=4, shuffle=True).load_state_dict(
            dict(state, sampler=None))
    it = iter(plain)
    next(it)
    seq_state = plain.state_dict()
    with pytest.raises(ValueError, match="without ffrecord"):
        fft.DataLoader(dataset, batch_size=4, shuffle=True).load_state_dict(seq_state)
    with pytest.raises(ValueError, match="seed"):
        fft.DataLoader(dataset, batch_size=4, shuffle=True, seed=2).load_state_dict(state)


def test_iterable_datasets_load_but_do_not_claim_resume():
    class Counting(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(10))

    loader = fft.DataLoader(Counting(), batch_size=3, num_workers=1)
    assert [b.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    with pytest.raises(TypeError, match="map-style"):
        loader.state_dict()
    with pytest.raises(TypeError, match="map-style"):
        loader.load_state_dict({})


@settings(max_examples=40, deadline=None)
@given(batch_size=st.integers(1, 20), drop_last=st.booleans(), shuffle=st.booleans(),
       epochs_before=st.integers(0, 2), stop=st.integers(0, 60), seed=st.integers(0, 2**62))
def test_property_resume_equals_uninterrupted(dataset, batch_size, drop_last, shuffle, epochs_before, stop, seed):
    def make():
        kw = dict(seed=seed) if shuffle else {}
        return fft.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **kw)

    ref = make()
    for _ in range(epochs_before):
        run_epoch(ref)
    full, following = run_epoch(ref), run_epoch(ref)
    loader = make()
    for _ in range(epochs_before):
        run_epoch(loader)
    it = iter(loader)
    head = [b.tolist() for _, b in zip(range(min(stop, len(full))), it)]
    fresh = make()
    fresh.load_state_dict(roundtrip(loader.state_dict()))
    assert head + run_epoch(fresh) == full
    assert run_epoch(fresh) == following


@pytest.mark.parametrize("sampler", ["ffrecord", "torch_random"])
def test_state_through_ffrecord_checkpoint(dataset, tmp_path, sampler):
    from ffrecord import checkpoint

    def make():
        if sampler == "ffrecord":
            return fft.DataLoader(dataset, batch_size=4, shuffle=True, seed=8)
        return fft.DataLoader(dataset, batch_size=4, sampler=RandomSampler(dataset))

    torch.manual_seed(1)
    loader = make()
    it = iter(loader)
    for _ in range(3):
        next(it)
    checkpoint.save({"loader": loader.state_dict(), "step": 3}, str(tmp_path / "ckpt"))
    rest = [b.tolist() for b in it]
    fresh = make()
    fresh.load_state_dict(checkpoint.load(str(tmp_path / "ckpt"))["loader"])
    assert run_epoch(fresh) == rest
