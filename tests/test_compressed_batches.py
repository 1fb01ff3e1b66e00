"""Batches of zstd records decode in the core, in parallel: every read path returns
exactly the records that were written, and a record that does not decode is a
FormatError naming its file and index while the others stay readable."""

import json
import multiprocessing
import os
import random
import sys
import threading

import numpy as np
import pytest

import ffrecord

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import ffr_forge  # noqa: E402

zstd = pytest.importorskip("zstandard")


def make_records(n, seed=0):
    rng = random.Random(seed)
    words = "image label caption the of and a photo with red blue dog cat tree".split()
    out = []
    for i in range(n):
        if i % 17 == 5:
            out.append(b"")  # empty records are part of every batch below
            continue
        doc = {"id": i, "caption": " ".join(rng.choice(words) for _ in range(rng.randint(1, 600)))}
        out.append(json.dumps(doc).encode())
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three files read as one dataset: zstd, zstd with a dictionary, uncompressed."""
    root = tmp_path_factory.mktemp("compressed")
    records = make_records(300)
    dictionary = ffrecord.codec.train_dictionary(records, size=8192)
    paths = [root / "a-zstd.ffr", root / "b-dict.ffr", root / "c-plain.ffr"]
    with ffrecord.FileWriter(paths[0], compression="zstd:3") as w:
        w.write_batch(records[:100])
    with ffrecord.FileWriter(paths[1], compression="zstd:3", zstd_dict=dictionary) as w:
        w.write_batch(records[100:200])
    with ffrecord.FileWriter(paths[2]) as w:
        w.write_batch(records[200:])
    return [str(p) for p in paths], records


@pytest.fixture(params=["1", "4"], ids=["one-thread", "four-threads"])
def decode_threads(request, monkeypatch):
    monkeypatch.setenv("FFRECORD_DECODE_THREADS", request.param)
    return int(request.param)


def test_records_are_stored_compressed(dataset):
    paths, records = dataset
    with ffrecord.FileReader(paths) as r:
        stored = r.lengths(range(200))
        assert stored.sum() < sum(len(x) for x in records[:200]) / 2
        assert list(r.lengths(range(200, 300))) == [len(x) for x in records[200:]]


def test_every_read_path_returns_what_was_written(dataset, decode_threads):
    paths, records = dataset
    rng = np.random.default_rng(decode_threads)
    batches = [rng.integers(0, len(records), size) for size in (1, 7, 256, 600)]
    batches.append(np.array([5, 105, 205, 5, 150, 0]))  # empty records of each kind, repeats
    with ffrecord.FileReader(paths) as r:
        for b in batches:
            want = [records[i] for i in b]
            assert [bytes(a) for a in r.read(b)] == want
            assert r.read_bytes(b) == want
            data, offsets = r.read_packed(b)
            assert [bytes(data[offsets[k]:offsets[k + 1]]) for k in range(len(b))] == want
        assert [bytes(a) for batch in r.prefetch(batches, depth=3) for a in batch] == \
            [records[i] for b in batches for i in b]
        assert all(bytes(r.read_one(i)) == records[i] for i in range(len(records)))
        out = r.read(batches[2])
        assert all(a.dtype == np.uint8 and a.ndim == 1 for a in out)


def test_batches_equal_a_plain_decode_of_the_stored_frames(dataset):
    # The stored frames, decoded one at a time by zstandard, against the batch read.
    paths, records = dataset
    dictionary = ffrecord.codec.train_dictionary(records, size=8192)
    plain = zstd.ZstdDecompressor()
    with_dict = zstd.ZstdDecompressor(dict_data=zstd.ZstdCompressionDict(dictionary))
    with ffrecord.FileReader(paths[:2]) as r:
        idx = np.arange(r.n)[::-1]
        batch = r.read(idx)
    expected = []
    for f, (path, dctx) in enumerate(zip(paths[:2], (plain, with_dict))):
        blob = open(path, "rb").read()
        with ffrecord.FileReader(path) as one:
            offsets, lengths = one.get_offsets(), one.lengths(range(one.n))
        expected += [dctx.decompress(blob[int(o):int(o) + int(n)]) for o, n in zip(offsets[:-1], lengths)]
    assert [bytes(a) for a in batch] == [expected[i] for i in idx]


def test_decoded_arrays_outlive_the_reader_and_are_independent(dataset):
    paths, records = dataset
    r = ffrecord.FileReader(paths)
    a, b = r.read([1, 2])
    r.close()
    a[:] = 0  # writable, and writing one record leaves the other alone
    assert bytes(b) == records[2]
    assert not a.any()


def test_concurrent_readers_from_several_threads(dataset, decode_threads):
    paths, records = dataset
    errors = []
    with ffrecord.FileReader(paths) as r:
        def work(seed):
            rng = np.random.default_rng(seed)
            try:
                for _ in range(20):
                    b = rng.integers(0, r.n, 64)
                    if [bytes(x) for x in r.read(b)] != [records[i] for i in b]:
                        errors.append(f"thread {seed}: wrong records")
            except Exception as e:  # reported below, in the test's thread
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def _read_in_child(reader, indices, queue):
    queue.put([bytes(x) for x in reader.read(indices)])


def test_a_forked_child_decodes_with_its_own_threads(dataset, monkeypatch):
    monkeypatch.setenv("FFRECORD_DECODE_THREADS", "3")
    paths, records = dataset
    with ffrecord.FileReader(paths) as r:
        idx = list(range(0, 200, 3))
        assert [bytes(x) for x in r.read(idx)] == [records[i] for i in idx]  # the parent's pool is running
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_read_in_child, args=(r, idx, queue))
        child.start()
        got = queue.get(timeout=60)
        child.join(60)
        assert child.exitcode == 0
        assert got == [records[i] for i in idx]
        assert [bytes(x) for x in r.read(idx)] == [records[i] for i in idx]


# ---- records that do not decode ----------------------------------------------------------------

def _forged(path, frames, flags=1, dictionary=b""):
    f = ffr_forge.Forged(dictionary=dictionary)
    for frame in frames:
        f.add(frame, flags)
    path.write_bytes(f.build())
    return path


def _damage(frame):
    # Garbage in the compressed blocks after the frame header: the checksum is
    # recomputed by the forge, so only decoding can notice.
    body = bytearray(frame)
    for k in range(12, len(body)):
        body[k] ^= 0x5A
    return bytes(body)


@pytest.fixture()
def frames():
    records = make_records(40, seed=3)
    cctx = zstd.ZstdCompressor(level=3, write_content_size=True)
    return records, [cctx.compress(x) for x in records]


def test_one_damaged_record_names_itself_and_spares_the_others(tmp_path, frames, decode_threads):
    records, good = frames
    bad_frames = list(good)
    bad_frames[13] = _damage(good[13])
    p = _forged(tmp_path / "damaged.ffr", bad_frames)
    with ffrecord.FileReader(p) as r:
        batch = list(range(40))
        with pytest.raises(ffrecord.FormatError, match=r"damaged.ffr: cannot decompress record 13: zstd"):
            r.read(batch)
        with pytest.raises(ffrecord.FormatError, match=r"damaged.ffr: cannot decompress record 13"):
            r.read_bytes([0, 13, 1])
        with pytest.raises(ffrecord.FormatError, match=r"record 13"):
            r.read_packed([13])
        with pytest.raises(ffrecord.FormatError, match=r"record 13"):
            list(r.prefetch([[0, 1], [12, 13, 14]]))
        # The others, alone and together, are intact.
        others = [i for i in batch if i != 13]
        assert [bytes(x) for x in r.read(others)] == [records[i] for i in others]
        assert all(bytes(r.read_one(i)) == records[i] for i in others)


def test_the_first_damaged_record_in_batch_order_is_reported(tmp_path, frames, decode_threads):
    records, good = frames
    bad_frames = list(good)
    for k in (7, 30):
        bad_frames[k] = _damage(good[k])
    p = _forged(tmp_path / "two.ffr", bad_frames)
    with ffrecord.FileReader(p) as r:
        for batch, first in (([30, 1, 7], 30), ([7, 30], 7), (list(range(39, -1, -1)), 30)):
            with pytest.raises(ffrecord.FormatError, match=rf"two.ffr: cannot decompress record {first}:"):
                r.read(batch)


def test_a_frame_that_decodes_to_another_size_than_declared(tmp_path):
    # Declares 1000 bytes (2-byte content size field, value - 256) but holds 2000.
    frame = bytearray(zstd.ZstdCompressor(write_content_size=True).compress(b"x" * 1000))
    assert frame[4] & 0xC0 == 0x40
    frame[5:7] = (2000 - 256).to_bytes(2, "little")
    p = _forged(tmp_path / "size.ffr", [bytes(frame), zstd.ZstdCompressor().compress(b"ok")])
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match="size.ffr: cannot decompress record 0"):
            r.read([1, 0])
        assert bytes(r.read_one(1)) == b"ok"


def test_not_a_zstd_frame(tmp_path):
    p = _forged(tmp_path / "magic.ffr", [b"definitely not zstd", zstd.ZstdCompressor().compress(b"")])
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match="magic.ffr: cannot decompress record 0: not a zstd frame"):
            r.read([0, 1])
        assert bytes(r.read_one(1)) == b""


def test_a_dictionary_record_in_a_file_without_one(tmp_path, frames):
    _, good = frames
    p = _forged(tmp_path / "nodict.ffr", good[:3], flags=2)
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match="nodict.ffr: cannot decompress record 1: .*has none"):
            r.read([1, 2])


def test_a_frame_made_with_a_dictionary_needs_it(tmp_path, frames):
    records, _ = frames
    d = zstd.ZstdCompressionDict(ffrecord.codec.train_dictionary(make_records(300), size=4096))
    frame = zstd.ZstdCompressor(dict_data=d).compress(records[1])
    p = _forged(tmp_path / "wrongcodec.ffr", [frame], flags=1)  # codec 1: decoded without the dictionary
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match="wrongcodec.ffr: cannot decompress record 0"):
            r.read([0])
    p2 = _forged(tmp_path / "right.ffr", [frame], flags=2, dictionary=d.as_bytes())
    with ffrecord.FileReader(p2) as r:
        assert bytes(r.read_one(0)) == records[1]


def test_frames_without_a_declared_size_decode_within_the_bound(tmp_path, decode_threads):
    records = make_records(20, seed=9)
    cctx = zstd.ZstdCompressor(write_content_size=False)
    p = _forged(tmp_path / "nosize.ffr", [cctx.compress(x) for x in records])
    with ffrecord.FileReader(p) as r:
        assert [bytes(x) for x in r.read(range(19, -1, -1))] == records[::-1]
        # Truncated: the frame ends before its last block does.
    truncated = cctx.compress(records[1])[:-4]
    p2 = _forged(tmp_path / "cut.ffr", [truncated])
    with ffrecord.FileReader(p2) as r:
        with pytest.raises(ffrecord.FormatError, match="cut.ffr: cannot decompress record 0"):
            r.read_one(0)


def test_bad_index_lists_are_refused_before_decoding(dataset):
    paths, _ = dataset
    with ffrecord.FileReader(paths) as r:
        with pytest.raises(IndexError):
            r.read([0, r.n])
        with pytest.raises(TypeError):
            r.read(["a"])
