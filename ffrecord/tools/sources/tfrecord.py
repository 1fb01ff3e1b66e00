"""``--from tfrecord``: one record per entry of TFRecord files.

SRC is a ``.tfrecord`` file, a directory of them (``.tfrecord``, ``.tfrecords``
or ``.tfr``; recursive, sorted) or a glob. Each entry's payload (usually a
serialized ``tf.train.Example``) becomes one record, unchanged; no
TensorFlow is needed. An entry is framed as::

    length: u64 LE | masked CRC32C of the length bytes: u32 LE | payload | masked CRC32C of the payload: u32 LE

where ``masked(c) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2**32``. Both
checksums are verified (the length's during the scan, the payload's as it is
read); a mismatch raises ``ChecksumError`` and a cut-off entry ``FormatError``,
each naming the file and the entry. Compressed (GZIP/ZLIB) TFRecord files are
refused: decompress them first.
"""

import os
import struct

import numpy as np

from ... import ChecksumError, FormatError
from ..._core import crc32c
from ..errors import ToolError
from .base import Inventory, Source
from .table import find_files

SUFFIXES = (".tfrecord", ".tfrecords", ".tfr")
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"
_READ_BLOCK = 1 << 20


def masked_crc32c(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def scan_file(path):
    """(payload offsets, payload lengths) of every entry; checks each length's CRC."""
    offsets, lengths = [], []
    try:
        size = os.path.getsize(path)
        with open(path, "rb", buffering=_READ_BLOCK) as f:
            head = f.read(2)
            if head == _GZIP_MAGIC:
                raise FormatError(f"{path}: a compressed (GZIP) TFRecord file; decompress it first")
            f.seek(0)
            pos, entry = 0, 0
            while pos < size:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    raise FormatError(f"{path}: entry {entry} at byte {pos}: cut off inside its header")
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    raise ChecksumError(f"{path}: entry {entry} at byte {pos}: the length's checksum does not match "
                                        "(not a TFRecord file, compressed, or damaged)")
                start = pos + _HEADER.size
                end = start + length + _FOOTER.size
                if end > size:
                    raise FormatError(f"{path}: entry {entry} at byte {pos}: cut off ({length} payload bytes "
                                      f"announced, the file ends {end - size} bytes short)")
                offsets.append(start)
                lengths.append(length)
                f.seek(end)
                pos, entry = end, entry + 1
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror}") from None
    return np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


class TFRecordSource(Source):
    kind = "tfrecord"

    def __init__(self, path):
        super().__init__(path)
        self.files = find_files(path, SUFFIXES, "TFRecord")
        self._file_of = self._offsets = self._lengths = None

    def scan(self, need_sizes):
        file_of, offsets, lengths = [], [], []
        for f, path in enumerate(self.files):
            o, n = scan_file(path)
            file_of.append(np.full(o.size, f, dtype=np.int64))
            offsets.append(o)
            lengths.append(n)
        self._file_of = np.concatenate(file_of)
        self._offsets = np.concatenate(offsets)
        self._lengths = np.concatenate(lengths)
        return Inventory(count=int(self._offsets.size), sizes=self._lengths.copy() if need_sizes else None,
                         details={"files": len(self.files)})

    def locate(self, start, end):
        """[(file, first entry number in the file, [(offset, length), ...])] for items [start, end)."""
        out, k = [], start
        while k < end:
            f = int(self._file_of[k])
            file_start = int(np.searchsorted(self._file_of, f, side="left"))
            last = min(end, int(np.searchsorted(self._file_of, f, side="right")))
            spans = list(zip(self._offsets[k:last].tolist(), self._lengths[k:last].tolist()))
            out.append((f, k - file_start, spans))
            k = last
        return out

    def read(self, locator):
        for f, first_entry, spans in locator:
            path = self.files[f]
            try:
                with open(path, "rb", buffering=_READ_BLOCK) as fh:
                    for k, (offset, length) in enumerate(spans):
                        fh.seek(offset)
                        payload = fh.read(length + _FOOTER.size)
                        if len(payload) != length + _FOOTER.size:
                            raise FormatError(f"{path}: entry {first_entry + k}: cut off (the file shrank)")
                        (stored,) = _FOOTER.unpack_from(payload, length)
                        data = memoryview(payload)[:length]
                        if masked_crc32c(data) != stored:
                            raise ChecksumError(f"{path}: entry {first_entry + k} at byte {offset - _HEADER.size}: "
                                                "the payload's checksum does not match (damaged)")
                        yield data, None
            except OSError as e:
                raise ToolError(f"{path}: cannot read: {e.strerror}") from None
