"""The original FFRecord package's interface outside torch: its module names,
checkFsAlign, utils.dump, FileReader's extra attributes and methods, and the
way PackedFolder lists a folder (docs/MIGRATING.md)."""

import os
import pickle
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import ffrecord
from damage import flip_byte, write_file


def payloads(n):
    return [pickle.dumps((i, "x" * (i % 7))) for i in range(n)]


# ---- module layout -----------------------------------------------------------

def test_the_original_module_names_import():
    import ffrecord.fileio
    import ffrecord.package
    import ffrecord.utils

    assert ffrecord.fileio.FileReader is ffrecord.FileReader
    assert ffrecord.fileio.FileWriter is ffrecord.FileWriter
    assert ffrecord.fileio.checkFsAlign is ffrecord.checkFsAlign
    assert ffrecord.package.pack_folder is ffrecord.pack_folder
    assert ffrecord.package.PackedFolder is ffrecord.PackedFolder
    assert ffrecord.package.MAGIC_BYTES == b"piouhjgbr"
    assert ffrecord.utils.dump is not None
    for name in ("FileReader", "FileWriter", "PackedFolder", "checkFsAlign", "pack_folder"):
        assert name in ffrecord.__all__
    assert isinstance(ffrecord.__version__, str)


# ---- checkFsAlign ------------------------------------------------------------

def test_check_fs_align_is_false_off_aligned_filesystems(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"1234")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ffrecord.checkFsAlign(fd) is False
    finally:
        os.close(fd)
    assert ffrecord.checkFsAlign(fd) is False  # closed: nothing to ask
    r, w = os.pipe()
    try:
        assert ffrecord.checkFsAlign(r) is False
    finally:
        os.close(r)
        os.close(w)


def test_check_fs_align_wants_a_descriptor():
    with pytest.raises(TypeError):
        ffrecord.checkFsAlign("/tmp")
    with pytest.raises(TypeError):
        ffrecord.checkFsAlign(True)


# ---- utils.dump --------------------------------------------------------------

def test_dump_one_file(tmp_path):
    data = payloads(37)
    out = tmp_path / "one.ffr"
    ffrecord.utils.dump(data, out, nfiles=1)
    assert out.is_file()
    r = ffrecord.FileReader(out)
    assert [x.tobytes() for x in r.read(range(r.n))] == data


def test_dump_many_files_named_and_ordered(tmp_path):
    data = payloads(103)
    out = tmp_path / "many"
    ffrecord.utils.dump(data, out, 4)
    names = sorted(os.listdir(out))
    assert names == [f"PART_{k:05d}.ffr" for k in range(4)]
    counts = [ffrecord.FileReader(out / name).n for name in names]
    assert counts == [26, 26, 26, 25]
    r = ffrecord.FileReader(out)
    assert r.fnames == [os.fspath(out / name) for name in names]
    assert [x.tobytes() for x in r.read(range(r.n))] == data


def test_dump_fewer_files_than_asked_warns(tmp_path):
    data = payloads(10)
    with pytest.warns(UserWarning, match="10 files rather than 16"):
        ffrecord.utils.dump(data, tmp_path / "d", 16, verbose=True)
    assert len(os.listdir(tmp_path / "d")) == 10
    assert [x.tobytes() for x in ffrecord.FileReader(tmp_path / "d").read(range(10))] == data


def test_dump_empty_dataset_gives_one_empty_file(tmp_path):
    with pytest.warns(UserWarning, match="1 files rather than 3"):
        ffrecord.utils.dump([], tmp_path / "e", 3)
    assert os.listdir(tmp_path / "e") == ["PART_00000.ffr"]
    assert ffrecord.FileReader(tmp_path / "e").n == 0


def test_dump_argument_checks(tmp_path):
    with pytest.raises(ValueError):
        ffrecord.utils.dump([b"a"], tmp_path / "x.ffr", 0)
    with pytest.raises(TypeError):
        ffrecord.utils.dump([b"a"], tmp_path / "x.ffr", "1")
    with pytest.raises(TypeError, match="sample 1"):
        ffrecord.utils.dump([b"a", "not bytes"], tmp_path / "x.ffr", 1)
    assert not (tmp_path / "x.ffr").exists()


class Exploding:
    """Fails at one index, as a user's dataset might."""

    def __init__(self, n, bad):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise KeyError(f"sample {i} is missing")
        return b"%d" % i


def test_dump_failure_in_a_part_raises_it_and_leaves_no_parts(tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(KeyError, match="sample 13 is missing"):
        ffrecord.utils.dump(Exploding(40, 13), out, 4)
    assert os.listdir(out) == []


class FailsWhileAnotherHangs(Exploding):
    """One part fails at once while another is stuck on a slow sample."""

    def __init__(self, n, bad, slow, marker):
        super().__init__(n, bad)
        self.slow, self.marker = slow, marker

    def __getitem__(self, i):
        if i == self.slow:
            time.sleep(30)
            self.marker.write_bytes(b"the slow part went on")
        return super().__getitem__(i)


def test_dump_failure_stops_the_other_writers(tmp_path):
    out, marker = tmp_path / "stopped", tmp_path / "marker"
    with pytest.raises(KeyError, match="sample 35 is missing"):
        ffrecord.utils.dump(FailsWhileAnotherHangs(40, 35, 5, marker), out, 4)
    assert os.listdir(out) == []  # no part, and no writer's temporary file
    assert not marker.exists()  # the hanging writer was stopped, not waited for


# ---- FileReader: fnames, check_data, validate, get_offsets, get_checksums ------

def test_reader_names_and_check_data(golden_v1):
    shards = [os.path.join(golden_v1, "shard_0.ffr"), Path(golden_v1) / "shard_1.ffr"]
    r = ffrecord.FileReader(shards, check_data=False)
    assert r.fnames == [os.fspath(p) for p in shards]
    assert all(isinstance(f, str) for f in r.fnames)
    assert r.check_data is False
    assert ffrecord.FileReader(shards[0]).check_data is True
    r.validate()  # nothing to report


def test_v1_offsets_and_checksums_are_the_files_own(golden_v1):
    path = os.path.join(golden_v1, "small.ffr")
    r = ffrecord.FileReader(path)
    offsets, crcs = r.get_offsets(0), r.get_checksums(0)
    assert offsets.dtype == np.int64 and crcs.dtype == np.uint32
    assert len(offsets) == r.n + 1 and len(crcs) == r.n
    assert offsets[0] == 12 + 12 * r.n and offsets[-1] == os.path.getsize(path)
    for i in range(r.n):
        record = r.read_one(i).tobytes()
        assert offsets[i + 1] - offsets[i] == len(record)
        assert crcs[i] == zlib.crc32(record)


def test_v2_offsets_and_checksums(tmp_path):
    recs = [b"", b"hello", bytes(range(200)), b"x"]
    r = ffrecord.FileReader([write_file(tmp_path / "a.ffr", recs), write_file(tmp_path / "b.ffr", recs[:2])])
    offsets, crcs = r.get_offsets(0), r.get_checksums(0)
    assert list(np.diff(offsets)) == [len(x) for x in recs]
    assert offsets[0] == 32  # right after the v2 header
    for rec, crc in zip(recs, crcs):
        assert crc == ffrecord._core.crc32c(rec + len(rec).to_bytes(8, "little") + bytes(4))
    assert len(r.get_offsets(1)) == 3 and len(r.get_checksums(1)) == 2


def test_offsets_of_an_empty_file(tmp_path):
    r = ffrecord.FileReader(write_file(tmp_path / "e.ffr", []))
    assert list(r.get_offsets()) == [32] and len(r.get_checksums()) == 0


def test_offsets_and_checksums_argument_checks(golden_v1):
    r = ffrecord.FileReader(os.path.join(golden_v1, "small.ffr"))
    with pytest.raises(IndexError):
        r.get_offsets(1)
    with pytest.raises(IndexError):
        r.get_checksums(-1)
    with pytest.raises(TypeError):
        r.get_offsets("0")
    r.close()
    with pytest.raises(ValueError):
        r.get_checksums(0)
    with pytest.raises(ValueError):
        r.validate()


@pytest.mark.parametrize("version", [1, 2])
def test_validate_reports_an_index_damaged_after_open(tmp_path, golden_v1, version):
    if version == 1:
        path = tmp_path / "small.ffr"
        shutil.copy(os.path.join(golden_v1, "small.ffr"), path)
        where = 12 + 4 * 3  # the stored checksum of record 3
    else:
        path = write_file(tmp_path / "v2.ffr", [b"abc", b"defg"])
        where = ffrecord.FileReader(path).get_offsets()[-1] + 8  # inside the index, past the records
    r = ffrecord.FileReader(path)
    r.validate()
    flip_byte(path, where)
    with pytest.raises(ffrecord.FFRecordError, match=str(path.name)):
        r.validate()


# ---- PackedFolder listing ----------------------------------------------------

def make_tree(root):
    for rel, data in {"b.txt": b"b", "a/z.bin": b"z", "a/c/d.json": b"{}", "c.txt": b"c", "B": b"upper"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "a" / "empty").mkdir()


def test_pack_folder_lists_like_the_original(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    out = tmp_path / "p.ffr"
    assert ffrecord.pack_folder(src, out) == 5
    pf = ffrecord.PackedFolder(out)
    assert pf.num_files() == 5
    # Entries sorted by name, folders among files; nested entries are Paths.
    assert pf.list() == ["B", "a", "b.txt", "c.txt"]
    assert pf.list(recursive=True) == [
        "B", "a", Path("a/c"), Path("a/c/d.json"), Path("a/empty"), Path("a/z.bin"), "b.txt", "c.txt",
    ]
    assert pf.list(recursive=True, list_dir=False) == ["B", Path("a/c/d.json"), Path("a/z.bin"), "b.txt", "c.txt"]
    assert pf.list("a", list_file=False) == ["c", "empty"]
    assert pf.list(Path("a"), recursive=True) == ["c", Path("c/d.json"), "empty", "z.bin"]
    assert pf.is_dir("a/empty") and pf.list("a/empty") == []
    # Records are stored in that same order, as the original wrote them.
    r = ffrecord.FileReader(out)
    assert [r.key(i) for i in range(r.n)] == ["B", "a/c/d.json", "a/z.bin", "b.txt", "c.txt"]
    assert pf.read_one(Path("a/c/d.json")).tobytes() == b"{}"
    for entry in pf.list(recursive=True, list_dir=False):
        assert pf.is_file(entry)


def test_packed_folder_list_errors(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    ffrecord.pack_folder(src, tmp_path / "p.ffr")
    pf = ffrecord.PackedFolder(tmp_path / "p.ffr")
    with pytest.raises(FileNotFoundError):
        pf.list("nope")
    with pytest.raises(NotADirectoryError):
        pf.list("b.txt")
    with pytest.raises(TypeError):
        pf.read("b.txt")


def test_v1_packed_folder_lists_in_its_own_order(golden_v1):
    pf = ffrecord.PackedFolder(os.path.join(golden_v1, "packed_folder.ffr"))
    assert pf.list(recursive=True) == ["a.txt", "sub", Path("sub/b.bin"), Path("sub/deep"), Path("sub/deep/c.json")]


def test_pack_folder_refuses_a_link_loop(tmp_path):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "f").write_bytes(b"f")
    (src / "x" / "back").symlink_to(src)
    with pytest.raises(ValueError, match="links back"):
        ffrecord.pack_folder(src, tmp_path / "loop.ffr")
    assert not (tmp_path / "loop.ffr").exists()


def test_pack_folder_follows_a_link_to_a_folder(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.bin").write_bytes(b"o")
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to(other)
    ffrecord.pack_folder(src, tmp_path / "l.ffr")
    pf = ffrecord.PackedFolder(tmp_path / "l.ffr")
    assert pf.read_one("link/o.bin").tobytes() == b"o"
