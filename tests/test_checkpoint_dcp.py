"""torch.distributed.checkpoint through ffrecord's StorageWriter/StorageReader:
2 ranks -> 1 rank and 1 rank -> 2 ranks (DCP resharding), CRC32C verified after
resharding, metadata stored as JSON, unsafe pickles refused."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

import ffrecord
import ffrecord.checkpoint as ck
from ffrecord.checkpoint.dcp import StorageReader, StorageWriter

from damage import flip_byte

HERE = os.path.dirname(os.path.abspath(__file__))
RANKS = os.path.join(HERE, "checkpoint_scripts", "dcp_ranks.py")
sys.path.insert(0, os.path.join(HERE, "checkpoint_scripts"))
from dcp_ranks import global_state  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def run_ranks(*args):
    res = subprocess.run([sys.executable, RANKS, *map(str, args)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and "OK" in res.stdout, (res.returncode, res.stdout[-1000:], res.stderr[-4000:])


def empty_like_global():
    full = global_state()
    return {
        "model": {k: torch.zeros_like(v) for k, v in full["model"].items()},
        "rep": torch.zeros(10, dtype=torch.int64),
        "step": 0,
        "cfg": {"lr": 0.0, "name": ""},
    }


def check_global(state):
    full = global_state()
    for k, v in full["model"].items():
        assert state["model"][k].dtype == v.dtype and torch.equal(state["model"][k], v), k
    assert torch.equal(state["rep"], full["rep"]) and state["step"] == 42 and state["cfg"] == full["cfg"]


def offset_of(path, tensor):
    """Where a tensor's bytes sit in the checkpoint's rank files."""
    for name in sorted(os.listdir(path)):
        if name.startswith("rank"):
            raw = (path / name).read_bytes()
            at = raw.find(tensor.contiguous().view(torch.uint8).numpy().tobytes())
            if at >= 0:
                return path / name, at
    raise AssertionError("tensor bytes not found")


def test_two_ranks_save_one_rank_loads(tmp_path):
    run_ranks("save", 2, tmp_path / "sync", tmp_path / "async")
    for name in ("sync", "async"):
        files = sorted(os.listdir(tmp_path / name))
        assert files == ["manifest.ffr", "rank00000-00000.ffr", "rank00001-00000.ffr"], files
        for direct in (False, True):
            state = empty_like_global()
            reader = StorageReader(tmp_path / name, direct=direct)
            dcp.load(state, storage_reader=reader, no_dist=True)  # 2 shards -> 1 tensor
            check_global(state)
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []

    # Damage one byte of rank 1's shard of model.w: the resharded load names it.
    w = global_state()["model"]["w"]
    f, at = offset_of(tmp_path / "sync", w[19:])  # rows 19.. are rank 1's shard
    flip_byte(f, at + 100)
    with pytest.raises(CheckpointException, match=r"CRC32C mismatch in tensor 'model.w' \(chunk at \[19, 0\]\)"):
        dcp.load(empty_like_global(), storage_reader=StorageReader(tmp_path / "sync"), no_dist=True)


def test_one_rank_saves_two_ranks_load(tmp_path):
    full = global_state()
    dcp.save(full, storage_writer=StorageWriter(tmp_path / "one"), no_dist=True)
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "one", bad)
    f, at = offset_of(bad, full["model"]["col"])
    flip_byte(f, at + 8 * 10 * 4 - 3)  # the last row, which rank 1 reads after resharding
    run_ranks("load", 2, tmp_path / "one", bad, "CRC32C mismatch in tensor 'model.col'")


class _Planner:
    """The part of a LoadPlanner that StorageReader.read_data calls."""

    def __init__(self, target):
        self.target, self.bytes = target, {}

    def resolve_tensor(self, req):
        return self.target

    def commit_tensor(self, req, tensor):
        pass

    def load_bytes(self, req, value):
        self.bytes[req.dest_index.fqn] = value.read()


def read_box(path, fqn, offsets, lengths, target):
    reader = StorageReader(path)
    md = reader.read_metadata()
    reader.set_up_storage_reader(md, True)
    idx = MetadataIndex(fqn, [0] * len(offsets))
    item = ReadItem(LoadItemType.TENSOR, MetadataIndex(fqn), torch.Size([0] * len(offsets)), idx,
                    torch.Size(offsets), torch.Size(lengths))
    reader.read_data(LoadPlan([item]), _Planner(target)).wait()


def test_reshard_reads_and_verifies_only_the_blocks_it_needs(tmp_path):
    big = torch.arange(1000 * 100, dtype=torch.float32).reshape(1000, 100)  # 400 kB, 98 blocks of 4 KiB
    dcp.save({"big": big}, storage_writer=StorageWriter(tmp_path / "c", block_size=4096), no_dist=True)
    box = torch.empty(10, 30)
    read_box(tmp_path / "c", "big", [500, 20], [10, 30], box)
    assert torch.equal(box, big[500:510, 20:50])

    f, at = offset_of(tmp_path / "c", big)
    flip_byte(f, at + 10 * 4096 + 5)  # a block far from rows 500..509
    read_box(tmp_path / "c", "big", [500, 20], [10, 30], box)
    assert torch.equal(box, big[500:510, 20:50])
    with pytest.raises(ffrecord.ChecksumError, match=r"'big'.*block 10 "):
        read_box(tmp_path / "c", "big", [0, 0], [1000, 100], torch.empty(1000, 100))
    flip_byte(f, at + 505 * 400 + 7)  # inside row 505: the box's own block
    with pytest.raises(ffrecord.ChecksumError, match="'big'"):
        read_box(tmp_path / "c", "big", [500, 20], [10, 30], box)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickled_values_are_refused_unless_trusted(tmp_path):
    marker = tmp_path / "pwned"
    dcp.save({"t": torch.ones(3), "evil": Payload(str(marker)), "n": 5}, storage_writer=StorageWriter(tmp_path / "c"),
             no_dist=True)
    assert not marker.exists()
    state = {"t": torch.zeros(3), "evil": None, "n": 0}
    with pytest.raises(CheckpointException, match="weights_only"):
        dcp.load(state, storage_reader=StorageReader(tmp_path / "c"), no_dist=True)
    assert not marker.exists()
    safe = {"t": torch.zeros(3), "n": 0}
    dcp.load(safe, storage_reader=StorageReader(tmp_path / "c"), no_dist=True)
    assert safe["n"] == 5 and torch.equal(safe["t"], torch.ones(3))
    dcp.load(state, storage_reader=StorageReader(tmp_path / "c", trusted=True), no_dist=True)
    assert marker.exists()


def test_metadata_is_json_and_kinds_do_not_mix(tmp_path):
    dcp.save({"t": torch.ones(3), "x": {"y": 2}}, storage_writer=StorageWriter(tmp_path / "d"), no_dist=True)
    with ffrecord.FileReader(str(tmp_path / "d" / "manifest.ffr")) as r:
        manifest = json.loads(r.read_one(0).tobytes())
    assert manifest["kind"] == "dcp" and {e["fqn"] for e in manifest["dcp"]["state_dict_metadata"]} == {"t", "x.y"}
    with pytest.raises(ffrecord.FormatError, match="StorageReader"):
        ck.load(tmp_path / "d")
    ck.save({"t": torch.ones(3)}, tmp_path / "plain")
    with pytest.raises(CheckpointException, match="kind 'tree'"):
        dcp.load({"t": torch.zeros(3)}, storage_reader=StorageReader(tmp_path / "plain"), no_dist=True)


def test_overwrite_is_atomic_and_optional(tmp_path):
    dcp.save({"t": torch.ones(3)}, storage_writer=StorageWriter(tmp_path / "c"), no_dist=True)
    dcp.save({"t": torch.full((3,), 2.0)}, storage_writer=StorageWriter(tmp_path / "c"), no_dist=True)
    state = {"t": torch.zeros(3)}
    dcp.load(state, storage_reader=StorageReader(tmp_path / "c"), no_dist=True)
    assert torch.equal(state["t"], torch.full((3,), 2.0))
    with pytest.raises(CheckpointException, match="overwrite=False"):
        dcp.save({"t": torch.ones(3)}, storage_writer=StorageWriter(tmp_path / "c", overwrite=False), no_dist=True)
    dcp.load(state, storage_reader=StorageReader(tmp_path / "c"), no_dist=True)
    assert torch.equal(state["t"], torch.full((3,), 2.0))
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []
    with pytest.raises(ValueError):
        StorageWriter(tmp_path / "x", block_size=1000)


def test_checkpoint_id_selects_the_path(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"t": torch.ones(2)}, checkpoint_id=tmp_path / "by_id", storage_writer=StorageWriter(tmp_path / "x"),
                 no_dist=True)
        state = {"t": torch.zeros(2)}
        dcp.load(state, checkpoint_id=tmp_path / "by_id", storage_reader=StorageReader(tmp_path / "y"), no_dist=True)
    assert torch.equal(state["t"], torch.ones(2)) and not os.path.exists(tmp_path / "x")
    assert StorageWriter.validate_checkpoint_id(str(tmp_path)) and not StorageReader.validate_checkpoint_id("s3://b/k")
