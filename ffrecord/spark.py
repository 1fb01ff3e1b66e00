"""Spark: write a DataFrame as a dataset directory, and read one into a DataFrame.

``write_ffrecord(df, dst)``: each partition is written by a task on the
executors into a staging directory next to DST, under attempt-unique names; the
driver collects exactly one result per partition (Spark's own guarantee, under
task retries and speculative execution alike), deletes the files of every other
attempt, and commits the dataset once (``ffrecord.tools.staged``). Rows become
records exactly as ``ffrecord convert --from parquet`` encodes them, so the
records equal those of a conversion of the same rows. DST must be on a
filesystem that the driver and every executor share.

``read_ffrecord(spark, path)``: a DataFrame of the records, read in partitions
that are record ranges of one shard each.

Needs ``pip install 'ffrecord[spark]'`` and a Java runtime; docs/SPARK.md has a
complete example.
"""

import contextlib
import json
import os

from pyspark.sql import types as T

from .reader import FileReader
from .tools.columns import COLUMNS_KEY, ColumnError, record_columns
from .tools.records import LABELED, LAYOUT_KEY, PARTS, decode_parts
from .tools.staged import StagedDataset

__all__ = ["write_ffrecord", "read_ffrecord", "spark_columns"]

_BATCH_RECORDS = 1024
_SIMPLE = {
    T.BinaryType: "bytes", T.StringType: "str", T.BooleanType: "bool", T.ByteType: "int8",
    T.ShortType: "int16", T.IntegerType: "int32", T.LongType: "int64", T.FloatType: "float32",
    T.DoubleType: "float64",
}
_SPARK_TYPES = {tag: cls for cls, tag in _SIMPLE.items()}


def spark_columns(schema):
    """[(name, type tag)] for a Spark schema; ColumnError for types with no encoding."""
    out = []
    for field in schema.fields:
        t = field.dataType
        tag = _SIMPLE.get(type(t))
        if tag is None and isinstance(t, T.StructType):
            names = {f.name for f in t.fields}
            if "bytes" in names and names <= {"bytes", "path"} and isinstance(t["bytes"].dataType, T.BinaryType):
                tag = "bytes_field"  # an image or audio struct, as Hugging Face stores them
            else:
                tag = "json"
        elif tag is None and isinstance(t, (T.ArrayType, T.MapType)):
            tag = "json"
        if tag is None:
            raise ColumnError(f"column {field.name!r} has type {t.simpleString()}, which has no record encoding; "
                              "cast it to a string, number or binary column first")
        out.append((field.name, tag))
    return out


def _write_partition(staged, columns):
    # Partitions reach Python as Arrow record batches (mapInArrow), not as one
    # pickled Row per row, and each batch is encoded whole, column by column:
    # rows crossing, or encoded, one at a time made the writer several times
    # slower than Spark's own Parquet writer.
    def run(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        task = TaskContext.get().partitionId()
        part = staged.write_part_arrow(task, columns, batches)
        yield pa.RecordBatch.from_pydict({"part": [json.dumps(part)]})

    return run


_ARROW_BATCH_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"


def write_ffrecord(df, dst, *, key_column=None, records_per_shard=None, shard_size=None, compression=None,
                   arrow_batch_bytes=4 << 20):
    """Writes ``df`` to the dataset directory ``dst``; returns its manifest (``index.json``).

    ``key_column`` names the column holding the keys; ``records_per_shard`` or
    ``shard_size`` (bytes, default 1 GiB) bound each partition's shards;
    ``compression`` is None or ``'zstd[:level]'``. Shards follow the partitions
    in order, so the records are in the DataFrame's order. DST must be new or
    empty; a failed job leaves it as it was.

    ``arrow_batch_bytes`` bounds the Arrow batches in which Spark hands the rows
    to Python: for the length of the job, the session's
    ``spark.sql.execution.arrow.maxBytesPerBatch`` (Spark 4) is set to it, then
    restored. Batches that stay in the CPU caches (a few MiB) make the job
    markedly faster than Spark's default of 64 MiB; None keeps the session's
    setting."""
    if arrow_batch_bytes is not None and (isinstance(arrow_batch_bytes, bool) or not isinstance(arrow_batch_bytes, int)
                                          or arrow_batch_bytes < 1):
        raise ValueError(f"arrow_batch_bytes must be a positive integer or None, got {arrow_batch_bytes!r}")
    try:
        columns = spark_columns(df.schema)
    except ColumnError as e:
        raise ColumnError(f"{os.fspath(dst)}: {e}") from None
    staged = StagedDataset(dst, key_column=key_column, records_per_shard=records_per_shard,
                           shard_size=shard_size, compression=compression, engine="spark")
    staged.encoder(columns)  # a bad key column fails here, before any task runs
    staged.begin()
    try:
        # One result per partition, whatever attempts ran (Spark keeps one per task).
        with _session_conf(df.sparkSession, _ARROW_BATCH_BYTES,
                           None if arrow_batch_bytes is None else f"{arrow_batch_bytes}b"):
            parts = [json.loads(r.part) for r in df.mapInArrow(_write_partition(staged, columns), "part string").collect()]
        return staged.commit(parts, columns=columns)
    except BaseException:
        staged.abort()
        raise


@contextlib.contextmanager
def _session_conf(session, key, value):
    """Sets a SQL setting of ``session`` for the block (None: leaves it), then puts back what was there."""
    if value is None:
        yield
        return
    before = session.conf.get(key, None)
    session.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            session.conf.unset(key)
        else:
            session.conf.set(key, before)


# ---- reading ---------------------------------------------------------------------
def _spark_schema(metadata, has_keys, first_record):
    """The DataFrame schema of a dataset, from its metadata (and, for ``parts``
    records without column descriptions, from the part names of its first record)."""
    spec = metadata.get(COLUMNS_KEY) if isinstance(metadata, dict) else None
    fields = []
    if has_keys:
        fields.append(T.StructField((spec or {}).get("key") or "key", T.StringType(), False))
    if spec:
        for v in spec["values"]:
            cls = _SPARK_TYPES.get(v["type"], T.BinaryType if v["type"] == "bytes_field" else T.StringType)
            fields.append(T.StructField(v["name"], cls(), True))
    elif metadata.get(LAYOUT_KEY) == PARTS:
        names = list(decode_parts(first_record)) if first_record is not None else []
        fields += [T.StructField(n, T.BinaryType(), True) for n in names]
    elif metadata.get(LAYOUT_KEY) == LABELED:
        fields += [T.StructField("data", T.BinaryType(), False), T.StructField("label", T.LongType(), False)]
    else:
        fields.append(T.StructField("data", T.BinaryType(), False))
    return T.StructType(fields)


def _read_range(path, names, json_columns):
    def run(span):
        lo, hi = span
        with FileReader(path) as r:
            has_keys = any(r.file_info(f)["has_keys"] for f in range(len(r.paths)))
            to_row = record_columns(r.file_info(0)["metadata"], has_keys)
            for i in range(lo, hi, _BATCH_RECORDS):
                j = min(hi, i + _BATCH_RECORDS)
                for k, record in enumerate(r.read_bytes(range(i, j))):
                    row = to_row(record, r.key(i + k) if has_keys else None)
                    for n in json_columns:  # JSON columns are read as their JSON text
                        if row.get(n) is not None:
                            row[n] = json.dumps(row[n], separators=(",", ":"), ensure_ascii=False, sort_keys=True)
                    yield tuple(row.get(n) for n in names)

    return run


def read_ffrecord(spark, path, *, num_partitions=None):
    """A DataFrame of the records at ``path`` (a dataset directory, a ``.ffr``
    file, or a list of them), decoded into columns as ``ffrecord.ray.read_ffrecord`` does (JSON
    columns as their text). ``num_partitions`` defaults to Spark's default
    parallelism; partitions are record ranges inside one shard each."""
    path = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else os.fspath(path)
    with FileReader(path) as r:
        counts = [r.file_info(f)["records"] for f in range(len(r.paths))]
        meta = r.file_info(0)["metadata"]
        has_keys = any(r.file_info(f)["has_keys"] for f in range(len(r.paths)))
        n = r.n
        first = r.read_bytes([0])[0] if n else None
    schema = _spark_schema(meta, has_keys, first)
    wanted = num_partitions or spark.sparkContext.defaultParallelism
    spans, start = [], 0
    for count in counts:
        pieces = max(1, min(count, round(wanted * count / n))) if count else 0
        spans += [(start + count * p // pieces, start + count * (p + 1) // pieces) for p in range(pieces)]
        start += count
    spec = meta.get(COLUMNS_KEY) if isinstance(meta, dict) else None
    json_columns = [v["name"] for v in (spec or {}).get("values", []) if v["type"] == "json"]
    rdd = spark.sparkContext.parallelize(spans, max(1, len(spans))).flatMap(
        _read_range(path, schema.names, json_columns))
    return spark.createDataFrame(rdd, schema)

