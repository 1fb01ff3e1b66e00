"""Packed batches: PackedBatch, packed_collate, RecordDataset(packed=True)
through workers (the shared-memory ring) and pin_memory."""

import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader as TorchDataLoader

import ffrecord
import ffrecord.torch as fft
from ffrecord.torch import PackedBatch, packed_collate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_scripts"))
import records  # noqa: E402

N = 300


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return records.write_dataset(tmp_path_factory.mktemp("packed") / "data.ffr", N)


def check_batch(batch):
    """Every record of the batch is intact and matches its index; returns the indices."""
    assert isinstance(batch, PackedBatch)
    assert batch.data.dtype == torch.uint8 and batch.offsets.dtype == torch.int64
    got = [records.index_of(batch[k].numpy()) for k in range(len(batch))]
    assert got == batch.indices.tolist()
    return got


def test_packed_batch_api():
    data = torch.tensor(list(b"aabbbc"), dtype=torch.uint8)
    b = PackedBatch(data, np.array([0, 2, 5, 6]), np.array([7, 8, 9]))
    assert len(b) == 3
    assert bytes(b[1].numpy()) == b"bbb" and bytes(b[-1].numpy()) == b"c"
    assert b[0].data_ptr() == data.data_ptr()  # a view, no copy
    assert [bytes(x.numpy()) for x in b] == [b"aa", b"bbb", b"c"]
    assert b.lengths().tolist() == [2, 3, 1]
    assert b.tolist() == [b"aa", b"bbb", b"c"]
    assert b.to(torch.uint8).tolist() == b.tolist()
    clone = pickle.loads(pickle.dumps(b))
    assert clone.tolist() == b.tolist() and clone.indices.tolist() == [7, 8, 9]
    with pytest.raises(IndexError):
        b[3]
    with pytest.raises(TypeError):
        b["1"]
    empty = PackedBatch(torch.empty(0, dtype=torch.uint8), np.zeros(1, dtype=np.int64))
    assert len(empty) == 0 and list(empty) == []


def test_packed_batch_rejects_bad_input():
    data = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(TypeError):
        PackedBatch(torch.zeros(4, dtype=torch.int32), np.array([0, 4]))
    with pytest.raises(TypeError):
        PackedBatch(data, [0, 4])  # offsets must be an array/tensor
    with pytest.raises(ValueError):
        PackedBatch(data, np.array([0, 3]))  # does not end at len(data)
    with pytest.raises(ValueError):
        PackedBatch(data, np.array([1, 4]))
    with pytest.raises(ValueError):
        PackedBatch(data, np.array([0, 4]), np.array([1, 2]))
    with pytest.raises(ValueError):
        PackedBatch(data, np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="decrease"):
        PackedBatch(data, np.array([0, 3, 1, 4]))[0]


def test_packed_collate_from_samples_and_batches():
    out = packed_collate([b"xy", np.frombuffer(b"", np.uint8), torch.tensor([1, 2, 3], dtype=torch.uint8)])
    assert out.tolist() == [b"xy", b"", b"\x01\x02\x03"]
    again = packed_collate(out)
    assert again is out
    joined = packed_collate([out, packed_collate([b"z"])])
    assert joined.tolist() == [b"xy", b"", b"\x01\x02\x03", b"z"]
    with pytest.raises(TypeError):
        packed_collate([1, 2])
    with pytest.raises(TypeError):
        packed_collate([np.zeros(3, dtype=np.float32)])
    with pytest.raises(TypeError):
        packed_collate("abc")


def test_packed_dataset_getitems_one_read(path):
    ds = fft.RecordDataset(path, packed=True)
    b = ds.__getitems__([5, 1, 5, -1])
    assert check_batch(b) == [5, 1, 5, N - 1]
    assert records.index_of(ds[3]) == 3
    with pytest.raises(ValueError, match="batch_transform"):
        fft.RecordDataset(path, packed=True, decode="bytes")
    lens = fft.RecordDataset(path, packed=True, batch_transform=lambda pb: pb.lengths())
    assert lens.__getitems__([0, 14]).tolist() == [8, 9]


@pytest.mark.parametrize("num_workers,context", [(0, None), (2, "fork"), (1, "spawn")])
def test_packed_through_dataloader(path, num_workers, context):
    ds = fft.RecordDataset(path, packed=True)
    loader = fft.DataLoader(ds, batch_size=16, shuffle=True, num_workers=num_workers,
                            multiprocessing_context=context, seed=0)
    seen = []
    for batch in loader:
        seen.extend(check_batch(batch))
    assert sorted(seen) == list(range(N))


def test_packed_with_plain_torch_dataloader(path):
    ds = fft.RecordDataset(path, packed=True)
    loader = TorchDataLoader(ds, batch_size=32, num_workers=2, collate_fn=packed_collate,
                             multiprocessing_context="fork")
    assert [i for b in loader for i in check_batch(b)] == list(range(N))


def test_held_batches_stay_intact_while_workers_go_on(path):
    """Keeping every batch alive fills the workers' shared-memory rings; the
    loader must then send batches another way, never overwrite held ones."""
    ds = fft.RecordDataset(path, packed=True)
    loader = fft.DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=4)
    held = list(loader)  # 75 batches, far more than the ring slots
    assert [i for b in held for i in check_batch(b)] == list(range(N))
    # Ring-backed batches wrap the ring's memory; the others came as torch
    # shared-memory tensors of their own.
    ring_backed = sum(not b.data.is_shared() for b in held)
    assert 0 < ring_backed < len(held)


def test_released_batches_recycle_ring_slots(path):
    ds = fft.RecordDataset(path, packed=True)
    loader = fft.DataLoader(ds, batch_size=4, num_workers=2)
    addresses = set()
    for batch in loader:  # each batch dropped before the next arrives
        check_batch(batch)
        assert not batch.data.is_shared()  # it came through a ring slot
        addresses.add(batch.data.data_ptr())
    # 75 batches through 2 rings of 8 slots: slots were given back and reused
    # (a batch that outgrew its worker's slots starts one more ring).
    assert len(addresses) <= 2 * 2 * 8


def test_packed_batch_sent_between_processes_outside_workers(path):
    # A PackedBatch put on a torch multiprocessing queue by the main process
    # travels as ordinary tensors.
    ctx = torch.multiprocessing.get_context("fork")
    q = ctx.Queue()
    b = fft.RecordDataset(path, packed=True).__getitems__([2, 3])
    q.put(b)
    got = q.get(timeout=30)
    assert check_batch(got) == [2, 3]


def test_pin_memory_dispatches_to_packed_batch(path):
    ds = fft.RecordDataset(path, packed=True)
    batch = ds.__getitems__([0, 1])
    from torch.utils.data._utils.pin_memory import pin_memory

    if torch.accelerator.is_available():
        pinned = pin_memory(batch)
        assert isinstance(pinned, PackedBatch) and pinned.is_pinned()
        assert pinned.tolist() == batch.tolist()
    else:
        # Without an accelerator torch cannot pin; the batch raises torch's own error.
        with pytest.raises(RuntimeError) as ours:
            pin_memory(batch)
        with pytest.raises(RuntimeError) as plain:
            torch.zeros(1).pin_memory()
        assert str(ours.value) == str(plain.value)
    loader = fft.DataLoader(ds, batch_size=8, num_workers=2, pin_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sorted(i for b in loader for i in check_batch(b)) == list(range(N))


def test_packed_compressed_dataset(tmp_path):
    p = str(tmp_path / "z.ffr")
    with ffrecord.FileWriter(p, compression="zstd") as w:
        for i in range(40):
            w.write_one(records.record(i) * 20)
    ds = fft.RecordDataset(p, packed=True)
    loader = fft.DataLoader(ds, batch_size=8, num_workers=2)
    for batch in loader:
        for k in range(len(batch)):
            i = int(batch.indices[k])
            assert bytes(batch[k].numpy()) == records.record(i) * 20


class DiesOnIndex:
    """batch_transform that kills its worker process when it meets ``index``."""

    def __init__(self, index, parent):
        self.index, self.parent = index, parent

    def __call__(self, batch):
        if os.getpid() != self.parent and self.index in batch.indices.tolist():
            os._exit(3)
        return batch


def test_killed_worker_gives_a_clear_error_and_the_next_epoch_works(path):
    ds = fft.RecordDataset(path, packed=True, batch_transform=DiesOnIndex(200, os.getpid()))
    loader = fft.DataLoader(ds, batch_size=10, num_workers=2)
    got = []
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        for batch in loader:
            got.extend(check_batch(batch))
    assert got == list(range(len(got))) and len(got) <= 200
    state = loader.state_dict()  # what was handed out before the failure
    # torch raises the error from its SIGCHLD handler, between any two
    # bytecodes of this thread: it may interrupt the check of a batch the
    # loader had already handed out (and counted).
    assert state["samples"] - len(got) in (0, 10)
    ds.batch_transform = None
    fresh = fft.DataLoader(ds, batch_size=10, num_workers=2)
    fresh.load_state_dict(state)
    assert [i for b in fresh for i in check_batch(b)] == list(range(state["samples"], N))


# ---- large records: read straight into the workers' shared memory ----------------

def big_record(i):
    return records.record(i) + bytes([i % 251]) * (20_000 + 997 * i)


@pytest.fixture(scope="module")
def big_path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("big") / "big.ffr")
    with ffrecord.FileWriter(p) as w:
        for i in range(24):
            w.write_one(big_record(i))
    return p


def check_big(batch):
    for k in range(len(batch)):
        assert bytes(batch[k].numpy()) == big_record(int(batch.indices[k]))
    return batch.indices.tolist()


def test_large_records_go_through_shared_memory(big_path):
    loader = fft.DataLoader(fft.RecordDataset(big_path, packed=True), batch_size=3, shuffle=True,
                            num_workers=2, seed=1)
    seen = []
    for batch in loader:
        seen += check_big(batch)
        assert not batch.data.is_shared()  # a ring slot, not a tensor of its own
    assert sorted(seen) == list(range(24))
    held = list(loader)  # all kept: the rings fill up, the rest travels as tensors
    assert sorted(i for b in held for i in check_big(b)) == list(range(24))


def test_unsent_slots_are_given_back_in_the_worker(big_path):
    # The transform drops the batch read into a slot and returns a copy: each
    # dropped slot must free itself, or the ring would run dry after 8 batches.
    def copy_batch(b):
        return PackedBatch(b.data.clone(), b.offsets, b.indices)

    ds = fft.RecordDataset(big_path, packed=True, batch_transform=copy_batch)
    loader = fft.DataLoader(ds, batch_size=1, num_workers=1, persistent_workers=True)
    for _ in range(2):  # 48 batches through one worker's 8 slots
        for batch in loader:
            check_big(batch)
            assert not batch.data.is_shared()


def test_derived_views_of_a_slot_stay_valid(big_path):
    # A transform that keeps only a view of the slot's bytes: the slot must
    # stay taken until that view is sent and released.
    def drop_first(b):
        start = int(b.offsets[1])
        return PackedBatch(b.data[start:], b.offsets[1:] - start, b.indices[1:])

    ds = fft.RecordDataset(big_path, packed=True, batch_transform=drop_first)
    loader = fft.DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=4)
    seen = [i for b in loader for i in check_big(b)]
    assert seen == [i for i in range(24) if i % 4]


def test_large_compressed_records_fall_back_to_one_block(tmp_path):
    p = str(tmp_path / "bigz.ffr")
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 30_000, dtype=np.uint8).tobytes() for _ in range(10)]
    with ffrecord.FileWriter(p, compression="zstd") as w:
        for b in blobs:
            w.write_one(b)
    loader = fft.DataLoader(fft.RecordDataset(p, packed=True), batch_size=4, num_workers=2)
    got = {int(i): bytes(b[k].numpy()) for b in loader for k, i in enumerate(b.indices)}
    assert got == dict(enumerate(blobs))


def _drop_and_collect(batches):
    import gc

    batches.clear()
    gc.collect()


def test_a_forked_child_dropping_batches_does_not_free_their_slots(path):
    loader = fft.DataLoader(fft.RecordDataset(path, packed=True), batch_size=4, num_workers=2)
    it = iter(loader)
    held = [next(it) for _ in range(6)]
    assert not any(b.data.is_shared() for b in held)  # all in ring slots
    child = torch.multiprocessing.get_context("fork").Process(target=_drop_and_collect, args=(held,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    rest = [i for b in it for i in check_batch(b)]  # workers keep reusing the free slots
    assert [i for b in held for i in check_batch(b)] + rest == list(range(N))


def as_list(batch):
    return batch


@pytest.mark.parametrize("num_workers,context", [(2, "fork"), (1, "spawn")])
def test_raw_views_cross_from_workers_as_one_slot(path, num_workers, context):
    # Raw records read in a worker come back as RecordViews: numpy views of one
    # ring slot, with the same content the records have.
    ds = fft.RecordDataset(path)
    loader = TorchDataLoader(ds, batch_size=16, shuffle=True, num_workers=num_workers,
                             collate_fn=as_list, multiprocessing_context=context)
    seen = []
    for batch in loader:
        assert type(batch) is fft.RecordViews
        assert all(isinstance(r, np.ndarray) and r.dtype == np.uint8 and r.ndim == 1 for r in batch)
        bases = {r.__array_interface__["data"][0] for r in batch}
        assert len(bases) == len(batch)  # distinct records, not one repeated
        seen.extend(records.index_of(r) for r in batch)
    assert sorted(seen) == list(range(N))


def test_held_raw_views_stay_intact(path):
    # Holding every batch exhausts the ring slots: later batches must come the
    # ordinary way, and none of the held ones may be overwritten.
    ds = fft.RecordDataset(path)
    loader = TorchDataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=4,
                             collate_fn=as_list, multiprocessing_context="fork")
    held = list(loader)
    assert [records.index_of(r) for b in held for r in b] == list(range(N))
    kinds = {type(b) for b in held}
    assert kinds == {fft.RecordViews, list}


def test_changed_raw_view_list_travels_as_a_plain_list(path):
    # A batch_transform that edits the list: what arrives is exactly the edit.
    def keep_odd(batch):
        del batch[::2]
        return batch

    ds = fft.RecordDataset(path, batch_transform=keep_odd)
    loader = TorchDataLoader(ds, batch_size=8, num_workers=2, collate_fn=as_list,
                             multiprocessing_context="fork")
    seen = [records.index_of(r) for b in loader for r in b]
    assert seen == [i for i in range(N) if i % 8 % 2]


def test_record_views_pickle_as_a_list_elsewhere():
    views = fft.RecordViews.over(torch.arange(6, dtype=torch.uint8), np.array([0, 2, 2, 6]))
    assert [v.tolist() for v in views] == [[0, 1], [], [2, 3, 4, 5]]
    back = pickle.loads(pickle.dumps(views))
    assert type(back) is fft.RecordViews and [v.tolist() for v in back] == [[0, 1], [], [2, 3, 4, 5]]


def test_record_views_split_a_packed_batch_into_views(path):
    from ffrecord.reader import record_views

    reader = ffrecord.FileReader(path)
    indices = [5, 0, 299, 5, 13]
    data, offsets = reader.read_packed(indices)
    views = record_views(data, offsets)
    assert [records.index_of(v) for v in views] == indices
    assert all(v.base is data and v.flags.writeable for v in views)
    views[0][0] ^= 0xFF  # a view writes through to the batch it came from
    assert data[offsets[0]] == views[0][0]
    frozen = np.frombuffer(data.tobytes(), dtype=np.uint8)
    assert not any(v.flags.writeable for v in record_views(frozen, offsets))
    assert record_views(np.zeros(0, np.uint8), np.zeros(1, np.int64)) == []


@pytest.mark.parametrize("data, offsets, error, match", [
    (np.zeros(8, np.int16), [0, 4], TypeError, "uint8"),
    (np.zeros((2, 4), np.uint8), [0, 4], TypeError, "1-D"),
    (np.zeros(16, np.uint8)[::2], [0, 4], TypeError, "contiguous"),
    (np.zeros(8, np.uint8), [], ValueError, "n \\+ 1"),
    (np.zeros(8, np.uint8), [0, 9], ValueError, "outside an array of 8 bytes"),
    (np.zeros(8, np.uint8), [-1, 4], ValueError, "outside"),
    (np.zeros(8, np.uint8), [0, 5, 3, 8], ValueError, "must not decrease"),
])
def test_record_views_refuse_bad_input(data, offsets, error, match):
    from ffrecord.reader import record_views

    with pytest.raises(error, match=match):
        record_views(data, np.array(offsets, dtype=np.int64))


def test_views_unchanged_sees_every_change_user_code_can_make(path):
    from ffrecord.reader import record_views, views_unchanged

    data, offsets = ffrecord.FileReader(path).read_packed([3, 4, 5, 6])
    views = tuple(record_views(data, offsets))
    assert views_unchanged(list(views), views) and views_unchanged(views, views)
    assert not views_unchanged(list(views[:3]), views)  # one missing
    assert not views_unchanged(list(reversed(views)), views)  # reordered
    assert not views_unchanged([views[0], views[1], views[2], views[3].copy()], views)  # another object
    for change in ("dtype", "shape"):
        again = tuple(record_views(data, offsets))
        if change == "dtype":
            again[1].dtype = np.int8
        else:
            again[1].shape = (2, -1)
        assert not views_unchanged(list(again), again), change
    with pytest.raises(TypeError, match="sequence"):
        views_unchanged(42, views)
    others = (object(), b"bytes", 7)  # the same objects, but not arrays: answered, never read as arrays
    assert not views_unchanged(list(others), others)


def retype_first_in_place(batch):
    """batch_transform that retypes one record in place and returns the same list."""
    batch[0].dtype = np.int8
    return batch


def test_raw_records_retyped_in_place_arrive_retyped(path):
    ds = fft.RecordDataset(path, batch_transform=retype_first_in_place)
    loader = TorchDataLoader(ds, batch_size=8, num_workers=2, collate_fn=as_list, multiprocessing_context="fork")
    seen = []
    for batch in loader:
        assert batch[0].dtype == np.int8 and all(r.dtype == np.uint8 for r in batch[1:])
        seen += [records.index_of(r.view(np.uint8)) for r in batch]
    assert seen == list(range(N))
