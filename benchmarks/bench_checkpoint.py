"""Checkpoint save/load: ffrecord.checkpoint vs torch.save, safetensors, DCP, and fio.

Workloads (all fp32, contiguous, in host memory):
  gpt2m-like   the state dict of a GPT-2-medium-shaped model (d_model 1024,
               vocab 50257, context 1024) with --layers transformer blocks,
               plus an Adam-like optimizer state (exp_avg, exp_avg_sq, step
               per parameter): three times the model's bytes
  5000-small   5,000 tensors of 1..2048 float32 elements

Methods:
  ffrecord     ffrecord.checkpoint.save / load (save is durable when it returns)
  torch        torch.save to one file (+ fsync for "durable") / torch.load(weights_only=True)
  safetensors  safetensors.torch.save_file (+ fsync) / load_file; the optimizer
               state flattened to named tensors, its param_groups in the metadata
  dcp          torch.distributed.checkpoint FileSystemWriter (fsyncs) /
               FileSystemReader into preallocated tensors (no_dist)
  fio          sequential write (O_DIRECT, fsync at the end) and read (O_DIRECT,
               cold) of one file of the same size, bs=8m, iodepth=4: the ceiling

Columns: "returned" is the time until the call returns, "durable" until the
data is fsynced; loads run "warm" (page cache filled by a previous load) and
"cold" (every file of the checkpoint dropped from the page cache with
posix_fadvise(DONTNEED) after an fsync); every load ends by reading one byte
of each page of the result (safetensors maps the file and reads lazily, so
it pays its reads there). Each figure is the median of --repeats runs. async_save is measured separately: the time the caller is
blocked, and the time until the future resolves.

    python benchmarks/bench_checkpoint.py                 # defaults: 4 layers (~1.24 GB)
    python benchmarks/bench_checkpoint.py --layers 1 --repeats 1   # quick
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ffrecord.checkpoint as ck  # noqa: E402

warnings.filterwarnings("ignore", message="torch.distributed is disabled")
GB = 1e9


# ---- workloads ----------------------------------------------------------------

def gpt2_medium_like(layers, seed=0):
    """(model state dict, Adam-like optimizer state dict)."""
    g = torch.Generator().manual_seed(seed)
    d, vocab, ctx = 1024, 50257, 1024

    def p(*shape):
        return torch.randn(*shape, generator=g)

    sd = {"transformer.wte.weight": p(vocab, d), "transformer.wpe.weight": p(ctx, d)}
    for i in range(layers):
        pre = f"transformer.h.{i}."
        sd.update({
            pre + "ln_1.weight": p(d), pre + "ln_1.bias": p(d),
            pre + "attn.c_attn.weight": p(d, 3 * d), pre + "attn.c_attn.bias": p(3 * d),
            pre + "attn.c_proj.weight": p(d, d), pre + "attn.c_proj.bias": p(d),
            pre + "ln_2.weight": p(d), pre + "ln_2.bias": p(d),
            pre + "mlp.c_fc.weight": p(d, 4 * d), pre + "mlp.c_fc.bias": p(4 * d),
            pre + "mlp.c_proj.weight": p(4 * d, d), pre + "mlp.c_proj.bias": p(d),
        })
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = p(d), p(d)
    state = {
        i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn_like(t), "exp_avg_sq": torch.rand_like(t)}
        for i, t in enumerate(sd.values())
    }
    groups = [{"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False,
               "foreach": None, "maximize": False, "capturable": False, "differentiable": False,
               "fused": None, "params": list(range(len(sd)))}]
    return {"model": sd, "optimizer": {"state": state, "param_groups": groups}}


def small_tensors(n=5000, seed=1):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 2049, (n,), generator=g).tolist()
    return {"model": {f"t{i}": torch.randn(s, generator=g) for i, s in enumerate(sizes)}}


def tensor_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def flat_tensors(state):
    """safetensors needs one flat dict of tensors; the rest goes to its metadata."""
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    meta = {}
    if "optimizer" in state:
        for i, s in state["optimizer"]["state"].items():
            for k, v in s.items():
                flat[f"optimizer.{i}.{k}"] = v
        meta["param_groups"] = json.dumps(state["optimizer"]["param_groups"])
    return flat, meta


# ---- file system helpers ---------------------------------------------------------

def fsync_tree(path):
    paths = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def drop_cache(path):
    """Evicts every file under ``path`` from the page cache (clean pages only: fsync first)."""
    fsync_tree(path)
    paths = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def disk_usage(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


# ---- methods -----------------------------------------------------------------------

class Ffrecord:
    name = "ffrecord"

    def save(self, state, path):
        ck.save(state, path)
        return None  # durable when it returns

    def load(self, path, like):
        return ck.load(path)


class TorchSave:
    name = "torch.save"

    def save(self, state, path):
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            returned = time.perf_counter()
            os.fsync(f.fileno())
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        return returned

    def load(self, path, like):
        return torch.load(path, weights_only=True)


class Safetensors:
    name = "safetensors"

    def save(self, state, path):
        from safetensors.torch import save_file

        flat, meta = flat_tensors(state)
        save_file(flat, path, metadata=meta)
        returned = time.perf_counter()
        fsync_tree(path)
        return returned

    def load(self, path, like):
        from safetensors.torch import load_file

        return load_file(path)


class Dcp:
    name = "dcp"

    def save(self, state, path):
        import torch.distributed.checkpoint as dcp

        dcp.save(state, storage_writer=dcp.FileSystemWriter(path, sync_files=True), no_dist=True)
        return None

    def load(self, path, like):
        import torch.distributed.checkpoint as dcp

        dcp.load(like, storage_reader=dcp.FileSystemReader(path), no_dist=True)
        return like


def empty_like_state(state):
    if isinstance(state, torch.Tensor):
        return torch.empty_like(state)
    if isinstance(state, dict):
        return {k: empty_like_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [empty_like_state(v) for v in state]
    return state


def touch(obj):
    """Reads one byte of every page of every loaded tensor: a load that maps the
    file lazily (safetensors) pays for its reads here, as a training step would."""
    for t in _leaves(obj):
        if t.numel():
            t.reshape(-1).view(torch.uint8)[::4096].sum()


def run_method(method, state, workdir, repeats):
    path = os.path.join(workdir, f"ckpt-{method.name}")
    saves_ret, saves_dur, warm, cold = [], [], [], []
    like = empty_like_state(state) if isinstance(method, Dcp) else None
    for _ in range(repeats):
        remove(path)
        t0 = time.perf_counter()
        returned = method.save(state, path)
        t1 = time.perf_counter()
        saves_dur.append(t1 - t0)
        saves_ret.append((returned or t1) - t0)
        drop_cache(path)
        t0 = time.perf_counter()
        out = method.load(path, like)
        touch(out)
        cold.append(time.perf_counter() - t0)
        del out
        t0 = time.perf_counter()
        out = method.load(path, like)
        touch(out)
        warm.append(time.perf_counter() - t0)
        del out
    size = disk_usage(path)
    remove(path)
    return {
        "save_returned": statistics.median(saves_ret),
        "save_durable": statistics.median(saves_dur),
        "load_warm": statistics.median(warm),
        "load_cold": statistics.median(cold),
        "bytes_on_disk": size,
    }


def run_fio(workdir, nbytes, repeats):
    """fio sequential write (O_DIRECT, fsync at end) and cold read; seconds for nbytes."""
    if shutil.which("fio") is None:
        return None
    path = os.path.join(workdir, "fio.dat")
    size_mb = max(8, nbytes // (1 << 20))
    writes, reads = [], []
    for _ in range(repeats):
        remove(path)  # a fresh file each time, as a checkpoint save allocates one
        for rw, out in (("write", writes), ("read", reads)):
            cmd = ["fio", "--name=ceiling", f"--filename={path}", f"--rw={rw}", "--bs=8m", f"--size={size_mb}m",
                   "--direct=1", "--ioengine=libaio", "--iodepth=4", "--output-format=json"]
            if rw == "write":
                cmd.append("--end_fsync=1")
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            job = res["jobs"][0][rw]
            out.append(job["io_bytes"] / (job["bw_bytes"] or 1))  # seconds
    remove(path)
    scale = nbytes / (size_mb << 20)
    return {"save_durable": statistics.median(writes) * scale, "load_cold": statistics.median(reads) * scale}


def run_async(state, workdir, repeats, cap):
    path = os.path.join(workdir, "ckpt-async")
    blocked, total = [], []
    ck.release_staging_memory()
    for i in range(repeats + 1):  # the first call allocates the staging buffer: reported apart
        remove(path)
        t0 = time.perf_counter()
        fut = ck.async_save(state, path, max_staging_bytes=cap)
        t1 = time.perf_counter()
        fut.result()
        t2 = time.perf_counter()
        if i == 0:
            first = t1 - t0
        else:
            blocked.append(t1 - t0)
            total.append(t2 - t0)
    remove(path)
    ck.release_staging_memory()
    return {"first_blocked": first, "blocked": statistics.median(blocked), "total": statistics.median(total)}


# ---- report ----------------------------------------------------------------------

def fmt_row(name, r, nbytes, fio):
    def cell(key):
        if r.get(key) is None:
            return "—"
        return f"{r[key]:.3f} s ({nbytes / r[key] / GB:.2f} GB/s)"

    ratio_s = f"{fio['save_durable'] / r['save_durable']:.2f}x" if fio and r.get("save_durable") else "—"
    ratio_l = f"{fio['load_cold'] / r['load_cold']:.2f}x" if fio and r.get("load_cold") else "—"
    return (f"| {name} | {cell('save_returned')} | {cell('save_durable')} | {ratio_s} | {cell('load_warm')} | "
            f"{cell('load_cold')} | {ratio_l} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks of the GPT-2-medium-like model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/ffrecord-bench-checkpoint")
    ap.add_argument("--methods", default="ffrecord,torch.save,safetensors,dcp")
    ap.add_argument("--staging-cap", type=int, default=256 << 20, help="max_staging_bytes for the bounded async run")
    args = ap.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    methods = [m for m in (Ffrecord(), TorchSave(), Safetensors(), Dcp()) if m.name in args.methods.split(",")]
    workloads = [
        (f"gpt2m-like ({args.layers} layers) + Adam state", gpt2_medium_like(args.layers)),
        ("5000 small tensors", small_tensors()),
    ]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"torch {torch.__version__}, workdir {args.workdir}")
    for title, state in workloads:
        nbytes = tensor_bytes(state)
        fio = run_fio(args.workdir, nbytes, args.repeats)
        print(f"\n### {title}: {nbytes / GB:.3f} GB of tensors, "
              f"{sum(1 for _ in _leaves(state))} tensors; median of {args.repeats}\n")
        print("| method | save returned | save durable | durable vs fio | load warm | load cold | cold vs fio |")
        print("|---|---|---|---|---|---|---|")
        if fio:
            print(f"| fio (ceiling) | — | {fio['save_durable']:.3f} s ({nbytes / fio['save_durable'] / GB:.2f} GB/s) | 1.00x "
                  f"| — | {fio['load_cold']:.3f} s ({nbytes / fio['load_cold'] / GB:.2f} GB/s) | 1.00x |")
        for m in methods:
            r = run_method(m, state, args.workdir, args.repeats)
            print(fmt_row(m.name, r, nbytes, fio), flush=True)
        for cap in (None, args.staging_cap):
            a = run_async(state, args.workdir, args.repeats, cap)
            label = "unbounded staging" if cap is None else f"max_staging_bytes={cap >> 20} MiB"
            print(f"\nasync_save ({label}): caller blocked {a['blocked']:.3f} s "
                  f"(first call, fresh staging buffer: {a['first_blocked']:.3f} s), "
                  f"until durable {a['total']:.3f} s", flush=True)
        del state


def _leaves(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)


if __name__ == "__main__":
    main()
