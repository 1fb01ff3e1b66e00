"""Readers shared by threads, used across fork, and the GIL released during I/O."""

import os
import threading
import time

import numpy as np
import pytest

import ffrecord
from damage import write_file


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    recs = [rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes() for _ in range(2000)]
    return write_file(tmp_path / "c.ffr", recs), recs


def test_four_threads_share_one_reader(dataset, engine):
    p, recs = dataset
    r = ffrecord.FileReader(p)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(50):
                idx = rng.integers(0, len(recs), 64)
                got = r.read(idx)
                assert [g.tobytes() for g in got] == [recs[i] for i in idx]
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_forked_children_read_correctly(dataset, engine):
    p, recs = dataset
    r = ffrecord.FileReader(p)
    r.read([0, 1, 2])  # the parent has used its engine before the fork
    pids = []
    for child in range(3):
        pid = os.fork()
        if pid == 0:  # child: exit code says whether every read matched
            ok = True
            try:
                rng = np.random.default_rng(child)
                for _ in range(20):
                    idx = rng.integers(0, len(recs), 100)
                    ok &= [g.tobytes() for g in r.read(idx)] == [recs[i] for i in idx]
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        pids.append(pid)
    # The parent keeps reading while the children do.
    assert [g.tobytes() for g in r.read(range(100))] == recs[:100]
    codes = [os.waitpid(pid, 0)[1] for pid in pids]
    assert codes == [0, 0, 0]


def ticks_during(work):
    """Runs `work(spans)` beside a pure-Python counter thread; returns how many
    counter ticks fell inside the (start, end) spans that `work` recorded."""
    ticks = []
    stop = threading.Event()

    def counter():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    spans = []
    c = threading.Thread(target=counter)
    c.start()
    try:
        work(spans)
    finally:
        stop.set()
        c.join()
    ticks = np.array(ticks)
    return sum(int(((ticks > a) & (ticks < b)).sum()) for a, b in spans)


def test_gil_is_released_during_batch_reads(tmp_path, monkeypatch):
    # Two threads each run a CRC-heavy batch read; if the GIL were held, a
    # pure-Python counter thread would make no progress while they run.
    monkeypatch.setenv("FFRECORD_ENGINE", "pread")
    big = np.random.default_rng(1).integers(0, 256, 8 << 20, dtype=np.uint8)
    p = write_file(tmp_path / "g.ffr", [big] * 8)
    r = ffrecord.FileReader(p)
    r.read(range(8))  # warm the page cache

    def work(spans):
        def reader():
            for _ in range(5):
                t0 = time.perf_counter()
                r.read(range(8))
                spans.append((t0, time.perf_counter()))

        workers = [threading.Thread(target=reader) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    assert ticks_during(work) > 0, "no Python code ran while batch reads were in progress"


def test_gil_is_released_during_crc32c():
    data = np.zeros(64 << 20, dtype=np.uint8)

    def work(spans):
        for _ in range(5):
            t0 = time.perf_counter()
            ffrecord._core.crc32c(data)
            spans.append((t0, time.perf_counter()))

    assert ticks_during(work) > 0, "no Python code ran while CRC32C was computed"
