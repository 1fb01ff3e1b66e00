"""The per-record table of one record file (start offsets and stored checksums),
read from the file's own index as docs/FORMAT.md lays it out.

The reader validated the file when it opened it; this reads the same bytes
again and checks only what it needs to stay inside the file, so a file
replaced in the meantime gives a FormatError, not a wild read."""

import os
import struct

import numpy as np

from .errors import FormatError

_V2_MAGIC = b"\x89FFR\r\n\x1a\n"
_V2_HEADER_SIZE = 32
_V2_FOOTER = struct.Struct("<QQ72x8s")  # num_records, index_offset, ..., magic (96 bytes)
_V2_ENTRY = np.dtype([("offset", "<u8"), ("length", "<u8"), ("crc", "<u4"), ("flags", "<u4")])
_V1_HEAD = struct.Struct("<IQ")  # meta_crc, N


def record_table(path):
    """``(offsets, checksums)`` of the file at ``path``: ``offsets`` holds N + 1
    int64 values, the start of each record and then the end of the last one;
    ``checksums`` the N stored uint32 checksums (v1: zlib CRC32 of the record;
    v2: CRC32C of the stored bytes, then of its length and flags)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(_V2_MAGIC)) == _V2_MAGIC:
            return _v2_table(f, path, size)
        return _v1_table(f, path, size)


def _read_at(f, path, offset, length):
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise FormatError(f"{path}: truncated (wanted {length} bytes at offset {offset})")
    return data


def _v1_table(f, path, size):
    _, n = _V1_HEAD.unpack(_read_at(f, path, 0, _V1_HEAD.size))
    if 12 + 12 * n > size:
        raise FormatError(f"{path}: v1 record table of {n} records does not fit in {size} bytes")
    crcs = np.frombuffer(_read_at(f, path, 12, 4 * n), dtype="<u4").astype(np.uint32)
    starts = np.frombuffer(_read_at(f, path, 12 + 4 * n, 8 * n), dtype="<i8")
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[:n] = starts
    offsets[n] = size  # in v1 the last record ends at the end of the file
    return offsets, crcs


def _v2_table(f, path, size):
    if size < _V2_HEADER_SIZE + _V2_FOOTER.size:
        raise FormatError(f"{path}: too short for a v2 record file")
    n, index_offset, magic = _V2_FOOTER.unpack(_read_at(f, path, size - _V2_FOOTER.size, _V2_FOOTER.size))
    if magic != _V2_MAGIC or n > size // _V2_ENTRY.itemsize or index_offset + n * _V2_ENTRY.itemsize > size:
        raise FormatError(f"{path}: bad v2 footer")
    index = np.frombuffer(_read_at(f, path, index_offset, n * _V2_ENTRY.itemsize), dtype=_V2_ENTRY)
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[:n] = index["offset"]
    offsets[n] = int(index["offset"][-1] + index["length"][-1]) if n else _V2_HEADER_SIZE
    return offsets, index["crc"].astype(np.uint32)
