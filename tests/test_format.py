"""The v2 layout is pinned: golden bytes, an independent encoder, version detection."""

import json
import os
import struct

import numpy as np
import pytest

import ffrecord
from format_reference import MAGIC, crc32c_bitwise, encode, entry, footer, header, record_crc

VECTOR = os.path.join(os.path.dirname(__file__), "data", "vector_v2.ffr")
VECTOR_RECORDS = [b"", b"hello", bytes([0, 1, 2])]


def test_vector_matches_the_independent_encoder_byte_for_byte():
    expected = encode(VECTOR_RECORDS, keys=["a", "b", "c"], metadata=json.dumps({"name": "vector"}).encode())
    with open(VECTOR, "rb") as f:
        assert f.read() == expected


def test_writer_reproduces_the_vector(tmp_path):
    p = tmp_path / "v.ffr"
    with ffrecord.FileWriter(p, metadata={"name": "vector"}) as w:
        for r, k in zip(VECTOR_RECORDS, "abc"):
            w.write_one(r, key=k)
    with open(VECTOR, "rb") as f:
        assert p.read_bytes() == f.read()


def test_vector_parses():
    r = ffrecord.FileReader(VECTOR)
    assert r.n == 3
    assert [a.tobytes() for a in r.read([0, 1, 2])] == VECTOR_RECORDS
    assert [r.key(i) for i in range(3)] == ["a", "b", "c"]
    assert r.metadata == {"name": "vector"}
    info = r.file_info(0)
    assert info["version"] == 2 and info["alignment"] == 1 and info["file_size"] == 261


def test_header_and_footer_layout_of_the_vector():
    with open(VECTOR, "rb") as f:
        data = f.read()
    assert data[:8] == MAGIC and data[-8:] == MAGIC
    version, flags, alignment = struct.unpack_from("<III", data, 8)
    assert (version, flags, alignment) == (2, 0, 1)
    assert struct.unpack_from("<I", data, 28)[0] == crc32c_bitwise(data[:28])
    ft = data[-96:]
    n, index_offset = struct.unpack_from("<QQ", ft, 0)
    assert (n, index_offset) == (3, 40)
    assert struct.unpack_from("<I", ft, 84)[0] == crc32c_bitwise(ft[:84])
    off, length, crc, fl = struct.unpack_from("<QQII", data, index_offset + 24)
    assert (off, length, fl) == (32, 5, 0)
    assert crc == record_crc(b"hello")


def test_crc32c_known_answers():
    # RFC 3720 B.4 and the customary check value.
    core = ffrecord._core
    cases = [
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"123456789", 0xE3069283),
    ]
    for data, want in cases:
        assert core.crc32c(data) == want
        assert crc32c_bitwise(data) == want


def test_crc32c_hardware_lanes_agree_with_the_definition():
    rng = np.random.default_rng(1)
    core = ffrecord._core
    for n in [0, 1, 7, 8, 255, 256, 511, 512, 513, 767, 768, 769, 1024, 24575, 24576, 24577, 100_003]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert core.crc32c(data) == crc32c_bitwise(data)
        # Extension: crc(a + b) == crc(b, crc(a)) at every split.
        cut = n // 3
        assert core.crc32c(data[cut:], core.crc32c(data[:cut])) == core.crc32c(data)


@pytest.mark.parametrize("impl", ["table", "sse4.2"])
def test_every_crc32c_implementation_agrees(impl):
    # Long inputs exercise the folding path (when the CPU has it) and the
    # 3-lane path with its shift tables; each implementation is forced in a
    # subprocess and compared with the one this process chose.
    import subprocess
    import sys

    rng = np.random.default_rng(2)
    sizes = [3 * 8192 * 5 + 3 * 256 * 3 + 13, 256, 511, 512, 513, 4096 + 77, 1 << 20]
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    code = (
        "import sys, ffrecord; data = sys.stdin.buffer.read(); print(ffrecord._core.crc32c_impl()); "
        f"sizes = {sizes}; pos = 0\n"
        "for n in sizes:\n    print(ffrecord._core.crc32c(data[pos:pos + n], 7)); pos += n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=b"".join(blobs), capture_output=True,
        env=dict(os.environ, FFRECORD_CRC32C=impl), check=True,
    ).stdout.split()
    if impl == "sse4.2" and out[0] == b"table":
        pytest.skip("this CPU has no SSE4.2")
    assert out[0].decode() == impl
    assert [int(v) for v in out[1:]] == [ffrecord._core.crc32c(b, 7) for b in blobs]
    assert crc32c_bitwise(blobs[1], 7) == ffrecord._core.crc32c(blobs[1], 7)


def test_zlib_crc32_matches_zlib():
    import zlib

    for data in [b"", b"123456789", os.urandom(10_000)]:
        assert ffrecord._core.crc32(data) == zlib.crc32(data)


def test_alignment_pads_only_non_empty_records(tmp_path):
    p = tmp_path / "a.ffr"
    recs = [b"x" * 5, b"", b"y" * 4097, b"z"]
    with ffrecord.FileWriter(p, alignment=4096) as w:
        w.write_batch(recs)
    data = p.read_bytes()
    assert struct.unpack_from("<III", data, 8) == (2, 1, 4096)
    n, index_offset = struct.unpack_from("<QQ", data, len(data) - 96)
    offsets = [struct.unpack_from("<QQ", data, index_offset + 24 * i) for i in range(n)]
    assert [o for o, ln in offsets if ln] == [4096, 8192, 16384]
    r = ffrecord.FileReader(p)
    assert [a.tobytes() for a in r.read(range(4))] == recs


def test_unaligned_small_records_are_not_padded(tmp_path):
    p = tmp_path / "s.ffr"
    with ffrecord.FileWriter(p) as w:
        w.write_batch([b"ab"] * 100)
    assert p.stat().st_size == 32 + 200 + 0 + 100 * 24 + 96


def test_future_version_is_rejected_with_a_clear_error(tmp_path):
    p = tmp_path / "v3.ffr"
    data = bytearray(encode([b"abc"]))
    data[:32] = header(version=3)
    p.write_bytes(bytes(data))
    with pytest.raises(ffrecord.FormatError, match="unsupported format version 3"):
        ffrecord.FileReader(p)


def test_unknown_codec_is_rejected_at_open(tmp_path):
    p = tmp_path / "codec.ffr"
    rec = b"abc"
    idx = entry(32, 3, record_crc(rec, 9), 9)
    body = header() + rec + b"\0" * 5
    data = body + idx + footer(1, 40, idx, (64, b""), (64, b""), (64, b""))
    p.write_bytes(data)
    with pytest.raises(ffrecord.FormatError, match="unknown flags"):
        ffrecord.FileReader(p)


def test_reference_encoder_files_read_back(tmp_path):
    recs = [os.urandom(n) for n in (0, 1, 100, 3000)]
    p = tmp_path / "ref.ffr"
    p.write_bytes(encode(recs))
    assert [a.tobytes() for a in ffrecord.FileReader(p).read(range(4))] == recs
