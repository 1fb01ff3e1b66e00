"""Conversion and validation by ranks on two nodes of a network filesystem.

Rank 0 works through node A and rank 1 through node B, released together from
a barrier. On sshfs's default caches a directory listing can be ~20 s stale, so
"am I the last rank?" must not rest on one; the manifest must appear without
``--finalize`` in every round. On a mount that refuses mmap (``direct_io``),
healthy shards must never be quarantined or rewritten, whether the reader
works there (exit 0) or the mount makes it fail (exit 2, nothing written).
"""

import os

import pytest

from ffrecord import quarantine
from ffrecord.cli import main
from netfs_ranks import RankPool, cli

RECORDS = 48
PER_SHARD = 8  # 6 shards: 3 per rank


def record(i):
    return f"line-{i:04d}-".encode() + bytes([97 + i % 26]) * (100 + 11 * i)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("netfs-convert")
    src = tmp / "src.jsonl"
    src.write_bytes(b"".join(record(i) + b"\n" for i in range(RECORDS)))
    single = tmp / "single"
    assert main(["convert", str(src), str(single), "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    return str(src), (single / "index.json").read_bytes()


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


def convert_args(src, dst, rank):
    return (["convert", src, dst, "--records-per-shard", PER_SHARD, "--rank", rank, "--world-size", 2],)


def test_two_ranks_on_two_nodes_write_the_manifest_without_finalize(netfs, source, ranks):
    src, expected = source
    failures = []
    for round_ in range(30):
        d = netfs.new_dir(f"c{round_}")
        results = ranks.together([(cli, convert_args(src, d.a, 0)), (cli, convert_args(src, d.b, 1))])
        assert all(isinstance(r, tuple) and r[0] == 0 for r in results), (round_, results)
        manifest = os.path.join(d.backing, "index.json")
        if not os.path.exists(manifest):
            failures.append((round_, [r[1].strip().splitlines()[-1] for r in results]))
            continue
        with open(manifest, "rb") as f:
            assert f.read() == expected
    assert failures == [], f"{len(failures)} of 30 rounds ended without index.json: {failures[:3]}"


def test_healthy_shards_on_a_mount_refusing_mmap_are_never_quarantined_or_rewritten(netfs_direct_io, source):
    src, _ = source
    d = netfs_direct_io.new_dir("env")
    assert main(["convert", src, d.backing, "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    shards = sorted(n for n in os.listdir(d.backing) if n.endswith(".ffr"))
    before = {n: os.stat(os.path.join(d.backing, n)).st_mtime_ns for n in shards}

    rc, out, err = cli(["validate", d.a, "--quarantine", "-q"])
    assert "BAD" not in out
    assert (rc, err) == (0, "") or (rc == 2 and "(ENODEV)" in err and "nothing was judged" in err), (rc, err)
    assert not os.path.exists(os.path.join(d.backing, "quarantine.d"))
    assert not quarantine.load(d.backing)

    rc, out, err = cli(["convert", src, d.a, "--records-per-shard", PER_SHARD])
    assert rc == 0 and f"{len(shards)} already complete" in out or rc == 2 and "not rewritten" in err, (rc, out, err)
    assert {n: os.stat(os.path.join(d.backing, n)).st_mtime_ns for n in shards} == before


def test_two_ranks_on_two_nodes_share_one_trained_dictionary(netfs, source, ranks, tmp_path):
    src, _ = source
    single = tmp_path / "single"
    options = ["--compression", "zstd", "--zstd-dict", "-q"]
    assert main(["convert", src, str(single), "--records-per-shard", str(PER_SHARD)] + options) == 0
    for round_ in range(10):
        d = netfs.new_dir(f"z{round_}")
        results = ranks.together([(cli, (convert_args(src, d.a, 0)[0] + options,)),
                                  (cli, (convert_args(src, d.b, 1)[0] + options,))])
        assert all(isinstance(r, tuple) and r[0] == 0 for r in results), (round_, results)
        for name in os.listdir(single):
            if name.endswith(".ffr") or name == "index.json":
                with open(os.path.join(d.backing, name), "rb") as f:
                    assert f.read() == (single / name).read_bytes(), (round_, name)
