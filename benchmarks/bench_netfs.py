"""Cold random batched reads and checkpoint save/load through a network filesystem.

    python benchmarks/bench_netfs.py [--quick] [--latencies 0,0.2,1]

Needs root, FUSE, sshfs and sshd (the test rig, tests/netfs_rig.py) and fio. For
each added latency (0, 0.2 and 1 ms per filesystem operation, on the server
side) a fresh two-node rig is built and everything is read through node A:

- random batches of 4 KiB and 128 KiB records, cold: every method reads files
  of its own that no client has opened yet, after the page cache is dropped:
  ffrecord.FileReader (default engine, and direct=True), fio random reads at the
  same block size and queue depth (the first ioengine that works on FUSE), LMDB,
  and one file per sample;
- checkpoint save (ffrecord.checkpoint.save, durable) through node A and load
  through node B, against fio sequential write (fsynced) and read of as many
  bytes through the same nodes.

Prints a table with ratios and writes benchmarks/results/netfs.json
(netfs-quick.json with --quick, a smoke run with small sizes).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import ffrecord  # noqa: E402
import ffrecord.checkpoint as ck  # noqa: E402
from netfs_rig import NetFSRig, unavailable_reason  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
FIO_ENGINES = [("io_uring", []), ("libaio", ["--direct=1"]), ("psync", ["--numjobs={qd}"])]


def drop_caches():
    """Drops the page cache where allowed; fresh files keep the FUSE clients' caches cold."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Workload:
    def __init__(self, name, record_bytes, total_bytes, batch):
        self.name, self.record_bytes, self.batch = name, record_bytes, batch
        self.n = max(batch * 4, total_bytes // record_bytes)
        rng = np.random.default_rng(1)
        self.batches = [rng.choice(self.n, batch, replace=False).tolist() for _ in range(self.n // batch // 2)]
        self.payload = rng.bytes(record_bytes)

    def record(self, i):
        return i.to_bytes(8, "little") + self.payload[8:]

    @property
    def read_bytes(self):
        return sum(len(b) for b in self.batches) * self.record_bytes


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_ffrecord(wl, path, direct):
    def run():
        with ffrecord.FileReader(path, direct=direct) as r:
            for b in wl.batches:
                got = r.read_bytes(b)
                assert got[0][:8] == b[0].to_bytes(8, "little")
    return wl.read_bytes / timed(run)


def bench_lmdb(wl, path):
    import lmdb

    def run():
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
        with env.begin(buffers=True) as txn:
            for b in wl.batches:
                for i in b:
                    assert bytes(txn.get(b"%08d" % i)[:8]) == i.to_bytes(8, "little")
        env.close()
    return wl.read_bytes / timed(run)


def bench_files(wl, path):
    def run():
        for b in wl.batches:
            for i in b:
                with open(os.path.join(path, f"{i:08d}.bin"), "rb") as f:
                    assert f.read()[:8] == i.to_bytes(8, "little")
    return wl.read_bytes / timed(run)


def fio(args):
    res = subprocess.run(["fio", "--output-format=json", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip() or res.stdout.strip())
    jobs = json.loads(res.stdout[res.stdout.index("{"):])["jobs"]
    return jobs


def fio_randread(wl, path, engine):
    """fio random reads of the record size at the batch's queue depth, as many bytes as ffrecord read."""
    name, extra = engine
    qd = wl.batch
    args = [f"--name=rand{wl.name}", f"--filename={path}", "--rw=randread", f"--bs={wl.record_bytes}",
            f"--ioengine={name}", f"--size={wl.n * wl.record_bytes}", f"--io_size={wl.read_bytes}",
            "--invalidate=1", "--group_reporting"] + [e.format(qd=qd) for e in extra]
    if name == "psync":
        args[args.index(f"--io_size={wl.read_bytes}")] = f"--io_size={max(wl.record_bytes, wl.read_bytes // qd)}"
    else:
        args.append(f"--iodepth={qd}")
    jobs = fio(args)
    return sum(j["read"]["bw_bytes"] for j in jobs)


def working_fio_engine(probe_dir):
    """The first fio ioengine that reads through the mount (FUSE refuses some)."""
    path = os.path.join(probe_dir, "fio-probe")
    with open(path, "wb") as f:
        f.write(os.urandom(MIB))
    for name, extra in FIO_ENGINES:
        try:
            fio(["--name=probe", f"--filename={path}", "--rw=randread", "--bs=4k", f"--ioengine={name}",
                 "--size=1M", "--io_size=64k", "--iodepth=4"] + [e.format(qd=2) for e in extra])
            return name, extra
        except (RuntimeError, ValueError) as e:
            print(f"  fio ioengine {name} does not work here: {str(e).splitlines()[-1][:100]}")
    return None


def make_inputs(wl, raw):
    """Fresh copies for every method, written on the server side."""
    os.makedirs(raw)
    records = [wl.record(i) for i in range(wl.n)]
    with ffrecord.FileWriter(os.path.join(raw, "data.ffr")) as w:
        w.write_batch(records)
    shutil.copyfile(os.path.join(raw, "data.ffr"), os.path.join(raw, "data-direct.ffr"))
    with open(os.path.join(raw, "fio.bin"), "wb") as f:
        f.write(b"".join(records))
    import lmdb

    env = lmdb.open(os.path.join(raw, "lmdb"), map_size=wl.n * wl.record_bytes * 2 + 64 * MIB)
    with env.begin(write=True) as txn:
        for i, r in enumerate(records):
            txn.put(b"%08d" % i, r)
    env.close()
    os.makedirs(os.path.join(raw, "files"))
    for i, r in enumerate(records):
        with open(os.path.join(raw, "files", f"{i:08d}.bin"), "wb") as f:
            f.write(r)
    os.sync()


def bench_reads(rig, wl, engine):
    raw = os.path.join(rig.raw, f"reads-{wl.name}")
    make_inputs(wl, raw)
    node = os.path.join(rig.node_a, os.path.basename(raw))
    out = {}
    for method, run in [
        ("ffrecord", lambda: bench_ffrecord(wl, os.path.join(node, "data.ffr"), False)),
        ("ffrecord direct", lambda: bench_ffrecord(wl, os.path.join(node, "data-direct.ffr"), True)),
        ("fio", lambda: fio_randread(wl, os.path.join(node, "fio.bin"), engine) if engine else None),
        ("lmdb", lambda: bench_lmdb(wl, os.path.join(node, "lmdb"))),
        ("files", lambda: bench_files(wl, os.path.join(node, "files"))),
    ]:
        drop_caches()
        try:
            out[method] = run()
        except Exception as e:  # noqa: BLE001 - one failing peer must not hide the others
            out[method] = None
            print(f"  {wl.name} {method}: failed: {e}")
    return out


def bench_checkpoint(rig, nbytes):
    import torch

    raw = os.path.join(rig.raw, "ckpt")
    os.makedirs(raw)
    state = {f"t{i}": torch.randn(nbytes // 4 // 8) for i in range(8)}
    size = sum(t.numel() * 4 for t in state.values())
    a, b = (os.path.join(n, "ckpt") for n in (rig.node_a, rig.node_b))
    out = {"bytes": size}
    out["ffrecord save"] = size / timed(lambda: ck.save(state, os.path.join(a, "model")))
    drop_caches()
    out["ffrecord load"] = size / timed(lambda: ck.load(os.path.join(b, "model")))
    try:
        jobs = fio(["--name=seqwrite", f"--filename={os.path.join(a, 'fio-seq')}", "--rw=write", "--bs=1M",
                    f"--size={size}", "--end_fsync=1", "--ioengine=psync"])
        out["fio write"] = jobs[0]["write"]["bw_bytes"]
        drop_caches()
        jobs = fio(["--name=seqread", f"--filename={os.path.join(b, 'fio-seq')}", "--rw=read", "--bs=1M",
                    f"--size={size}", "--invalidate=1", "--ioengine=psync"])
        out["fio read"] = jobs[0]["read"]["bw_bytes"]
    except (RuntimeError, ValueError) as e:
        out["fio write"] = out["fio read"] = None
        print(f"  checkpoint fio: failed: {e}")
    return out


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def mbs(v):
    return f"{v / MIB:8.1f}" if v else "       -"


def report(results):
    print("\nrandom batched reads through node A, cold (MB/s; ratios ffrecord / peer)")
    print(f"{'latency':>8} {'records':>8} {'ffrecord':>8} {'direct':>8} {'fio':>8} {'lmdb':>8} {'files':>8}"
          f"  {'/fio':>6} {'dir/fio':>7} {'/lmdb':>6} {'/files':>6}")
    for lat, r in results.items():
        for name, m in r["reads"].items():
            f = m["ffrecord"]
            print(f"{lat:>6}ms {name:>8} {mbs(f)} {mbs(m['ffrecord direct'])} {mbs(m['fio'])} {mbs(m['lmdb'])}"
                  f" {mbs(m['files'])}  {ratio(f, m['fio']):>6} {ratio(m['ffrecord direct'], m['fio']):>7}"
                  f" {ratio(f, m['lmdb']):>6} {ratio(f, m['files']):>6}")
    print("\ncheckpoint through the mount (MB/s; save on node A, load on node B)")
    print(f"{'latency':>8} {'save':>8} {'fio wr':>8} {'load':>8} {'fio rd':>8}  {'save/fio':>8} {'load/fio':>8}")
    for lat, r in results.items():
        c = r["checkpoint"]
        print(f"{lat:>6}ms {mbs(c['ffrecord save'])} {mbs(c['fio write'])} {mbs(c['ffrecord load'])}"
              f" {mbs(c['fio read'])}  {ratio(c['ffrecord save'], c['fio write']):>8}"
              f" {ratio(c['ffrecord load'], c['fio read']):>8}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    ap.add_argument("--latencies", default="0,0.2,1", help="added ms per operation, comma separated")
    args = ap.parse_args(argv)
    reason = unavailable_reason(latency=True)
    if reason:
        ap.exit(2, f"bench_netfs: {reason}\n")
    if shutil.which("fio") is None:
        ap.exit(2, "bench_netfs: fio is not installed (apt-get install fio)\n")
    total = 4 * MIB if args.quick else 256 * MIB
    workloads = [Workload("4KiB", 4 * KIB, total // 4, 64), Workload("128KiB", 128 * KIB, total, 16)]
    results = {}
    for lat in [float(x) for x in args.latencies.split(",")]:
        print(f"== {lat} ms added latency")
        with NetFSRig(latency_ms=lat) as rig:
            engine = working_fio_engine(rig.node_a)
            print(f"  fio ioengine through the mount: {engine[0] if engine else 'none works'}")
            results[f"{lat:g}"] = {
                "fio_ioengine": engine[0] if engine else None,
                "reads": {wl.name: bench_reads(rig, wl, engine) for wl in workloads},
                "checkpoint": bench_checkpoint(rig, 8 * MIB if args.quick else 512 * MIB),
            }
    report(results)
    out = os.path.join(HERE, "results", "netfs-quick.json" if args.quick else "netfs.json")
    with open(out, "w") as f:
        json.dump({"bytes_per_workload": total, "dropped_page_cache": drop_caches(), "results": results}, f, indent=1)
    print(f"\nwrote {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
