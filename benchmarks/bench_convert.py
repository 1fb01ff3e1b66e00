"""Throughput of `ffrecord convert` and `ffrecord validate`.

Builds one set of records (a mix of text-like and random bytes, so zstd has
something to do), stores it as a folder of files and as an LMDB environment,
then times:

- convert from the folder and from LMDB, with 1 and 2 worker processes
  (uncompressed, and zstd:3 from the folder);
- validate of the converted dataset (every record checksum plus the shard
  CRC32C), with 1 and 2 workers.

Each operation runs the ``ffrecord`` command in this process (as
``ffrecord.cli.main([...])``, so exactly what the command does, minus the
interpreter start). Throughput is source bytes (convert) or dataset bytes
(validate) per second, best of ``--repeat`` runs, warm page cache (the sources
were just written); shards are fsynced, as always.
Run it as a script:

    python benchmarks/bench_convert.py [--records 1600] [--record-kib 64] [--repeat 3]
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffrecord.cli import main as ffrecord_command  # noqa: E402
from ffrecord.tools import pool  # noqa: E402


def make_records(n, size, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array([w.encode() for w in "the of and to in is was for on that with as by at from image label "
                      "train sample record shard data batch epoch".split()], dtype=object)
    out = []
    for _ in range(n):
        text = b" ".join(rng.choice(words, size // 6))[: size // 2]
        out.append(text + rng.bytes(size - len(text)))
    return out


def write_folder(root, records):
    os.makedirs(root)
    for i, rec in enumerate(records):
        sub = os.path.join(root, f"{i % 16:02d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{i:07d}.bin"), "wb") as f:
            f.write(rec)


def write_lmdb(path, records):
    import lmdb

    env = lmdb.open(path, map_size=4 * sum(map(len, records)) + (64 << 20))
    with env.begin(write=True) as txn:
        for i, rec in enumerate(records):
            txn.put(f"{i:09d}".encode(), rec)
    env.close()


def _nothing(job, report):
    return job


def best_of(repeat, fn):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1600)
    ap.add_argument("--record-kib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to build the data (default: a temporary directory)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="ffr-bench-convert-", dir=args.workdir)
    try:
        records = make_records(args.records, args.record_kib * 1024)
        raw = sum(map(len, records))
        folder, db = os.path.join(work, "folder"), os.path.join(work, "db")
        write_folder(folder, records)
        write_lmdb(db, records)
        del records

        rows = []
        dst = os.path.join(work, "out")

        def command(*argv):
            status = ffrecord_command([str(a) for a in argv] + ["--quiet", "--rank", "0", "--world-size", "1"])
            if status not in (0,):
                raise SystemExit(f"ffrecord {' '.join(map(str, argv))} failed with status {status}")

        def run_convert(src, kind, workers, compression=None):
            def once():
                shutil.rmtree(dst, ignore_errors=True)
                extra = ["--compression", compression] if compression else []
                command("convert", src, dst, "--from", kind, "--shard-size", "16MiB", "--workers", workers, *extra)
            return best_of(args.repeat, once)

        for kind, src in (("folder", folder), ("lmdb", db)):
            for workers in (1, 2):
                t = run_convert(src, kind, workers)
                rows.append((f"convert --from {kind}", workers, raw / t / 1e6))
        for workers in (1, 2):
            t = run_convert(folder, "folder", workers, "zstd:3")
            rows.append(("convert --from folder --compression zstd:3", workers, raw / t / 1e6))

        shutil.rmtree(dst, ignore_errors=True)
        command("convert", folder, dst, "--from", "folder", "--shard-size", "16MiB")
        size = sum(os.path.getsize(os.path.join(dst, n)) for n in os.listdir(dst) if n.endswith(".ffr"))
        for workers in (1, 2):
            t = best_of(args.repeat, lambda: command("validate", dst, "--workers", workers))
            rows.append(("validate (records + shard CRC32C)", workers, size / t / 1e6))

        startup = {m: best_of(args.repeat, lambda: list(pool.run(_nothing, range(2), workers=2, start_method=m)))
                   for m in ("fork", "spawn")}
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"data: {args.records} records x {args.record_kib} KiB = {raw / 1e6:.0f} MB, 16 MiB shards, "
              f"warm page cache, best of {args.repeat}")
        print(f"starting 2 worker processes and running 2 empty jobs: {startup['fork']:.3f} s with fork "
              f"(what the command uses), {startup['spawn']:.3f} s with spawn (the library default)")
        print()
        print("| operation | workers | MB/s |")
        print("|---|---:|---:|")
        for name, workers, rate in rows:
            print(f"| {name} | {workers} | {rate:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
