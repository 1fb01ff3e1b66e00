"""Warm batch reads through each I/O engine, and CRC32C throughput.

    python -m pytest benchmarks/test_bench_read.py --benchmark-only

Each read benchmark reads the same random batches (4 KiB records in batches of
256, 128 KiB records in batches of 64) from a file the page cache holds, and
records records/s and MB/s in the benchmark's extra_info. Nothing here asserts
a timing; the reads are checked for length so a broken read cannot look fast.
"""

import numpy as np
import pytest

import ffrecord
from ffrecord import _core


def _reader(readset, **kwargs):
    r = ffrecord.FileReader(readset.path, **kwargs)
    for b in readset.batches:  # warm the page cache and the buffer pool
        r.read(b)
    return r


def _read_all(r, readset):
    n = 0
    for b in readset.batches:
        out = r.read(b)
        n += len(out)
    return n


def _report(benchmark, readset):
    if benchmark.stats is None:  # --benchmark-disable: the calls ran once, untimed
        return
    secs = benchmark.stats.stats.min
    benchmark.extra_info["records_per_s"] = round(readset.records / secs)
    benchmark.extra_info["MB_per_s"] = round(readset.bytes / secs / 1e6)


def _bench_reads(benchmark, readset, engine, check_data, size):
    r = _reader(readset, check_data=check_data)
    assert r.engine == engine
    n = benchmark(_read_all, r, readset)
    assert n == readset.records
    assert all(len(a) == size for a in r.read(readset.batches[0]))
    _report(benchmark, readset)


@pytest.mark.parametrize("check_data", [True, False], ids=["crc", "nocrc"])
def test_read_4k_records(benchmark, records_4k, engine, check_data):
    _bench_reads(benchmark, records_4k, engine, check_data, 4096)


@pytest.mark.parametrize("check_data", [True, False], ids=["crc", "nocrc"])
def test_read_128k_records(benchmark, records_128k, engine, check_data):
    _bench_reads(benchmark, records_128k, engine, check_data, 128 << 10)


def test_prefetch_4k_records(benchmark, records_4k):
    r = _reader(records_4k)

    def run():
        return sum(len(out) for out in r.prefetch(records_4k.batches, depth=4))

    assert benchmark(run) == records_4k.records
    _report(benchmark, records_4k)


def test_read_into_128k_records(benchmark, records_128k):
    """read_into: the caller's buffers (e.g. pinned memory), reused every batch."""
    r = _reader(records_128k)
    bufs = [np.empty(128 << 10, dtype=np.uint8) for _ in range(records_128k.batch)]

    def run():
        for b in records_128k.batches:
            r.read_into(b, bufs)
        return len(records_128k.batches) * len(bufs)

    assert benchmark(run) == records_128k.records
    _report(benchmark, records_128k)


@pytest.mark.parametrize("size", [4096, 128 << 10, 8 << 20], ids=["4KiB", "128KiB", "8MiB"])
def test_crc32c_throughput(benchmark, size):
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    calls = max(1, (64 << 20) // size)

    def run():
        c = 0
        for _ in range(calls):
            c = _core.crc32c(data)
        return c

    assert benchmark(run) == _core.crc32c(data.tobytes())
    benchmark.extra_info["implementation"] = _core.crc32c_impl()
    if benchmark.stats is not None:
        benchmark.extra_info["GB_per_s"] = round(size * calls / benchmark.stats.stats.min / 1e9, 2)
