"""Prefetched O_DIRECT batches: small reads that io_uring lands in its staging
area and copies out come back exactly as buffered reads give them, however
often the slots are reused, next to reads too large to stage."""

import numpy as np
import pytest

import ffrecord
from damage import flip_byte, write_file


def mixed_records(n, seed):
    """Mostly small records (staged), some of 16-40 KiB (read straight into the block)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6500, n)
    sizes[rng.random(n) < 0.1] = rng.integers(16000, 40000)
    return [rng.integers(0, 256, int(s), dtype=np.uint8).tobytes() for s in sizes]


def batches_of(n, count, size, seed):
    """Random batches plus runs of neighbours (merged into one read, some over 16 KiB)
    and the file's last records (their aligned span reaches past its end)."""
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, n, size) for _ in range(count)]
    out.append(np.arange(n - 40, n))
    out.append(np.concatenate([np.arange(10, 17), rng.integers(0, n, 50), np.arange(n - 3, n)]))
    return out


@pytest.mark.parametrize("depth", [1, 4])
def test_prefetched_direct_batches_match_buffered_reads(tmp_path, engine, monkeypatch, depth):
    # A shallow ring (4 in flight, 8 staging slots) reuses every slot many times per batch.
    monkeypatch.setenv("FFRECORD_QUEUE_DEPTH", "4")
    recs = mixed_records(600, seed=3)
    path = write_file(tmp_path / "m.ffr", recs)
    batches = batches_of(len(recs), 12, 150, seed=4)
    with ffrecord.FileReader(path, direct=True) as r:
        got = [[a.tobytes() for a in out] for out in r.prefetch(batches, depth=depth)]
    assert got == [[recs[i] for i in b] for b in batches]


def test_prefetch_direct_matches_read_at_default_depth(tmp_path, engine):
    recs = mixed_records(400, seed=5)
    path = write_file(tmp_path / "d.ffr", recs)
    batches = batches_of(len(recs), 6, 256, seed=6)
    with ffrecord.FileReader(path, direct=True) as r:
        pre = [[a.tobytes() for a in out] for out in r.prefetch(batches, depth=4)]
        read = [[a.tobytes() for a in r.read(b)] for b in batches]
    assert pre == read == [[recs[i] for i in b] for b in batches]


def test_damaged_small_record_fails_its_prefetched_direct_batch(tmp_path, engine, monkeypatch):
    # The checksum must see the bytes copied out of the staging slot.
    monkeypatch.setenv("FFRECORD_QUEUE_DEPTH", "4")
    recs = mixed_records(300, seed=7)
    recs[123] = b"z" * 3000
    path = write_file(tmp_path / "bad.ffr", recs)
    flip_byte(path, open(path, "rb").read().index(b"z" * 3000) + 2000)
    good = list(range(0, 100))
    with ffrecord.FileReader(path, direct=True) as r:
        it = r.prefetch([good, [5, 123, 7], good], depth=2)
        assert [a.tobytes() for a in next(it)] == [recs[i] for i in good]
        with pytest.raises(ffrecord.ChecksumError, match="record 123"):
            next(it)
