"""``ffrecord bench``: random batched read throughput of a dataset, as users read it.

Reads random batches (uniform over the dataset, fixed seed) for a fixed time
with plain ``read`` and with ``prefetch``, and reports records/s and MB/s
with the engine in use, and how many batches came straight from the page
cache (through the file's mapping) rather than through the engine. It
measures whatever cache state the data is in; the side-by-side comparison
with other formats lives in ``benchmarks/``.
"""

import time
from dataclasses import dataclass

import numpy as np

from ..reader import FileReader
from .errors import ToolError


@dataclass
class BenchResult:
    engine: str
    records: int
    batch_size: int
    read_records_per_s: float
    read_mb_per_s: float
    prefetch_records_per_s: float
    prefetch_mb_per_s: float
    mapped_batches: int  # copied from the page cache through the file's mapping
    engine_batches: int  # read through the I/O engine


def _timed(run, seconds):
    """Calls run() until `seconds` pass; returns (records, bytes, elapsed)."""
    records = nbytes = 0
    t0 = time.perf_counter()
    while True:
        n, b = run()
        records += n
        nbytes += b
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return records, nbytes, elapsed


def bench(path, batch_size=256, seconds=3.0, depth=4, direct=False, check_data=True, seed=0):
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    reader = FileReader(path, check_data=check_data, direct=direct)
    try:
        if reader.n == 0:
            raise ToolError(f"{path}: the dataset has no records to read")
        rng = np.random.default_rng(seed)

        def plain():
            out = reader.read(rng.integers(0, reader.n, batch_size))
            return len(out), sum(a.size for a in out)

        recs, nbytes, dt = _timed(plain, seconds / 2)
        # The prefetch pass reads as many batches as the plain pass managed.
        nbatches = max(1, recs // batch_size)
        batches = [rng.integers(0, reader.n, batch_size) for _ in range(nbatches)]
        t0 = time.perf_counter()
        pre_recs = pre_bytes = 0
        for out in reader.prefetch(batches, depth=depth):
            pre_recs += len(out)
            pre_bytes += sum(a.size for a in out)
        pre_dt = time.perf_counter() - t0
        stats = reader.io_stats()
        return BenchResult(
            engine=reader.engine, records=reader.n, batch_size=batch_size,
            read_records_per_s=recs / dt, read_mb_per_s=nbytes / dt / 1e6,
            prefetch_records_per_s=pre_recs / pre_dt, prefetch_mb_per_s=pre_bytes / pre_dt / 1e6,
            mapped_batches=stats["mapped_batches"], engine_batches=stats["engine_batches"],
        )
    finally:
        reader.close()


def format_text(path, r):
    return (
        f"{path}: {r.records} records, engine {r.engine}, random batches of {r.batch_size}\n"
        f"  read      {r.read_records_per_s:12,.0f} records/s  {r.read_mb_per_s:10,.1f} MB/s\n"
        f"  prefetch  {r.prefetch_records_per_s:12,.0f} records/s  {r.prefetch_mb_per_s:10,.1f} MB/s\n"
        f"  batches   {r.mapped_batches:,} copied from the page cache, {r.engine_batches:,} read by the engine"
    )
