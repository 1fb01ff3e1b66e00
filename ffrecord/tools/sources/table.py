"""What the table-shaped sources (Parquet, Arrow IPC, Hugging Face) share.

A table source is a list of files, each a sequence of *chunks* whose row
counts are known without reading the rows (Parquet row groups, Arrow record
batches). Rows become records through ``ffrecord.tools.columns`` (one value
column's bytes, or the ``parts`` layout), optionally keyed by ``key_column``.
Every file must have the same columns of the same types.
"""

import glob
import itertools
import os

import numpy as np

from ..columns import ColumnError, RowEncoder, arrow_columns
from ..errors import ToolError, UsageError
from .base import Inventory, Source


def pyarrow_module():
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - depends on the environment
        raise UsageError("this source needs the 'pyarrow' package: pip install 'ffrecord[arrow]'") from None
    return pyarrow


def find_files(path, suffixes, what):
    """A file, the matching files under a directory (recursive, sorted; names
    starting with '.' or '_' skipped, as engines write such markers), or a glob."""
    pattern = os.fspath(path)
    full = os.path.abspath(pattern)
    if os.path.isdir(full):
        found = []
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
            found += [os.path.join(dirpath, n) for n in sorted(filenames)
                      if n.lower().endswith(suffixes) and not n.startswith((".", "_"))]
        if not found:
            raise UsageError(f"{pattern}: directory holds no {what} files ({', '.join(suffixes)})")
        return found
    if os.path.exists(full):
        return [full]
    if glob.has_magic(pattern):
        found = sorted(os.path.abspath(p) for p in glob.glob(pattern) if os.path.isfile(p))
        if not found:
            raise UsageError(f"{pattern}: no file matches")
        return found
    raise UsageError(f"{pattern}: no such file or directory")


class TableSource(Source):
    """Subclasses set ``files`` in ``__init__`` and implement ``open_file``,
    ``schema``, ``chunk_rows`` and ``read_chunk``."""

    def __init__(self, path, key_column=None):
        super().__init__(path, key_column=key_column)
        self.key_column = key_column
        self.files = []
        self._chunks = None  # (file, chunk, first row in file, rows) per chunk, in order
        self._encoder = None

    # ---- per format -------------------------------------------------------
    def open_file(self, path):
        raise NotImplementedError

    def schema(self, handle):
        raise NotImplementedError

    def chunk_rows(self, handle):
        raise NotImplementedError

    def read_chunk(self, handle, chunk):
        """A pyarrow Table or RecordBatch holding the chunk's rows."""
        raise NotImplementedError

    def extra_metadata(self):
        return {}

    # ---- the Source contract ----------------------------------------------
    def _open(self, f):
        path = self.files[f]
        try:
            return self.open_file(path)
        except OSError as e:
            raise ToolError(f"{path}: cannot read: {e.strerror or e}") from None
        except Exception as e:  # pyarrow's own errors: not a file of this format
            raise ToolError(f"{path}: not a readable {self.kind} file: {e}") from None

    def _encoder_for(self, handle):
        return RowEncoder(arrow_columns(self.schema(handle)), key=self.key_column)

    def _prepare(self):
        """Reads the schemas and chunk sizes of every file (metadata only)."""
        chunks, encoder, first_columns = [], None, None
        for f, path in enumerate(self.files):
            handle = self._open(f)
            try:
                enc = self._encoder_for(handle)
            except ColumnError as e:
                raise UsageError(f"{path}: {e}") from None
            columns = [(enc.key, enc.key_tag)] + enc.values
            if encoder is None:
                encoder, first_columns = enc, columns
            elif columns != first_columns:
                raise ToolError(f"{path}: its columns {columns} differ from those of {self.files[0]} "
                                f"{first_columns}; every file must have the same columns")
            start = 0
            for c, rows in enumerate(self.chunk_rows(handle)):
                if rows:
                    chunks.append((f, c, start, int(rows)))
                start += int(rows)
        self._chunks, self._encoder = chunks, encoder

    def scan(self, need_sizes):
        self._prepare()
        count = sum(c[3] for c in self._chunks)
        sizes = None
        if need_sizes:
            sizes = np.empty(count, dtype=np.int64)
            pos = 0
            for record, _ in self._records(self._chunks):
                sizes[pos] = len(record)
                pos += 1
        metadata = dict(self._encoder.metadata(), **self.extra_metadata())
        return Inventory(count=count, sizes=sizes, has_keys=self._encoder.key is not None, metadata=metadata,
                         details={"files": len(self.files), "key_column": self.key_column})

    def locate(self, start, end):
        """[(file, chunk, first row in file, rows, skip, take)] covering items [start, end)."""
        out, pos = [], 0
        for f, c, first, rows in self._chunks:
            lo, hi = max(start, pos), min(end, pos + rows)
            if lo < hi:
                out.append((f, c, first, rows, lo - pos, hi - lo))
            pos += rows
            if pos >= end:
                break
        return out

    def read(self, locator):
        if self._encoder is None:  # a worker's copy: built from the constructor arguments only
            self._encoder = self._encoder_for(self._open(0))
        yield from self._records(locator)

    def _records(self, segments):
        handle, open_f = None, None
        for seg in segments:
            f, c, first, rows = seg[:4]
            skip, take = (seg[4], seg[5]) if len(seg) > 4 else (0, rows)
            if f != open_f:
                handle, open_f = self._open(f), f
            try:
                table = self.read_chunk(handle, c)
            except OSError as e:
                raise ToolError(f"{self.files[f]}: cannot read: {e.strerror or e}") from None
            except Exception as e:
                raise ToolError(f"{self.files[f]}: cannot read rows {first}..{first + rows - 1}: {e}") from None
            if table.num_rows != rows:
                raise ToolError(f"{self.files[f]}: a chunk holds {table.num_rows} rows where the scan found {rows} "
                                "(the source changed)")
            try:
                rows = self._encoder.encode_arrow(table.slice(skip, take))  # the chunk at once, column by column
            except ColumnError as e:
                raise ToolError(f"{self.files[f]}: row {first + skip + e.row}: {e}") from None
            yield from zip(rows.records(), rows.keys or itertools.repeat(None))
