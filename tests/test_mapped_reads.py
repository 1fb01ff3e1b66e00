"""Buffered reads copy page-cache-resident records from a mapping of the file
and fall back to the I/O engine when the records are not in the page cache."""

import os

import numpy as np
import pytest

import ffrecord
from damage import flip_byte, write_file

SMALL = 3000        # checksummed after a grouped copy
LARGE = 80 * 1024   # checksummed during its copy


def records_of(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size + (i % 7), dtype=np.uint8).tobytes() for i in range(n)]


def evict(path):
    """Drops the file's clean pages from the page cache (no process may map them)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def resident_pages(path):
    """Pages of the file in the page cache, by mincore() on a fresh mapping."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
        return sum(v & 1 for v in vec)
    finally:
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))


@pytest.fixture
def auto_engine(monkeypatch):
    monkeypatch.delenv("FFRECORD_ENGINE", raising=False)


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_warm_reads_come_from_the_mapping(tmp_path, auto_engine, size):
    recs = records_of(40, size)
    path = write_file(tmp_path / "w.ffr", recs)
    with open(path, "rb") as f:
        f.read()  # in the page cache
    with ffrecord.FileReader(path) as r:
        batches = [[3, 1, 2], list(range(40))[::-1], [5, 5, 0]]
        assert [[a.tobytes() for a in r.read(b)] for b in batches] == [[recs[i] for i in b] for b in batches]
        bufs = [np.empty(len(recs[i]), dtype=np.uint8) for i in (7, 8)]
        r.read_into([7, 8], bufs)
        assert [b.tobytes() for b in bufs] == [recs[7], recs[8]]
        stats = r.io_stats()
        assert stats == {"mapped_batches": 4, "engine_batches": 0}


def test_a_forced_engine_reads_everything(tmp_path, engine):
    # FFRECORD_ENGINE=io_uring|threads|pread: every batch through that engine;
    # =mmap: every batch through the mapping.
    recs = records_of(10, SMALL)
    path = write_file(tmp_path / "f.ffr", recs)
    with ffrecord.FileReader(path) as r:
        assert r.engine == engine
        assert [a.tobytes() for a in r.read([1, 2])] == recs[1:3]
        mapped = engine == "mmap"
        assert r.io_stats() == {"mapped_batches": int(mapped), "engine_batches": int(not mapped)}


def test_direct_reads_never_use_the_mapping(tmp_path, auto_engine):
    recs = records_of(10, SMALL)
    path = write_file(tmp_path / "d.ffr", recs)
    with ffrecord.FileReader(path, direct=True) as r:
        assert [a.tobytes() for a in r.read([4, 9])] == [recs[4], recs[9]]
        assert r.io_stats()["mapped_batches"] == 0


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("forced", [None, "mmap"])
def test_a_flipped_byte_is_caught_in_mapped_copies(tmp_path, monkeypatch, size, forced):
    if forced:
        monkeypatch.setenv("FFRECORD_ENGINE", forced)
    else:
        monkeypatch.delenv("FFRECORD_ENGINE", raising=False)
    recs = records_of(12, size)
    path = write_file(tmp_path / "c.ffr", recs)
    # Record 6 starts after the 32-byte header and records 0..5 (packed).
    flip_byte(path, 32 + sum(len(x) for x in recs[:6]) + len(recs[6]) // 2)
    with ffrecord.FileReader(path) as r:
        assert [a.tobytes() for a in r.read([0, 11])] == [recs[0], recs[11]]
        with pytest.raises(ffrecord.ChecksumError, match="record 6"):
            r.read([0, 6, 11])
        assert r.io_stats()["engine_batches"] == 0
    with ffrecord.FileReader(path, check_data=False) as r:
        assert r.read([6])[0].tobytes() != recs[6]


def test_cold_data_switches_to_the_engine_and_back(tmp_path, auto_engine):
    recs = records_of(64, 64 * 1024, seed=3)
    path = write_file(tmp_path / "cold.ffr", recs)
    evict(path)
    if resident_pages(path) > 8:
        pytest.skip("the page cache here keeps pages that fadvise(DONTNEED) should drop")
    with ffrecord.FileReader(path) as r:
        # A new reader checks its first batch with mincore(): cold, so the
        # engine reads it (through the mapping, every page would be a fault).
        first = r.read(list(range(0, 32)))
        assert [a.tobytes() for a in first] == recs[:32]
        assert r.io_stats() == {"mapped_batches": 0, "engine_batches": 1}
        assert r.read([32])[0].tobytes() == recs[32]  # still cold: the engine again
        assert r.io_stats() == {"mapped_batches": 0, "engine_batches": 2}
        with open(path, "rb") as f:
            f.read()  # warm again
        # Within a few batches one is checked with mincore(), found resident,
        # and copied from the mapping, as are the batches after it.
        for k in range(33, 50):
            assert r.read([k])[0].tobytes() == recs[k]
            if r.io_stats()["mapped_batches"] > 0:
                break
        engine = r.io_stats()["engine_batches"]
        assert 2 < engine <= 8
        assert r.read([60, 61])[1].tobytes() == recs[61]
        assert r.io_stats() == {"mapped_batches": 2, "engine_batches": engine}
        # Evicted while the reader copies from the mapping: the batch that
        # faults its pages in from the disk is noticed, and the next one goes
        # to the engine. (Records 0-31 were never read through the mapping,
        # so none of their pages is mapped and all of them can be dropped.)
        evict(path)
        assert [a.tobytes() for a in r.read(list(range(0, 32)))] == recs[:32]
        assert r.io_stats() == {"mapped_batches": 3, "engine_batches": engine}
        assert r.read([2])[0].tobytes() == recs[2]
        assert r.io_stats() == {"mapped_batches": 3, "engine_batches": engine + 1}


def test_forced_mapping_reads_cold_data_too(tmp_path, monkeypatch):
    monkeypatch.setenv("FFRECORD_ENGINE", "mmap")
    recs = records_of(16, 64 * 1024, seed=4)
    path = write_file(tmp_path / "cold2.ffr", recs)
    evict(path)
    with ffrecord.FileReader(path) as r:
        assert r.engine == "mmap"
        assert [a.tobytes() for a in r.read(list(range(16)))] == recs
        assert r.io_stats() == {"mapped_batches": 1, "engine_batches": 0}
