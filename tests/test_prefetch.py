"""FileReader.prefetch: exact batches in order, clean cancellation, errors on their batch."""

import gc
import os

import numpy as np
import pytest

import ffrecord
from damage import flip_byte, write_file


def make_records(n, seed=0, max_len=5000):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(0, max_len)), dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.fixture
def dataset(tmp_path):
    recs = make_records(400)
    return write_file(tmp_path / "d.ffr", recs), recs


def random_batches(n_records, count, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_records, int(rng.integers(0, 200))) for _ in range(count)]


def threads_now():
    return len(os.listdir("/proc/self/task"))


def open_fds():
    """Targets of this process's open file descriptors."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed while listing (e.g. the listing's own descriptor)
    return out


@pytest.mark.parametrize("depth", [1, 2, 4, 16])
def test_yields_exactly_the_batches_in_order(dataset, engine, depth):
    path, recs = dataset
    r = ffrecord.FileReader(path)
    assert r.engine == engine
    batches = random_batches(len(recs), 30)
    batches += [[], [0, 0, 0], list(range(len(recs))), range(5, 60, 7), (3, -1, -2), np.array([7], dtype=np.int32)]
    got = list(r.prefetch(batches, depth=depth))
    assert len(got) == len(batches)
    for b, out in zip(batches, got):
        expect = [recs[i] for i in b]
        assert [a.tobytes() for a in out] == expect


def test_batches_may_come_from_a_lazy_iterable_read_ahead_by_depth(dataset, engine):
    path, recs = dataset
    r = ffrecord.FileReader(path)
    pulled = []

    def batches():
        for k in range(20):
            pulled.append(k)
            yield [k, k + 1, 2 * k]

    for k, out in enumerate(r.prefetch(batches(), depth=3)):
        # Batch k is being consumed: at most the next 3 have been asked for.
        assert len(pulled) <= k + 1 + 3
        assert [a.tobytes() for a in out] == [recs[k], recs[k + 1], recs[2 * k]]
    assert pulled == list(range(20))


def test_results_outlive_the_prefetcher_and_the_reader(dataset, engine):
    path, recs = dataset
    r = ffrecord.FileReader(path)
    kept = [out for out in r.prefetch([[1, 2], [3]], depth=2)]
    r.close()
    gc.collect()
    assert [a.tobytes() for a in kept[0]] == [recs[1], recs[2]]
    assert kept[1][0].tobytes() == recs[3]


def test_shards_and_direct_io(tmp_path, engine):
    recs = make_records(120, seed=4)
    paths = [write_file(tmp_path / f"s{k}.ffr", recs[k * 40:(k + 1) * 40]) for k in range(3)]
    batches = random_batches(len(recs), 12, seed=9)
    for direct in (False, True):
        r = ffrecord.FileReader([str(p) for p in paths], direct=direct)
        got = list(r.prefetch(batches, depth=4))
        assert [[a.tobytes() for a in out] for out in got] == [[recs[i] for i in b] for b in batches]


def _baseline(r, batches):
    """Runs one full prefetch so engines and worker pools exist, then counts threads and fds."""
    for _ in r.prefetch(batches, depth=4):
        pass
    gc.collect()
    return threads_now(), open_fds()


@pytest.mark.parametrize("how", ["break", "exception", "dropped"])
def test_stopping_early_leaves_nothing_behind(tmp_path, engine, how):
    recs = make_records(2000, seed=2, max_len=20000)
    path = str(write_file(tmp_path / "big.ffr", recs))
    r = ffrecord.FileReader(path)
    batches = [list(range(k, k + 300)) for k in range(0, 1700, 50)]
    threads_before, fds_before = _baseline(r, batches)

    if how == "break":
        for k, out in enumerate(r.prefetch(batches, depth=8)):
            if k == 2:
                break
    elif how == "exception":
        with pytest.raises(RuntimeError, match="consumer failed"):
            for k, out in enumerate(r.prefetch(batches, depth=8)):
                if k == 1:
                    raise RuntimeError("consumer failed")
    else:
        it = r.prefetch(batches, depth=8)
        first = next(it)
        assert first[0].tobytes() == recs[0]
        del it
    gc.collect()
    # The prefetcher's worker threads are joined and its descriptors gone.
    assert threads_now() == threads_before
    assert sorted(open_fds()) == sorted(fds_before)
    # The reader still works, then closes cleanly: its file is released.
    assert r.read([5])[0].tobytes() == recs[5]
    r.close()
    gc.collect()
    assert path not in open_fds()
    os.remove(path)


def test_files_are_released_once_an_abandoned_prefetch_is_collected(dataset, engine):
    path, recs = dataset
    path = str(path)
    r = ffrecord.FileReader(path)
    it = r.prefetch([[1], [2], [3]], depth=2)
    assert next(it)[0].tobytes() == recs[1]
    r.close()
    with pytest.raises(ValueError):
        r.read([1])
    del it
    gc.collect()
    assert path not in open_fds()


def test_checksum_error_is_raised_on_its_batch(tmp_path, engine):
    recs = make_records(50, seed=3)
    recs[17] = b"x" * 100
    path = write_file(tmp_path / "c.ffr", recs)
    data = open(path, "rb").read()
    flip_byte(path, data.index(b"x" * 100) + 50)
    r = ffrecord.FileReader(path)
    batches = [[1, 2], [3], [4, 17, 5], [6], [7]]
    it = r.prefetch(batches, depth=4)
    assert [a.tobytes() for a in next(it)] == [recs[1], recs[2]]
    assert next(it)[0].tobytes() == recs[3]
    with pytest.raises(ffrecord.ChecksumError, match="record 17"):
        next(it)
    # With verification off the same batches all arrive, damaged bytes included.
    r2 = ffrecord.FileReader(path, check_data=False)
    got = list(r2.prefetch(batches, depth=4))
    assert len(got) == 5 and got[2][1].tobytes() != recs[17] and len(got[2][1]) == 100


@pytest.mark.parametrize(
    "bad, error",
    [([0, 10**9], IndexError), ([0, -10**9], IndexError), (["a"], TypeError), ([1.5], TypeError), ("xyz", TypeError)],
)
def test_bad_index_list_is_raised_on_its_batch(dataset, engine, bad, error):
    path, recs = dataset
    r = ffrecord.FileReader(path)
    it = r.prefetch([[1], [2], bad, [3]], depth=4)
    assert next(it)[0].tobytes() == recs[1]
    assert next(it)[0].tobytes() == recs[2]
    with pytest.raises(error):
        next(it)


def test_depth_is_checked_and_closed_reader_refuses(dataset):
    path, _ = dataset
    r = ffrecord.FileReader(path)
    with pytest.raises(ValueError):
        r.prefetch([[0]], depth=0)
    with pytest.raises(TypeError):
        r.prefetch([[0]], depth="4")
    r.close()
    with pytest.raises(ValueError):
        r.prefetch([[0]])


def test_core_prefetcher_hands_out_each_ticket_once(dataset):
    path, recs = dataset
    r = ffrecord.FileReader(path)
    p = ffrecord._core.Prefetcher(r._core, 2)
    t0 = p.submit(np.array([4, 5], dtype=np.uint64))
    t1 = p.submit(np.array([6], dtype=np.uint64))
    assert p.pending == 2
    assert p.take(t1)[0].tobytes() == recs[6]  # out of order is allowed
    assert [a.tobytes() for a in p.take(t0)] == [recs[4], recs[5]]
    assert p.pending == 0
    with pytest.raises(ValueError, match="ticket"):
        p.take(t0)
    with pytest.raises(IndexError):
        p.submit(np.array([len(recs)], dtype=np.uint64))


def test_an_error_from_the_callers_iterable_comes_after_the_batches_before_it(tmp_path):
    p = write_file(tmp_path / "it.ffr", [bytes([i]) for i in range(10)])
    r = ffrecord.FileReader(p)

    def batches():
        yield [0, 1]
        yield [2]
        raise RuntimeError("sampler broke")

    got = []
    it = r.prefetch(batches(), depth=4)
    got.append([a.tobytes() for a in next(it)])
    got.append([a.tobytes() for a in next(it)])
    assert got == [[b"\x00", b"\x01"], [b"\x02"]]
    with pytest.raises(RuntimeError, match="sampler broke"):
        next(it)
    r.close()


@pytest.mark.parametrize("queue_depth", ["1", "4", "64"])
def test_direct_batches_sharing_one_engine_queue_keep_their_own_records_and_errors(
        tmp_path, engine, monkeypatch, queue_depth):
    # Direct reads of consecutive batches go through one engine queue, the
    # next batch's reads starting while the previous batch's are in flight;
    # each batch must still get exactly its records, and only the batch with
    # the damaged record its error.
    monkeypatch.setenv("FFRECORD_QUEUE_DEPTH", queue_depth)
    recs = make_records(300, seed=5, max_len=9000)
    recs[123] = b"y" * 3000
    path = write_file(tmp_path / "q.ffr", recs)
    data = open(path, "rb").read()
    flip_byte(path, data.index(b"y" * 3000) + 1000)
    r = ffrecord.FileReader(path, direct=True)
    rng = np.random.default_rng(7)
    batches = [rng.permutation(300)[:int(rng.integers(1, 40))] for _ in range(40)]
    batches = [b[b != 123] for b in batches]
    batches[17] = np.array([5, 123, 6])
    batches[18] = np.array([], dtype=np.int64)
    p = ffrecord._core.Prefetcher(r._core, 2)
    tickets = [p.submit(np.asarray(b, dtype=np.uint64)) for b in batches]
    for k, (t, b) in enumerate(zip(tickets, batches)):
        if k == 17:
            with pytest.raises(ffrecord.ChecksumError, match="record 123"):
                p.take(t)
        else:
            assert [a.tobytes() for a in p.take(t)] == [recs[i] for i in b]
    assert p.pending == 0
    assert r.io_stats()["engine_batches"] == len(batches)  # direct reads never come from the mapping
