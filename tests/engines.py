"""The `engine` fixture shared by the test suite and the benchmark suites:
each I/O engine in turn, io_uring skipped (not passed) where the kernel refuses it;
"mmap" copies every buffered read from the file's mapping."""

import os
import subprocess
import sys

import pytest

ENGINES = ["io_uring", "threads", "pread", "mmap"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _io_uring_refusal():
    """Why the kernel refuses io_uring here (None when it works), probed in a child."""
    code = (
        "import os, ffrecord, tempfile\n"
        "d = tempfile.mkdtemp(); p = os.path.join(d, 'x.ffr')\n"
        "w = ffrecord.FileWriter(p); w.write_one(b'x'); w.close()\n"
        "r = ffrecord.FileReader(p); assert r.engine == 'io_uring', r.engine\n"
        "assert r.read_one(0).tobytes() == b'x'\n"
    )
    env = dict(os.environ, FFRECORD_ENGINE="io_uring", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return None if res.returncode == 0 else (res.stderr.strip().splitlines() or ["unknown"])[-1]


_REFUSAL = "unchecked"


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch):
    """Runs the test once per I/O engine (FFRECORD_ENGINE set for its duration)."""
    global _REFUSAL
    if request.param == "io_uring":
        if _REFUSAL == "unchecked":
            _REFUSAL = _io_uring_refusal()
        if _REFUSAL is not None:
            pytest.skip(f"kernel refuses io_uring: {_REFUSAL}")
    monkeypatch.setenv("FFRECORD_ENGINE", request.param)
    return request.param
