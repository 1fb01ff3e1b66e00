#!/usr/bin/env python3
"""Random batched reads: ffrecord beside the formats a user would pick instead,
and beside what the machine can physically do.

Two synthetic datasets of deterministic, incompressible bytes (every record
starts with its index as a little-endian u64, so a misplaced read shows):

    W-small   2-6 KiB records    (default 100,000; the issue's size 300,000 with --full)
    W-image   64-192 KiB records (default   8,000; the issue's size  20,000 with --full)

are written as ffrecord, LMDB, one file per record, HDF5, Mosaic Streaming MDS
and a WebDataset tar (read sequentially only, and reported as such). Each is
read in shuffled batches (one epoch: every record exactly once):

    warm    page cache hot, one process;
    2proc   page cache hot, two processes on disjoint halves of the batches;
    cold    page cache dropped before the pass (root), else evicted per file
            with posix_fadvise(DONTNEED); ffrecord also with O_DIRECT.

The machine may be shared, so the warm modes alternate the systems after
every twentieth of an epoch (rotating their order) and keep each system's best
of --rounds epochs, every round starting from freshly re-read files and every
slice read untimed by the same system one turn before its timed pass (some
virtual machines reclaim idle page cache); cold rounds run every contender
once from an emptied cache and keep each one's best round.

The physical ceiling is a small C program (benchmarks/ceiling/pread_ceiling.c,
compiled here) that preads exactly the offsets ffrecord reads, with 1 and 2
threads; for the cold case also `fio` random reads at the same block size and
queue depth, and fio replaying exactly the aligned reads ffrecord's O_DIRECT
path issues. Every system's reads are checked: the timed passes check the
index tag of each batch's first record, and an untimed pass over the same
batches checks the length and CRC32C of every record.

Prints one table, writes benchmarks/results/reads.json, reads.png and
reads.md. Run:  python benchmarks/compare.py [--full] [--only warm,2proc,cold]
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import types

# Idle OpenBLAS threads spin and steal a core on a small machine; nothing here uses BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    import ffrecord  # noqa: E402
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, ROOT)
    import ffrecord  # noqa: E402
from ffrecord import _core  # noqa: E402

RESULTS = os.path.join(HERE, "results")
COLD_QUEUE_DEPTH = 64  # ffrecord's ring depth in the cold runs, and fio's iodepth
HELPER = "ffrecord read(), engine=io_uring + helper thread (FFRECORD_READ_HELPERS=1)"


# ---- workloads ------------------------------------------------------------------------------


class Workload:
    def __init__(self, name, n, lo, hi, batch, cold_records, fio_bs, seed):
        self.name, self.n, self.lo, self.hi, self.batch = name, n, lo, hi, batch
        self.cold_records, self.fio_bs, self.seed = cold_records, fio_bs, seed

    def lengths(self):
        return np.random.default_rng(self.seed).integers(self.lo, self.hi + 1, self.n)

    def records(self):
        """Yields (index, bytes) for every record, the same bytes on every run."""
        lengths = self.lengths()
        rng = np.random.default_rng(self.seed + 1)
        for start in range(0, self.n, 1000):
            lens = lengths[start:start + 1000]
            blob = bytearray(rng.bytes(int(lens.sum())))
            pos = 0
            for k, ln in enumerate(lens):
                ln = int(ln)
                blob[pos:pos + 8] = struct.pack("<Q", start + k)
                yield start + k, bytes(blob[pos:pos + ln])
                pos += ln

    def batches(self):
        """One shuffled epoch cut into batches (int64 arrays)."""
        perm = np.random.default_rng(self.seed + 2).permutation(self.n)
        return [perm[i:i + self.batch] for i in range(0, self.n, self.batch)]

    def cold_batches(self):
        bs = self.batches()
        return bs[: max(1, self.cold_records // self.batch)]


def workloads(full, scale=1.0):
    n_small, n_image = (300_000, 20_000) if full else (100_000, 8_000)
    s = lambda n: max(64, int(n * scale))  # noqa: E731
    return [
        Workload("W-small", s(n_small), 2048, 6144, 256, s(40_000), "4k", seed=11),
        Workload("W-image", s(n_image), 65536, 196608, 64, s(4_000), "128k", seed=23),
    ]


# ---- datasets -------------------------------------------------------------------------------


def tag_of(i):
    return struct.pack("<Q", int(i))


class Dataset:
    """The files of one workload in every format, built once and reused."""

    def __init__(self, wl, out):
        self.wl = wl
        self.dir = os.path.join(out, f"{wl.name}-{wl.n}")
        self.ffr = os.path.join(self.dir, "data.ffr")
        self.lmdb = os.path.join(self.dir, "lmdb")
        self.files = os.path.join(self.dir, "files")
        self.h5 = os.path.join(self.dir, "data.h5")
        self.mds = os.path.join(self.dir, "mds")
        self.tar = os.path.join(self.dir, "data.tar")
        self.expect = os.path.join(self.dir, "expect.npz")

    def file_path(self, i):
        return os.path.join(self.files, f"{i // 1000:04d}", f"{i:08d}.bin")

    def build(self):
        os.makedirs(self.dir, exist_ok=True)
        steps = [
            ("expected checksums", self.expect, self._build_expect),
            ("ffrecord", self.ffr, self._build_ffrecord),
            ("lmdb", self.lmdb, self._build_lmdb),
            ("one file per record", self.files, self._build_files),
            ("hdf5", self.h5, self._build_hdf5),
            ("mds", self.mds, self._build_mds),
            ("webdataset tar", self.tar, self._build_tar),
        ]
        for what, path, build in steps:
            done = path + ".done"
            if os.path.exists(done):
                continue
            t = time.perf_counter()
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
            build()
            open(done, "w").close()
            log(f"  built {self.wl.name} {what} in {time.perf_counter() - t:.1f} s")
        e = np.load(self.expect)
        self.lengths, self.crcs = e["lengths"], e["crcs"]

    def _build_expect(self):
        lengths = np.zeros(self.wl.n, dtype=np.int64)
        crcs = np.zeros(self.wl.n, dtype=np.uint32)
        for i, rec in self.wl.records():
            lengths[i] = len(rec)
            crcs[i] = _core.crc32c(rec)
        np.savez(self.expect, lengths=lengths, crcs=crcs)

    def _build_ffrecord(self):
        with ffrecord.FileWriter(self.ffr, self.wl.n) as w:
            for _, rec in self.wl.records():
                w.write_one(rec)

    def _build_lmdb(self):
        import lmdb

        total = int(self.wl.lengths().sum())
        env = lmdb.open(self.lmdb, map_size=total * 2 + (256 << 20), subdir=True, lock=False)
        txn = env.begin(write=True)
        for i, rec in self.wl.records():
            txn.put(struct.pack(">Q", i), rec, append=True)
            if i % 10_000 == 9_999:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
        env.sync(True)
        env.close()

    def _build_files(self):
        for i, rec in self.wl.records():
            p = self.file_path(i)
            if i % 1000 == 0:
                os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(rec)

    def _build_hdf5(self):
        import h5py

        lengths = self.wl.lengths()
        offsets = np.zeros(self.wl.n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # One contiguous byte array plus offsets, each record read as a slice.
        with h5py.File(self.h5, "w") as f:
            data = f.create_dataset("data", shape=(int(offsets[-1]),), dtype=np.uint8)
            f.create_dataset("offsets", data=offsets)
            buf, start = [], 0
            for i, rec in self.wl.records():
                buf.append(rec)
                if len(buf) == 1000 or i == self.wl.n - 1:
                    chunk = np.frombuffer(b"".join(buf), dtype=np.uint8)
                    data[start:start + chunk.size] = chunk
                    start += chunk.size
                    buf = []

    def _build_mds(self):
        MDSWriter, _ = import_streaming()
        with MDSWriter(out=self.mds, columns={"data": "bytes"}, compression=None, size_limit=1 << 26) as w:
            for _, rec in self.wl.records():
                w.write({"data": rec})

    def _build_tar(self):
        with tarfile.open(self.tar, "w", format=tarfile.USTAR_FORMAT) as t:
            for i, rec in self.wl.records():
                info = tarfile.TarInfo(f"{i:08d}.bin")
                info.size = len(rec)
                info.mtime = 0
                t.addfile(info, _BytesReader(rec))

    def system_files(self, system):
        """The files that hold `system`'s copy of the data."""
        single = {"ffrecord": self.ffr, "hdf5": self.h5, "webdataset": self.tar}
        if system in single:
            return [single[system]]
        top = {"lmdb": self.lmdb, "files": self.files, "mds": self.mds}[system]
        out = []
        for root, _, names in os.walk(top):
            out.extend(os.path.join(root, n) for n in sorted(names) if not n.endswith(".done"))
        return out

    def all_files(self):
        return [p for s in ("ffrecord", "hdf5", "webdataset", "lmdb", "files", "mds") for p in self.system_files(s)]


class _BytesReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n=-1):
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos = end
        return out


def import_streaming():
    """MDSWriter and StreamingDataset from mosaicml-streaming.

    The package's top-level __init__ also imports its vision and text helpers
    (torchvision, transformers), which are irrelevant to MDS and cannot load
    against a CPU-only torch; the MDS writer and StreamingDataset themselves
    need neither. So the two packages' __init__ files are bypassed and the
    real modules imported directly.
    """
    if "streaming.base.dataset" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None:
            raise ImportError("mosaicml-streaming is not installed (pip install --no-deps mosaicml-streaming)")
        root = os.path.dirname(spec.origin)
        for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
            if name not in sys.modules:
                mod = types.ModuleType(name)
                mod.__path__ = [path]
                sys.modules[name] = mod
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format.mds.writer import MDSWriter

    return MDSWriter, StreamingDataset


def clean_mds_shared_memory():
    """Removes the shared-memory blocks a killed MDS run left in /dev/shm;
    a later StreamingDataset in two processes fails on them otherwise."""
    try:
        import_streaming()
        from streaming.base.util import clean_stale_shared_memory
    except ImportError:
        return
    clean_stale_shared_memory()


# ---- readers: one per system, each returning a batch as a list of buffers --------------------


class FFRecordSource:
    def __init__(self, ds, direct=False, check_data=True):
        self.r = ffrecord.FileReader(ds.ffr, check_data=check_data, direct=direct)

    def prepare(self, batch):
        return np.ascontiguousarray(batch, dtype=np.int64)

    def read(self, idx):
        return self.r.read(idx)

    def close(self):
        self.r.close()


class LmdbSource:
    def __init__(self, ds):
        import lmdb

        self.env = lmdb.open(ds.lmdb, readonly=True, lock=False, readahead=False, subdir=True)
        self.keys = [struct.pack(">Q", i) for i in range(ds.wl.n)]

    def prepare(self, batch):
        return [self.keys[i] for i in batch.tolist()]

    def read(self, keys):
        with self.env.begin() as txn:
            get = txn.get
            return [get(k) for k in keys]

    def close(self):
        self.env.close()


def _read_file(path):
    with open(path, "rb", buffering=0) as f:
        return f.read()


class FilesSource:
    def __init__(self, ds):
        self.paths = [ds.file_path(i) for i in range(ds.wl.n)]

    def prepare(self, batch):
        return [self.paths[i] for i in batch.tolist()]

    def read(self, paths):
        return [_read_file(p) for p in paths]

    def close(self):
        pass


class Hdf5Source:
    def __init__(self, ds):
        import h5py

        self.f = h5py.File(ds.h5, "r")
        self.data = self.f["data"]
        self.offsets = self.f["offsets"][:].tolist()

    def prepare(self, batch):
        o = self.offsets
        return [(o[i], o[i + 1]) for i in batch.tolist()]

    def read(self, spans):
        data = self.data
        return [data[a:b] for a, b in spans]

    def close(self):
        self.f.close()


class MdsSource:
    def __init__(self, ds):
        _, StreamingDataset = import_streaming()
        self.ds = StreamingDataset(local=ds.mds, shuffle=False, batch_size=ds.wl.batch)

    def prepare(self, batch):
        return batch.tolist()

    def read(self, idx):
        get = self.ds.get_item
        return [get(i)["data"] for i in idx]

    def close(self):
        del self.ds


SOURCES = {"ffrecord": FFRecordSource, "lmdb": LmdbSource, "hdf5": Hdf5Source, "mds": MdsSource, "files": FilesSource}
PEERS = ["lmdb", "hdf5", "mds", "files"]


# ---- measuring ------------------------------------------------------------------------------


class BadRead(RuntimeError):
    pass


def verify_pass(source, ds, batches):
    """Reads every batch and checks the length and CRC32C of every record."""
    crc = _core.crc32c
    for b, p in zip(batches, (source.prepare(b) for b in batches)):
        out = source.read(p)
        if len(out) != len(b):
            raise BadRead(f"{type(source).__name__}: batch of {len(b)} gave {len(out)} records")
        for i, rec in zip(b.tolist(), out):
            if len(rec) != ds.lengths[i] or crc(rec) != ds.crcs[i]:
                raise BadRead(f"{type(source).__name__}: record {i} came back wrong")


def timed_pass(read, prepared, tags):
    """Seconds for one pass; each batch's first record must carry its index tag."""
    t0 = time.perf_counter()
    for p, tag in zip(prepared, tags):
        out = read(p)
        if bytes(memoryview(out[0])[:8]) != tag:
            raise BadRead("a timed read returned the wrong record")
    return time.perf_counter() - t0


def prefetch_pass(reader, prepared, tags, depth=4):
    t0 = time.perf_counter()
    for out, tag in zip(reader.prefetch(prepared, depth=depth), tags):
        if bytes(memoryview(out[0])[:8]) != tag:
            raise BadRead("a prefetched read returned the wrong record")
    return time.perf_counter() - t0


def batch_tags(batches):
    return [tag_of(b[0]) for b in batches]


def payload_bytes(ds, batches):
    return int(sum(int(ds.lengths[b].sum()) for b in batches))


def records_in(batches):
    return int(sum(len(b) for b in batches))


class Env:
    """Sets environment variables for the duration of a block."""

    def __init__(self, **values):
        self.values = {k: str(v) for k, v in values.items() if v is not None}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def evict(paths):
    """Drops the page cache (root) or evicts `paths` with posix_fadvise (anyone)."""
    if os.geteuid() == 0:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def rewarm(paths):
    """Reads `paths` sequentially so their pages are in the page cache again.

    Warm passes start from here: on a machine that reclaims idle page cache
    proactively (e.g. DAMON), data read a minute ago may be gone.
    """
    buf = bytearray(16 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def resident_fraction(path):
    """The share of `path`'s pages in the page cache (mincore)."""
    import ctypes

    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: maps, touches nothing
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        pages = (size + 4095) // 4096
        vec = ctypes.create_string_buffer(pages)
        ok = libc.mincore(addr, size, vec) == 0
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw) / pages if ok else float("nan")


# ---- the ceiling: C pread and fio -----------------------------------------------------------


def ffrecord_spans(path):
    """(offset, length) of every record, parsed from the v2 index per docs/FORMAT.md."""
    with open(path, "rb") as f:
        f.seek(-96, os.SEEK_END)
        footer = f.read(96)
        n, index_offset = struct.unpack_from("<QQ", footer)
        f.seek(index_offset)
        index = np.frombuffer(f.read(24 * n), dtype=[("o", "<u8"), ("l", "<u8"), ("c", "<u4"), ("f", "<u4")])
    return index["o"].astype(np.int64), index["l"].astype(np.int64)


class Ceiling:
    def __init__(self, out):
        self.exe = os.path.join(out, "pread_ceiling")
        src = os.path.join(HERE, "ceiling", "pread_ceiling.c")
        if not os.path.exists(self.exe) or os.path.getmtime(self.exe) < os.path.getmtime(src):
            subprocess.run(["cc", "-O2", "-Wall", "-pthread", "-o", self.exe, src], check=True)
        self.out = out

    def ops_file(self, ds, batches, name):
        offs, lens = ffrecord_spans(ds.ffr)
        idx = np.concatenate(batches)
        ops = np.zeros(idx.size, dtype=[("o", "<u8"), ("l", "<u8"), ("t", "<u8")])
        ops["o"], ops["l"], ops["t"] = offs[idx], lens[idx], idx
        path = os.path.join(self.out, f"{ds.wl.name}-{name}.ops")
        ops.tofile(path)
        return path

    def run(self, ds, ops, threads, batch):
        res = subprocess.run([self.exe, ds.ffr, ops, str(threads), str(batch)], capture_output=True, text=True)
        if res.returncode != 0:
            raise BadRead(f"pread ceiling failed: {res.stdout} {res.stderr}")
        j = json.loads(res.stdout)
        return j["seconds"]


def fio_available():
    return shutil.which("fio") is not None


def fio_randread(path, bs, qd, size, seconds=4):
    cmd = ["fio", "--name=ceiling", f"--filename={path}", "--rw=randread", f"--bs={bs}", f"--iodepth={qd}",
           "--ioengine=io_uring", "--direct=1", f"--size={size}", f"--runtime={seconds}", "--time_based",
           "--output-format=json"]
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    r = j["jobs"][0]["read"]
    shown = [c.replace(path, os.path.relpath(path, ROOT)) for c in cmd]  # no machine paths in results
    return r["iops"], r["bw_bytes"], " ".join(shown)


def direct_alignment(path):
    """The alignment of ffrecord's O_DIRECT reads of this file (the kernel's, for its device)."""
    with ffrecord.FileReader(path, direct=True) as r:
        return r.file_info(0)["direct_alignment"]


def fio_replay(ds, batches, qd, out):
    """fio replaying exactly the aligned reads ffrecord's O_DIRECT path issues."""
    offs, lens = ffrecord_spans(ds.ffr)
    idx = np.concatenate(batches)
    al = direct_alignment(ds.ffr)
    a = offs[idx] // al * al
    e = (offs[idx] + lens[idx] + al - 1) // al * al
    log_path = os.path.join(out, f"{ds.wl.name}-replay.iolog")
    with open(log_path, "w") as f:
        f.write(f"fio version 2 iolog\n{ds.ffr} add\n{ds.ffr} open\n")
        f.writelines(f"{ds.ffr} read {s} {n}\n" for s, n in zip(a.tolist(), (e - a).tolist()))
        f.write(f"{ds.ffr} close\n")
    cmd = ["fio", "--name=replay", f"--read_iolog={log_path}", "--replay_no_stall=1", f"--iodepth={qd}",
           "--ioengine=io_uring", "--direct=1", "--output-format=json"]
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    r = j["jobs"][0]["read"]
    return r["iops"], r["bw_bytes"]


# ---- two processes --------------------------------------------------------------------------


def worker_main(cfg):
    """--worker: reads its half of one slice of the batches when told "go K"."""
    wl = next(w for w in workloads(cfg["full"], cfg["scale"]) if w.name == cfg["workload"])
    ds = Dataset(wl, cfg["out"])
    e = np.load(ds.expect)
    ds.lengths, ds.crcs = e["lengths"], e["crcs"]
    mine = []
    for part in slices_of(wl.batches(), cfg["slices"]):
        half = len(part) // 2
        mine.append(part[:half] if cfg["half"] == 0 else part[half:])
    source = SOURCES[cfg["system"]](ds)
    verify_pass(source, ds, [b for part in mine for b in part])  # also warms this process's caches
    prepared = [[source.prepare(b) for b in part] for part in mine]
    tags = [batch_tags(part) for part in mine]
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "go":
            break
        k = int(words[1])
        t0 = time.monotonic()
        timed_pass(source.read, prepared[k], tags[k])
        t1 = time.monotonic()
        print(json.dumps({"t0": t0, "t1": t1}), flush=True)
    source.close()


class WorkerPair:
    """Two worker processes of one system, each holding half of every slice."""

    def __init__(self, system, wl, out, full, scale, slices):
        self.system = system
        self.procs = []
        # One after the other: two MDS datasets set up at the same moment race
        # for the same shared-memory names.
        for half in (0, 1):
            cfg = {"system": system, "workload": wl.name, "out": out, "full": full, "scale": scale,
                   "half": half, "slices": slices}
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            if p.stdout.readline().strip() != "ready":
                self.close()
                raise BadRead(f"{system}: a worker failed to start")

    def run(self, k):
        """Seconds from the first start to the last finish of slice k in both processes."""
        for p in self.procs:
            p.stdin.write(f"go {k}\n")
            p.stdin.flush()
        res = [json.loads(p.stdout.readline()) for p in self.procs]
        return max(r["t1"] for r in res) - min(r["t0"] for r in res)

    def close(self):
        for p in self.procs:
            try:
                p.stdin.write("quit\n")
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            if p.wait(timeout=120) != 0:
                raise BadRead(f"{self.system}: a worker exited with {p.returncode}")


# ---- the runs -------------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.rows = []
        self.checksum_cost = {}

    def add(self, wl, mode, system, seconds, records, nbytes, ceiling_key=None, note=""):
        row = {"workload": wl.name, "mode": mode, "system": system, "seconds": seconds,
               "records": records, "bytes": nbytes, "records_per_s": records / seconds,
               "mb_per_s": nbytes / seconds / 1e6, "ceiling": ceiling_key, "note": note}
        self.rows.append(row)
        log(f"  {wl.name:8} {mode:6} {system:40} {row['records_per_s']:>12,.0f} rec/s {row['mb_per_s']:>9,.0f} MB/s")
        return row

    def find(self, wl_name, mode, system):
        for r in self.rows:
            if r["workload"] == wl_name and r["mode"] == mode and r["system"] == system:
                return r
        return None

    def ratios(self):
        for r in self.rows:
            base = self.find(r["workload"], r["mode"], r["ceiling"]) if r["ceiling"] else None
            r["ratio"] = r["records_per_s"] / base["records_per_s"] if base else None


def best_of(rounds, fn):
    return min(fn() for _ in range(rounds))


def slices_of(batches, count):
    """The batch list cut into `count` consecutive slices (lists of batches),
    each of at least two batches (two processes share each slice)."""
    count = max(1, min(count, len(batches) // 2))
    bounds = np.linspace(0, len(batches), count + 1).astype(int)
    return [batches[bounds[k]:bounds[k + 1]] for k in range(count)]


def interleaved(contenders, slices, rounds, before_round, reread="ahead"):
    """Runs every contender over every slice, alternating them slice by slice
    (in a rotating order), so that all see the same share of whatever else
    the machine is doing. Returns each contender's best total over `rounds`.

    Each contender reads a slice untimed one turn before its timed pass over
    it: warm means the slice's pages are in the page cache and mapped where
    the system maps them (this machine's kernel reclaims page cache left idle
    for a minute), while the CPU caches hold what the other contenders read
    in between, as they would hold other data in training. (A timed pass
    right after an untimed pass over the same slice read much of it from a
    large last-level cache instead of memory; ``reread="same"`` measures that
    way, for comparison.)"""
    names = list(contenders)
    best = {name: float("inf") for name in names}
    for _ in range(rounds):
        before_round()
        total = dict.fromkeys(names, 0.0)
        ahead = reread == "ahead"
        for name in names if ahead else []:
            contenders[name](0)
        for k in range(slices):
            shift = k % len(names)
            for name in names[shift:] + names[:shift]:
                if not ahead:
                    contenders[name](k)  # untimed, right before the timed pass
                elif k + 1 < slices:
                    contenders[name](k + 1)  # read ahead of its turn, untimed
                total[name] += contenders[name](k)
        for name in names:
            best[name] = min(best[name], total[name])
    return best


def run_warm(ds, ceiling, results, rounds, slices, reread="ahead"):
    wl = ds.wl
    batches = wl.batches()
    n, nbytes = records_in(batches), payload_bytes(ds, batches)
    parts = slices_of(batches, slices)
    part_tags = [batch_tags(p) for p in parts]
    ops = [ceiling.ops_file(ds, p, f"warm-{k}") for k, p in enumerate(parts)]
    contenders, closers, files = {}, [], [ds.ffr]

    for t in (1, 2):
        contenders[f"pread ceiling, {t} thread{'s' if t > 1 else ''}"] = (
            lambda k, t=t: ceiling.run(ds, ops[k], t, wl.batch))

    ffr_variants = [
        # The defaults: records in the page cache are copied from the file's mapping.
        ("ffrecord read()", dict(FFRECORD_READ_HELPERS=0), {}),
        ("ffrecord read(), check_data=False", dict(FFRECORD_READ_HELPERS=0), {"check_data": False}),
        # Every read through an I/O engine instead.
        ("ffrecord read(), engine=io_uring", dict(FFRECORD_ENGINE="io_uring", FFRECORD_READ_HELPERS=0), {}),
        (HELPER, dict(FFRECORD_ENGINE="io_uring", FFRECORD_READ_HELPERS=1), {}),
        ("ffrecord read(), engine=threads", dict(FFRECORD_ENGINE="threads"), {}),
        ("ffrecord read(), engine=pread", dict(FFRECORD_ENGINE="pread"), {}),
    ]
    for name, env, kw in ffr_variants:
        with Env(**env):
            src = FFRecordSource(ds, **kw)
            verify_pass(src, ds, batches)
        prepared = [[src.prepare(b) for b in p] for p in parts]

        def run(k, src=src, env=env, prepared=prepared):
            with Env(**env):
                return timed_pass(src.read, prepared[k], part_tags[k])

        contenders[name] = run
        closers.append(src)
        if name == "ffrecord read()":
            contenders["ffrecord prefetch(depth=4)"] = (
                lambda k, src=src, prepared=prepared: prefetch_pass(src.r, prepared[k], part_tags[k]))

    for system in PEERS:
        try:
            src = SOURCES[system](ds)
        except ImportError as e:
            log(f"  {system}: skipped ({e})")
            continue
        verify_pass(src, ds, batches)
        prepared = [[src.prepare(b) for b in p] for p in parts]
        contenders[system] = lambda k, src=src, prepared=prepared: timed_pass(src.read, prepared[k], part_tags[k])
        closers.append(src)
        files += ds.system_files(system)

    residency = []

    def before_round():
        residency.append(resident_fraction(ds.ffr))
        rewarm(files)

    best = interleaved(contenders, len(parts), rounds, before_round, reread)
    residency.append(resident_fraction(ds.ffr))
    crc_cost = checksum_cost(ds, batches, rounds)
    default_reader = next(src.r for src in closers if isinstance(src, FFRecordSource))
    notes_reader = mapped_share(default_reader)
    for src in closers:
        src.close()
    key = "pread ceiling, 1 thread"
    notes = {key: "C, same offsets, one reused batch buffer", "pread ceiling, 2 threads": "C, disjoint halves",
             "ffrecord read()": f"ffrecord's file {min(residency) * 100:.1f}% in the page cache at each round's ends; "
                                f"{notes_reader}"}
    for name, secs in best.items():
        results.add(wl, "warm", name, secs, n, nbytes, key, notes.get(name, ""))
    results.add(wl, "warm", "ffrecord read(), checksums on/off A/B", crc_cost["on"], n * rounds, nbytes * rounds, key,
                f"checksums take {crc_cost['cost'] * 100:.1f}% of the checked read time (alternating every 8 "
                "batches in one process)")
    results.checksum_cost[wl.name] = crc_cost["cost"]
    sequential(ds, results, rounds, mode="warm")


def mapped_share(reader):
    """Where a reader's batches came from: the page cache through the mapping, or the engine."""
    st = reader.io_stats()
    total = st["mapped_batches"] + st["engine_batches"]
    return f"{st['mapped_batches']:,} of {total:,} batches copied from the mapping, the rest read by the engine"


def checksum_cost(ds, batches, rounds, every=8):
    """The share of read time that checksums take: two readers of the same
    file, one verifying and one not, alternating every few batches (in
    alternating order) so that both see the same machine."""
    on = FFRecordSource(ds)
    off = FFRecordSource(ds, check_data=False)
    time_on = time_off = 0.0
    with Env(FFRECORD_READ_HELPERS=0):
        rewarm([ds.ffr])
        for _ in range(rounds):
            for k in range(0, len(batches), every):
                pair = ((on, "on"), (off, "off")) if (k // every) % 2 else ((off, "off"), (on, "on"))
                for src, which in pair:
                    part = batches[k:k + every]
                    secs = timed_pass(src.read, part, batch_tags(part))
                    if which == "on":
                        time_on += secs
                    else:
                        time_off += secs
    on.close()
    off.close()
    return {"on": time_on, "off": time_off, "cost": 1 - time_off / time_on}


def sequential(ds, results, rounds, mode):
    """WebDataset can only stream; ffrecord reading the same records in order, beside it."""
    wl = ds.wl
    n, nbytes = wl.n, int(ds.lengths.sum())
    order = [np.arange(i, min(i + wl.batch, wl.n)) for i in range(0, wl.n, wl.batch)]
    note = "sequential pass (not random)"

    def wds_pass():
        import webdataset as wds

        if mode == "cold":
            evict([ds.tar])
        else:
            rewarm([ds.tar])
        t0 = time.perf_counter()
        k = 0
        for sample in wds.WebDataset(ds.tar, shardshuffle=False, empty_check=False):
            if bytes(memoryview(sample["bin"])[:8]) != tag_of(k):
                raise BadRead("webdataset returned the wrong record")
            k += 1
        if k != n:
            raise BadRead(f"webdataset gave {k} of {n} records")
        return time.perf_counter() - t0

    def ffr_pass():
        if mode == "cold":
            evict([ds.ffr])
        else:
            rewarm([ds.ffr])
        src = FFRecordSource(ds)
        secs = timed_pass(src.read, order, batch_tags(order))
        src.close()
        return secs

    reps = rounds if mode == "warm" else 1
    if mode == "warm":
        verify_sequential_wds(ds)
        wds_pass()  # warm
        ffr_pass()
    results.add(wl, mode, "webdataset tar, sequential", best_of(reps, wds_pass), n, nbytes, None, note)
    results.add(wl, mode, "ffrecord read(), sequential", best_of(reps, ffr_pass), n, nbytes, None, note)


def verify_sequential_wds(ds):
    import webdataset as wds

    crc = _core.crc32c
    for k, sample in enumerate(wds.WebDataset(ds.tar, shardshuffle=False, empty_check=False)):
        rec = sample["bin"]
        if len(rec) != ds.lengths[k] or crc(rec) != ds.crcs[k]:
            raise BadRead(f"webdataset: record {k} came back wrong")


def run_two_procs(ds, ceiling, results, out, full, scale, rounds, slices):
    wl = ds.wl
    batches = wl.batches()
    n, nbytes = records_in(batches), payload_bytes(ds, batches)
    key = "pread ceiling, 2 threads"
    parts = slices_of(batches, slices)
    # The ceiling's two threads take the two halves of each slice, as the workers do.
    ops = [ceiling.ops_file(ds, p, f"2proc-{k}") for k, p in enumerate(parts)]
    contenders = {key: lambda k: ceiling.run(ds, ops[k], 2, wl.batch)}
    pairs, files = [], [ds.ffr]
    try:
        for system in ["ffrecord"] + PEERS:
            try:
                pair = WorkerPair(system, wl, out, full, scale, slices)
            except BadRead as e:
                log(f"  {system}: skipped ({e})")
                continue
            pairs.append(pair)
            contenders[system] = pair.run
            files += ds.system_files(system)
        best = interleaved(contenders, len(parts), rounds, lambda: rewarm(files))
    finally:
        for pair in pairs:
            pair.close()
    for name, secs in best.items():
        results.add(wl, "2proc", name, secs, n, nbytes, key, "C, disjoint halves" if name == key else "")


def run_cold(ds, ceiling, results, out, rounds):
    """Each round runs every contender once from an emptied page cache; the
    best round of each is kept (the disk is shared with whatever else runs)."""
    wl = ds.wl
    batches = wl.cold_batches()
    tags = batch_tags(batches)
    n, nbytes = records_in(batches), payload_bytes(ds, batches)
    qd = COLD_QUEUE_DEPTH
    key = "pread ceiling, 1 thread"
    ops = ceiling.ops_file(ds, batches, "cold")
    best = {}

    def keep(name, value, higher_is_better=False):
        old = best.get(name)
        if old is None or (value > old if higher_is_better else value < old):
            best[name] = value

    # ffrecord at the same queue depth as fio: one ring of depth qd.
    variants = [
        ("ffrecord read(), buffered", dict(FFRECORD_QUEUE_DEPTH=qd), {}, "read"),
        ("ffrecord read(), direct=True", dict(FFRECORD_QUEUE_DEPTH=qd), {"direct": True}, "read"),
        ("ffrecord prefetch(depth=4), direct=True, 2 rings x QD32", dict(FFRECORD_QUEUE_DEPTH=qd // 2),
         {"direct": True}, "prefetch"),
        ("ffrecord read(), defaults (QD128)", dict(), {}, "read"),
    ]
    size = int(ffrecord_spans(ds.ffr)[0][-1])
    fio_cmd = None
    for _ in range(rounds):
        for threads in (1, 2):
            evict([ds.ffr])
            keep(f"pread ceiling, {threads} thread{'s' if threads > 1 else ''}",
                 ceiling.run(ds, ops, threads, wl.batch))
        if fio_available():
            iops, bw, fio_cmd = fio_randread(ds.ffr, wl.fio_bs, qd, size, seconds=3)
            keep("fio randread", (iops, bw), higher_is_better=True)
            keep("fio replay", fio_replay(ds, batches, qd, out), higher_is_better=True)
        for name, env, kw, how_read in variants:
            with Env(FFRECORD_READ_HELPERS=0, **env):
                evict([ds.ffr])
                src = FFRecordSource(ds, **kw)
                prepared = [src.prepare(b) for b in batches]
                if how_read == "read":
                    keep(name, timed_pass(src.read, prepared, tags))
                else:
                    keep(name, prefetch_pass(src.r, prepared, tags))
                src.close()
        for system in PEERS:
            try:
                evict(ds.system_files(system))
                src = SOURCES[system](ds)
            except ImportError as e:
                log(f"  {system}: skipped ({e})")
                continue
            prepared = [src.prepare(b) for b in batches]
            keep(system, timed_pass(src.read, prepared, tags))
            src.close()

    for threads in (1, 2):
        name = f"pread ceiling, {threads} thread{'s' if threads > 1 else ''}"
        results.add(wl, "cold", name, best[name], n, nbytes, key, f"C, queue depth {threads}")
    if "fio randread" in best:
        (iops, bw), (riops, _) = best["fio randread"], best["fio replay"]
        results.rows.append({"workload": wl.name, "mode": "cold", "system": f"fio randread bs={wl.fio_bs} QD{qd}",
                             "seconds": None, "records": None, "bytes": None, "records_per_s": iops,
                             "mb_per_s": bw / 1e6, "ceiling": key, "note": "O_DIRECT io_uring; IOPS",
                             "command": fio_cmd})
        log(f"  {wl.name:8} cold   fio randread bs={wl.fio_bs} QD{qd}: {iops:,.0f} IOPS {bw / 1e6:,.0f} MB/s")
        results.rows.append({"workload": wl.name, "mode": "cold", "system": f"fio replaying ffrecord's reads QD{qd}",
                             "seconds": None, "records": None, "bytes": None, "records_per_s": riops,
                             "mb_per_s": None, "ceiling": key,
                             "note": "exactly the aligned spans ffrecord reads for these records; IOPS"})
        log(f"  {wl.name:8} cold   fio replay QD{qd}: {riops:,.0f} IOPS")
    for name, _, _, _ in variants:
        results.add(wl, "cold", name, best[name], n, nbytes, key)
    for system in PEERS:
        if system in best:
            results.add(wl, "cold", system, best[system], n, nbytes, key)
    # Correctness of cold direct reads.
    evict([ds.ffr])
    src = FFRecordSource(ds, direct=True)
    verify_pass(src, ds, batches)
    src.close()
    sequential(ds, results, 1, mode="cold")


# ---- report ---------------------------------------------------------------------------------


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    fs = subprocess.run(["df", "-T", HERE], capture_output=True, text=True).stdout.splitlines()[-1].split()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "filesystem": f"{fs[1]} on {fs[0]}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def versions():
    out = {"ffrecord": getattr(ffrecord, "__version__", "?"), "ffrecord CRC32C": _core.crc32c_impl()}
    for mod in ("lmdb", "h5py", "webdataset"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            out[mod] = None
    try:
        from importlib.metadata import version

        out["mosaicml-streaming"] = version("mosaicml-streaming")
    except Exception:  # noqa: BLE001
        out["mosaicml-streaming"] = None
    try:
        out["fio"] = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        out["fio"] = None
    return out


def table(rows):
    lines = ["| workload | mode | system | records/s | MB/s | ratio | note |", "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
        mb = f"{r['mb_per_s']:,.0f}" if r.get("mb_per_s") is not None else ""
        lines.append(f"| {r['workload']} | {r['mode']} | {r['system']} | {r['records_per_s']:,.0f} | {mb} | "
                     f"{ratio} | {r.get('note', '')} |")
    return "\n".join(lines)


def checks(results, wls, modes):
    """The SPEC §7 targets, each with the measured figure."""
    out = []
    R = results.find
    for wl in wls:
        w = wl.name
        if "warm" in modes:
            ceil = R(w, "warm", "pread ceiling, 1 thread")
            ffr = R(w, "warm", "ffrecord read()")
            helped = R(w, "warm", HELPER)
            pre = R(w, "warm", "ffrecord prefetch(depth=4)")
            if ceil and ffr:
                out.append((f"{w} warm: ffrecord >= 0.9x pread ceiling (1 thread)", ffr["ratio"] >= 0.9,
                            f"{ffr['ratio']:.2f}x (io_uring with a helper thread: {helped['ratio']:.2f}x; "
                            f"prefetch: {pre['ratio']:.2f}x)"))
            peers = [R(w, "warm", p) for p in PEERS]
            best = max((p for p in peers if p), key=lambda p: p["records_per_s"], default=None)
            if ffr and best:
                out.append((f"{w} warm: ffrecord ahead of LMDB, HDF5, MDS, one-file", ffr["records_per_s"] >
                            best["records_per_s"], f"{ffr['records_per_s'] / best['records_per_s']:.2f}x the best "
                            f"peer ({best['system']})"))
            on, off = R(w, "warm", "ffrecord read()"), R(w, "warm", "ffrecord read(), check_data=False")
            if w in results.checksum_cost and on and off:
                cost = results.checksum_cost[w]
                rough = 1 - on["records_per_s"] / off["records_per_s"]
                out.append((f"{w} warm: checksums cost < 10%", cost < 0.10,
                            f"{cost * 100:.1f}% in the A/B run (from the two rows above: {rough * 100:.1f}%)"))
        if "2proc" in modes:
            c2, f2 = R(w, "2proc", "pread ceiling, 2 threads"), R(w, "2proc", "ffrecord")
            if c2 and f2:
                out.append((f"{w} 2 processes: ffrecord >= 0.9x pread ceiling (2 threads)", f2["ratio"] >= 0.9,
                            f"{f2['ratio']:.2f}x"))
        if "cold" in modes:
            fio = next((r for r in results.rows if r["workload"] == w and r["mode"] == "cold"
                        and r["system"].startswith("fio randread")), None)
            rep = next((r for r in results.rows if r["workload"] == w and r["mode"] == "cold"
                        and r["system"].startswith("fio replaying")), None)
            best = max((r for r in results.rows if r["workload"] == w and r["mode"] == "cold"
                        and r["system"].startswith("ffrecord") and "QD128" not in r["system"]
                        and "sequential" not in r["system"]), key=lambda r: r["records_per_s"], default=None)
            if fio and best:
                ratio = best["records_per_s"] / fio["records_per_s"]
                extra = f"; vs fio replaying the same reads: {best['records_per_s'] / rep['records_per_s']:.2f}x" \
                    if rep else ""
                out.append((f"{w} cold: ffrecord >= 0.8x fio at bs={wl.fio_bs}, QD{COLD_QUEUE_DEPTH}", ratio >= 0.8,
                            f"{ratio:.2f}x ({best['system']}){extra}"))
    return out


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["workload"], r["mode"]) for r in rows if r.get("ratio") is not None})
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 + 0.32 * 14 * len(groups) / 2), squeeze=False)
    for ax, (w, m) in zip(axes[:, 0], groups):
        rs = [r for r in rows if r["workload"] == w and r["mode"] == m and r.get("ratio") is not None]
        rs.sort(key=lambda r: r["ratio"])
        colors = ["#d62728" if r["system"].startswith("ffrecord") else
                  "#7f7f7f" if ("ceiling" in r["system"] or r["system"].startswith("fio")) else "#1f77b4" for r in rs]
        ax.barh([r["system"] for r in rs], [r["ratio"] for r in rs], color=colors)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_title(f"{w}, {m}: records/s relative to the C pread ceiling", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


ANALYSIS_BEGIN, ANALYSIS_END = "<!-- analysis -->", "<!-- /analysis -->"


def write_markdown(path, command, mach, vers, params, results, target_checks, evict_how, reread="ahead"):
    old = open(path).read() if os.path.exists(path) else ""
    analysis = ""
    if ANALYSIS_BEGIN in old and ANALYSIS_END in old:
        analysis = old[old.index(ANALYSIS_BEGIN):old.index(ANALYSIS_END) + len(ANALYSIS_END)]
    lines = [
        "# Random batched reads: ffrecord, its peers, and the machine's ceiling",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with",
        "",
        "```",
        command,
        "```",
        "",
        f"**Machine:** {mach['cpu']}, {mach['cpus']} CPUs, {mach['memory_gib']} GiB RAM, Linux {mach['kernel']}, "
        f"{mach['filesystem']}; Python {mach['python']}, numpy {mach['numpy']}. Load average at start: "
        f"{', '.join(f'{x:.2f}' for x in mach['load_average_at_start'])} (the machine is shared).",
        "",
        "**Versions:** " + ", ".join(f"{k} {v}" for k, v in vers.items() if v),
        "",
        "**Workloads:** " + "; ".join(
            f"{p['name']}: {p['n']:,} records of {p['lo'] // 1024}-{p['hi'] // 1024} KiB, batches of {p['batch']}, "
            f"cold pass over {p['cold_records']:,} records" for p in params) + ". Deterministic incompressible "
        "bytes; one shuffled epoch per pass (every record once). The timed passes check each batch's first "
        "record; an untimed pass over the same batches checks length and CRC32C of every record of every system.",
        "",
        "Warm: the systems take turns on each twentieth of an epoch in a rotating order; each system reads "
        + ("a twentieth untimed one turn before its timed pass over it (pages cached and mapped, CPU caches "
           "holding the other systems' reads)" if reread == "ahead" else
           "a twentieth untimed right before its timed pass over it (`--reread same`: part of the twentieth "
           "may still be in the CPU's last-level cache)")
        + "; each keeps its best round. "
        f"Cold: page cache emptied before each pass ({evict_how}). Ratios are records/s over the C pread "
        "ceiling of the same mode measured in the same run (1 thread, or 2 threads for 2 processes); fio rows "
        "give IOPS.",
        "",
        "## Targets (SPEC §7)",
        "",
        "| target | met | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {'yes' if ok else '**no**'} | {fig} |" for what, ok, fig in target_checks]
    lines += ["", "## All figures", "", table(results.rows), "", "Chart: `reads.png`; raw numbers: `reads.json`.", ""]
    if analysis:
        lines += [analysis, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's sizes: 300,000 and 20,000 records")
    ap.add_argument("--only", default="warm,2proc,cold", help="comma-separated modes: warm, 2proc, cold")
    ap.add_argument("--workloads", default="W-small,W-image")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the record counts (quick trial runs)")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per system (the best is kept)")
    ap.add_argument("--slices", type=int, default=20,
                    help="warm runs alternate the systems after each of this many parts of an epoch")
    ap.add_argument("--out", default=os.path.join(HERE, "out"), help="where datasets are built (reused)")
    ap.add_argument("--results", default=RESULTS)
    ap.add_argument("--reread", choices=("ahead", "same"), default="ahead",
                    help="warm mode: each system re-reads a slice one turn before timing it (ahead), or "
                         "right before (same: the slice may still be in the CPU's last-level cache)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    modes = args.only.split(",")
    wls = [w for w in workloads(args.full, args.scale) if w.name in args.workloads.split(",")]
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    mach, vers = machine(), versions()
    ceiling = Ceiling(args.out)
    results = Results()
    clean_mds_shared_memory()
    evict_how = "drop_caches" if os.geteuid() == 0 else "posix_fadvise DONTNEED"
    for wl in wls:
        log(f"== {wl.name}: {wl.n:,} records")
        ds = Dataset(wl, args.out)
        ds.build()
        if "warm" in modes:
            run_warm(ds, ceiling, results, args.rounds, args.slices, args.reread)
        if "2proc" in modes:
            run_two_procs(ds, ceiling, results, args.out, args.full, args.scale, args.rounds, args.slices)
        if "cold" in modes:
            run_cold(ds, ceiling, results, args.out, args.rounds)
    results.ratios()
    target_checks = checks(results, wls, modes)
    print(table(results.rows))
    print()
    for what, ok, fig in target_checks:
        print(f"{'MET ' if ok else 'MISS'}  {what}: {fig}")
    params = [{"name": w.name, "n": w.n, "lo": w.lo, "hi": w.hi, "batch": w.batch, "cold_records": w.cold_records}
              for w in wls]
    with open(os.path.join(args.results, "reads.json"), "w") as f:
        json.dump({"command": command, "machine": mach, "versions": vers, "workloads": params,
                   "rows": results.rows, "targets": [{"target": a, "met": b, "measured": c}
                                                     for a, b, c in target_checks]}, f, indent=1)
    plot(results.rows, os.path.join(args.results, "reads.png"))
    write_markdown(os.path.join(args.results, "reads.md"), command, mach, vers, params, results, target_checks,
                   evict_how, args.reread)


if __name__ == "__main__":
    main()
