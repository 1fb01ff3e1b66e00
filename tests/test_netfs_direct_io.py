"""Everything through an sshfs mount with -o direct_io, where mmap(MAP_SHARED) of
a file fails with ENODEV: reads stay correct on every engine, a healthy dataset
validates clean, a finished conversion is not redone, checkpoints load."""

import os
import warnings

import numpy as np
import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from ffrecord.cli import main
from netfs_ranks import cli

RECORDS = 60
PER_SHARD = 25


def record(i):
    rng = np.random.default_rng(i)
    return f"r{i:04d}:".encode() + rng.bytes(int(rng.integers(10, 40_000)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("direct_io")
    folder = tmp / "src"
    folder.mkdir()
    for i in range(RECORDS):
        (folder / f"{i:04d}.bin").write_bytes(record(i))
    return folder


@pytest.fixture(scope="module")
def dataset(netfs_direct_io, source):
    """A dataset converted straight into the export, and its paths on the nodes."""
    d = netfs_direct_io.new_dir("ds")
    assert main(["convert", str(source), d.backing, "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    return d


def io_uring_refused():
    """Why a forced io_uring engine cannot open even a local file here, or None."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "x.ffr")
        with ffrecord.FileWriter(p) as w:
            w.write_one(b"x")
        try:
            ffrecord.FileReader(p).close()
        except (ffrecord.FFRecordError, OSError, ValueError) as e:
            return str(e)
    return None


@pytest.mark.parametrize("engine", [None, "io_uring", "threads", "pread"])
def test_reads_are_correct_on_every_engine(dataset, engine, monkeypatch):
    if engine is None:
        monkeypatch.delenv("FFRECORD_ENGINE", raising=False)
    else:
        monkeypatch.setenv("FFRECORD_ENGINE", engine)
        if engine == "io_uring" and (why := io_uring_refused()):
            pytest.skip(f"kernel refuses io_uring: {why}")
    r = ffrecord.FileReader(dataset.b)
    try:
        assert r.n == RECORDS
        order = list(np.random.default_rng(1).permutation(RECORDS))
        assert r.read_bytes(order[:17]) == [record(int(i)) for i in order[:17]]
        assert [r.read_one(i).tobytes() for i in (0, RECORDS - 1)] == [record(0), record(RECORDS - 1)]
        with pytest.raises(IndexError):
            r.read_one(RECORDS)
    finally:
        r.close()


def test_direct_reads_are_correct(dataset):
    r = ffrecord.FileReader(dataset.a, direct=True)
    try:
        assert r.read_bytes(list(range(RECORDS - 1, -1, -3))) == [record(i) for i in range(RECORDS - 1, -1, -3)]
    finally:
        r.close()


def test_validate_quarantine_of_a_healthy_dataset_quarantines_nothing(dataset):
    rc, out, err = cli(["validate", dataset.b, "--quarantine"])
    assert rc == 0, out + err
    assert "BAD" not in out
    assert not os.path.exists(os.path.join(dataset.backing, "quarantine.json"))


def shard_identity(path):
    names = sorted(n for n in os.listdir(path) if n.endswith(".ffr") or n == "index.json")
    return {n: (os.stat(os.path.join(path, n)).st_ino, os.stat(os.path.join(path, n)).st_mtime_ns) for n in names}


def test_rerun_of_a_finished_convert_rewrites_no_shard(netfs_direct_io, source):
    d = netfs_direct_io.new_dir("rerun")
    assert main(["convert", str(source), d.backing, "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    before = shard_identity(d.backing)
    assert len(before) == 4  # 3 shards and index.json
    rc, out, err = cli(["convert", source, d.a, "--records-per-shard", PER_SHARD])
    assert rc == 0, out + err
    assert shard_identity(d.backing) == before


def test_checkpoint_loads_and_mmap_is_refused_clearly(netfs_direct_io):
    d = netfs_direct_io.new_dir("ck")
    state = {"w": torch.randn(300, 70), "step": 7, "names": ["a", "b"]}
    ck.save(state, os.path.join(d.backing, "ckpt"))
    got = ck.load(os.path.join(d.b, "ckpt"))
    assert torch.equal(got["w"], state["w"]) and got["step"] == 7 and got["names"] == ["a", "b"]
    with pytest.raises((ffrecord.FFRecordError, OSError)) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck.load(os.path.join(d.b, "ckpt"), mmap=True)
    assert os.path.join(d.b, "ckpt") in str(e.value)
    assert "map" in str(e.value).lower()


def test_a_missing_dataset_through_the_mount_is_a_usage_error(netfs_direct_io):
    d = netfs_direct_io.new_dir("none")
    rc, _out, err = cli(["validate", os.path.join(d.a, "missing"), "--quarantine"])
    assert rc == 2 and "missing" in err
    assert not os.path.exists(os.path.join(d.backing, "missing"))
