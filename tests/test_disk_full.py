"""A full filesystem: every OSError names the file it could not write, and
nothing is left behind. Runs on a small tmpfs the test mounts (root only)."""

import errno
import os
import subprocess
import sys
import uuid

import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck

CLI = [sys.executable, "-m", "ffrecord.cli"]


@pytest.fixture
def full_fs(tmp_path):
    """A 1 MiB tmpfs, unmounted after the test."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or 'mount refused'}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory):
    """Takes every free byte of the filesystem."""
    fd = os.open(os.path.join(directory, f"ballast-{uuid.uuid4().hex}"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def leftovers(directory):
    return [e for e in os.listdir(directory) if not e.startswith("ballast-")]


def test_writer_names_the_file(full_fs):
    with pytest.raises(OSError, match=r"a\.ffr: write failed: No space left on device") as info:
        with ffrecord.FileWriter(full_fs / "a.ffr") as w:
            w.write_one(b"x" * (2 << 20))
    assert info.value.errno == errno.ENOSPC
    assert leftovers(full_fs) == []


def test_checkpoint_saves_name_the_file(full_fs):
    with pytest.raises(OSError, match=r"/data-00000\.ffr: write failed: No space left on device"):
        ck.save({"w": torch.zeros(1 << 20)}, full_fs / "c")
    with pytest.raises(OSError, match=r"/data-00000\.ffr: write failed: No space left on device"):
        ck.async_save({"w": torch.zeros(1 << 20)}, full_fs / "c").result()
    assert leftovers(full_fs) == []


def test_convert_names_the_file_it_could_not_write(full_fs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.bin").write_bytes(bytes([i]) * 100)
    dst = full_fs / "dst"
    dst.mkdir()
    fill(full_fs)
    res = subprocess.run(CLI + ["convert", str(src), str(dst), "--from", "folder", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    line = res.stderr.strip()
    assert "No space left on device" in line and "Traceback" not in line
    assert str(dst) in line  # the file's path, not just the error


def test_validate_quarantine_names_the_file(full_fs, tmp_path):
    dst = full_fs / "ds"
    dst.mkdir()
    path = dst / "a.ffr"
    with ffrecord.FileWriter(path) as w:
        w.write_batch([b"abc", b"def"])
    data = bytearray(path.read_bytes())
    data[32] ^= 1  # damage record 0
    path.write_bytes(bytes(data))
    fill(full_fs)
    res = subprocess.run(CLI + ["validate", str(dst), "--quarantine"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "No space left on device" in res.stderr and "quarantine.json" in res.stderr, res.stderr
