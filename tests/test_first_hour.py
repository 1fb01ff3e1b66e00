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


# ---- decoding follows the recorded layout ---------------------------------------
def test_pil_on_a_converted_image_folder_gives_image_and_label(image_dataset):
    ds_dir, items = image_dataset
    ds = RecordDataset(ds_dir, decode="pil")
    batch = ds.__getitems__([0, 4])
    for (image, label), k in zip(batch, [0, 4]):
        assert label == items[k][1]
        assert image.size == (6, 5)
        assert np.asarray(image)[0, 0, 0] == np.asarray(Image.open(io.BytesIO(items[k][0])))[0, 0, 0]
    data, label = RecordDataset(ds_dir, decode="bytes")[5]
    assert (data, label) == items[5]
    # A decoder that does not fit the layout is refused up front, naming those that do.
    with pytest.raises(ValueError, match=r"decode='json' does not fit.*'pil'"):
        RecordDataset(ds_dir, decode="json")


def test_pil_on_a_converted_webdataset_tar_gives_image_and_cls(tar_dataset):
    ds = RecordDataset(tar_dataset, decode="pil")
    image, label = ds[2]
    assert label == 7 and image.size == (6, 5)
    assert set(RecordDataset(tar_dataset, decode="parts")[0]) == {"png", "cls"}
    with pytest.raises(ValueError, match=r"'parts'"):
        RecordDataset(tar_dataset, decode="npy")


def test_npy_on_converted_rows_uses_the_recorded_dtype_and_shape(npy_dataset):
    ds_dir, arr = npy_dataset
    ds = RecordDataset(ds_dir, decode="npy")
    row = ds[3]
    assert row.dtype == np.float32 and row.shape == (3, 4)
    np.testing.assert_array_equal(row, arr[3])
    row[0, 0] = -1  # a writable copy, not a view of the reader's buffer
    # The layout decoders on data that has no layout: a clear refusal.
    with pytest.raises(ValueError, match="needs records in the labeled layout"):
        RecordDataset(ds_dir, decode="labeled")


# ---- cat --part ----------------------------------------------------------------
def test_cat_part_picks_image_or_label(image_dataset, tar_dataset, npy_dataset, capsysbinary):
    ds_dir, items = image_dataset
    assert main(["cat", str(ds_dir), "4", "--part", "image"]) == 0
    assert capsysbinary.readouterr().out == items[4][0]
    assert main(["cat", str(ds_dir), "4", "--part", "label"]) == 0
    assert capsysbinary.readouterr().out == b"1\n"
    assert main(["cat", str(tar_dataset), "1", "--part", "cls"]) == 0
    assert capsysbinary.readouterr().out == b"6"
    # A part the record lacks, or a dataset whose records have no parts: usage errors.
    assert main(["cat", str(tar_dataset), "1", "--part", "jpg"]) == 2
    err = capsysbinary.readouterr().err.decode()
    assert "no part 'jpg'" in err and "'png'" in err
    assert main(["cat", str(npy_dataset[0]), "0", "--part", "image"]) == 2
    assert "--part needs a layout with parts" in capsysbinary.readouterr().err.decode()


# ---- a closed stdout -------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "cat", "validate", "bench"])
def test_writing_into_a_closed_pipe_exits_quietly(image_dataset, command):
    ds_dir, _ = image_dataset
    args = {"info": ["info", ds_dir], "cat": ["cat", ds_dir, "0"], "validate": ["validate", ds_dir],
            "bench": ["bench", ds_dir, "--seconds", "0.05", "--batch-size", "2"]}[command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as after `| head` quits
    try:
        res = run_cli(*args, stdout=write_end)
    finally:
        os.close(write_end)
    assert res.returncode == 141  # as a program killed by SIGPIPE
    assert res.stderr == b""


# ---- one exit-code convention ----------------------------------------------------
@pytest.mark.parametrize("command", ["info", "validate", "bench", "cat"])
def test_a_directory_without_record_files_is_a_usage_error_everywhere(tmp_path, command, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    args = [command, str(tmp_path)] + (["0"] if command == "cat" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no .ffr files" in err and str(tmp_path) in err


def test_an_empty_dataset_is_a_data_problem_for_bench(tmp_path, capsys):
    with ffrecord.FileWriter(tmp_path / "empty.ffr"):
        pass
    assert main(["bench", str(tmp_path / "empty.ffr"), "--seconds", "0.01"]) == 1
    assert "no records" in capsys.readouterr().err


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


# ---- summaries say which bytes they count --------------------------------------------
def test_convert_and_validate_summaries_name_their_bytes(tmp_path, capsys):
    src = tmp_path / "files"
    src.mkdir()
    for k in range(4):
        (src / f"{k}.bin").write_bytes(bytes(1000))
    assert main(["convert", str(src), str(tmp_path / "ds"), "--from", "folder"]) == 0
    out = capsys.readouterr().out
    # 4000 source bytes read; the shard file holds them plus index, keys and footer.
    m = re.search(r"read (\S+ \S+) of source records, shard files hold (\S+ \S+);", out)
    assert m is not None, out
    assert m.group(1) == "3.9 KiB"
    shard = [p for p in os.listdir(tmp_path / "ds") if p.endswith(".ffr")][0]
    assert m.group(2) == ffrecord.tools.sizes.format_size(os.path.getsize(tmp_path / "ds" / shard))

    assert main(["validate", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    size = os.path.getsize(tmp_path / "ds" / shard)
    fmt = ffrecord.tools.sizes.format_size
    # Records and the whole-file CRC32C pass both count, as in the progress bar's total.
    assert f"read {fmt(4000 + size)} ({fmt(4000)} of records + {fmt(size)} whole-file CRC32C)" in out, out
    assert "MB/s" not in out


def test_validate_summary_without_shard_crc_counts_records_only(tmp_path, capsys):
    path = tmp_path / "x.ffr"
    with ffrecord.FileWriter(path) as w:
        w.write_batch([bytes(100)] * 3)
    assert main(["validate", str(path)]) == 0
    assert "read 300 B (300 B of records) in" in capsys.readouterr().out
