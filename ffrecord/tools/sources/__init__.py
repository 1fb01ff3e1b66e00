"""The source kinds ``ffrecord convert --from KIND`` reads, one module each.

``open_source(kind, path)`` builds a source; ``detect_kind(path)`` guesses the
kind from what SRC looks like, when ``--from`` is not given. The contract
every source follows is in ``base.py``.
"""

import glob
import os

from ..errors import UsageError
from .arrowipc import SUFFIXES as ARROW_SUFFIXES, ArrowSource
from .ffr import RecordFileSource
from .hfdataset import HuggingFaceSource, is_saved_dataset
from .folder import FolderSource
from .imagefolder import ImageFolderSource
from .jsonl import SUFFIXES as JSONL_SUFFIXES, JsonlSource
from .lmdbenv import LmdbSource
from .npy import NpySource
from .parquet import SUFFIXES as PARQUET_SUFFIXES, ParquetSource
from .tar import TAR_SUFFIXES, TarSource
from .tfrecord import SUFFIXES as TFRECORD_SUFFIXES, TFRecordSource

SOURCES = {
    "folder": FolderSource,
    "imagefolder": ImageFolderSource,
    "tar": TarSource,
    "webdataset": TarSource,
    "lmdb": LmdbSource,
    "jsonl": JsonlSource,
    "npy": NpySource,
    "ffrecord": RecordFileSource,
    "parquet": ParquetSource,
    "arrow": ArrowSource,
    "hf": HuggingFaceSource,
    "tfrecord": TFRecordSource,
}
KINDS = tuple(SOURCES)

# Kinds whose source is a directory tree the output must not lie in.
_TREE_KINDS = ("folder", "imagefolder")
# Kinds whose rows have columns, one of which may be the key (--key-column).
TABLE_KINDS = ("parquet", "arrow", "hf")
# Single files recognised by their name: suffixes -> kind.
_FILE_SUFFIXES = ((PARQUET_SUFFIXES, "parquet"), (ARROW_SUFFIXES, "arrow"), (TFRECORD_SUFFIXES, "tfrecord"))


def open_source(kind, path, exclude=None, key_column=None):
    """The source of ``kind`` at ``path``; UsageError for an unknown kind or missing path.
    ``exclude``: a directory inside a folder source to leave out; ``key_column``:
    the column of a table source whose values become the keys."""
    cls = SOURCES.get(kind)
    if cls is None:
        raise UsageError(f"unknown source kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if key_column is not None and kind not in TABLE_KINDS:
        raise UsageError(f"--key-column applies to table sources ({', '.join(TABLE_KINDS)}), not to {kind}")
    if kind in TABLE_KINDS:
        return cls(path, key_column=key_column)
    if kind in _TREE_KINDS:
        return cls(path, exclude=exclude)
    return cls(path)


def detect_kind(path):
    """The kind SRC most likely is, from its name and contents; UsageError when unclear."""
    p = os.fspath(path)
    lower = p.lower()
    if not os.path.exists(p):
        if glob.has_magic(p):
            if lower.endswith(TAR_SUFFIXES):
                return "tar"
            if lower.endswith(JSONL_SUFFIXES):
                return "jsonl"
            for suffixes, kind in _FILE_SUFFIXES:
                if lower.endswith(suffixes):
                    return kind
        raise UsageError(f"{p}: no such file or directory")
    if os.path.isdir(p):
        names = os.listdir(p)
        if "data.mdb" in names:
            return "lmdb"
        if is_saved_dataset(p):
            return "hf"
        if "index.json" in names or any(n.endswith(".ffr") for n in names):
            return "ffrecord"
        if any(n.endswith(TAR_SUFFIXES) for n in names) and all(
            n.endswith(TAR_SUFFIXES) or n.startswith(".") or os.path.isdir(os.path.join(p, n)) for n in names
        ):
            return "tar"
        for suffixes, kind in _FILE_SUFFIXES:
            files = [n for n in names if not n.startswith((".", "_")) and not os.path.isdir(os.path.join(p, n))]
            if files and all(n.lower().endswith(suffixes) for n in files):
                return kind
        return "folder"
    if lower.endswith(".ffr"):
        return "ffrecord"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".npy"):
        return "npy"
    if lower.endswith(".mdb"):
        return "lmdb"
    for suffixes, kind in _FILE_SUFFIXES:
        if lower.endswith(suffixes):
            return kind
    raise UsageError(f"{p}: cannot tell what kind of source this is; pass --from {{{','.join(KINDS)}}}")
