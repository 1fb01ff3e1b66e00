"""What a new user meets first: converted datasets decode as they were
recorded, `ffrecord cat --part`, quiet exits into a closed pipe, one exit-code
convention, messages for files that are not record files, a writer that
refuses records beyond `n` when they come, and summaries that say which bytes
they count."""

import io
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import ffrecord
from ffrecord.cli import main
from ffrecord.torch import RecordDataset

Image = pytest.importorskip("PIL.Image")

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_V1 = os.path.join(HERE, "data", "v1")


def png(value, size=(6, 5)):
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def image_dataset(tmp_path):
    """An image folder of two classes, converted: (dataset dir, [(png bytes, label)])."""
    src, items = tmp_path / "images", []
    for label, cls in enumerate(["cat", "dog"]):
        (src / cls).mkdir(parents=True)
        for k in range(3):
            data = png(40 * k + label)
            (src / cls / f"{k}.png").write_bytes(data)
            items.append((data, label))
    assert main(["convert", str(src), str(tmp_path / "ds"), "--from", "imagefolder", "-q"]) == 0
    return tmp_path / "ds", items


@pytest.fixture
def tar_dataset(tmp_path):
    """A webdataset tar of three samples (png + cls), converted."""
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tf:
        for k in range(3):
            for name, data in ((f"s{k}.png", png(10 * k)), (f"s{k}.cls", str(k + 5).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert main(["convert", str(path), str(tmp_path / "tds"), "--from", "webdataset", "-q"]) == 0
    return tmp_path / "tds"


@pytest.fixture
def npy_dataset(tmp_path):
    arr = np.arange(60, dtype=np.float32).reshape(5, 3, 4)
    np.save(tmp_path / "a.npy", arr)
    assert main(["convert", str(tmp_path / "a.npy"), str(tmp_path / "nds"), "-q"]) == 0
    return tmp_path / "nds", arr


def run_cli(*args, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "ffrecord.cli", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, cwd=os.path.dirname(HERE))


# ---- files that are not record files ----------------------------------------------
def test_a_json_file_is_not_a_record_file_without_absurd_details(image_dataset):
    ds_dir, _ = image_dataset
    with pytest.raises(ffrecord.FormatError) as e:
        ffrecord.FileReader(ds_dir / "index.json")
    text = str(e.value)
    assert str(ds_dir / "index.json") in text and "not a record file" in text
    assert "neither the v2 magic nor a consistent v1 header" in text
    assert "record count" not in text


def test_a_truncated_v1_file_still_gets_a_precise_message(tmp_path):
    src = os.path.join(GOLDEN_V1, "small.ffr")
    n = ffrecord.FileReader(src).n
    cut = tmp_path / "cut.ffr"
    cut.write_bytes(open(src, "rb").read()[:12 + n * 6])  # half of its index
    with pytest.raises(ffrecord.FormatError) as e:
        ffrecord.FileReader(cut)
    text = str(e.value)
    assert str(cut) in text and "truncated v1 file" in text
    assert f"counts {n} records" in text and f"has {12 + n * 6}" in text


# ---- FileWriter(n) refuses the record beyond n at once ------------------------------
def test_writer_refuses_records_beyond_n_and_keeps_the_file(tmp_path):
    path = tmp_path / "one.ffr"
    w = ffrecord.FileWriter(path, n=1)
    w.write_one(b"first")
    with pytest.raises(ValueError, match=r"one.ffr.*n=1.*one more record"):
        w.write_one(b"second")
    with pytest.raises(ValueError, match="2 more records"):
        w.write_batch([b"a", b"b"])
    assert w.count == 1
    w.close()  # the file so far is exactly n records: closing succeeds
    with ffrecord.FileReader(path) as r:
        assert r.n == 1 and r.read_one(0).tobytes() == b"first"


def test_writer_batch_beyond_n_is_refused_whole(tmp_path):
    path = tmp_path / "three.ffr"
    with ffrecord.FileWriter(path, n=3) as w:
        w.write_batch([b"a", b"b"])
        with pytest.raises(ValueError):
            w.write_batch([b"c", b"d"])  # would make 4: nothing of it is written
        assert w.count == 2
        w.write_batch(iter([b"c"]))
    with ffrecord.FileReader(path) as r:
        assert [x.tobytes() for x in r.read(range(3))] == [b"a", b"b", b"c"]
