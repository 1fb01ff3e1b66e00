"""Ray Data: read_ffrecord and the datasink, on a real local Ray cluster."""

import json
import os

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import ffrecord  # noqa: E402
from ffrecord.cli import main  # noqa: E402
from ffrecord.ray import FFRecordDatasink, read_ffrecord, write_ffrecord  # noqa: E402
from ffrecord.tools.staged import STAGING_MARK  # noqa: E402
from engine_rows import contents, rows_table  # noqa: E402

ROWS = 3000


@pytest.fixture(scope="module")
def cluster():
    # Workers import this module (the failing datasinks below) and this tree's ffrecord.
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def converted(tmp_path, table):
    src = tmp_path / "rows.parquet"
    pq.write_table(table, src, row_group_size=700)
    dst = tmp_path / "converted"
    assert main(["convert", str(src), str(dst), "--key-column", "id", "--records-per-shard", "500", "-q"]) == 0
    return dst


def leftovers(tmp_path):
    return [n for n in os.listdir(tmp_path) if STAGING_MARK in n]


def test_write_equals_convert_and_reads_back(cluster, tmp_path):
    table = rows_table(ROWS)
    ds = ray.data.from_arrow([table.slice(k * 750, 750) for k in range(4)])
    dst = tmp_path / "written"
    doc = write_ffrecord(ds, dst, key_column="id", records_per_shard=500)
    assert doc["records"] == ROWS and doc["source"]["kind"] == "ray" and len(doc["shards"]) == 8
    assert contents(dst) == contents(converted(tmp_path, table))  # same records, keys and layout
    assert json.load(open(dst / "index.json"))["shards"][-1]["first"] == ROWS - 250
    assert not leftovers(tmp_path)

    back = read_ffrecord(dst, override_num_blocks=5)
    got = back.to_arrow_refs()
    out = pa.concat_tables(ray.get(got))
    assert out.num_rows == ROWS
    assert out.column("id").to_pylist() == table.column("id").to_pylist()
    assert out.column("image").to_pylist() == table.column("image").to_pylist()
    assert out.column("label").to_pylist() == table.column("label").to_pylist()
    assert out.column("caption").to_pylist() == table.column("caption").to_pylist()
    assert back.schema().base_schema.field("label").type == pa.int64()


def test_read_tasks_follow_shards_and_plain_records(cluster, tmp_path):
    path = tmp_path / "plain.ffr"
    with ffrecord.FileWriter(path) as w:
        for i in range(100):
            w.write_one(f"record {i}".encode(), key=f"k{i}")
    ds = read_ffrecord(path, override_num_blocks=4)
    rows = ds.take_all()
    assert [r["data"] for r in rows] == [f"record {i}".encode() for i in range(100)]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(100)]
    other = tmp_path / "other.ffr"
    with ffrecord.FileWriter(other) as w:
        w.write_batch([b"x", b"y"], keys=["kx", "ky"])
    both = read_ffrecord([path, other]).take_all()  # a list of files is one dataset
    assert len(both) == 102 and both[-1] == {"key": "ky", "data": b"y"}
    with pytest.raises(ffrecord.FormatError):
        (tmp_path / "bad.ffr").write_bytes(b"not a record file")
        read_ffrecord(tmp_path / "bad.ffr")


class CrashOnce(FFRecordDatasink):
    """Kills the worker process after its first task wrote its files, once."""

    def __init__(self, dst, marker, **kw):
        super().__init__(dst, **kw)
        self.marker = str(marker)

    def write(self, blocks, ctx):
        result = super().write(blocks, ctx)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return result
        os.close(fd)
        os._exit(1)  # the task's files exist but its result is lost: the retry writes them again


def test_a_retried_task_neither_duplicates_nor_loses_rows(cluster, tmp_path):
    table = rows_table(1200, seed=1)
    ds = ray.data.from_arrow([table.slice(k * 300, 300) for k in range(4)])
    dst = tmp_path / "retried"
    sink = CrashOnce(dst, tmp_path / "crashed", key_column="id", records_per_shard=500)
    ds.write_datasink(sink, ray_remote_args={"max_retries": 2})
    assert (tmp_path / "crashed").exists()
    records, keys, _ = contents(dst)
    assert keys == table.column("id").to_pylist()
    assert len(sink.manifest["shards"]) == 4 and sink.manifest["records"] == 1200
    assert sorted(os.listdir(dst)) == sorted(["index.json"] + [s["path"] for s in sink.manifest["shards"]])
    assert not leftovers(tmp_path)


class AlwaysFails(FFRecordDatasink):
    def write(self, blocks, ctx):
        super().write(blocks, ctx)
        raise ValueError("the job fails")


def test_a_failed_job_leaves_nothing_under_the_final_name(cluster, tmp_path):
    ds = ray.data.from_arrow([rows_table(200).slice(k * 100, 100) for k in range(2)])
    dst = tmp_path / "failed"
    with pytest.raises(Exception, match="the job fails"):
        ds.write_datasink(AlwaysFails(dst, key_column="id"))
    assert not dst.exists() and not leftovers(tmp_path)
    # Bad options and a destination in use are refused before any task runs.
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        write_ffrecord(ds, tmp_path / "used", key_column="id")
    with pytest.raises(ValueError, match="positive integer"):
        FFRecordDatasink(tmp_path / "new", records_per_shard=0)
    with pytest.raises(Exception, match="key column 'nope' is not a column"):  # raised in a task
        write_ffrecord(ds, tmp_path / "nokey", key_column="nope")
    assert not (tmp_path / "nokey").exists() and not leftovers(tmp_path)


def test_an_empty_dataset_is_one_empty_shard(cluster, tmp_path):
    empty = pa.table({"id": pa.array([], pa.string()), "v": pa.array([], pa.binary())})
    doc = write_ffrecord(ray.data.from_arrow(empty), tmp_path / "empty", key_column="id")
    assert doc["records"] == 0 and len(doc["shards"]) == 1
    with ffrecord.FileReader(tmp_path / "empty") as r:
        assert r.n == 0 and r.file_info(0)["metadata"]["ffrecord.columns"]["key"] == "id"
    assert read_ffrecord(tmp_path / "empty").count() == 0
