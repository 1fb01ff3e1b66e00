"""Writing Parquet rows to ffrecord through Ray Data and Spark, against each
engine writing its own peer format from the same rows.

Makes Parquet files of about ``--size`` bytes (rows: id string, image binary,
label int64, caption string), then times, each from a fresh read of the same
Parquet files:

- Ray Data: ``ffrecord.ray.write_ffrecord`` against ``Dataset.write_webdataset``
  (its samples take bytes and strings only, so the label is cast to text first)
  and ``Dataset.write_tfrecords``;
- Spark: ``ffrecord.spark.write_ffrecord`` against ``DataFrame.write.parquet``
  and, when it imports, Mosaic Streaming's Spark writer
  (``streaming.base.converters.dataframe_to_mds``).

Each engine runs locally with ``--workers`` CPUs. Every writer first writes one
Parquet file untimed (the engines compile and start workers on first use), then
the whole input ``--rounds`` times, the writers taking turns in a rotating order.
It prints the median seconds and MB/s of Parquet input per writer, and
ffrecord's ratio to each peer (> 1: ffrecord is faster). Ratios only mean
something within one run on a quiet machine.

    python benchmarks/bench_engines.py [--size 1G] [--workers N] [--rounds 3] [--only ray|spark] [--quick]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def parse_size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_parquet(folder, size, file_bytes=64 << 20, seed=0):
    """Parquet files of about ``size`` bytes of rows; returns (row count, bytes on disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    words = np.array("a photo of the red blue dog cat on in with street tree car small large".split())
    rows = written = part = 0
    while written < size:
        n = max(1, min(file_bytes, size - written) // 4400)  # ~4 KiB image + caption per row
        images = [rng.bytes(int(k)) for k in rng.integers(2048, 6144, n)]
        captions = [" ".join(rng.choice(words, int(k))) for k in rng.integers(3, 30, n)]
        table = pa.table({
            "id": [f"row-{rows + i:09d}" for i in range(n)],
            "image": pa.array(images, pa.binary()),
            "label": pa.array(rng.integers(0, 1000, n), pa.int64()),
            "caption": captions,
        })
        path = os.path.join(folder, f"part-{part:05d}.parquet")
        pq.write_table(table, path, compression="none")
        written += sum(len(x) for x in images) + sum(len(c) for c in captions) + 30 * n
        rows += n
        part += 1
    on_disk = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    return rows, on_disk


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peer_timed(name, fn):
    """Seconds for a peer writer, or None (saying why) where it cannot run here,
    e.g. Ray's TFRecord writer without tensorflow."""
    try:
        return timed(fn)
    except Exception as e:  # a missing optional dependency deep inside the engine
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        print(f"({name} not measured: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})")
        return None


def report(engine, results, nbytes):
    """``results``: name -> list of seconds per round (None: not measured)."""
    medians = {name: (statistics.median(t) if t else None) for name, t in results.items()}
    ours = medians.get("ffrecord")
    print(f"\n[{engine}]")
    for name, seconds in medians.items():
        if seconds is None:
            print(f"  {name}: not measured")
            continue
        rounds = ", ".join(f"{t:.2f}" for t in results[name])
        line = f"  {name}: {seconds:.2f} s (median; rounds {rounds}), {nbytes / seconds / 1e6:.0f} MB/s of Parquet input"
        if name != "ffrecord" and ours:
            line += f"; ffrecord / {name} = {seconds / ours:.2f}x"
        print(line)


def run_rounds(writers, src, warmup_src, out, rounds):
    """Times each writer ``rounds`` times, in a rotating order, after one untimed
    write of ``warmup_src`` each (the engines compile and start their workers on
    first use). ``writers``: name -> fn(source, dst). Returns name -> [seconds] (None
    for a writer that cannot run here)."""
    results = {}
    for name, fn in writers.items():
        dst = os.path.join(out, f"warmup-{name}")
        results[name] = [] if peer_timed(name, lambda: fn(warmup_src, dst)) is not None else None
        shutil.rmtree(dst, ignore_errors=True)
    names = [n for n in writers if results[n] is not None]
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            dst = os.path.join(out, name)
            results[name].append(timed(lambda: writers[name](src, dst)))
            shutil.rmtree(dst, ignore_errors=True)
    return results


def bench_ray(src, warmup_src, out, workers, rounds):
    import ray

    from ffrecord.ray import write_ffrecord

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}})
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        read = ray.data.read_parquet  # a fresh read for each write
        # Start-up outside the timings: Ray's worker processes.
        ray.data.range(workers, override_num_blocks=workers).map_batches(lambda b: b).materialize()
        # WebDataset samples hold bytes or strings only: the label goes as text (one
        # vectorised cast per block, the least that writer needs).
        as_text = lambda t: t.set_column(t.schema.get_field_index("label"), "label",  # noqa: E731
                                         t.column("label").cast("string"))
        writers = {
            "ffrecord": lambda s, d: write_ffrecord(read(s), d, key_column="id"),
            "webdataset": lambda s, d: read(s).map_batches(as_text, batch_format="pyarrow").write_webdataset(d),
            "tfrecords": lambda s, d: read(s).write_tfrecords(d),
        }
        results = run_rounds(writers, src, warmup_src, out, rounds)
        return results
    finally:
        ray.shutdown()


def spark_mds_writer():
    """MDS's Spark writer, or None where mosaicml-streaming does not import as
    the executors' Python workers import it (the whole package)."""
    try:
        from streaming.base.converters import dataframe_to_mds
    except Exception as e:  # any import failure: compared with Parquet instead
        print(f"(MDS's Spark writer does not import, Spark compared with Parquet only: {type(e).__name__}: {e})")
        return None
    return dataframe_to_mds


def bench_spark(src, warmup_src, out, workers, rounds):
    from pyspark.sql import SparkSession

    from ffrecord.spark import write_ffrecord

    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    spark = (SparkSession.builder.master(f"local[{workers}]").appName("ffrecord-bench-engines")
             .config("spark.ui.enabled", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        read = spark.read.parquet
        # Start-up outside the timings: the JVM's first read and the Python workers.
        read(src).count()
        spark.sparkContext.parallelize(range(workers), workers).map(lambda x: x).count()
        writers = {
            "ffrecord": lambda s, d: write_ffrecord(read(s), d, key_column="id"),
            "parquet": lambda s, d: read(s).write.parquet(d),
        }
        to_mds = spark_mds_writer()
        if to_mds is not None:
            columns = {"id": "str", "image": "bytes", "label": "int64", "caption": "str"}
            writers["mds"] = lambda s, d: to_mds(read(s), merge_index=True, mds_kwargs={"out": d, "columns": columns})
        results = run_rounds(writers, src, warmup_src, out, rounds)
        return results
    finally:
        spark.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="Parquet input size (e.g. 1G, 200M)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--only", choices=["ray", "spark"])
    ap.add_argument("--rounds", type=int, default=3, help="timed writes per writer (median reported)")
    ap.add_argument("--quick", action="store_true", help="about 20 MB: a smoke run (figures meaningless)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args(argv)
    size = parse_size("20M" if args.quick else args.size)

    workdir = tempfile.mkdtemp(prefix="ffr-bench-engines-", dir=args.dir)
    try:
        src = os.path.join(workdir, "parquet")
        rows, nbytes = make_parquet(src, size, file_bytes=min(64 << 20, max(1 << 20, size // 8)))
        print(f"{rows} rows, {nbytes / 1e6:.0f} MB of Parquet in {len(os.listdir(src))} files; "
              f"{args.workers} worker(s)")
        for engine, bench in (("ray", bench_ray), ("spark", bench_spark)):
            if args.only not in (None, engine):
                continue
            out = os.path.join(workdir, engine)
            os.makedirs(out)
            try:
                warmup_src = os.path.join(src, sorted(os.listdir(src))[0])  # one file
                results = bench(src, warmup_src, out, args.workers, 1 if args.quick else args.rounds)
            except ImportError as e:
                print(f"\n[{engine}] skipped: {e}")
                continue
            report(engine, results, nbytes)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
