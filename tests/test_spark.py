"""Spark: write_ffrecord and read_ffrecord on a real local[2] session."""

import os
import shutil
import sys

import pytest

pyspark = pytest.importorskip("pyspark")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)

from pyspark import TaskContext  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

import ffrecord  # noqa: E402
from ffrecord.cli import main  # noqa: E402
from ffrecord.spark import read_ffrecord, write_ffrecord  # noqa: E402
from ffrecord.tools.columns import ColumnError  # noqa: E402
from ffrecord.tools.staged import STAGING_MARK  # noqa: E402
from engine_rows import contents, rows_table  # noqa: E402

ROWS = 1000


@pytest.fixture(scope="module")
def spark():
    here = os.path.dirname(os.path.abspath(__file__))
    # Python workers import this module (the failing map below) and this tree's ffrecord.
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")])
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2,3]")  # 2 threads; a task may fail up to 3 times
               .appName("ffrecord-tests")
               .config("spark.task.maxFailures", "3")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               # Small input splits, so a small Parquet file is read as several partitions.
               .config("spark.sql.files.maxPartitionBytes", "16k")
               .config("spark.sql.files.openCostInBytes", "1k")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def leftovers(tmp_path):
    return [n for n in os.listdir(tmp_path) if STAGING_MARK in n]


def parquet_source(tmp_path, table):
    src = tmp_path / "rows.parquet"
    pq.write_table(table, src, row_group_size=400)
    return src


def test_write_equals_convert_and_reads_back(spark, tmp_path):
    table = rows_table(ROWS, nested=True)
    src = parquet_source(tmp_path, table)
    converted = tmp_path / "converted"
    assert main(["convert", str(src), str(converted), "--key-column", "id", "--records-per-shard", "150", "-q"]) == 0
    df = spark.read.parquet(str(src)).coalesce(3)
    assert df.rdd.getNumPartitions() == 3
    dst = tmp_path / "written"
    batch_bytes = "spark.sql.execution.arrow.maxBytesPerBatch"
    before = spark.conf.get(batch_bytes, None)
    doc = write_ffrecord(df, dst, key_column="id", records_per_shard=150, arrow_batch_bytes=20_000)  # many batches
    assert spark.conf.get(batch_bytes, None) == before  # the session's setting is back
    assert doc["records"] == ROWS and doc["source"]["kind"] == "spark"
    assert contents(dst) == contents(converted)
    assert not leftovers(tmp_path)
    again = tmp_path / "written-whole-batches"
    write_ffrecord(df, again, key_column="id", records_per_shard=150, arrow_batch_bytes=None)
    assert contents(again) == contents(converted)

    back = read_ffrecord(spark, dst, num_partitions=4)
    assert back.rdd.getNumPartitions() >= 4
    rows = back.collect()
    assert [r["id"] for r in rows] == table.column("id").to_pylist()
    assert [bytes(r["image"]) for r in rows] == table.column("image").to_pylist()
    assert [r["label"] for r in rows] == table.column("label").to_pylist()
    assert [r["caption"] for r in rows] == table.column("caption").to_pylist()
    assert rows[5]["tags"] == '["t2","x"]'
    assert rows[5]["attrs"] == '{"h":10,"w":5}' and rows[5]["size"] == '{"h":6,"w":5}'


def fail_once_in_partition_one(marker):
    def run(index, rows):
        for k, row in enumerate(rows):
            if index == 1 and k == 100 and TaskContext.get().attemptNumber() == 0:
                open(marker, "w").close()
                raise RuntimeError("this attempt fails half way through its partition")
            yield row

    return run


def test_a_task_that_fails_once_is_retried_without_duplicates(spark, tmp_path):
    table = rows_table(1200, seed=1, nested=True)
    src = parquet_source(tmp_path, table)
    df0 = spark.read.parquet(str(src)).coalesce(3)
    assert df0.rdd.getNumPartitions() == 3
    marker = tmp_path / "failed-once"
    df = spark.createDataFrame(df0.rdd.mapPartitionsWithIndex(fail_once_in_partition_one(str(marker))), df0.schema)
    dst = tmp_path / "retried"
    doc = write_ffrecord(df, dst, key_column="id", records_per_shard=250)
    assert marker.exists()  # the first attempt did fail
    records, keys, _ = contents(dst)
    assert keys == table.column("id").to_pylist() and doc["records"] == 1200
    assert sorted(os.listdir(dst)) == sorted(["index.json"] + [s["path"] for s in doc["shards"]])
    assert not leftovers(tmp_path)


def always_fail(index, rows):
    for k, row in enumerate(rows):
        if index == 1 and k == 10:
            raise RuntimeError("this partition always fails")
        yield row


def test_a_failed_job_leaves_nothing_and_bad_input_is_refused(spark, tmp_path):
    df0 = spark.createDataFrame([(f"k{i}", bytes([i])) for i in range(100)], "key string, data binary").repartition(2)
    df = spark.createDataFrame(df0.rdd.mapPartitionsWithIndex(always_fail), df0.schema)
    dst = tmp_path / "failed"
    with pytest.raises(Exception, match="always fails"):
        write_ffrecord(df, dst, key_column="key")
    assert not dst.exists() and not leftovers(tmp_path)

    with pytest.raises(ColumnError, match="key column 'nope' is not a column"):
        write_ffrecord(df0, tmp_path / "x", key_column="nope")
    for bad in (0, -5, 1.5, "4m", True):
        with pytest.raises(ValueError, match="arrow_batch_bytes"):
            write_ffrecord(df0, tmp_path / "x", arrow_batch_bytes=bad)
    with pytest.raises(ColumnError, match="'when'"):
        write_ffrecord(spark.sql("select current_timestamp() as when, 'a' as v"), tmp_path / "y")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "f").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        write_ffrecord(df0, tmp_path / "used")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not leftovers(tmp_path)

    # No rows: one empty shard that still describes the columns.
    doc = write_ffrecord(df0.where("key = 'none'"), tmp_path / "empty", key_column="key")
    assert doc["records"] == 0 and doc["metadata"]["ffrecord.layout"] == "column"
    assert read_ffrecord(spark, tmp_path / "empty").count() == 0

    # A single value column: the records are its bytes, readable without Spark.
    single = tmp_path / "single"
    write_ffrecord(df0.orderBy("key"), single, key_column="key")
    with ffrecord.FileReader(single) as r:
        assert r.find("k7") is not None and r.read_one(r.find("k7")).tobytes() == bytes([7])
