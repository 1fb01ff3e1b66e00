"""Coverage-guided fuzzing of everything that reads untrusted files (atheris).

Targets (``--target``):
  ffr         the input is a record file: opened as a dataset, every record read
              with checksums on and off, batches prefetched, then ``validate``
              and ``info`` run over it;
  checkpoint  the input is a checkpoint manifest (the JSON record of
              manifest.ffr) beside the data file of a real checkpoint: loaded
              with and without ``mmap``, and lazily by key.

``--structure`` makes the input drive a forger instead of being the file: it
takes a valid seed (v2 files with keys, metadata, zstd, a zstd dictionary; or
a real checkpoint manifest), changes fields (index entries, footer fields,
blocks, record bytes, zstd frame headers; manifest numbers, strings, devices,
nesting) and recomputes every checksum (tools/ffr_forge.py), so each case
reaches the checks behind the CRCs: the ones only a forger meets.

The only acceptable outcomes are success, ffrecord.FFRecordError, OSError, and
for checkpoints KeyError/TypeError for an absent or non-dict entry and the
RuntimeError that names a device missing on this machine. Any other exception
is a finding, and a crash (the process dying on a signal, or a sanitizer
report) is a finding that atheris reports itself.

    python tools/fuzz_open.py [--target ffr|checkpoint] [--structure] -max_total_time=60 [corpus_dir]
    bash tools/dev.sh fuzz --asan [same arguments]      # under ASan + UBSan
"""

import json
import os
import sys
import tempfile

import atheris

# Fuzz the package of this tree (PYTHONPATH, e.g. a sanitizer build, still comes first),
# not whichever copy is installed.
_TOOLS = os.path.dirname(os.path.abspath(__file__))
_site = next((i for i, p in enumerate(sys.path) if p.endswith("-packages")), len(sys.path))
sys.path[_site:_site] = [os.path.dirname(_TOOLS), _TOOLS]

with atheris.instrument_imports():
    import ffrecord
    import ffrecord.checkpoint as ck
    from ffrecord.tools import info as info_tool
    from ffrecord.tools import validate as validate_tool

    import ffr_forge

_DIR = tempfile.mkdtemp(prefix="ffrecord-fuzz-")
_PATH = os.path.join(_DIR, "input.ffr")
_CKPT = os.path.join(_DIR, "ckpt")
_MAX_RECORD_BYTES = 1 << 20  # a crafted index may claim huge records; don't read those
_HERE = _TOOLS
_EDGES = [0, 1, 7, 8, 24, 31, 32, 33, 96, 127, 128, 4096, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
          (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


# ---- seeds ---------------------------------------------------------------------------------

def _seed_files():
    """Valid v2 files exercising every block and codec (bytes)."""
    seeds = [open(os.path.join(_HERE, "..", "tests", "data", "vector_v2.ffr"), "rb").read()]
    records = [bytes([i % 5]) * (40 + i) + str(i).encode() for i in range(12)]
    for kwargs in ({"compression": "zstd"}, {"compression": "zstd", "zstd_dict": b"dict:" + b"".join(records)},
                   {"alignment": 64, "metadata": {"a": [1, {"b": None}]}}):
        path = os.path.join(_DIR, "seed.ffr")
        with ffrecord.FileWriter(path, **kwargs) as w:
            w.write_batch(records, keys=[f"k{i}" for i in range(len(records))])
        seeds.append(open(path, "rb").read())
    return seeds


def _seed_checkpoint():
    """A real checkpoint in _CKPT; returns its manifest (a dict)."""
    import numpy as np
    import torch

    obj = {"w": torch.arange(12.0).reshape(3, 4), "e": torch.empty(0, 2), "n": np.arange(5),
           "x": {"s": "text", "t": (1, 2.5, None), "d": torch.device("cpu"), "dt": torch.bfloat16}}
    ck.save(obj, _CKPT)
    with ffrecord.FileReader(os.path.join(_CKPT, "manifest.ffr")) as r:
        return json.loads(r.read_one(0).tobytes())


# ---- the targets ---------------------------------------------------------------------------

def _read_everything(path):
    for check in (True, False):
        try:
            r = ffrecord.FileReader(path, check_data=check)
        except (ffrecord.FFRecordError, OSError):
            return
        try:
            r.metadata
        except ffrecord.FFRecordError:
            pass
        n = min(r.n, 64)
        lengths = r.lengths(range(n)) if n else []
        wanted = [i for i in range(n) if lengths[i] <= _MAX_RECORD_BYTES]
        try:
            got = r.read(wanted)
            assert len(got) == len(wanted)
            batches = list(r.prefetch([wanted[:3], wanted[3:]], depth=2))
            assert [len(b) for b in batches] == [len(wanted[:3]), len(wanted[3:])]
            if n:
                r.key(0)
        except (ffrecord.FFRecordError, OSError):
            pass
        r.close()
    if os.path.getsize(path) <= (1 << 20):
        res = validate_tool.validate([path])
        assert isinstance(res.ok, bool)
        try:
            info_tool.describe(path)
        except (ffrecord.FFRecordError, OSError):
            pass


def _load_checkpoint():
    for kwargs in ({}, {"mmap": True}):
        try:
            ck.load(_CKPT, **kwargs)
        except (ffrecord.FFRecordError, OSError, KeyError, TypeError):
            pass
        except RuntimeError as e:
            if "map_location" not in str(e):
                raise
    try:
        with ck.Checkpoint(_CKPT) as c:
            c.arrays()
            for key in list(c.keys())[:4]:
                c[key]
    except (ffrecord.FFRecordError, OSError, KeyError, TypeError):
        pass
    except RuntimeError as e:
        if "map_location" not in str(e):
            raise


def _write_manifest(body):
    path = os.path.join(_CKPT, "manifest.ffr")
    with ffrecord.FileWriter(path, metadata={"format": "ffrecord-checkpoint"}) as w:
        w.write_one(body)


# ---- structure-aware forging -----------------------------------------------------------------

def _int(fdp):
    return fdp.PickValueInList(_EDGES) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, (1 << 64) - 1)


def _zstd_header(fdp):
    """A zstd frame header declaring a size and window chosen by the fuzzer."""
    desc = fdp.ConsumeIntInRange(0, 255) & 0xE7  # no reserved bit, no checksum flag games
    size = _int(fdp).to_bytes(8, "little")
    return b"\x28\xb5\x2f\xfd" + bytes([desc]) + size + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))


def _forge_ffr(fdp, seeds):
    f = ffr_forge.parse(seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        what = fdp.ConsumeIntInRange(0, 8)
        if what <= 2 and f.entries:  # an index field
            i = fdp.ConsumeIntInRange(0, len(f.entries) - 1)
            f.entries[i][fdp.ConsumeIntInRange(0, 3)] = _int(fdp)
            f.reseal(i)
        elif what == 3:
            f.metadata = fdp.PickValueInList([b"[" * 100000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"\xff\xfe",
                                              b"[]", b"1e999999", fdp.ConsumeBytes(64)])
        elif what == 4:
            f.dictionary = (b"\x37\xa4\x30\xec" if fdp.ConsumeBool() else b"") + fdp.ConsumeBytes(256)
        elif what == 5 and f.entries:  # a record's stored bytes: a forged zstd frame
            i = fdp.ConsumeIntInRange(0, len(f.entries) - 1)
            stored = _zstd_header(fdp)
            f.entries[i] = [32 + len(f.body), len(stored), 0, fdp.ConsumeIntInRange(0, 2)]
            f.body += stored
            f.reseal(i)
        elif what == 6:
            f.keys = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 128))
        elif what == 7:
            name = fdp.PickValueInList(["num_records", "index_offset", "meta_offset", "meta_length", "dict_offset",
                                        "dict_length", "keys_offset", "keys_length"])
            f.footer[name] = _int(fdp)
        else:
            f.alignment = fdp.PickValueInList([0, 1, 3, 64, 1 << 20, 1 << 21, (1 << 32) - 1])
    return f.build()


_HOSTILE_VALUES = [None, True, -1, 0, 1 << 63, 1 << 64, (1 << 64) - 1, 10 ** 30, 1.5, "", "mps", "privateuseone",
                   "meta", "cuda:x", "garbage", "../x", "data-00000.ffr", [], {}, [[]] * 3, {"$": "pickle", "i": 0}]


def _nodes(doc, path=()):
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, path + (i,))


def _forge_manifest(fdp, seed):
    doc = json.loads(json.dumps(seed))
    paths = [p for p in _nodes(doc) if p]
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        path = paths[fdp.ConsumeIntInRange(0, len(paths) - 1)]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if fdp.ConsumeBool():
            value = fdp.PickValueInList(_HOSTILE_VALUES)
        elif fdp.ConsumeBool():
            value = _int(fdp)
        else:
            value = fdp.ConsumeUnicodeNoSurrogates(16)
        try:
            parent[path[-1]] = value
        except (TypeError, IndexError, KeyError):
            pass
        paths = [p for p in _nodes(doc) if p]
    body = json.dumps(doc).encode()
    if fdp.ConsumeIntInRange(0, 15) == 0:
        body = b"[" * 100000
    return body


# ---- entry points ----------------------------------------------------------------------------

def make_one_input(target, structure):
    if target == "ffr":
        seeds = _seed_files() if structure else None

        def one_input(data):
            if structure:
                data = _forge_ffr(atheris.FuzzedDataProvider(data), seeds)
            with open(_PATH, "wb") as f:
                f.write(data)
            _read_everything(_PATH)
        return one_input

    seed = _seed_checkpoint()
    data_files = sorted(e for e in os.listdir(_CKPT) if e != "manifest.ffr")

    def one_input(data):
        body = _forge_manifest(atheris.FuzzedDataProvider(data), seed) if structure else data
        present = set(os.listdir(_CKPT))
        if any(name not in present for name in data_files):  # a previous case cannot remove them, but be sure
            raise AssertionError("a load removed a data file")
        _write_manifest(body)
        _load_checkpoint()
    return one_input


def _raw_seeds(target):
    """A seed corpus for raw mode: the test vector, or a real manifest."""
    seeds = tempfile.mkdtemp(prefix="ffrecord-fuzz-seeds-")
    if target == "ffr":
        blobs = _seed_files()
    else:
        blobs = [json.dumps(_seed_checkpoint()).encode()]
    for i, blob in enumerate(blobs):
        with open(os.path.join(seeds, f"seed-{i}"), "wb") as f:
            f.write(blob)
    return seeds


def main():
    argv, target, structure = [], "ffr", False
    for a in sys.argv:
        if a.startswith("--target="):
            target = a.split("=", 1)[1]
        elif a == "--structure":
            structure = True
        else:
            argv.append(a)
    if target not in ("ffr", "checkpoint"):
        sys.exit(f"unknown target {target!r}: ffr or checkpoint")
    one_input = make_one_input(target, structure)
    if not structure and not any(not a.startswith("-") for a in argv[1:]):
        argv.append(_raw_seeds(target))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()  # never returns: libFuzzer exits the process


if __name__ == "__main__":
    main()
