"""The core through the two-node sshfs rig: a mount that refuses shared mappings
(-o direct_io), the engine chosen for FUSE, and opens of a file that the other
node has just replaced (docs/SHARED_FS.md)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ["", "io_uring", "threads", "pread", "mmap"]
ROUNDS = 40


def records(tag, n):
    return [bytes([tag]) * (500 + 37 * i + 11 * tag) for i in range(n)]


def write(path, recs):
    with ffrecord.FileWriter(path) as w:
        w.write_batch(recs)


@pytest.fixture
def auto_env(monkeypatch):
    for var in ("FFRECORD_ENGINE", "FFRECORD_REOPEN_WAIT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("engine", ENGINES)
def test_reads_without_shared_mappings_are_correct(netfs_direct_io, monkeypatch, engine, direct):
    d = netfs_direct_io.new_dir("rd")
    recs = records(7, 120)
    write(os.path.join(d.backing, "x.ffr"), recs)
    monkeypatch.setenv("FFRECORD_ENGINE", engine)
    try:
        r = ffrecord.FileReader(os.path.join(d.b, "x.ffr"), direct=direct)
    except OSError as e:
        if engine == "io_uring" and "io_uring" in str(e):
            pytest.skip(f"the kernel refuses io_uring: {e}")
        raise
    with r:
        order = list(range(119, -1, -3)) + [0, 0, 5]
        for _ in range(2):  # cold, then warm: neither may use a mapping
            assert [a.tobytes() for a in r.read(order)] == [recs[i] for i in order]
        assert r.mapping_available is False
        assert r.io_stats()["mapped_batches"] == 0
        assert "refuses shared mappings" in r.engine_reason
        assert r.file_info(0)["mappable"] is False


def test_fuse_gets_the_threads_engine_and_info_names_it(netfs_direct_io, auto_env):
    d = netfs_direct_io.new_dir("info")
    write(os.path.join(d.backing, "x.ffr"), records(3, 5))
    path = os.path.join(d.a, "x.ffr")
    with ffrecord.FileReader(path) as r:
        assert r.filesystem.startswith("fuse") and r.engine == "threads"
    res = subprocess.run([sys.executable, "-m", "ffrecord.cli", "info", path, "--engine", "--json"],
                         env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["filesystem"] == "fuse.sshfs" and info["engine"] == "threads"
    assert "FUSE" in info["engine_reason"] and info["mapping_available"] is False


def test_checkpoints_load_without_shared_mappings(netfs_direct_io):
    d = netfs_direct_io.new_dir("ck")
    state = {"w": torch.randn(500, 64), "small": [torch.full((3,), float(i)) for i in range(20)], "n": 4}
    ck.save(state, os.path.join(d.backing, "ckpt"))
    on_b = os.path.join(d.b, "ckpt")
    for direct in (False, True):
        got = ck.load(on_b, direct=direct)
        assert torch.equal(got["w"], state["w"]) and got["n"] == 4
        assert all(torch.equal(a, b) for a, b in zip(got["small"], state["small"]))
    with pytest.raises(OSError) as e:
        ck.load(on_b, mmap=True)
    msg = str(e.value)
    assert on_b in msg and "filesystem that can map files" in msg and "load(direct=True)" in msg


def test_replaced_on_a_opens_on_b_as_old_or_new(netfs, auto_env):
    old, new = records(1, 30), records(2, 45)
    for k in range(ROUNDS):
        d = netfs.new_dir("rp")
        a, b = os.path.join(d.a, "f.ffr"), os.path.join(d.b, "f.ffr")
        write(a, old)
        with ffrecord.FileReader(b) as r:  # node B now caches the old file's attributes
            assert r.n == len(old)
        write(a, new if k % 4 else records(3, 10))  # bigger, or smaller
        with ffrecord.FileReader(b) as r:
            got = r.read_bytes(list(range(r.n)))
        assert got in (old, new, records(3, 10)), f"round {k}: {r.n} records, not one complete version"


def test_without_a_reopen_wait_a_stale_open_names_its_causes(netfs, monkeypatch):
    monkeypatch.delenv("FFRECORD_ENGINE", raising=False)
    monkeypatch.setenv("FFRECORD_REOPEN_WAIT", "0")
    seen = []
    for _ in range(10):
        d = netfs.new_dir("st")
        a, b = os.path.join(d.a, "f.ffr"), os.path.join(d.b, "f.ffr")
        write(a, records(1, 30))
        ffrecord.FileReader(b).close()
        write(a, records(2, 45))
        try:
            ffrecord.FileReader(b).close()
        except ffrecord.FFRecordError as e:
            seen.append(str(e))
    if not seen:
        pytest.skip("node B's cache was never stale in these rounds")
    for msg in seen:
        assert "fuse.sshfs" in msg and "cache_timeout" in msg and "FFRECORD_REOPEN_WAIT" in msg
        assert "f.ffr" in msg
