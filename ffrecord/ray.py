"""Ray Data: read a dataset directory as a ``ray.data.Dataset``, and write one.

``read_ffrecord(path)`` splits the records into read tasks by shard and record
range; each task decodes its records into columns
(``ffrecord.tools.columns.record_columns``).
``write_ffrecord(ds, dst)`` (or ``ds.write_datasink(FFRecordDatasink(dst))``)
writes the same dataset directory that ``ffrecord convert --from parquet``
makes of the same rows: write tasks stage their shards, the driver commits
them once every task succeeded (``ffrecord.tools.staged``). Needs
``pip install 'ffrecord[ray]'``; docs/RAY.md has a complete example.
"""

import os

import numpy as np
import pyarrow as pa
import ray
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from .reader import FileReader
from .tools.columns import COLUMNS_KEY, arrow_columns, arrow_type, record_columns
from .tools.staged import StagedDataset

__all__ = ["read_ffrecord", "write_ffrecord", "FFRecordDatasource", "FFRecordDatasink"]

_BLOCK_BYTES = 64 << 20
_BATCH_RECORDS = 1024


def _schema_types(metadata, has_keys):
    """Known pyarrow types of the columns (the others are inferred)."""
    spec = metadata.get(COLUMNS_KEY) if isinstance(metadata, dict) else None
    types = {}
    if has_keys:
        types[(spec or {}).get("key") or "key"] = pa.string()
    if spec:
        for v in spec["values"]:
            types[v["name"]] = arrow_type(v["type"])
    else:
        types["data"] = pa.binary()
    return types


def _table(rows, types):
    names = list(rows[0]) if rows else []
    for r in rows[1:]:
        for n in r:
            if n not in names:
                names.append(n)
    arrays = {}
    for n in names:
        values = [r.get(n) for r in rows]
        t = types.get(n)
        arrays[n] = pa.array(values, type=t) if t is not None else pa.array(values)
    return pa.table(arrays)


def _read_range(path, start, end):
    """The records [start, end) of the dataset at ``path`` as pyarrow tables."""
    with FileReader(path) as r:
        info = r.file_info(0)
        has_keys = any(r.file_info(f)["has_keys"] for f in range(len(r.paths)))
        to_row = record_columns(info["metadata"], has_keys)
        types = _schema_types(info["metadata"], has_keys)
        rows, size = [], 0
        i = start
        while i < end:
            j = min(end, i + _BATCH_RECORDS)
            for k, record in enumerate(r.read_bytes(range(i, j))):
                rows.append(to_row(record, r.key(i + k) if has_keys else None))
                size += len(record)
            i = j
            if size >= _BLOCK_BYTES:
                yield _table(rows, types)
                rows, size = [], 0
        if rows:
            yield _table(rows, types)


class FFRecordDatasource(Datasource):
    """A dataset directory (or ``.ffr`` files) as a Ray Data source."""

    def __init__(self, path):
        super().__init__()
        self.path = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else os.fspath(path)
        with FileReader(self.path) as r:
            self._counts = [r.file_info(f)["records"] for f in range(len(r.paths))]
            self._paths = list(r.paths)
            self._n = r.n
            self._bytes = int(r.lengths(np.arange(r.n)).sum()) if r.n else 0

    def estimate_inmemory_data_size(self):
        return self._bytes

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        """About ``parallelism`` tasks, each a record range inside one shard, so a task
        reads one file, and shards get tasks in proportion to their records."""
        if self._n == 0:
            return []
        parallelism = max(1, int(parallelism))
        tasks, first = [], 0
        per_byte = self._bytes / self._n if self._n else 0
        for path, count in zip(self._paths, self._counts):
            pieces = max(1, min(count, round(parallelism * count / self._n))) if count else 0
            for p in range(pieces):
                lo, hi = first + count * p // pieces, first + count * (p + 1) // pieces
                meta = BlockMetadata(num_rows=hi - lo, size_bytes=int(per_byte * (hi - lo)), input_files=[path],
                                     exec_stats=None)
                tasks.append(ReadTask(lambda lo=lo, hi=hi: _read_range(self.path, lo, hi), meta,
                                      per_task_row_limit=per_task_row_limit))
            first += count
        return tasks

    def get_name(self):
        return "FFRecord"


def read_ffrecord(path, *, override_num_blocks=None, **read_args):
    """A ``ray.data.Dataset`` of the records at ``path`` (a dataset directory, a
    ``.ffr`` file, or a list of them), decoded into columns (``tools.columns.record_columns``).
    ``override_num_blocks`` fixes the number of read tasks; by default Ray picks
    it from the cluster's CPUs and the data size. ``read_args`` go to
    ``ray.data.read_datasource`` (e.g. ``num_cpus``, ``concurrency``)."""
    return ray.data.read_datasource(FFRecordDatasource(path), override_num_blocks=override_num_blocks, **read_args)


class FFRecordDatasink(Datasink):
    """Writes a Ray Dataset as a dataset directory, committed once every write task
    succeeded. ``key_column`` names the column holding the keys; ``records_per_shard``
    or ``shard_size`` (bytes, default 1 GiB) bound each write task's shards;
    ``compression`` is None or ``'zstd[:level]'``. DST must be new or empty; a
    failed job leaves it as it was."""

    def __init__(self, dst, *, key_column=None, records_per_shard=None, shard_size=None, compression=None):
        self.staged = StagedDataset(dst, key_column=key_column, records_per_shard=records_per_shard,
                                    shard_size=shard_size, compression=compression, engine="ray")
        self.manifest = None
        self._schema = None

    def on_write_start(self, schema=None):
        self._schema = schema
        self.staged.begin()

    def write(self, blocks, ctx):
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return None
        columns = arrow_columns(tables[0].schema)

        for t in tables:
            if arrow_columns(t.schema) != columns:
                raise ValueError(f"{self.staged.dst}: blocks of one task have different columns")
        return self.staged.write_part_arrow(ctx.task_idx, columns, tables)

    def on_write_complete(self, write_result):
        parts = [p for p in write_result.write_returns if p is not None]
        columns = None
        if not parts and isinstance(self._schema, pa.Schema):
            columns = arrow_columns(self._schema)
        self.manifest = self.staged.commit(parts, columns=columns)

    def on_write_failed(self, error):
        self.staged.abort()

    def get_name(self):
        return "FFRecord"


def write_ffrecord(ds, dst, *, key_column=None, records_per_shard=None, shard_size=None, compression=None,
                   **write_args):
    """Writes ``ds`` to the dataset directory ``dst``; returns its manifest (``index.json``).
    ``write_args`` go to ``Dataset.write_datasink`` (e.g. ``ray_remote_args``, ``concurrency``)."""
    sink = FFRecordDatasink(dst, key_column=key_column, records_per_shard=records_per_shard,
                            shard_size=shard_size, compression=compression)
    ds.write_datasink(sink, **write_args)
    return sink.manifest
