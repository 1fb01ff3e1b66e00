"""What every source kind provides to ``ffrecord convert``.

A source is read in two phases, possibly in different processes:

1. ``scan()`` runs once per rank, in the main process. It enumerates the
   source's items **in a deterministic order** (the order of the output) and
   returns an ``Inventory``: how many, optionally their sizes in bytes, whether
   they carry keys, and metadata to store in every shard.
2. ``locate(start, end)`` (main process, after ``scan``) turns a range of item
   positions into a small picklable *locator*; ``read(locator)`` (any process,
   on a copy of the source that holds only its constructor arguments) yields
   ``(data, key)`` for exactly those items, in order.

Every rank scans on its own, so ranks agree on the plan without talking, as
long as the source does not change meanwhile (if it does, record counts no
longer match and the shard writer refuses to finish the shard).
"""

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import ToolError, UsageError


@dataclass
class Inventory:
    count: int
    sizes: Optional[np.ndarray] = None  # int64 bytes per item; None when not asked for
    has_keys: bool = False
    metadata: dict = field(default_factory=dict)  # stored in every shard
    details: dict = field(default_factory=dict)  # described in index.json under "source"


class Source:
    """Base class; subclasses set ``kind`` and implement scan/locate/read."""

    kind = ""

    def __init__(self, path, **options):
        self._args = (path,)
        self._options = options
        self.path = os.path.abspath(os.fspath(path))
        self.options = options

    def __reduce__(self):
        # Workers get only the constructor arguments, never the scan results.
        return (_rebuild, (type(self), self._args, self._options))

    def scan(self, need_sizes):
        raise NotImplementedError

    def locate(self, start, end):
        raise NotImplementedError

    def read(self, locator):
        raise NotImplementedError

    # Helpers for subclasses -------------------------------------------------
    def require_dir(self):
        if not os.path.exists(self.path):
            raise UsageError(f"{self._args[0]}: no such file or directory")
        if not os.path.isdir(self.path):
            raise UsageError(f"{self._args[0]}: not a directory (--from {self.kind} reads a directory)")

    def require_file(self):
        if not os.path.exists(self.path):
            raise UsageError(f"{self._args[0]}: no such file or directory")
        if os.path.isdir(self.path):
            raise UsageError(f"{self._args[0]}: is a directory (--from {self.kind} reads a file)")


def _rebuild(cls, args, options):
    return cls(*args, **options)


def read_file(path):
    """The bytes of a source file; OS errors become one-line ToolErrors."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror}") from None


def walk_sorted(root, exclude=None):
    """Relative POSIX paths of the files under ``root``, depth first, sorted by
    name at every level (a stable order for any filesystem). Hidden entries
    (names starting with '.') are skipped; ``exclude`` is an absolute directory
    to leave out (the output, when it lies inside the source)."""
    out = []

    def onerror(e):
        raise ToolError(f"{e.filename}: cannot list: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith(".") or full == exclude:
                continue
            real = os.path.realpath(full)
            if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                continue  # a link back to an ancestor: following it would never end
            keep.append(d)
        dirnames[:] = keep
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            out.append(rel.replace(os.sep, "/"))
    return out


def file_sizes(root, rels):
    sizes = np.empty(len(rels), dtype=np.int64)
    for k, rel in enumerate(rels):
        try:
            sizes[k] = os.stat(os.path.join(root, rel)).st_size
        except OSError as e:
            raise ToolError(f"{os.path.join(root, rel)}: cannot stat: {e.strerror}") from None
    return sizes
