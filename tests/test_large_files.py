"""64-bit offsets and lengths: records past 4 GiB and records over 2 GiB.

The first test builds a sparse file by hand with the independent encoder, so
it costs no disk space: record 0 is 3 GiB of zeros (a hole) and record 1 lies
past the 5 GiB mark. The second writes a real 2.2 GiB record through the writer.
"""

import struct

import numpy as np
import pytest

import ffrecord
from format_reference import entry, footer, header

GiB = 1 << 30


def _crc_of_zeros(n, chunk=256 << 20):
    zeros = np.zeros(chunk, dtype=np.uint8)
    crc = 0
    while n:
        k = min(n, chunk)
        crc = ffrecord._core.crc32c(zeros[:k], crc)
        n -= k
    return crc


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("large") / "sparse.ffr"
    big_len = 3 * GiB
    tail = b"bytes past the 5 GiB mark"
    tail_off = 5 * GiB + 123
    big_crc = ffrecord._core.crc32c(struct.pack("<QI", big_len, 0), _crc_of_zeros(big_len))
    tail_crc = ffrecord._core.crc32c(struct.pack("<QI", len(tail), 0), ffrecord._core.crc32c(tail))
    index = entry(32, big_len, big_crc) + entry(tail_off, len(tail), tail_crc)
    index_off = tail_off + len(tail)
    index_off += -index_off % 8
    with open(p, "wb") as f:
        f.write(header())
        f.seek(tail_off)
        f.write(tail)
        f.seek(index_off)
        f.write(index)
        end = index_off + len(index)
        f.write(footer(2, index_off, index, (end, b""), (end, b""), (end, b""), crc_fn=ffrecord._core.crc32c))
    return p, tail


def test_record_past_4_gib(sparse_file, engine):
    p, tail = sparse_file
    r = ffrecord.FileReader(p)
    assert r.file_info(0)["file_size"] > 5 * GiB
    assert r.read_one(1).tobytes() == tail
    assert r.lengths([0, 1]).tolist() == [3 * GiB, len(tail)]


def test_record_over_2_gib_reads_whole_and_verified(sparse_file):
    p, _ = sparse_file
    r = ffrecord.FileReader(p)
    big = r.read_one(0)
    assert big.size == 3 * GiB
    assert not big[:: 1 << 20].any() and not big[-1]


def test_writer_handles_a_record_over_2_gib(tmp_path):
    n = 2 * GiB + 200 * (1 << 20)
    data = np.zeros(n, dtype=np.uint8)
    data[-5:] = [1, 2, 3, 4, 5]
    p = tmp_path / "w.ffr"
    with ffrecord.FileWriter(p) as w:
        w.write_one(data)
        w.write_one(b"after")
    del data
    r = ffrecord.FileReader(p)
    assert r.lengths([0, 1]).tolist() == [n, 5]
    assert r.read_one(1).tobytes() == b"after"
    big = r.read_one(0)
    assert big[-5:].tolist() == [1, 2, 3, 4, 5] and big.size == n
