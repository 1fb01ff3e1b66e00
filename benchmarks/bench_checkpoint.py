"""Checkpoint save/load: ffrecord.checkpoint vs torch.save, safetensors, DCP, and fio.

Workloads (all fp32, contiguous, in host memory):
  gpt2m-like   the state dict of a GPT-2-medium-shaped model (d_model 1024,
               vocab 50257, context 1024) with --layers transformer blocks,
               plus an Adam-like optimizer state (exp_avg, exp_avg_sq, step
               per parameter): three times the model's bytes
  5000-small   5,000 tensors of 1..2048 float32 elements

Methods:
  ffrecord     ffrecord.checkpoint.save / load (save is durable when it returns;
               load reads through the page cache, the default)
  ffrecord-direct  the same save; load(direct=True): what the page cache does
               not hold is read with O_DIRECT, and the cache is left as it was
  ffrecord-mmap  the same save; load(mmap=True): tensors are views of private
               mappings of the files, every byte verified in place, none copied
  torch.save   torch.save to one file (+ fsync for "durable") / torch.load(weights_only=True)
  torch.save-mmap  the same save; torch.load(weights_only=True, mmap=True)
  safetensors  safetensors.torch.save_file (+ fsync) / load_file; the optimizer
               state flattened to named tensors, its param_groups in the metadata
  dcp          torch.distributed.checkpoint FileSystemWriter (fsyncs) /
               FileSystemReader into preallocated tensors (no_dist)
  fio          sequential write (O_DIRECT, fsync at the end) and read (O_DIRECT,
               cold) of one file of the same size, bs=8m, iodepth=4: the ceiling

Columns: "returned" is the time until the call returns, "durable" until the
data is fsynced; loads run "warm" (page cache filled by a previous load) and
"cold" (every file of the checkpoint dropped from the page cache with
posix_fadvise(DONTNEED) after an fsync; ffrecord-direct leaves the cache as it
was, so its "warm" load reads the disk again); every load ends by reading one
byte of each page of the result (safetensors maps the file and reads lazily, so
it pays its reads there). The repeats are interleaved (fio and every method
once per round, the methods' order rotated each round), so a busy moment of a
shared machine hits them alike; each cell gives the median and the best of
--repeats rounds. A second table gives each load's CPU time (every thread of
the process) and page faults: a slow load that worked (copied, checksummed,
faulted memory in) shows its CPU time grow with it; one that waited does not.

Measured separately, on the large workload:
  split        a warm load(mmap=True) taken apart: the load alone (it maps the
               files and verifies every byte in place), the touch after it,
               and the touch repeated (one read per page, nothing to fault)
  copy         the staging copy alone: every tensor copied into one reused
               destination by the C++ core, with 1 thread and with 2
  async_save   for staging="blocking" and "background", unbounded and with
               --staging-cap, and staging="fork": the time until async_save
               returns, until wait_staged() returns, and until the save is
               durable
  step         a simulated training step (CPU matmuls calibrated to
               --step-seconds alone, then an in-place update of every saved
               tensor, as an optimizer step): without a save, with a blocking
               async_save before it, with a background one (the update
               waits for wait_staged()), with a fork one, and with a fork one
               whose update comes first (while the child still writes, so
               every page is copied on write); the time lost is the difference.
               Run with the matmuls on every CPU, then on one thread (a step
               that leaves CPUs free, as when the host waits for a GPU)

    python benchmarks/bench_checkpoint.py                 # defaults: 4 layers (~1.24 GB)
    python benchmarks/bench_checkpoint.py --layers 1 --repeats 1   # quick
    python benchmarks/bench_checkpoint.py --netfs --skip-async      # through a network mount

--netfs stands up the test suite's network-filesystem rig (tests/netfs_rig.py:
sshd on loopback, the export mounted with sshfs; needs root and FUSE) and
works in a directory of the mount. The server's files lie on this machine too,
so a cold load there drops the whole page cache (/proc/sys/vm/drop_caches):
the client's pages and the server's both.
"""

import argparse
import json
import os
import platform
import resource
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


DROP_ALL = False  # --netfs: the server's copy of the files is cached on this machine too


def drop_cache(path):
    """Evicts every file under ``path`` from the page cache (clean pages only: fsync first)."""
    fsync_tree(path)
    if DROP_ALL:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
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


class FfrecordDirect(Ffrecord):
    name = "ffrecord-direct"

    def load(self, path, like):
        return ck.load(path, direct=True)


class FfrecordMmap(Ffrecord):
    name = "ffrecord-mmap"

    def load(self, path, like):
        return ck.load(path, mmap=True)


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


class TorchSaveMmap(TorchSave):
    name = "torch.save-mmap"

    def load(self, path, like):
        return torch.load(path, weights_only=True, mmap=True)


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


def run_method_once(method, state, workdir, like, out):
    """One save, one cold load, one warm load; appends seconds to ``out``."""
    path = os.path.join(workdir, f"ckpt-{method.name}")
    remove(path)
    t0 = time.perf_counter()
    returned = method.save(state, path)
    t1 = time.perf_counter()
    out.setdefault("save_durable", []).append(t1 - t0)
    out.setdefault("save_returned", []).append((returned or t1) - t0)
    drop_cache(path)
    for key in ("load_cold", "load_warm"):
        u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loaded = method.load(path, like)
        touch(loaded)
        out.setdefault(key, []).append(time.perf_counter() - t0)
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        # CPU (every thread of this process) and page faults of the load, to
        # tell a slow load that waited from one that worked (e.g. faulting in
        # fresh memory).
        out.setdefault(key + "_cpu", []).append(u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime)
        out.setdefault(key + "_faults", []).append(u1.ru_minflt + u1.ru_majflt - u0.ru_minflt - u0.ru_majflt)
        del loaded
    out["bytes_on_disk"] = [disk_usage(path)]
    remove(path)


def warm_load_split(state, workdir, repeats):
    """Where a warm load's time goes: load(mmap=True) alone (mapping plus the
    CRC32C of every stored byte, in place), the benchmark's touch right after
    it, and the same touch once every page is mapped (its floor: one read per
    page). Medians over ``repeats``."""
    path = os.path.join(workdir, "ckpt-split")
    remove(path)
    ck.save(state, path)
    ck.load(path)  # fills the page cache
    runs = {"load": [], "touch": [], "touch again": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        loaded = ck.load(path, mmap=True)
        t1 = time.perf_counter()
        touch(loaded)
        t2 = time.perf_counter()
        touch(loaded)
        t3 = time.perf_counter()
        del loaded
        for key, dt in zip(runs, (t1 - t0, t2 - t1, t3 - t2)):
            runs[key].append(dt)
    remove(path)
    return {k: statistics.median(v) for k, v in runs.items()}


def run_fio_once(workdir, nbytes, out):
    """fio sequential write (O_DIRECT, fsync at the end) and cold read of a
    fresh file of the same size; appends seconds to ``out``."""
    path = os.path.join(workdir, "fio.dat")
    size_mb = max(8, nbytes // (1 << 20))
    remove(path)  # a fresh file each time, as a checkpoint save allocates one
    for rw, key in (("write", "save_durable"), ("read", "load_cold")):
        cmd = ["fio", "--name=ceiling", f"--filename={path}", f"--rw={rw}", "--bs=8m", f"--size={size_mb}m",
               "--direct=1", "--ioengine=libaio", "--iodepth=4", "--output-format=json"]
        if rw == "write":
            cmd.append("--end_fsync=1")
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        job = res["jobs"][0][rw]
        out.setdefault(key, []).append(job["io_bytes"] / (job["bw_bytes"] or 1) * nbytes / (size_mb << 20))
    remove(path)


def run_async(state, workdir, repeats, cap, staging):
    """Seconds until async_save returns, until staged, until durable (medians
    over ``repeats`` calls after a first one that allocates the staging buffer)."""
    path = os.path.join(workdir, "ckpt-async")
    runs = {"returned": [], "staged": [], "durable": []}
    ck.release_staging_memory()
    for i in range(repeats + 1):  # the first call allocates the staging buffer: reported apart
        remove(path)
        t0 = time.perf_counter()
        fut = ck.async_save(state, path, max_staging_bytes=cap, staging=staging)
        t1 = time.perf_counter()
        fut.wait_staged()
        t2 = time.perf_counter()
        fut.result()
        t3 = time.perf_counter()
        if i == 0:
            first = t2 - t0
        else:
            for key, t in (("returned", t1), ("staged", t2), ("durable", t3)):
                runs[key].append(t - t0)
    remove(path)
    ck.release_staging_memory()
    return {"first_staged": first, **{k: statistics.median(v) for k, v in runs.items()}}


def copy_bandwidth(state, repeats):
    """GB/s of the staging copy alone (C++ core, reused destination), with 1 and 2 threads."""
    from ffrecord import _core

    leaves = [t for t in _leaves(state) if t.numel()]
    total = sum(t.numel() * t.element_size() for t in leaves)
    dst = torch.empty(total, dtype=torch.uint8)
    pieces, at = [], dst.data_ptr()
    for t in leaves:
        n = t.numel() * t.element_size()
        pieces.append((at, t.data_ptr(), n))
        at += n
    _core.copy_memory(pieces)  # faults the destination in: later copies reuse it
    out = {}
    for threads in (1, 2):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _core.copy_memory(pieces, helpers=threads - 1)
            times.append(time.perf_counter() - t0)
        out[threads] = total / statistics.median(times) / GB
    return out


def calibrate_step(seconds):
    """Number of 1024x1024 fp32 matmuls that take about ``seconds`` alone."""
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    n, t = 4, 0.0
    while t < 0.2:
        n *= 2
        t0 = time.perf_counter()
        for _ in range(n):
            torch.mm(a, b)
        t = time.perf_counter() - t0
    return max(1, round(n * seconds / t)), (a, b)


def run_steps(state, workdir, repeats, matmuls, ab):
    """Median seconds of one simulated training step: without a save, with a
    blocking async_save at its start, with a background one. Rounds are
    interleaved; each save is waited for (durable) outside the timed step."""
    path = os.path.join(workdir, "ckpt-step")
    leaves = [t for t in _leaves(state) if t.is_floating_point()]
    a, b = ab

    def step():
        for _ in range(matmuls):
            torch.mm(a, b)

    def update():  # the optimizer step: every saved tensor changes in place
        torch._foreach_mul_(leaves, 1.0)

    # "fork, update first": the update runs right after async_save returns,
    # while the child is still writing, so the kernel copies every page the
    # update changes (the worst case for fork staging).
    times = {"none": [], "blocking": [], "background": [], "fork": [], "fork, update first": []}
    ck.release_staging_memory()
    ck.async_save(state, path).result()  # allocates the staging buffer, reused below
    for _ in range(repeats):
        for mode in times:
            remove(path)
            t0 = time.perf_counter()
            fut = None if mode == "none" else ck.async_save(state, path, staging=mode.split(",")[0])
            if mode == "fork, update first":
                update()
            step()
            if fut is not None:
                fut.wait_staged()
            if mode != "fork, update first":
                update()
            times[mode].append(time.perf_counter() - t0)
            if fut is not None:
                fut.result()
    remove(path)
    ck.release_staging_memory()
    return {k: statistics.median(v) for k, v in times.items()}


# ---- report ----------------------------------------------------------------------

def fmt_row(name, runs, nbytes, fio):
    def cell(key):
        if key not in runs:
            return "—"
        med = statistics.median(runs[key])
        return f"{med:.3f} s ({nbytes / med / GB:.2f} GB/s; best {min(runs[key]):.3f})"

    def ratio(key):
        if not fio or key not in runs:
            return "—"
        return f"{statistics.median(fio[key]) / statistics.median(runs[key]):.2f}x"

    return (f"| {name} | {cell('save_returned')} | {cell('save_durable')} | {ratio('save_durable')} | "
            f"{cell('load_warm')} | {cell('load_cold')} | {ratio('load_cold')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks of the GPT-2-medium-like model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/ffrecord-bench-checkpoint")
    ap.add_argument("--methods", default="ffrecord,ffrecord-direct,ffrecord-mmap,torch.save,torch.save-mmap,safetensors,dcp")
    ap.add_argument("--skip-async", action="store_true", help="only the save/load table (and the copy bandwidth)")
    ap.add_argument("--staging-cap", type=int, default=256 << 20, help="max_staging_bytes for the bounded async run")
    ap.add_argument("--step-seconds", type=float, default=1.0,
                    help="compute of the simulated training step, alone (0: skip the step measurement)")
    ap.add_argument("--netfs", action="store_true",
                    help="work through an sshfs mount of the test rig (root and FUSE needed)")
    ap.add_argument("--netfs-latency-ms", type=float, default=0.0,
                    help="with --netfs: delay added to every filesystem operation on the server side")
    args = ap.parse_args()

    if args.netfs:
        global DROP_ALL
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from netfs_rig import NetFSRig, unavailable_reason

        reason = unavailable_reason(latency=args.netfs_latency_ms > 0)
        if reason:
            sys.exit(f"--netfs: {reason}")
        rig = NetFSRig(latency_ms=args.netfs_latency_ms).__enter__()
        import atexit

        atexit.register(rig.__exit__, None, None, None)
        args.workdir = rig.new_dir("ckpt").a
        DROP_ALL = True
        print(f"through sshfs (node A of the test rig), {args.netfs_latency_ms} ms added per operation")

    os.makedirs(args.workdir, exist_ok=True)
    methods = [m for m in (Ffrecord(), FfrecordDirect(), FfrecordMmap(), TorchSave(), TorchSaveMmap(), Safetensors(), Dcp())
               if m.name in args.methods.split(",")]
    workloads = [
        (f"gpt2m-like ({args.layers} layers) + Adam state", gpt2_medium_like(args.layers)),
        ("5000 small tensors", small_tensors()),
    ]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"torch {torch.__version__}, workdir {args.workdir}")
    for title, state in workloads:
        nbytes = tensor_bytes(state)
        runs = {m.name: {} for m in methods}
        fio = {} if shutil.which("fio") and not args.netfs else None  # through the mount: see bench_netfs.py
        likes = {m.name: empty_like_state(state) if isinstance(m, Dcp) else None for m in methods}
        # Interleaved: every repeat runs fio and each method once, so a busy
        # moment on a shared machine falls on all of them alike.
        # The order rotates every round: on the VM these figures come from,
        # the first cold load after a large write (fio's, then a save) ran
        # up to twice as slow as the next one, whichever method it was.
        for r in range(args.repeats):
            if fio is not None:
                run_fio_once(args.workdir, nbytes, fio)
            shift = (r * 3) % len(methods)
            for m in methods[shift:] + methods[:shift]:
                run_method_once(m, state, args.workdir, likes[m.name], runs[m.name])
        del likes
        print(f"\n### {title}: {nbytes / GB:.3f} GB of tensors, "
              f"{sum(1 for _ in _leaves(state))} tensors; median of {args.repeats} (best)\n")
        print("| method | save returned | save durable | durable vs fio | load warm | load cold | cold vs fio |")
        print("|---|---|---|---|---|---|---|")
        if fio:
            print(fmt_row("fio (ceiling)", fio, nbytes, fio))
        for m in methods:
            print(fmt_row(m.name, runs[m.name], nbytes, fio), flush=True)
        print("\n| method | cold load | its CPU time (all threads) | its page faults | warm load | its CPU time | its page faults |")
        print("|---|---|---|---|---|---|---|")
        for m in methods:
            r = {k: statistics.median(v) for k, v in runs[m.name].items()}
            cells = []
            for kind in ("cold", "warm"):
                cells += [f"{r[f'load_{kind}']:.3f} s", f"{r[f'load_{kind}_cpu']:.3f} s", f"{r[f'load_{kind}_faults']:,.0f}"]
            print(f"| {m.name} | " + " | ".join(cells) + " |", flush=True)
        sync = statistics.median(runs["ffrecord"]["save_durable"]) if "ffrecord" in runs else None
        big = nbytes >= 100 << 20
        if big:
            split = warm_load_split(state, args.workdir, args.repeats)
            print(f"\nwarm load(mmap=True) split: the load itself (mapping + CRC32C of every byte in place) "
                  f"{split['load']:.3f} s ({nbytes / split['load'] / GB:.1f} GB/s), the touch after it "
                  f"{split['touch']:.3f} s, the same touch again {split['touch again']:.3f} s", flush=True)
            bw = copy_bandwidth(state, args.repeats)
            print(f"\nstaging copy alone (C++ core, reused destination): {bw[1]:.1f} GB/s with 1 thread, "
                  f"{bw[2]:.1f} GB/s with 2; {nbytes / bw[2] / GB:.3f} s for this state", flush=True)
        if args.skip_async:
            del state
            continue
        print("\n| async_save staging | cap | returned | staged | durable | returned vs sync save |")
        print("|---|---|---|---|---|---|")
        for staging in ("blocking", "background", "fork"):
            for cap in ((None,) if staging == "fork" else (None, args.staging_cap)):
                a = run_async(state, args.workdir, args.repeats, cap, staging)
                label = "none" if cap is None else f"{cap >> 20} MiB"
                share = f"{a['returned'] / sync:.0%}" if sync else "—"
                print(f"| {staging} | {label} | {a['returned']:.3f} s | {a['staged']:.3f} s "
                      f"(first call: {a['first_staged']:.3f}) | {a['durable']:.3f} s | {share} |", flush=True)
        if big and args.step_seconds > 0:
            # The step's matmuls on every CPU (a CPU-bound step), then on one
            # thread (a step that leaves CPUs free, as when the host waits for
            # an accelerator).
            threads = torch.get_num_threads()
            for step_threads in sorted({threads, 1}, reverse=True):
                torch.set_num_threads(step_threads)
                try:
                    matmuls, ab = calibrate_step(args.step_seconds)
                    st = run_steps(state, args.workdir, args.repeats, matmuls, ab)
                finally:
                    torch.set_num_threads(threads)
                lost = {k: st[k] - st["none"] for k in st if k != "none"}
                share = {k: f" = {v / sync:.0%} of a synchronous save" if sync else "" for k, v in lost.items()}
                print(f"\nsimulated training step, matmuls on {step_threads} thread(s) ({matmuls} of 1024x1024, "
                      f"then an in-place update of every saved tensor): {st['none']:.3f} s without a save; "
                      + "; ".join(f"with a {k} async_save {st[k]:.3f} s (+{lost[k]:.3f} s{share[k]})" for k in lost),
                      flush=True)
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
