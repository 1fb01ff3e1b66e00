"""``ffrecord validate``: prove that record files and datasets are intact.

For every file: the header, footer and index are checked when it is opened;
then every record is read with checksum verification (and decompressed, so a
record that passes its CRC but does not decode is caught too). For a dataset
directory with ``index.json``, every listed shard must exist with the listed
record count, size and whole-file CRC32C.

Work is split by file across ranks (file ``k`` belongs to rank
``k % world``), and within a rank by record ranges across worker processes.
The result lists every problem found: a file that cannot be used at all
(``index`` None) or a single bad record (with its index and key).

Only the data can make a problem: a ``FormatError`` or ``ChecksumError``, a
missing file, or a count, size or whole-file checksum that differs from
``index.json``. An ``OSError`` (EIO, EACCES, ENODEV, ESTALE, ...) says nothing
about the data; it stops the run with ``EnvironmentFailure`` before anything is
written, so a flaky mount can never quarantine healthy shards.

``quarantine=True`` adds one report per dataset directory, naming the files
this rank checked and what was bad in them, to ``DIR/quarantine.d/``
(``ffrecord.quarantine``: no shared file is edited and no lock is needed, so
ranks on many nodes and reruns can report at once; readers of the directory
skip the union, where a file's newest report wins).
"""

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import ChecksumError, FFRecordError, FileReader
from .. import quarantine as quarantine_reports
from ..dataset_paths import MANIFEST_NAME, resolve
from . import distributed, manifest, pool, progress
from .errors import EnvironmentFailure, UsageError

CHUNK_BYTES = 256 << 20
BATCH_RECORDS = 512
BATCH_BYTES = 16 << 20


@dataclass
class Problem:
    path: str
    error: str
    index: Optional[int] = None  # None: the file as a whole
    key: Optional[str] = None
    whole_file_crc: bool = False  # only the file's CRC32C differs from index.json
    reason: str = "format"  # one of ffrecord.quarantine.REASONS

    def describe(self):
        where = self.path if self.index is None else f"{self.path}: record {self.index}"
        if self.key:
            where += f" (key {self.key!r})"
        return f"{where}: {self.error}"


@dataclass
class ValidateResult:
    files: int = 0  # files this rank checked
    records: int = 0
    bytes: int = 0  # record bytes read and checked against their CRC32C
    file_bytes: int = 0  # whole-file bytes read for the CRC32C that index.json lists
    problems: list = field(default_factory=list)
    quarantine_files: list = field(default_factory=list)  # quarantine reports written
    seconds: float = 0.0

    @property
    def ok(self):
        return not self.problems


@dataclass
class _Target:
    path: str
    dataset_dir: str  # where the quarantine report for this file goes
    entry: Optional[dict] = None  # its index.json entry


def validate(paths, *, workers=1, rank=None, world_size=None, quarantine=False, shard_crc=True,
             show_progress=False, start_method="spawn"):
    """Checks ``paths`` (files and dataset directories); returns a ValidateResult.
    ``start_method`` starts the worker processes (see ``pool.run``)."""
    started = time.monotonic()
    rank, world = distributed.rank_and_world(rank, world_size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UsageError("nothing to validate: give one or more files or dataset directories")
    result = ValidateResult()
    targets = []
    for p in paths:
        targets += _expand(os.fspath(p), result.problems)
    mine = distributed.owned(targets, rank, world)

    jobs = []
    split = workers if len(mine) < workers else 1  # few big files: split them across the workers
    for t in mine:
        jobs += _plan_file(t, result, shard_crc, split)
    # The bar counts every byte read, records and whole files alike, as the summary does.
    total = sum(j[3] for j in jobs)
    with progress.bar(total, "validate (bytes read)", unit="B", binary=True, enabled=show_progress) as bar:
        for k, (problems, records, nbytes) in pool.run(check_job, jobs, workers, lambda r, b: bar.update(b),
                                                       start_method):
            result.problems += problems
            result.records += records
            if jobs[k][0] == "crc":
                result.file_bytes += nbytes
            else:
                result.bytes += nbytes
    result.files = len(mine)
    # A bad record also changes its file's CRC32C; the record says more, so keep only it.
    with_bad_records = {p.path for p in result.problems if p.index is not None}
    result.problems = [p for p in result.problems if not (p.whole_file_crc and p.path in with_bad_records)]
    order = {t.path: k for k, t in enumerate(targets)}
    result.problems.sort(key=lambda p: (order.get(p.path, -1), -1 if p.index is None else p.index, p.error))
    if quarantine:
        result.quarantine_files = _write_quarantine(mine, result.problems)
    result.seconds = time.monotonic() - started
    return result


def check_job(job, report):
    """One unit of work: ('records', path, (start, end), bytes) or ('crc', path, expected, bytes)."""
    kind, path, arg, _ = job
    if kind == "crc":
        try:
            size, crc = manifest.file_crc32c(path)
        except OSError as e:
            raise _environment(e, path, "read it") from None
        report(0, size)
        if crc != arg:
            return [Problem(path, f"file CRC32C {crc} differs from {arg} in {MANIFEST_NAME}",
                            whole_file_crc=True, reason="checksum")], 0, size
        return [], 0, size
    start, end = arg
    problems, nbytes = [], 0
    try:
        with _open(path) as r:
            has_keys = r.file_info(0)["has_keys"]
            lengths = r.lengths(np.arange(start, end))
            batches = _batches(start, end, lengths)
            pos = 0
            while pos < len(batches):
                try:
                    for _ in r.prefetch(batches[pos:], depth=4):
                        size = int(lengths[batches[pos].start - start:batches[pos].stop - start].sum())
                        nbytes += size
                        report(len(batches[pos]), size)
                        pos += 1
                except FFRecordError:
                    # Some record of this batch is bad: find which, one by one.
                    for i in batches[pos]:
                        try:
                            r.read_one(i)
                        except FFRecordError as e:
                            problems.append(Problem(path, _reason(e, path), i, r.key(i) if has_keys else None,
                                                    reason=_kind(e)))
                    size = int(lengths[batches[pos].start - start:batches[pos].stop - start].sum())
                    nbytes += size
                    report(len(batches[pos]), size)
                    pos += 1
    except OSError as e:
        raise _environment(e, path, "read its records") from None
    return problems, end - start, nbytes


# ---- internals ---------------------------------------------------------------
def _open(path):
    # A list of one: the path is a record file, never taken for a dataset directory.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FileReader([path], check_data=True)


def _environment(e, path, doing):
    return EnvironmentFailure.from_os_error(
        e, path, doing, "the filesystem refused, which says nothing about the data: "
                        "nothing was judged and no quarantine was written; fix the mount or permissions and rerun")


def _stat(path):
    """os.stat(path), or None when it does not exist; any other OSError is the environment's."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _environment(e, path, "look it up") from None


def _kind(exc):
    return "checksum" if isinstance(exc, ChecksumError) else "format"


def _reason(exc, path):
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _batches(start, end, lengths):
    out, i = [], start
    cum = np.cumsum(lengths)
    while i < end:
        base = cum[i - start - 1] if i > start else 0
        take = int(np.searchsorted(cum, base + BATCH_BYTES, side="right")) - (i - start)
        take = max(1, min(take, BATCH_RECORDS, end - i))
        out.append(range(i, i + take))
        i += take
    return out


def _expand(path, problems):
    """The files to check for one PATH; manifest problems go to ``problems``."""
    st = _stat(path)
    if st is None:
        raise UsageError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        return [_Target(path, os.path.dirname(os.path.abspath(path)))]
    manifest_path = os.path.join(path, MANIFEST_NAME)
    try:
        ds = resolve(path)
    except FFRecordError as e:
        # A broken index.json (or quarantine report): report it, and still check the directory's shards.
        named = str(e).split(": ", 1)[0]
        where = named if named.startswith(path) else path
        problems.append(Problem(where, _reason(e, where)))
        try:
            names = sorted(n for n in os.listdir(path) if n.endswith(".ffr") and not n.startswith("."))
        except OSError as e:
            raise _environment(e, path, "list it") from None
        return [_Target(os.path.join(path, n), path) for n in names]
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise _environment(e, path, "read the dataset directory") from None
    if ds.manifest is None:
        return [_Target(p, path) for p in sorted(ds.paths + ds.skipped_files)]  # quarantined files too
    entries = ds.manifest["shards"]
    counted = ds.manifest.get("records")
    listed = sum(e.get("records", 0) for e in entries if isinstance(e.get("records"), int))
    if isinstance(counted, int) and counted != listed:
        problems.append(Problem(manifest_path, f"says {counted} records but its shards add up to {listed}"))
    return [_Target(os.path.join(path, e["path"]), path, e) for e in entries]


def _plan_file(t, result, shard_crc, split):
    """Jobs for one file, after the checks that need no record reads. The
    records are cut into ranges of about CHUNK_BYTES, and into at least
    ``split`` ranges when the file is large enough to be worth it."""
    if _stat(t.path) is None:
        where = f" (listed in {MANIFEST_NAME})" if t.entry is not None else ""
        result.problems.append(Problem(t.path, f"missing{where}", reason="missing"))
        return []
    try:
        with _open(t.path) as r:
            info = r.file_info(0)
            lengths = r.lengths(np.arange(r.n)) if r.n else np.empty(0, np.uint64)
    except FFRecordError as e:
        result.problems.append(Problem(t.path, _reason(e, t.path), reason=_kind(e)))
        return []
    except OSError as e:
        raise _environment(e, t.path, "open it") from None
    n, size = info["records"], info["file_size"]
    jobs = []
    if t.entry is not None:
        want_n, want_size = t.entry.get("records"), t.entry.get("bytes")
        if want_n is not None and want_n != n:
            result.problems.append(Problem(t.path, f"holds {n} records; {MANIFEST_NAME} says {want_n}",
                                           reason="mismatch"))
        if want_size is not None and want_size != size:
            result.problems.append(Problem(t.path, f"is {size} bytes; {MANIFEST_NAME} says {want_size}",
                                           reason="mismatch"))
        elif shard_crc and t.entry.get("crc32c"):
            jobs.append(("crc", t.path, t.entry["crc32c"], size))
    data_bytes = int(lengths.sum())
    pieces = max(1, min(n, max(data_bytes // CHUNK_BYTES, split if data_bytes > 4 * BATCH_BYTES else 1)))
    edges = np.linspace(0, n, pieces + 1).astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a or n == 0:
            jobs.append(("records", t.path, (int(a), int(b)), int(cum[b] - cum[a])))
    return jobs


def _write_quarantine(targets, problems):
    """Adds one quarantine report per dataset directory of ``targets``; returns their paths."""
    by_dir = {}
    for t in targets:
        by_dir.setdefault(os.path.abspath(t.dataset_dir), set()).add(os.path.basename(t.path))
    written = []
    for directory, checked in by_dir.items():
        records, files = [], []
        for p in problems:
            name = os.path.basename(p.path)
            if name not in checked or os.path.dirname(os.path.abspath(p.path)) != directory:
                continue
            entry = {"file": name, "reason": p.reason, "error": p.error}
            if p.index is None:
                files.append(entry)
            else:
                entry["index"] = p.index
                if p.key:
                    entry["key"] = p.key
                records.append(entry)
        try:
            path = quarantine_reports.write_report(directory, checked, records, files, manifest.tool_version())
        except OSError as e:
            raise EnvironmentFailure.from_os_error(
                e, e.filename or directory, "write the quarantine report",
                "no report was written; rerun once the directory is writable") from None
        if path is not None:
            written.append(path)
    return written
