"""The main job, end to end, on a small dataset this module makes itself.

    python -m ffrecord.demo [--workdir demo_data] [--samples 20000] [--steps 40]

1. make: a folder of small sample files (a label byte + a 32x32 uint8 image
   drawn from a per-class pattern plus noise), one file per sample;
2. convert: ``ffrecord convert --from folder`` into a directory of shards
   with an ``index.json`` manifest (2 worker processes);
3. validate: ``ffrecord validate`` checks every header, index and record;
4. read: random batches through ``FileReader`` (records/s, MB/s), then the
   same with ``prefetch``;
5. train: a small classifier through ``ffrecord.torch.RecordDataset`` and the
   resumable ``ffrecord.torch.DataLoader`` (samples/s, loss);
6. checkpoint: model, optimizer, loader position, RNG states and dataset
   fingerprint saved as one atomic checkpoint, reloaded into fresh objects and
   compared; the resumed loader continues with the exact next batch.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

import ffrecord

SIDE = 32
CLASSES = 10


def log(msg):
    print(msg, flush=True)


def make_source(folder, samples, seed=0):
    """Writes `samples` files under folder/class_k/; returns total bytes."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (CLASSES, SIDE * SIDE), dtype=np.uint8)
    total = 0
    for c in range(CLASSES):
        os.makedirs(os.path.join(folder, f"class_{c}"), exist_ok=True)
    labels = rng.integers(0, CLASSES, samples)
    for i, label in enumerate(labels):
        noise = rng.integers(0, 64, SIDE * SIDE, dtype=np.uint8)
        image = (patterns[label] // 2 + noise).astype(np.uint8)
        data = bytes([label]) + image.tobytes()
        with open(os.path.join(folder, f"class_{label}", f"{i:06d}.bin"), "wb") as f:
            f.write(data)
        total += len(data)
    return total


def run_cli(*args):
    cmd = [sys.executable, "-m", "ffrecord.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"demo: '{' '.join(['ffrecord', *args])}' failed with exit code {res.returncode}")
    return res.stdout


def decode_sample(record):
    """A record -> (image tensor in [0, 1], label)."""
    import torch

    label = int(record[0])
    image = torch.from_numpy(record[1:].astype(np.float32)).div_(255.0)
    return image, label


def read_throughput(dataset, seconds=2.0, batch=256):
    r = ffrecord.FileReader(dataset)
    rng = np.random.default_rng(1)
    nrec = nbytes = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = r.read(rng.integers(0, r.n, batch))
        nrec += len(out)
        nbytes += sum(a.size for a in out)
    dt = time.perf_counter() - t0
    batches = [rng.integers(0, r.n, batch) for _ in range(max(1, nrec // batch))]
    t1 = time.perf_counter()
    pre = sum(len(b) for b in r.prefetch(batches, depth=4))
    dt_pre = time.perf_counter() - t1
    r.close()
    return nrec / dt, nbytes / dt / 1e6, pre / dt_pre


def train(dataset, steps, workdir):
    import torch

    from ffrecord.checkpoint import load, restore_training_state, save, training_state
    from ffrecord.torch import DataLoader, RecordDataset

    torch.manual_seed(0)
    ds = RecordDataset(dataset, decode=decode_sample)
    loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=2, seed=7)
    model = torch.nn.Sequential(torch.nn.Linear(SIDE * SIDE, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, seen = [], 0
    it = iter(loader)
    t0 = None
    for step in range(steps):
        images, labels = next(it)
        if t0 is None:  # time from the first batch on: worker start-up is not throughput
            t0 = time.perf_counter()
        else:
            seen += len(labels)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_dt = time.perf_counter() - t0
    log(f"train      {steps} steps, {seen / train_dt:,.0f} samples/s through DataLoader(num_workers=2); "
        f"loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}")

    # One atomic checkpoint of everything needed to resume mid-epoch.
    ckpt = os.path.join(workdir, "checkpoint")
    state = training_state(model=model, optimizer=opt, loader=loader, dataset=dataset, step=steps)
    t0 = time.perf_counter()
    save(state, ckpt)
    save_dt = time.perf_counter() - t0
    next_batch = next(it)  # what the uninterrupted run trains on next
    del it

    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(ckpt) for f in fs)
    t0 = time.perf_counter()
    loaded = load(ckpt)
    load_dt = time.perf_counter() - t0
    model2 = torch.nn.Sequential(torch.nn.Linear(SIDE * SIDE, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    loader2 = DataLoader(RecordDataset(dataset, decode=decode_sample), batch_size=128, shuffle=True,
                         num_workers=2, seed=7)
    restore_training_state(loaded, model=model2, optimizer=opt2, loader=loader2, dataset=dataset)
    same_params = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    resumed = next(iter(loader2))
    same_batch = torch.equal(resumed[0], next_batch[0]) and torch.equal(resumed[1], next_batch[1])
    if not (same_params and same_batch and loaded["step"] == steps):
        raise SystemExit("demo: the reloaded checkpoint does not match the saved state")
    log(f"checkpoint {size / 1e6:.2f} MB saved (fsynced, atomic) in {save_dt * 1e3:.0f} ms, "
        f"loaded in {load_dt * 1e3:.0f} ms; parameters identical, resumed loader continues with the exact next batch")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ffrecord.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="demo_data", help="where the demo writes (default: ./demo_data)")
    ap.add_argument("--samples", type=int, default=20000, help="samples in the demo dataset")
    ap.add_argument("--steps", type=int, default=40, help="training steps")
    args = ap.parse_args(argv)

    src = os.path.join(args.workdir, "source")
    dst = os.path.join(args.workdir, "dataset")
    log(f"ffrecord {ffrecord.__version__} demo in {args.workdir}/")
    shutil.rmtree(args.workdir, ignore_errors=True)

    t0 = time.perf_counter()
    total = make_source(src, args.samples)
    log(f"make       {args.samples:,} sample files, {total / 1e6:.1f} MB, in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    run_cli("convert", src, dst, "--from", "folder", "--records-per-shard", "5000", "--workers", "2", "--quiet")
    dt = time.perf_counter() - t0
    shards = sorted(n for n in os.listdir(dst) if n.endswith(".ffr"))
    log(f"convert    {len(shards)} shards + index.json in {dt:.1f} s ({total / dt / 1e6:.1f} MB/s, 2 workers)")

    t0 = time.perf_counter()
    run_cli("validate", dst, "--quiet")
    log(f"validate   every header, index and record checksum sound ({time.perf_counter() - t0:.1f} s)")

    rps, mbps, pre = read_throughput(dst)
    log(f"read       random batches of 256: {rps:,.0f} records/s, {mbps:,.0f} MB/s; with prefetch: {pre:,.0f} records/s")

    train(dst, args.steps, args.workdir)
    log("demo done")


if __name__ == "__main__":
    main()
