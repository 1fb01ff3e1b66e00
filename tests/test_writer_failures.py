"""A writer that dies, or a disk that fills, never leaves a file under the final name."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ffrecord


def _spawn_writer(path, extra=""):
    code = textwrap.dedent(
        f"""
        import os, sys, ffrecord
        {extra}
        w = ffrecord.FileWriter({str(path)!r})
        for i in range(10**9):
            w.write_one(os.urandom(4096))
            if i == 2000:
                print("writing", flush=True)
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_sigkill_midway_leaves_no_ffr_under_the_final_name(tmp_path):
    target = tmp_path / "data.ffr"
    proc = _spawn_writer(target)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not target.exists()
    leftovers = os.listdir(tmp_path)
    # Only a hidden temporary file can remain, and it never opens as a dataset.
    assert all(name.startswith(".data.ffr.") and name.endswith(".tmp") for name in leftovers)
    with pytest.raises(FileNotFoundError):
        ffrecord.FileReader(tmp_path)


def test_sigkill_midway_keeps_the_previous_version(tmp_path):
    target = tmp_path / "data.ffr"
    with ffrecord.FileWriter(target) as w:
        w.write_one(b"previous")
    proc = _spawn_writer(target)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert ffrecord.FileReader(target).read_one(0).tobytes() == b"previous"


def test_full_disk_gives_oserror_and_removes_the_temporary_file(tmp_path):
    # RLIMIT_FSIZE makes write() fail with EFBIG (Python ignores SIGXFSZ), as a full disk would.
    code = textwrap.dedent(
        f"""
        import errno, os, resource, ffrecord
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        w = ffrecord.FileWriter({str(tmp_path / "full.ffr")!r})
        try:
            for _ in range(1000):
                w.write_one(os.urandom(64 << 10))
            w.close()
        except OSError as e:
            print("oserror", e.errno == errno.EFBIG, "full.ffr" in str(e))
        try:
            w.write_one(b"x")
        except ValueError:
            print("closed")
        print(sorted(os.listdir({str(tmp_path)!r})))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["oserror True True", "closed", "[]"]


def test_unwritable_directory_is_a_clear_oserror(tmp_path):
    with pytest.raises(FileNotFoundError, match="temporary file"):
        ffrecord.FileWriter(tmp_path / "no" / "such" / "dir.ffr")
