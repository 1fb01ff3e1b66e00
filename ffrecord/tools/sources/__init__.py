"""The source kinds ``ffrecord convert --from KIND`` reads, one module each.

``open_source(kind, path)`` builds a source; ``detect_kind(path)`` guesses the
kind from what SRC looks like, when ``--from`` is not given. The contract
every source follows is in ``base.py``.
"""

import glob
import os

from ..errors import UsageError
from .ffr import RecordFileSource
from .folder import FolderSource
from .imagefolder import ImageFolderSource
from .jsonl import SUFFIXES as JSONL_SUFFIXES, JsonlSource
from .lmdbenv import LmdbSource
from .npy import NpySource
from .tar import TAR_SUFFIXES, TarSource

SOURCES = {
    "folder": FolderSource,
    "imagefolder": ImageFolderSource,
    "tar": TarSource,
    "webdataset": TarSource,
    "lmdb": LmdbSource,
    "jsonl": JsonlSource,
    "npy": NpySource,
    "ffrecord": RecordFileSource,
}
KINDS = tuple(SOURCES)

# Kinds whose source is a directory tree the output must not lie in.
_TREE_KINDS = ("folder", "imagefolder")


def open_source(kind, path, exclude=None):
    """The source of ``kind`` at ``path``; UsageError for an unknown kind or missing path.
    ``exclude``: a directory inside a folder source to leave out."""
    cls = SOURCES.get(kind)
    if cls is None:
        raise UsageError(f"unknown source kind {kind!r}; choose one of: {', '.join(KINDS)}")
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
        raise UsageError(f"{p}: no such file or directory")
    if os.path.isdir(p):
        names = os.listdir(p)
        if "data.mdb" in names:
            return "lmdb"
        if "index.json" in names or any(n.endswith(".ffr") for n in names):
            return "ffrecord"
        if any(n.endswith(TAR_SUFFIXES) for n in names) and all(
            n.endswith(TAR_SUFFIXES) or n.startswith(".") or os.path.isdir(os.path.join(p, n)) for n in names
        ):
            return "tar"
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
    raise UsageError(f"{p}: cannot tell what kind of source this is; pass --from {{{','.join(KINDS)}}}")
