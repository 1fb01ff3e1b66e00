"""Damaged files and misuse give the documented exception, never a crash."""

import os
import struct

import numpy as np
import pytest

import ffrecord
from damage import flip_byte, truncate, write_file


@pytest.fixture
def small_file(tmp_path):
    recs = [os.urandom(n) for n in (10, 0, 33, 7, 100)]
    p = write_file(tmp_path / "s.ffr", recs, metadata={"k": "v"})
    return p, recs


def test_random_bytes_are_not_a_record_file(tmp_path):
    rng = np.random.default_rng(0)
    for size in (1, 12, 100, 5000):
        p = tmp_path / f"rand{size}.ffr"
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(ffrecord.FFRecordError) as e:
            ffrecord.FileReader(p)
        assert str(p) in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.ffr"
    p.write_bytes(b"")
    with pytest.raises(ffrecord.FormatError, match="not a record file"):
        ffrecord.FileReader(p)


def test_missing_file_and_directory_without_shards(tmp_path):
    with pytest.raises(FileNotFoundError):
        ffrecord.FileReader(tmp_path / "nope.ffr")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ffr files"):
        ffrecord.FileReader(tmp_path / "emptydir")


def test_truncated_at_every_byte_of_the_index_and_footer(small_file, tmp_path):
    p, _ = small_file
    data = p.read_bytes()
    index_offset = struct.unpack_from("<Q", data, len(data) - 96 + 8)[0]
    q = tmp_path / "t.ffr"
    for size in range(index_offset, len(data)):
        q.write_bytes(data[:size])
        with pytest.raises(ffrecord.FFRecordError):
            ffrecord.FileReader(q)


def test_truncated_file_names_truncation(small_file, tmp_path):
    p, _ = small_file
    q = tmp_path / "t.ffr"
    q.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ffrecord.FormatError, match="truncated"):
        ffrecord.FileReader(q)


def test_every_flipped_byte_of_index_and_footer_is_caught(small_file, tmp_path):
    p, _ = small_file
    data = p.read_bytes()
    index_offset = struct.unpack_from("<Q", data, len(data) - 96 + 8)[0]
    q = tmp_path / "f.ffr"
    for pos in list(range(0, 32)) + list(range(index_offset, len(data))):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        q.write_bytes(bytes(damaged))
        with pytest.raises(ffrecord.FFRecordError):
            ffrecord.FileReader(q)


def test_flipped_record_byte_raises_checksum_error_naming_the_record(small_file, engine):
    p, recs = small_file
    flip_byte(p, 32 + 10 + 0 + 5)  # inside record 2 (records 0 and 1 take 10 and 0 bytes)
    r = ffrecord.FileReader(p)
    assert r.read_one(0).tobytes() == recs[0]
    with pytest.raises(ffrecord.ChecksumError, match=r"record 2\b") as e:
        r.read([0, 2, 3])
    assert str(p) in str(e.value)
    loose = ffrecord.FileReader(p, check_data=False)
    got = loose.read_one(2).tobytes()
    assert got != recs[2] and len(got) == len(recs[2])


def test_file_replaced_after_open_keeps_serving_the_old_bytes(small_file, engine):
    # Writers replace files by rename, never in place: an open reader keeps its inode.
    p, recs = small_file
    r = ffrecord.FileReader(p)
    write_file(p, [b"new"])
    assert [a.tobytes() for a in r.read(range(5))] == recs
    assert ffrecord.FileReader(p).read_one(0).tobytes() == b"new"


def test_wrong_index_types(small_file):
    p, _ = small_file
    r = ffrecord.FileReader(p)
    for bad in (1.0, "1", None, True, [1.5], ["a"], [True], np.array([1.0]), np.zeros((2, 2), dtype=np.int64), {1}):
        with pytest.raises(TypeError):
            if isinstance(bad, (list, np.ndarray, set)):
                r.read(bad)
            else:
                r.read_one(bad)


def test_out_of_range_and_negative_indices(small_file):
    p, recs = small_file
    r = ffrecord.FileReader(p)
    assert r.read_one(-5).tobytes() == recs[0]
    for bad in (5, -6, 2**63, -(2**63)):
        with pytest.raises(IndexError):
            r.read_one(bad)
    for bad in ([0, 5], [-6], np.array([2**64 - 1], dtype=np.uint64), [2**70]):
        with pytest.raises(IndexError):
            r.read(bad)


def test_use_after_close(small_file):
    p, _ = small_file
    r = ffrecord.FileReader(p)
    r.close()
    r.close()
    for call in (lambda: r.read_one(0), lambda: r.read([0]), lambda: len(r), lambda: r.prefetch([[0]])):
        with pytest.raises(ValueError, match="closed"):
            call()
    w = ffrecord.FileWriter(p.parent / "w.ffr")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write_one(b"x")


def test_writer_rejects_wrong_types(tmp_path):
    with ffrecord.FileWriter(tmp_path / "x.ffr") as w:
        for bad in ("text", 5, None, [1, 2], object()):
            with pytest.raises(TypeError):
                w.write_one(bad)
        with pytest.raises(TypeError):
            w.write_one(b"x", key=5)
        w.write_one(b"ok")
    assert ffrecord.FileReader(tmp_path / "x.ffr").n == 1
    for bad_n in ("3", 2.0, True):
        with pytest.raises(TypeError):
            ffrecord.FileWriter(tmp_path / "y.ffr", bad_n)
    with pytest.raises(ValueError):
        ffrecord.FileWriter(tmp_path / "y.ffr", alignment=3)
    with pytest.raises(ValueError):
        ffrecord.FileWriter(tmp_path / "y.ffr", compression="lz4")
    assert sorted(os.listdir(tmp_path)) == ["x.ffr"]


def test_writer_count_mismatch_leaves_nothing(tmp_path):
    w = ffrecord.FileWriter(tmp_path / "n.ffr", 3)
    w.write_one(b"a")
    with pytest.raises(ValueError, match="expected 3 records, got 1"):
        w.close()
    assert os.listdir(tmp_path) == []


def test_exception_inside_with_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ffrecord.FileWriter(tmp_path / "x.ffr") as w:
            w.write_one(b"a" * 1000)
            raise RuntimeError("midway")
    assert os.listdir(tmp_path) == []


def test_unclosed_writer_is_discarded_with_a_warning(tmp_path):
    w = ffrecord.FileWriter(tmp_path / "x.ffr")
    w.write_one(b"a")
    with pytest.warns(ResourceWarning):
        w.__del__()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="aborted"):
        w.close()


def test_overwrite_keeps_old_file_until_close(tmp_path):
    p = write_file(tmp_path / "o.ffr", [b"old"])
    w = ffrecord.FileWriter(p)
    w.write_one(b"new")
    assert ffrecord.FileReader(p).read_one(0).tobytes() == b"old"
    w.close()
    assert ffrecord.FileReader(p).read_one(0).tobytes() == b"new"
