"""FileWriter: streaming, atomic writes of v2 record files."""

import json
import warnings

import numpy as np

from . import _core
from .codec import Encoder, parse_compression

__all__ = ["FileWriter"]


class FileWriter:
    """Writes records to ``fname`` (format v2).

    ``n`` is optional: when given, a write beyond ``n`` records raises
    ``ValueError`` and writes nothing (the writer stays open, and closing it
    keeps the ``n`` records written), and ``close()`` checks that exactly ``n``
    records were written. Records are buffered into a hidden temporary file beside
    ``fname``; ``close()`` writes the index and footer, fsyncs and renames it
    into place, so ``fname`` never shows a partial file. Leaving a ``with``
    block through an exception, or calling ``abort()``, removes the temporary
    file and writes nothing.

    ``compression`` is None or ``'zstd'`` / ``'zstd:LEVEL'``; ``zstd_dict``
    (bytes, see ``ffrecord.codec.train_dictionary``) is stored in the file and
    used for every record. ``alignment`` (a power of two, e.g. 4096) starts
    every non-empty record on that boundary, for O_DIRECT reads. ``metadata``
    is any JSON-serialisable dict stored in the file.
    """

    def __init__(self, fname, n=None, *, compression=None, zstd_dict=None, alignment=1, metadata=None):
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
                raise TypeError(f"n must be an int or None, not {type(n).__name__}")
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
        if isinstance(alignment, bool) or not isinstance(alignment, (int, np.integer)):
            raise TypeError("alignment must be an int")
        codec, level = parse_compression(compression)
        if zstd_dict is not None and codec is None:
            raise ValueError("zstd_dict needs compression='zstd[:level]'")
        self._encoder = Encoder(level, zstd_dict) if codec else None
        self._metadata = None
        self._finished = False
        if metadata is not None:
            self.set_metadata(metadata)
        self.fname = fname
        self.n = n
        self._core = _core.Writer(str(fname), -1 if n is None else int(n), int(alignment))
        if self._encoder is not None and self._encoder.dictionary:
            self._core.set_dictionary(bytes(self._encoder.dictionary))

    @property
    def count(self):
        """Records written so far."""
        return self._core.count

    def set_metadata(self, metadata):
        """Stores ``metadata`` (a JSON-serialisable dict) in the file at close."""
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        self._metadata = json.dumps(metadata, sort_keys=True).encode("utf-8")

    def write_one(self, data, key=None):
        """Appends one record: bytes, bytearray, memoryview or a numpy array
        (any C-contiguous buffer). ``key`` (str) is kept for ``FileReader.find``."""
        self._check_open()
        if isinstance(data, str):
            raise TypeError("record data must be bytes-like (bytes, bytearray, memoryview, numpy array), not str")
        if isinstance(data, np.ndarray) and not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        self._check_room(1)
        try:
            if self._encoder is not None:
                self._core.write(self._encoder.encode(data), self._encoder.flags, key)
            else:
                self._core.write(data, 0, key)
        except TypeError:
            raise TypeError(
                f"record data must be bytes-like (bytes, bytearray, memoryview, numpy array), not {type(data).__name__}"
            ) from None

    def write_batch(self, datas, keys=None):
        """Appends each record of ``datas`` (and its key, if ``keys`` is given).
        A batch that would go beyond ``n`` records is refused whole when its
        length is known; from an iterator, the records up to ``n`` are written."""
        if hasattr(datas, "__len__"):
            self._check_open()
            self._check_room(len(datas))
        if keys is None:
            for d in datas:
                self.write_one(d)
            return
        datas, keys = list(datas), list(keys)
        if len(datas) != len(keys):
            raise ValueError(f"got {len(datas)} records but {len(keys)} keys")
        for d, k in zip(datas, keys):
            self.write_one(d, k)

    def write_packed(self, data, offsets, keys=None):
        """Appends ``len(offsets) - 1`` records held back to back in one buffer:
        record ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (the layout of
        ``FileReader.read_packed``, and of an Arrow binary column's values and
        offsets). ``keys``, if given, is a list of one str per record. Much
        faster than ``write_one`` for many small records: one call writes them
        all. A batch that would go beyond ``n`` records is refused whole."""
        self._check_open()
        if isinstance(data, str):
            raise TypeError("record data must be bytes-like (bytes, bytearray, memoryview, numpy array), not str")
        offsets = np.asarray(offsets)
        if offsets.ndim != 1 or not (offsets.dtype.kind in "iu" or offsets.size == 0):
            raise TypeError(f"offsets must be a 1-D array of integers, not {offsets.dtype} of shape {offsets.shape}")
        count = max(0, offsets.size - 1)
        if offsets.size and offsets.min() < 0:
            raise ValueError("offsets must not be negative")
        if keys is not None:
            keys = list(keys)
            if len(keys) != count:
                raise ValueError(f"got {count} records but {len(keys)} keys")
            for k in keys:
                if not isinstance(k, str):
                    raise TypeError(f"key must be a str, not {type(k).__name__}")
        self._check_room(count)
        if self._encoder is not None:  # each record is compressed on its own
            view = memoryview(data).cast("B")
            ends = offsets.tolist()
            for i in range(count):
                self.write_one(view[ends[i]:ends[i + 1]], None if keys is None else keys[i])
            return
        try:
            self._core.write_packed(data, offsets.astype(np.uint64, copy=False), 0, keys)
        except TypeError:
            raise TypeError(
                f"record data must be bytes-like (bytes, bytearray, memoryview, numpy array), not {type(data).__name__}"
            ) from None

    def close(self):
        """Finishes the file and makes it visible under its final name."""
        if not self._core.is_open:
            if self._finished:
                return
            raise ValueError(f"{self.fname}: the writer was aborted (after an error or abort()); nothing was written")
        if self._metadata is not None:
            self._core.set_metadata(self._metadata)
        self._core.close()
        self._finished = True

    def abort(self):
        """Discards everything written; nothing appears under ``fname``."""
        self._core.abort()

    @property
    def closed(self):
        return not self._core.is_open

    def _check_room(self, count):
        # Refused here, at the write, so the records already written stay a
        # valid file: close() still succeeds once exactly n have come.
        if self.n is not None and self.count + count > self.n:
            what = "one more record" if count == 1 else f"{count} more records"
            raise ValueError(
                f"{self.fname}: FileWriter was opened for n={self.n} records and holds {self.count}; "
                f"{what} would exceed n (nothing of it was written)"
            )

    def _check_open(self):
        if not self._core.is_open:
            raise ValueError(f"{self.fname}: write to a closed FileWriter")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        core = getattr(self, "_core", None)
        if core is not None and core.is_open:
            warnings.warn(
                f"FileWriter for {self.fname} was never closed; its records were discarded",
                ResourceWarning,
                stacklevel=2,
            )
            core.abort()

    def __repr__(self):
        state = "closed" if self.closed else f"{self.count} records"
        return f"<ffrecord.FileWriter {self.fname!s} {state}>"
