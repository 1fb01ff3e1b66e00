"""Random batch reads of zstd-compressed records against the codec's own speed.

Builds JSON-like records of about 4 KiB, writes them as ffrecord files at
zstd level 3 (with and without a trained dictionary), then measures, side by
side in one run:

- ffrecord: random batches through ``FileReader.read`` (warm page cache), in
  decoded MB/s, with the decode threads in use (``FFRECORD_DECODE_THREADS``,
  default the CPUs the process may use);
- zstd -b: the ``zstd`` command's own benchmark over the same records, each
  record its own frame (the records are written as files: ``zstd -b`` compresses
  each file separately), with the same level and dictionary; its decode MB/s
  is one thread's, so the target is ``0.8 x zstd MB/s x threads``;
- MDS: Mosaic Streaming reading zstd shards of the same records in random
  batches from an empty cache (it decompresses whole shards into the cache
  as it goes), in the same decoded MB/s.

It prints each figure and the ratios. ``--decoders`` adds the micro-benchmark
that chose where batches are decoded: the core's decoder (through
``FileReader.read``) against zstandard's batch API
(``multi_decompress_to_buffer`` with the same threads, over frames already in
memory, so it reads nothing) and a plain per-record loop.

    python benchmarks/bench_compressed.py [--records 20000] [--batch 256] [--quick] [--decoders]

Ratios only mean something within one run on a quiet machine.
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ffrecord  # noqa: E402
from ffrecord.codec import train_dictionary  # noqa: E402

LEVEL = 3


def make_records(n, seed=0):
    """JSON documents of about 4 KiB: keys repeat, values vary (zstd ~3-5x)."""
    rng = random.Random(seed)
    words = ("image label caption width height source license author tags score train valid the of and "
             "a photo of with on in red blue green small large street city dog cat tree car").split()
    out = []
    for i in range(n):
        doc = {"id": i, "url": f"https://example.org/{rng.getrandbits(48):x}.jpg", "items": []}
        while len(json.dumps(doc)) < 4000:
            doc["items"].append({
                "caption": " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))),
                "score": round(rng.random(), 4),
                "box": [rng.randint(0, 640) for _ in range(4)],
                "tags": rng.sample(words, 3),
            })
        out.append(json.dumps(doc).encode())
    return out


def write_ffrecord(path, records, dictionary):
    with ffrecord.FileWriter(path, compression=f"zstd:{LEVEL}", zstd_dict=dictionary) as w:
        w.write_batch(records)


def random_batches(n, batch, count, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, batch) for _ in range(count)]


def best_rate(fn, batches, decoded_bytes, repeat):
    """Decoded MB/s of the best of ``repeat`` passes over ``batches``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t)
    return decoded_bytes / best / 1e6


def ffrecord_rate(path, batches, decoded_bytes, repeat):
    with ffrecord.FileReader(path) as r:
        r.read(batches[0])  # warm: the page cache and the decoder's threads
        return best_rate(r.read, batches, decoded_bytes, repeat)


def zstd_cli_rate(records, dictionary, workdir, seconds):
    """Decode MB/s that ``zstd -b`` reports for the records, one frame each (one thread)."""
    zstd = shutil.which("zstd")
    if zstd is None:
        return None
    folder = os.path.join(workdir, "zstd-b")
    os.makedirs(folder, exist_ok=True)
    for i, rec in enumerate(records):
        with open(os.path.join(folder, f"{i:07d}.json"), "wb") as f:
            f.write(rec)
    cmd = [zstd, f"-b{LEVEL}", f"-i{seconds}", "-r", folder]
    if dictionary:
        dict_path = os.path.join(workdir, "zstd.dict")
        with open(dict_path, "wb") as f:
            f.write(dictionary)
        cmd += ["-D", dict_path]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # The last progress line ends "..., C MB/s, D MB/s" (compress, decompress).
    rates = re.findall(r"([\d.]+) MB/s", (res.stderr + res.stdout).replace("\r", "\n"))
    shutil.rmtree(folder)
    return float(rates[-1]) if len(rates) >= 2 else None


def mds_rate(records, workdir, batches, decoded_bytes):
    """Decoded MB/s of MDS reading the batches from zstd shards, starting from an empty cache."""
    try:
        from compare import clean_mds_shared_memory, import_streaming

        MDSWriter, StreamingDataset = import_streaming()
    except ImportError as e:
        print(f"(MDS skipped: {e})")
        return None
    remote = os.path.join(workdir, "mds-zstd")
    local = os.path.join(workdir, "mds-cache")
    with MDSWriter(out=remote, columns={"data": "bytes"}, compression=f"zstd:{LEVEL}", size_limit=1 << 26) as w:
        for rec in records:
            w.write({"data": rec})
    clean_mds_shared_memory()
    ds = StreamingDataset(remote=remote, local=local, shuffle=False, batch_size=len(batches[0]))
    t = time.perf_counter()
    for b in batches:
        [ds.get_item(int(i))["data"] for i in b]
    seconds = time.perf_counter() - t
    del ds
    clean_mds_shared_memory()
    return decoded_bytes / seconds / 1e6


def decoder_rates(path, records, dictionary, batches, decoded_bytes, threads, repeat):
    """The decode paths side by side: MB/s each."""
    import zstandard

    with ffrecord.FileReader(path) as r:
        offsets = r.get_offsets()
        lengths = r.lengths(range(r.n))
    with open(path, "rb") as f:
        blob = f.read()
    frames = [blob[int(o):int(o) + int(n)] for o, n in zip(offsets[:-1], lengths)]
    dict_data = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    dctx = zstandard.ZstdDecompressor(dict_data=dict_data)
    sizes = np.array([len(rec) for rec in records], dtype=np.uint64)

    def multi(b):
        dctx.multi_decompress_to_buffer([frames[i] for i in b], decompressed_sizes=sizes[b].tobytes(),
                                        threads=threads)

    def loop(b):
        [dctx.decompress(frames[i]) for i in b]

    return {
        "core (FileReader.read)": ffrecord_rate(path, batches, decoded_bytes, repeat),
        f"zstandard multi_decompress_to_buffer, threads={threads}": best_rate(multi, batches, decoded_bytes, repeat),
        "zstandard, one record at a time": best_rate(loop, batches, decoded_bytes, repeat),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--zstd-seconds", type=int, default=3, help="zstd -b -i: seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="a small smoke run (figures meaningless)")
    ap.add_argument("--decoders", action="store_true", help="also compare the decode paths")
    ap.add_argument("--no-mds", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.records, args.batches, args.repeat, args.zstd_seconds = 1000, 10, 1, 1

    threads = int(os.environ.get("FFRECORD_DECODE_THREADS", "0")) or len(os.sched_getaffinity(0))
    records = make_records(args.records)
    batches = random_batches(len(records), args.batch, args.batches)
    sizes = np.array([len(r) for r in records])
    decoded_bytes = int(sum(sizes[b].sum() for b in batches))
    dictionary = train_dictionary(records[: min(len(records), 2000)], size=64 << 10)
    print(f"{len(records)} records of {sizes.mean() / 1024:.1f} KiB on average, zstd level {LEVEL}, "
          f"batches of {args.batch}, {threads} decode thread(s)")

    workdir = tempfile.mkdtemp(prefix="ffr-bench-zstd-")
    try:
        mds = None if args.no_mds else mds_rate(records, workdir, batches, decoded_bytes)
        for label, dict_bytes in (("no dictionary", None), ("dictionary", dictionary)):
            path = os.path.join(workdir, f"{label.replace(' ', '-')}.ffr")
            write_ffrecord(path, records, dict_bytes)
            ours = ffrecord_rate(path, batches, decoded_bytes, args.repeat)
            codec = zstd_cli_rate(records, dict_bytes, workdir, args.zstd_seconds)
            print(f"\n[{label}] ffrecord FileReader.read: {ours:.0f} MB/s "
                  f"({ours * 1e6 / sizes.mean() / 1e3:.0f} k records/s)")
            if codec:
                print(f"  zstd -b{LEVEL} decode: {codec:.0f} MB/s on one thread; x {threads} threads = "
                      f"{codec * threads:.0f} MB/s; ratio ffrecord / (zstd x threads) = "
                      f"{ours / (codec * threads):.2f} (target >= 0.8)")
            else:
                print("  (zstd -b not measured: install the zstd command)")
            if mds and label == "no dictionary":
                print(f"  MDS, zstd:{LEVEL} shards, empty cache: {mds:.0f} MB/s; ratio ffrecord / MDS = {ours / mds:.2f}")
            if args.decoders:
                rates = decoder_rates(path, records, dict_bytes, batches, decoded_bytes, threads, args.repeat)
                base = rates["core (FileReader.read)"]
                for name, rate in rates.items():
                    print(f"  decoder {name}: {rate:.0f} MB/s ({rate / base:.2f}x the core)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
