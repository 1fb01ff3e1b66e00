"""`ffrecord convert` from every source kind, built with the real libraries.

Each test builds a small real source (files, PIL images, tarfile shards, an
LMDB environment, jsonl, npy, golden v1 record files), converts it through the
command line entry point, and checks that every record and key arrives intact
and in source order, that index.json describes the shards exactly, and that
the output validates.
"""

import hashlib
import io
import json
import os
import tarfile

import lmdb
import numpy as np
import pytest
from PIL import Image

import ffrecord
from ffrecord._core import crc32c
from ffrecord.cli import main
from ffrecord.tools.records import decode_labeled, decode_parts, encode_labeled, encode_parts

GOLDEN_V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "v1")


def cli(*args):
    return main([str(a) for a in args])


def records_of(path):
    with ffrecord.FileReader(path) as r:
        return [r.read_one(i).tobytes() for i in range(len(r))], [r.key(i) for i in range(len(r))]


def check_manifest(dst):
    """index.json lists every shard with its true record count, size and CRC32C."""
    with open(os.path.join(dst, "index.json")) as f:
        doc = json.load(f)
    first = 0
    for entry in doc["shards"]:
        path = os.path.join(dst, entry["path"])
        data = open(path, "rb").read()
        assert entry["bytes"] == len(data)
        assert entry["crc32c"] == f"{crc32c(data):08x}"
        with ffrecord.FileReader(path) as r:
            assert r.n == entry["records"]
        assert entry["first"] == first
        first += entry["records"]
    assert doc["records"] == first
    assert doc["tool"] == f"ffrecord {ffrecord.__version__}"
    assert cli("validate", dst, "-q") == 0
    return doc


def make_folder(root, n=23):
    rng = np.random.default_rng(1)
    files = {}
    for i in range(n):
        rel = f"d{i % 3}/sub/f{i:03d}.bin" if i % 2 else f"f{i:03d}.bin"
        data = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        files[rel] = data
    return files


def walk_order(files):
    """Depth first, sorted names, a directory's files before its subdirectories (os.walk's order)."""
    def key(rel):
        *dirs, name = rel.split("/")
        return [(1, d) for d in dirs] + [(0, name)]

    return sorted(files, key=key)


@pytest.mark.parametrize("workers", [1, 2])
def test_folder_keeps_every_file_and_its_path(tmp_path, workers):
    files = make_folder(tmp_path / "src")
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "src", dst, "--from", "folder", "--records-per-shard", 5,
               "--workers", workers, "-q") == 0
    datas, keys = records_of(dst)
    assert keys == walk_order(files)
    assert datas == [files[k] for k in keys]
    with ffrecord.FileReader(dst) as r:
        for k in ("f000.bin", "d1/sub/f001.bin"):
            assert r.read_one(r.find(k)).tobytes() == files[k]
    doc = check_manifest(dst)
    assert len(doc["shards"]) == 5 and doc["keys"] is True
    assert doc["source"]["kind"] == "folder" and doc["options"]["records_per_shard"] == 5


def test_shard_size_splits_in_source_order(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    expected = []
    for i in range(40):
        data = bytes([i]) * (1000 + 37 * i)
        (src / f"{i:02d}").write_bytes(data)
        expected.append(data)
    dst = tmp_path / "out"
    assert cli("convert", src, dst, "--shard-size", "8KB", "-q") == 0
    doc = check_manifest(dst)
    assert len(doc["shards"]) > 4
    for entry in doc["shards"][:-1]:
        assert entry["raw_bytes"] <= 8000
    datas, keys = records_of(dst)
    assert datas == expected and keys == [f"{i:02d}" for i in range(40)]


def test_imagefolder_images_labels_and_classes(tmp_path):
    src = tmp_path / "imgs"
    pixels = {}
    for label, cls in enumerate(["ant", "bee", "cat"]):
        for i in range(4):
            rel = f"{cls}/{'nested/' if i == 3 else ''}{i}.png"
            os.makedirs(os.path.dirname(src / rel), exist_ok=True)
            arr = np.full((6, 5, 3), 10 * label + i, dtype=np.uint8)
            Image.fromarray(arr).save(src / rel)
            pixels[rel] = (arr, label)
    (src / "bee" / "notes.txt").write_text("not an image")
    dst = tmp_path / "out"
    assert cli("convert", src, dst, "--from", "imagefolder", "--records-per-shard", 4, "--workers", 2, "-q") == 0
    with ffrecord.FileReader(dst) as r:
        assert r.metadata["classes"] == ["ant", "bee", "cat"]
        assert r.metadata["ffrecord.layout"] == "labeled"
        assert len(r) == 12
        seen = []
        for i in range(len(r)):
            image, label = decode_labeled(r.read_one(i))
            arr, want_label = pixels[r.key(i)]
            assert label == want_label
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.tobytes()))), arr)
            seen.append(label)
        assert seen == sorted(seen)  # class by class, as in the source
    check_manifest(dst)

    # The PyTorch dataset opens the same directory, keys included.
    from ffrecord.torch import RecordDataset

    ds = RecordDataset(dst, decode=decode_labeled)
    assert len(ds) == 12
    image, label = ds[10]
    assert label == 2 and ds.reader.key(10) == "cat/2.png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.tobytes()))), pixels["cat/2.png"][0])
    assert [lbl for _, lbl in ds.__getitems__([0, 4, 8])] == [0, 1, 2]


def make_tar(path, samples, compress=False):
    mode = "w:gz" if compress else "w"
    with tarfile.open(path, mode) as t:
        for key, parts in samples:
            for ext, data in parts:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind,compress", [("tar", False), ("webdataset", True)])
def test_tar_samples_grouped_by_basename(tmp_path, kind, compress):
    rng = np.random.default_rng(2)
    shards = []
    (tmp_path / "tars").mkdir()
    for s in range(2):
        samples = [(f"train/{s}{i:04d}", [("jpg", rng.bytes(int(rng.integers(1, 500)))),
                                            ("cls", str(i % 5).encode()),
                                            ("meta.json", json.dumps({"i": i}).encode())])
                   for i in range(7)]
        name = f"shard-{s}.tar" + (".gz" if compress else "")
        make_tar(tmp_path / "tars" / name, samples, compress)
        shards += samples
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "tars", dst, "--from", kind, "--records-per-shard", 3, "-q") == 0
    with ffrecord.FileReader(dst) as r:
        assert len(r) == len(shards)
        for i, (key, parts) in enumerate(shards):
            assert r.key(i) == key
            got = decode_parts(r.read_one(i))
            assert list(got) == [ext for ext, _ in parts]
            assert all(got[ext].tobytes() == data for ext, data in parts)
        assert r.find("train/10003") == 10
    check_manifest(dst)


def make_lmdb(path, items):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_lmdb_every_key_and_value(tmp_path, workers):
    rng = np.random.default_rng(3)
    items = {f"sample-{i:05d}".encode(): rng.bytes(int(rng.integers(0, 2000))) for i in range(150)}
    make_lmdb(tmp_path / "db", items)
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "db", dst, "--shard-size", "40KB", "--workers", workers, "-q") == 0
    datas, keys = records_of(dst)
    assert keys == sorted(k.decode() for k in items)  # LMDB's key order
    assert datas == [items[k.encode()] for k in keys]
    with ffrecord.FileReader(dst) as r:
        assert r.read_one(r.find("sample-00077")).tobytes() == items[b"sample-00077"]
        assert r.metadata["lmdb_key_encoding"] == "utf-8"
    doc = check_manifest(dst)
    assert len(doc["shards"]) >= 4


def test_lmdb_binary_keys_are_kept_as_hex(tmp_path):
    items = {bytes([0xff, i]): bytes([i]) * 3 for i in range(10)}
    make_lmdb(tmp_path / "db", items)
    assert cli("convert", tmp_path / "db", tmp_path / "out", "--from", "lmdb", "-q") == 0
    datas, keys = records_of(tmp_path / "out")
    assert keys == [bytes([0xff, i]).hex() for i in range(10)]
    assert datas == [bytes([i]) * 3 for i in range(10)]
    with ffrecord.FileReader(tmp_path / "out") as r:
        assert r.metadata["lmdb_key_encoding"] == "hex"


def test_jsonl_one_record_per_line(tmp_path):
    lines = [json.dumps({"i": i, "text": "é" * i}) for i in range(30)]
    body = "\n".join(lines[:10]) + "\n\n" + "\r\n".join(lines[10:20]) + "\r\n" + "\n".join(lines[20:])  # no final newline
    (tmp_path / "a.jsonl").write_bytes(body.encode("utf-8"))
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "a.jsonl", dst, "--records-per-shard", 7, "--workers", 2, "-q") == 0
    datas, keys = records_of(dst)
    assert datas == [line.encode("utf-8") for line in lines]
    assert keys == [""] * 30  # no keys for jsonl
    check_manifest(dst)


def test_jsonl_line_endings_across_read_chunks(tmp_path, monkeypatch):
    import ffrecord.tools.sources.jsonl as jsonl_source

    monkeypatch.setattr(jsonl_source, "_CHUNK", 5)  # every line ending lands on a chunk edge somewhere
    body = b'{"a":1}\r\n\r\n{"b":22}\n\n\r\n{"c":333}\r\nx\r'
    (tmp_path / "e.jsonl").write_bytes(body)
    assert cli("convert", tmp_path / "e.jsonl", tmp_path / "out", "--shard-size", "10", "-q") == 0
    datas, _ = records_of(tmp_path / "out")
    assert datas == [b'{"a":1}', b'{"b":22}', b'{"c":333}', b"x\r"]  # a final '\r' without '\n' is data
    doc = check_manifest(tmp_path / "out")
    assert [s["raw_bytes"] for s in doc["shards"]] == [7, 8, 9, 2]  # sizes from the scan match the records


def test_folder_symlink_loop_is_walked_once(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.txt").write_bytes(b"f")
    os.symlink(src, src / "a" / "back")  # a -> back -> src -> a -> ...
    os.symlink(src / "a", src / "same")  # another name for a: walked, not a loop
    assert cli("convert", src, tmp_path / "out", "--from", "folder", "-q") == 0
    assert records_of(tmp_path / "out")[1] == ["a/f.txt", "same/f.txt"]


def test_npy_one_record_per_row(tmp_path):
    arr = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4) / 7
    np.save(tmp_path / "a.npy", np.asfortranarray(arr))
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "a.npy", dst, "--records-per-shard", 2, "-q") == 0
    with ffrecord.FileReader(dst) as r:
        meta = r.metadata["npy"]
        dtype = np.lib.format.descr_to_dtype(meta["dtype"])
        rows = [np.frombuffer(r.read_one(i), dtype).reshape(meta["shape"]) for i in range(len(r))]
    np.testing.assert_array_equal(np.stack(rows), arr)
    check_manifest(dst)


def test_npy_of_objects_is_refused(tmp_path, capsys):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert cli("convert", tmp_path / "o.npy", tmp_path / "out", "-q") == 1
    err = capsys.readouterr().err
    assert "allow_pickle" in err or "object" in err.lower()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_v1_files_are_upgraded_to_v2(tmp_path):
    with open(os.path.join(GOLDEN_V1, "manifest.json")) as f:
        golden = json.load(f)
    dst = tmp_path / "small"
    assert cli("convert", os.path.join(GOLDEN_V1, "small.ffr"), dst, "--from", "ffrecord",
               "--records-per-shard", 16, "-q") == 0
    datas, _ = records_of(dst)
    want = next(f["sha256"] for f in golden["files"] if f["name"] == "small.ffr")
    assert [hashlib.sha256(d).hexdigest() for d in datas] == want
    with ffrecord.FileReader(dst) as r:
        assert {r.file_info(f)["version"] for f in range(len(r.paths))} == {2}
    check_manifest(dst)


def test_reshard_and_recompress_keeps_records_keys_and_metadata(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    records = [(b"%05d " % i) * (i % 40) for i in range(90)]
    with ffrecord.FileWriter(src / "a.ffr", metadata={"owner": "team"}) as w:
        for i, rec in enumerate(records[:50]):
            w.write_one(rec, key=f"k{i}")
    with ffrecord.FileWriter(src / "b.ffr", metadata={"owner": "team"}) as w:
        for i, rec in enumerate(records[50:], 50):
            w.write_one(rec, key=f"k{i}")
    dst = tmp_path / "out"
    assert cli("convert", src, dst, "--records-per-shard", 32, "--compression", "zstd:9", "-q") == 0
    datas, keys = records_of(dst)
    assert datas == records and keys == [f"k{i}" for i in range(90)]
    with ffrecord.FileReader(dst) as r:
        assert r.metadata["owner"] == "team"
        assert r.find("k60") == 60
    doc = check_manifest(dst)
    assert [s["records"] for s in doc["shards"]] == [32, 32, 26]
    assert doc["bytes"] < sum(os.path.getsize(src / n) for n in ("a.ffr", "b.ffr"))


def compressible_jsonl(path, n=2000):
    rng = np.random.default_rng(4)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "user": f"user{int(rng.integers(0, 50))}",
                                "text": "the quick brown fox jumps over the lazy dog " * int(rng.integers(1, 3))}) + "\n")
    return [line.rstrip("\n").encode() for line in open(path)]


def test_zstd_with_and_without_dictionary_round_trips_and_shrinks(tmp_path, capsys):
    lines = compressible_jsonl(tmp_path / "c.jsonl")
    sizes = {}
    for name, extra in [("plain", []), ("zstd", ["--compression", "zstd"]),
                        ("dict", ["--compression", "zstd:5", "--zstd-dict"])]:
        dst = tmp_path / name
        assert cli("convert", tmp_path / "c.jsonl", dst, "--records-per-shard", 700, "-q", *extra) == 0
        datas, _ = records_of(dst)
        assert datas == lines
        check_manifest(dst)
        sizes[name] = json.load(open(dst / "index.json"))["bytes"]
    assert sizes["dict"] < sizes["zstd"] < sizes["plain"]
    # Every shard carries the same trained dictionary; info reports codec and ratio.
    with ffrecord.FileReader(tmp_path / "dict") as r:
        dict_sizes = {r.file_info(f)["dictionary_size"] for f in range(len(r.paths))}
    assert len(dict_sizes) == 1 and dict_sizes.pop() > 0
    capsys.readouterr()
    assert cli("info", tmp_path / "dict", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"].startswith("zstd:5") and "dictionary" in info["codec"]
    assert info["compression_ratio"] > 2


def test_zstd_dictionary_from_a_file(tmp_path):
    lines = compressible_jsonl(tmp_path / "c.jsonl", 500)
    d = ffrecord.codec.train_dictionary(lines[:400], size=4096)
    (tmp_path / "my.dict").write_bytes(d)
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "c.jsonl", dst, "--compression", "zstd", "--zstd-dict-file",
               tmp_path / "my.dict", "-q") == 0
    assert records_of(dst)[0] == lines
    with ffrecord.FileReader(dst) as r:
        assert r.file_info(0)["dictionary_size"] == len(d)


def test_kind_is_guessed_from_the_source(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int64))
    make_lmdb(tmp_path / "db", {b"a": b"1", b"b": b"2"})
    assert cli("convert", tmp_path / "a.npy", tmp_path / "o1", "-q") == 0
    assert cli("convert", tmp_path / "db", tmp_path / "o2", "-q") == 0
    assert json.load(open(tmp_path / "o1" / "index.json"))["source"]["kind"] == "npy"
    assert json.load(open(tmp_path / "o2" / "index.json"))["source"]["kind"] == "lmdb"


def test_output_inside_a_folder_source_is_left_out(tmp_path):
    src = tmp_path / "src"
    make_folder(src, 6)
    assert cli("convert", src, src / "ffr", "--from", "folder", "-q") == 0
    _, keys = records_of(src / "ffr")
    assert len(keys) == 6 and not any(k.startswith("ffr/") for k in keys)


def test_a_finished_conversion_rerun_writes_nothing(tmp_path, capsys):
    make_folder(tmp_path / "src", 10)
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "src", dst, "--records-per-shard", 3) == 0
    stamps = {n: os.stat(dst / n).st_mtime_ns for n in os.listdir(dst) if n.endswith(".ffr")}
    capsys.readouterr()
    assert cli("convert", tmp_path / "src", dst, "--records-per-shard", 3) == 0
    assert "wrote 0 shard(s), 4 already complete" in capsys.readouterr().out
    assert stamps == {n: os.stat(dst / n).st_mtime_ns for n in os.listdir(dst) if n.endswith(".ffr")}


def test_refuses_to_mix_conversions_or_fill_a_used_directory(tmp_path, capsys):
    make_folder(tmp_path / "src", 10)
    dst = tmp_path / "out"
    assert cli("convert", tmp_path / "src", dst, "--records-per-shard", 3, "-q") == 0
    capsys.readouterr()
    assert cli("convert", tmp_path / "src", dst, "--records-per-shard", 4, "-q") == 2
    err = capsys.readouterr().err
    assert "another conversion" in err and len(err.strip().splitlines()) == 1
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert cli("convert", tmp_path / "src", used, "-q") == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(used) == ["notes.txt"]


def test_record_layout_helpers_round_trip_and_reject_garbage():
    rec = encode_parts([("jpg", b"\xff\xd8abc"), ("cls", b"3"), ("empty", b"")])
    got = decode_parts(rec)
    assert {k: v.tobytes() for k, v in got.items()} == {"jpg": b"\xff\xd8abc", "cls": b"3", "empty": b""}
    assert decode_parts(np.frombuffer(rec, np.uint8))["cls"].tobytes() == b"3"
    for bad in (b"", rec[:-1], rec + b"x", b"\x05\x00\x00\x00"):
        with pytest.raises(ValueError):
            decode_parts(bad)
    image, label = decode_labeled(encode_labeled(b"PNG...", 42))
    assert (image.tobytes(), label) == (b"PNG...", 42)
    with pytest.raises(ValueError):
        decode_labeled(b"1234")
