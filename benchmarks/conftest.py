"""Fixtures for the pytest-benchmark suites: small warm datasets and the I/O engines.

Run with:  python -m pytest benchmarks/ --benchmark-only
(benchmarks are not part of the test suite; they measure and never assert timings).
"""

import os
import sys

# Idle OpenBLAS threads spin and steal a core on a small machine; nothing here uses BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import ffrecord  # noqa: E402
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, ROOT)
    import ffrecord  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
from engines import ENGINES, engine  # noqa: E402,F401  (the test suite's fixture)


class ReadSet:
    """A file of `n` records of `size` bytes and random batches over it."""

    def __init__(self, path, n, size, batch, batches):
        self.path, self.n, self.size, self.batch = path, n, size, batch
        rng = np.random.default_rng(1)
        self.batches = [rng.integers(0, n, batch) for _ in range(batches)]
        self.records = batch * batches
        self.bytes = self.records * size


def _build(path, n, size):
    rng = np.random.default_rng(0)
    with ffrecord.FileWriter(path, n) as w:
        for start in range(0, n, 256):
            k = min(256, n - start)
            block = np.frombuffer(rng.bytes(k * size), dtype=np.uint8)
            w.write_batch([block[j * size:(j + 1) * size] for j in range(k)])
    return path


@pytest.fixture(scope="session")
def records_4k(tmp_path_factory):
    path = _build(str(tmp_path_factory.mktemp("bench") / "4k.ffr"), 32_000, 4096)
    return ReadSet(path, 32_000, 4096, batch=256, batches=64)


@pytest.fixture(scope="session")
def records_128k(tmp_path_factory):
    path = _build(str(tmp_path_factory.mktemp("bench") / "128k.ffr"), 1_600, 128 << 10)
    return ReadSet(path, 1_600, 128 << 10, batch=64, batches=16)


