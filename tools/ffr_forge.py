"""Forging record files: take a v2 file apart, change any field, put it back
together with every checksum recomputed (docs/FORMAT.md).

A forged file passes the header, footer, index and aux checksums, so it
reaches the checks behind them: the ones a deliberate forger, not accidental
damage, would meet. Used by the structure-aware fuzzer (tools/fuzz_open.py)
and by tests that need such files.
"""

import struct
from dataclasses import dataclass, field

from ffrecord._core import crc32c

MAGIC = b"\x89FFR\r\n\x1a\n"
HEADER = struct.Struct("<8sIII8xI")  # magic, version, flags, alignment, header_crc
ENTRY = struct.Struct("<QQII")  # offset, length, crc, flags
FOOTER = struct.Struct("<QQQQQQQQIII8xI8s")
U64 = (1 << 64) - 1


def record_crc(stored, flags):
    return crc32c(struct.pack("<QI", len(stored), flags & 0xFFFFFFFF), crc32c(stored))


@dataclass
class Forged:
    """The parts of a v2 file. ``body`` is every byte between the header and
    the index; ``entries`` are [offset, length, crc, flags] lists into the
    whole file. ``footer`` overrides (name -> value) apply after layout."""

    alignment: int = 1
    body: bytearray = field(default_factory=bytearray)
    entries: list = field(default_factory=list)
    metadata: bytes = b""
    dictionary: bytes = b""
    keys: bytes = b""
    version: int = 2
    footer: dict = field(default_factory=dict)

    def add(self, stored, flags=0):
        """Appends a record (packed) with a correct index entry."""
        offset = 32 + len(self.body)
        self.body += stored
        self.entries.append([offset, len(stored), record_crc(stored, flags), flags])

    def reseal(self, i):
        """Recomputes entry ``i``'s record checksum over the bytes it now names
        (when they lie in the body)."""
        off, n, _, flags = self.entries[i]
        lo, hi = off - 32, off - 32 + n
        if 0 <= lo <= hi <= len(self.body):
            self.entries[i][2] = record_crc(bytes(self.body[lo:hi]), flags)

    def build(self):
        flags = 1 if self.alignment > 1 else 0
        head = struct.pack("<8sIII8x", MAGIC, self.version, flags, self.alignment)
        out = bytearray(head + struct.pack("<I", crc32c(head)))
        out += self.body
        out += b"\0" * (-len(out) % 8)
        index = b"".join(ENTRY.pack(*(v & (U64 if k < 2 else 0xFFFFFFFF) for k, v in enumerate(e)))
                         for e in self.entries)
        f = {"num_records": len(self.entries), "index_offset": len(out)}
        out += index
        f["meta_offset"], f["meta_length"] = len(out), len(self.metadata)
        out += self.metadata
        f["dict_offset"], f["dict_length"] = len(out), len(self.dictionary)
        out += self.dictionary
        f["keys_offset"], f["keys_length"] = len(out), len(self.keys)
        out += self.keys
        f["index_crc"] = crc32c(index)
        f["aux_crc"] = crc32c(self.keys, crc32c(self.dictionary, crc32c(self.metadata)))
        f.update(self.footer)
        names = ("num_records", "index_offset", "meta_offset", "meta_length", "dict_offset", "dict_length",
                 "keys_offset", "keys_length")
        body = struct.pack("<8Q", *(f[k] & U64 for k in names))
        body += struct.pack("<III8x", f["index_crc"] & 0xFFFFFFFF, f["aux_crc"] & 0xFFFFFFFF, self.version)
        out += body + struct.pack("<I", crc32c(body)) + MAGIC
        return bytes(out)


def parse(data):
    """A v2 file's parts, or None when ``data`` is not a well-formed v2 file."""
    if len(data) < 128 or data[:8] != MAGIC or data[-8:] != MAGIC:
        return None
    _, version, _, alignment, _ = HEADER.unpack_from(data, 0)
    ft = struct.unpack_from("<8Q", data, len(data) - 96)
    n, index_offset, meta_off, meta_len, dict_off, dict_len, keys_off, keys_len = ft
    end = len(data) - 96
    if n > end // 24 or index_offset + 24 * n > end:
        return None
    for off, length in ((meta_off, meta_len), (dict_off, dict_len), (keys_off, keys_len)):
        if off + length > end:
            return None
    entries = [list(ENTRY.unpack_from(data, index_offset + 24 * i)) for i in range(n)]
    return Forged(
        alignment=alignment or 1,
        body=bytearray(data[32:index_offset]),
        entries=entries,
        metadata=bytes(data[meta_off:meta_off + meta_len]),
        dictionary=bytes(data[dict_off:dict_off + dict_len]),
        keys=bytes(data[keys_off:keys_off + keys_len]),
        version=version,
    )
