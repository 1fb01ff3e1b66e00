"""Atomic commit: a save killed at any point leaves the previous checkpoint loadable
and nothing visible under the final path; failures inside a save change nothing."""

import os
import random
import select
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from ffrecord.checkpoint import commit

HERE = os.path.dirname(os.path.abspath(__file__))
SAVER = os.path.join(HERE, "checkpoint_scripts", "saver.py")
sys.path.insert(0, os.path.join(HERE, "checkpoint_scripts"))
import saver  # noqa: E402


def hidden_entries(parent):
    return sorted(e for e in os.listdir(parent) if e.startswith("."))


def wait_for_line(proc, prefix, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line.strip()
        if proc.poll() is not None:
            break
    err = proc.stderr.read() if proc.poll() is not None else ""
    proc.kill()
    raise AssertionError(f"saver never printed {prefix!r}: {err[-2000:]}")


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()


def start(*args):
    return subprocess.Popen(
        [sys.executable, SAVER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# (step, nth occurrence, extra flags, version found at the path after the kill)
KILL_POINTS = [
    ("record-written", 3, (), 1),  # in the middle of the tensor data
    ("data-written", 1, (), 1),  # data files complete, no manifest yet
    ("manifest-written", 1, (), 1),  # everything written, nothing committed
    ("before-commit", 1, ("--async",), 1),  # the same, through async_save's writer thread
    ("exchanged", 1, (), 2),  # committed; the old checkpoint not yet deleted
    ("moved-old", 1, ("--no-exchange",), 1),  # fallback commit: between its two renames
    ("committed", 1, ("--no-exchange",), 2),
]


@pytest.mark.parametrize("step,nth,flags,found", KILL_POINTS, ids=[p[0] + "".join(p[2]) for p in KILL_POINTS])
def test_sigkill_during_save_keeps_a_complete_checkpoint(tmp_path, step, nth, flags, found):
    path = str(tmp_path / "ckpt")
    ck.save(saver.state(1), path, chunk_bytes=saver.CHUNK)
    before = sorted(os.listdir(path))
    proc = start("stop", path, "2", step, str(nth), *flags)
    wait_for_line(proc, "STOPPED")
    kill(proc)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert saver.check(ck.load(path)) == found
    if step == "moved-old":
        # The target is gone for the instant between the renames; load finds the backup.
        assert not os.path.exists(path)
        assert any("interrupted mid-commit" in str(w.message) for w in caught)
    else:
        assert sorted(os.listdir(path)) == before  # nothing extra under the final path
    if found == 1:
        assert any(commit.TMP_TAG in e or commit.OLD_TAG in e for e in hidden_entries(tmp_path))

    # The next save completes, restores what needs restoring and sweeps the debris.
    ck.save(saver.state(3), path, chunk_bytes=saver.CHUNK)
    assert saver.check(ck.load(path)) == 3
    assert hidden_entries(tmp_path) == []
    assert sorted(os.listdir(path)) == before


@pytest.mark.parametrize("mode", [(), ("--async",)], ids=["save", "async_save"])
def test_sigkill_at_random_moments(tmp_path, mode):
    path = str(tmp_path / "ckpt")
    rng = random.Random(1234)
    last = 0
    for _ in range(3):
        proc = start("loop", path, *mode)
        last = int(wait_for_line(proc, "SAVED").split()[1])
        time.sleep(rng.uniform(0, 0.25))
        kill(proc)
        v = saver.check(ck.load(path))  # complete and self-consistent
        assert v >= last
        assert sorted(os.listdir(path)) == ["data-00000.ffr", "manifest.ffr"]


def test_exception_inside_save_changes_nothing(tmp_path):
    path = tmp_path / "ckpt"
    ck.save({"v": torch.ones(3)}, path)

    def boom(name):
        if name == "record-written":
            raise OSError(28, "No space left on device (injected)")

    commit._sync_hook = boom
    try:
        with pytest.raises(OSError, match="injected"):
            ck.save({"v": torch.zeros(3), "more": torch.zeros(1000)}, path)
    finally:
        commit._sync_hook = None
    assert torch.equal(ck.load(path)["v"], torch.ones(3))
    assert hidden_entries(tmp_path) == []  # the temporary directory was removed


def test_overwrite_replaces_atomically_and_refuses_foreign_paths(tmp_path):
    path = tmp_path / "ckpt"
    ck.save({"v": 1}, path)
    ck.save({"v": 2}, path)
    assert ck.load(path) == {"v": 2}
    assert hidden_entries(tmp_path) == []

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        ck.save({"v": 3}, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty directory made ready for it is fine
    ck.save({"v": 4}, tmp_path / "empty")
    assert ck.load(tmp_path / "empty") == {"v": 4}
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        ck.save({"v": 3}, tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        ck.save({"v": 3}, tmp_path / "missing_parent" / "ckpt")
    assert hidden_entries(tmp_path) == []


def test_stale_entries_of_live_processes_are_left_alone(tmp_path):
    # A temporary directory owned by a running process (this one) is another
    # save in progress: the sweep must not touch it.
    path = tmp_path / "ckpt"
    ck.save({"v": 1}, path)
    mine = tmp_path / f".ckpt{commit.TMP_TAG}{commit._host()}-{os.getpid()}-deadbeef"
    mine.mkdir()
    dead = tmp_path / f".ckpt{commit.TMP_TAG}{commit._host()}-999999999-deadbeef"
    dead.mkdir()
    ck.save({"v": 2}, path)
    assert mine.exists() and not dead.exists()


def test_load_of_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ffrecord.FormatError, match="not a checkpoint"):
        ck.load(tmp_path / "d")
