"""Write then read back, byte for byte, through every I/O engine."""

import hashlib
import json
import os
import pickle

import numpy as np
import pytest

import ffrecord
from damage import write_file


def records(n, seed=0, max_len=3000):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(0, max_len)), dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.mark.parametrize("direct", [False, True])
def test_random_batches_byte_for_byte(tmp_path, engine, direct):
    recs = records(500)
    p = write_file(tmp_path / "d.ffr", recs)
    r = ffrecord.FileReader(p, direct=direct)
    assert r.engine == engine
    rng = np.random.default_rng(5)
    for _ in range(20):
        idx = rng.integers(0, len(recs), int(rng.integers(1, 300)))
        got = r.read(idx)
        assert [g.tobytes() for g in got] == [recs[i] for i in idx]
    assert r.read_one(-1).tobytes() == recs[-1]


def test_zero_records(tmp_path, engine):
    p = write_file(tmp_path / "z.ffr", [])
    r = ffrecord.FileReader(p)
    assert r.n == 0 and len(r) == 0
    assert r.read([]) == []
    with pytest.raises(IndexError):
        r.read_one(0)


def test_one_record_and_empty_records(tmp_path, engine):
    p = write_file(tmp_path / "e.ffr", [b"", b"", b"x", b""])
    r = ffrecord.FileReader(p)
    out = r.read([0, 1, 2, 3, 2])
    assert [a.tobytes() for a in out] == [b"", b"", b"x", b"", b"x"]
    p1 = write_file(tmp_path / "one.ffr", [b"only"])
    assert ffrecord.FileReader(p1).read_one(0).tobytes() == b"only"


def test_hundred_thousand_small_records(tmp_path, engine):
    rng = np.random.default_rng(3)
    lens = rng.integers(0, 64, 100_000)
    blob = rng.integers(0, 256, int(lens.sum()), dtype=np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens
    p = tmp_path / "many.ffr"
    with ffrecord.FileWriter(p, n=len(lens)) as w:
        for s, e in zip(starts, ends):
            w.write_one(blob[s:e])
    r = ffrecord.FileReader(p)
    assert r.n == 100_000
    idx = rng.permutation(100_000)[:20_000]
    got = r.read(idx)
    for i, g in zip(idx, got):
        assert np.array_equal(g, blob[starts[i]:ends[i]])
    data, offsets = r.read_packed(idx[:1000])
    assert offsets[-1] == data.size
    for k, i in enumerate(idx[:1000]):
        assert np.array_equal(data[offsets[k]:offsets[k + 1]], blob[starts[i]:ends[i]])


def test_record_larger_than_16_mib(tmp_path, engine):
    big = np.random.default_rng(4).integers(0, 256, (17 << 20) + 123, dtype=np.uint8)
    p = write_file(tmp_path / "big.ffr", [b"a", big, b"b"])
    for direct in (False, True):
        r = ffrecord.FileReader(p, direct=direct)
        a, b, c = r.read([0, 1, 2])
        assert np.array_equal(b, big) and a.tobytes() == b"a" and c.tobytes() == b"b"


def test_input_types_accepted_by_the_writer(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    strided = np.arange(20, dtype=np.uint8)[::2]
    floats = np.arange(4, dtype=np.float32)
    inputs = [b"bytes", bytearray(b"ba"), memoryview(b"mv"), arr, strided, floats]
    p = write_file(tmp_path / "t.ffr", inputs)
    got = [a.tobytes() for a in ffrecord.FileReader(p).read(range(len(inputs)))]
    assert got == [b"bytes", b"ba", b"mv", arr.tobytes(), strided.tobytes(), floats.tobytes()]


def test_results_are_owning_writable_numpy_arrays(tmp_path):
    p = write_file(tmp_path / "o.ffr", [b"abc", b"defg"])
    r = ffrecord.FileReader(p)
    a, b = r.read([0, 1])
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 1
    r.close()
    del r
    a[0] = ord("x")  # the block outlives the reader and is writable
    assert a.tobytes() == b"xbc" and b.tobytes() == b"defg"


def test_multi_file_dataset_and_directory_input(tmp_path):
    shards = [records(n, seed=n) for n in (3, 0, 5, 1)]
    d = tmp_path / "ds"
    d.mkdir()
    for k, recs in enumerate(shards):
        write_file(d / f"part-{k}.ffr", recs)
    flat = [r for recs in shards for r in recs]
    for src in (d, [d / f"part-{k}.ffr" for k in range(4)]):
        r = ffrecord.FileReader(src)
        assert r.n == len(flat)
        assert [a.tobytes() for a in r.read(range(r.n))] == flat
        assert [a.tobytes() for a in r.read(list(range(r.n))[::-1])] == flat[::-1]


def test_directory_with_manifest_uses_its_order(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    write_file(d / "b.ffr", [b"first"])
    write_file(d / "a.ffr", [b"second"])
    (d / "index.json").write_text(json.dumps({"shards": [{"path": "b.ffr"}, {"path": "a.ffr"}]}))
    r = ffrecord.FileReader(d)
    assert [x.tobytes() for x in r.read([0, 1])] == [b"first", b"second"]


def test_index_types(tmp_path):
    recs = records(20)
    r = ffrecord.FileReader(write_file(tmp_path / "i.ffr", recs))
    want = [recs[i] for i in (1, 3, 19)]
    for idx in ([1, 3, -1], (1, 3, 19), np.array([1, 3, 19], dtype=np.int32), np.array([1, 3, 19], dtype=np.uint64)):
        assert [a.tobytes() for a in r.read(idx)] == want
    assert [a.tobytes() for a in r.read(range(1, 20, 9))] == [recs[1], recs[10], recs[19]]
    assert r.read_one(np.int64(-20)).tobytes() == recs[0]


def test_keys_and_find(tmp_path):
    p = tmp_path / "k.ffr"
    with ffrecord.FileWriter(p) as w:
        w.write_batch([b"1", b"2", b"3"], keys=["x/1.jpg", "x/2.jpg", "ü"])
    r = ffrecord.FileReader(p)
    assert r.key(2) == "ü" and r.find("x/2.jpg") == 1
    with pytest.raises(KeyError):
        r.find("nope")


def test_metadata_round_trip(tmp_path):
    p = tmp_path / "m.ffr"
    meta = {"schema": {"image": "jpeg", "label": "int"}, "n": 2}
    with ffrecord.FileWriter(p, metadata=meta) as w:
        w.write_batch([b"a", b"b"])
    assert ffrecord.FileReader(p).metadata == meta


def test_read_into_caller_buffers(tmp_path, engine):
    recs = records(30, seed=9)
    r = ffrecord.FileReader(write_file(tmp_path / "ri.ffr", recs))
    idx = [5, 0, 29, 5]
    lens = r.lengths(idx)
    bufs = [np.empty(int(n), dtype=np.uint8) for n in lens]
    r.read_into(idx, bufs)
    assert [b.tobytes() for b in bufs] == [recs[i] for i in idx]
    nonempty = next(i for i, rec in enumerate(recs) if rec)
    with pytest.raises(ValueError, match="holds"):
        r.read_into([nonempty], [np.empty(0, dtype=np.uint8)])


def test_read_packed_into_one_caller_buffer(tmp_path, engine):
    recs = records(30, seed=10)
    r = ffrecord.FileReader(write_file(tmp_path / "rp.ffr", recs))
    idx = [5, 0, 29, 5, 12]
    need = int(r.lengths(idx).sum())
    out = np.full(need + 5, 0xEE, dtype=np.uint8)
    offsets = r.read_packed_into(idx, out)
    assert offsets.dtype == np.int64 and offsets.tolist()[0] == 0 and offsets[-1] == need
    assert [out[offsets[k]:offsets[k + 1]].tobytes() for k in range(len(idx))] == [recs[i] for i in idx]
    assert (out[need:] == 0xEE).all()  # nothing written past the records
    assert r.read_packed_into([], out).tolist() == [0]
    with pytest.raises(ValueError, match="holds"):
        r.read_packed_into(idx, np.empty(need - 1, dtype=np.uint8))
    with pytest.raises(ValueError):
        r.read_packed_into(idx, bytes(need))  # read-only
    with pytest.raises(IndexError):
        r.read_packed_into([30], out)
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read_packed_into(idx, out)


@pytest.mark.parametrize("direct", [False, True])
def test_read_bytes(tmp_path, engine, direct):
    recs = records(40, seed=11, max_len=70_000)  # past the fused copy's size threshold
    r = ffrecord.FileReader(write_file(tmp_path / "rb.ffr", recs), direct=direct)
    idx = [5, 0, 39, 5, -1]
    got = r.read_bytes(idx)
    assert all(type(g) is bytes for g in got)
    assert got == [recs[i] for i in idx]
    assert r.read_bytes([]) == []
    with pytest.raises(IndexError):
        r.read_bytes([40])
    with pytest.raises(TypeError):
        r.read_bytes(["a"])
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read_bytes([0])


def test_read_bytes_raises_on_a_corrupt_record(tmp_path):
    recs = records(10, seed=12, max_len=5000)
    p = write_file(tmp_path / "rbc.ffr", recs)
    victim = next(i for i, rec in enumerate(recs) if rec)
    with open(p, "r+b") as f:
        data = f.read()
        at = data.index(recs[victim])
        f.seek(at)
        f.write(bytes([data[at] ^ 0xFF]))
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.ChecksumError, match=f"record {victim}"):
            r.read_bytes([victim])


def test_zstd_compression_round_trip(tmp_path):
    p = tmp_path / "z.ffr"
    recs = [(b"compressible " * 200) + bytes([i]) for i in range(50)]
    with ffrecord.FileWriter(p, compression="zstd:5") as w:
        w.write_batch(recs)
    assert p.stat().st_size < sum(map(len, recs)) // 5
    r = ffrecord.FileReader(p)
    assert [a.tobytes() for a in r.read(range(50))] == recs
    data, offsets = r.read_packed([3, 1])
    assert data[offsets[0]:offsets[1]].tobytes() == recs[3]
    assert [b[0].tobytes() for b in r.prefetch([[4], [5]])] == [recs[4], recs[5]]
    assert r.read_bytes([7, 2]) == [recs[7], recs[2]]  # decompressed
    with pytest.raises(ValueError, match="read_packed"):
        r.read_packed_into([3], np.empty(1 << 16, dtype=np.uint8))


def test_zstd_with_dictionary(tmp_path):
    from ffrecord.codec import train_dictionary

    rng = np.random.default_rng(0)
    words = [bytes(rng.integers(97, 123, 8, dtype=np.uint8)) for _ in range(64)]
    recs = [b" ".join(words[j] for j in rng.integers(0, 64, 40)) for _ in range(300)]
    d = train_dictionary(recs, size=4096)
    p = tmp_path / "zd.ffr"
    with ffrecord.FileWriter(p, compression="zstd", zstd_dict=d) as w:
        w.write_batch(recs)
    r = ffrecord.FileReader(p)
    assert r.file_info(0)["dictionary_size"] == len(d)
    assert [a.tobytes() for a in r.read(range(300))] == recs


def test_v1_golden_files_read_bit_exactly(golden_v1, engine):
    with open(os.path.join(golden_v1, "manifest.json")) as f:
        manifest = json.load(f)
    for entry in manifest["files"]:
        r = ffrecord.FileReader(os.path.join(golden_v1, entry["name"]))
        assert r.n == entry["n"]
        assert r.file_info(0)["version"] == 1
        got = [hashlib.sha256(a.tobytes()).hexdigest() for a in r.read(range(r.n))]
        assert got == entry["sha256"], entry["name"]


def test_v1_shards_read_as_one_dataset(golden_v1):
    paths = [os.path.join(golden_v1, f"shard_{k}.ffr") for k in (0, 1)]
    r = ffrecord.FileReader(paths)
    assert r.n == 61
    single = [ffrecord.FileReader(p) for p in paths]
    flat = [a.tobytes() for s in single for a in s.read(range(s.n))]
    assert [a.tobytes() for a in r.read(range(61))] == flat


def test_v1_pickled_records(golden_v1):
    r = ffrecord.FileReader(os.path.join(golden_v1, "pickled.ffr"))
    for i in range(r.n):
        assert pickle.loads(r.read_one(i).tobytes()) == (i, f"label{i % 3}", [i * 0.5] * 3)


def test_v1_packed_folder_reads_without_unrestricted_unpickling(golden_v1):
    with open(os.path.join(golden_v1, "manifest.json")) as f:
        want = json.load(f)["packed_folder"]["files"]
    pf = ffrecord.PackedFolder(os.path.join(golden_v1, "packed_folder.ffr"))
    assert pf.num_files() == 3
    assert [os.fspath(p) for p in pf.list(recursive=True, list_dir=False)] == ["a.txt", "sub/b.bin", "sub/deep/c.json"]
    assert len(want) == 3
    for name, digest in want.items():
        assert hashlib.sha256(pf.read_one(name).tobytes()).hexdigest() == digest
    assert pf.is_dir("sub/deep") and pf.is_file("a.txt") and not pf.exists("nope")


def test_pack_folder_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "x" / "y").mkdir(parents=True)
    files = {"top.txt": b"top", "x/a.bin": os.urandom(100), "x/y/deep.json": b"{}", "x/y/empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    out = tmp_path / "packed.ffr"
    assert ffrecord.pack_folder(src, out) == 4
    pf = ffrecord.PackedFolder(out)
    for rel, data in files.items():
        assert pf.read_one(rel).tobytes() == data
    assert [a.tobytes() for a in pf.read(["x/a.bin", "top.txt"])] == [files["x/a.bin"], b"top"]
    assert pf.list("x", list_dir=False) == ["a.bin"]
    with pytest.raises(FileNotFoundError):
        pf.read_one("missing")
    with pytest.raises(IsADirectoryError):
        pf.read_one("x")


def test_reader_pickles_and_reopens(tmp_path):
    recs = records(10)
    r = ffrecord.FileReader(write_file(tmp_path / "p.ffr", recs), check_data=False)
    r2 = pickle.loads(pickle.dumps(r))
    assert r2.n == 10 and r2.read_one(4).tobytes() == recs[4]
    assert r2 is not r and r2._check_data is False


def test_direct_reads_of_v1_records_ending_at_end_of_file(golden_v1, engine):
    # In v1 the last record ends at EOF, so its aligned O_DIRECT read comes back short.
    path = os.path.join(golden_v1, "small.ffr")
    buffered = ffrecord.FileReader(path)
    direct = ffrecord.FileReader(path, direct=True)
    idx = [49, 0, 48, 49]
    assert [a.tobytes() for a in direct.read(idx)] == [a.tobytes() for a in buffered.read(idx)]
