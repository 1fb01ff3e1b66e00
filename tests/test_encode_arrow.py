"""Whole-column encoding of table rows (``RowEncoder.encode_arrow``), the staged
writer that writes it in one call per shard, and ``FileWriter.write_packed``:
the same records, keys, shard cuts and errors as row by row."""

import os

import numpy as np
import pytest

import ffrecord
from ffrecord.tools.columns import ColumnError, RowEncoder, arrow_columns, arrow_rows
from ffrecord.tools.staged import StagedDataset

pa = pytest.importorskip("pyarrow")


def row_by_row(encoder, table):
    return [encoder.encode(row) for row in arrow_rows(table)]


def assert_same(table, key=None):
    encoder = RowEncoder(arrow_columns(table.schema), key=key)
    want = row_by_row(encoder, table)
    got = encoder.encode_arrow(table)
    assert len(got) == len(want)
    assert [bytes(r) for r in got.records()] == [d for d, _ in want]
    assert got.keys == ([k for _, k in want] if key else None)
    return got


def every_type():
    return pa.table({
        "k": pa.array([7, -2, 3, 4], pa.int32()),
        "flag": pa.array([True, None, False, True]),
        "half": pa.array([1.5, None, -2.0, 0.0], pa.float16()),
        "big": pa.array([1, 2**63, None, 0], pa.uint64()),
        "f64": pa.array([0.1, 2.5, None, -1e300]),
        "text": pa.array(["x", None, "é", ""]),
        "image": pa.array([{"bytes": b"a", "path": "p"}, None, {"bytes": b"", "path": None},
                           {"bytes": b"\x00" * 300, "path": "q"}]),
        "cat": pa.array(["a", "b", "a", None]).dictionary_encode(),
        "fixed": pa.array([b"ab", b"cd", None, b"ef"], pa.binary(2)),
        "large": pa.array([b"1", b"", None, b"4" * 70000], pa.large_binary()),
    })


def test_every_type_and_null_gives_the_row_by_row_bytes():
    table = every_type()
    assert_same(table, key="k")
    assert_same(table)  # no key column: the key is a value too
    assert_same(table.slice(1, 2), key="k")  # a slice starts inside the buffers
    assert_same(pa.Table.from_batches(table.to_batches(max_chunksize=1)), key="k")
    assert_same(table.select(["k", "large"]).filter(pa.array([True, True, False, True])), key="k")  # one value column: the record is its bytes
    with_json = pa.table({"j": pa.array([[1, 2], None, [3]]), "s": ["a", "b", "c"],
                          "m": pa.array([[("z", 1), ("a", 2)], [], None], pa.map_(pa.string(), pa.int64()))})
    assert_same(with_json)  # JSON columns go row by row, with the same result
    assert_same(pa.table({"k": pa.array([b"r1", b"r2"]), "v": [b"x", b"y"]}), key="k")  # binary UTF-8 keys
    empty = assert_same(every_type().slice(0, 0), key="k")
    assert len(empty) == 0 and empty.keys == []


@pytest.mark.parametrize("table, key, row, message", [
    (pa.table({"s": ["a", None]}), None, 1, "column 's' is null, which a single-column record cannot hold"),
    (pa.table({"k": ["a", "b", None], "v": [b"1", b"2", b"3"]}), "k", 2, "key column 'k' is null"),
    (pa.table({"k": pa.array([b"ok", b"\xff"]), "v": [b"1", b"2"]}), "k", 1, "not UTF-8"),
    (pa.table({"img": pa.array([{"bytes": b"a", "path": "p"}, {"bytes": None, "path": "q"}]), "x": [1, 2]}),
     None, 1, "holds no bytes"),
    (pa.table({"j": pa.array([[1], [2], [3]]), "s": ["a", "b", None]}), None, None, None),  # a null part: fine
])
def test_rows_without_an_encoding_name_their_row(table, key, row, message):
    encoder = RowEncoder(arrow_columns(table.schema), key=key)
    if message is None:
        assert_same(table, key)
        return
    with pytest.raises(ColumnError, match=message) as err:
        encoder.encode_arrow(table)
    assert err.value.row == row


COLUMNS = [("id", "str"), ("data", "bytes"), ("label", "int64")]


def table_of(lo, hi):
    return pa.table({"id": [f"r{i}" for i in range(lo, hi)],
                     "data": [bytes([i % 256]) * (i % 11) for i in range(lo, hi)],
                     "label": pa.array(range(lo, hi), pa.int64())})


@pytest.mark.parametrize("limits", [{"records_per_shard": 7}, {"shard_size": 150}, {"shard_size": 1},
                                    {"compression": "zstd:1", "records_per_shard": 9}])
def test_whole_tables_cut_and_encode_as_rows_do(tmp_path, limits):
    tables = [table_of(0, 13), table_of(13, 14), table_of(14, 14), table_of(14, 40)]
    a = StagedDataset(tmp_path / "a", key_column="id", **limits)
    a.begin()
    doc_a = a.commit([a.write_part(0, COLUMNS, (r for t in tables for r in arrow_rows(t)))])
    b = StagedDataset(tmp_path / "b", key_column="id", **limits)
    b.begin()
    doc_b = b.commit([b.write_part_arrow(0, COLUMNS, tables)])
    assert [s["records"] for s in doc_a["shards"]] == [s["records"] for s in doc_b["shards"]]
    assert [s["raw_bytes"] for s in doc_a["shards"]] == [s["raw_bytes"] for s in doc_b["shards"]]
    with ffrecord.FileReader(tmp_path / "a") as ra, ffrecord.FileReader(tmp_path / "b") as rb:
        assert ra.n == rb.n == 40
        assert ra.read_bytes(range(40)) == rb.read_bytes(range(40))
        assert [rb.key(i) for i in range(40)] == [f"r{i}" for i in range(40)]


def test_a_bad_row_in_a_table_fails_the_task_and_names_the_row(tmp_path):
    staged = StagedDataset(tmp_path / "out", key_column="id", records_per_shard=4)
    staged.begin()
    bad = pa.table({"id": ["x", None], "data": [b"1", b"2"], "label": pa.array([1, 2], pa.int64())})
    with pytest.raises(ColumnError, match=r"task 3, row 14: key column 'id' is null"):
        staged.write_part_arrow(3, COLUMNS, [table_of(0, 13), bad])
    assert not [n for n in os.listdir(staged.staging) if n.endswith(".tmp")]  # the open shard was discarded
    staged.abort()


def test_write_packed_writes_records_from_one_buffer(tmp_path):
    path = tmp_path / "p.ffr"
    data = b"abcdefghij"
    with ffrecord.FileWriter(path) as w:
        w.write_packed(data, [0, 3, 3, 10], keys=["a", "b", "c"])
        w.write_packed(np.frombuffer(b"xyz", np.uint8), np.array([1, 3], np.int32))  # offsets need not start at 0
        w.write_packed(b"", [0])  # no records
        assert w.count == 4
    with ffrecord.FileReader(path) as r:
        assert r.read_bytes(range(r.n)) == [b"abc", b"", b"defghij", b"yz"]
        assert r.find("c") == 2 and r.key(3) == ""
    with ffrecord.FileWriter(tmp_path / "a.ffr", alignment=4096) as w:  # padding between records
        w.write_packed(data, [0, 3, 10], keys=["x", "y"])
    with ffrecord.FileReader(tmp_path / "a.ffr") as r:
        assert r.read_bytes([0, 1]) == [b"abc", b"defghij"] and r.find("y") == 1
        assert r.file_info(0)["alignment"] == 4096
    big = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)  # past the writer's buffer
    with ffrecord.FileWriter(tmp_path / "b.ffr") as w:
        w.write_one(b"first")
        w.write_packed(big, [0, 1 << 20, 1 << 20, 3 << 20])
    with ffrecord.FileReader(tmp_path / "b.ffr") as r:
        got = r.read_bytes(range(4))
        assert got[0] == b"first" and got[1] == big[:1 << 20].tobytes() and got[2] == b""
        assert got[3] == big[1 << 20:].tobytes()
    with ffrecord.FileWriter(tmp_path / "z.ffr", compression="zstd") as w:  # compressed record by record
        w.write_packed(data * 50, [0, 100, 500], keys=["p", "q"])
    with ffrecord.FileReader(tmp_path / "z.ffr") as r:
        assert r.read_bytes([0, 1]) == [(data * 50)[:100], (data * 50)[100:500]] and r.find("q") == 1


def test_write_packed_refuses_bad_input_and_writes_nothing_of_it(tmp_path):
    path = tmp_path / "bad.ffr"
    w = ffrecord.FileWriter(path, 3)
    w.write_packed(b"ab", [0, 1])
    for args, kwargs, error, message in [
        ((b"abc", [0, 2, 1]), {}, ValueError, "must not decrease"),
        ((b"abc", [0, 4]), {}, ValueError, "within the data"),
        ((b"abc", [-1, 2]), {}, ValueError, "negative"),
        ((b"abc", [[0, 1]]), {}, TypeError, "1-D"),
        ((b"abc", [0.0, 1.0]), {}, TypeError, "integers"),
        ((b"abc", [0, 1, 2]), {"keys": ["one"]}, ValueError, "2 records but 1 keys"),
        ((b"abc", [0, 1]), {"keys": [5]}, TypeError, "key must be a str"),
        (("text", [0, 1]), {}, TypeError, "bytes-like"),
        ((12, [0, 1]), {}, TypeError, "bytes-like"),
        ((b"abc", [0, 1, 2, 3]), {}, ValueError, "would exceed n"),
    ]:
        with pytest.raises(error, match=message):
            w.write_packed(*args, **kwargs)
    assert w.count == 1
    w.write_packed(b"cd", [0, 1, 2])
    w.close()
    with ffrecord.FileReader(path) as r:
        assert r.read_bytes(range(r.n)) == [b"a", b"c", b"d"]
    with pytest.raises(ValueError, match="closed"):
        w.write_packed(b"ab", [0, 1])
