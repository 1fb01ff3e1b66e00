"""DataLoader throughput over raw records: ffrecord vs one file per sample vs LMDB.

Every loader is a plain ``torch.utils.data.DataLoader`` with the same batch
size, ``shuffle=True`` and the same ``num_workers``; the training loop only
takes each batch. Samples are raw bytes (no decoding), so the figures show
what the storage and the hand-over from workers cost.

Loaders:
  files          Dataset.__getitem__ reads one file per sample (bytes)
  lmdb           Dataset.__getitem__ does one LMDB get per sample (bytes)
  ffrecord       RecordDataset: one batch read per batch (numpy views)
  ffrecord (decode='bytes')  the same, each sample as bytes (cheaper to pickle)
  ffrecord-packed  RecordDataset(packed=True) + packed_collate: one tensor per batch
  ffrecord-packed (ffrecord.torch.DataLoader)  the same through the resumable loader
  ffrecord-packed, check_data=False  without verifying checksums (LMDB and files verify none)

Workloads: W-small (2-6 KiB records) and W-image (64-192 KiB records).
The data is written once under --workdir and read from the page cache (every
dataset is re-read before each measured run).
Each setting runs --repeats times, interleaved; the table gives the median
and the best samples/s, and the CPU time per sample (training process plus
workers), which a busy machine disturbs far less than the wall-clock rate.

    python benchmarks/bench_dataloader.py                  # the default sizes
    python benchmarks/bench_dataloader.py --small 20000 --image 1000 --repeats 1   # quick
"""

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ffrecord  # noqa: E402
import ffrecord.torch as fft  # noqa: E402


# ---- data ---------------------------------------------------------------------

def record_sizes(n, lo, hi, seed):
    return np.random.default_rng(seed).integers(lo, hi + 1, size=n)


def write_all(root, name, n, lo, hi):
    """Writes the same n random records as .ffr, a folder of files and LMDB."""
    import lmdb

    base = os.path.join(root, name)
    done = os.path.join(base, "DONE")
    ffr, folder, lmdb_dir = (os.path.join(base, x) for x in ("data.ffr", "files", "lmdb"))
    if os.path.exists(done):
        return ffr, folder, lmdb_dir
    os.makedirs(folder, exist_ok=True)
    sizes = record_sizes(n, lo, hi, seed=len(name))
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 256, size=int(hi) * 2, dtype=np.uint8).tobytes()
    total = int(sizes.sum())
    env = lmdb.open(lmdb_dir, map_size=total * 2 + (256 << 20), subdir=True, lock=False)
    with ffrecord.FileWriter(ffr, n) as w, env.begin(write=True) as txn:
        for i, size in enumerate(sizes):
            start = (i * 7919) % int(hi)
            rec = i.to_bytes(8, "little") + pool[start:start + int(size) - 8]
            w.write_one(rec)
            with open(os.path.join(folder, f"{i:07d}.bin"), "wb") as f:
                f.write(rec)
            txn.put(f"{i:07d}".encode(), rec)
    env.close()
    open(done, "w").close()
    return ffr, folder, lmdb_dir


def warm(paths):
    """Reads every file once so that all loaders start from the page cache."""
    for p in paths:
        if os.path.isdir(p):
            for name in os.listdir(p):
                with open(os.path.join(p, name), "rb") as f:
                    while f.read(1 << 22):
                        pass
        else:
            with open(p, "rb") as f:
                while f.read(1 << 22):
                    pass


# ---- baseline datasets ----------------------------------------------------------

class FilesDataset(Dataset):
    def __init__(self, folder, n):
        self.folder, self.n = folder, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        with open(os.path.join(self.folder, f"{i:07d}.bin"), "rb") as f:
            return f.read()


class LmdbDataset(Dataset):
    """Opens the environment lazily in each process (LMDB handles must not cross fork)."""

    def __init__(self, path, n):
        self.path, self.n = path, n
        self._env = None
        self._pid = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import lmdb

        if self._pid != os.getpid():
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, subdir=True)
            self._pid = os.getpid()
        with self._env.begin(buffers=False) as txn:
            return txn.get(f"{i:07d}".encode())

    def __getstate__(self):
        return {"path": self.path, "n": self.n, "_env": None, "_pid": None}


def as_list(batch):
    return batch


# ---- measurement ------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
_WORKER_PIDS = multiprocessing.Array("i", 64, lock=False)  # filled by record_worker_pid


def record_worker_pid(worker_id):
    """worker_init_fn of every loader: tells the timer which processes to count."""
    _WORKER_PIDS[worker_id] = os.getpid()


def _cpu_seconds(workers):
    """CPU time of this process (all threads) and of its live DataLoader workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for pid in _WORKER_PIDS[:workers]:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return total


def measure(make_loader, limit, workers, warmup=3):
    """(samples/s, CPU microseconds per sample) over up to ``limit`` samples
    after ``warmup`` batches (which also absorb the start of the workers).

    The CPU figure counts the training process and its workers together over
    the timed part; it hardly moves when other programs compete for the
    cores, so it stays comparable on a busy machine where samples/s does not."""
    loader = make_loader()
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    count = 0
    cpu0 = _cpu_seconds(workers)
    start = time.perf_counter()
    for batch in it:
        count += len(batch)
        if count >= limit:
            break
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds(workers) - cpu0
    del it, loader, batch
    return count / elapsed, cpu * 1e6 / count


def loaders(ffr, folder, lmdb_dir, n, batch, workers):
    common = dict(batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    if workers:
        common.update(multiprocessing_context="fork", worker_init_fn=record_worker_pid)
    return {
        "files": lambda: TorchDataLoader(FilesDataset(folder, n), collate_fn=as_list, **common),
        "lmdb": lambda: TorchDataLoader(LmdbDataset(lmdb_dir, n), collate_fn=as_list, **common),
        "ffrecord": lambda: TorchDataLoader(fft.RecordDataset(ffr), collate_fn=as_list, **common),
        "ffrecord (decode='bytes')": lambda: TorchDataLoader(
            fft.RecordDataset(ffr, decode="bytes"), collate_fn=as_list, **common),
        "ffrecord-packed": lambda: TorchDataLoader(
            fft.RecordDataset(ffr, packed=True), collate_fn=fft.packed_collate, **common),
        "ffrecord-packed (ffrecord.torch.DataLoader)": lambda: fft.DataLoader(
            fft.RecordDataset(ffr, packed=True), **common),
        "ffrecord-packed, check_data=False": lambda: TorchDataLoader(
            fft.RecordDataset(ffr, packed=True, check_data=False), collate_fn=fft.packed_collate, **common),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "dataloader"))
    ap.add_argument("--small", type=int, default=100_000, help="records in W-small (2-6 KiB)")
    ap.add_argument("--image", type=int, default=5_000, help="records in W-image (64-192 KiB)")
    ap.add_argument("--batch-small", type=int, default=256)
    ap.add_argument("--batch-image", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=float, default=0.6, help="fraction of an epoch timed per run")
    args = ap.parse_args()
    torch.set_num_threads(1)

    workloads = [
        ("W-small", args.small, 2 << 10, 6 << 10, args.batch_small),
        ("W-image", args.image, 64 << 10, 192 << 10, args.batch_image),
    ]
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    rows = []
    for name, n, lo, hi, batch in workloads:
        t0 = time.perf_counter()
        ffr, folder, lmdb_dir = write_all(args.workdir, f"{name}-{n}", n, lo, hi)
        data_paths = [ffr, folder, os.path.join(lmdb_dir, "data.mdb")]
        warm(data_paths)
        engine = ffrecord.FileReader(ffr).engine
        print(f"# {name}: {n} records, {lo >> 10}-{hi >> 10} KiB, batch {batch}, "
              f"data ready in {time.perf_counter() - t0:.1f}s, ffrecord engine {engine}", flush=True)
        for workers in args.workers:
            makers = loaders(ffr, folder, lmdb_dir, n, batch, workers)
            rate = {k: [] for k in makers}
            cpu = {k: [] for k in makers}
            for _ in range(args.repeats):
                for label, make in makers.items():  # interleaved: noise hits every loader alike
                    # Every dataset back in the page cache first: idle pages are reclaimed
                    # on some machines, and the loader that ran first would pay for them.
                    warm(data_paths)
                    r, c = measure(make, int(n * args.limit), workers)
                    rate[label].append(r)
                    cpu[label].append(c)
            base_rate = max(statistics.median(rate[k]) for k in ("files", "lmdb"))
            base_cpu = min(statistics.median(cpu[k]) for k in ("files", "lmdb"))
            for label in makers:
                med, best, c = statistics.median(rate[label]), max(rate[label]), statistics.median(cpu[label])
                rows.append((name, workers, label, med, best, med / base_rate, c, base_cpu / c))
                print(f"{name:8} workers={workers} {label:45} {med:>10,.0f} samples/s (best {best:,.0f}; "
                      f"{med / base_rate:.2f}x)  {c:7.1f} CPU us/sample ({base_cpu / c:.2f}x)", flush=True)

    print()
    print("| workload | num_workers | loader | samples/s (median) | samples/s (best) | vs best of files/LMDB "
          "| CPU µs/sample | CPU vs cheapest of files/LMDB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, workers, label, med, best, ratio, c, cratio in rows:
        print(f"| {name} | {workers} | {label} | {med:,.0f} | {best:,.0f} | {ratio:.2f}x | {c:.1f} | {cratio:.2f}x |")


if __name__ == "__main__":
    main()
