"""Hostile and damaged checkpoints: pickles refused, flipped bytes named, bad manifests."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffrecord
import ffrecord.checkpoint as ck
from ffrecord.checkpoint.layout import MANIFEST_NAME

from damage import flip_byte, flip_byte_of_tensor, truncate


class Payload:
    """Unpickling this creates a marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Opaque:
    """A value only pickle can store."""

    def __init__(self, blob):
        self.blob = blob

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.blob == self.blob


def read_manifest_json(directory):
    with ffrecord.FileReader(os.path.join(directory, MANIFEST_NAME)) as r:
        return json.loads(r.read_one(0).tobytes())


def rewrite_manifest(directory, manifest):
    os.unlink(os.path.join(directory, MANIFEST_NAME))
    with ffrecord.FileWriter(os.path.join(directory, MANIFEST_NAME)) as w:
        w.write_one(json.dumps(manifest).encode())


def test_pickled_object_is_refused_by_default(tmp_path):
    marker = tmp_path / "pwned"
    ck.save({"w": torch.ones(2), "evil": Payload(str(marker))}, tmp_path / "c", trusted=True)
    assert not marker.exists()
    with pytest.raises(ck.UnsafeCheckpointError, match=r"pickled.*\['evil'\].*trusted=True"):
        ck.load(tmp_path / "c")
    assert not marker.exists()
    # Entries without pickles still load; the pickle runs only when trusted.
    assert torch.equal(ck.load(tmp_path / "c", keys=["w"])["w"], torch.ones(2))
    assert isinstance(ck.UnsafeCheckpointError("x"), ffrecord.FFRecordError)
    ck.load(tmp_path / "c", trusted=True)
    assert marker.exists()


def test_crafted_manifest_smuggling_a_pickle_is_refused(tmp_path):
    # An attacker rewrites a plain checkpoint so its tree points at a pickle
    # stored in a record: load() must refuse without reading it.
    marker = tmp_path / "pwned"
    blob = np.frombuffer(pickle.dumps(Payload(str(marker))), dtype=np.uint8)
    ck.save({"t": torch.from_numpy(blob.copy())}, tmp_path / "c")
    m = read_manifest_json(tmp_path / "c")
    part = m["arrays"][0]["parts"]
    m["pickles"] = [{"nbytes": blob.size, "parts": part}]
    m["tree"] = {"$": "dict", "k": ["t"], "v": [{"$": "pickle", "i": 0}]}
    rewrite_manifest(tmp_path / "c", m)
    with pytest.raises(ck.UnsafeCheckpointError):
        ck.load(tmp_path / "c")
    assert not marker.exists()


def test_a_torch_save_file_is_not_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    os.mkdir(tmp_path / "c")
    torch.save({"x": Payload(str(marker))}, tmp_path / "c" / MANIFEST_NAME)
    with pytest.raises(ffrecord.FormatError):
        ck.load(tmp_path / "c")
    with pytest.raises(ffrecord.FormatError, match="not a checkpoint"):
        ck.load(tmp_path / "c" / MANIFEST_NAME)
    assert not marker.exists()


def test_flipped_byte_names_the_tensor(tmp_path):
    w = torch.randn(1000, 100)  # a record of its own
    b = torch.randn(10)  # packed with other small tensors
    state = {"model": {"fc.weight": w, "fc.bias": b, "other": torch.randn(7)}, "step": 3}
    ck.save(state, tmp_path / "c")
    data = tmp_path / "c" / "data-00000.ffr"
    raw = data.read_bytes()
    at = raw.index(w.numpy().tobytes()[:64])
    flip_byte(data, at + 12345)
    with pytest.raises(ffrecord.ChecksumError, match=r"\['model'\]\['fc.weight'\]"):
        ck.load(tmp_path / "c")
    # Nothing else was damaged, and a partial load reads only what it is asked.
    got = ck.load(tmp_path / "c", keys=[["model", "fc.bias"], "step"])
    assert torch.equal(got[("model", "fc.bias")], b)
    flip_byte(data, at + 12345)  # undo
    flip_byte(data, raw.index(b.numpy().tobytes()) + 3)
    with pytest.raises(ffrecord.ChecksumError, match=r"\['model'\]\['fc.bias'\]"):
        ck.load(tmp_path / "c")


def test_flipped_byte_in_a_large_tensor_read_in_pieces(tmp_path):
    # Large tensors are read in 4 MiB pieces by several threads; a flip in a
    # later piece must still be caught and named.
    big = torch.randn(3 << 20)  # 12 MiB
    state = {"a": torch.randn(10), "big": big, "z": torch.randn(300_000)}
    ck.save(state, tmp_path / "c")
    flip_byte_of_tensor(tmp_path / "c", big, (9 << 20) + 77)
    with pytest.raises(ffrecord.ChecksumError, match=r"\['big'\]"):
        ck.load(tmp_path / "c")
    got = ck.load(tmp_path / "c", keys=["a", "z"])
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["z"], state["z"])


def test_damaged_or_missing_files_are_format_errors(tmp_path):
    ck.save({"t": torch.randn(5000)}, tmp_path / "c")
    data = tmp_path / "c" / "data-00000.ffr"
    size = data.stat().st_size
    truncate(data, size - 10)
    with pytest.raises(ffrecord.FormatError, match="truncated"):
        ck.load(tmp_path / "c")
    data.unlink()
    with pytest.raises(ffrecord.FormatError, match="missing"):
        ck.load(tmp_path / "c")
    manifest = tmp_path / "c" / MANIFEST_NAME
    flip_byte(manifest, 40)
    with pytest.raises(ffrecord.FFRecordError):
        ck.load(tmp_path / "c")
    manifest.unlink()
    with pytest.raises(ffrecord.FormatError, match="not a checkpoint"):
        ck.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        ck.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(version=99),
        lambda m: m.update(format="other"),
        lambda m: m["files"].append({"name": "../etc/passwd", "size": 1}),
        lambda m: m["files"][0].update(records=7),
        lambda m: m["arrays"][0].update(dtype="os.system"),
        lambda m: m["arrays"][0].update(dtype="Tensor"),
        lambda m: m["arrays"][0].update(shape=[10**12, 10**12]),
        lambda m: m["arrays"][0].update(shape=[-1]),
        lambda m: m["arrays"][0]["parts"][0].__setitem__(3, 10**15),
        lambda m: m["arrays"][0]["parts"][0].__setitem__(1, 999),
        lambda m: m["arrays"][0]["parts"][0].__setitem__(2, 10**9),
        # Two entries claiming the same bytes (would let a small file inflate into huge allocations).
        lambda m: m["arrays"][1].update({k: m["arrays"][0][k] for k in ("parts", "shape", "nbytes")}),
        lambda m: m["arrays"][0].update(kind="pickle"),
        lambda m: m.update(tree={"$": "tensor", "i": 57}),
        lambda m: m.update(tree={"$": "ndarray", "i": 0}),
        lambda m: m.update(tree={"$": "eval", "v": "1+1"}),
        lambda m: m.update(tree={"$": "dict", "k": [{"$": "list", "v": []}], "v": [1]}),
        lambda m: m.update(tree={"$": "dict", "k": [{"$": "tensor", "i": 0}], "v": [1]}),
        lambda m: m.update(tree={"$": "npscalar", "dtype": "|O", "v": ""}),
        lambda m: m.update(tree={"$": "bytes", "v": "***"}),
        lambda m: m.update(tree={"$": "device", "v": "nonsense:x"}),
    ],
)
def test_crafted_manifests_raise_format_error(tmp_path, edit):
    a = torch.randn(100, 10)
    ck.save({"a": a, "b": torch.randn(3)}, tmp_path / "c")
    m = read_manifest_json(tmp_path / "c")
    edit(m)
    rewrite_manifest(tmp_path / "c", m)
    with pytest.raises((ffrecord.FormatError, ck.UnsafeCheckpointError)):
        ck.load(tmp_path / "c")


@pytest.mark.parametrize("mmap", [False, True])
def test_a_pickled_entry_is_read_as_bytes_whatever_kind_its_entry_claims(tmp_path, mmap):
    # An entry of the pickles table that claims to be a small tensor must not
    # size its destination: the bytes it holds are read in full, then unpickled.
    obj = Opaque(bytes(range(256)) * 400)
    ck.save({"obj": obj, "t": torch.arange(5)}, tmp_path / "c", trusted=True)
    m = read_manifest_json(tmp_path / "c")
    m["pickles"][0].update(kind="torch", shape=[1], dtype="float32", device="cpu")
    rewrite_manifest(tmp_path / "c", m)
    out = ck.load(tmp_path / "c", trusted=True, mmap=mmap)
    assert out["obj"] == obj and torch.equal(out["t"], torch.arange(5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["$", "i", "k", "v", "m", "dtype"]), c, max_size=4),
    max_leaves=12,
))
def test_random_trees_never_crash_the_loader(tmp_path_factory, tree):
    d = tmp_path_factory.mktemp("fuzz")
    ck.save({"a": torch.arange(4)}, d / "c")
    m = read_manifest_json(d / "c")
    m["tree"] = tree
    rewrite_manifest(d / "c", m)
    try:
        ck.load(d / "c")
    except (ffrecord.FormatError, ck.UnsafeCheckpointError):
        pass
