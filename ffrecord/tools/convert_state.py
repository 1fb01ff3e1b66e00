"""The on-disk state that lets many ranks convert into one directory and resume.

It lives in ``DST/.ffrecord-convert/`` and is shared by every rank through the
filesystem:

- ``plan.json``: the plan (kind, shard boundaries, options, fingerprint). The
  first rank to arrive writes it; a later rank or a rerun with a different
  plan is refused, so shards of two conversions never mix.
- ``shards/<shard name>.json``: written by the rank that finished the shard,
  after the shard file was renamed into place: records, bytes, CRC32C of the
  file. The manifest is built from these records, so finishing it never
  re-reads the shards.
- ``zstd.dict``: the trained dictionary, created once (exclusively) so every
  rank, and every rerun, compresses with the same one.

Ranks on different nodes coordinate through this directory without locks:
``plan.json`` and ``zstd.dict`` are claimed by ``link()``, which the server
decides (the first one wins, a later one fails with EEXIST); every other file
has a single writer; temporary names carry host, pid and random bits; and
records are looked up by opening their names directly, never through a
directory listing, which a network client may cache for many seconds.
"""

import os
import time

from .._atomic import publish_once
from ..dataset_paths import load_json
from ..errors import FFRecordError
from .errors import EnvironmentFailure, ToolError, UsageError
from .manifest import encode_json, write_json_atomic

STATE_DIR = ".ffrecord-convert"
PUBLISHED_WAIT_S = 60  # beyond the directory attribute caches of common clients (sshfs 20 s, NFS acdirmax 60 s)


class ConvertState:
    def __init__(self, dst):
        self.dst = dst
        self.root = os.path.join(dst, STATE_DIR)
        self.shards_dir = os.path.join(self.root, "shards")

    def exists(self):
        return os.path.exists(os.path.join(self.root, "plan.json"))

    def prepare(self):
        os.makedirs(self.shards_dir, exist_ok=True)

    # ---- plan -------------------------------------------------------------
    def load_plan(self):
        path = os.path.join(self.root, "plan.json")
        if not os.path.exists(path):
            return None
        return load_json(path)

    def claim_plan(self, plan):
        """Stores ``plan`` unless one is there; refuses a different one."""
        self.prepare()
        path = os.path.join(self.root, "plan.json")
        if not os.path.exists(path) and _create_exclusive(path, plan):
            current = plan
        else:
            current = _read_published(path, load_json)
        if not isinstance(current, dict):
            raise UsageError(f"{path}: not a conversion plan; convert into an empty directory")
        if current.get("fingerprint") != plan["fingerprint"]:
            raise UsageError(
                f"{self.dst}: holds (part of) another conversion "
                f"({current.get('kind')} source, {current.get('shards')} shards, options {current.get('options')}); "
                "convert into an empty directory, or rerun with the same source and options to resume"
            )
        return current

    # ---- finished shards --------------------------------------------------
    def _record_path(self, name):
        return os.path.join(self.shards_dir, name + ".json")

    def load_shard(self, name):
        """The record of shard ``name``, or None when there is none (or it is
        damaged: the shard is then checked again). Opened by name: a fresh
        lookup, where a listing could be a cached, stale one."""
        path = self._record_path(name)
        try:
            doc = load_json(path)
        except FileNotFoundError:
            return None
        except (FFRecordError, ValueError):  # damaged (not JSON, not UTF-8)
            return None
        except OSError as e:
            raise EnvironmentFailure.from_os_error(
                e, path, "read this shard's record", "the filesystem refused; nothing was rewritten") from None
        return doc if isinstance(doc, dict) else None

    def save_shard(self, record):
        write_json_atomic(self._record_path(record["path"]), record)

    def finished(self, names, fingerprint, stop_at_missing=False):
        """(records in order, names missing) for the shards ``names``: a shard
        is finished when its record is there, is of this plan, and its file has
        the recorded size. ``stop_at_missing`` returns at the first missing one."""
        records, missing = [], []
        for name in names:
            rec = self.load_shard(name)
            if rec is None or rec.get("fingerprint") != fingerprint or self._size(name) != rec.get("bytes"):
                missing.append(name)
                if stop_at_missing:
                    break
            else:
                records.append(rec)
        return records, missing

    def _size(self, name):
        path = os.path.join(self.dst, name)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise EnvironmentFailure.from_os_error(e, path, "look it up", "the filesystem refused") from None

    # ---- dictionary -------------------------------------------------------
    def load_dictionary(self):
        path = os.path.join(self.root, "zstd.dict")
        if not os.path.exists(path):
            return None
        return _read_bytes(path)

    def store_dictionary(self, data):
        """Stores ``data`` unless another rank was first; returns the stored one."""
        self.prepare()
        path = os.path.join(self.root, "zstd.dict")
        return data if publish_once(path, data) else _read_published(path, _read_bytes)


def _create_exclusive(path, doc):
    """Publishes ``doc`` as ``path`` unless it exists; returns whether this call did."""
    return publish_once(path, encode_json(doc))


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _read_published(path, read):
    """Reads a file another rank just published. The server said it exists (our
    link lost), but this client may hold a cached "no such file" for the name
    (NFS caches negative lookups until the directory's attributes expire), so
    a miss is retried for up to PUBLISHED_WAIT_S before it is an error."""
    deadline = time.monotonic() + PUBLISHED_WAIT_S
    delay = 0.05
    while True:
        try:
            return read(path)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise ToolError(f"{path}: another rank created it, but it is still not visible here after "
                                f"{PUBLISHED_WAIT_S} s; check the shared filesystem and rerun") from None
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
