"""load(mmap=True): tensors and arrays are views of private, copy-on-write
mappings of the checkpoint's files, every byte verified in place."""

import os
import shutil

import numpy as np
import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from damage import flip_byte_of_tensor, truncate

DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128,
    torch.float8_e4m3fn, torch.float8_e5m2,
]


def make_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {
        "big": torch.randn(3_000_001, generator=g),  # 12 MB in one record
        "small": [torch.randn(k * 37 + 1, generator=g) for k in range(100)],  # packed, 64-byte offsets
        "empty": torch.empty(0, 7),
        "np": np.arange(1001, dtype=np.int16),
        "plain": {"step": 7, "name": "run"},
    }
    for dt in DTYPES:  # random bit patterns (NaN payloads included), compared as bytes
        if dt == torch.bool:
            state[str(dt)] = torch.randint(0, 2, (4099,), generator=g).bool()
        else:
            state[str(dt)] = torch.randint(0, 256, (4099 * dt.itemsize,), dtype=torch.uint8, generator=g).view(dt)
    return state


def assert_same(got, state):
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    assert all(torch.equal(a, b) for a, b in zip(got["small"], state["small"]))
    assert np.array_equal(got["np"], state["np"]) and got["np"].dtype == state["np"].dtype
    assert got["plain"] == state["plain"]


def test_round_trip_of_every_dtype_matches_the_copying_load(tmp_path):
    state = make_state(1)
    ck.save(state, tmp_path / "c")
    mapped = ck.load(tmp_path / "c", mmap=True)
    assert_same(mapped, state)
    assert_same(ck.load(tmp_path / "c"), state)
    assert mapped["big"].is_contiguous() and mapped["big"].device.type == "cpu"


def test_writes_to_loaded_tensors_stay_in_the_process(tmp_path):
    state = make_state(2)
    ck.save(state, tmp_path / "c")
    a = ck.load(tmp_path / "c", mmap=True)
    b = ck.load(tmp_path / "c", mmap=True)
    a["big"].mul_(2)
    a["small"][3].zero_()
    a["np"][:] = -1  # numpy views are writable too
    assert torch.equal(b["big"], state["big"])  # another load of the same files does not see the writes
    assert torch.equal(b["small"][3], state["small"][3])
    assert torch.equal(a["big"], state["big"] * 2)
    assert_same(ck.load(tmp_path / "c"), state)  # the files are unchanged


def test_tensors_outlive_the_checkpoint_and_its_directory(tmp_path):
    state = make_state(3)
    ck.save(state, tmp_path / "c")
    with ck.Checkpoint(tmp_path / "c", mmap=True) as c:
        big = c["big"]
        small = c.load([["small", 5]])[("small", 5)]
    shutil.rmtree(tmp_path / "c")
    assert torch.equal(big, state["big"]) and torch.equal(small, state["small"][5])


def test_partial_loads(tmp_path):
    state = make_state(4)
    ck.save(state, tmp_path / "c")
    got = ck.load(tmp_path / "c", keys=["np", ["small", 99]], mmap=True)
    assert np.array_equal(got["np"], state["np"])
    assert torch.equal(got[("small", 99)], state["small"][99])


def test_tensors_split_across_records_and_files(tmp_path):
    g = torch.Generator().manual_seed(5)
    state = {"a": torch.randn(1_500_000, generator=g), "b": torch.randn(900_001, generator=g)}
    # Records of 1 MiB: each tensor spans several records, contiguous in its
    # file (one view); files of 2 MiB: some tensors continue in the next file
    # (copied out of the mappings instead).
    ck.save(state, tmp_path / "c", chunk_bytes=1 << 20)
    got = ck.load(tmp_path / "c", mmap=True)
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["b"], state["b"])
    ck.save(state, tmp_path / "d", chunk_bytes=1 << 20, file_bytes=2 << 20)
    assert len([n for n in os.listdir(tmp_path / "d") if n.startswith("data")]) > 1
    got = ck.load(tmp_path / "d", mmap=True)
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["b"], state["b"])


def test_a_flipped_byte_is_caught_and_names_the_tensor(tmp_path):
    state = make_state(6)
    ck.save(state, tmp_path / "c")
    flip_byte_of_tensor(tmp_path / "c", state["big"], (5 << 20) + 3)
    with pytest.raises(ffrecord.ChecksumError, match=r"\['big'\]"):
        ck.load(tmp_path / "c", mmap=True)
    got = ck.load(tmp_path / "c", keys=["np", "small"], mmap=True)  # the rest is sound
    assert np.array_equal(got["np"], state["np"])


@pytest.mark.parametrize("mmap", [False, True])
def test_a_file_cut_short_after_opening_is_a_format_error(tmp_path, mmap):
    state = make_state(7)
    ck.save(state, tmp_path / "c")
    data = tmp_path / "c" / "data-00000.ffr"
    with ck.Checkpoint(tmp_path / "c", mmap=mmap) as c:
        assert torch.equal(c["big"], state["big"])  # opens the file
        truncate(data, data.stat().st_size // 2)
        with pytest.raises(ffrecord.FormatError, match="shorter"):
            c.load()


def test_mmap_and_direct_exclude_each_other(tmp_path):
    ck.save({"x": torch.ones(3)}, tmp_path / "c")
    with pytest.raises(ValueError, match="exclude"):
        ck.load(tmp_path / "c", mmap=True, direct=True)
