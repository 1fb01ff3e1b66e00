"""`ffrecord --version`, `info`, `cat`, `pack`/`unpack`, progress bars, and the
one-line errors users get for their mistakes (never a traceback)."""

import fcntl
import hashlib
import io
import json
import os
import pty
import resource
import signal
import struct
import subprocess
import sys
import tarfile
import termios

import pytest

import ffrecord
from ffrecord.cli import main
from ffrecord.tools.sizes import parse_size
from ffrecord.tools.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_V1 = os.path.join(REPO, "tests", "data", "v1")


def cli(*args):
    return main([str(a) for a in args])


def run(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ffrecord.cli", *map(str, args)], env=env,
                          capture_output=True, timeout=120, **kwargs)


def one_line_error(stderr):
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def keyed(tmp_path):
    """A 2-shard dataset of 12 records keyed 'k00'.., plus the records."""
    src = tmp_path / "src"
    src.mkdir()
    records = {f"k{i:02d}": (b"record %d " % i) * (i + 1) for i in range(12)}
    for k, v in records.items():
        (src / k).write_bytes(v)
    (src / "7").write_bytes(b"a file named seven")
    assert cli("convert", src, tmp_path / "ds", "--records-per-shard", 7, "-q") == 0
    return tmp_path / "ds", records


def test_version(capsys):
    assert cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"ffrecord {ffrecord.__version__}"
    res = run("--version")
    assert res.returncode == 0 and res.stdout.decode().strip() == f"ffrecord {ffrecord.__version__}"


def test_info_text_and_json(keyed, capsys):
    ds, records = keyed
    capsys.readouterr()
    assert cli("info", ds) == 0
    out = capsys.readouterr().out
    assert "records:      13" in out and "v2, 2 file(s)" in out and "keys:         yes" in out
    assert "source folder" in out and "record sizes: min 9 " in out
    assert cli("info", ds, "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["records"] == 13 and d["versions"] == [2] and d["files"] == 2 and d["keys"] is True
    assert d["codec"] == "none"
    assert d["record_sizes"]["max"] == len(records["k11"]) and d["record_sizes"]["exact"]
    assert d["bytes"] == sum(os.path.getsize(ds / n) for n in os.listdir(ds) if n.endswith(".ffr"))
    assert "ffrecord.convert" not in d["metadata"]


def test_info_of_v1_and_compressed_files(tmp_path, capsys):
    assert cli("info", os.path.join(GOLDEN_V1, "small.ffr"), "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["versions"] == [1] and d["records"] == 50 and d["record_sizes"]["min"] == 0
    with ffrecord.FileWriter(tmp_path / "z.ffr", compression="zstd:3", metadata={"note": "hi"}) as w:
        for i in range(50):
            w.write_one(b"compressible " * 40)
    assert cli("info", tmp_path / "z.ffr") == 0
    out = capsys.readouterr().out
    assert "codec:        zstd" in out and '"note": "hi"' in out
    ratio = float(out.split("compression:")[1].split("x")[0])
    assert ratio > 5


def test_info_engine(keyed, capsys):
    ds, _ = keyed
    capsys.readouterr()
    assert cli("info", ds, "--engine", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["engine"] in ("io_uring", "threads", "pread")
    assert isinstance(d["engine_fallback_reason"], str)
    assert cli("info", "--engine") == 0
    assert "engine:" in capsys.readouterr().out
    # A forced engine is reported as such.
    env = dict(os.environ, FFRECORD_ENGINE="pread", PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "ffrecord.cli", "info", str(ds), "--engine"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "engine:       pread" in res.stdout
    assert cli("info") == 2


def test_cat_by_index_and_key(keyed):
    ds, records = keyed
    assert run("cat", ds, 0).stdout == b"a file named seven"  # "7" sorts before "k00"
    assert run("cat", ds, 1).stdout == records["k00"]
    assert run("cat", ds, -1).stdout == records["k11"]
    assert run("cat", ds, "k05").stdout == records["k05"]
    assert run("cat", ds, 7, "--key").stdout == b"a file named seven"  # a key that looks like a number
    assert run("cat", ds, 7).stdout == records["k06"]  # a number is an index unless --key
    res = run("cat", ds, "nope")
    assert res.returncode == 1 and "no record with key 'nope'" in one_line_error(res.stderr)
    res = run("cat", ds, 13)
    assert res.returncode == 1 and "out of range (13 records)" in one_line_error(res.stderr)
    res = run("cat", os.path.join(GOLDEN_V1, "small.ffr"), "somekey")
    assert res.returncode == 1 and "has no record keys" in one_line_error(res.stderr)


def test_cat_into_a_closed_pipe_is_quiet(tmp_path):
    with ffrecord.FileWriter(tmp_path / "big.ffr") as w:
        w.write_one(os.urandom(4 << 20))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "ffrecord.cli", "cat", str(tmp_path / "big.ffr"), "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err


def test_pack_and_unpack_round_trip(tmp_path, capsys):
    src = tmp_path / "folder"
    (src / "sub" / "deep").mkdir(parents=True)
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "sub/deep/c.json": b"{}", "empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    assert cli("pack", src, tmp_path / "p.ffr", "-q") == 0
    assert ffrecord.PackedFolder(tmp_path / "p.ffr").read_one("sub/b.bin").tobytes() == files["sub/b.bin"]
    assert cli("unpack", tmp_path / "p.ffr", tmp_path / "out", "-q") == 0
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    capsys.readouterr()
    assert cli("unpack", tmp_path / "p.ffr", tmp_path / "out") == 1  # would overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "out" / "a.txt").write_bytes(b"changed")
    assert cli("unpack", tmp_path / "p.ffr", tmp_path / "out", "--overwrite", "-q") == 0
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"alpha"


def test_unpack_recreates_empty_folders(tmp_path):
    src = tmp_path / "folder"
    (src / "empty" / "nested").mkdir(parents=True)
    (src / "blank").mkdir()
    (src / "sub").mkdir()
    (src / "sub" / "x.txt").write_bytes(b"x")
    assert cli("pack", src, tmp_path / "p.ffr", "-q") == 0
    assert cli("unpack", tmp_path / "p.ffr", tmp_path / "out", "-q") == 0
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == \
        ["blank", "empty", "empty/nested", "sub", "sub/x.txt"]
    assert (out / "sub" / "x.txt").read_bytes() == b"x"
    # Only empty folders: the output directory and the folders are made all the same.
    only = tmp_path / "only"
    (only / "a").mkdir(parents=True)
    assert cli("pack", only, tmp_path / "only.ffr", "-q") == 0
    assert cli("unpack", tmp_path / "only.ffr", tmp_path / "out2", "-q") == 0
    assert (tmp_path / "out2" / "a").is_dir()


def test_unpack_refuses_a_file_where_a_folder_goes(tmp_path, capsys):
    src = tmp_path / "folder"
    (src / "d").mkdir(parents=True)
    assert cli("pack", src, tmp_path / "p.ffr", "-q") == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "d").write_bytes(b"in the way")
    assert cli("unpack", tmp_path / "p.ffr", tmp_path / "out", "--overwrite") == 1
    assert "is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "d").read_bytes() == b"in the way"


def test_unpack_refuses_an_empty_folder_name_that_escapes(tmp_path, capsys):
    meta = {"ffrecord.packed_folder": 1, "ffrecord.packed_folder.empty_dirs": ["../outside"]}
    with ffrecord.FileWriter(tmp_path / "evil.ffr", metadata=meta) as w:
        w.write_one(b"fine", key="ok.txt")
    assert cli("unpack", tmp_path / "evil.ffr", tmp_path / "out") == 1
    assert "unsafe file name" in capsys.readouterr().err
    assert not (tmp_path / "outside").exists()


def test_unpack_a_v1_packed_folder(tmp_path):
    with open(os.path.join(GOLDEN_V1, "manifest.json")) as f:
        golden = json.load(f)
    assert cli("unpack", os.path.join(GOLDEN_V1, "packed_folder.ffr"), tmp_path / "out", "-q") == 0
    names = golden["packed_folder"]["files"]
    assert len(names) == 3
    for rel, digest in names.items():
        assert hashlib.sha256((tmp_path / "out" / rel).read_bytes()).hexdigest() == digest


def test_unpack_refuses_names_that_escape(tmp_path, capsys):
    with ffrecord.FileWriter(tmp_path / "evil.ffr", metadata={"ffrecord.packed_folder": 1}) as w:
        w.write_one(b"owned", key="../escape.txt")
    assert cli("unpack", tmp_path / "evil.ffr", tmp_path / "out") == 1
    assert "unsafe file name" in capsys.readouterr().err
    assert not (tmp_path / "escape.txt").exists()


def test_user_mistakes_get_one_line_and_status_2(tmp_path):
    cases = [
        (("convert", tmp_path / "nope", tmp_path / "out", "--from", "folder"), "no such file or directory"),
        (("convert", tmp_path / "nope", tmp_path / "out"), "no such file or directory"),
        (("convert", tmp_path, tmp_path / "o", "--from", "sqlite"), "invalid choice"),
        (("convert", tmp_path, tmp_path / "o", "--shard-size", "huge"), "bad size"),
        (("convert", tmp_path, tmp_path / "o", "--compression", "lz4"), "unknown compression"),
        (("convert", tmp_path, tmp_path / "o", "--zstd-dict"), "needs --compression"),
        (("convert", tmp_path, tmp_path / "o", "--workers", "0"), "must be at least 1"),
        (("convert", tmp_path / "only-one"), "convert takes SRC DST"),
        (("info", tmp_path / "nope.ffr"), "no such file or directory"),
        (("pack", tmp_path / "nope", tmp_path / "p.ffr"), "no such file or directory"),
        (("frobnicate",), "invalid choice"),
        ((), "choose a command"),
    ]
    for args, expected in cases:
        res = run(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert expected in one_line_error(res.stderr), args


def test_unreadable_sources_get_one_line_and_status_1(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"definitely not a tar archive" * 50)
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "data.mdb").write_bytes(b"\0garbage" * 100)
    (tmp_path / "x.ffr").write_bytes(b"not a record file" * 20)
    for args, expected in [
        (("convert", tmp_path / "bad.tar", tmp_path / "o1"), "not a readable tar file"),
        (("convert", tmp_path / "db", tmp_path / "o2"), "LMDB"),
        (("convert", tmp_path / "x.ffr", tmp_path / "o3"), "not a record file"),
        (("info", tmp_path / "x.ffr"), "not a record file"),
        (("cat", tmp_path / "x.ffr", "0"), "not a record file"),
    ]:
        res = run(*args)
        assert res.returncode == 1, (args, res.stderr)
        assert expected in one_line_error(res.stderr), args


def test_a_refused_write_fails_cleanly_and_leaves_nothing(tmp_path):
    # A file size limit makes the shard write fail the way a full disk does:
    # one line naming the file and the reason, no partial shard, no temporary.
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}").write_bytes(os.urandom(200_000))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    for workers in (1, 2):
        dst = tmp_path / f"out{workers}"
        res = run("convert", src, dst, "--records-per-shard", 2, "--workers", workers, preexec_fn=limit)
        assert res.returncode == 1
        line = one_line_error(res.stderr)
        assert "File too large" in line and ".ffr" in line
        assert [n for n in os.listdir(dst) if not n.startswith(".ffrecord-convert")] == []
    # With room again, the same command completes.
    res = run("convert", src, tmp_path / "out1", "--records-per-shard", 2)
    assert res.returncode == 0 and cli("validate", tmp_path / "out1", "-q") == 0


def test_progress_bar_on_a_terminal_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"{i}").write_bytes(b"x" * 100)
    env = dict(os.environ, PYTHONPATH=REPO)

    def stderr_on_terminal(*args):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
        try:
            proc = subprocess.Popen([sys.executable, "-m", "ffrecord.cli", *map(str, args)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=slave)
            os.close(slave)
            chunks = []
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert proc.wait(timeout=60) == 0
        finally:
            os.close(master)
        return b"".join(chunks).decode(errors="replace")

    shown = stderr_on_terminal("convert", src, tmp_path / "a", "--records-per-shard", 5)
    assert "convert src" in shown and "30.0/30.0" in shown, repr(shown)
    assert stderr_on_terminal("convert", src, tmp_path / "b", "--records-per-shard", 5, "--quiet") == ""
    res = run("convert", src, tmp_path / "c", "--records-per-shard", 5)  # stderr is a pipe: no bar
    assert res.returncode == 0 and res.stderr == b""


def test_sizes_parse_like_people_write_them():
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("100MB") == 100_000_000
    assert parse_size("64k") == 65536
    assert parse_size("4096") == 4096
    assert parse_size("1.5G") == 3 << 29
    for bad in ("", "-1", "0", "1 parsec", "GiB"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_tar_members_outside_samples_are_skipped(tmp_path):
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        link = tarfile.TarInfo("somedir/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "x"
        t.addfile(link)
        data = b"payload"
        f = tarfile.TarInfo("somedir/0001.txt")
        f.size = len(data)
        t.addfile(f, io.BytesIO(data))
    assert cli("convert", tmp_path / "t.tar", tmp_path / "out", "-q") == 0
    with ffrecord.FileReader(tmp_path / "out") as r:
        assert len(r) == 1 and r.key(0) == "somedir/0001"
