"""The batches users actually build (tuples, dicts, decoded tensors, the
original package's process(), packed batches) cross from DataLoader workers
intact, resume exactly, and leave no shared memory or descriptors behind."""

import gc
import os
import signal
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader as TorchDataLoader

import ffrecord
import ffrecord.torch as fft

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402

N = 97
CRC = [zlib.crc32(records.record(i)) for i in range(N)]  # what the writer wrote


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return records.write_dataset(tmp_path_factory.mktemp("structures") / "data.ffr", N)


def as_list(batch):
    return batch


def delivered(index, record):
    """Checks one delivered record against the writer's checksum; returns its index."""
    raw = np.ascontiguousarray(record.numpy() if isinstance(record, torch.Tensor) else record)
    assert raw.dtype == np.uint8 and raw.ndim == 1
    assert zlib.crc32(raw) == CRC[index], f"record {index} differs from what was written"
    return index


# ---- the patterns: a dataset, a collate_fn, and how to read a batch back ----

class PairsPerBatch(fft.RecordDataset):
    """(index, record) pairs from an overridden __getitems__."""

    def __getitems__(self, indices):
        return [(int(i), r) for i, r in zip(indices, super().__getitems__(indices))]


class PairsPerItem(fft.RecordDataset):
    """(index, record) pairs from an overridden __getitem__ only."""

    def __getitem__(self, index):
        return (int(index), super().__getitem__(index))


class Fields(fft.RecordDataset):
    """A dict of fields per sample: arrays of several dtypes, a tensor, a string."""

    def __getitems__(self, indices):
        out = []
        for i, r in zip(indices, super().__getitems__(indices)):
            out.append({
                "index": int(i),
                "record": r,
                "head": r[:8].copy().view(np.int64),  # int64 array of shape (1,)
                "head view": torch.from_numpy(r[:8].view(np.int64)),  # in the record, maybe unaligned
                "square": torch.full((2, 3), float(i) ** 0.5, dtype=torch.float64),
                "name": f"sample-{i}",
            })
        return out


def with_label(record):
    """transform: (record, label)."""
    return record, records.index_of(record) % 7


def decoded(record):
    """transform: the record decoded to a float tensor plus its index."""
    i = records.index_of(record)
    return torch.full((3, 4, 4), float(i), dtype=torch.float32), i


class Processed(fft.Dataset):
    """The original package's style: process(indices, data)."""

    def process(self, indices, data):
        return [(int(i), torch.from_numpy(d.copy())) for i, d in zip(indices, data)]


def read_raw(batch):
    return [delivered(records.index_of(r), r) for r in batch]


def read_pairs(batch):
    return [delivered(i, r) for i, r in batch]


def read_labeled(batch):
    out = []
    for record, label in batch:
        i = records.index_of(record)
        assert label == i % 7
        out.append(delivered(i, record))
    return out


def read_fields(batch):
    out = []
    for s in batch:
        i = s["index"]
        assert s["head"].dtype == np.int64 and s["head"].tolist() == [i]
        assert s["head view"].dtype == torch.int64 and s["head view"].tolist() == [i]
        assert s["square"].dtype == torch.float64 and s["square"].shape == (2, 3)
        assert torch.equal(s["square"], torch.full((2, 3), float(i) ** 0.5, dtype=torch.float64))
        assert s["name"] == f"sample-{i}"
        out.append(delivered(i, s["record"]))
    return out


def read_decoded_list(batch):
    out = []
    for image, i in batch:
        assert image.dtype == torch.float32 and image.shape == (3, 4, 4)
        assert bool((image == i).all())
        out.append(i)
    return out


def read_decoded_stacked(batch):
    images, labels = batch
    assert images.shape == (len(labels), 3, 4, 4)
    assert torch.equal(images, labels.float().view(-1, 1, 1, 1).expand(-1, 3, 4, 4))
    return labels.tolist()


def read_packed(batch):
    assert isinstance(batch, fft.PackedBatch)
    return [delivered(i, batch[k]) for k, i in enumerate(batch.indices.tolist())]


PATTERNS = {
    "raw": (lambda p: fft.RecordDataset(p), as_list, read_raw),
    "pairs per batch": (lambda p: PairsPerBatch(p), as_list, read_pairs),
    "pairs per item": (lambda p: PairsPerItem(p), as_list, read_pairs),
    "transform": (lambda p: fft.RecordDataset(p, transform=with_label), as_list, read_labeled),
    "dicts": (lambda p: Fields(p), as_list, read_fields),
    "decoded, kept as a list": (lambda p: fft.RecordDataset(p, transform=decoded), as_list, read_decoded_list),
    "decoded, stacked": (lambda p: fft.RecordDataset(p, transform=decoded), None, read_decoded_stacked),
    "process()": (lambda p: Processed(p), as_list, read_pairs),
    "packed": (lambda p: fft.RecordDataset(p, packed=True), fft.packed_collate, read_packed),
}


def make_loader(kind, dataset, collate_fn, num_workers, **kw):
    if num_workers:
        kw.setdefault("multiprocessing_context", "fork")
    cls = fft.DataLoader if kind == "ffrecord" else TorchDataLoader
    return cls(dataset, batch_size=kw.pop("batch_size", 8), num_workers=num_workers,
               collate_fn=collate_fn, **kw)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2, 8])
@pytest.mark.parametrize("kind", ["torch", "ffrecord"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_each_pattern_delivers_exactly_the_records_asked_for(path, pattern, kind, num_workers):
    make_dataset, collate_fn, read = PATTERNS[pattern]
    loader = make_loader(kind, make_dataset(path), collate_fn, num_workers, shuffle=True)
    got = [i for batch in loader for i in read(batch)]
    assert sorted(got) == list(range(N))
    # A second epoch reuses the workers' shared memory and still delivers all.
    assert sorted(i for batch in loader for i in read(batch)) == list(range(N))


@pytest.mark.parametrize("kind", ["torch", "ffrecord"])
def test_spawned_workers(path, kind):
    # Spawned workers import the transport afresh and get the dataset pickled.
    make_dataset, collate_fn, read = PATTERNS["dicts"]
    loader = make_loader(kind, make_dataset(path), collate_fn, 1, multiprocessing_context="spawn")
    assert sorted(i for batch in loader for i in read(batch)) == list(range(N))


@pytest.mark.parametrize("pattern", ["pairs per batch", "dicts", "decoded, kept as a list"])
def test_held_batches_stay_intact_when_the_shared_memory_runs_out(path, pattern):
    # Keeping every batch exhausts the slots: later batches travel the plain
    # way, and none of those held may be overwritten.
    make_dataset, collate_fn, read = PATTERNS[pattern]
    loader = make_loader("torch", make_dataset(path), collate_fn, 2, batch_size=4, prefetch_factor=4)
    held = list(loader)
    assert [i for b in held for i in read(b)] == list(range(N))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("pattern", ["raw", "transform", "pairs per batch"])
def test_a_record_kept_from_a_dropped_batch_is_never_overwritten(path, pattern, num_workers):
    # The loop keeps one sample of each batch and drops the rest, so batch
    # buffers (pooled reads, shared-memory slots) are recycled meanwhile; the
    # kept records must still hold their bytes when the epoch is over.
    make_dataset, collate_fn, read = PATTERNS[pattern]
    loader = make_loader("torch", make_dataset(path), collate_fn, num_workers, batch_size=6, shuffle=True)
    kept = [batch[0] for batch in loader]
    again = [batch[0] for batch in loader]  # a second epoch reuses every buffer once more
    assert len(read(kept + again)) == len(kept) + len(again)


def test_leaves_arrive_as_views_of_shared_memory_not_as_copies(path):
    loader = make_loader("torch", PairsPerBatch(path), as_list, 1, batch_size=16)
    batch = next(iter(loader))
    starts = [r.__array_interface__["data"][0] for _, r in batch]
    # Records of one batch lie back to back in one buffer, as the worker read them.
    assert starts == sorted(starts) and starts[-1] - starts[0] < 1 << 20
    assert all(not r.flags.owndata for _, r in batch)


def test_worker_errors_keep_their_type(path):
    class Broken(fft.RecordDataset):
        def __getitems__(self, indices):
            raise ValueError(f"bad batch {list(indices)}")

    loader = make_loader("ffrecord", Broken(path), as_list, 2)
    with pytest.raises(ValueError, match="bad batch"):
        next(iter(loader))


class Oddities(fft.RecordDataset):
    """Leaves of every awkward kind, each with its index."""

    def __getitems__(self, indices):
        out = []
        for i in indices:
            grid = np.arange(24, dtype=np.int32).reshape(4, 6) + i
            out.append((i, oddities(i, grid)))
        return out


def oddities(i, grid):
    return {
        "objects": np.array([i, "x"], dtype=object),  # pickled as usual
        "empty": np.empty((0, 3), dtype=np.float32),
        "strided": grid[:, ::2],
        "fortran": np.asfortranarray(grid),
        "scalar": np.float16(i),
        "bytes": bytes([i % 256]) * 3,
        "bool": torch.tensor([True, False, i % 2 == 0]),
        "bf16": torch.full((2,), float(i), dtype=torch.bfloat16),
        "zero-dim": torch.tensor(i, dtype=torch.int64),
        "complex": torch.tensor([complex(i, 1)], dtype=torch.complex64),
        "transposed": torch.arange(6, dtype=torch.float32).view(2, 3).t() + i,
        "grad": torch.ones(2, requires_grad=True),
        "unaligned": np.frombuffer(bytes(17), dtype=np.uint8)[1:].view(np.int64),
    }


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return (type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
                and a.requires_grad == b.requires_grad and torch.equal(a.detach(), b.detach()))
    if isinstance(a, np.ndarray):
        return type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("kind", ["torch", "ffrecord"])
def test_awkward_leaves_arrive_equal(path, kind):
    loader = make_loader(kind, Oddities(path), as_list, 2, batch_size=5)
    seen = []
    for batch in loader:
        for i, sample in batch:
            assert same(oddities(i, np.arange(24, dtype=np.int32).reshape(4, 6) + i), sample), i
            seen.append(i)
    assert seen == list(range(N))


def test_a_handle_from_elsewhere_is_refused():
    from ffrecord.torch import _transfer

    with pytest.raises(ValueError, match="never received"):
        _transfer.import_((("nowhere", 0), None, 0, 0, 8, []))


def changed_in_place(record):
    """transform that changes the view it was given, as user code may: in
    place (shape, dtype, strides) or by slicing it."""
    i = records.index_of(record)
    how = i % 5
    if how == 1 and record.size % 2 == 0:
        record.shape = (2, -1)
    elif how == 2:
        record.dtype = np.int8
    elif how == 3:
        record = record[3:]
    elif how == 4 and record.size > 1:
        record = record[::2]
    return i, record


def expected_change(i):
    raw = np.frombuffer(records.record(i), dtype=np.uint8)
    how = i % 5
    if how == 1 and raw.size % 2 == 0:
        return raw.reshape(2, -1)
    if how == 2:
        return raw.view(np.int8)
    if how == 3:
        return raw[3:]
    if how == 4 and raw.size > 1:
        return raw[::2]
    return raw


@pytest.mark.parametrize("kind", ["torch", "ffrecord"])
def test_views_changed_by_user_code_arrive_as_changed(path, kind):
    loader = make_loader(kind, fft.RecordDataset(path, transform=changed_in_place), as_list, 2, batch_size=7)
    seen = []
    for batch in loader:
        for i, got in batch:
            want = expected_change(i)
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), i
            seen.append(i)
    assert seen == list(range(N))


def with_lengths(batch):
    """batch_transform over raw records: a new list that holds the same views."""
    return [(record, len(record)) for record in batch]


def test_a_batch_transform_of_raw_records_delivers_them_intact(path):
    dataset = fft.RecordDataset(path, batch_transform=with_lengths)
    loader = make_loader("torch", dataset, as_list, 2, batch_size=9, shuffle=True)
    seen = []
    for batch in loader:
        for record, length in batch:
            assert length == len(record)
            seen.append(delivered(records.index_of(record), record))
    assert sorted(seen) == list(range(N))


class TwoReadsPerBatch(fft.RecordDataset):
    """Samples that hold records of two batch reads: each index with its mirror."""

    def __getitems__(self, indices):
        mirrors = [len(self) - 1 - i for i in indices]
        return list(zip(indices, super().__getitems__(indices), mirrors, super().__getitems__(mirrors)))


def test_samples_holding_records_of_several_reads_arrive_intact(path):
    loader = make_loader("torch", TwoReadsPerBatch(path), as_list, 2, batch_size=6)
    seen = []
    for batch in loader:
        for i, record, mirror, mirrored in batch:
            delivered(i, record)
            delivered(mirror, mirrored)
            assert mirror == N - 1 - i
            seen.append(i)
    assert seen == list(range(N))


class Shapes(fft.RecordDataset):
    """Samples of one shape per batch, chosen by the batch's first index, in
    each way a batch of samples can be taken apart into columns and a few
    ways it cannot."""

    def __getitems__(self, indices):
        records = super().__getitems__(indices)
        pairs = list(zip(indices, records))
        how = indices[0] % 8
        if how == 0:  # lists, not tuples
            return [[i, r] for i, r in pairs]
        if how == 1:  # dicts whose keys are not in sorted order, one of them not a string
            return [{"z": i, 3: r, "a": len(r)} for i, r in pairs]
        if how == 2:  # the same record twice in a sample, and once more inside a dict
            return [(i, r, r, {"again": r}) for i, r in pairs]
        if how == 3:  # every other record, in order
            return [(i, r) for i, r in pairs[::2]]
        if how == 4:  # the records in reverse order
            return [(i, r) for i, r in reversed(pairs)]
        if how == 5:  # tuples of two lengths in one batch
            return [(i, r) if i % 2 else (i, r, "odd one out") for i, r in pairs]
        if how == 6:  # a column of records and other objects
            return [(i, {"record": r} if i % 2 else r) for i, r in pairs]
        return [r for _, r in pairs]  # bare records, in a plain list


def check_shapes(batch):
    """Checks one batch of Shapes; returns the indices it delivered."""
    seen = []
    for sample in batch:
        if isinstance(sample, list):
            assert len(sample) == 2
            i, r = sample
        elif isinstance(sample, dict):
            assert list(sample) == ["z", 3, "a"]
            i, r = sample["z"], sample[3]
            assert sample["a"] == len(r)
        elif isinstance(sample, np.ndarray):
            i, r = records.index_of(sample), sample
        elif len(sample) == 4:
            i, r, again, inner = sample
            assert again is r and inner["again"] is r  # one object, as the worker had it
        else:
            assert type(sample) is tuple
            i, r = sample[:2]
            if isinstance(r, dict):
                r = r["record"]
            assert sample[2:] in ((), ("odd one out",))
        seen.append(delivered(i, r))
    return seen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_samples_of_every_shape_arrive_as_they_were_made(path, num_workers):
    loader = make_loader("torch", Shapes(path), as_list, num_workers, batch_size=5)
    delivered_ = []
    for batch in loader:
        delivered_ += check_shapes(batch)
    halves = {i for start in range(0, N, 5) if start % 8 == 3 for i in range(start + 1, min(start + 5, N), 2)}
    assert sorted(delivered_) == [i for i in range(N) if i not in halves]


def test_records_of_a_tuple_arrive_as_views_of_the_batch_read(path):
    loader = make_loader("torch", fft.RecordDataset(path, transform=with_label), as_list, 1, batch_size=16)
    batch = next(iter(loader))
    starts = [r.__array_interface__["data"][0] for r, _ in batch]
    ends = [s + r.size for s, (r, _) in zip(starts, batch)]
    assert starts[1:] == ends[:-1]  # back to back in one buffer, as the worker read them
    assert all(not r.flags.owndata and r.flags.writeable for r, _ in batch)
    assert [label for _, label in batch] == [i % 7 for i in range(16)]


class RawProcessed(fft.Dataset):
    """process() that keeps the records as they came, with their indices."""

    def process(self, indices, data):
        return [(int(i), d) for i, d in zip(indices, data)]


def test_records_given_to_process_arrive_as_views_of_the_batch_read(path):
    loader = make_loader("ffrecord", RawProcessed(path), as_list, 2, batch_size=16)
    seen = []
    for batch in loader:
        starts = [r.__array_interface__["data"][0] for _, r in batch]
        ends = [s + r.size for s, (_, r) in zip(starts, batch)]
        assert starts[1:] == ends[:-1]  # back to back, as the worker read them: not copied one by one
        seen += read_pairs(batch)
    assert seen == list(range(N))


@pytest.mark.parametrize("make", [lambda p: RawProcessed(p), lambda p: PairsPerBatch(p),
                                  lambda p: fft.RecordDataset(p, transform=lambda r: (records.index_of(r), r))],
                         ids=["process()", "pairs per batch", "transform"])
def test_compressed_records_cross_from_workers_intact(tmp_path, make):
    p = str(tmp_path / "z.ffr")
    with ffrecord.FileWriter(p, compression="zstd") as w:
        for i in range(N):
            w.write_one(records.record(i))
    loader = make_loader("torch", make(p), as_list, 2, batch_size=8, shuffle=True)
    assert sorted(i for _ in range(2) for batch in loader for i in read_pairs(batch)) == sorted(list(range(N)) * 2)


# ---- resume ------------------------------------------------------------------

def order_of(pattern, loader):
    read = PATTERNS[pattern][2]
    return [read(b) for b in loader]


@pytest.mark.parametrize("pattern", ["pairs per batch", "dicts", "process()", "packed"])
def test_resume_mid_epoch_for_each_pattern(path, pattern):
    make_dataset, collate_fn, read = PATTERNS[pattern]

    def loader():
        return make_loader("ffrecord", make_dataset(path), collate_fn, 2, shuffle=True, seed=5)

    full = order_of(pattern, loader())
    first = loader()
    it = iter(first)
    head = [read(next(it)) for _ in range(4)]
    state = first.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + order_of(pattern, resumed) == full


@pytest.mark.parametrize("pattern", ["pairs per batch", "decoded, kept as a list"])
def test_elastic_resume_for_structured_batches(path, pattern):
    make_dataset, collate_fn, read = PATTERNS[pattern]

    def loaders(world):
        return [make_loader("ffrecord", make_dataset(path), collate_fn, 2,
                            sampler=fft.DistributedSampler(N, num_replicas=world, rank=r, seed=9, pad=False))
                for r in range(world)]

    old = loaders(2)
    before, states = [], []
    for k, loader in zip((3, 5), old):
        it = iter(loader)
        before += [i for _ in range(k) for i in read(next(it))]
        states.append(loader.state_dict())
        del it
    after = []
    for loader in loaders(3):
        loader.load_state_dict(states)
        after += [i for b in loader for i in read(b)]
    assert len(before) + len(after) == N
    assert sorted(before + after) == list(range(N))


# ---- leaks -------------------------------------------------------------------

def resources():
    """Open descriptors, torch's /dev/shm entries (other programs on the machine
    may come and go in /dev/shm) and shared-memory mappings of this process."""
    fds = len(os.listdir("/proc/self/fd"))
    shm = sum(1 for name in os.listdir("/dev/shm") if name.startswith("torch_")) if os.path.isdir("/dev/shm") else 0
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "/dev/shm/" in line or "torch_" in line)
    return fds, shm, maps


def settled(before, timeout=10.0):
    """Waits (collecting garbage) until the counts are back to ``before``."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = resources()
        if now == before or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["torch", "ffrecord"])
def test_nothing_leaks_after_the_loader_is_deleted(path, kind):
    gc.collect()
    before = resources()
    for pattern in ("raw", "pairs per batch", "dicts", "decoded, stacked", "packed"):
        make_dataset, collate_fn, read = PATTERNS[pattern]
        loader = make_loader(kind, make_dataset(path), collate_fn, 2, shuffle=True)
        kept = list(loader)  # batches outlive the loader's iterator ...
        assert sorted(i for b in kept for i in read(b)) == list(range(N))
        del loader
        del kept  # ... until dropped here
    after = settled(before)
    assert after == before, f"(fds, /dev/shm entries, mappings) {before} before, {after} after"


@pytest.mark.parametrize("kind", ["torch", "ffrecord"])
def test_nothing_leaks_when_a_worker_dies(path, kind):
    gc.collect()
    before = resources()
    make_dataset, collate_fn, read = PATTERNS["pairs per batch"]
    loader = make_loader(kind, make_dataset(path), collate_fn, 2, batch_size=4)
    it = iter(loader)
    batch = next(it)
    read(batch)
    os.kill(it._workers[0].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="worker"):  # torch reports the dead worker
        for batch in it:
            read(batch)
    del it, loader, batch
    after = settled(before)
    assert after == before, f"(fds, /dev/shm entries, mappings) {before} before, {after} after"
