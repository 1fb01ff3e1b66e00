"""RecordDataset with the plain torch DataLoader: coverage, content, workers, decoders."""

import io
import json
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader as TorchDataLoader

import ffrecord
from ffrecord.torch import RecordDataset, decoders

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402

N = 97  # not a multiple of any batch size used below


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return records.write_dataset(tmp_path_factory.mktemp("ds") / "data.ffr", N)


def collect(loader):
    out = []
    for batch in loader:
        out.extend(batch.tolist())
    return out


@pytest.mark.parametrize("num_workers,context", [(0, None), (2, "fork")])
@pytest.mark.parametrize("shuffle", [False, True])
def test_plain_dataloader_every_sample_once(path, num_workers, context, shuffle):
    ds = RecordDataset(path, decode=records.index_tensor)
    loader = TorchDataLoader(ds, batch_size=8, shuffle=shuffle, num_workers=num_workers,
                             multiprocessing_context=context)
    seen = collect(loader)
    assert sorted(seen) == list(range(N))
    if not shuffle:
        assert seen == list(range(N))
    assert len(loader) == (N + 7) // 8


def test_plain_dataloader_spawn_workers(path):
    # Spawned workers get the dataset by pickling: it must travel by path.
    ds = RecordDataset(path, decode=records.index_tensor)
    loader = TorchDataLoader(ds, batch_size=16, shuffle=True, num_workers=2,
                             multiprocessing_context="spawn", persistent_workers=True)
    first = collect(loader)
    second = collect(loader)
    assert sorted(first) == sorted(second) == list(range(N))
    assert first != second  # reshuffled per epoch by the torch sampler


class CountingDataset(RecordDataset):
    """Records how the DataLoader fetched: whole batches or single items."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_calls = []
        self.single_calls = 0

    def __getitem__(self, index):
        self.single_calls += 1
        return super().__getitem__(index)

    def __getitems__(self, indices):
        self.batch_calls.append(list(indices))
        return super().__getitems__(indices)


def test_getitems_is_used_one_batch_read_per_batch(path):
    ds = CountingDataset(path, decode=records.index_tensor)
    loader = TorchDataLoader(ds, batch_size=10, shuffle=True)
    batches = [b.tolist() for b in loader]
    assert ds.single_calls == 0
    assert ds.batch_calls == batches  # each batch came from one __getitems__ call


def test_getitem_single_and_negative(path):
    ds = RecordDataset(path)
    assert len(ds) == N
    assert records.index_of(ds[5]) == 5
    assert records.index_of(ds[-1]) == N - 1
    assert isinstance(ds[0], np.ndarray) and ds[0].dtype == np.uint8  # raw by default
    with pytest.raises(IndexError):
        ds[N]
    with pytest.raises(TypeError):
        ds["0"]
    with pytest.raises(TypeError):
        ds.__getitems__({1, 2})
    with pytest.raises(IndexError):
        ds.__getitems__([0, N])


def test_getitems_takes_lists_arrays_and_tensors(path):
    ds = RecordDataset(path, decode=records.index_tensor)
    assert ds.__getitems__([3, 1, 3]) == [3, 1, 3]
    assert ds.__getitems__(np.array([4, 2])) == [4, 2]
    assert ds.__getitems__(torch.tensor([7, -1])) == [7, N - 1]
    assert ds.__getitems__(range(2)) == [0, 1]


def test_transform_and_batch_transform(path):
    ds = RecordDataset(path, decode=records.index_tensor, transform=lambda i: i * 10,
                       batch_transform=lambda samples: torch.tensor(samples).sum())
    assert ds[3] == 30
    assert int(ds.__getitems__([1, 2, 3])) == 60
    with pytest.raises(TypeError):
        RecordDataset(path, transform=5)
    with pytest.raises(TypeError):
        RecordDataset(path, batch_transform="x")


def test_bad_path_fails_at_construction(tmp_path):
    with pytest.raises(OSError):
        RecordDataset(tmp_path / "missing.ffr")
    bad = tmp_path / "bad.ffr"
    bad.write_bytes(b"not a record file at all" * 10)
    with pytest.raises(ffrecord.FormatError):
        RecordDataset(bad)


def test_corrupt_record_raises_in_worker_as_checksum_error(tmp_path):
    path = records.write_dataset(tmp_path / "c.ffr", 20)
    data = bytearray(open(path, "rb").read())
    reader = ffrecord.FileReader(path)
    tail = reader.read_one(19).tobytes()
    reader.close()
    pos = bytes(data).rfind(tail)
    data[pos + 3] ^= 0xFF  # flip one byte inside record 19
    open(path, "wb").write(bytes(data))
    ds = RecordDataset(path, decode=records.index_tensor)
    loader = TorchDataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(ffrecord.ChecksumError, match="19"):
        collect(loader)
    # Without checksums the flipped byte comes through and our own check sees it.
    unchecked = RecordDataset(path, check_data=False)
    with pytest.raises(AssertionError):
        records.index_of(unchecked[19])


def test_workers_open_their_own_reader(path):
    """The parent's reader is closed before the workers start: a worker that
    used the inherited object would fail; each must open its own."""
    ds = RecordDataset(path, decode=records.index_tensor)
    parent_reader = ds.reader
    parent_reader.close()
    with pytest.raises(ValueError, match="closed"):
        ds[0]
    loader = TorchDataLoader(ds, batch_size=16, num_workers=2, multiprocessing_context="fork")
    assert collect(loader) == list(range(N))


def test_pickles_by_path_without_reader(path):
    ds = RecordDataset(path, decode=records.index_tensor)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # no reader, no data inside
    clone = pickle.loads(blob)
    assert clone[4] == 4 and clone.reader is not ds.reader
    assert len(clone) == N


def test_close_and_context_manager(path):
    with RecordDataset(path) as ds:
        ds[0]
    with pytest.raises(ValueError):
        ds[0]


def test_directory_of_shards(tmp_path):
    path = records.write_dataset(tmp_path / "shards", 50, shards=3)
    ds = RecordDataset(path, decode=records.index_tensor)
    assert len(ds) == 50
    assert collect(TorchDataLoader(ds, batch_size=7)) == list(range(50))


def test_pin_memory_flag(path):
    # Without an accelerator torch warns and skips pinning; batches stay right.
    ds = RecordDataset(path, decode=records.index_tensor)
    loader = TorchDataLoader(ds, batch_size=8, num_workers=2, pin_memory=True, multiprocessing_context="fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert collect(loader) == list(range(N))


# ---- decoders -------------------------------------------------------------

def write_records(path, items):
    with ffrecord.FileWriter(str(path)) as w:
        for item in items:
            w.write_one(item)
    return str(path)


def test_decoders_npy_json_bytes_pickle(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)]
    npy_blobs = []
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a)
        npy_blobs.append(buf.getvalue())
    ds = RecordDataset(write_records(tmp_path / "npy.ffr", npy_blobs), decode="npy")
    for k, a in enumerate(arrays):
        np.testing.assert_array_equal(ds[k], a)
        assert ds[k].dtype == a.dtype

    docs = [{"a": 1}, [1, "x"]]
    ds = RecordDataset(write_records(tmp_path / "j.ffr", [json.dumps(d).encode() for d in docs]), decode="json")
    assert ds.__getitems__([1, 0]) == [docs[1], docs[0]]

    ds = RecordDataset(write_records(tmp_path / "b.ffr", [b"abc", b""]), decode="bytes")
    assert ds.__getitems__([0, 1]) == [b"abc", b""]

    objs = [{"k": (1, 2)}, "s"]
    path = write_records(tmp_path / "p.ffr", [pickle.dumps(o) for o in objs])
    assert RecordDataset(path, decode="pickle").__getitems__([0, 1]) == objs
    # Pickle is never the default: raw bytes come back unless asked.
    assert RecordDataset(path)[1].tobytes() == pickle.dumps("s")


def test_npy_decoder_refuses_object_arrays(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    ds = RecordDataset(write_records(tmp_path / "o.ffr", [buf.getvalue()]), decode="npy")
    with pytest.raises(ValueError):
        ds[0]


def test_pil_decoder(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (5, 3), (10, 20, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    ds = RecordDataset(write_records(tmp_path / "i.ffr", [buf.getvalue()]), decode="pil",
                       transform=lambda im: np.asarray(im))
    out = ds[0]
    assert out.shape == (3, 5, 3) and tuple(out[0, 0]) == (10, 20, 30)


def test_decoder_lookup_errors():
    assert decoders.get_decoder(None) is decoders.raw
    assert decoders.get_decoder(len) is len
    with pytest.raises(ValueError, match="unknown decoder"):
        decoders.get_decoder("pickl")
    with pytest.raises(TypeError):
        decoders.get_decoder(3)
