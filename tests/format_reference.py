"""An independent, deliberately simple encoder of the v2 layout in docs/FORMAT.md.

It shares no code with the package: the tests compare its bytes with what the
writer produces, and use it to craft files the writer would never write.
"""

import struct

MAGIC = b"\x89FFR\r\n\x1a\n"


def crc32c_bitwise(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def header(alignment=1, version=2, crc=None):
    flags = 1 if alignment > 1 else 0
    body = MAGIC + struct.pack("<III8x", version, flags, alignment)
    return body + struct.pack("<I", crc32c_bitwise(body) if crc is None else crc)


def record_crc(data, flags=0, crc_fn=crc32c_bitwise):
    return crc_fn(struct.pack("<QI", len(data), flags), crc_fn(data))


def entry(offset, length, crc, flags=0):
    return struct.pack("<QQII", offset, length, crc, flags)


def footer(n, index_offset, index_bytes, meta=(0, b""), dict_=(0, b""), keys=(0, b""), crc_fn=crc32c_bitwise):
    aux = crc_fn(keys[1], crc_fn(dict_[1], crc_fn(meta[1])))
    body = struct.pack(
        "<QQQQQQQQIII8x",
        n, index_offset, meta[0], len(meta[1]), dict_[0], len(dict_[1]), keys[0], len(keys[1]),
        crc_fn(index_bytes), aux, 2,
    )
    return body + struct.pack("<I", crc_fn(body)) + MAGIC


def keys_block(keys):
    ends = [0]
    for k in keys:
        ends.append(ends[-1] + len(k.encode()))
    return struct.pack(f"<{len(ends)}Q", *ends) + "".join(keys).encode()


def encode(records, keys=None, metadata=b""):
    """A complete packed (alignment 1) v2 file holding `records`."""
    out = bytearray(header())
    index = bytearray()
    for r in records:
        index += entry(len(out), len(r), record_crc(r))
        out += r
    out += b"\0" * (-len(out) % 8)
    index_offset = len(out)
    out += index
    meta_at = len(out)
    out += metadata
    dict_at = len(out)
    kb = keys_block(keys) if keys else b""
    keys_at = len(out)
    out += kb
    out += footer(len(records), index_offset, bytes(index), (meta_at, metadata), (dict_at, b""), (keys_at, kb))
    return bytes(out)
