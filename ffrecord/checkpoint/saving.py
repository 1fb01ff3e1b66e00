"""save(): an object tree written as a checkpoint directory, committed atomically.

The pieces shared with ``async_save`` live here too: ``SavePlan`` (the encoded
tree, the arrays and the record plan) and ``PayloadWriter`` (records into
``data-NNNNN.ffr`` files through the C++ checkpoint writer: O_DIRECT from a
ring of reused aligned buffers, CRC32C computed while copying).
"""

import collections
import os

import numpy as np

from .. import __version__, _core
from .commit import DirectoryCommit, sync_point
from .encoding import Encoder, torch_dtype_name
from .gc_pause import gc_paused
from .layout import (
    CHUNK_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    PACK_BYTES,
    PACK_LIMIT,
    PIECE_ALIGN,
    data_file_name,
    plan_records,
    write_manifest,
)

__all__ = ["save", "SavePlan", "PayloadWriter", "Written", "tensor_bytes"]

DEFAULT_FILE_BYTES = 64 << 30


def _torch():
    import torch

    return torch


def tensor_bytes(t):
    """The bytes of tensor ``t`` as a flat, contiguous uint8 tensor on its device
    (a view when ``t`` is already contiguous, else one copy)."""
    torch = _torch()
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        # Copy through a same-width integer view: bit-exact, and works for the
        # dtypes that have no copy kernel of their own (int1..7, bits...).
        same = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(t.element_size())
        t = t.view(same).contiguous() if same is not None else t.contiguous()
    return t.reshape(-1).view(torch.uint8)


class ArraySource:
    """One tensor, numpy array or pickled blob to be stored, with its manifest entry."""

    def __init__(self, value, kind, path):
        self.value, self.kind, self.path = value, kind, path
        if kind == "torch":
            self.nbytes = value.numel() * value.element_size()
            self.meta = {
                "kind": "torch",
                "dtype": torch_dtype_name(value.dtype),
                "shape": list(value.shape),
                "device": str(value.device),
                "nbytes": self.nbytes,
            }
        elif kind == "numpy":
            self.nbytes = int(value.nbytes)
            self.meta = {"kind": "numpy", "dtype": value.dtype.str, "shape": list(value.shape), "nbytes": self.nbytes}
        else:  # a pickled blob (bytes)
            self.nbytes = len(value)
            self.meta = {"nbytes": self.nbytes}

    @property
    def device(self):
        return self.value.device if self.kind == "torch" else None

    def byte_tensor(self):
        """Flat uint8 torch tensor of the bytes, on the value's device."""
        torch = _torch()
        if self.kind == "torch":
            return tensor_bytes(self.value)
        return torch.from_numpy(self.cpu_bytes())

    def cpu_bytes(self):
        """Flat uint8 numpy array of the bytes in host memory."""
        if self.kind == "torch":
            b = tensor_bytes(self.value)
            return (b if b.device.type == "cpu" else b.cpu()).numpy()
        if self.kind == "numpy":
            return np.ascontiguousarray(self.value).reshape(-1).view(np.uint8)
        return np.frombuffer(bytearray(self.value), dtype=np.uint8)

    def host_memory(self):
        """``(owner, address)``: the contiguous bytes in host memory, which stay
        valid while ``owner`` is referenced. No copy for a contiguous CPU tensor."""
        v = self.value
        if self.kind == "torch" and v.device.type == "cpu" and v.is_contiguous() and not v.is_conj() and not v.is_neg():
            return v, v.data_ptr()
        b = self.cpu_bytes()
        return b, b.__array_interface__["data"][0]


class SavePlan:
    """What a save writes: the encoded tree, the arrays and pickled blobs
    (``items``: arrays first, then blobs), and the records they go to."""

    def __init__(self, obj, trusted=False, chunk_bytes=None, pack_bytes=PACK_BYTES):
        enc = Encoder(trusted=trusted)
        self.tree = enc.encode(obj)
        self.items = [ArraySource(v, "torch" if _is_tensor(v) else "numpy", p) for v, p in enc.arrays]
        self.num_arrays = len(self.items)
        self.items += [ArraySource(blob, "pickle", p) for blob, p in enc.pickles]
        chunk = CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
        if chunk < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.records = plan_records(
            [it.nbytes for it in self.items], min(PACK_LIMIT, chunk), min(pack_bytes, max(chunk, 1 << 12)), chunk
        )
        self.parts = [[] for _ in self.items]

    @property
    def total_bytes(self):
        return sum(it.nbytes for it in self.items)

    def record_written(self, record, written):
        """Notes where the pieces of ``record`` landed (a ``Written``)."""
        for k, (i, _, n) in enumerate(record):
            self.parts[i].append([written.file, written.record, int(written.piece_offsets[k]), n, int(written.piece_crcs[k])])

    def manifest(self, files):
        arrays = []
        for it, parts in zip(self.items[: self.num_arrays], self.parts):
            arrays.append(dict(it.meta, parts=parts))
        pickles = [dict(it.meta, parts=parts) for it, parts in zip(self.items[self.num_arrays :], self.parts[self.num_arrays :])]
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": "tree",
            "library": f"ffrecord {__version__}",
            "files": files,
            "tree": self.tree,
            "arrays": arrays,
            "pickles": pickles,
        }


def _is_tensor(v):
    return type(v).__module__.startswith("torch")


Written = collections.namedtuple(
    "Written", "file record offset length piece_offsets piece_crcs block_crcs"
)
Written.__doc__ = """Where a record landed: file (index into PayloadWriter.files), record index,
file offset and length, and the CRC32C of each piece (and of each block, in block mode)."""


class PayloadWriter:
    """Writes records into ``<prefix>-NNNNN.ffr`` files in ``directory``,
    starting a new file once one reaches ``file_bytes``."""

    def __init__(self, directory, file_bytes=None, prefix="data", block_size=0):
        self.directory = directory
        self.file_bytes = DEFAULT_FILE_BYTES if file_bytes is None else int(file_bytes)
        if self.file_bytes < 1:
            raise ValueError(f"file_bytes must be positive, got {file_bytes}")
        self.prefix = prefix
        self.block_size = block_size
        self.files = []
        self._writer = None

    def _open_next(self):
        if self._writer is not None:
            self._close_current()
        name = data_file_name(len(self.files), self.prefix)
        self._writer = _core.CheckpointFileWriter(os.path.join(self.directory, name), io_threads=3, buffers=8)
        self.files.append({"name": name})

    def _close_current(self):
        w = self._writer
        records = w.records
        w.finish(b'{"format":"ffrecord-checkpoint-data"}')
        self.files[-1].update(size=os.stat(w.path).st_size, records=records)
        self._writer = None

    def write(self, pieces):
        """Appends one record made of ``pieces`` (C-contiguous buffers, or
        ``(address, size)`` pairs of memory the caller keeps alive); returns
        where it landed and its checksums, as a ``Written``."""
        if self._writer is None or self._writer.size >= self.file_bytes:
            self._open_next()
        index, offset, length, offsets, crcs, blocks = self._writer.write_record(
            list(pieces), PIECE_ALIGN, self.block_size
        )
        sync_point("record-written")
        return Written(len(self.files) - 1, index, offset, length, offsets, crcs, blocks)

    def finish(self):
        """Completes and fsyncs every file; returns the manifest's file list."""
        if self._writer is not None:
            self._close_current()
        return self.files

    def abort(self):
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def write_plan(plan, directory, file_bytes=None, memory=None):
    """Writes every record of ``plan`` straight from the arrays' memory, then
    the manifest, into ``directory``. ``memory``: each item's ``host_memory()``,
    when the caller resolved them already."""
    out = PayloadWriter(directory, file_bytes)
    try:
        cached = (None, None, 0)  # the chunks of a large array come in a row
        for record in plan.records:
            pieces, owners = [], []
            for i, start, n in record:
                if cached[0] != i:
                    cached = (i, *(plan.items[i].host_memory() if memory is None else memory[i]))
                owners.append(cached[1])  # keeps the memory alive until written
                pieces.append((cached[2] + start, n))
            plan.record_written(record, out.write(pieces))
            del owners
        files = out.finish()
    except BaseException:
        out.abort()
        raise
    sync_point("data-written")
    write_manifest(directory, plan.manifest(files))
    sync_point("manifest-written")


def save(obj, path, *, trusted=False, chunk_bytes=None, file_bytes=None):
    """Saves ``obj`` as a checkpoint directory at ``path``, atomically and durably.

    ``obj`` is a nested structure of dicts (any hashable plain keys), lists,
    tuples, tensors, numpy arrays and plain values (see
    ``ffrecord.checkpoint.encoding`` for the exact list). Tensors are stored
    bit-exactly with dtype and shape (made contiguous); every part carries a
    CRC32C. Leaves that are the same view of the same memory (tied weights)
    are stored once and load as one tensor; other views sharing a storage are
    stored separately. Other objects are refused with TypeError unless
    ``trusted=True``, which pickles them.

    When this returns, the checkpoint is on disk (fsynced) and ``path`` names
    it; an existing checkpoint at ``path`` is replaced atomically. If the call
    fails or the process dies, ``path`` still holds what it held before.
    ``chunk_bytes`` (default 256 MiB) is the largest record a tensor is split
    into; ``file_bytes`` (default 64 GiB) starts a new data file past that size.
    """
    with gc_paused():
        plan = SavePlan(obj, trusted=trusted, chunk_bytes=chunk_bytes)
        commit = DirectoryCommit(path)
        with commit:
            write_plan(plan, commit.tmp, file_bytes)
            commit.commit()
        del plan  # freed while the collector is paused: nothing left for it to scan
