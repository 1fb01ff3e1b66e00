"""A killed writer's temporary file is removed by the next writer of the same
file, and a live writer's temporary never is, whichever process or host owns it."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import ffrecord

TMP_NAME = re.compile(r"^\.(?P<name>.+)\.ffw-(?P<host>[0-9a-z]{16})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+\.tmp$")
HOUR = 3600

WRITER = """
import sys, time, ffrecord
w = ffrecord.FileWriter(sys.argv[1])
w.write_one(b"x" * 100000)
print("open", flush=True)
time.sleep(120)
"""


def temporaries(directory):
    return sorted(e for e in os.listdir(directory) if e.endswith(".tmp"))


def start_writer(path, **env):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    assert proc.stdout.readline().strip() == "open"
    return proc


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_temporary_names_the_host_the_process_and_its_start(tmp_path):
    proc = start_writer(tmp_path / "a.ffr")
    try:
        (tmp,) = temporaries(tmp_path)
        m = TMP_NAME.match(tmp)
        assert m and m["name"] == "a.ffr" and int(m["pid"]) == proc.pid
        with open(f"/proc/{proc.pid}/stat") as f:
            assert int(m["start"]) == int(f.read().rsplit(")", 1)[1].split()[19])
    finally:
        kill(proc)


def test_killed_writers_leftovers_are_removed_by_the_next_writer(tmp_path):
    writers = [start_writer(tmp_path / "a.ffr") for _ in range(3)]  # alive together: none removes another's
    assert len(temporaries(tmp_path)) == 3
    for proc in writers:
        kill(proc)
    with ffrecord.FileWriter(tmp_path / "a.ffr") as w:
        assert len(temporaries(tmp_path)) == 1  # its own
        w.write_one(b"fresh")
    assert temporaries(tmp_path) == []
    assert bytes(ffrecord.FileReader(tmp_path / "a.ffr").read_one(0)) == b"fresh"


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    live = start_writer(tmp_path / "a.ffr")
    try:
        (theirs,) = temporaries(tmp_path)
        age(tmp_path / theirs, 10 * HOUR)  # even with a stale mtime: the pid proves it alive
        with ffrecord.FileWriter(tmp_path / "a.ffr") as w:
            w.write_one(b"mine")
        assert temporaries(tmp_path) == [theirs]
    finally:
        kill(live)
    with ffrecord.FileWriter(tmp_path / "a.ffr") as w:
        w.write_one(b"again")
    assert temporaries(tmp_path) == []


def test_a_reused_pid_does_not_keep_a_dead_writers_temporary(tmp_path):
    # Our own pid with a start time that is not ours: a process that had this pid before.
    pid = os.getpid()
    with ffrecord.FileWriter(tmp_path / "probe.ffr") as w:
        host = TMP_NAME.match(temporaries(tmp_path)[0])["host"]
        w.write_one(b"")
    other = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(other.stdout)  # exited: its start time can no longer match anything
    leftover = tmp_path / f".a.ffr.ffw-{host}-{dead_pid}-1-0badc0de.tmp"
    leftover.write_bytes(b"x")
    mine = tmp_path / f".a.ffr.ffw-{host}-{pid}-1-0badc0de.tmp"
    mine.write_bytes(b"x")  # claims this process: never judged by the pid rule
    with ffrecord.FileWriter(tmp_path / "a.ffr") as w:
        w.write_one(b"")
    assert not leftover.exists() and mine.exists()


def test_other_hosts_temporaries_go_only_after_their_heartbeat_stopped(tmp_path):
    fresh = tmp_path / ".a.ffr.ffw-00000000deadbeef-12345-678-0badc0de.tmp"
    stale = tmp_path / ".a.ffr.ffw-00000000deadbeef-12346-678-0badc0de.tmp"
    legacy_fresh = tmp_path / ".a.ffr.4242.0badc0de.tmp"
    legacy_stale = tmp_path / ".a.ffr.4243.0badc0de.tmp"
    unrelated = [tmp_path / ".a.ffr.backup.tmp", tmp_path / ".b.ffr.4243.0badc0de.tmp"]
    for p in [fresh, stale, legacy_fresh, legacy_stale, *unrelated]:
        p.write_bytes(b"x")
    for p in [stale, legacy_stale, *unrelated]:
        age(p, 2 * HOUR)
    age(fresh, HOUR - 300)
    with ffrecord.FileWriter(tmp_path / "a.ffr") as w:
        w.write_one(b"")
    assert fresh.exists() and legacy_fresh.exists() and all(p.exists() for p in unrelated)
    assert not stale.exists() and not legacy_stale.exists()


def test_an_open_writer_refreshes_its_heartbeat(tmp_path):
    proc = start_writer(tmp_path / "a.ffr", FFRECORD_TEMP_HEARTBEAT_S="1")
    try:
        (tmp,) = temporaries(tmp_path)
        age(tmp_path / tmp, 2 * HOUR)
        deadline = time.monotonic() + 30
        while time.time() - os.stat(tmp_path / tmp).st_mtime > HOUR and time.monotonic() < deadline:
            time.sleep(0.2)
        assert time.time() - os.stat(tmp_path / tmp).st_mtime < HOUR
    finally:
        kill(proc)


def test_convert_cleans_up_after_a_killed_writer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.bin").write_bytes(bytes([i]) * 10)
    dst = tmp_path / "dst"
    dst.mkdir()
    kill(start_writer(dst / "shard-00000-of-00001.ffr"))
    assert len(temporaries(dst)) == 1
    res = subprocess.run([sys.executable, "-m", "ffrecord.cli", "convert", str(src), str(dst), "--from", "folder",
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert temporaries(dst) == []
    assert ffrecord.FileReader(str(dst)).n == 5


@pytest.mark.parametrize("name", ["a.ffr", "with space.ffr", "x" * 150 + ".ffr"])
def test_names_of_any_shape_round_trip(tmp_path, name):
    with ffrecord.FileWriter(tmp_path / name) as w:
        w.write_one(b"ok")
    assert os.listdir(tmp_path) == [name]
