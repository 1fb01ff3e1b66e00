"""Checkpoint loads whatever the page cache holds: nothing, part of the files,
or all of them; through the page cache (the default) and with ``direct=True``
(O_DIRECT where the filesystem allows it); and on tmpfs (which refuses
O_DIRECT before Linux 6.6: plain reads)."""

import ctypes
import mmap
import os
import tempfile

import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from damage import flip_byte_of_tensor


def make_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(3_000_001, generator=g),  # 12 MB: several 4 MiB pieces, an unaligned end
        "small": [torch.randn(k * 37 + 1, generator=g) for k in range(200)],  # packed, unaligned offsets
        "mid": torch.randint(0, 1 << 30, (700_001,), generator=g),  # 5.6 MB, int64
    }


def assert_same(a, b):
    assert torch.equal(a["big"], b["big"]) and torch.equal(a["mid"], b["mid"])
    assert len(a["small"]) == len(b["small"])
    assert all(torch.equal(x, y) for x, y in zip(a["small"], b["small"]))


def evict(directory):
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cache_range(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        f.read(length)


def resident_fraction(path):
    """Share of the file's pages in the page cache (mincore on a mapping,
    which reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def o_direct_reads_work(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, 1 << 16)  # page-aligned
        os.preadv(fd, [buf], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def same_bytes(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("cached", ["none", "head", "middle", "all"])
@pytest.mark.parametrize("direct", [False, True])
def test_loads_are_exact_whatever_is_cached(tmp_path, cached, direct):
    state = make_state(1)
    ck.save(state, tmp_path / "c")
    data = tmp_path / "c" / "data-00000.ffr"
    size = data.stat().st_size
    evict(tmp_path / "c")
    if cached == "head":
        cache_range(data, 0, size // 3 + 123)
    elif cached == "middle":
        cache_range(data, size // 4 + 4095, size // 3)
    elif cached == "all":
        cache_range(data, 0, size)
    assert_same(ck.load(tmp_path / "c", direct=direct), state)
    # and again, with whatever the first load left cached
    assert_same(ck.load(tmp_path / "c", direct=direct), state)


def test_direct_and_buffered_loads_are_bit_identical(tmp_path):
    g = torch.Generator().manual_seed(5)
    nan_payloads = torch.randint(-(2**31), 2**31 - 1, (1_500_003,), dtype=torch.int32, generator=g)
    state = {
        "bits": nan_payloads.view(torch.float32),  # NaNs with payloads: compared as bytes
        "bf16": torch.randn(2_000_001, generator=g).to(torch.bfloat16),
        "small": [torch.randn(k + 1, generator=g).to(torch.float16) for k in range(300)],
    }
    ck.save(state, tmp_path / "c")
    evict(tmp_path / "c")
    direct = ck.load(tmp_path / "c", direct=True)
    evict(tmp_path / "c")
    buffered = ck.load(tmp_path / "c")
    for got in (direct, buffered):
        assert same_bytes(got["bits"], state["bits"]) and same_bytes(got["bf16"], state["bf16"])
        assert all(same_bytes(x, y) for x, y in zip(got["small"], state["small"]))


def test_buffered_loads_fill_the_page_cache_and_direct_loads_do_not(tmp_path):
    state = make_state(6)
    ck.save(state, tmp_path / "c")
    data = tmp_path / "c" / "data-00000.ffr"
    evict(tmp_path / "c")
    if resident_fraction(data) > 0.05:
        pytest.skip("this filesystem keeps evicted pages cached")
    if not o_direct_reads_work(data):
        pytest.skip("this filesystem refuses O_DIRECT: every read is buffered")
    assert_same(ck.load(tmp_path / "c", direct=True), state)
    with ck.Checkpoint(tmp_path / "c", direct=True) as c:
        assert torch.equal(c["big"], state["big"])
    assert resident_fraction(data) < 0.05
    assert_same(ck.load(tmp_path / "c"), state)  # the default: through the page cache
    assert resident_fraction(data) > 0.95
    evict(tmp_path / "c")
    with ck.Checkpoint(tmp_path / "c") as c:
        assert torch.equal(c["big"], state["big"])
    assert resident_fraction(data) > 0.5  # "big" is most of the file


def test_single_packed_tensors_at_unaligned_offsets(tmp_path):
    state = make_state(4)
    ck.save(state, tmp_path / "c")
    for k in (0, 1, 57, 120, 199):
        evict(tmp_path / "c")
        got = ck.load(tmp_path / "c", keys=[["small", k]])[("small", k)]
        assert torch.equal(got, state["small"][k])


def test_damage_on_disk_is_caught_by_an_uncached_read(tmp_path):
    state = make_state(2)
    ck.save(state, tmp_path / "c")
    flip_byte_of_tensor(tmp_path / "c", state["big"], (6 << 20) + 5)
    evict(tmp_path / "c")  # the damaged page is written back and dropped: read from the disk
    with pytest.raises(ffrecord.ChecksumError, match=r"\['big'\]"):
        ck.load(tmp_path / "c")
    got = ck.load(tmp_path / "c", keys=["mid", "small"])
    assert torch.equal(got["mid"], state["mid"])


def test_tmpfs(tmp_path):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        state = make_state(3)
        ck.save(state, os.path.join(d, "c"))
        assert_same(ck.load(os.path.join(d, "c")), state)
        ck.async_save(state, os.path.join(d, "c")).result()
        assert_same(ck.load(os.path.join(d, "c")), state)
