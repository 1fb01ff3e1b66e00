"""``ffrecord convert`` from Parquet, Arrow IPC, Hugging Face datasets and TFRecord,
each written by its own library."""

import json
import os
import struct

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import ffrecord  # noqa: E402
from ffrecord._core import crc32c  # noqa: E402
from ffrecord.cli import main  # noqa: E402
from ffrecord.tools import convert as convert_mod  # noqa: E402
from ffrecord.tools.columns import decode_row  # noqa: E402
from ffrecord.tools.records import decode_parts  # noqa: E402


def cli(*args):
    return main([str(a) for a in args])


def dataset(dst):
    """(records as bytes, keys, metadata, manifest) of a converted directory; it validates."""
    with open(os.path.join(dst, "index.json")) as f:
        doc = json.load(f)
    first = 0
    for entry in doc["shards"]:
        data = open(os.path.join(dst, entry["path"]), "rb").read()
        assert entry["crc32c"] == f"{crc32c(data):08x}" and entry["first"] == first
        first += entry["records"]
    assert doc["records"] == first
    assert cli("validate", dst, "-q") == 0
    with ffrecord.FileReader(dst) as r:
        records = [r.read_one(i).tobytes() for i in range(r.n)]
        keys = [r.key(i) for i in range(r.n)]
        meta = r.file_info(0)["metadata"]
    return records, keys, meta, doc


def sample_table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table({
        "id": [f"sample-{i:05d}" for i in range(n)],
        "image": [rng.bytes(int(rng.integers(0, 64))) for _ in range(n)],
        "label": pa.array(rng.integers(-5, 1000, n), pa.int64()),
        "score": pa.array(rng.random(n).astype(np.float32), pa.float32()),
        "caption": [None if i % 7 == 0 else f"caption {i} é" for i in range(n)],
        "tags": [[f"t{i % 3}", "x"] for i in range(n)],
    })


def test_parquet_rows_become_parts_records_keyed_by_a_column(tmp_path):
    table = sample_table()
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(table.slice(0, 170), src / "part-0.parquet", row_group_size=50)
    pq.write_table(table.slice(170), src / "part-1.parquet", row_group_size=33)
    (src / "_SUCCESS").write_bytes(b"")
    dst = tmp_path / "out"
    assert cli("convert", src, dst, "--key-column", "id", "--records-per-shard", "64", "-q") == 0
    records, keys, meta, doc = dataset(dst)
    rows = table.to_pylist()
    assert keys == [r["id"] for r in rows]
    assert meta["ffrecord.layout"] == "parts"
    assert [v["name"] for v in meta["ffrecord.columns"]["values"]] == ["image", "label", "score", "caption", "tags"]
    assert len(doc["shards"]) == 5 and doc["source"]["kind"] == "parquet"
    for rec, row in zip(records, rows):
        parts = decode_parts(rec)
        assert parts["image"].tobytes() == row["image"]
        assert struct.unpack("<q", parts["label"].tobytes())[0] == row["label"]
        assert ("caption" in parts) == (row["caption"] is not None)  # a null leaves its part out
        got = decode_row(rec, meta)
        assert got["label"] == row["label"] and got["caption"] == row["caption"] and got["tags"] == row["tags"]
        assert got["score"] == pytest.approx(row["score"])


def test_record_dataset_decodes_rows_with_the_manifest_metadata(tmp_path):
    torch_dataset = pytest.importorskip("ffrecord.torch")
    import functools

    table = sample_table(50, seed=4)
    pq.write_table(table, tmp_path / "t.parquet")
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "t.parquet", dst, "--key-column", "id", "-q") == 0
    meta = json.load(open(dst / "index.json"))["metadata"]
    ds = torch_dataset.RecordDataset(dst, decode=functools.partial(decode_row, metadata=meta))
    rows = table.to_pylist()
    for i in (0, 7, 49):
        got = ds[i]
        assert got["image"] == rows[i]["image"] and got["caption"] == rows[i]["caption"]
        assert got["tags"] == rows[i]["tags"] and "id" not in got
    with pytest.raises(ValueError, match="not a parts record"):
        decode_row(b"\x05\x00", meta)
    with pytest.raises(ValueError, match="describes no columns"):
        decode_row(b"", {})


def test_a_single_value_column_is_stored_as_its_bytes(tmp_path):
    rng = np.random.default_rng(3)
    blobs = [rng.bytes(int(rng.integers(1, 2000))) for _ in range(120)]
    path = tmp_path / "blobs.parquet"
    pq.write_table(pa.table({"key": list(range(120)), "data": blobs}), path, row_group_size=17)
    dst = tmp_path / "out"
    assert cli("convert", path, dst, "--key-column", "key", "--shard-size", "40000", "-q") == 0  # kind guessed
    records, keys, meta, doc = dataset(dst)
    assert records == blobs
    assert keys == [str(i) for i in range(120)]
    assert meta["ffrecord.layout"] == "column" and len(doc["shards"]) > 2


def test_arrow_ipc_file_and_stream_formats(tmp_path):
    table = sample_table(90, seed=1).select(["image", "label"])
    file_path, stream_path = tmp_path / "a.arrow", tmp_path / "b.arrows"
    with pa.ipc.new_file(str(file_path), table.schema) as w:
        for batch in table.slice(0, 50).to_batches(max_chunksize=20):
            w.write_batch(batch)
    with pa.ipc.new_stream(str(stream_path), table.schema) as w:
        for batch in table.slice(50).to_batches(max_chunksize=15):
            w.write_batch(batch)
    dst = tmp_path / "out"
    assert cli("convert", str(tmp_path / "*.arrow*"), dst, "--from", "arrow", "--records-per-shard", "32", "-q") == 0
    records, keys, meta, _ = dataset(dst)
    assert not any(keys)  # no key column: no keys
    assert [decode_row(r, meta) for r in records] == table.to_pylist()


def test_hugging_face_saved_dataset_with_images_and_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)) for _ in range(40)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]),
                                  "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(40)],
                                     "text": [f"row {i}" for i in range(40)]}, features=features)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(saved), num_shards={"train": 3,
                                                                                                           "test": 1})
    dst = tmp_path / "out"
    assert cli("convert", saved, dst, "-q") == 2  # a DatasetDict: one split at a time
    assert cli("convert", saved / "train", dst, "--key-column", "text", "--records-per-shard", "16", "-q") == 0
    records, keys, meta, doc = dataset(dst)
    assert doc["source"]["kind"] == "hf" and doc["source"]["files"] == 3
    assert keys == [f"row {i}" for i in range(40)]
    assert meta["hf_features"]["label"]["names"] == ["cat", "dog"]
    original = ds.cast_column("image", datasets.Image(decode=False))
    for rec, row in zip(records, original):
        got = decode_row(rec, meta)
        assert got["image"] == row["image"]["bytes"] and got["label"] == row["label"]


def test_unsupported_columns_and_bad_key_columns_are_usage_errors(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": [1.5, 2.5], "v": [b"a", b"b"]}), path)
    assert cli("convert", path, tmp_path / "o1", "--key-column", "nope", "-q") == 2
    assert "key column 'nope' is not a column" in capsys.readouterr().err
    assert cli("convert", path, tmp_path / "o2", "--key-column", "k", "-q") == 2
    assert "key column 'k' has type float64" in capsys.readouterr().err
    pq.write_table(pa.table({"when": pa.array([1, 2], pa.timestamp("s")), "v": [b"a", b"b"]}), path)
    assert cli("convert", path, tmp_path / "o3", "-q") == 2
    err = capsys.readouterr().err
    assert "'when'" in err and str(path) in err
    assert cli("convert", tmp_path / "x.jsonl", tmp_path / "o4", "--from", "jsonl", "--key-column", "k") == 2


def test_files_with_different_columns_and_null_keys_are_refused(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"k": ["a", "b"], "v": [b"1", b"2"]}), src / "0.parquet")
    pq.write_table(pa.table({"k": ["c"], "w": [b"3"]}), src / "1.parquet")
    assert cli("convert", src, tmp_path / "o1", "-q") == 1
    assert "differ from those of" in capsys.readouterr().err
    pq.write_table(pa.table({"k": ["c", None], "v": [b"3", b"4"]}), src / "1.parquet")
    assert cli("convert", src, tmp_path / "o2", "--key-column", "k", "-q") == 1
    err = capsys.readouterr().err
    assert "1.parquet: row 1: key column 'k' is null" in err
    (src / "1.parquet").write_bytes(b"not parquet at all")
    assert cli("convert", src, tmp_path / "o3", "-q") == 1
    assert "1.parquet: not a readable parquet file" in capsys.readouterr().err


def test_parquet_split_across_two_ranks_equals_one_rank(tmp_path):
    table = sample_table(200, seed=2)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=30)
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("convert", path, one, "--key-column", "id", "--records-per-shard", "45", "-q") == 0
    for rank in (1, 0):
        assert cli("convert", path, two, "--key-column", "id", "--records-per-shard", "45", "-q",
                   "--rank", rank, "--world-size", 2) == 0
    a, b = dataset(one), dataset(two)
    assert a[0] == b[0] and a[1] == b[1]
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    # A rerun with another key column is another conversion, not a resume.
    with pytest.raises(Exception, match="another conversion"):
        convert_mod.convert(path, two, "parquet", key_column="caption", records_per_shard=45)


# ---- TFRecord ----------------------------------------------------------------
def write_tfrecords(path, payloads):
    tfrecord = pytest.importorskip("tfrecord")
    writer = tfrecord.TFRecordWriter(str(path))
    for p in payloads:
        writer.write({"data": (p, "byte"), "n": (len(p), "int")})
    writer.close()


def parse_example(record):
    from tfrecord import example_pb2

    ex = example_pb2.Example()
    ex.ParseFromString(record)
    return ex.features.feature["data"].bytes_list.value[0], ex.features.feature["n"].int64_list.value[0]


def test_tfrecord_entries_become_records_across_files(tmp_path):
    rng = np.random.default_rng(7)
    src = tmp_path / "tf"
    src.mkdir()
    expected = []
    for k in range(3):
        payloads = [rng.bytes(int(rng.integers(1, 300))) for _ in range(25 + k)]
        write_tfrecords(src / f"train-{k}.tfrecord", payloads)
        expected += payloads
    dst = tmp_path / "out"
    assert cli("convert", src, dst, "--records-per-shard", "20", "-q") == 0  # kind guessed from the names
    records, keys, _, doc = dataset(dst)
    assert len(records) == 78 and doc["source"]["kind"] == "tfrecord" and len(doc["shards"]) == 4
    # Each record is the serialized tf.train.Example the library wrote, unchanged.
    assert [parse_example(r) for r in records] == [(p, len(p)) for p in expected]


def test_tfrecord_damage_is_reported_with_file_and_entry(tmp_path, capsys):
    path = tmp_path / "d.tfrecord"
    write_tfrecords(path, [b"a" * 40, b"b" * 40, b"c" * 40])
    good = path.read_bytes()
    entry = len(good) // 3

    def damaged(offset, byte=0xFF):
        data = bytearray(good)
        data[offset] ^= byte
        path.write_bytes(bytes(data))

    damaged(entry + 20)  # inside entry 1's payload
    assert cli("convert", path, tmp_path / "o1", "-q") == 1
    err = capsys.readouterr().err
    assert f"{path}: entry 1" in err and "payload's checksum" in err
    damaged(entry + 2)  # entry 1's length
    assert cli("convert", path, tmp_path / "o2", "-q") == 1
    assert "entry 1" in capsys.readouterr().err
    path.write_bytes(good[:-10])  # cut off inside the last entry
    assert cli("convert", path, tmp_path / "o3", "-q") == 1
    err = capsys.readouterr().err
    assert "entry 2" in err and "cut off" in err

    from ffrecord.tools.sources.tfrecord import TFRecordSource

    path.write_bytes(bytearray(good[:entry + 20]) + bytes([good[entry + 20] ^ 1]) + good[entry + 21:])
    src = TFRecordSource(path)
    src.scan(need_sizes=False)
    with pytest.raises(ffrecord.ChecksumError, match="entry 1"):
        list(src.read(src.locate(0, 3)))
    import gzip

    path.write_bytes(gzip.compress(good))
    with pytest.raises(ffrecord.FormatError, match="compressed"):
        TFRecordSource(path).scan(need_sizes=False)
