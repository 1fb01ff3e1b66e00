"""StorageWriter / StorageReader for torch.distributed.checkpoint (DCP).

    import torch.distributed.checkpoint as dcp
    dcp.save(state_dict, storage_writer=StorageWriter(path))
    dcp.load(state_dict, storage_reader=StorageReader(path))   # any world size

Layout: the same kind of directory as ``save`` writes (``manifest.ffr`` plus
record files), with one file per rank (``rankNNNNN-00000.ffr``): every write
item (a tensor chunk, or the bytes DCP pickles for a non-tensor value) is one
record, and its location plus the CRC32C of every ``block_size`` bytes of it
go into DCP's metadata, which the coordinator stores as JSON in the manifest
(never pickled).

Lifecycle, as DCP drives it on a save:

1. (all ranks) ``reset``, ``set_up_storage_writer``, ``prepare_local_plan``;
2. (coordinator) ``prepare_global_plan`` creates the hidden temporary
   directory beside the target and tells every rank its name and file prefix
   through the plans' ``storage_data``;
3. (all ranks) ``write_data`` writes the rank's file into it (O_DIRECT,
   CRC32C while copying) and fsyncs it;
4. (coordinator) ``finish`` writes the manifest and commits the directory
   atomically (see ``ffrecord.checkpoint.commit``): the target shows the
   previous checkpoint until the new one is complete on every rank.

On load, each read item names a box inside a stored chunk (DCP reshards by
reading parts of chunks). The reader reads the blocks covering that box,
verifies their CRC32C, and only then copies the box into the destination, so
content is verified after resharding too. The bytes of non-tensor values are
handed to DCP's planner (which unpickles them with ``torch.load``) only if
they pass ``torch.load(weights_only=True)``, unless the reader was created
with ``trusted=True``.

The temporary directory lives on the filesystem every rank writes to, so
ranks must share it (as DCP's FileSystemWriter assumes too). DCP's
``use_collectives=False`` mode (no coordinator) is not supported.
"""

import dataclasses
import io
import os
import uuid

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import StorageReader as _StorageReaderBase
from torch.distributed.checkpoint.storage import StorageWriter as _StorageWriterBase
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .. import __version__, _core
from ..errors import ChecksumError, FormatError
from .commit import DirectoryCommit, resolve_for_load
from .encoding import Decoder, Encoder, UnsafeCheckpointError, torch_dtype_by_name, torch_dtype_name
from .layout import FORMAT_NAME, FORMAT_VERSION, read_manifest, write_manifest
from .saving import PayloadWriter, tensor_bytes

__all__ = ["StorageWriter", "StorageReader", "ChunkLocation"]

DEFAULT_BLOCK_BYTES = 4 << 20
DCP_VERSION = "1.0.0"  # the metadata version DCP's own FileSystemWriter writes


@dataclasses.dataclass(frozen=True)
class ChunkLocation:
    """Where one write item is stored: file name, record index, file offset
    and length of the record, the chunk's shape (empty for bytes), and the
    CRC32C of each ``block_size`` slice of the record."""

    file: str
    record: int
    offset: int
    length: int
    shape: tuple
    block_size: int
    block_crcs: tuple


@dataclasses.dataclass(frozen=True)
class _RankPlan:
    directory: str  # name of the temporary directory, beside the target
    prefix: str  # this rank's file prefix


def _is_path(checkpoint_id):
    try:
        return "://" not in os.fspath(checkpoint_id)
    except TypeError:
        return False


class StorageWriter(_StorageWriterBase):
    """Writes a DCP checkpoint as an ffrecord checkpoint directory at ``path``.

    ``block_size``: bytes covered by each CRC32C (a reshard reads and verifies
    whole blocks around what it needs). ``overwrite=False`` refuses to replace
    an existing checkpoint. ``file_bytes`` starts a new file per rank past
    that size.
    """

    def __init__(self, path, *, block_size=DEFAULT_BLOCK_BYTES, overwrite=True, file_bytes=None):
        super().__init__()
        if block_size < 4096 or block_size % 4096:
            raise ValueError("block_size must be a positive multiple of 4096")
        self.path = os.path.abspath(os.fspath(path))
        self.block_size = int(block_size)
        self.overwrite = overwrite
        self.file_bytes = file_bytes
        self.save_id = str(uuid.uuid4())
        self.is_coordinator = False
        self.rank = 0
        self._commit = None

    # ---- lifecycle ---------------------------------------------------------
    def reset(self, checkpoint_id=None):
        if checkpoint_id:
            self.path = os.path.abspath(os.fspath(checkpoint_id))
        self.save_id = str(uuid.uuid4())
        if self._commit is not None:
            self._commit.abort()  # a previous save that failed before finish()
            self._commit = None

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        if kwargs.get("use_collectives", True) is False:
            raise ValueError("ffrecord's StorageWriter needs DCP's collectives (use_collectives=True)")
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank") or 0

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        if not self.overwrite and os.path.lexists(self.path):
            raise FileExistsError(17, "checkpoint exists and overwrite=False", self.path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if self._commit is not None:
            self._commit.abort()
        self._commit = DirectoryCommit(self.path)
        name = os.path.basename(self._commit.tmp)
        return [dataclasses.replace(p, storage_data=_RankPlan(name, f"rank{i:05d}")) for i, p in enumerate(plans)]

    def write_data(self, plan, planner):
        rank_plan = plan.storage_data
        if not isinstance(rank_plan, _RankPlan):
            raise ValueError("the save plan carries no ffrecord storage data (was the global plan cached?)")
        directory = os.path.join(os.path.dirname(self.path), rank_plan.directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(2, "the checkpoint's temporary directory is missing (not a shared filesystem?)", directory)
        out = PayloadWriter(directory, self.file_bytes, prefix=rank_plan.prefix, block_size=self.block_size)
        results = []
        try:
            for item in plan.items:
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    buf, shape = np.frombuffer(data.getbuffer(), dtype=np.uint8), ()
                else:
                    t = tensor_bytes(data)
                    buf, shape = (t if t.device.type == "cpu" else t.cpu()).numpy(), tuple(data.shape)
                w = out.write([buf])
                loc = ChunkLocation(
                    out.files[w.file]["name"], w.record, w.offset, w.length, shape, self.block_size,
                    tuple(int(c) for c in w.block_crcs),
                )
                results.append(WriteResult(index=item.index, size_in_bytes=w.length, storage_data=loc))
            out.finish()
        except BaseException:
            out.abort()
            raise
        fut = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata, results):
        if self._commit is None:
            raise RuntimeError("finish() without prepare_global_plan() on the coordinator")
        storage = {}
        for rank_results in results:
            for wr in rank_results:
                storage[wr.index] = wr.storage_data
        metadata.storage_data = storage
        metadata.storage_meta = self.storage_meta()
        metadata.version = DCP_VERSION
        names = sorted({loc.file for loc in storage.values()})
        files = [{"name": n, "size": os.path.getsize(self._commit.path(n))} for n in names]
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": "dcp",
            "library": f"ffrecord {__version__}",
            "files": files,
            "dcp": _encode_metadata(metadata),
        }
        try:
            write_manifest(self._commit.tmp, manifest)
            self._commit.commit()
        except BaseException:
            self._commit.abort()
            raise
        finally:
            self._commit = None

    def storage_meta(self):
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    @property
    def checkpoint_id(self):
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _is_path(checkpoint_id)


class StorageReader(_StorageReaderBase):
    """Reads a checkpoint written by ``StorageWriter``, for any world size.

    ``trusted=True`` hands DCP's planner the bytes of non-tensor values even
    when they need more than ``torch.load(weights_only=True)`` allows.
    ``direct`` is as for ``load``: reads go through the page cache (shared
    by the ranks of a node) unless ``direct=True``.
    """

    def __init__(self, path, *, trusted=False, direct=False):
        super().__init__()
        self.path = os.path.abspath(os.fspath(path))
        self.trusted = trusted
        self.direct = bool(direct)
        self.load_id = str(uuid.uuid4())
        self.storage_data = {}
        self._dtypes = {}
        self._readers = {}
        self._directory = None

    def reset(self, checkpoint_id=None):
        self.close()
        if checkpoint_id:
            self.path = os.path.abspath(os.fspath(checkpoint_id))
        self.storage_data = {}
        self.load_id = str(uuid.uuid4())

    def read_metadata(self, *args, **kwargs):
        if kwargs.get("rank") is not None:
            raise FileNotFoundError(2, "ffrecord DCP checkpoints keep one global metadata, not per-rank ones", self.path)
        self._directory = resolve_for_load(self.path)
        manifest = read_manifest(self._directory, kind="dcp")
        self._files = {f["name"] for f in manifest["files"]}
        metadata = _decode_metadata(manifest.get("dcp"), self._directory, self._files)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata, is_coordinator, *args, **kwargs):
        self.storage_data = metadata.storage_data
        self._dtypes = {
            fqn: md.properties.dtype
            for fqn, md in metadata.state_dict_metadata.items()
            if isinstance(md, TensorStorageMetadata)
        }
        if self._directory is None:
            self._directory = resolve_for_load(self.path)

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        return plans

    def read_data(self, plan, planner):
        try:
            # Items in file order, so each rank reads its files front to back.
            items = sorted(plan.items, key=lambda r: (self._location(r).file, self._location(r).offset))
            for req in items:
                loc = self._location(req)
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(self._read_bytes(req, loc)))
                    continue
                target = planner.resolve_tensor(req).detach()
                self._read_tensor(req, loc, target)
                planner.commit_tensor(req, target)
        finally:
            self.close()
        fut = Future()
        fut.set_result(None)
        return fut

    def close(self):
        self._readers.clear()

    @property
    def checkpoint_id(self):
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _is_path(checkpoint_id)

    # ---- reading -----------------------------------------------------------
    def _location(self, req):
        loc = self.storage_data.get(req.storage_index)
        if loc is None:
            raise FormatError(f"{self.path}: no stored data for {req.storage_index.fqn} at {req.storage_index.offset}")
        return loc

    def _file_path(self, loc):
        return os.path.join(self._directory, loc.file)

    def _reader(self, loc):
        r = self._readers.get(loc.file)
        if r is None:
            r = self._readers[loc.file] = _core.CheckpointFileReader(self._file_path(loc), direct=self.direct)
        if loc.record >= r.records or r.record_length(loc.record) != loc.length:
            raise FormatError(f"{self._file_path(loc)}: record {loc.record} does not match the checkpoint metadata")
        return r

    def _read_blocks(self, loc, first, end, address, what):
        """Reads blocks [first, end) of the record to ``address``, verifying each
        block's CRC32C as it lands."""
        bs = loc.block_size
        starts = np.arange(first, end, dtype=np.uint64) * np.uint64(bs)
        lengths = np.minimum(np.uint64(loc.length) - starts, np.uint64(bs))
        bad = self._reader(loc).read_verified(
            np.full(len(starts), loc.record, dtype=np.uint64),
            starts,
            lengths,
            np.array(loc.block_crcs[first:end], dtype=np.uint32),
            np.uint64(address) + (starts - starts[:1]) if len(starts) else starts,
        )
        if bad >= 0:
            raise ChecksumError(
                f"{self._file_path(loc)}: CRC32C mismatch in {what} (record {loc.record}, block {first + bad} of "
                f"{bs} bytes)"
            )

    def _read_bytes(self, req, loc):
        buf = np.empty(loc.length, dtype=np.uint8)
        self._read_blocks(loc, 0, len(loc.block_crcs), buf.__array_interface__["data"][0],
                          f"entry {req.storage_index.fqn!r}")
        data = buf.tobytes()
        if not self.trusted:
            try:
                torch.load(io.BytesIO(data), weights_only=True)
            except Exception as e:
                raise UnsafeCheckpointError(
                    f"{self.path}: entry {req.storage_index.fqn!r} is a pickle that torch.load(weights_only=True) "
                    f"refuses ({type(e).__name__}); pass trusted=True to StorageReader to load it"
                ) from None
        return data

    def _read_tensor(self, req, loc, target):
        fqn = req.storage_index.fqn
        dtype = self._dtypes.get(fqn)
        what = f"tensor {fqn!r} (chunk at {list(req.storage_index.offset or ())})"
        shape, lengths, offsets = list(loc.shape), list(req.lengths), list(req.storage_offsets)
        if dtype is None or len(shape) != len(lengths) or len(offsets) != len(shape):
            raise FormatError(f"{self.path}: read request for {what} does not match the stored chunk")
        for o, n, s in zip(offsets, lengths, shape):
            if o < 0 or n < 0 or o + n > s:
                raise FormatError(f"{self.path}: read request for {what} lies outside the stored chunk")
        item = dtype.itemsize
        if target.dtype != dtype or list(target.shape) != lengths:
            raise ValueError(f"{what}: destination is {target.dtype} {list(target.shape)}, stored {dtype} {lengths}")
        if 0 in lengths:
            return
        strides = [1] * len(shape)
        for d in range(len(shape) - 2, -1, -1):
            strides[d] = strides[d + 1] * shape[d + 1]
        first = sum(o * st for o, st in zip(offsets, strides))
        last = sum((o + n - 1) * st for o, n, st in zip(offsets, lengths, strides))
        bs = loc.block_size
        if first == 0 and (last + 1) * item == loc.length and target.device.type == "cpu" and target.is_contiguous():
            # The request is the whole chunk: read straight into the destination.
            self._read_blocks(loc, 0, len(loc.block_crcs), target.data_ptr(), what)
            return
        # A box inside the chunk (DCP resharding): read and verify the whole
        # blocks around the elements it spans, then copy the box out.
        b0, b1 = first * item // bs, -(-((last + 1) * item) // bs)
        buf = torch.empty(min(b1 * bs, loc.length) - b0 * bs, dtype=torch.uint8)
        self._read_blocks(loc, b0, b1, buf.data_ptr(), what)
        begin = b0 * bs
        flat = buf[first * item - begin : (last + 1) * item - begin].view(dtype)
        target.copy_(flat.as_strided(lengths, strides))


# ---- metadata as JSON (never pickled) -------------------------------------
def _encode_metadata(md):
    entries = []
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, TensorStorageMetadata):
            p = m.properties
            entries.append({
                "fqn": fqn,
                "type": "tensor",
                "dtype": torch_dtype_name(p.dtype),
                "requires_grad": bool(p.requires_grad),
                "size": list(m.size),
                "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks],
            })
        elif isinstance(m, BytesStorageMetadata):
            entries.append({"fqn": fqn, "type": "bytes"})
        else:
            raise TypeError(f"unknown DCP storage metadata type {type(m).__name__} for {fqn!r}")
    storage = []
    for idx, loc in md.storage_data.items():
        storage.append({
            "fqn": idx.fqn,
            "offset": None if idx.offset is None else list(idx.offset),
            "index": idx.index,
            "file": loc.file,
            "record": loc.record,
            "at": loc.offset,
            "length": loc.length,
            "shape": list(loc.shape),
            "block_size": loc.block_size,
            "block_crcs": list(loc.block_crcs),
        })
    enc = Encoder(trusted=False)
    try:
        planner_data = enc.encode(md.planner_data)
    except TypeError as e:
        raise TypeError(f"DCP planner data cannot be stored as plain values: {e}") from None
    if enc.arrays:
        raise TypeError("DCP planner data holds tensors or arrays; ffrecord stores only plain planner data")
    sm = md.storage_meta
    storage_meta = None
    if sm is not None:
        storage_meta = {
            "checkpoint_id": None if sm.checkpoint_id is None else os.fspath(sm.checkpoint_id),
            "save_id": sm.save_id,
            "modules": list(sm.modules),
        }
    return {
        "version": md.version,
        "state_dict_metadata": entries,
        "planner_data": planner_data,
        "storage": storage,
        "storage_meta": storage_meta,
    }


def _decode_metadata(doc, where, files):
    def bad(what):
        return FormatError(f"{where}: malformed DCP metadata: {what}")

    def ints(x, what):
        if not isinstance(x, list) or not all(type(v) is int and v >= 0 for v in x):
            raise bad(what)
        return x

    if not isinstance(doc, dict):
        raise bad("not an object")
    sdm = {}
    for e in doc.get("state_dict_metadata") or []:
        fqn = e.get("fqn") if isinstance(e, dict) else None
        if not isinstance(fqn, str):
            raise bad(f"entry {e!r}")
        if e.get("type") == "bytes":
            sdm[fqn] = BytesStorageMetadata()
            continue
        dtype = torch_dtype_by_name(e.get("dtype"))
        if e.get("type") != "tensor" or dtype is None:
            raise bad(f"entry for {fqn!r}")
        size = ints(e.get("size"), f"size of {fqn!r}")
        chunks = []
        for c in e.get("chunks") or []:
            if not isinstance(c, list) or len(c) != 2:
                raise bad(f"chunk of {fqn!r}")
            off, sz = ints(c[0], f"chunk of {fqn!r}"), ints(c[1], f"chunk of {fqn!r}")
            if len(off) != len(size) or len(sz) != len(size):
                raise bad(f"chunk rank of {fqn!r}")
            chunks.append(ChunkStorageMetadata(offsets=torch.Size(off), sizes=torch.Size(sz)))
        props = TensorProperties(dtype=dtype, requires_grad=bool(e.get("requires_grad")))
        sdm[fqn] = TensorStorageMetadata(properties=props, size=torch.Size(size), chunks=chunks)
    storage = {}
    for s in doc.get("storage") or []:
        if not isinstance(s, dict) or not isinstance(s.get("fqn"), str):
            raise bad(f"storage entry {s!r}")
        offset = s.get("offset")
        idx = MetadataIndex(s["fqn"], None if offset is None else ints(offset, "index offset"), s.get("index") if type(s.get("index")) is int else None)
        nums = [s.get(k) for k in ("record", "at", "length", "block_size")]
        if not all(type(v) is int and v >= 0 for v in nums) or s.get("file") not in files or nums[3] == 0:
            raise bad(f"storage entry for {s['fqn']!r}")
        shape = ints(s.get("shape"), "chunk shape")
        crcs = ints(s.get("block_crcs"), "block checksums")
        if len(crcs) != -(-nums[2] // nums[3]):
            raise bad(f"block checksums of {s['fqn']!r}")
        dtype = sdm.get(s["fqn"]).properties.dtype if isinstance(sdm.get(s["fqn"]), TensorStorageMetadata) else None
        if dtype is not None:
            count = 1
            for x in shape:
                count *= x
            if count * dtype.itemsize != nums[2]:
                raise bad(f"chunk shape of {s['fqn']!r} does not match its length")
        storage[idx] = ChunkLocation(s["file"], nums[0], nums[1], nums[2], tuple(shape), nums[3], tuple(crcs))
    planner_data = Decoder(where, _no_arrays(bad), _no_arrays(bad)).decode(doc.get("planner_data"))
    sm = doc.get("storage_meta")
    storage_meta = None
    if isinstance(sm, dict):
        storage_meta = StorageMeta(
            checkpoint_id=sm.get("checkpoint_id") if isinstance(sm.get("checkpoint_id"), str) else None,
            save_id=sm.get("save_id") if isinstance(sm.get("save_id"), str) else None,
            modules=[m for m in sm.get("modules") or [] if isinstance(m, str)],
        )
    version = doc.get("version") if isinstance(doc.get("version"), str) else None
    return Metadata(
        state_dict_metadata=sdm,
        planner_data=planner_data,
        storage_data=storage,
        storage_meta=storage_meta,
        version=version,
    )


def _no_arrays(bad):
    def refuse(*args):
        raise bad("planner data refers to stored arrays")

    return refuse
