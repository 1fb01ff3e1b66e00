"""Shared fixtures: the I/O engines (tests/engines.py) and the golden v1 data."""

import os

import pytest

from engines import ENGINES, engine  # noqa: F401  (shared with benchmarks/)

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_V1 = os.path.join(HERE, "data", "v1")  # written by the original FFRecord 1.4.0


@pytest.fixture
def golden_v1():
    if not os.path.isdir(GOLDEN_V1):
        pytest.fail(f"golden v1 files missing at {GOLDEN_V1}")
    return GOLDEN_V1


# ---- the two-node network filesystem (tests/netfs_rig.py) -----------------
# Session-scoped: each rig starts on first use and is torn down at the end.

def _netfs_rig(options=(), latency_ms=0.0):
    import netfs_rig

    reason = netfs_rig.unavailable_reason(latency=latency_ms > 0)
    if reason:
        pytest.skip(reason)
    return netfs_rig.NetFSRig(options=options, latency_ms=latency_ms)


@pytest.fixture(scope="session")
def netfs():
    """One export mounted on node A and node B with sshfs's default options."""
    with _netfs_rig() as rig:
        yield rig


@pytest.fixture(scope="session")
def netfs_direct_io():
    """Mounted with -o direct_io: no page cache, and mmap(MAP_SHARED) fails with ENODEV."""
    with _netfs_rig(options=("direct_io",)) as rig:
        yield rig


# sshfs's cache=no turns off its own caches only; the kernel's attribute and entry
# timeouts (1 s) go too, so a node never sees a stale size or name.
NO_CACHE = ("cache=no", "attr_timeout=0", "entry_timeout=0", "negative_timeout=0")


@pytest.fixture(scope="session")
def netfs_cache_no():
    """Mounted with -o cache=no and zero kernel timeouts: every stat and lookup asks the server."""
    with _netfs_rig(options=NO_CACHE) as rig:
        yield rig


# Ray's driver and Spark's py4j gateway leave threads, sockets and log files in the
# test process after they shut down. Tests of the DataLoader fork that process and
# count its descriptors, so the engine tests run last.
_RUN_LAST = ("test_ray.py", "test_spark.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in _RUN_LAST)  # stable: the order stays otherwise
