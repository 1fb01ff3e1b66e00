"""A dataset written by many independent tasks and committed once, by one driver.

This is how engines with their own schedulers (Ray, Spark) produce the same
dataset directory as ``ffrecord convert``:

1. The driver creates a ``StagedDataset`` for DST and calls ``begin()``.
   Nothing is created under DST's name: the work happens in a hidden sibling
   staging directory ``.<DST name>.ffrecord-staging-<id>``.
2. Each task calls ``write_part(task, columns, rows)`` on a copy of it. The task's rows
   become shards of at most ``records_per_shard`` records or ``shard_size``
   bytes, written as ``part-<task>-<attempt>-<n>.ffr`` (each through a
   temporary file renamed on close); it returns a description of its files.
   Every attempt uses its own random attempt id, so a retried or speculative
   attempt never overwrites, or is mixed up with, another.
3. The driver calls ``commit(results)`` with the result of exactly one
   successful attempt per task. Files of other attempts are deleted; the chosen
   ones are renamed ``shard-<i>-of-<n>.ffr`` in task order; ``index.json`` is
   written; then the staging directory is renamed to DST in one step. A reader
   sees no dataset or the whole one.
4. When the job fails, ``abort()`` removes the staging directory: nothing is
   left under DST.

Bad arguments, a DST in use, and rows that have no record encoding raise
``ValueError`` (``ColumnError`` for rows), naming DST and, for a row, the task.

Records are encoded by ``ffrecord.tools.columns``, exactly as ``ffrecord
convert --from parquet`` encodes rows with the same columns, so the records
are the same bytes whichever engine wrote them.
"""

import os
import shutil
import uuid

import numpy as np

from .. import FileWriter
from .._atomic import fsync_dir
from . import manifest, plan
from .columns import ColumnError, RowEncoder
from .sources.ffr import CONVERT_KEY

STAGING_MARK = ".ffrecord-staging-"


class StagedDataset:
    """A picklable handle shared by the driver and the tasks of one write job."""

    def __init__(self, dst, *, key_column=None, records_per_shard=None, shard_size=None, compression=None,
                 engine="tasks"):
        """``engine`` is recorded as the dataset's source kind (``"ray"``, ``"spark"``)."""
        self.dst = os.path.abspath(os.fspath(dst))
        self.shard_size, self.records_per_shard, self.compression = plan.shard_options(
            shard_size, records_per_shard, compression, ValueError, names=("shard_size", "records_per_shard"))
        self.key_column, self.engine = key_column, engine
        check_destination(self.dst)
        parent, name = os.path.split(self.dst)
        if not os.path.isdir(parent):
            raise ValueError(f"{parent}: no such directory (the parent of the output)")
        self.staging = os.path.join(parent, f".{name}{STAGING_MARK}{uuid.uuid4().hex[:16]}")

    def begin(self):
        """Creates the staging directory (the driver, before the tasks run). Tasks do not
        create it, so an attempt still running after the commit or abort fails harmlessly."""
        os.makedirs(self.staging, exist_ok=True)

    # ---- tasks --------------------------------------------------------------
    def encoder(self, columns):
        """The row encoder for ``columns`` ([(name, type tag)], see ``columns.arrow_tag``)."""
        try:
            return RowEncoder([tuple(c) for c in columns], key=self.key_column)
        except ColumnError as e:
            raise ColumnError(f"{self.dst}: {e}") from None

    def _metadata(self, encoder):
        return dict(encoder.metadata(), **{CONVERT_KEY: {"source": self.engine, "tool": manifest.tool_version()}})

    def write_part(self, task, columns, rows):
        """Writes the rows (mappings of column -> value) of task number ``task``;
        returns the part's description for ``commit``."""
        encoder = self.encoder(columns)
        part = _PartWriter(self, task, encoder)
        try:
            for k, row in enumerate(rows):
                try:
                    data, key = encoder.encode(row)
                except ColumnError as e:
                    raise ColumnError(f"{self.dst}: task {task}, row {k}: {e}") from None
                part.add_one(data, key)
        except BaseException:
            part.abort()
            raise
        return part.finish(columns)

    def write_part_arrow(self, task, columns, tables):
        """``write_part`` for rows that come as pyarrow Tables or RecordBatches:
        each is encoded whole (``RowEncoder.encode_arrow``) and written in one
        call per shard, the same records as row by row, several times faster."""
        encoder = self.encoder(columns)
        part = _PartWriter(self, task, encoder)
        done = 0
        try:
            for table in tables:
                try:
                    rows = encoder.encode_arrow(table)
                except ColumnError as e:
                    raise ColumnError(f"{self.dst}: task {task}, row {done + e.row}: {e}") from None
                part.add_many(rows)
                done += len(rows)
        except BaseException:
            part.abort()
            raise
        return part.finish(columns)

    # ---- the driver -----------------------------------------------------------
    def commit(self, parts, columns=None):
        """Publishes the dataset from one result of ``write_part`` per task; returns the
        manifest. ``columns`` describes the rows when no task had any."""
        by_task = {}
        for part in parts:
            if part["task"] in by_task:
                raise ValueError(f"{self.dst}: two results for task {part['task']}; keep one attempt per task")
            if columns is None:
                columns = part["columns"]
            elif [list(c) for c in columns] != part["columns"]:
                raise ColumnError(f"{self.dst}: task {part['task']} wrote columns {part['columns']}, "
                                f"others {columns}; every task must write the same columns")
            by_task[part["task"]] = part
        if columns is None:
            raise ValueError(f"{self.dst}: no rows and no schema: nothing says what the records hold")
        encoder = self.encoder(columns)
        chosen = [f for t in sorted(by_task) for f in by_task[t]["files"]]
        os.makedirs(self.staging, exist_ok=True)
        keep = {f["file"] for f in chosen}
        for name in os.listdir(self.staging):  # other attempts' files and temporaries
            if name not in keep:
                _remove(os.path.join(self.staging, name))
        if not chosen:  # no rows at all: one empty shard, as convert writes for an empty source
            empty = os.path.join(self.staging, "part-empty.ffr")
            with FileWriter(empty, 0, compression=self.compression, metadata=self._metadata(encoder)):
                pass
            size, crc = manifest.file_crc32c(empty)
            chosen = [{"file": "part-empty.ffr", "records": 0, "raw_bytes": 0, "bytes": size, "crc32c": crc}]
        n = len(chosen)
        records, first = [], 0
        for i, f in enumerate(chosen):
            name = plan.shard_name(i, n)
            src = os.path.join(self.staging, f["file"])
            if not os.path.exists(src) or os.path.getsize(src) != f["bytes"]:
                raise FileNotFoundError(f"{self.dst}: the part file {f['file']} is missing or changed "
                                        "before the commit")
            os.replace(src, os.path.join(self.staging, name))
            records.append({"path": name, "records": f["records"], "first": first, "bytes": f["bytes"],
                            "raw_bytes": f["raw_bytes"], "crc32c": f["crc32c"]})
            first += f["records"]
        bounds = [r["first"] for r in records] + [first]
        options = {"compression": self.compression, "zstd_dict": None, "shard_size": self.shard_size,
                   "records_per_shard": self.records_per_shard}
        if self.key_column is not None:
            options["key_column"] = self.key_column
        doc = manifest.build(records, source={"kind": self.engine, "items": first}, options=options,
                             metadata=encoder.metadata(), keys=self.key_column is not None,
                             fingerprint=plan.fingerprint(self.engine, first, bounds, options))
        manifest.write(self.staging, doc)
        check_destination(self.dst)
        if os.path.isdir(self.dst):
            os.rmdir(self.dst)  # empty (checked): replaced by the finished dataset
        os.rename(self.staging, self.dst)
        fsync_dir(os.path.dirname(self.dst))
        return doc

    def abort(self):
        """Removes everything this job wrote; DST is left as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)


def check_destination(dst):
    """DST must not exist, or be an empty directory."""
    if os.path.isdir(dst):
        if os.listdir(dst):
            raise ValueError(f"{dst}: not empty; write the dataset into a new or empty directory")
    elif os.path.exists(dst):
        raise ValueError(f"{dst}: exists and is not a directory")


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _PartWriter:
    """One attempt of one task: encoded records -> its part files, cut into
    shards by the dataset's limits (the same cut, record for record, whether the
    records come one at a time or many at once)."""

    def __init__(self, staged, task, encoder):
        if not os.path.isdir(staged.staging):
            raise FileNotFoundError(f"{staged.dst}: the staging directory is gone (the job was committed or aborted)")
        self.staged, self.task = staged, task
        self.attempt = uuid.uuid4().hex[:12]
        self.metadata = staged._metadata(encoder)
        self.files, self.writer, self.path = [], None, None
        self.count = self.raw = 0

    def _room(self, lengths):
        """How many of the next records (a numpy array of their lengths) the open
        shard takes; a new shard takes at least one."""
        s = self.staged
        if s.records_per_shard is not None:
            room = s.records_per_shard - self.count
        else:
            room = int(np.searchsorted(np.cumsum(lengths) + self.raw, s.shard_size, side="right"))
        return max(room, 0 if self.count else 1)

    def _takes_one(self, size):
        """``_room`` for one record, without numpy (it runs once per row)."""
        s = self.staged
        if not self.count:
            return True
        if s.records_per_shard is not None:
            return self.count < s.records_per_shard
        return self.raw + size <= s.shard_size

    def _open(self):
        self.path = os.path.join(self.staged.staging,
                                 f"part-{self.task:06d}-{self.attempt}-{len(self.files):05d}.ffr")
        self.writer = FileWriter(self.path, compression=self.staged.compression, metadata=self.metadata)
        self.count = self.raw = 0

    def _close(self):
        done, self.writer = self.writer, None
        done.close()
        self.files.append({"file": os.path.basename(self.path), "records": self.count, "raw_bytes": self.raw})

    def add_one(self, data, key):
        if self.writer is not None and not self._takes_one(len(data)):
            self._close()
        if self.writer is None:
            self._open()
        self.writer.write_one(data, key)
        self.count += 1
        self.raw += len(data)

    def add_many(self, rows):
        """``rows``: ``EncodedRows``."""
        lengths, offsets, at = rows.lengths(), rows.offsets, 0
        while at < len(lengths):
            if self.writer is None:
                self._open()
            take = min(self._room(lengths[at:]), len(lengths) - at)
            if take == 0:
                self._close()
                continue
            keys = None if rows.keys is None else rows.keys[at:at + take]
            self.writer.write_packed(rows.data, offsets[at:at + take + 1], keys)
            self.count += take
            self.raw += int(offsets[at + take] - offsets[at])
            at += take

    def finish(self, columns):
        if self.writer is not None:
            self._close()
        for f in self.files:
            f["bytes"], f["crc32c"] = manifest.file_crc32c(os.path.join(self.staged.staging, f["file"]))
        return {"task": self.task, "attempt": self.attempt, "columns": [list(c) for c in columns],
                "files": self.files}

    def abort(self):
        if self.writer is not None:
            self.writer.abort()  # its temporary file goes; no part is left half written
