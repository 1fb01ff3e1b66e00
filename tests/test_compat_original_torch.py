"""The original FFRecord package's torch interface: ReaderRegistry and
ffreaders(), ``ds1 + ds2``, DataLoader(skippable=...), and shuffling with a
user's generator in torch's own order (docs/MIGRATING.md)."""

import os
import sys

import pytest
import torch
from torch.utils.data import DataLoader as TorchDataLoader

import ffrecord
import ffrecord.torch as fft

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402

N = 40


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return records.write_dataset(tmp_path_factory.mktemp("compat_torch") / "data.ffr", N)


class IndexDataset(fft.Dataset):
    def process(self, indices, data):
        return [records.index_of(d) for d in data]


class Holder(fft.ReaderRegistry):
    def __init__(self, path):
        self.first = ffrecord.FileReader(path)
        self.second = ffrecord.FileReader(path)
        self.label = "not a reader"


class Nested(fft.Dataset):
    """Opens its readers itself, as the original package's users did."""

    def __init__(self, path):
        self.reader_a = ffrecord.FileReader(path)
        self.inner = Holder(path)
        self.again = self.reader_a  # the same reader twice is listed once
        self.me = self  # a cycle must not loop


# ---- ReaderRegistry ------------------------------------------------------------

def test_ffreaders_finds_nested_readers(path):
    ds = Nested(path)
    readers = ds.ffreaders()
    assert readers == [ds.reader_a, ds.inner.first, ds.inner.second]
    assert all(isinstance(r, ffrecord.FileReader) for r in readers)
    assert ds.inner.ffreaders() == [ds.inner.first, ds.inner.second]
    del ds.inner
    assert ds.ffreaders() == [ds.reader_a]


def test_ffreaders_of_the_base_dataset_and_compositions(path):
    a, b = IndexDataset(path), IndexDataset(path)
    assert a.ffreaders() == [a.reader]
    cat = fft.ConcatDataset([a, b])
    assert cat.ffreaders() == [a.reader, b.reader]
    assert fft.Subset(a, [1, 2]).ffreaders() == [a.reader]
    assert fft.ReaderRegistry().ffreaders() == []


# ---- ds1 + ds2 -----------------------------------------------------------------

def test_adding_datasets_gives_ours_with_batched_indices(path, tmp_path):
    second = records.write_dataset(tmp_path / "second.ffr", 200)
    ds1, ds2 = IndexDataset(path), IndexDataset(second)
    both = ds1 + ds2
    assert isinstance(both, fft.ConcatDataset)
    assert len(both) == N + 200
    assert both[[0, 150]] == [0, 150 - N]
    assert both[[N + 199, N - 1, -1]] == [199, N - 1, 199]
    three = both + ds1
    assert isinstance(three, fft.ConcatDataset) and len(three) == 2 * N + 200
    assert three[[2 * N + 199]] == [N - 1]
    with pytest.raises(IndexError):
        both[[N + 200]]
    with pytest.raises(TypeError):
        both[["0"]]


# ---- skippable -------------------------------------------------------------------

def test_skippable_false_turns_set_step_off(path):
    loader = fft.DataLoader(IndexDataset(path), batch_size=4, skippable=False)
    assert loader.skippable is False
    with pytest.raises(ValueError, match="skippable"):
        loader.set_step(2)
    assert [i for b in loader for i in b.tolist()] == list(range(N))
    assert fft.DataLoader(IndexDataset(path), batch_size=4).skippable is True


def test_set_step_changes_len_at_once_even_mid_epoch(path):
    loader = fft.DataLoader(IndexDataset(path), batch_size=4)  # 10 batches
    loader.set_step(3)
    it = iter(loader)
    next(it)
    assert len(loader) == 7
    loader.set_step(0)  # the iteration under way was left unfinished
    assert len(loader) == 10
    assert len(list(loader)) == 10


# ---- shuffling with a user's generator -------------------------------------------

def seeded(seed=12345):
    return torch.Generator().manual_seed(seed)


def batches(loader):
    return [b.tolist() for b in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_generator_shuffle_is_torchs_order(path, num_workers):
    ds = IndexDataset(path)
    theirs = TorchDataLoader(ds, batch_size=3, shuffle=True, generator=seeded(), num_workers=num_workers)
    ours = fft.DataLoader(ds, batch_size=3, shuffle=True, generator=seeded(), num_workers=num_workers)
    for _ in range(2):  # the generator moves on the same way between epochs
        assert batches(ours) == batches(theirs)


def test_generator_shuffle_known_order():
    # torch's RandomSampler with this seed starts 85, 94, 10 over 100 samples.
    ours = fft.DataLoader(list(range(100)), batch_size=3, shuffle=True, generator=seeded())
    assert next(iter(ours)).tolist() == [85, 94, 10]


def test_generator_shuffle_resumes_with_set_step(path):
    ds = IndexDataset(path)
    full = batches(TorchDataLoader(ds, batch_size=3, shuffle=True, generator=seeded()))
    loader = fft.DataLoader(ds, batch_size=3, shuffle=True, generator=seeded())
    loader.set_step(5)
    assert len(loader) == len(full) - 5
    assert batches(loader) == full[5:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_generator_shuffle_resumes_from_state(path, num_workers):
    ds = IndexDataset(path)
    reference = TorchDataLoader(ds, batch_size=3, shuffle=True, generator=seeded())
    epochs = [batches(reference), batches(reference)]
    loader = fft.DataLoader(ds, batch_size=3, shuffle=True, generator=seeded(), num_workers=num_workers)
    it = iter(loader)
    head = [next(it).tolist() for _ in range(4)]
    state = loader.state_dict()
    del it
    fresh = fft.DataLoader(ds, batch_size=3, shuffle=True, generator=seeded(7), num_workers=num_workers)
    fresh.load_state_dict(state)
    assert len(fresh) == len(epochs[0]) - 4
    assert head + batches(fresh) == epochs[0]
    assert batches(fresh) == epochs[1]


def test_generator_as_the_twelfth_positional_argument(path):
    ds = IndexDataset(path)
    ours = fft.DataLoader(ds, 3, True, None, None, 0, None, False, False, 0, None, seeded())
    assert ours.generator is not None and ours.multiprocessing_context is None
    assert batches(ours) == batches(TorchDataLoader(ds, batch_size=3, shuffle=True, generator=seeded()))


def test_prefetch_factor_without_workers_is_ignored(path):
    loader = fft.DataLoader(IndexDataset(path), batch_size=8, prefetch_factor=2)
    assert loader.prefetch_factor is None
    assert [i for b in loader for i in b.tolist()] == list(range(N))
    with pytest.raises(ValueError):  # with workers torch's own checks still apply
        fft.DataLoader(IndexDataset(path), batch_size=8, num_workers=1, prefetch_factor=-1)


def test_seed_keeps_the_elastic_sampler(path):
    ds = IndexDataset(path)
    with_gen = fft.DataLoader(ds, batch_size=3, shuffle=True, generator=seeded(), seed=9)
    without = fft.DataLoader(ds, batch_size=3, shuffle=True, seed=9)
    assert isinstance(with_gen.sampler, fft.DistributedSampler)
    assert batches(with_gen) == batches(without)
    torch_order = fft.DataLoader(ds, batch_size=3, shuffle=True, generator=seeded())
    assert isinstance(torch_order.sampler, torch.utils.data.RandomSampler)


class OwnReader(fft.Dataset):
    """The original examples' pattern: the subclass opens its reader and reads a
    batch in __getitem__."""

    def __init__(self, path):
        self.reader = ffrecord.FileReader(path, check_data=True)

    def __len__(self):
        return self.reader.n

    def __getitem__(self, indices):
        return [records.index_of(d) for d in self.reader.read(indices)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_step_resume_with_torchs_distributed_sampler(path, num_workers):
    # The original examples resumed an epoch with set_epoch(epoch) then set_step(step).
    def loader():
        ds = OwnReader(path)
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, seed=3)
        return sampler, fft.DataLoader(ds, 3, sampler=sampler, num_workers=num_workers)

    sampler, reference = loader()
    sampler.set_epoch(4)
    full = batches(reference)
    assert len(full) == 7
    sampler, resumed = loader()
    sampler.set_epoch(4)
    resumed.set_step(5)
    assert batches(resumed) == full[5:]
    resumed.set_step(0)
    sampler.set_epoch(5)
    assert sorted(i for b in batches(resumed) for i in b) != sorted(i for b in full for i in b)


def test_skipable_sampler_of_the_original(path):
    from ffrecord.torch.dataloader import SkipableSampler

    ds = IndexDataset(path)
    batch_sampler = torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(ds, generator=seeded()), batch_size=4, drop_last=False)
    full = list(batch_sampler)
    batch_sampler.sampler.generator.manual_seed(12345)
    skipping = SkipableSampler(batch_sampler)
    skipping.set_step(3)
    assert len(skipping) == len(full) - 3
    loader = torch.utils.data.DataLoader(ds, batch_sampler=skipping)
    assert batches(loader) == full[3:]
    skipping.set_step(0)
    assert len(skipping) == len(full)
    with pytest.raises(ValueError):
        skipping.set_step(-1)
    with pytest.raises(TypeError):
        skipping.set_step("2")
