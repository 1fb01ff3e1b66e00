"""The on-disk layout of a checkpoint directory (docs/CHECKPOINT.md).

A checkpoint is a directory holding:

- ``manifest.ffr``: a record file with one record, the UTF-8 JSON manifest
  (format name and version, the object tree, the array table, the files);
- ``data-00000.ffr`` (and more when a file reaches its size limit): record
  files whose records hold tensor bytes. Records start on 4 KiB boundaries.
  A tensor of ``chunk_bytes`` or more is split into several records; tensors
  under ``pack_limit`` bytes are packed several to a record, each starting on
  a 64-byte boundary. Every part carries its own CRC32C in the manifest.

This module owns the names, the manifest's schema and its validation, and the
plan that maps arrays to records. Nothing here writes tensor bytes.
"""

import json
import os
import re

from ..errors import FormatError
from ..reader import FileReader
from ..writer import FileWriter

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "data_file_name",
    "is_checkpoint_dir",
    "plan_records",
    "write_manifest",
    "read_manifest",
]

MANIFEST_NAME = "manifest.ffr"
FORMAT_NAME = "ffrecord-checkpoint"
FORMAT_VERSION = 1

PIECE_ALIGN = 64  # packed tensors start on this boundary inside their record
PACK_LIMIT = 1 << 20  # tensors below this many bytes are packed together
PACK_BYTES = 8 << 20  # a pack record holds up to about this many bytes
CHUNK_BYTES = 256 << 20  # larger tensors are split into records of this size

MAX_MANIFEST_BYTES = 1 << 30

_DATA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}\.ffr$")


def data_file_name(k, prefix="data"):
    return f"{prefix}-{k:05d}.ffr"


def is_checkpoint_dir(path):
    """True if ``path`` is a directory with a checkpoint manifest (complete or not is
    for ``read_manifest`` to say)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST_NAME))


def plan_records(sizes, pack_limit=PACK_LIMIT, pack_bytes=PACK_BYTES, chunk_bytes=CHUNK_BYTES):
    """Maps arrays to records. ``sizes[i]`` is the byte size of array i.

    Returns a list of records, each a list of pieces ``(array, start, length)``:
    a large array becomes consecutive records of at most ``chunk_bytes``; small
    ones (< ``pack_limit``) share records of up to about ``pack_bytes``
    (padding included); empty arrays get no piece at all.
    """
    records, pack, pack_used = [], [], 0
    for i, n in enumerate(sizes):
        if n == 0:
            continue
        if n < pack_limit:
            need = -(-pack_used // PIECE_ALIGN) * PIECE_ALIGN + n if pack else n
            if pack and need > pack_bytes:
                records.append(pack)
                pack, need = [], n
            pack.append((i, 0, n))
            pack_used = need
            continue
        for start in range(0, n, chunk_bytes):
            records.append([(i, start, min(chunk_bytes, n - start))])
    if pack:
        records.append(pack)
    return records


def record_bytes(record):
    """Bytes a planned record occupies (pieces plus alignment padding)."""
    used = 0
    for k, (_, _, n) in enumerate(record):
        if k:
            used = -(-used // PIECE_ALIGN) * PIECE_ALIGN
        used += n
    return used


def write_manifest(directory, manifest):
    """Writes ``manifest`` (a JSON-serialisable dict) as ``directory/manifest.ffr``
    (FileWriter: temporary name, fsync, rename, directory fsync)."""
    body = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode("utf-8")
    with FileWriter(os.path.join(directory, MANIFEST_NAME), metadata={"format": FORMAT_NAME}) as w:
        w.write_one(body)


def read_manifest(directory, kind=None):
    """Reads and checks the manifest of the checkpoint in ``directory``.

    Raises FileNotFoundError when ``directory`` does not exist, FormatError when
    it is not a complete checkpoint (of ``kind``, when given), ChecksumError
    when the manifest is damaged.
    """
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise FormatError(f"{directory}: not a checkpoint (a checkpoint is a directory)")
        raise FileNotFoundError(2, "no checkpoint at this path", directory)
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FormatError(f"{directory}: not a checkpoint directory (no {MANIFEST_NAME})")
    with FileReader(path) as r:
        if r.n != 1:
            raise FormatError(f"{path}: a checkpoint manifest holds exactly one record, found {r.n}")
        if r.lengths([0])[0] > MAX_MANIFEST_BYTES:
            raise FormatError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        raw = r.read_one(0)
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{path}: manifest is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not an ffrecord checkpoint manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise FormatError(f"{path}: unsupported checkpoint format version {manifest.get('version')!r}")
    if kind is not None and manifest.get("kind") != kind:
        raise FormatError(f"{directory}: holds a checkpoint of kind {manifest.get('kind')!r}, expected {kind!r}")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise FormatError(f"{path}: manifest has no 'files' list")
    for f in files:
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str) or not _DATA_NAME.match(name) or name == MANIFEST_NAME:
            raise FormatError(f"{path}: bad data file entry {f!r}")
        size = f.get("size")
        full = os.path.join(directory, name)
        try:
            actual = os.stat(full).st_size
        except FileNotFoundError:
            raise FormatError(f"{directory}: data file {name} is missing") from None
        if actual != size:
            # A network client may still report a replaced file's old size:
            # the core's open waits for a consistent view (docs/SHARED_FS.md).
            actual = _opened_size(full)
        if actual != size:
            raise FormatError(f"{full}: {actual} bytes, the manifest says {size} (truncated or replaced?)")
    return manifest


def _opened_size(path):
    """The size of ``path`` as the core sees it once the file opens consistently."""
    with FileReader(path, check_data=False) as r:
        return r.file_info(0)["file_size"]

