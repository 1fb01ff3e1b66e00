"""O_DIRECT reads return exactly what buffered reads return, for any size and offset."""

import gc
import glob
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffrecord
from damage import flip_byte, truncate, write_file

# Sizes around the 512-byte sector and 4 KiB page boundaries, plus a few
# larger ones; written back to back they start at odd offsets too.
ODD_SIZES = [0, 1, 7, 511, 512, 513, 4095, 4096, 4097, 8191, 8193, 12289, 65537, 1 << 20, (1 << 20) + 3, 3]


def records_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, s, dtype=np.uint8).tobytes() for s in sizes]


def read_all_ways(path, batches, **kwargs):
    """Every batch through read, read_packed, read_into and prefetch, buffered and direct."""
    out = {}
    for direct in (False, True):
        r = ffrecord.FileReader(path, direct=direct, **kwargs)
        read = [[a.tobytes() for a in r.read(b)] for b in batches]
        packed = []
        for b in batches:
            data, offsets = r.read_packed(b)
            packed.append([data[offsets[k]:offsets[k + 1]].tobytes() for k in range(len(b))])
        into = []
        for b in batches:
            bufs = [np.full(int(n) + 3, 0xAB, dtype=np.uint8) for n in r.lengths(b)]
            r.read_into(b, bufs)
            assert all((buf[-3:] == 0xAB).all() for buf in bufs)  # nothing written past the record
            into.append([buf[:-3].tobytes() for buf in bufs])
        pre = [[a.tobytes() for a in out_b] for out_b in r.prefetch(batches, depth=3)]
        packed_into = []
        for b in batches:
            buf = np.empty(int(r.lengths(b).sum()), dtype=np.uint8)
            offs = r.read_packed_into(b, buf)
            packed_into.append([buf[offs[k]:offs[k + 1]].tobytes() for k in range(len(b))])
        assert read == packed == into == pre == packed_into
        out[direct] = read
        r.close()
    return out


@pytest.mark.parametrize("alignment", [1, 4096])
def test_odd_sizes_and_offsets_match_buffered_reads(tmp_path, engine, alignment):
    recs = records_of(ODD_SIZES)
    path = write_file(tmp_path / "odd.ffr", recs, alignment=alignment)
    n = len(recs)
    rng = np.random.default_rng(1)
    batches = [
        list(range(n)),                   # adjacent records: merged into long reads
        list(range(n))[::-1],             # adjacent on disk, reversed in the batch
        [3, 3, 4, 3],                     # repeats
        [0, 15, 0],                       # empty records around a tiny one
        rng.integers(0, n, 40).tolist(),  # random
        [],
    ]
    got = read_all_ways(path, batches)
    assert got[True] == got[False]
    assert got[False] == [[recs[i] for i in b] for b in batches]


def test_runs_longer_than_the_merge_limit(tmp_path, engine):
    # 12 adjacent records of 700 KiB + 1: one batch spans several merged requests.
    recs = records_of([700 * 1024 + 1] * 12, seed=2)
    path = write_file(tmp_path / "long.ffr", recs)
    got = read_all_ways(path, [list(range(12)), [11, 0, 1, 2, 10]])
    assert got[True] == got[False] == [recs, [recs[i] for i in (11, 0, 1, 2, 10)]]


def test_v1_files_whose_last_record_ends_at_eof(golden_v1, engine):
    # v1 records run to the end of the file, so the last aligned read is cut short by EOF.
    paths = sorted(glob.glob(os.path.join(golden_v1, "*.ffr")))
    assert paths
    for p in paths:
        n = ffrecord.FileReader(p).n
        batches = [list(range(n)), [n - 1, 0, n - 1]] if n else [[]]
        got = read_all_ways(p, batches)
        assert got[True] == got[False]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 20000), min_size=1, max_size=40),
    picks=st.lists(st.integers(0, 10**6), max_size=60),
)
def test_property_direct_equals_buffered(tmp_path_factory, sizes, picks):
    recs = records_of(sizes, seed=len(sizes))
    path = write_file(tmp_path_factory.mktemp("p") / "p.ffr", recs)
    batch = [p % len(recs) for p in picks]
    plain = ffrecord.FileReader(path)
    direct = ffrecord.FileReader(path, direct=True)
    a = [x.tobytes() for x in plain.read(batch)]
    b = [x.tobytes() for x in direct.read(batch)]
    assert a == b == [recs[i] for i in batch]


def test_direct_results_are_writable_and_outlive_the_reader(tmp_path, engine):
    recs = records_of([5000, 3, 9000])
    path = write_file(tmp_path / "w.ffr", recs)
    r = ffrecord.FileReader(path, direct=True)
    out = r.read([2, 0])
    r.close()
    gc.collect()
    assert out[0].flags.writeable and out[0].dtype == np.uint8
    out[0][:4] = 0
    assert out[0][4:].tobytes() == recs[2][4:]
    assert out[1].tobytes() == recs[0]  # writing one record leaves its neighbour alone


def test_checksum_errors_in_direct_mode(tmp_path, engine):
    recs = records_of([3000, 5000, 70000], seed=5)
    path = write_file(tmp_path / "c.ffr", recs)
    offset = open(path, "rb").read().index(recs[1][:64])
    flip_byte(path, offset + 4321)
    with pytest.raises(ffrecord.ChecksumError, match="record 1"):
        ffrecord.FileReader(path, direct=True).read([0, 1, 2])
    out = ffrecord.FileReader(path, direct=True, check_data=False).read([0, 1, 2])
    assert out[0].tobytes() == recs[0] and out[2].tobytes() == recs[2]
    assert out[1].tobytes() != recs[1] and len(out[1]) == len(recs[1])


def write_v1(path, records):
    """A legacy v1 file (index first, records last), written byte by byte."""
    n = len(records)
    head = 4 + 8 + 12 * n
    offsets, pos = [], head
    for rec in records:
        offsets.append(pos)
        pos += len(rec)
    crcs = np.array([zlib.crc32(rec) for rec in records], dtype="<u4").tobytes()
    body = struct.pack("<Q", n) + crcs + np.array(offsets, dtype="<u8").tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<I", zlib.crc32(body)) + body + b"".join(records))
    return path, head


@pytest.mark.parametrize("direct", [False, True])
def test_file_truncated_after_open_gives_format_error(tmp_path, engine, direct):
    # A v1 file keeps its index in front, so cutting its tail leaves the index intact.
    recs = records_of([10000] * 8, seed=6)
    path, head = write_v1(tmp_path / "t.ffr", recs)
    r = ffrecord.FileReader(path, direct=direct)
    assert r.file_info()["version"] == 1
    truncate(path, head + 10000 * 5 + 17)  # cuts record 5; 6 and 7 are gone
    assert [a.tobytes() for a in r.read([0, 4])] == [recs[0], recs[4]]
    with pytest.raises(ffrecord.FormatError, match="record 5"):
        r.read([1, 5])
    with pytest.raises(ffrecord.FormatError, match="record 7"):
        r.read_into([7], [np.empty(10000, dtype=np.uint8)])
    with pytest.raises(ffrecord.FormatError, match="record 6"):
        list(r.prefetch([[0], [6]]))


@pytest.mark.parametrize("direct", [False, True])
def test_batches_shared_with_a_helper_thread(tmp_path, engine, monkeypatch, direct):
    # Batches of about 1 MiB: with FFRECORD_READ_HELPERS=1 an io_uring read is cut
    # into chunks that a pool helper may take; every engine must give the same bytes.
    monkeypatch.setenv("FFRECORD_READ_HELPERS", "1")
    rng = np.random.default_rng(7)
    recs = records_of(rng.integers(1, 40000, 300).tolist(), seed=8)
    recs[250] = b"y" * 30000
    path = write_file(tmp_path / "h.ffr", recs)
    r = ffrecord.FileReader(path, direct=direct)
    for _ in range(5):
        b = rng.integers(0, 250, 120)
        assert [a.tobytes() for a in r.read(b)] == [recs[i] for i in b]
    flip_byte(path, open(path, "rb").read().index(b"y" * 30000) + 29000)
    with pytest.raises(ffrecord.ChecksumError, match="record 250"):
        r.read(list(range(100, 300)))


def test_bad_helper_setting_is_a_value_error(tmp_path, monkeypatch):
    path = write_file(tmp_path / "s.ffr", [b"x" * 300000] * 4)
    monkeypatch.setenv("FFRECORD_READ_HELPERS", "lots")
    with pytest.raises(ValueError, match="FFRECORD_READ_HELPERS"):
        ffrecord.FileReader(path)  # checked at open
    monkeypatch.setenv("FFRECORD_READ_HELPERS", "0")
    r = ffrecord.FileReader(path, direct=True)
    monkeypatch.setenv("FFRECORD_READ_HELPERS", "lots")
    with pytest.raises(ValueError, match="FFRECORD_READ_HELPERS"):
        r.read([0, 2, 1, 3])  # and again by every batch the engine reads


def test_direct_alignment_is_the_kernels_and_used_for_reads(tmp_path):
    # The alignment comes from statx(STATX_DIOALIGN) where the kernel reports
    # it (often the 512-byte sector), else 4096; every read must still work
    # at it, including a record that straddles an alignment boundary.
    recs = records_of([100, 700, 3000, 5000, 9000])
    path = write_file(tmp_path / "a.ffr", recs)
    with ffrecord.FileReader(path, direct=True) as r:
        align = r.file_info(0)["direct_alignment"]
        assert align in (512, 1024, 2048, 4096)
        assert [a.tobytes() for a in r.read([4, 1, 2, 0, 3])] == [recs[i] for i in (4, 1, 2, 0, 3)]
    with ffrecord.FileReader(path) as r:
        assert "direct_alignment" not in r.file_info(0)
