"""Whole epochs through a DataLoader with workers: a new set of worker
processes every epoch (torch's default) against workers kept between epochs
(``persistent_workers=True``).

A new worker opens the dataset's files again and touches each part of a
file mapping for the first time, which costs a page-table fault per 64 KiB;
it also has to start. Kept workers pay both once. The loader is ffrecord's
``RecordDataset`` (raw records) through the plain torch DataLoader, 2 workers,
``shuffle=True``; each setting runs one untimed epoch, then --epochs timed
ones, and the two settings alternate --repeats times.

Uses the datasets ``bench_dataloader.py`` writes (run it first, or
``--quick`` there), under --workdir.

    python benchmarks/bench_epochs.py --small 60000 --image 4000
"""

import argparse
import os
import statistics
import sys
import time

from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import ffrecord.torch as fft  # noqa: E402
from bench_dataloader import keep, warm  # noqa: E402


def rate(path, batch, workers, epochs, persistent):
    """Samples per second over ``epochs`` whole epochs after an untimed one."""
    loader = DataLoader(fft.RecordDataset(path), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, collate_fn=keep, multiprocessing_context="fork",
                        persistent_workers=persistent)
    for _ in loader:
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            count += len(b)
    return count / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(HERE, "out", "dataloader"))
    ap.add_argument("--small", type=int, default=100_000, help="records in W-small, as bench_dataloader wrote it")
    ap.add_argument("--image", type=int, default=5_000, help="records in W-image, as bench_dataloader wrote it")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("| workload | records | workers | persistent_workers | samples/s (median) | samples/s (all runs) |")
    print("|---|---:|---:|---|---:|---|")
    for name, n, batch in (("W-small", args.small, 256), ("W-image", args.image, 64)):
        path = os.path.join(args.workdir, f"{name}-{n}", "data.ffr")
        if not os.path.exists(path):
            raise SystemExit(f"{path}: missing; run bench_dataloader.py with --small {args.small} --image {args.image}")
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for persistent in (False, True):
                warm([path])
                runs[persistent].append(rate(path, batch, args.workers, args.epochs, persistent))
        for persistent, rates in runs.items():
            shown = ", ".join(f"{r:,.0f}" for r in rates)
            print(f"| {name} | {n} | {args.workers} | {persistent} | {statistics.median(rates):,.0f} | {shown} |",
                  flush=True)


if __name__ == "__main__":
    main()
