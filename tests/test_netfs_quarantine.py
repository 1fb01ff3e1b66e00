"""Two ranks quarantine bad records at the same moment, each through its own node of
a network filesystem: both findings must end up in quarantine.json (no lost update)."""

import json
import os
import shutil
import warnings

import pytest

import ffrecord
from ffrecord.cli import main
from damage import flip_byte
from netfs_ranks import RankPool, cli

RECORDS = 40
PER_SHARD = 20
BAD = [7, 20 + 13]  # one record in each shard (dataset-wide indices)


def record(i):
    return f"record-{i:05d}-".encode() + bytes([65 + i % 26]) * (200 + 13 * i)


@pytest.fixture(scope="module")
def damaged_dataset(tmp_path_factory):
    """A 2-shard dataset converted on local disk, one flipped byte inside one record of each shard."""
    tmp = tmp_path_factory.mktemp("quarantine")
    src = tmp / "src.jsonl"
    src.write_bytes(b"".join(record(i) + b"\n" for i in range(RECORDS)))
    dst = tmp / "ds"
    assert main(["convert", str(src), str(dst), "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    shards = sorted(n for n in os.listdir(dst) if n.endswith(".ffr"))
    assert len(shards) == 2
    for i in BAD:
        path = dst / shards[i // PER_SHARD]
        at = path.read_bytes().index(record(i))
        flip_byte(path, at + 50)
    return dst, shards


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


def copy_dataset(src, dst):
    for name in os.listdir(src):
        if name.endswith(".ffr") or name == "index.json":
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def validate_args(path, rank):
    return (["validate", path, "--rank", rank, "--world-size", 2, "--quarantine", "-q"],)


def race(pool, netdir):
    """Rank 0 validates through node A, rank 1 through node B, released together."""
    results = pool.together([(cli, validate_args(netdir.a, 0)), (cli, validate_args(netdir.b, 1))])
    for rank, res in enumerate(results):
        assert isinstance(res, tuple), f"rank {rank}: {res!r}"
        rc, _out, err = res
        assert rc == 1, f"rank {rank} (a bad record in its shard) exited {rc}: {err}"


def quarantined(path, shards):
    """The (shard, index) pairs listed in path's quarantine.json."""
    with open(os.path.join(path, "quarantine.json")) as f:
        doc = json.load(f)
    assert doc["files"] == []
    return sorted((shards.index(r["file"]), r["index"]) for r in doc["records"])


def assert_bad_records_skipped(path, shards):
    assert quarantined(path, shards) == [(i // PER_SHARD, i % PER_SHARD) for i in BAD]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ffrecord.FileReader(path)
    try:
        assert r.n == RECORDS - len(BAD)
        got = r.read_bytes(list(range(r.n)))
    finally:
        r.close()
    assert got == [record(i) for i in range(RECORDS) if i not in BAD]


def test_two_ranks_quarantining_at_once_lose_no_entry(netfs, damaged_dataset, ranks):
    src, shards = damaged_dataset
    lost = []
    for round_ in range(50):
        d = netfs.new_dir(f"q{round_}")
        copy_dataset(src, d.backing)
        race(ranks, d)
        try:
            assert_bad_records_skipped(d.backing, shards)
        except (AssertionError, OSError) as e:
            lost.append((round_, str(e).splitlines()[0]))
    assert lost == [], f"{len(lost)} of 50 rounds lost a quarantine entry: {lost[:5]}"


def test_quarantine_read_back_through_both_nodes(netfs_cache_no, damaged_dataset, ranks):
    """On mounts that cache nothing, each node sees the merged quarantine at once."""
    src, shards = damaged_dataset
    for round_ in range(10):
        d = netfs_cache_no.new_dir(f"q{round_}")
        copy_dataset(src, d.backing)
        race(ranks, d)
        for path in (d.backing, d.a, d.b):
            assert_bad_records_skipped(path, shards)


def test_quarantine_of_a_missing_dataset_is_a_usage_error(netfs, ranks):
    d = netfs.new_dir("missing")
    rc, _out, err = ranks.call(0, cli, validate_args(os.path.join(d.a, "nope"), 0)[0])
    assert rc == 2 and "nope" in err
