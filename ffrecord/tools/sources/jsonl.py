"""``--from jsonl``: one record per line of JSON-lines files.

SRC is a file, a directory of ``*.jsonl`` / ``*.ndjson`` files (sorted) or a
glob pattern. Each non-empty line becomes one record: its bytes without the
line ending (``\\n`` or ``\\r\\n``), unchanged otherwise (not re-encoded, not
parsed). Empty lines are skipped.
"""

import glob
import os

import numpy as np

from ..errors import ToolError, UsageError
from .base import Inventory, Source

_CHUNK = 16 << 20
SUFFIXES = (".jsonl", ".ndjson", ".json")


def _line_spans(path):
    """(starts, lengths) of the non-empty lines of ``path``; a line's length
    excludes its ending (``\n`` or ``\r\n``)."""
    starts, lengths = [], []
    try:
        with open(path, "rb") as f:
            base = 0  # file offset of the chunk
            line_start = 0  # file offset where the current line began
            prev_last = 0  # last byte of the previous chunk
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                arr = np.frombuffer(chunk, dtype=np.uint8)
                nl_local = np.flatnonzero(arr == 10)
                if nl_local.size:
                    nl = nl_local + base
                    s = np.concatenate(([line_start], nl[:-1] + 1))
                    n = nl - s
                    before = np.where(nl_local > 0, arr[np.maximum(nl_local - 1, 0)], prev_last)
                    n = n - ((before == 13) & (n > 0))  # the '\r' of a '\r\n' ending
                    starts.append(s)
                    lengths.append(n)
                    line_start = int(nl[-1]) + 1
                prev_last = int(arr[-1])
                base += len(chunk)
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror}") from None
    if base > line_start:  # a last line without a newline, kept as it is
        starts.append(np.array([line_start]))
        lengths.append(np.array([base - line_start]))
    s = np.concatenate(starts).astype(np.int64) if starts else np.empty(0, np.int64)
    n = np.concatenate(lengths).astype(np.int64) if lengths else np.empty(0, np.int64)
    keep = n > 0
    return s[keep], n[keep]


class JsonlSource(Source):
    kind = "jsonl"

    def __init__(self, path):
        super().__init__(path)
        pattern = os.fspath(path)
        if os.path.isdir(self.path):
            names = sorted(n for n in os.listdir(self.path) if n.endswith(SUFFIXES) and not n.startswith("."))
            self.files = [os.path.join(self.path, n) for n in names]
            if not self.files:
                raise UsageError(f"{pattern}: directory holds no .jsonl files")
        elif os.path.exists(self.path):
            self.files = [self.path]
        elif glob.has_magic(pattern):
            self.files = sorted(os.path.abspath(p) for p in glob.glob(pattern))
            if not self.files:
                raise UsageError(f"{pattern}: no file matches")
        else:
            raise UsageError(f"{pattern}: no such file or directory")
        self._file_of = self._starts = self._lengths = None

    def scan(self, need_sizes):
        file_of, starts, lengths = [], [], []
        for f, path in enumerate(self.files):
            s, n = _line_spans(path)
            file_of.append(np.full(s.size, f, dtype=np.int64))
            starts.append(s)
            lengths.append(n)
        self._file_of = np.concatenate(file_of)
        self._starts = np.concatenate(starts)
        self._lengths = np.concatenate(lengths)
        return Inventory(count=int(self._starts.size), sizes=self._lengths.copy() if need_sizes else None,
                         details={"files": len(self.files)})

    def locate(self, start, end):
        """[(file, first byte, end byte, lines)] covering items [start, end)."""
        segments = []
        k = start
        while k < end:
            f = int(self._file_of[k])
            last = min(end, int(np.searchsorted(self._file_of, f, side="right")))
            byte_end = int(self._starts[last - 1] + self._lengths[last - 1])
            segments.append((f, int(self._starts[k]), byte_end, last - k))
            k = last
        return segments

    def read(self, locator):
        for f, begin, end, lines in locator:
            path = self.files[f]
            got = 0
            try:
                with open(path, "rb") as fh:
                    fh.seek(begin)
                    remaining = end - begin
                    while remaining > 0:
                        line = fh.readline(remaining)
                        if not line:
                            break
                        remaining -= len(line)
                        if line.endswith(b"\n"):
                            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                        if line:
                            got += 1
                            yield line, None
            except OSError as e:
                raise ToolError(f"{path}: cannot read: {e.strerror}") from None
            if got != lines:
                raise ToolError(f"{path}: has {got} lines where the scan found {lines} (the source changed)")
