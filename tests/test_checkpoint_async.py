"""async_save: staged copy (blocking or in the background), background write,
bounded staging, errors through the future."""

import os
import threading

import numpy as np
import pytest
import torch

import ffrecord.checkpoint as ck
from ffrecord.checkpoint import async_saving, commit


def make_state(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return {
        "layers": [torch.randn(256, 256, generator=g) for _ in range(n)],  # 256 KiB each
        "t": torch.randn(512, 64, generator=g).t(),  # non-contiguous
        "small": [torch.randn(k, generator=g) for k in range(1, 50)],
        "np": np.arange(1000),
        "step": seed,
    }


def equal_states(a, b):
    assert a["step"] == b["step"] and np.array_equal(a["np"], b["np"])
    for x, y in zip(a["layers"] + [a["t"]] + a["small"], b["layers"] + [b["t"]] + b["small"]):
        assert torch.equal(x, y)


def clone(state):
    out = dict(state)
    out["layers"] = [t.clone() for t in state["layers"]]
    out["t"] = state["t"].clone()
    out["small"] = [t.clone() for t in state["small"]]
    out["np"] = state["np"].copy()
    return out


def test_async_save_writes_what_was_there_when_it_returned(tmp_path):
    state = make_state(1)
    expect = clone(state)
    fut = ck.async_save(state, tmp_path / "c")
    # The caller may change its tensors at once: the save has its own copy.
    for t in state["layers"] + [state["t"]] + state["small"]:
        t.zero_()
    state["np"][:] = 0
    assert fut.result(timeout=120) == os.path.abspath(tmp_path / "c")
    assert fut.wait() is None and fut.done()
    equal_states(ck.load(tmp_path / "c"), expect)


@pytest.mark.parametrize("cap", [1 << 20, 3 << 20])
def test_bounded_staging_streams_through_the_cap(tmp_path, cap):
    async_saving.release_staging_memory()
    state = make_state(2, n=24)  # about 6.5 MB of tensors, several times the cap
    expect = clone(state)
    fut = ck.async_save(state, tmp_path / "c", max_staging_bytes=cap)
    assert 0 < ck.async_saving.staging_bytes() <= cap
    for t in state["layers"]:
        t.fill_(7)  # returned: every byte is staged or already written
    fut.result(timeout=120)
    equal_states(ck.load(tmp_path / "c"), expect)


def test_staging_buffer_is_reused_for_repeated_shapes(tmp_path):
    async_saving.release_staging_memory()
    ck.async_save(make_state(3), tmp_path / "a").result()
    first = async_saving.staging_bytes()
    ck.async_save(make_state(4), tmp_path / "b").result()
    assert async_saving.staging_bytes() == first > 0
    assert async_saving._arena is not None
    kept = async_saving._arena.data_ptr()
    ck.async_save(make_state(5), tmp_path / "c").result()
    assert async_saving._arena.data_ptr() == kept  # the same memory, not a new allocation
    ck.release_staging_memory()
    assert async_saving.staging_bytes() == 0


def test_overlapping_async_saves_are_serialised(tmp_path):
    futures = [ck.async_save(make_state(s), tmp_path / "same") for s in (10, 11, 12)]
    for f in futures:
        f.result(timeout=120)
    equal_states(ck.load(tmp_path / "same"), make_state(12))
    results = []

    def worker(seed):
        results.append(ck.async_save(make_state(seed), tmp_path / f"t{seed}"))

    threads = [threading.Thread(target=worker, args=(s,)) for s in (20, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in results:
        f.result(timeout=120)
    for s in (20, 21):
        equal_states(ck.load(tmp_path / f"t{s}"), make_state(s))


@pytest.mark.parametrize("step", ["record-written", "manifest-written", "before-commit"])
@pytest.mark.parametrize("cap", [None, 1 << 20])
@pytest.mark.parametrize("staging", ["blocking", "background", "fork"])
def test_writer_errors_are_raised_by_the_future(tmp_path, step, cap, staging):
    ck.save({"v": 1}, tmp_path / "c")

    def fail(name):
        if name == step:
            raise OSError(5, "Input/output error (injected)")

    commit._sync_hook = fail
    try:
        fut = ck.async_save(make_state(6, n=16), tmp_path / "c", max_staging_bytes=cap, staging=staging)
        with pytest.raises(OSError, match="injected"):
            fut.result(timeout=120)
        fut.wait_staged(timeout=120)  # the copy itself did not fail: the tensors are free again
        with pytest.raises(OSError, match="injected"):
            fut.wait()
    finally:
        commit._sync_hook = None
    assert ck.load(tmp_path / "c") == {"v": 1}
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []
    ck.async_save({"v": 2}, tmp_path / "c").result()  # the next save works
    assert ck.load(tmp_path / "c") == {"v": 2}


def test_errors_about_the_object_or_arguments_are_raised_at_once(tmp_path):
    with pytest.raises(TypeError, match="trusted=True"):
        ck.async_save({"x": object()}, tmp_path / "c")
    with pytest.raises(ValueError, match="at least"):
        ck.async_save({"x": 1}, tmp_path / "c", max_staging_bytes=1000)
    with pytest.raises(TypeError):
        ck.async_save({"x": 1}, tmp_path / "c", max_staging_bytes="1GB")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        ck.async_save({"x": 1}, tmp_path / "f")
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_empty_and_tensor_free_states(tmp_path):
    ck.async_save({}, tmp_path / "a").result()
    assert ck.load(tmp_path / "a") == {}
    ck.async_save({"e": torch.empty(0, 5), "s": "x"}, tmp_path / "b", max_staging_bytes=1 << 20).result()
    out = ck.load(tmp_path / "b")
    assert out["s"] == "x" and out["e"].shape == (0, 5)


@pytest.mark.parametrize("cap, held_batch", [(None, None), (None, 8 << 20), (16 << 20, None)])
def test_large_and_non_contiguous_tensors_are_staged_exactly(tmp_path, monkeypatch, cap, held_batch):
    # Records above the parallel-copy threshold (cut into slices shared by
    # several threads, the last one short) and packs of many transposed
    # tensors, each made contiguous by a temporary copy before staging.
    # Without a cap the whole state is staged before writing, in batches of
    # records; a small batch size makes some batches end mid-state.
    if held_batch is not None:
        monkeypatch.setattr(async_saving, "HELD_COPY_BATCH", held_batch)
    g = torch.Generator().manual_seed(7)
    state = {
        "big": torch.randn(5_000_003, generator=g),  # 20 MB, not a multiple of the slice size
        "odd": torch.randint(0, 255, (9_999_999,), dtype=torch.uint8, generator=g),
        "views": [torch.randn(64, 48 + k, generator=g).t() for k in range(40)],
        "strided": torch.randn(4000, 1000, generator=g)[:, ::3],  # 5.3 MB, non-contiguous
    }
    expect = {
        "big": state["big"].clone(),
        "odd": state["odd"].clone(),
        "views": [t.clone() for t in state["views"]],
        "strided": state["strided"].clone(),
    }
    fut = ck.async_save(state, tmp_path / "c", max_staging_bytes=cap, chunk_bytes=12 << 20)
    for t in [state["big"], state["odd"], state["strided"]] + state["views"]:
        t.zero_()
    fut.result(timeout=120)
    out = ck.load(tmp_path / "c")
    assert torch.equal(out["big"], expect["big"]) and torch.equal(out["odd"], expect["odd"])
    assert torch.equal(out["strided"], expect["strided"])
    assert all(torch.equal(a, b) for a, b in zip(out["views"], expect["views"]))


@pytest.mark.parametrize("cap", [None, 1 << 20])
def test_background_staging_saves_the_state_of_the_call(tmp_path, cap):
    async_saving.release_staging_memory()
    state = make_state(30, n=24)
    expect = clone(state)
    fut = ck.async_save(state, tmp_path / "c", max_staging_bytes=cap, staging="background")
    state["step"] = 99  # containers and plain values were encoded before the call returned
    state["layers"].append(torch.ones(3))
    fut.wait_staged(timeout=120)
    assert fut.staged()
    for t in state["layers"] + [state["t"]] + state["small"]:
        t.fill_(-1)  # a training step after wait_staged()
    state["np"][:] = -1
    assert fut.result(timeout=120) == os.path.abspath(tmp_path / "c")
    out = ck.load(tmp_path / "c")
    assert len(out["layers"]) == len(expect["layers"])
    equal_states(out, expect)


def test_blocking_staging_is_staged_when_it_returns(tmp_path):
    fut = ck.async_save(make_state(31), tmp_path / "c")
    assert fut.staged()
    fut.wait_staged(timeout=0)
    fut.result(timeout=120)


def failing_copy(pieces, helpers=-1):
    raise OSError(12, "Cannot allocate memory (injected)")


@pytest.mark.parametrize("cap", [None, 1 << 20])
def test_background_staging_errors_reach_both_waits(tmp_path, monkeypatch, cap):
    ck.save({"v": 1}, tmp_path / "c")
    monkeypatch.setattr(async_saving._core, "copy_memory", failing_copy)
    fut = ck.async_save(make_state(32), tmp_path / "c", max_staging_bytes=cap, staging="background")
    with pytest.raises(OSError, match="injected"):
        fut.wait_staged(timeout=120)
    with pytest.raises(OSError, match="injected"):
        fut.result(timeout=120)
    assert fut.staged()
    monkeypatch.undo()
    assert ck.load(tmp_path / "c") == {"v": 1}
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []
    ck.async_save({"v": 2}, tmp_path / "c", staging="background").result(timeout=120)
    assert ck.load(tmp_path / "c") == {"v": 2}


def test_blocking_staging_errors_are_raised_by_the_call_and_the_future(tmp_path, monkeypatch):
    ck.save({"v": 1}, tmp_path / "c")
    monkeypatch.setattr(async_saving._core, "copy_memory", failing_copy)
    with pytest.raises(OSError, match="injected"):
        ck.async_save(make_state(33), tmp_path / "c")
    future = async_saving._inflight
    with pytest.raises(OSError, match="injected"):
        future.wait_staged(timeout=120)
    with pytest.raises(OSError, match="injected"):
        future.result(timeout=120)
    monkeypatch.undo()
    assert ck.load(tmp_path / "c") == {"v": 1}
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []


def test_overlapping_background_saves_are_serialised(tmp_path):
    # Each call waits for the previous save before staging into the shared
    # buffer, so every checkpoint holds its own state.
    states = {s: make_state(s, n=12) for s in (40, 41, 42)}
    expect = {s: clone(st) for s, st in states.items()}
    futures = {}
    for s, st in states.items():
        futures[s] = ck.async_save(st, tmp_path / f"c{s}", staging="background")
        ck.async_save(st, tmp_path / "same", staging="background").wait_staged(timeout=120)
    for s, st in states.items():
        futures[s].wait_staged(timeout=120)
        for t in st["layers"]:
            t.zero_()
    for f in futures.values():
        f.result(timeout=120)
    async_saving._inflight.result(timeout=120)
    for s in states:
        equal_states(ck.load(tmp_path / f"c{s}"), expect[s])
    equal_states(ck.load(tmp_path / "same"), expect[42])


def test_unknown_staging_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="staging"):
        ck.async_save({"x": 1}, tmp_path / "c", staging="lazy")
    assert not (tmp_path / "c").exists()
