"""``ffrecord convert``: a source in another format -> a directory of shards plus ``index.json``.

The lifecycle of one rank (every rank runs the same steps on its own):

1. Scan the source (deterministic order) and plan the shards: contiguous
   ranges of items sized by ``shard_size`` source bytes or ``records_per_shard``.
2. Claim the plan in ``DST/.ffrecord-convert/plan.json``; a directory holding
   a different conversion is refused.
3. For each shard this rank owns (shard ``i`` belongs to rank ``i % world``):
   skip it if the file exists, opens, and carries this plan's fingerprint and
   the expected record count; otherwise write it with ``FileWriter`` (a
   temporary file, fsynced and renamed on close, so a killed conversion leaves
   no partial shard under a final name) and record its size and CRC32C.
4. If every shard of the plan is now recorded, write ``index.json``
   atomically. Ranks that finish earlier leave it to the last one (see
   ``_finish`` for why one always sees every record); ``finalize(DST)``
   writes it from the records alone.

Rerunning the same command after a crash redoes only the missing shards and
ends with the same bytes as an uninterrupted run.
"""

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

from .. import FFRecordError, FileReader, FileWriter
from ..codec import train_dictionary
from . import distributed, manifest, plan, pool, progress
from .convert_state import STATE_DIR, ConvertState
from .errors import EnvironmentFailure, ToolError, UsageError
from .sources import detect_kind, open_source
from .sources.ffr import CONVERT_KEY

DEFAULT_SHARD_SIZE = plan.DEFAULT_SHARD_SIZE
DICT_SAMPLES = 2000
MAX_DICT_SIZE = 112640


@dataclass
class ConvertResult:
    dst: str
    shards: int  # in the whole plan
    written: list = field(default_factory=list)  # shard names this rank wrote
    skipped: list = field(default_factory=list)  # this rank's shards found complete
    records: int = 0  # in this rank's shards
    bytes: int = 0  # size of this rank's shard files (records, index, footer), done before or now
    source_bytes: int = 0  # record bytes this run took from the source (uncompressed)
    manifest_written: bool = False  # False: this rank left index.json to the rank that finishes last
    missing: list = field(default_factory=list)  # a shard not done yet (the check stops at the first)
    seconds: float = 0.0


@dataclass
class ShardJob:
    dst: str
    index: int
    name: str
    first: int
    count: int
    source: object
    locator: object
    has_keys: bool
    compression: Optional[str]
    dictionary: Optional[bytes]
    metadata: dict
    fingerprint: str
    kind: str


def convert(src, dst, kind=None, *, shard_size=None, records_per_shard=None, compression=None,
            zstd_dict=False, zstd_dict_file=None, workers=1, rank=None, world_size=None, show_progress=False,
            start_method="spawn", key_column=None):
    """Converts ``src`` into the dataset directory ``dst``; returns a ConvertResult.

    ``kind`` is a source kind (``ffrecord.tools.sources.KINDS``) or None to
    guess. ``shard_size`` (bytes of source data) and ``records_per_shard`` are
    exclusive; the default is 1 GiB shards. ``compression`` is None or
    ``'zstd[:level]'``; ``zstd_dict`` trains a dictionary on a sample of
    records, ``zstd_dict_file`` uses a dictionary from a file. ``rank`` and
    ``world_size`` default to the environment (see ``distributed``).
    ``start_method`` starts the worker processes (see ``pool.run``).
    ``key_column`` names the column of a table source that becomes the keys."""
    started = time.monotonic()
    rank, world = distributed.rank_and_world(rank, world_size)
    options = _options(shard_size, records_per_shard, compression, zstd_dict, zstd_dict_file, workers)
    src_path, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    if kind is None:
        kind = detect_kind(src_path)
    _check_dst(dst, src_path)
    exclude = dst if _inside(dst, os.path.abspath(src_path)) else None
    source = open_source(kind, src_path, exclude=exclude, key_column=key_column)

    inventory = source.scan(need_sizes=options["records_per_shard"] is None)
    if options["records_per_shard"] is not None:
        bounds = plan.by_records(inventory.count, options["records_per_shard"])
    else:
        bounds = plan.by_size(inventory.sizes, options["shard_size"])
    n_shards = len(bounds) - 1
    names = [plan.shard_name(i, n_shards) for i in range(n_shards)]
    shaping = {k: options[k] for k in ("compression", "zstd_dict", "shard_size", "records_per_shard")}
    if key_column is not None:  # only then, so plans of other sources keep their fingerprints
        shaping["key_column"] = key_column
    fingerprint = plan.fingerprint(source.kind, inventory.count, bounds, shaping)

    state = ConvertState(dst)
    os.makedirs(dst, exist_ok=True)
    state.claim_plan({
        "fingerprint": fingerprint,
        "kind": source.kind,
        "source": {"kind": source.kind, "path": source.path, "items": inventory.count, **inventory.details},
        "options": shaping,
        "metadata": inventory.metadata,
        "keys": inventory.has_keys,
        "count": inventory.count,
        "shards": n_shards,
        "bounds": bounds,
    })
    dictionary = _dictionary(state, source, inventory, options) if options["compression"] else None

    mine = distributed.owned(range(n_shards), rank, world)
    jobs = [
        ShardJob(dst=dst, index=i, name=names[i], first=bounds[i], count=bounds[i + 1] - bounds[i],
                 source=source, locator=source.locate(bounds[i], bounds[i + 1]), has_keys=inventory.has_keys,
                 compression=options["compression"], dictionary=dictionary, metadata=inventory.metadata,
                 fingerprint=fingerprint, kind=source.kind)
        for i in mine
    ]
    result = ConvertResult(dst=dst, shards=n_shards)
    total = sum(j.count for j in jobs)
    desc = f"convert {os.path.basename(src_path.rstrip('/')) or src_path}"
    if world > 1:
        desc += f" [rank {rank}/{world}]"
    with progress.bar(total, desc, enabled=show_progress) as bar:
        for k, (record, wrote) in pool.run(write_shard, jobs, options["workers"],
                                           lambda r, b: bar.update(r), start_method):
            (result.written if wrote else result.skipped).append(jobs[k].name)
            result.records += record["records"]
            result.bytes += record["bytes"]
            if wrote:
                result.source_bytes += record.get("raw_bytes") or 0
            if not wrote:
                bar.update(record["records"])
    result.written.sort()
    result.skipped.sort()
    # Others' shards first: this rank's are done, and the first missing one ends the check.
    others_first = [n for k, n in enumerate(names) if k % world != rank] + [names[k] for k in mine]
    result.manifest_written, result.missing = _finish(state, names, fingerprint, check_order=others_first)
    result.seconds = time.monotonic() - started
    return result


def finalize(dst):
    """Writes ``dst/index.json`` from the finished-shard records of a conversion.
    Raises ToolError naming the shards that are still missing."""
    dst = os.path.abspath(os.fspath(dst))
    state = ConvertState(dst)
    doc = state.load_plan() if os.path.isdir(dst) else None
    if doc is None:
        raise UsageError(f"{dst}: no conversion here to finalize (no {STATE_DIR}/plan.json)")
    names = [plan.shard_name(i, doc["shards"]) for i in range(doc["shards"])]
    written, missing = _finish(state, names, doc["fingerprint"])
    if not written:
        raise ToolError(
            f"{dst}: {len(missing)} of {len(names)} shards are missing (first: {missing[0]}); "
            "run the conversion for the ranks that own them"
        )
    return manifest.load(dst)


def write_shard(job, report):
    """Writes (or recognises as done) one shard; returns (shard record, wrote)."""
    state = ConvertState(job.dst)
    done = _existing_shard(job, state)
    if done is not None:
        return done, False
    path = os.path.join(job.dst, job.name)
    convert_meta = {"fingerprint": job.fingerprint, "shard": job.index, "first": job.first,
                    "source": job.kind, "tool": manifest.tool_version()}
    metadata = dict(job.metadata, **{CONVERT_KEY: convert_meta})
    raw = 0
    with FileWriter(path, job.count, compression=job.compression, zstd_dict=job.dictionary,
                    metadata=metadata) as w:
        for data, key in job.source.read(job.locator):
            if w.count == job.count:
                raise ToolError(f"{job.name}: the source yields more records than the scan found (did it change?)")
            w.write_one(data, key if job.has_keys else None)
            size = memoryview(data).nbytes
            raw += size
            report(1, size)
        if w.count != job.count:
            raise ToolError(
                f"{job.name}: the source yielded {w.count} records where the scan found {job.count} (did it change?)"
            )
        convert_meta["raw_bytes"] = raw
        w.set_metadata(metadata)
    size, crc = manifest.file_crc32c(path)
    record = {"path": job.name, "records": job.count, "first": job.first, "bytes": size,
              "raw_bytes": raw, "crc32c": crc, "fingerprint": job.fingerprint}
    state.save_shard(record)
    return record, True


# ---- internals ---------------------------------------------------------------
def _options(shard_size, records_per_shard, compression, zstd_dict, zstd_dict_file, workers):
    shard_size, records_per_shard, compression = plan.shard_options(
        shard_size, records_per_shard, compression, UsageError, names=("--shard-size", "--records-per-shard"))
    if (zstd_dict or zstd_dict_file) and compression is None:
        raise UsageError("--zstd-dict needs --compression zstd[:level]")
    if zstd_dict and zstd_dict_file:
        raise UsageError("give --zstd-dict or --zstd-dict-file, not both")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    dict_option = None
    if zstd_dict_file:
        try:
            with open(zstd_dict_file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"{zstd_dict_file}: cannot read the dictionary: {e.strerror}") from None
        if not data:
            raise UsageError(f"{zstd_dict_file}: the dictionary file is empty")
        dict_option = {"file": os.path.abspath(zstd_dict_file), "size": len(data)}
    elif zstd_dict:
        dict_option = {"trained": True}
    return {
        "shard_size": shard_size,
        "records_per_shard": records_per_shard,
        "compression": compression,
        "zstd_dict": dict_option,
        "workers": workers,
    }


def _inside(path, root):
    return os.path.commonpath([path, root]) == root


def _check_dst(dst, src):
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise UsageError(f"{dst}: exists and is not a directory (DST is the output directory)")
    if os.path.abspath(src) == dst:
        raise UsageError("SRC and DST are the same path")
    state = os.path.join(dst, STATE_DIR)
    if os.path.isdir(dst) and not os.path.exists(state):
        visible = [n for n in os.listdir(dst) if not n.startswith(".")]
        # Another rank creates the state before any shard: shards seen with the state
        # now present are that rank's work, not a foreign directory.
        if visible and not os.path.exists(state):
            raise UsageError(
                f"{dst}: not empty and holds no conversion to resume ({visible[0]}, ...); choose an empty directory"
            )


def _dictionary(state, source, inventory, options):
    choice = options["zstd_dict"]
    if choice is None:
        return None
    if "file" in choice:
        with open(choice["file"], "rb") as f:
            return f.read()
    existing = state.load_dictionary()
    if existing is not None:
        return existing
    n = inventory.count
    picks = sorted({(k * n) // min(n, DICT_SAMPLES) for k in range(min(n, DICT_SAMPLES))}) if n else []
    samples = [bytes(memoryview(d)) for i in picks for d, _ in source.read(source.locate(i, i + 1))]
    total = sum(len(s) for s in samples)
    size = max(1024, min(MAX_DICT_SIZE, total // 10))
    try:
        trained = train_dictionary(samples, size=size)
    except Exception as e:  # zstd's trainer raises its own error type
        raise ToolError(
            f"cannot train a zstd dictionary on {len(samples)} sampled records ({total} bytes): {e}; "
            "convert without --zstd-dict"
        ) from None
    return state.store_dictionary(trained)


def _existing_shard(job, state):
    """The shard's record if its file is complete and belongs to this plan, else
    None (absent, damaged or foreign: it is written again). An OSError while
    checking says nothing about the shard, so it fails the run instead: a
    complete shard is never rewritten because a mount misbehaved."""
    path = os.path.join(job.dst, job.name)
    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _environment(e, path, "look up the existing shard") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with FileReader([path], check_data=False) as r:
                info = r.file_info(0)
    except (FFRecordError, ValueError):
        return None  # damaged or not a record file
    except OSError as e:
        raise _environment(e, path, "open the existing shard to check it") from None
    meta = info["metadata"].get(CONVERT_KEY, {}) if isinstance(info["metadata"], dict) else {}
    if info["records"] != job.count or meta.get("fingerprint") != job.fingerprint or meta.get("shard") != job.index:
        return None
    record = state.load_shard(job.name)
    size = info["file_size"]
    if record is not None and record.get("fingerprint") == job.fingerprint and record.get("bytes") == size:
        return record
    # Finished but not recorded (stopped between the rename and the record): record it now.
    try:
        size, crc = manifest.file_crc32c(path)
    except OSError as e:
        raise _environment(e, path, "read the existing shard") from None
    record = {"path": job.name, "records": job.count, "first": job.first, "bytes": size,
              "raw_bytes": meta.get("raw_bytes"), "crc32c": crc, "fingerprint": job.fingerprint}
    state.save_shard(record)
    return record


def _environment(e, path, doing):
    return EnvironmentFailure.from_os_error(
        e, path, doing, "the filesystem refused, which says nothing about the shard, so it was not rewritten; "
                        "fix the mount or permissions and rerun")


def _finish(state, names, fingerprint, check_order=None):
    """Writes index.json when every shard is recorded; returns (written, missing names).

    Why the last rank always writes it, without locks and despite cached
    listings: records are found by opening their names (a name this client has
    not looked up before is asked of the server; a directory listing may be
    served from a cache that is seconds old), and each rank checks only after
    renaming its own records into place. So of two ranks finishing together,
    the one that checks later sees the other's records, and writes the
    manifest. Both may write it: the content is identical and each write is a
    rename of a complete temporary file. With ``check_order`` (the names in
    the order to look them up) the check stops at the first shard not done: an
    early rank learns that with a lookup or two, not one per shard."""
    if check_order is None:
        records, missing = state.finished(names, fingerprint)
    else:
        records, missing = state.finished(check_order, fingerprint, stop_at_missing=True)
        position = {n: k for k, n in enumerate(names)}
        records.sort(key=lambda rec: position[rec["path"]])
    if missing:
        return False, missing
    doc = state.load_plan()
    manifest.write(state.dst, manifest.build(
        records, source=doc["source"], options=doc["options"], metadata=doc.get("metadata", {}),
        keys=doc.get("keys", False), fingerprint=fingerprint,
    ))
    return True, []
