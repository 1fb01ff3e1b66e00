"""The core on the local disk the tests run on: filesystem detection, the engine
chosen for it and why, files that are replaced or damaged while being opened,
and FFRECORD_REOPEN_WAIT (docs/SHARED_FS.md)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import ffrecord
from ffrecord.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Mount-table names of local filesystems, as the core names them.
LOCAL_NAMES = {"ext4": "ext4", "ext3": "ext4", "ext2": "ext4", "xfs": "xfs", "btrfs": "btrfs", "tmpfs": "tmpfs",
               "overlay": "overlayfs", "f2fs": "f2fs", "zfs": "zfs"}


def write(path, records):
    with ffrecord.FileWriter(path) as w:
        w.write_batch(records)
    return str(path)


def mount_type(path):
    """The mount table's filesystem type of the device holding ``path``."""
    dev = os.stat(path).st_dev
    want = f"{os.major(dev)}:{os.minor(dev)}"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[2] == want:
                return line.split(" - ", 1)[1].split()[0]
    return None


@pytest.fixture
def no_engine_env(monkeypatch):
    for var in ("FFRECORD_ENGINE", "FFRECORD_REOPEN_WAIT"):
        monkeypatch.delenv(var, raising=False)


def test_the_local_filesystem_is_named(tmp_path, no_engine_env):
    path = write(tmp_path / "a.ffr", [b"x"])
    kind = mount_type(path)
    if kind not in LOCAL_NAMES:
        pytest.skip(f"the tests' directory is on {kind!r}, not a local filesystem this test knows")
    with ffrecord.FileReader(path) as r:
        assert r.filesystem == LOCAL_NAMES[kind]
        assert r.file_info(0)["filesystem"] == r.filesystem
        assert r.file_info(0)["mappable"] is True and r.mapping_available is True
        # A local disk keeps the automatic choice: io_uring, or threads where the kernel refuses it.
        assert r.engine in ("io_uring", "threads")
        assert r.engine_reason.startswith(f"{r.filesystem} is a local filesystem")
        if r.engine == "threads":
            assert "io_uring unavailable" in r.engine_reason


def test_a_forced_engine_says_so(tmp_path, monkeypatch):
    path = write(tmp_path / "a.ffr", [b"x"])
    monkeypatch.setenv("FFRECORD_ENGINE", "pread")
    with ffrecord.FileReader(path) as r:
        assert r.engine == "pread"
        assert "FFRECORD_ENGINE=pread" in r.engine_reason
    with ffrecord.FileReader(path, direct=True) as r:
        assert "direct=True" in r.engine_reason


def test_info_engine_names_filesystem_engine_and_reason(tmp_path, capsys, no_engine_env):
    path = write(tmp_path / "a.ffr", [b"abc", b"de"])
    assert main(["info", path, "--engine", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    with ffrecord.FileReader(path) as r:
        assert d["filesystem"] == r.filesystem and d["engine"] == r.engine
        assert d["engine_reason"] == r.engine_reason and d["mapping_available"] is True
    assert main(["info", path, "--engine"]) == 0
    text = capsys.readouterr().out
    assert f"filesystem:   {d['filesystem']}" in text
    assert f"engine:       {d['engine']}" in text
    assert f"why:          {d['engine_reason']}" in text


def test_a_truncated_local_file_fails_at_once(tmp_path, monkeypatch):
    path = write(tmp_path / "t.ffr", [b"a" * 5000, b"b" * 5000])
    os.truncate(path, os.path.getsize(path) - 10)
    # Even with a long wait set: on a local disk the file is damaged, not in flux.
    monkeypatch.setenv("FFRECORD_REOPEN_WAIT", "60")
    started = time.monotonic()
    with pytest.raises(ffrecord.FormatError) as e:
        ffrecord.FileReader(path)
    assert time.monotonic() - started < 30  # far below the wait: it did not wait
    msg = str(e.value)
    assert path in msg and "truncated" in msg
    assert "FFRECORD_REOPEN_WAIT" not in msg  # no advice about caches on a local disk


def test_a_file_cut_short_before_its_footer_is_a_format_error(tmp_path, no_engine_env):
    path = write(tmp_path / "t.ffr", [b"a" * 100])
    os.truncate(path, 40)  # header intact, too short for a footer
    with pytest.raises(ffrecord.FormatError, match="truncated"):
        ffrecord.FileReader(path)


def test_a_file_that_shrank_after_open_says_so(tmp_path, no_engine_env):
    recs = [bytes([i]) * 20000 for i in range(10)]
    path = write(tmp_path / "s.ffr", recs)
    with ffrecord.FileReader(path) as r:
        assert r.read_one(0).tobytes() == recs[0]
        os.truncate(path, 30000)
        with pytest.raises(ffrecord.FormatError) as e:
            r.read([9])
        assert path in str(e.value) and "shrank" in str(e.value) and "record 9" in str(e.value)


def test_lookups_on_a_file_cut_inside_its_index_raise_instead_of_faulting(tmp_path, no_engine_env):
    # The index of a local file is mapped: read after the file was cut short, it
    # would fault the process (SIGBUS). Every lookup checks first.
    path = str(tmp_path / "k.ffr")
    with ffrecord.FileWriter(path) as w:
        for i in range(4000):
            w.write_one(bytes([i % 256]) * 30, key=f"key-{i}")
    size = os.path.getsize(path)
    with ffrecord.FileReader(path) as r:
        assert r.key(5) == "key-5" and r.lengths([1, 2]).tolist() == [30, 30]
        os.truncate(path, 20000)  # well inside the records: index and keys gone
        checks = [lambda: r.key(3999), lambda: r.lengths([0, 3999]), lambda: r.find("key-7"),
                  lambda: r.read_bytes([1]), lambda: r.read_into([1], [bytearray(30)]),
                  lambda: r.read_packed([1, 2]), lambda: r.read([3999])]
        for check in checks:
            with pytest.raises(ffrecord.FormatError) as e:
                check()
            assert path in str(e.value) and "shrank" in str(e.value), str(e.value)
    assert size > 20000


def test_replaced_by_rename_while_opened_gives_old_or_new_complete(tmp_path, no_engine_env):
    path = str(tmp_path / "r.ffr")
    versions = [[bytes([v]) * (300 + 40 * v + i) for i in range(3 + v)] for v in range(2)]
    write(path, versions[0])
    stop = threading.Event()
    errors = []

    def replace():
        k = 0
        while not stop.is_set():
            k += 1
            try:
                write(path, versions[k % 2])  # a temporary file renamed over the path
            except Exception as exc:  # reported by the test below
                errors.append(exc)
                return

    writer = threading.Thread(target=replace)
    writer.start()
    seen = set()
    try:
        for _ in range(300):
            with ffrecord.FileReader(path) as r:
                got = r.read_bytes(list(range(r.n)))
            assert got in versions, f"{r.n} records, not one complete version"
            seen.add(versions.index(got))
    finally:
        stop.set()
        writer.join()
    assert not errors
    assert seen  # (both usually; which one depends on the scheduler)


@pytest.mark.parametrize("value", ["-1", "601", "abc", "1s", "nan", "inf"])
def test_a_bad_reopen_wait_is_a_clear_error(tmp_path, monkeypatch, value):
    path = write(tmp_path / "a.ffr", [b"x"])
    monkeypatch.setenv("FFRECORD_REOPEN_WAIT", value)
    with pytest.raises(ValueError, match=r"FFRECORD_REOPEN_WAIT must be a number of seconds in \[0, 600\]"):
        ffrecord.FileReader(path)


@pytest.mark.parametrize("value", ["0", "0.5", "600"])
def test_a_reopen_wait_in_range_is_accepted(tmp_path, monkeypatch, value):
    path = write(tmp_path / "a.ffr", [b"x"])
    monkeypatch.setenv("FFRECORD_REOPEN_WAIT", value)
    with ffrecord.FileReader(path) as r:
        assert r.read_one(0).tobytes() == b"x"


def test_info_engine_alone_probes_the_temporary_directory(no_engine_env):
    res = subprocess.run([sys.executable, "-m", "ffrecord.cli", "info", "--engine", "--json"],
                         env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["filesystem"] and d["engine"] in ("io_uring", "threads", "pread") and d["engine_reason"]


@pytest.mark.parametrize("direct", [False, True])
def test_a_checkpoint_file_that_shrank_after_open_says_so(tmp_path, no_engine_env, direct):
    import torch

    from ffrecord.checkpoint import Checkpoint, save

    state = {"a": torch.ones(10), "w": torch.arange(100_000, dtype=torch.float32)}
    save(state, tmp_path / "ck")
    data = sorted(p for p in os.listdir(tmp_path / "ck") if p.startswith("data"))
    assert len(data) == 1
    target = str(tmp_path / "ck" / data[0])
    with Checkpoint(tmp_path / "ck", direct=direct) as c:
        assert torch.equal(c.load(["a"])["a"], state["a"])  # the data file is open now
        os.truncate(target, 8192)
        with pytest.raises(ffrecord.FormatError) as e:
            c.load(["w"])
    assert target in str(e.value) and "shrank" in str(e.value)
