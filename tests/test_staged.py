"""The staged commit behind the Ray and Spark writers, driven as an engine would:
concurrent attempts of one task, results chosen by the driver, late attempts."""

import json
import os

import pytest

import ffrecord
from ffrecord.cli import main
from ffrecord.tools.columns import ColumnError
from ffrecord.tools.staged import STAGING_MARK, StagedDataset

COLUMNS = [("id", "str"), ("data", "bytes")]


def rows(lo, hi):
    return [{"id": f"r{i}", "data": bytes([i % 256]) * (i % 7)} for i in range(lo, hi)]


def staging_dirs(parent):
    return [n for n in os.listdir(parent) if STAGING_MARK in n]


def test_speculative_attempts_leave_exactly_one_copy_of_each_task(tmp_path):
    staged = StagedDataset(tmp_path / "out", key_column="id", records_per_shard=4, engine="spark")
    staged.begin()
    first = staged.write_part(0, COLUMNS, rows(0, 10))
    speculative = staged.write_part(0, COLUMNS, rows(0, 10))  # a second attempt of task 0, also finished
    second = staged.write_part(1, COLUMNS, rows(10, 15))
    assert {f["file"] for f in first["files"]}.isdisjoint(f["file"] for f in speculative["files"])
    doc = staged.commit([second, speculative])  # the driver keeps one attempt per task, in any order
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == sorted(["index.json"] + [s["path"] for s in doc["shards"]])
    assert [s["records"] for s in doc["shards"]] == [4, 4, 2, 4, 1] and doc["records"] == 15
    with ffrecord.FileReader(out) as r:
        assert [r.key(i) for i in range(r.n)] == [f"r{i}" for i in range(15)]
        assert r.read_one(9).tobytes() == bytes([9]) * 2
    assert json.load(open(out / "index.json"))["source"] == {"kind": "spark", "items": 15}
    assert main(["validate", str(out), "-q"]) == 0
    assert not staging_dirs(tmp_path)
    with pytest.raises(FileNotFoundError, match="staging directory is gone"):
        staged.write_part(1, COLUMNS, rows(10, 15))  # an attempt that outlived the commit
    assert not staging_dirs(tmp_path)


def test_a_failed_attempt_leaves_no_part_and_abort_leaves_nothing(tmp_path):
    staged = StagedDataset(tmp_path / "out", key_column="id", records_per_shard=3)
    staged.begin()

    def failing():
        yield from rows(0, 5)
        raise RuntimeError("the task dies here")

    with pytest.raises(RuntimeError):
        staged.write_part(0, COLUMNS, failing())
    finished = [n for n in os.listdir(staged.staging) if n.endswith(".ffr")]
    assert len(finished) == 1  # the first full shard; the open one was discarded, not left half written
    assert not [n for n in os.listdir(staged.staging) if n.endswith(".tmp")]
    retry = staged.write_part(0, COLUMNS, rows(0, 5))
    doc = staged.commit([retry])
    assert doc["records"] == 5 and len(os.listdir(tmp_path / "out")) == 3  # two shards and index.json

    other = StagedDataset(tmp_path / "other")
    other.begin()
    other.write_part(0, COLUMNS, rows(0, 3))
    other.abort()
    assert not (tmp_path / "other").exists() and not staging_dirs(tmp_path)


def test_bad_use_is_refused_with_the_destination_named(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(ValueError, match="not both"):
        StagedDataset(dst, records_per_shard=2, shard_size=10)
    with pytest.raises(ValueError, match="positive integer"):
        StagedDataset(dst, shard_size=-1)
    with pytest.raises(ValueError, match="zstd"):
        StagedDataset(dst, compression="gzip")
    with pytest.raises(ValueError, match="no such directory"):
        StagedDataset(tmp_path / "missing" / "out")
    staged = StagedDataset(dst, key_column="id")
    staged.begin()
    a = staged.write_part(0, COLUMNS, rows(0, 2))
    with pytest.raises(ValueError, match="two results for task 0"):
        staged.commit([a, a])
    b = staged.write_part(1, [("id", "str"), ("blob", "bytes")], [{"id": "x", "blob": b""}])
    with pytest.raises(ColumnError, match="task 1 wrote columns"):
        staged.commit([a, b])
    with pytest.raises(ColumnError, match=f"{dst}: task 2, row 1: key column 'id' is null"):
        staged.write_part(2, COLUMNS, [{"id": "y", "data": b""}, {"id": None, "data": b""}])
    with pytest.raises(ColumnError, match="key column 'nope' is not a column"):
        StagedDataset(dst, key_column="nope").encoder(COLUMNS)
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        staged.commit([a])
    assert os.listdir(dst) == ["keep.txt"]
    staged.abort()
    assert not staging_dirs(tmp_path)
