"""The original FFRecord torch interface: Dataset.process, Subset, ConcatDataset,
DataLoader with set_step."""

import os
import pickle
import sys

import pytest
import torch
from torch.utils.data import DataLoader as TorchDataLoader

import ffrecord
import ffrecord.torch as fft

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402

N = 45


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return records.write_dataset(tmp_path_factory.mktemp("compat") / "data.ffr", N)


class IndexDataset(fft.Dataset):
    """The documented pattern of the original package: process() turns the
    raw records of a batch into samples."""

    def __init__(self, fname, check_data=True, offset=0):
        super().__init__(fname, check_data)
        self.offset = offset
        self.process_calls = []

    def process(self, indices, data):
        self.process_calls.append(list(indices))
        assert len(indices) == len(data)
        return [records.index_of(d) + self.offset for d in data]


class OwnReaderDataset(fft.Dataset):
    """The other pattern of the original package: a subclass that opens its
    reader itself and overrides __getitem__(indices) and __len__."""

    def __init__(self, fname):
        self.reader = ffrecord.FileReader(fname, True)

    def __len__(self):
        return self.reader.n

    def __getitem__(self, indices):
        assert isinstance(indices, list)
        return [records.index_of(r) for r in self.reader.read(indices)]


def test_dataset_process_gets_a_batch(path):
    ds = IndexDataset(path)
    assert len(ds) == N
    assert ds[[3, 0, 3]] == [3, 0, 3]
    assert ds.process_calls == [[3, 0, 3]]
    assert ds[7] == 7  # a single int gives one sample
    with pytest.raises(TypeError):
        ds["3"]
    with pytest.raises(IndexError):
        ds[[N]]


def test_dataset_without_process_says_so(path):
    with pytest.raises(NotImplementedError, match="process"):
        fft.Dataset(path)[[0]]


@pytest.mark.parametrize("loader_cls", [fft.DataLoader, TorchDataLoader])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_compat_dataset_in_dataloaders(path, loader_cls, num_workers):
    ds = IndexDataset(path)
    loader = loader_cls(ds, batch_size=6, shuffle=True, num_workers=num_workers)
    batches = [b.tolist() for b in loader]
    assert sorted(i for b in batches for i in b) == list(range(N))
    if num_workers == 0:  # one process() call per batch, with the batch's indices
        assert ds.process_calls == batches


def test_own_reader_subclass(path):
    ds = OwnReaderDataset(path)
    loader = fft.DataLoader(ds, batch_size=10, num_workers=2)
    assert [i for b in loader for i in b.tolist()] == list(range(N))
    clone = pickle.loads(pickle.dumps(ds))  # the reader pickles by path
    assert clone[[4, 2]] == [4, 2]


def test_subset_maps_indices(path):
    ds = IndexDataset(path)
    sub = fft.Subset(ds, [10, 20, 30, 40])
    assert len(sub) == 4
    assert sub[[3, 0]] == [40, 10]
    assert sub[1] == 20
    assert ds.process_calls[-2:] == [[40, 10], [20]]  # one batch call each
    loader = fft.DataLoader(sub, batch_size=3)
    assert [i for b in loader for i in b.tolist()] == [10, 20, 30, 40]


def test_concat_dataset_order_and_duplicates(path, tmp_path):
    second = records.write_dataset(tmp_path / "second.ffr", 5)
    a, b = IndexDataset(path), IndexDataset(second, offset=1000)
    cat = fft.ConcatDataset([a, b])
    assert len(cat) == N + 5
    assert cat.cumulative_sizes == [N, N + 5]
    want = [N + 4, 0, N, 0, 44, N + 4, -1]
    got = cat[want]
    assert got == [1004, 0, 1000, 0, 44, 1004, 1004]
    # One batched call per underlying dataset, not one per sample.
    assert a.process_calls[-1] == [0, 0, 44]
    assert b.process_calls[-1] == [4, 0, 4, 4]
    assert cat[N + 1] == 1001
    with pytest.raises(IndexError):
        cat[[N + 5]]
    with pytest.raises(ValueError):
        fft.ConcatDataset([])
    loader = fft.DataLoader(cat, batch_size=8, shuffle=True, num_workers=2)
    seen = sorted(i for batch in loader for i in batch.tolist())
    assert seen == list(range(N)) + [1000 + k for k in range(5)]


def test_concat_mixes_record_and_plain_datasets(path):
    plain = [torch.tensor(-1), torch.tensor(-2)]
    cat = fft.ConcatDataset([fft.RecordDataset(path, decode=records.index_tensor), plain])
    assert [int(x) for x in cat[[N + 1, 2, N]]] == [-2, 2, -1]


# ---- set_step ----------------------------------------------------------------

def test_set_step_skips_batches_every_epoch_until_reset(path):
    loader = fft.DataLoader(IndexDataset(path), batch_size=5)  # 9 batches
    full = [b.tolist() for b in loader]
    assert len(full) == 9 and len(loader) == 9
    loader.set_step(3)
    assert len(loader) == 6
    assert [b.tolist() for b in loader] == full[3:]
    assert [b.tolist() for b in loader] == full[3:]  # as in the original: it stays
    loader.set_step(0)
    assert [b.tolist() for b in loader] == full


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_step_with_shuffle_resumes_the_epoch(path, num_workers):
    ref = fft.DataLoader(IndexDataset(path), batch_size=4, shuffle=True, num_workers=num_workers, seed=5)
    ref.set_epoch(2)
    full = [b.tolist() for b in ref]
    loader = fft.DataLoader(IndexDataset(path), batch_size=4, shuffle=True, num_workers=num_workers, seed=5)
    loader.set_epoch(2)
    loader.set_step(7)
    assert [b.tolist() for b in loader] == full[7:]


def test_set_step_argument_checks(path):
    loader = fft.DataLoader(IndexDataset(path), batch_size=5)
    with pytest.raises(ValueError):
        loader.set_step(-1)
    with pytest.raises(ValueError):
        loader.set_step(10)
    with pytest.raises(TypeError):
        loader.set_step(1.5)
    loader.set_step(9)  # an empty epoch is allowed
    assert list(loader) == []


def test_dataloader_forks_workers_by_default(path):
    loader = fft.DataLoader(IndexDataset(path), batch_size=5, num_workers=2)
    assert loader.multiprocessing_context.get_start_method() == "fork"
    spawn = fft.DataLoader(IndexDataset(path), batch_size=5, num_workers=1, multiprocessing_context="spawn")
    assert spawn.multiprocessing_context.get_start_method() == "spawn"


def test_dataloader_refuses_out_of_order(path):
    with pytest.raises(ValueError, match="in_order"):
        fft.DataLoader(IndexDataset(path), batch_size=5, num_workers=2, in_order=False)
    with pytest.raises(ValueError, match="seed"):
        fft.DataLoader(IndexDataset(path), batch_size=5, seed=3)
