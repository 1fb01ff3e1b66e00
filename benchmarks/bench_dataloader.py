"""DataLoader throughput for the batches users build: ffrecord vs per-sample
os.pread, LMDB, one file per sample and Mosaic MDS, each returning the same
structures.

Every loader has the same batch size, ``shuffle=True`` and the same
``num_workers`` (forked); the training loop only takes each batch, and the
``collate_fn`` keeps the list of samples (``packed`` keeps the PackedBatch).
The figures show what the storage, the sample building and the hand-over
from the workers to the training process cost.

Patterns (what a sample is):
  raw      the record
  pair     (index, record)        ffrecord: a RecordDataset subclass overriding __getitems__
  label    (record, label)        ffrecord: RecordDataset(transform=...)
  dict     {"index", "record", "length"}   ffrecord: a subclass overriding __getitems__
  tensor   (float32 tensor 32x64 decoded from the record's first bytes, label)
           ffrecord: RecordDataset(transform=...)
  process  (index, record)        ffrecord: the original package's Dataset.process(indices, data)
  packed   ffrecord only: RecordDataset(packed=True) + packed_collate, one PackedBatch per batch

Loaders: ``ffrecord`` through the plain torch DataLoader and through
``ffrecord.torch.DataLoader`` (``ffrecord/fft``); peers through the plain torch
DataLoader, one read per sample in ``__getitem__``: ``pread`` (os.pread from one
file of records back to back), ``lmdb`` (one txn.get), ``files`` (one file per
sample), ``mds`` (Mosaic Streaming's StreamingDataset.get_item; skipped when
mosaicml-streaming is not installed: ``pip install --no-deps mosaicml-streaming``).

Workloads: W-small (2-6 KiB records) and W-image (64-192 KiB records). The data
is written once under --workdir and read from the page cache (every dataset is
re-read before each measured run). Each setting runs --repeats times,
interleaved; the table gives the median and best samples/s and the CPU time per
sample (training process plus workers), which a busy machine disturbs far less
than the wall-clock rate.

    python benchmarks/bench_dataloader.py              # the default sizes
    python benchmarks/bench_dataloader.py --quick      # a small run that checks everything works
"""

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import ffrecord  # noqa: E402
import ffrecord.torch as fft  # noqa: E402

IMAGE_SHAPE = (32, 64)  # the "decoded image" of the tensor pattern: the record's first 2 KiB
PATTERNS = ["raw", "pair", "label", "dict", "tensor", "process", "packed"]
PEER_PATTERNS = ["raw", "pair", "label", "dict", "tensor", "process"]


# ---- data ---------------------------------------------------------------------

def record_sizes(n, lo, hi, seed):
    return np.random.default_rng(seed).integers(lo, hi + 1, size=n)


def import_mds():
    """(MDSWriter, StreamingDataset), or None when mosaicml-streaming is missing."""
    try:
        from compare import import_streaming

        return import_streaming()
    except ImportError:
        return None


def write_all(root, name, n, lo, hi):
    """Writes the same n random records (the first 8 bytes hold the index) as
    .ffr, one file of records back to back (+ offsets), a folder of files,
    LMDB and MDS; returns the paths."""
    import lmdb

    base = os.path.join(root, name)
    paths = {k: os.path.join(base, v) for k, v in (
        ("ffrecord", "data.ffr"), ("pread", "records.bin"), ("offsets", "offsets.npy"),
        ("files", "files"), ("lmdb", "lmdb"), ("mds", "mds"))}
    mds = import_mds()
    done = os.path.join(base, "DONE")
    if os.path.exists(done) and (mds is None or os.path.isdir(paths["mds"])):
        return paths
    os.makedirs(paths["files"], exist_ok=True)
    sizes = record_sizes(n, lo, hi, seed=len(name))
    pool = np.random.default_rng(1).integers(0, 256, size=int(hi) * 2, dtype=np.uint8).tobytes()
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    np.save(paths["offsets"], offsets)
    env = lmdb.open(paths["lmdb"], map_size=int(offsets[-1]) * 2 + (256 << 20), subdir=True, lock=False)
    mds_writer = None
    if mds is not None:
        import shutil

        shutil.rmtree(paths["mds"], ignore_errors=True)
        mds_writer = mds[0](out=paths["mds"], columns={"data": "bytes"}, compression=None, size_limit=1 << 26)
    with ffrecord.FileWriter(paths["ffrecord"], n) as w, env.begin(write=True) as txn, \
            open(paths["pread"], "wb") as blob:
        for i, size in enumerate(sizes):
            start = (i * 7919) % int(hi)
            rec = i.to_bytes(8, "little") + pool[start:start + int(size) - 8]
            w.write_one(rec)
            blob.write(rec)
            with open(os.path.join(paths["files"], f"{i:07d}.bin"), "wb") as f:
                f.write(rec)
            txn.put(f"{i:07d}".encode(), rec)
            if mds_writer is not None:
                mds_writer.write({"data": rec})
    if mds_writer is not None:
        mds_writer.finish()
    env.close()
    open(done, "w").close()
    return paths


def data_files(paths):
    out = [paths["ffrecord"], paths["pread"], os.path.join(paths["lmdb"], "data.mdb"), paths["files"]]
    return out + ([paths["mds"]] if os.path.isdir(paths["mds"]) else [])


def warm(paths):
    """Reads every file once so that all loaders start from the page cache."""
    for p in paths:
        names = [os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs] if os.path.isdir(p) else [p]
        for name in names:
            with open(name, "rb") as f:
                while f.read(1 << 22):
                    pass


# ---- what a sample is -------------------------------------------------------------

def index_of(rec):
    return int.from_bytes(bytes(rec[:8]), "little")


def decode_image(rec):
    """A stand-in for an image decoder and transform: uint8 -> normalised float32 tensor."""
    pixels = np.frombuffer(rec, dtype=np.uint8, count=IMAGE_SHAPE[0] * IMAGE_SHAPE[1]).reshape(IMAGE_SHAPE)
    return torch.from_numpy(pixels).float().div_(255.0)


# A peer's record is read-only bytes: torch warns once per process about a
# tensor over it, though .float() copies it and nothing writes to it.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def label_sample(rec):
    return rec, index_of(rec) % 1000


def tensor_sample(rec):
    return decode_image(rec), index_of(rec) % 1000


def build(pattern, i, rec):
    """The sample of ``pattern`` for record ``rec`` at index ``i`` (peers)."""
    if pattern == "raw":
        return rec
    if pattern in ("pair", "process"):
        return (i, rec)
    if pattern == "label":
        return label_sample(rec)
    if pattern == "dict":
        return {"index": i, "record": rec, "length": len(rec)}
    if pattern == "tensor":
        return tensor_sample(rec)
    raise ValueError(pattern)


# ---- ffrecord datasets --------------------------------------------------------------

class PairDataset(fft.RecordDataset):
    def __getitems__(self, indices):
        return [(i, r) for i, r in zip(indices, super().__getitems__(indices))]


class DictDataset(fft.RecordDataset):
    def __getitems__(self, indices):
        return [{"index": i, "record": r, "length": len(r)} for i, r in zip(indices, super().__getitems__(indices))]


class ProcessDataset(fft.Dataset):
    def process(self, indices, data):
        return [(i, r) for i, r in zip(indices, data)]


def ffrecord_dataset(pattern, path):
    if pattern == "raw":
        return fft.RecordDataset(path)
    if pattern == "pair":
        return PairDataset(path)
    if pattern == "label":
        return fft.RecordDataset(path, transform=label_sample)
    if pattern == "dict":
        return DictDataset(path)
    if pattern == "tensor":
        return fft.RecordDataset(path, transform=tensor_sample)
    if pattern == "process":
        return ProcessDataset(path)
    if pattern == "packed":
        return fft.RecordDataset(path, packed=True)
    raise ValueError(pattern)


# ---- peer datasets: one read per sample -------------------------------------------------

class PerSample(Dataset):
    """Opens its source lazily in each process (handles must not cross fork)."""

    def __init__(self, pattern, n):
        self.pattern, self.n = pattern, n
        self._pid = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self._pid != os.getpid():
            self.open()
            self._pid = os.getpid()
        return build(self.pattern, i, self.get(i))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pid"] = None
        return state


class PreadDataset(PerSample):
    def __init__(self, pattern, n, path, offsets):
        super().__init__(pattern, n)
        self.path, self.offsets = path, np.load(offsets).tolist()

    def open(self):
        self.fd = os.open(self.path, os.O_RDONLY)

    def get(self, i):
        start = self.offsets[i]
        return os.pread(self.fd, self.offsets[i + 1] - start, start)


class FilesDataset(PerSample):
    def __init__(self, pattern, n, folder):
        super().__init__(pattern, n)
        self.folder = folder

    def open(self):
        pass

    def get(self, i):
        with open(os.path.join(self.folder, f"{i:07d}.bin"), "rb") as f:
            return f.read()


class LmdbDataset(PerSample):
    def __init__(self, pattern, n, path):
        super().__init__(pattern, n)
        self.path = path

    def open(self):
        import lmdb

        self.env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, subdir=True)

    def get(self, i):
        with self.env.begin(buffers=False) as txn:
            return txn.get(f"{i:07d}".encode())

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("env", None)
        return state


class MdsDataset(PerSample):
    """StreamingDataset.get_item per sample; made in the training process and
    inherited by forked workers (its shared-memory bookkeeping is per job)."""

    def __init__(self, pattern, n, path, batch):
        super().__init__(pattern, n)
        self.ds = import_mds()[1](local=path, shuffle=False, batch_size=batch)

    def open(self):
        pass

    def get(self, i):
        return self.ds.get_item(i)["data"]


def keep(batch):
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


def measure(make_loader, limit, workers, warmup=3, passes_before=0):
    """(samples/s, CPU microseconds per sample) over up to ``limit`` samples
    after ``warmup`` batches (which also absorb the start of the workers),
    in a loader's first pass, or after ``passes_before`` whole untimed passes
    over it (the steady state of a long training run; without workers the
    datasets then keep what their first pass set up, e.g. a file mapping's
    page tables, as every later epoch of a run does).

    The CPU figure counts the training process and its workers together over
    the timed part; it hardly moves when other programs compete for the
    cores, so it stays comparable on a busy machine where samples/s does not."""
    _WORKER_PIDS[:] = [0] * len(_WORKER_PIDS)  # no pid left from an earlier loader
    loader = make_loader()
    for _ in range(passes_before):
        for _ in loader:
            pass
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    # Every worker has started (it runs worker_init_fn first) before the clock starts:
    # a worker that had not yet would be missing from the CPU count.
    deadline = time.monotonic() + 60
    while workers and not all(_WORKER_PIDS[:workers]) and time.monotonic() < deadline:
        time.sleep(0.01)
    if not all(_WORKER_PIDS[:workers]):
        raise RuntimeError(f"only {sum(map(bool, _WORKER_PIDS[:workers]))} of {workers} workers started in 60 s")
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


def loaders(pattern, paths, n, batch, workers, with_mds):
    """label -> loader factory for one pattern and one worker count."""
    common = dict(batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    if workers:
        common.update(multiprocessing_context="fork", worker_init_fn=record_worker_pid)
    collate = fft.packed_collate if pattern == "packed" else keep
    out = {
        "ffrecord": lambda: TorchDataLoader(ffrecord_dataset(pattern, paths["ffrecord"]), collate_fn=collate, **common),
        "ffrecord/fft": lambda: fft.DataLoader(ffrecord_dataset(pattern, paths["ffrecord"]), collate_fn=collate,
                                               **common),
    }
    if pattern not in PEER_PATTERNS:
        return out
    out.update({
        "pread": lambda: TorchDataLoader(PreadDataset(pattern, n, paths["pread"], paths["offsets"]),
                                         collate_fn=keep, **common),
        "lmdb": lambda: TorchDataLoader(LmdbDataset(pattern, n, paths["lmdb"]), collate_fn=keep, **common),
        "files": lambda: TorchDataLoader(FilesDataset(pattern, n, paths["files"]), collate_fn=keep, **common),
    })
    if with_mds:
        out["mds"] = lambda: TorchDataLoader(MdsDataset(pattern, n, paths["mds"], batch), collate_fn=keep, **common)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(HERE, "out", "dataloader"))
    ap.add_argument("--small", type=int, default=100_000, help="records in W-small (2-6 KiB)")
    ap.add_argument("--image", type=int, default=5_000, help="records in W-image (64-192 KiB)")
    ap.add_argument("--batch-small", type=int, default=256)
    ap.add_argument("--batch-image", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    ap.add_argument("--patterns", nargs="+", default=PATTERNS, choices=PATTERNS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=float, default=0.6, help="fraction of an epoch timed per run")
    ap.add_argument("--passes-before", type=int, default=0,
                    help="whole untimed passes over each loader before the timed one (default: time the first)")
    ap.add_argument("--workloads", nargs="+", default=["W-small", "W-image"], choices=["W-small", "W-image"])
    ap.add_argument("--quick", action="store_true",
                    help="small data, one repeat, 0 and 2 workers: checks that everything runs")
    args = ap.parse_args()
    if args.quick:
        args.small, args.image, args.repeats, args.workers, args.limit = 4000, 640, 1, [0, 2], 0.5
        args.workdir = os.path.join(args.workdir, "quick")
    torch.set_num_threads(1)
    with_mds = import_mds() is not None
    # Mosaic Streaming keeps six shared-memory descriptors open per dataset it
    # made, for the life of the process: hundreds of runs exceed a 1,024 limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    workloads = [
        ("W-small", args.small, 2 << 10, 6 << 10, args.batch_small),
        ("W-image", args.image, 64 << 10, 192 << 10, args.batch_image),
    ]
    workloads = [w for w in workloads if w[0] in args.workloads]
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, numpy {np.__version__}, MDS {'yes' if with_mds else 'not installed'}")
    rows = []
    for name, n, lo, hi, batch in workloads:
        t0 = time.perf_counter()
        paths = write_all(args.workdir, f"{name}-{n}", n, lo, hi)
        files = data_files(paths)
        warm(files)
        engine = ffrecord.FileReader(paths["ffrecord"]).engine
        print(f"# {name}: {n} records, {lo >> 10}-{hi >> 10} KiB, batch {batch}, "
              f"data ready in {time.perf_counter() - t0:.1f}s, ffrecord engine {engine}", flush=True)
        # The timed part must end before the epoch does: workers that have
        # exited can no longer be asked for their CPU time.
        limit = min(max(int(n * args.limit), batch), (n // batch - 4) * batch)
        if limit <= 0:
            raise SystemExit(f"{name}: {n} records make too few batches of {batch} to time")
        for workers in args.workers:
            for pattern in args.patterns:
                makers = loaders(pattern, paths, n, batch, workers, with_mds)
                rate = {k: [] for k in makers}
                cpu = {k: [] for k in makers}
                for _ in range(args.repeats):
                    for label, make in makers.items():  # interleaved: noise hits every loader alike
                        # Every dataset back in the page cache first: idle pages are reclaimed
                        # on some machines, and the loader that ran first would pay for them.
                        warm(files)
                        r, c = measure(make, limit, workers, passes_before=args.passes_before)
                        rate[label].append(r)
                        cpu[label].append(c)
                peers = [k for k in makers if not k.startswith("ffrecord")]
                base_rate = max((statistics.median(rate[k]) for k in peers), default=None)
                for label in makers:
                    med, best, c = statistics.median(rate[label]), max(rate[label]), statistics.median(cpu[label])
                    ratio = med / base_rate if base_rate else None
                    rows.append((name, workers, pattern, label, med, best, ratio, c))
                    shown = f"{ratio:.2f}x" if ratio else "-"
                    print(f"{name:8} workers={workers} {pattern:8} {label:13} {med:>10,.0f} samples/s "
                          f"(best {best:,.0f}; {shown} of the best peer)  {c:7.1f} CPU us/sample", flush=True)

    print()
    print("| workload | num_workers | pattern | loader | samples/s (median) | samples/s (best) "
          "| vs best peer | CPU µs/sample |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, workers, pattern, label, med, best, ratio, c in rows:
        shown = f"{ratio:.2f}x" if ratio else "-"
        print(f"| {name} | {workers} | {pattern} | {label} | {med:,.0f} | {best:,.0f} | {shown} | {c:.1f} |")


if __name__ == "__main__":
    main()
