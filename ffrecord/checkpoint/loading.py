"""load() and Checkpoint: reading a checkpoint directory back, whole or in part.

Tensor bytes are read into the final tensor storage (no intermediate
``bytes``), in file order, by the C++ checkpoint reader: each 4 MiB piece is
hashed as it is copied, so the CRC32C check costs no second pass over memory.
Reads go through the page cache (copies out of a mapping of each file), with
the kernel asked to read well ahead of the copying threads, so a second load
(or another process on the node loading the same checkpoint) finds the bytes
cached; ``direct=True`` reads what the cache does not hold with O_DIRECT
instead, leaving the cache as it was. ``mmap=True`` copies nothing: tensors
are views of private, copy-on-write mappings of the data files, verified in
place. A mismatch raises ChecksumError naming the tensor. The GIL is released
while reading.
"""

import os
import pickle

import numpy as np

from .. import _core
from ..errors import ChecksumError, FormatError
from .commit import resolve_for_load
from .encoding import Decoder, UnsafeCheckpointError, format_path, numpy_dtype_from_str, torch_dtype_by_name
from .gc_pause import gc_paused
from .layout import read_manifest

__all__ = ["load", "Checkpoint"]



_U63 = 1 << 63  # part numbers from the manifest travel as signed 64-bit offsets


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
    it. Only the bytes of what is asked are read. ``map_location``,
    ``trusted``, ``direct`` and ``mmap`` are as for ``load``. A context manager;
    ``close()`` releases the files.
    """

    def __init__(self, path, map_location=None, trusted=False, direct=False, mmap=False):
        if direct and mmap:
            raise ValueError("direct=True and mmap=True exclude each other: a mapping reads through the page cache")
        self.path = resolve_for_load(path)
        self.map_location = map_location
        self.trusted = bool(trusted)
        self.direct = bool(direct)
        self.mmap = bool(mmap)
        with gc_paused():
            self._manifest = read_manifest(self.path)
        if self._manifest.get("kind") != "tree":
            hint = ""
            if self._manifest.get("kind") == "dcp":
                hint = "; it was written by torch.distributed.checkpoint: load it with StorageReader"
            raise FormatError(f"{self.path}: checkpoint of kind {self._manifest.get('kind')!r}{hint}")
        self._files = [f["name"] for f in self._manifest["files"]]
        self._readers = {}
        for table in ("arrays", "pickles"):
            if not isinstance(self._manifest.get(table), list):
                raise self._bad(f"no '{table}' list")
        self._entries = {}  # (table, index) -> checked (entry, dtype, parts), on first use
        self._names = None

    # ---- validation of the tables (every number from disk is hostile) ------
    def _bad(self, what):
        return FormatError(f"{self.path}: malformed checkpoint manifest: {what}")

    def _entry(self, table, i):
        """Entry ``i`` of the "arrays" or "pickles" table, checked: (entry, dtype, parts)."""
        key = (table, i)
        got = self._entries.get(key)
        if got is not None:
            return got
        entries = self._manifest[table]
        if type(i) is not int or not 0 <= i < len(entries):
            raise self._bad(f"the tree refers to {table}[{i}], the table has {len(entries)}")
        e = entries[i]
        if not isinstance(e, dict):
            raise self._bad(f"{table}[{i}] is not an object")
        nbytes = e.get("nbytes")
        if type(nbytes) is not int or nbytes < 0:
            raise self._bad(f"{table}[{i}]: bad nbytes")
        dtype = self._check_array(table, i, e, nbytes) if table == "arrays" else None
        parts = e.get("parts")
        if not isinstance(parts, list):
            raise self._bad(f"{table}[{i}]: no parts")
        plist, start, nfiles = [], 0, len(self._files)
        for p in parts:
            if type(p) is not list or len(p) != 5:
                raise self._bad(f"{table}[{i}]: bad part {p!r}")
            f, rec, off, n, crc = p
            if (
                type(f) is not int or type(rec) is not int or type(off) is not int or type(n) is not int
                or type(crc) is not int or not 0 <= f < nfiles or not 0 <= rec < _U63 or not 0 <= off < _U63
                or not 0 <= n < _U63 or off + n >= _U63 or not 0 <= crc <= 0xFFFFFFFF
            ):
                raise self._bad(f"{table}[{i}]: bad part {p!r}")
            plist.append(_Part(key, f, rec, off, n, crc, start))
            start += n
        if start != nbytes:
            raise self._bad(f"{table}[{i}]: parts hold {start} bytes, the entry {nbytes}")
        got = self._entries[key] = (e, dtype, plist)
        return got

    def _check_array(self, table, i, e, nbytes):
        kind, shape = e.get("kind"), e.get("shape")
        if type(shape) is not list or len(shape) > 64:
            raise self._bad(f"{table}[{i}]: bad shape")
        count = 1
        for x in shape:
            if type(x) is not int or x < 0:
                raise self._bad(f"{table}[{i}]: bad shape")
            count *= x
        if kind == "torch":
            dtype = torch_dtype_by_name(e.get("dtype"))
            if dtype is None:
                raise self._bad(f"{table}[{i}]: unknown torch dtype {e.get('dtype')!r}")
            if not _is_device_name(e.get("device")):
                raise self._bad(f"{table}[{i}]: bad device {e.get('device')!r}")
        elif kind == "numpy":
            dtype = numpy_dtype_from_str(e.get("dtype"))
            if dtype is None or dtype.itemsize == 0:
                raise self._bad(f"{table}[{i}]: unsupported numpy dtype {e.get('dtype')!r}")
        else:
            raise self._bad(f"{table}[{i}]: unknown kind {kind!r}")
        if count * dtype.itemsize != nbytes:
            raise self._bad(f"{table}[{i}]: shape {shape} and dtype do not make {nbytes} bytes")
        return dtype

    # ---- public surface ----------------------------------------------------
    def _tree(self):
        if self._manifest is None:
            raise ValueError(f"{self.path}: the Checkpoint is closed")
        return self._manifest["tree"]

    def keys(self):
        """Top-level keys, when the saved object is a dict."""
        tree = self._tree()
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
        out = {}
        for (table, i), path in self._paths().items():
            if table == "arrays":
                e = self._entry(table, i)[0]
                out[path] = {k: e[k] for k in ("kind", "dtype", "shape", "nbytes")}
        return out

    def load(self, keys=None):
        """Everything (``keys=None``), or ``{key: subtree}`` for each entry of
        ``keys``: a top-level key, or a *list* giving a path into the tree
        (e.g. ``["model", "fc.weight"]``; the result is keyed by its tuple)."""
        with gc_paused():
            return self._load(keys)

    def _load(self, keys):
        tree = self._tree()
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
        """Releases the files and the manifest; further use raises ValueError."""
        self._readers.clear()
        self._entries.clear()
        self._names = None
        self._manifest = None

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

    def _paths(self):
        """(table, index) -> the first tree path referring to it (for messages)."""
        if self._names is None:
            names = {}

            def note(kind, i, k, path):
                names.setdefault(("arrays" if kind == "array" else "pickles", i), path)

            self._decoder(note).decode(self._tree())
            self._names = names
        return self._names

    def _materialize(self, nodes, many):
        """Decodes the tree ``nodes``, reading exactly the arrays they refer to,
        once each; returns the list of values (``many``) or the only one."""
        wanted = {}
        for tag, i in _references(nodes):
            if type(i) is not int:
                raise self._bad(f"a {tag} node without a valid index")
            wanted.setdefault(("pickles" if tag == "pickle" else "arrays", i), tag)
        if any(t == "pickles" for t, _ in wanted) and not self.trusted:
            first = next(k for k in wanted if k[0] == "pickles")
            where = format_path(self._paths().get(first, ()))
            raise UnsafeCheckpointError(
                f"{self.path}: the checkpoint holds pickled objects (e.g. at {where}); unpickling can run "
                "arbitrary code, so load() refuses it unless called with trusted=True"
            )
        for (table, i), tag in wanted.items():
            e = self._entry(table, i)[0]
            if table == "arrays" and e["kind"] != ("torch" if tag == "tensor" else "numpy"):
                raise self._bad(f"a {tag} node refers to arrays[{i}] of kind {e['kind']!r}")
        buffers = self._read(list(wanted))
        values = {}

        def fetch(kind, i, k, path):
            key = ("arrays" if kind == "array" else "pickles", i)
            if key not in buffers:  # the walk above saw every reference, so the tree is malformed
                raise self._bad(f"unexpected reference at {format_path(path)}")
            if key not in values:
                values[key] = self._build(key, buffers[key])
            return values[key]

        dec = self._decoder(fetch)
        out = [dec.decode(n) for n in nodes]
        return out if many else out[0]

    def _reader(self, f):
        r = self._readers.get(f)
        if r is None:
            r = _core.CheckpointFileReader(os.path.join(self.path, self._files[f]), direct=self.direct)
            expected = self._manifest["files"][f].get("records")
            if r.records != expected:
                raise FormatError(f"{self.path}/{self._files[f]}: {r.records} records, the manifest says {expected!r}")
            self._readers[f] = r
        return r

    def _parts(self, keys):
        """Every part of the items in ``keys`` ((table, index) pairs), in file
        order, checked: each must lie inside its record (the reader checks)
        and no two may overlap, so a small file cannot inflate into huge
        allocations."""
        parts = [p for key in keys for p in self._entry(*key)[2]]
        parts.sort(key=lambda p: (p.file, p.record, p.offset))
        prev = None
        for p in parts:
            if p.record >= self._reader(p.file).records:
                raise FormatError(f"{self.path}/{self._files[p.file]}: a part refers to record {p.record}, "
                                  f"the file has {self._reader(p.file).records}")
            if not p.length:
                continue  # an empty part overlaps nothing
            if prev is not None and (p.file, p.record) == (prev.file, prev.record) and p.offset < prev.offset + prev.length:
                raise FormatError(f"{self.path}/{self._files[p.file]}: overlapping parts in record {p.record}")
            prev = p
        return parts

    def _read(self, keys):
        """Allocates the destination of every item in ``keys`` ((table, index)
        pairs) and reads its parts into it; returns {key: buffer}: a uint8
        buffer, or for arrays read by copy the array itself (allocated with
        its dtype and shape: no view and reshape per tensor afterwards)."""
        if self.mmap:
            return self._map(keys)
        torch = _torch()
        buffers, address = {}, {}
        for key in keys:
            entry, dtype, _ = self._entry(*key)
            kind = _kind(key, entry)
            if kind == "torch":
                if dtype is torch.complex32:  # allocating it warns that the dtype is experimental; viewing does not
                    buf = torch.empty(entry["nbytes"], dtype=torch.uint8)
                else:
                    buf = torch.empty(entry["shape"], dtype=dtype)
                address[key] = buf.data_ptr()
            else:
                if kind == "numpy":
                    buf = np.empty(entry["shape"], dtype=dtype)
                else:  # a pickled entry's bytes
                    buf = np.empty(entry["nbytes"], dtype=np.uint8)
                address[key] = buf.__array_interface__["data"][0]
            buffers[key] = buf
        for batch in _by_file(self._parts(keys)):
            bad = self._reader(batch[0].file).read_verified(
                *_part_arrays(batch), np.array([address[p.item] + p.start for p in batch], dtype=np.uint64)
            )
            if bad >= 0:
                raise self._checksum_error(batch[bad])
        return buffers

    def _map(self, keys):
        """``mmap=True``: maps each data file private and copy-on-write, verifies
        the parts in place, and returns {key: uint8 view of the mapping}; an item
        whose parts are not contiguous in one file is copied out instead."""
        torch = _torch()
        located = {}  # part -> (mapping, file offset)
        for batch in _by_file(self._parts(keys)):
            mapping, offsets, bad = self._reader(batch[0].file).map_verified(*_part_arrays(batch))
            if bad >= 0:
                raise self._checksum_error(batch[bad])
            for p, at in zip(batch, offsets.tolist()):
                located[p] = (mapping, at)
        buffers = {}
        for key in keys:
            entry, _, plist = self._entry(*key)
            as_tensor = _kind(key, entry) == "torch"
            if plist and entry["nbytes"]:  # an empty array has nothing to view
                mapping, first = located[plist[0]]
                if all(located[p][0] is mapping and located[p][1] == first + p.start for p in plist):
                    make = torch.frombuffer if as_tensor else np.frombuffer
                    buffers[key] = make(mapping, dtype=torch.uint8 if as_tensor else np.uint8,
                                        count=entry["nbytes"], offset=first)
                    continue
            buf = torch.empty(entry["nbytes"], dtype=torch.uint8) if as_tensor else np.empty(entry["nbytes"], np.uint8)
            out = buf.numpy() if as_tensor else buf
            for p in plist:
                if not p.length:
                    continue
                mapping, at = located[p]
                out[p.start:p.start + p.length] = np.frombuffer(mapping, dtype=np.uint8, count=p.length, offset=at)
            buffers[key] = buf
        return buffers

    def _checksum_error(self, p):
        path = self._paths().get(p.item)
        what = "tensor" if p.item[0] == "arrays" else "pickled entry"
        return ChecksumError(
            f"{self.path}/{self._files[p.file]}: CRC32C mismatch in {what} {format_path(path or ())} "
            f"(record {p.record}, bytes {p.start}..{p.start + p.length} of it)"
        )

    def _build(self, key, buf):
        entry, dtype, _ = self._entry(*key)
        if key[0] == "pickles":
            return pickle.loads(buf.tobytes())
        if buf.dtype != dtype or buf.ndim != len(entry["shape"]):  # raw bytes (a mapping, or copied out of one)
            buf = buf.view(dtype).reshape(entry["shape"])
        if entry["kind"] == "numpy":
            return buf
        where = f"{self.path}: tensor {format_path(self._paths().get(key) or ())}"
        return _relocate(buf, entry["device"], self.map_location, where)


def _kind(key, entry):
    """"torch" or "numpy" for an array (its kind is checked with the entry),
    None for a pickled entry: bytes, whatever its entry claims."""
    return entry.get("kind") if key[0] == "arrays" else None


def _by_file(parts):
    """Consecutive runs of ``parts`` (in file order) that lie in one file."""
    batches = []
    for p in parts:
        if not batches or batches[-1][0].file != p.file:
            batches.append([])
        batches[-1].append(p)
    return batches


def _part_arrays(batch):
    return (
        np.array([p.record for p in batch], dtype=np.uint64),
        np.array([p.offset for p in batch], dtype=np.uint64),
        np.array([p.length for p in batch], dtype=np.uint64),
        np.array([p.crc for p in batch], dtype=np.uint32),
    )


def _references(nodes):
    """(tag, index) of every tensor/ndarray/pickle node under ``nodes`` (JSON),
    without decoding anything else; tolerant of malformed trees (the decoder
    reports those)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if type(node) is list:
            stack.extend(node)
        elif type(node) is dict:
            tag = node.get("$")
            if tag in ("tensor", "ndarray", "pickle"):
                yield tag, node.get("i")
            else:
                for field in ("k", "v", "m"):
                    if field in node:
                        stack.append(node[field])


def _is_device_name(name):
    """Whether ``name`` is a device a tensor can have been saved on (a
    checkpoint never holds meta tensors)."""
    if not isinstance(name, str) or not 0 < len(name) < 64:
        return False
    try:
        return _torch().device(name).type != "meta"
    except (RuntimeError, TypeError, ValueError):
        return False


def _relocate(t, saved_device, map_location, where):
    if map_location is None and saved_device == "cpu":
        return t
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
            f"{where} was saved on {saved_device}, but CUDA is not available; pass map_location='cpu'"
        )
    try:
        return t.to(device)
    except (RuntimeError, ImportError, AssertionError, ValueError) as e:
        # torch reports a device type without a backend in many ways (privateuseone: an import).
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise RuntimeError(
            f"{where} was saved on {saved_device} and cannot be moved to {device} here ({reason}); "
            "pass map_location='cpu'"
        ) from None


def load(path, map_location=None, trusted=False, keys=None, dataset=None, direct=False, mmap=False):
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

    ``direct``: False (the default) reads through the page cache, with the
    kernel asked to read ahead of the copying threads: the bytes stay cached,
    so loading the checkpoint again, or from several processes on one node
    (one per rank), reads the disk once. True reads what the page cache does
    not hold with O_DIRECT and leaves the cache as it was: for checkpoints
    larger than the free memory, or to keep the cache for other data (each
    load then reads the disk again). Where the filesystem refuses O_DIRECT,
    reads are buffered either way.

    ``mmap``: True returns CPU tensors and arrays that are views of private
    (copy-on-write) mappings of the checkpoint's files instead of copies:
    every byte is still verified against its CRC32C, in place, before load
    returns, but nothing is copied and no fresh memory is faulted in, so a
    cached checkpoint loads several times faster. The views share the page
    cache with every other process mapping the files; writing to a tensor
    gives it its own copy of the pages written, never changing the file.
    Trade-offs: the files stay open (and their disk space in use) while any
    such tensor lives, even after the checkpoint is deleted or replaced;
    pages the kernel reclaims under memory pressure are read from the file
    again later without a second verification; and truncating a file while
    it is mapped makes the lost pages fault (SIGBUS), as with any mapping.
    The default copies. Not with ``direct=True``.

    Raises FileNotFoundError when nothing is at ``path``, FormatError when it
    is not a complete checkpoint, ChecksumError when bytes are damaged.
    """
    with gc_paused():  # also while the manifest is freed: nothing left to scan after
        with Checkpoint(path, map_location=map_location, trusted=trusted, direct=direct, mmap=mmap) as ck:
            if dataset is not None:
                from .training import check_dataset_fingerprint

                try:
                    saved = ck.load(["dataset_fingerprint"])["dataset_fingerprint"]
                except (KeyError, TypeError):
                    saved = None
                check_dataset_fingerprint(saved, dataset, ck.path)
            return ck.load(keys)
