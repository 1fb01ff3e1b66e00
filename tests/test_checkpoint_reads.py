"""Checkpoint loads whatever the page cache holds: nothing (read with O_DIRECT
where the filesystem allows it), part of the files, or all of them; and on
tmpfs (which refuses O_DIRECT before Linux 6.6: plain reads)."""

import os
import tempfile

import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from damage import flip_byte


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


@pytest.mark.parametrize("cached", ["none", "head", "middle", "all"])
def test_loads_are_exact_whatever_is_cached(tmp_path, cached):
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
    assert_same(ck.load(tmp_path / "c"), state)
    assert_same(ck.load(tmp_path / "c"), state)  # and again, with whatever the first load left cached


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
    data = tmp_path / "c" / "data-00000.ffr"
    at = data.read_bytes().index(state["big"].numpy().tobytes()[:64])
    flip_byte(data, at + (6 << 20) + 5)
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
