"""Node A overwrites, node B opens it the moment A is done: B must get the old
complete data or the new complete data, never an error (a stale cached size must
not make a good file look truncated)."""

import os

import numpy as np
import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from netfs_ranks import Failed, RankPool

ROUNDS = 100


def checkpoint_state(round_):
    """Round-stamped values whose size changes every round (so stale sizes show)."""
    n = 1000 + 37 * (round_ % 11)
    return {"round": round_, "w": torch.full((n,), float(round_)), "b": torch.arange(round_ % 5 + 1)}


def save_checkpoint(path, round_):
    ck.save(checkpoint_state(round_), path)
    return round_


def load_checkpoint(path):
    """The round whose complete data ``path`` held, or a description of what was wrong."""
    obj = ck.load(path)
    want = checkpoint_state(obj["round"])
    same = (obj.keys() == want.keys() and torch.equal(obj["w"], want["w"]) and torch.equal(obj["b"], want["b"]))
    return obj["round"] if same else f"torn data: round {obj['round']} with other values"


def file_records(round_):
    n = 5 + round_ % 9
    return [bytes([round_ % 256]) * (100 + 50 * i + round_) for i in range(n)]


def write_record_file(path, round_):
    with ffrecord.FileWriter(path) as w:
        w.write_batch(file_records(round_))
    return round_


def read_record_file(path):
    r = ffrecord.FileReader(path)
    try:
        got = r.read_bytes(list(range(r.n)))
    finally:
        r.close()
    round_ = got[0][0] if got and got[0] else -1  # every byte is the round (ROUNDS < 256)
    if got == file_records(round_):
        return round_
    return f"torn data: {len(got)} records, the first starting {got[0][:8] if got else b''!r}"


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


def overwrite_and_load(pool, netdir, name, write, read):
    """Round 0 is written first; then every round A overwrites and B loads at once."""
    on_a, on_b = os.path.join(netdir.a, name), os.path.join(netdir.b, name)
    assert pool.call(0, write, on_a, 0) == 0
    assert pool.call(1, read, on_b) == 0
    bad = []
    for round_ in range(1, ROUNDS + 1):
        done = pool.call(0, write, on_a, round_)
        assert done == round_, f"node A's write of round {round_}: {done!r}"
        got = pool.call(1, read, on_b)
        if got not in (round_ - 1, round_):  # the old complete data, or the new
            bad.append((round_, got))
    return bad


def describe(bad):
    return [(r, g.message if isinstance(g, Failed) else g) for r, g in bad[:5]]


def test_checkpoint_overwritten_on_a_loads_on_b_at_once(netfs, ranks):
    bad = overwrite_and_load(ranks, netfs.new_dir("ck"), "ckpt", save_checkpoint, load_checkpoint)
    assert bad == [], f"{len(bad)} of {ROUNDS} loads failed: {describe(bad)}"


def test_record_file_overwritten_on_a_opens_on_b_at_once(netfs, ranks):
    bad = overwrite_and_load(ranks, netfs.new_dir("ffr"), "data.ffr", write_record_file, read_record_file)
    assert bad == [], f"{len(bad)} of {ROUNDS} opens failed: {describe(bad)}"


def test_loading_a_missing_checkpoint_on_b_is_a_clear_error(netfs, ranks):
    d = netfs.new_dir("none")
    got = ranks.call(1, load_checkpoint, os.path.join(d.b, "ckpt"))
    assert isinstance(got, Failed) and "ckpt" in got.message
    assert got.type in ("FileNotFoundError", "FFRecordError", "FormatError")


def test_the_values_each_round_really_differ():
    a, b = checkpoint_state(1), checkpoint_state(2)
    assert not torch.equal(a["w"][:10], b["w"][:10])
    assert file_records(1) != file_records(2)
    assert np.all(np.frombuffer(file_records(3)[0], dtype=np.uint8) == 3)
