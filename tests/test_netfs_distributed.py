"""Two ranks convert, then validate, one dataset at the same moment, rank 0 through
node A and rank 1 through node B: the result equals, byte for byte, a one-rank
conversion on local disk, and index.json is there without --finalize."""

import filecmp
import os

import numpy as np
import pytest

from ffrecord.cli import main
from netfs_ranks import RankPool, cli

RECORDS = 130
PER_SHARD = 25


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(3)
    src = tmp / "src.jsonl"
    src.write_bytes(b"".join(b"%05d " % i + rng.bytes(int(rng.integers(20, 3000))).hex().encode() + b"\n"
                             for i in range(RECORDS)))
    single = tmp / "single"
    assert main(["convert", str(src), str(single), "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    return src, single


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


def dataset_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".ffr") or n == "index.json")


def per_rank(pool, netdir, command):
    """``command(path)`` on both ranks at once: rank 0 with node A's path, rank 1 with node B's."""
    calls = [(cli, ([*command(path), "--rank", rank, "--world-size", 2],))
             for rank, path in ((0, netdir.a), (1, netdir.b))]
    results = pool.together(calls)
    for rank, res in enumerate(results):
        assert isinstance(res, tuple), f"rank {rank}: {res!r}"
        rc, out, err = res
        assert rc == 0, f"rank {rank} exited {rc}: {out}{err}"
    return results


@pytest.mark.parametrize("round_", range(8))
def test_two_rank_convert_and_validate_through_two_nodes(netfs, source, ranks, round_):
    src, single = source
    d = netfs.new_dir(f"conv{round_}")
    per_rank(ranks, d, lambda path: ["convert", src, path, "--records-per-shard", PER_SHARD, "-q"])
    assert os.path.exists(os.path.join(d.backing, "index.json")), "no rank wrote index.json"
    assert dataset_files(d.backing) == dataset_files(single)
    match, mismatch, errors = filecmp.cmpfiles(d.backing, single, dataset_files(single), shallow=False)
    assert mismatch == [] and errors == []
    per_rank(ranks, d, lambda path: ["validate", path, "-q"])


def test_a_rank_converting_a_missing_source_fails_with_a_usage_error(netfs, ranks):
    d = netfs.new_dir("nosrc")
    rc, _out, err = ranks.call(0, cli, ["convert", os.path.join(d.backing, "none.jsonl"), d.a,
                                        "--rank", 0, "--world-size", 2])
    assert rc == 2 and "none.jsonl" in err
