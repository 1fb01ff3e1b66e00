"""The C++ checkpoint record writer: files FileReader accepts, checksums, errors."""

import errno
import os
import threading
import time

import numpy as np
import pytest

import ffrecord
from ffrecord import _core


def _rand(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)


def test_records_read_back_through_file_reader_with_checks(tmp_path):
    p = str(tmp_path / "x.ffr")
    a = _rand(3_000_001)
    w = _core.CheckpointFileWriter(p, buffer_bytes=1 << 20, buffers=3, io_threads=2)
    r0 = w.write_record([a], 64, 0)
    r1 = w.write_record([a[:5], a[5:100], np.zeros(0, np.uint8), a[:3]], 64, 0)
    r2 = w.write_record([], 64, 0)
    r3 = w.write_record([a[:2_500_000]], 64, 1 << 20)
    w.finish(b'{"k": 1}')
    assert not w.is_open

    # Records start on 4 KiB boundaries; the empty one is not padded.
    assert r0[1] % 4096 == 0 and r1[1] % 4096 == 0 and r3[1] % 4096 == 0
    assert r2[1] == r1[1] + r1[2] and r2[2] == 0
    assert list(r1[3]) == [0, 64, 192, 192]
    assert r0[4][0] == _core.crc32c(a)
    assert list(r1[4]) == [_core.crc32c(x) for x in (a[:5], a[5:100], a[:0], a[:3])]
    blocks = [_core.crc32c(a[i : min(i + (1 << 20), 2_500_000)]) for i in range(0, 2_500_000, 1 << 20)]
    assert list(r3[5]) == blocks and r3[4][0] == _core.crc32c(a[:2_500_000])

    with ffrecord.FileReader(p, check_data=True) as r:  # verifies every record checksum
        assert r.n == 4 and r.metadata == {"k": 1}
        assert r.file_info(0)["alignment"] == 4096
        got = r.read([0, 1, 2, 3])
    assert np.array_equal(got[0], a)
    assert got[1][:5].tobytes() == a[:5].tobytes() and got[1][64:159].tobytes() == a[5:100].tobytes()
    assert got[1][5:64].tobytes() == bytes(59)  # padding between pieces is zero
    assert got[2].size == 0 and np.array_equal(got[3], a[:2_500_000])


def test_crc32c_combine_matches_concatenation():
    a, b = _rand(1000, 1), _rand(777, 2)
    ab = np.concatenate([a, b])
    assert _core.crc32c_combine(_core.crc32c(a), _core.crc32c(b), b.size) == _core.crc32c(ab)
    assert _core.crc32c_combine(_core.crc32c(a), _core.crc32c(b[:0]), 0) == _core.crc32c(a)


def test_non_contiguous_piece_is_rejected(tmp_path):
    w = _core.CheckpointFileWriter(str(tmp_path / "x.ffr"))
    with pytest.raises(ValueError, match="C-contiguous"):
        w.write_record([np.zeros((4, 4), np.uint8)[:, ::2]], 64, 0)
    w.abort()
    assert not os.path.exists(tmp_path / "x.ffr")


def test_existing_file_and_missing_directory_are_os_errors(tmp_path):
    p = tmp_path / "x.ffr"
    p.write_bytes(b"keep")
    with pytest.raises(OSError) as e:
        _core.CheckpointFileWriter(str(p))
    assert e.value.errno == errno.EEXIST and p.read_bytes() == b"keep"
    with pytest.raises(OSError) as e:
        _core.CheckpointFileWriter(str(tmp_path / "no" / "x.ffr"))
    assert e.value.errno == errno.ENOENT


def test_bad_options_and_closed_writer(tmp_path):
    with pytest.raises(ValueError):
        _core.CheckpointFileWriter(str(tmp_path / "a.ffr"), buffer_bytes=1000)
    with pytest.raises(ValueError):
        _core.CheckpointFileWriter(str(tmp_path / "b.ffr"), buffers=1)
    w = _core.CheckpointFileWriter(str(tmp_path / "c.ffr"))
    with pytest.raises(ValueError):
        w.write_record([b"x"], 3, 0)  # piece_align not a power of two
    w.finish()
    with pytest.raises(ValueError, match="closed"):
        w.write_record([b"x"], 64, 0)
    with ffrecord.FileReader(str(tmp_path / "c.ffr")) as r:
        assert r.n == 0


def test_abort_and_destruction_remove_the_file(tmp_path):
    p = str(tmp_path / "x.ffr")
    w = _core.CheckpointFileWriter(p)
    w.write_record([_rand(5 << 20)], 64, 0)
    w.abort()
    assert not os.path.exists(p)
    w = _core.CheckpointFileWriter(p)
    w.write_record([b"abc"], 64, 0)
    del w
    assert not os.path.exists(p)


def test_buffered_fallback_writes_the_same_bytes(tmp_path):
    a = _rand(2_000_000, 3)
    out = []
    for direct in (True, False):
        p = str(tmp_path / f"{direct}.ffr")
        w = _core.CheckpointFileWriter(p, direct=direct)
        assert w.direct == direct or not direct
        w.write_record([a], 64, 0)
        w.finish()
        out.append(open(p, "rb").read())
    assert out[0] == out[1]


def test_write_record_releases_the_gil(tmp_path):
    w = _core.CheckpointFileWriter(str(tmp_path / "x.ffr"), direct=False)
    big = _rand(64 << 20, 4)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.0005)

    t = threading.Thread(target=count)
    t.start()
    try:
        before = len(ticks)
        for _ in range(4):
            w.write_record([big], 64, 0)
        during = len(ticks) - before
    finally:
        stop.set()
        t.join()
    w.abort()
    assert during > 3  # the other thread kept running while bytes were copied and hashed


def test_reader_reads_parts_in_place_and_names_the_first_bad_one(tmp_path):
    p = str(tmp_path / "x.ffr")
    big, small = _rand(9 << 20, 5), _rand(100_000, 6)  # big: several 4 MiB pieces
    w = _core.CheckpointFileWriter(p)
    w.write_record([big], 64, 0)
    _, _, _, offs, crcs, _ = w.write_record([small[:10], small[10:5000], small[5000:]], 64, 0)
    w.finish()
    r = _core.CheckpointFileReader(p)
    assert r.records == 2 and r.record_length(0) == big.size
    dst = [np.empty(big.size, np.uint8), np.empty(10, np.uint8), np.empty(4990, np.uint8), np.empty(95_000, np.uint8)]

    def read(crc_list, records=(0, 1, 1, 1), offsets=(0, *offs)):
        return r.read_verified(
            np.array(records, np.uint64), np.array(offsets, np.uint64), np.array([d.size for d in dst], np.uint64),
            np.array(crc_list, np.uint32), np.array([d.ctypes.data for d in dst], np.uint64),
        )

    good = [_core.crc32c(big), *crcs]
    assert read(good) == -1
    assert np.array_equal(dst[0], big) and np.array_equal(np.concatenate(dst[1:]), small)
    assert read([good[0], good[1], good[2] ^ 1, good[3]]) == 2  # a packed part
    assert read([good[0] ^ 1, *good[1:]]) == 0  # a large part, read in pieces
    with pytest.raises(IndexError):
        read(good, records=(0, 1, 1, 7))
    with pytest.raises(ffrecord.FormatError, match="outside"):
        read(good, offsets=(0, offs[0], offs[1], offs[2] + 1))
    with pytest.raises(IndexError):
        r.record_length(2)
    with pytest.raises(ValueError, match="equally long"):
        r.read_verified(np.zeros(1, np.uint64), np.zeros(2, np.uint64), np.zeros(1, np.uint64),
                        np.zeros(1, np.uint32), np.zeros(1, np.uint64))
