"""Record layouts written by ``ffrecord convert`` when one record holds more than raw bytes.

**labeled** (``--from imagefolder``): an 8-byte little-endian signed label,
then the image file's bytes unchanged::

    label: i64 | image bytes ...

**parts** (``--from tar`` / ``webdataset``): the files of one sample (e.g.
``jpg``, ``cls``, ``json``), each with its name (the extension)::

    count: u32 | count x (name_len: u16 | name: UTF-8 | size: u64) | payloads, in order

The layout a dataset uses is named in its metadata under ``"ffrecord.layout"``
(``"labeled"`` or ``"parts"``). ``decode_labeled`` and ``decode_parts`` undo
them and are meant as (part of) a ``decode`` function for ``RecordDataset``.
"""

import struct

import numpy as np

LAYOUT_KEY = "ffrecord.layout"
LABELED = "labeled"
PARTS = "parts"

_LABEL = struct.Struct("<q")
_COUNT = struct.Struct("<I")
_NAME_LEN = struct.Struct("<H")
_SIZE = struct.Struct("<Q")


def encode_labeled(data, label):
    """Image bytes + integer label -> one record."""
    return _LABEL.pack(int(label)) + bytes(data)


def decode_labeled(record):
    """One record -> (image bytes as a uint8 array view, label)."""
    buf = _as_array(record)
    if buf.size < _LABEL.size:
        raise ValueError(f"labeled record needs at least {_LABEL.size} bytes, got {buf.size}")
    (label,) = _LABEL.unpack_from(buf, 0)
    return buf[_LABEL.size:], label


def encode_parts(parts):
    """A list of (name, bytes) -> one record (names unique, order kept)."""
    header = [_COUNT.pack(len(parts))]
    for name, data in parts:
        raw = name.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError(f"part name too long: {name[:40]!r}...")
        header += [_NAME_LEN.pack(len(raw)), raw, _SIZE.pack(len(data))]
    return b"".join(header + [bytes(d) for _, d in parts])


def decode_parts(record):
    """One record -> dict name -> uint8 array (views of ``record``), in stored order."""
    buf = _as_array(record)
    try:
        (count,) = _COUNT.unpack_from(buf, 0)
        pos, spans = _COUNT.size, []
        for _ in range(count):
            (nlen,) = _NAME_LEN.unpack_from(buf, pos)
            pos += _NAME_LEN.size
            name = bytes(buf[pos:pos + nlen]).decode("utf-8")
            pos += nlen
            (size,) = _SIZE.unpack_from(buf, pos)
            pos += _SIZE.size
            spans.append((name, size))
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"not a parts record: {e}") from None
    out = {}
    for name, size in spans:
        if pos + size > buf.size:
            raise ValueError(f"not a parts record: part {name!r} runs past the end")
        out[name] = buf[pos:pos + size]
        pos += size
    if pos != buf.size:
        raise ValueError(f"not a parts record: {buf.size - pos} trailing bytes")
    return out


def _as_array(record):
    if isinstance(record, np.ndarray):
        return record.reshape(-1).view(np.uint8)
    return np.frombuffer(record, dtype=np.uint8)


def select_part(record, layout, part):
    """One part of a record as bytes: for ``labeled``, ``"image"`` (the image
    file's bytes) or ``"label"`` (the label as decimal text and a newline);
    for ``parts``, the payload of the part with that name. Raises KeyError
    naming the parts there are, ValueError when the layout has no parts."""
    if layout == LABELED:
        image, label = decode_labeled(record)
        if part == "image":
            return image.tobytes()
        if part == "label":
            return f"{label}\n".encode()
        raise KeyError(f"no part {part!r}; the labeled layout has 'image' and 'label'")
    if layout == PARTS:
        parts = decode_parts(record)
        if part not in parts:
            names = ", ".join(repr(n) for n in parts) or "none"
            raise KeyError(f"no part {part!r}; this record has {names}")
        return parts[part].tobytes()
    raise ValueError("its records have no parts (no layout recorded by ffrecord convert)")
