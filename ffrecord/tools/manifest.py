"""``index.json``: the manifest of a converted dataset, and durable JSON writes.

Readers (``ffrecord.dataset_paths``) need only ``"shards": [{"path": ...}]``
in order; ``ffrecord convert`` writes more so that ``validate`` and ``info``
can check and describe a dataset without opening every shard::

    {
      "format": "ffrecord-dataset", "manifest_version": 1, "tool": "ffrecord 2.0.0",
      "records": 1200, "bytes": 5242880, "raw_bytes": 5120000, "keys": true,
      "metadata": {...},              # user metadata, also stored in every shard
      "source": {"kind": "lmdb", "path": "/data/train.lmdb", "items": 1200, ...},
      "options": {"compression": "zstd:3", "zstd_dict": {...} | null,
                  "shard_size": 1073741824 | null, "records_per_shard": null},
      "fingerprint": "<32 hex>",
      "shards": [{"path": "shard-00000-of-00002.ffr", "records": 600, "first": 0,
                  "bytes": 2621440, "raw_bytes": 2560000, "crc32c": "1a2b3c4d"}, ...]
    }

``bytes`` and ``crc32c`` are the size and CRC32C of the whole shard file;
``first`` is the global index of the shard's first record.
"""

import json
import os

from .. import __version__
from .._atomic import write_bytes
from .._core import crc32c
from ..dataset_paths import MANIFEST_NAME, load_json

FORMAT = "ffrecord-dataset"
MANIFEST_VERSION = 1
_CHUNK = 8 << 20


def tool_version():
    return f"ffrecord {__version__}"


def write_json_atomic(path, doc):
    """Writes ``doc`` to ``path`` atomically and durably (``ffrecord._atomic``):
    readers on any node see the old file or the new one."""
    write_bytes(path, encode_json(doc))


def encode_json(doc):
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")


def file_crc32c(path):
    """(size, CRC32C as 8 hex digits) of a whole file, read in large chunks."""
    value, size = 0, 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            value = crc32c(view[:n], value)
            size += n
    return size, f"{value:08x}"


def build(shards, *, source, options, metadata, keys, fingerprint):
    """The manifest document for ``shards`` (shard records in order)."""
    return {
        "format": FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "tool": tool_version(),
        "records": sum(s["records"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "raw_bytes": sum(s.get("raw_bytes") or 0 for s in shards),
        "keys": bool(keys),
        "metadata": metadata,
        "source": source,
        "options": options,
        "fingerprint": fingerprint,
        "shards": [
            {k: s[k] for k in ("path", "records", "first", "bytes", "raw_bytes", "crc32c") if k in s}
            for s in shards
        ],
    }


def manifest_path(directory):
    return os.path.join(directory, MANIFEST_NAME)


def load(directory):
    """The manifest of a dataset directory, or None when it has none."""
    path = manifest_path(directory)
    if not os.path.exists(path):
        return None
    return load_json(path)


def write(directory, doc):
    """Writes the manifest unless the directory already holds these exact bytes:
    a rerun of a finished conversion (or a second rank finishing at the same
    time) leaves the file, its inode and its time as they were."""
    path = manifest_path(directory)
    data = encode_json(doc)
    try:
        with open(path, "rb") as f:
            if f.read(len(data) + 1) == data:
                return
    except FileNotFoundError:
        pass
    write_bytes(path, data)
