"""Many processes converting into one directory, and resuming a killed conversion.

Ranks run as separate `ffrecord` processes, as torchrun or srun would start
them; the result must be byte-identical to a single-process conversion.
"""

import filecmp
import os
import signal
import subprocess
import sys
import time

import lmdb
import numpy as np
import pytest

import ffrecord
from ffrecord.cli import main
from ffrecord.tools.distributed import owned, rank_and_world
from ffrecord.tools.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(*args):
    return [sys.executable, "-m", "ffrecord.cli", *map(str, args)]


def env_with(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(*args, **extra_env):
    return subprocess.run(command(*args), env=env_with(**extra_env), capture_output=True, text=True, timeout=120)


def make_lmdb(path, n=120):
    rng = np.random.default_rng(7)
    env = lmdb.open(str(path), map_size=1 << 26)
    items = {f"{i:06d}".encode(): rng.bytes(int(rng.integers(10, 1500))) for i in range(n)}
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()
    return items


def dataset_files(dst):
    """Every file a reader or validator looks at (the shards and index.json)."""
    return sorted(n for n in os.listdir(dst) if n.endswith(".ffr") or n == "index.json")


def assert_identical(a, b):
    assert dataset_files(a) == dataset_files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, dataset_files(a), shallow=False)
    assert mismatch == [] and errors == []


def test_two_ranks_in_sequence_each_write_only_their_shards(tmp_path):
    items = make_lmdb(tmp_path / "db")
    single = tmp_path / "single"
    assert main(["convert", str(tmp_path / "db"), str(single), "--records-per-shard", "25", "-q"]) == 0
    dst = tmp_path / "ranks"

    r0 = run("convert", tmp_path / "db", dst, "--records-per-shard", 25, SLURM_PROCID=0, SLURM_NTASKS=2)
    assert r0.returncode == 0, r0.stderr
    assert sorted(n for n in os.listdir(dst) if n.endswith(".ffr")) == [
        "shard-00000-of-00005.ffr", "shard-00002-of-00005.ffr", "shard-00004-of-00005.ffr"]
    assert not (dst / "index.json").exists()
    assert "left index.json to the rank that finishes last (shard-00001-of-00005.ffr is not done yet)" in r0.stdout

    r1 = run("convert", tmp_path / "db", dst, "--records-per-shard", 25, SLURM_PROCID=1, SLURM_NTASKS=2)
    assert r1.returncode == 0, r1.stderr
    assert "index.json lists all 5 shard(s)" in r1.stdout
    assert_identical(dst, single)
    with ffrecord.FileReader(dst) as r:
        assert [r.key(i) for i in range(len(r))] == [k.decode() for k in items]
        assert [r.read_one(i).tobytes() for i in range(len(r))] == list(items.values())


def test_two_ranks_at_once_then_the_manifest(tmp_path):
    make_lmdb(tmp_path / "db")
    single = tmp_path / "single"
    assert main(["convert", str(tmp_path / "db"), str(single), "--shard-size", "10KB", "-q"]) == 0
    dst = tmp_path / "ranks"
    procs = [subprocess.Popen(command("convert", tmp_path / "db", dst, "--shard-size", "10KB", "--workers", 2),
                              env=env_with(RANK=r, WORLD_SIZE=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("index.json lists all" in out for out, _ in outs)
    assert_identical(dst, single)
    assert main(["validate", str(dst), "-q"]) == 0


def test_finalize_writes_the_manifest_or_names_what_is_missing(tmp_path, capsys):
    make_lmdb(tmp_path / "db")
    dst = tmp_path / "out"
    args = ["convert", str(tmp_path / "db"), str(dst), "--records-per-shard", "30", "-q"]
    assert main(args + ["--rank", "0", "--world-size", "2"]) == 0
    capsys.readouterr()
    assert main(["convert", "--finalize", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "2 of 4 shards are missing" in err and "shard-00001-of-00004.ffr" in err
    assert not (dst / "index.json").exists()

    assert main(args + ["--rank", "1", "--world-size", "2"]) == 0
    manifest = (dst / "index.json").read_bytes()
    os.unlink(dst / "index.json")
    assert main(["convert", "--finalize", str(dst)]) == 0
    assert (dst / "index.json").read_bytes() == manifest
    assert main(["convert", "--finalize", str(tmp_path / "db")]) == 2  # not a conversion


def test_rank_settings_are_checked():
    assert rank_and_world(environ={}) == (0, 1)
    assert rank_and_world(environ={"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert rank_and_world(environ={"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    # torchrun's variables win over the SLURM allocation they run inside.
    assert rank_and_world(environ={"RANK": "0", "WORLD_SIZE": "8", "SLURM_PROCID": "5", "SLURM_NTASKS": "6"}) == (0, 8)
    assert rank_and_world(2, 3, environ={"RANK": "0", "WORLD_SIZE": "1"}) == (2, 3)
    for env in ({"RANK": "1"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"SLURM_NTASKS": "4"}):
        with pytest.raises(UsageError):
            rank_and_world(environ=env)
    with pytest.raises(UsageError):
        rank_and_world(1, None, environ={})
    assert owned(list(range(7)), 1, 3) == [1, 4]


def test_bad_rank_environment_is_a_usage_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    res = run("convert", tmp_path / "src", tmp_path / "out", RANK=2, WORLD_SIZE=2)
    assert res.returncode == 2
    assert "rank 2 is not in [0, world size 2)" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_killed_conversion_resumes_to_identical_output(tmp_path):
    # The source holds a named pipe in the middle: the converter blocks on it
    # while writing shard 2, and is killed there, mid-shard.
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(9)
    contents = {f"{i:03d}.bin": rng.bytes(int(rng.integers(100, 4000))) for i in range(20)}
    for name, data in contents.items():
        if name != "008.bin":
            (src / name).write_bytes(data)
    os.mkfifo(src / "008.bin")
    dst = tmp_path / "out"
    proc = subprocess.Popen(command("convert", src, dst, "--records-per-shard", 3, "--from", "folder", "-q"),
                            env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            names = os.listdir(dst) if dst.exists() else []
            if any(n.startswith(".shard-00002-of-00007.ffr.") for n in names):
                break  # shard 2 is open; the writer stops at the pipe (record 8)
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    shards = sorted(n for n in os.listdir(dst) if n.endswith(".ffr"))
    assert shards == ["shard-00000-of-00007.ffr", "shard-00001-of-00007.ffr"]
    leftover = [n for n in os.listdir(dst) if n.endswith(".tmp")]
    assert leftover and leftover[0].startswith(".shard-00002-of-00007.ffr.")
    assert not (dst / "index.json").exists()
    with ffrecord.FileReader(dst) as r:  # what is there is readable and complete
        assert len(r) == 6
    before = {n: os.stat(dst / n).st_mtime_ns for n in shards}

    os.unlink(src / "008.bin")
    (src / "008.bin").write_bytes(contents["008.bin"])
    res = run("convert", src, dst, "--records-per-shard", 3, "--from", "folder")
    assert res.returncode == 0, res.stderr
    assert "wrote 5 shard(s), 2 already complete" in res.stdout
    assert {n: os.stat(dst / n).st_mtime_ns for n in shards} == before
    assert not [n for n in os.listdir(dst) if n.endswith(".tmp")]

    fresh = tmp_path / "fresh"
    assert main(["convert", str(src), str(fresh), "--records-per-shard", "3", "--from", "folder", "-q"]) == 0
    assert_identical(dst, fresh)
    with ffrecord.FileReader(dst) as r:
        assert [r.read_one(i).tobytes() for i in range(len(r))] == list(contents.values())


def test_damaged_finished_shard_is_rewritten_on_rerun(tmp_path):
    make_lmdb(tmp_path / "db", 40)
    dst = tmp_path / "out"
    args = ["convert", str(tmp_path / "db"), str(dst), "--records-per-shard", "10", "-q"]
    assert main(args) == 0
    reference = (dst / "shard-00001-of-00004.ffr").read_bytes()
    with open(dst / "shard-00001-of-00004.ffr", "r+b") as f:  # truncated behind our back
        f.truncate(100)
    assert main(args) == 0
    assert (dst / "shard-00001-of-00004.ffr").read_bytes() == reference
    assert main(["validate", str(dst), "-q"]) == 0
