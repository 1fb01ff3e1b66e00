"""The quarantine of a dataset directory: which records and files readers skip.

``ffrecord validate --quarantine`` never edits a shared file. Each run (each
rank) writes one **report** of its own into ``DIR/quarantine.d/``, under a name
no other writer can pick (``<order>-<host>-<pid>-<random>.json``, written to a
temporary name, fsynced and renamed), so ranks on different nodes can report
at the same moment and no finding is ever lost: there is no read-modify-write
and no lock to trust (``fcntl`` locks are node-local on FUSE mounts and
optional on NFS). A report::

    {
     "format": "ffrecord-quarantine", "version": 2, "tool": "ffrecord 2.0.0",
     "order": 1765101234567890123, "writer": "node7-4242-5f0c1a2b3c4d",
     "checked": ["shard-00000-of-00004.ffr", "shard-00002-of-00004.ffr"],
     "records": [{"file": "shard-00000-of-00004.ffr", "index": 17, "key": "img17",
                  "reason": "checksum", "error": "checksum mismatch in record 17"}],
     "files": [{"file": "shard-00002-of-00004.ffr", "reason": "format",
                "error": "truncated or unfinished: no footer magic at the end of the file"}]
    }

``checked`` lists every file the run checked, sound ones included; ``records``
and ``files`` are the bad records and the files unusable as a whole among them.
``reason`` is ``checksum`` (a record or whole-file checksum does not match),
``format`` (not a valid record file: truncated, bad header or index),
``missing`` (listed in ``index.json`` but absent) or ``mismatch`` (record count
or size differs from ``index.json``).

**The quarantine in force** is the union over the reports: for each file, the
entries of the newest report that checked it. So a later validation of a file
supersedes every earlier finding about it (a repaired file found sound is no
longer quarantined), and reports about other files are untouched. Reports are
ordered by ``(order, writer)``; ``order`` is the writer's clock in nanoseconds,
raised above every report the writer could see, so a rerun always orders after
the reports it saw, whatever the clocks of the nodes say.

A dataset from an older version may hold a single ``quarantine.json``
(``{"records": [...], "files": [...]}``); it is read as a report older than
every report in ``quarantine.d/``, which checked exactly the files it names.

**Visibility.** Readers list ``quarantine.d/``. A report renamed in by another
node appears in a listing on this node once this node's directory cache
expires: at once on a local disk, after up to ~20 s on sshfs (``cache_timeout``),
after up to ``acdirmax`` on NFS. So a job that reads a dataset right after
other nodes validated it should wait that long (or read on a node whose cache
is fresh); entries are never lost, only seen late.

**Compaction.** After writing its report, a writer deletes every report it has
read whose files were all checked again by a newer report it has read (and the
legacy ``quarantine.json`` on the same terms). The newest report of each file
is therefore never deleted, whoever compacts and whatever each one sees; so one
validation of a whole dataset leaves a single report. A reader that lists a
report which is gone when it opens it lists the directory again.
"""

import json
import os
import time
from dataclasses import dataclass, field
from typing import List

from ._atomic import fsync_dir, unique_tag, write_bytes
from .errors import FormatError

REPORTS_DIR = "quarantine.d"
LEGACY_NAME = "quarantine.json"
FORMAT = "ffrecord-quarantine"
VERSION = 2
REASONS = ("checksum", "format", "missing", "mismatch")
_LISTING_TRIES = 3


@dataclass
class Quarantine:
    """The quarantine in force in one directory."""
    records: list = field(default_factory=list)  # [{"file", "index", ...}], sorted by (file, index)
    files: list = field(default_factory=list)  # [{"file", ...}] unusable as a whole, sorted by file
    reports: List[str] = field(default_factory=list)  # the report files read (paths)

    def __bool__(self):
        return bool(self.records or self.files)


@dataclass
class _Report:
    path: str
    order: int
    writer: str
    checked: frozenset
    records: list
    files: list

    @property
    def rank(self):
        return (self.order, self.writer)


def load(directory):
    """The quarantine in force in ``directory`` (empty when it has none).
    Raises FormatError naming a report that is not a valid one."""
    reports = _read_all(directory)
    return _union(reports)


def write_report(directory, checked, records, files, tool):
    """Adds this run's report about the files ``checked`` (names in
    ``directory``) with their bad ``records`` and ``files`` (entries as in the
    module docstring), then compacts. Returns the report's path, or None when
    there was nothing to say: no findings and no quarantine to supersede."""
    checked = sorted(set(checked))
    if not checked:
        return None
    seen = _read_all(directory)
    reports_dir = os.path.join(directory, REPORTS_DIR)
    if not records and not files and not seen and not os.path.isdir(reports_dir):
        return None
    os.makedirs(reports_dir, exist_ok=True)
    order = max(time.time_ns(), 1 + max((r.order for r in seen), default=-1))
    writer = unique_tag()
    doc = {
        "format": FORMAT, "version": VERSION, "tool": tool, "order": order, "writer": writer,
        "checked": checked,
        "records": sorted(records, key=lambda e: (e["file"], e["index"])),
        "files": sorted(files, key=lambda e: e["file"]),
    }
    path = os.path.join(reports_dir, f"{order:020d}-{writer}.json")
    write_bytes(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    mine = _Report(path, order, writer, frozenset(checked), doc["records"], doc["files"])
    _compact(seen + [mine])
    return path


# ---- internals ---------------------------------------------------------------
def _read_all(directory):
    """Every report in ``directory`` (the legacy file first), re-listing when a
    listed report vanished (another writer compacted it meanwhile)."""
    for attempt in range(_LISTING_TRIES):
        reports, vanished = [], False
        legacy = _read_legacy(os.path.join(directory, LEGACY_NAME))
        if legacy is not None:
            reports.append(legacy)
        reports_dir = os.path.join(directory, REPORTS_DIR)
        try:
            names = sorted(n for n in os.listdir(reports_dir) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            names = []
        for name in names:
            try:
                reports.append(_read_report(os.path.join(reports_dir, name)))
            except FileNotFoundError:
                vanished = True
        if not vanished:
            break
    return reports


def _load_json(path):
    with open(path, "rb") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: not valid JSON: {e}") from None


def _entries(doc, key, path, with_index):
    entries = doc.get(key, [])
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("file"), str)
        and (not with_index or (isinstance(e.get("index"), int) and not isinstance(e.get("index"), bool)))
        for e in entries)
    if not ok:
        what = "{'file': name, 'index': int}" if with_index else "{'file': name}"
        raise FormatError(f"{path}: '{key}' must be a list of {what} objects")
    return entries


def _read_report(path):
    doc = _load_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FormatError(f"{path}: not a quarantine report (no \"format\": \"{FORMAT}\")")
    order, writer, checked = doc.get("order"), doc.get("writer"), doc.get("checked")
    if isinstance(order, bool) or not isinstance(order, int) or not isinstance(writer, str):
        raise FormatError(f"{path}: a quarantine report needs an integer 'order' and a 'writer'")
    if not isinstance(checked, list) or not all(isinstance(n, str) for n in checked):
        raise FormatError(f"{path}: 'checked' must be a list of file names")
    return _Report(path, order, writer, frozenset(checked), _entries(doc, "records", path, True),
                   _entries(doc, "files", path, False))


def _read_legacy(path):
    try:
        doc = _load_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise FormatError(f"{path}: expected an object with a 'records' list")
    records = _entries(doc, "records", path, True)
    files = _entries(doc, "files", path, False) if doc.get("files") is not None else []
    named = frozenset(e["file"] for e in records + files)
    return _Report(path, -1, "", named, records, files)


def _newest_by_file(reports):
    newest = {}
    for r in reports:
        for name in r.checked:
            if name not in newest or r.rank > newest[name].rank:
                newest[name] = r
    return newest


def _union(reports):
    newest = _newest_by_file(reports)
    records = [e for r in reports for e in r.records if newest.get(e["file"]) is r]
    files = [e for r in reports for e in r.files if newest.get(e["file"]) is r]
    records.sort(key=lambda e: (e["file"], e["index"]))
    files.sort(key=lambda e: e["file"])
    return Quarantine(records=records, files=files, reports=[r.path for r in reports])


def _compact(reports):
    """Deletes the reports wholly superseded by newer ones (best effort: a
    report left behind changes nothing in the union)."""
    newest = _newest_by_file(reports)
    touched = set()
    for r in reports:
        if all(newest[name].rank > r.rank for name in r.checked):
            try:
                os.unlink(r.path)
                touched.add(os.path.dirname(r.path))
            except OSError:
                pass  # already compacted by another writer, or not ours to delete
    for directory in touched:
        fsync_dir(directory)

