"""load() and Checkpoint: reading a checkpoint directory back, whole or in part.

Tensor bytes are read straight into the final tensor storage
(``FileReader.read_into``: no intermediate ``bytes``), in batches of about
64 MiB spread over a few threads, so that reading and CRC32C verification
(both done with the GIL released) overlap. Small tensors packed together are
read per record and copied out. Every part's CRC32C is verified; a mismatch
raises ChecksumError naming the tensor.
"""

import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _core
from ..errors import ChecksumError, FormatError
from ..reader import FileReader
from .commit import resolve_for_load
from .encoding import Decoder, UnsafeCheckpointError, format_path, numpy_dtype_from_str, torch_dtype_by_name
from .layout import read_manifest

__all__ = ["load", "Checkpoint"]

BATCH_BYTES = 64 << 20
BATCH_PARTS = 1024


def _torch():
    import torch

    return torch


class _Part:
    __slots__ = ("item", "file", "record", "offset", "length", "crc", "start")

    def __init__(self, item, file, record, offset, length, crc, start):
        self.item, self.file, self.record = item, file, record
        self.offset, self.length, self.crc, self.start = offset, length, crc, start


class Checkpoint:
    """A checkpoint directory opened for reading; loads lazily what is asked.

    ``ck.keys()`` lists the top-level keys (when the saved object is a dict),
    ``ck[key]`` loads one entry, ``ck.load(keys=None)`` loads everything or a
    selection, ``ck.arrays()`` describes every stored array without reading
    it. Only the bytes of what is asked are read. ``map_location`` and
    ``trusted`` are as for ``load``. A context manager; ``close()`` releases
    the files.
    """

    def __init__(self, path, map_location=None, trusted=False):
        self.path = resolve_for_load(path)
        self.map_location = map_location
        self.trusted = bool(trusted)
        self._manifest = read_manifest(self.path)
        if self._manifest.get("kind") != "tree":
            hint = ""
            if self._manifest.get("kind") == "dcp":
                hint = "; it was written by torch.distributed.checkpoint: load it with StorageReader"
            raise FormatError(f"{self.path}: checkpoint of kind {self._manifest.get('kind')!r}{hint}")
        self._files = [f["name"] for f in self._manifest["files"]]
        self._readers = {}
        self._arrays = self._check_entries("arrays", with_dtype=True)
        self._pickles = self._check_entries("pickles", with_dtype=False)
        self._names = None

    # ---- validation of the tables (every number from disk is hostile) ------
    def _bad(self, what):
        return FormatError(f"{self.path}: malformed checkpoint manifest: {what}")

    def _check_entries(self, table, with_dtype):
        entries = self._manifest.get(table)
        if not isinstance(entries, list):
            raise self._bad(f"no '{table}' list")
        out = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise self._bad(f"{table}[{i}] is not an object")
            nbytes = e.get("nbytes")
            if type(nbytes) is not int or nbytes < 0:
                raise self._bad(f"{table}[{i}]: bad nbytes")
            if with_dtype:
                self._check_array(table, i, e, nbytes)
            parts = e.get("parts")
            if not isinstance(parts, list):
                raise self._bad(f"{table}[{i}]: no parts")
            plist, start = [], 0
            for p in parts:
                if (
                    not isinstance(p, list)
                    or len(p) != 5
                    or not all(type(x) is int and x >= 0 for x in p)
                    or p[0] >= len(self._files)
                    or p[4] > 0xFFFFFFFF
                ):
                    raise self._bad(f"{table}[{i}]: bad part {p!r}")
                plist.append(_Part(i, p[0], p[1], p[2], p[3], p[4], start))
                start += p[3]
            if start != nbytes:
                raise self._bad(f"{table}[{i}]: parts hold {start} bytes, the entry {nbytes}")
            out.append((e, plist))
        return out

    def _check_array(self, table, i, e, nbytes):
        kind, shape = e.get("kind"), e.get("shape")
        if not isinstance(shape, list) or not all(type(x) is int and x >= 0 for x in shape) or len(shape) > 64:
            raise self._bad(f"{table}[{i}]: bad shape")
        if kind == "torch":
            dtype = torch_dtype_by_name(e.get("dtype"))
            if dtype is None:
                raise self._bad(f"{table}[{i}]: unknown torch dtype {e.get('dtype')!r}")
            itemsize = dtype.itemsize
            if not isinstance(e.get("device"), str):
                raise self._bad(f"{table}[{i}]: bad device")
        elif kind == "numpy":
            dtype = numpy_dtype_from_str(e.get("dtype"))
            if dtype is None or dtype.itemsize == 0:
                raise self._bad(f"{table}[{i}]: unsupported numpy dtype {e.get('dtype')!r}")
            itemsize = dtype.itemsize
        else:
            raise self._bad(f"{table}[{i}]: unknown kind {kind!r}")
        count = 1
        for x in shape:
            count *= x
        if count * itemsize != nbytes:
            raise self._bad(f"{table}[{i}]: shape {shape} and dtype do not make {nbytes} bytes")

    # ---- public surface ----------------------------------------------------
    def keys(self):
        """Top-level keys, when the saved object is a dict."""
        tree = self._manifest["tree"]
        if not isinstance(tree, dict) or tree.get("$") not in ("dict", "odict"):
            raise TypeError(f"{self.path}: the saved object is not a dict")
        dec = self._decoder(None)
        return [dec.key(k, ()) for k in tree.get("k", [])]

    def __getitem__(self, key):
        return self.load([key])[key]

    def __contains__(self, key):
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def arrays(self):
        """{path (tuple of keys): {"kind", "dtype", "shape", "nbytes"}} of every
        stored tensor and numpy array, read from the manifest only."""
        names = self._array_paths()
        return {
            names[i]: {k: e[k] for k in ("kind", "dtype", "shape", "nbytes")}
            for i, (e, _) in enumerate(self._arrays)
            if i in names
        }

    def load(self, keys=None):
        """Everything (``keys=None``), or ``{key: subtree}`` for each entry of
        ``keys``: a top-level key, or a *list* giving a path into the tree
        (e.g. ``["model", "fc.weight"]``; the result is keyed by its tuple)."""
        tree = self._manifest["tree"]
        if keys is None:
            return self._materialize([tree], many=False)
        if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
            raise TypeError("keys must be a list of keys or key paths")
        selected = []
        for k in keys:
            if isinstance(k, list):
                selected.append((tuple(k), self._find(tree, list(k))))
            else:
                selected.append((k, self._find(tree, [k])))
        results = self._materialize([node for _, node in selected], many=True)
        return {name: value for (name, _), value in zip(selected, results)}

    def close(self):
        self._readers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- internals ---------------------------------------------------------
    def _find(self, tree, path):
        node, dec = tree, self._decoder(None)
        for depth, k in enumerate(path):
            where = format_path(tuple(path[: depth + 1]))
            tag = node.get("$") if isinstance(node, dict) else None
            if tag in ("dict", "odict"):
                for kn, vn in zip(node.get("k", []), node.get("v", [])):
                    if dec.key(kn, ()) == k:  # dict semantics: 1 == 1.0 == True
                        node = vn
                        break
                else:
                    raise KeyError(f"{self.path}: no entry {where}")
            elif tag in ("list", "tuple") and type(k) is int:
                items = node.get("v", [])
                if not -len(items) <= k < len(items):
                    raise KeyError(f"{self.path}: no entry {where}")
                node = items[k]
            else:
                raise KeyError(f"{self.path}: no entry {where} (not a dict, list or tuple there)")
        return node

    def _decoder(self, fetch):
        if fetch is None:  # decoding keys only: they never refer to arrays

            def fetch(kind, i, k, path):
                raise FormatError(f"{self.path}: a dict key at {format_path(path)} refers to a stored {kind}")

        def array(i, kind, path):
            return fetch("array", i, kind, path)

        def pickled(i, path):
            return fetch("pickle", i, None, path)

        return Decoder(self.path, array, pickled)

    def _array_paths(self):
        """Index -> first tree path referring to it (names tensors in messages)."""
        if self._names is None:
            names = {}

            def note(kind, i, k, path):
                if kind == "array":
                    names.setdefault(i, path)

            self._decoder(note).decode(self._manifest["tree"])
            self._names = names
        return self._names

    def _materialize(self, nodes, many):
        """Decodes the tree ``nodes``, reading exactly the arrays they refer to,
        once each; returns the list of values (``many``) or the only one."""
        wanted_arrays, wanted_pickles = {}, {}

        def collect(kind, i, k, path):
            table = self._arrays if kind == "array" else self._pickles
            if i >= len(table):
                raise FormatError(f"{self.path}: tree refers to {kind} {i}, the manifest has {len(table)}")
            if kind == "array":
                if table[i][0]["kind"] != k:
                    raise FormatError(f"{self.path}: tree node at {format_path(path)} does not match array {i}")
                wanted_arrays.setdefault(i, path)
            else:
                wanted_pickles.setdefault(i, path)
            return None

        for node in nodes:
            self._decoder(collect).decode(node)
        if wanted_pickles and not self.trusted:
            where = format_path(next(iter(wanted_pickles.values())))
            raise UnsafeCheckpointError(
                f"{self.path}: the checkpoint holds pickled objects (e.g. at {where}); unpickling can run "
                "arbitrary code, so load() refuses it unless called with trusted=True"
            )
        buffers = self._read(wanted_arrays, wanted_pickles)
        values = {}

        def fetch(kind, i, k, path):
            key = (kind, i)
            if key not in values:
                values[key] = self._build(kind, i, buffers[key])
            return values[key]

        dec = self._decoder(fetch)
        out = [dec.decode(n) for n in nodes]
        return out if many else out[0]

    def _reader(self, f):
        r = self._readers.get(f)
        if r is None:
            r = self._readers[f] = FileReader(os.path.join(self.path, self._files[f]), check_data=False)
        return r

    def _read(self, wanted_arrays, wanted_pickles):
        """Allocates the destination of every wanted item and reads its parts
        into it; returns {(kind, index): uint8 buffer}."""
        torch = _torch()
        buffers, names, parts = {}, {}, []
        for kind, wanted, table in (("array", wanted_arrays, self._arrays), ("pickle", wanted_pickles, self._pickles)):
            for i, path in wanted.items():
                entry, plist = table[i]
                if kind == "array" and entry["kind"] == "torch":
                    buf = torch.empty(entry["nbytes"], dtype=torch.uint8)
                else:
                    buf = np.empty(entry["nbytes"], dtype=np.uint8)
                buffers[(kind, i)] = buf
                names[(kind, i)] = path
                parts += [(kind, p) for p in plist]
        # Check each part against its record before touching any byte: inside
        # the record, and no two parts overlapping (bounds total allocation).
        by_record = {}
        for kind, p in parts:
            by_record.setdefault((p.file, p.record), []).append((kind, p))
        lengths = {}
        for (f, rec), plist in by_record.items():
            r = self._reader(f)
            if rec >= r.n:
                raise FormatError(f"{self.path}/{self._files[f]}: part refers to record {rec}, the file has {r.n}")
            lengths[(f, rec)] = length = int(r.lengths([rec])[0])
            end = 0
            for _, p in sorted(plist, key=lambda kp: kp[1].offset):
                if p.offset < end or p.offset + p.length > length:
                    raise FormatError(f"{self.path}/{self._files[f]}: bad or overlapping part in record {rec}")
                end = p.offset + p.length
        direct, packed = [], []
        for (f, rec), plist in sorted(by_record.items()):
            if len(plist) == 1 and plist[0][1].offset == 0 and plist[0][1].length == lengths[(f, rec)]:
                direct.append(plist[0])
            else:
                packed.append(((f, rec), plist))
        jobs = _batches(direct, lambda kp: kp[1].length, lambda kp: kp[1].file)
        jobs = [("direct", j) for j in jobs]
        jobs += [("packed", j) for j in _batches(packed, lambda rp: lengths[rp[0]], lambda rp: rp[0][0])]
        if not jobs:
            return buffers

        def views(kind, p):
            buf = buffers[(kind, p.item)]
            arr = buf.numpy() if not isinstance(buf, np.ndarray) else buf
            return arr[p.start : p.start + p.length]

        def run(job):
            what, batch = job
            if what == "direct":
                f = batch[0][1].file
                dsts = [views(kind, p) for kind, p in batch]
                self._reader(f).read_into([p.record for _, p in batch], dsts)
                for (kind, p), dst in zip(batch, dsts):
                    if _core.crc32c(dst) != p.crc:
                        return self._checksum_error(names[(kind, p.item)], p)
                return None
            f = batch[0][0][0]
            blocks = self._reader(f).read([rec for (_, rec), _ in batch])
            for ((_, rec), plist), block in zip(batch, blocks):
                for kind, p in plist:
                    src = block[p.offset : p.offset + p.length]
                    if _core.crc32c(src) != p.crc:
                        return self._checksum_error(names[(kind, p.item)], p)
                    np.copyto(views(kind, p), src)
            return None

        workers = min(len(jobs), max(2, min(4, os.cpu_count() or 2)))
        if workers == 1:
            errors = [run(jobs[0])]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                errors = list(pool.map(run, jobs))
        for e in errors:
            if e is not None:
                raise e
        return buffers

    def _checksum_error(self, path, p):
        what = "tensor" if path is not None else "entry"
        return ChecksumError(
            f"{self.path}/{self._files[p.file]}: CRC32C mismatch in {what} {format_path(path)} "
            f"(record {p.record}, bytes {p.start}..{p.start + p.length} of it)"
        )

    def _build(self, kind, i, buf):
        if kind == "pickle":
            return pickle.loads(buf.tobytes())
        entry = self._arrays[i][0]
        if entry["kind"] == "numpy":
            d = np.dtype(entry["dtype"])
            return buf.view(d).reshape(entry["shape"])
        t = buf.view(torch_dtype_by_name(entry["dtype"])).reshape(entry["shape"])
        return _relocate(t, entry["device"], self.map_location)


def _batches(items, size, group):
    """Consecutive runs of items of one group, up to BATCH_BYTES / BATCH_PARTS each."""
    out, cur, cur_bytes, cur_group = [], [], 0, None
    for it in items:
        g = group(it)
        if cur and (g != cur_group or cur_bytes + size(it) > BATCH_BYTES or len(cur) >= BATCH_PARTS):
            out.append(cur)
            cur, cur_bytes = [], 0
        cur.append(it)
        cur_bytes += size(it)
        cur_group = g
    if cur:
        out.append(cur)
    return out


def _relocate(t, saved_device, map_location):
    torch = _torch()
    if callable(map_location):
        return map_location(t, saved_device)
    if isinstance(map_location, dict):
        target = map_location.get(saved_device, saved_device)
    elif map_location is None:
        target = saved_device
    else:
        target = map_location
    device = torch.device(target)
    if device.type == "cpu":
        return t
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"the checkpoint holds a tensor saved on {saved_device}, but CUDA is not available; "
            "pass map_location='cpu'"
        )
    return t.to(device)


def load(path, map_location=None, trusted=False, keys=None, dataset=None):
    """Loads the checkpoint directory at ``path``.

    Returns the saved object, or with ``keys`` a dict of the selected entries
    (see ``Checkpoint.load``); only their bytes are read. Tensors come back
    on their saved device, or as ``map_location`` says: a device (``'cpu'``),
    a dict mapping saved device strings to devices, or a callable
    ``(tensor, saved_device) -> tensor``. Every part's CRC32C is verified
    (ChecksumError names the tensor). Nothing in the file is executed:
    pickled entries (only present when saved with ``trusted=True``) raise
    UnsafeCheckpointError unless ``trusted=True`` is passed here too.

    ``dataset``: the dataset (path, list of paths, or fingerprint string) being
    trained on; when the checkpoint's top-level ``"dataset_fingerprint"``
    differs, a DatasetMismatchWarning says so.

    Raises FileNotFoundError when nothing is at ``path``, FormatError when it
    is not a complete checkpoint, ChecksumError when bytes are damaged.
    """
    with Checkpoint(path, map_location=map_location, trusted=trusted) as ck:
        if dataset is not None:
            from .training import check_dataset_fingerprint

            try:
                saved = ck.load(["dataset_fingerprint"])["dataset_fingerprint"]
            except (KeyError, TypeError):
                saved = None
            check_dataset_fingerprint(saved, dataset, ck.path)
        return ck.load(keys)
