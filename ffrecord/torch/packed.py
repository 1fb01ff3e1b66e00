"""Packed batches: a whole batch as one uint8 tensor plus offsets.

A batch of ``n`` variable-length records crosses from a DataLoader worker to
the training process as one object (two tensors), instead of ``n`` Python
objects pickled one by one. Record ``k`` is ``data[offsets[k]:offsets[k+1]]``;
``batch[k]`` gives that view without a copy.
"""

from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch

from ..reader import record_views, views_unchanged
from . import _shipment, _transfer

__all__ = ["PackedBatch", "RecordViews", "packed_collate"]


def _as_tensor(array, dtype, what):
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(array)
    if not isinstance(array, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or numpy array, not {type(array).__name__}")
    if array.dtype != dtype or array.dim() != 1:
        raise TypeError(f"{what} must be a 1-D {dtype} tensor, got {array.dtype} with shape {tuple(array.shape)}")
    return array


class PackedBatch:
    """``data`` (1-D uint8 tensor), ``offsets`` (1-D int64 tensor, ``len + 1``
    entries, from 0 to ``len(data)``) and optionally ``indices`` (the dataset
    index of each record, int64).

    ``len(batch)``, ``batch[k]`` (a view of record k), iteration over the
    record views, ``lengths()``, ``pin_memory()`` and ``to(...)`` (new batches
    whose tensors were pinned / moved; offsets stay on the CPU so ``batch[k]``
    stays cheap). The views share memory with ``data``: they keep it alive.
    """

    __slots__ = ("data", "offsets", "indices", "_bounds")

    def __init__(self, data, offsets, indices=None):
        self.data = _as_tensor(data, torch.uint8, "data")
        self.offsets = _as_tensor(offsets, torch.int64, "offsets")
        if self.offsets.numel() < 1:
            raise ValueError("offsets needs at least one entry (0 for an empty batch)")
        if indices is not None:
            indices = _as_tensor(indices, torch.int64, "indices")
            if indices.numel() != self.offsets.numel() - 1:
                raise ValueError(f"{indices.numel()} indices for {self.offsets.numel() - 1} records")
        self.indices = indices
        self._bounds = None
        first, last = int(self.offsets[0]), int(self.offsets[-1])
        if first != 0 or last != self.data.numel():
            raise ValueError(f"offsets must run from 0 to len(data)={self.data.numel()}, got {first}..{last}")

    def __len__(self):
        return self.offsets.numel() - 1

    def _offsets_list(self):
        if self._bounds is None:
            bounds = self.offsets.tolist()
            if any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
                raise ValueError("offsets must not decrease")
            self._bounds = bounds
        return self._bounds

    def __getitem__(self, k):
        bounds = self._offsets_list()
        n = len(bounds) - 1
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"PackedBatch index must be an int, not {type(k).__name__}")
        i = int(k) + n if k < 0 else int(k)
        if not 0 <= i < n:
            raise IndexError(f"record {k} out of range for a batch of {n}")
        return self.data[bounds[i]:bounds[i + 1]]

    def __iter__(self):
        bounds = self._offsets_list()
        data = self.data
        return (data[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1))

    def lengths(self):
        """Byte length of each record (int64 tensor)."""
        return self.offsets[1:] - self.offsets[:-1]

    def tolist(self):
        """The records as ``bytes`` objects (copies)."""
        raw = self.data.numpy() if self.data.device.type == "cpu" else self.data.cpu().numpy()
        bounds = self._offsets_list()
        return [raw[bounds[i]:bounds[i + 1]].tobytes() for i in range(len(bounds) - 1)]

    def pin_memory(self, *args, **kwargs):
        """A batch whose ``data`` lives in pinned (page-locked) memory; called by
        the DataLoader's pin-memory thread with ``pin_memory=True``."""
        return PackedBatch(self.data.pin_memory(*args, **kwargs), self.offsets, self.indices)

    def is_pinned(self):
        return self.data.is_pinned()

    def to(self, *args, **kwargs):
        """A batch whose ``data`` was moved by ``Tensor.to(*args, **kwargs)``."""
        return PackedBatch(self.data.to(*args, **kwargs), self.offsets, self.indices)

    def __reduce__(self):
        return (PackedBatch, (self.data, self.offsets, self.indices))

    def __repr__(self):
        return f"<ffrecord.torch.PackedBatch records={len(self)} bytes={self.data.numel()}>"


def _small(t):
    # Offsets and indices travel inline as numpy arrays: a tensor would cost
    # a shared-memory segment of its own.
    return None if t is None else t.numpy()


def _reduce_for_ipc(batch):
    """How a PackedBatch crosses processes on multiprocessing queues (the
    DataLoader's worker queues): inside a worker, the bytes go through the
    worker's shared-memory ring (see ``_transfer``); elsewhere as a tensor."""
    handle = _transfer.export(batch.data)
    if handle is None:
        return (PackedBatch, (batch.data, _small(batch.offsets), _small(batch.indices)))
    return (_rebuild_from_ring, (handle, _small(batch.offsets), _small(batch.indices)))


def _rebuild_from_ring(handle, offsets, indices):
    return PackedBatch(_transfer.import_(handle), offsets, indices)


ForkingPickler.register(PackedBatch, _reduce_for_ipc)


class RecordViews(list):
    """A list of raw records (1-D uint8 numpy arrays) that all view one
    packed buffer: what ``RecordDataset`` returns for a batch of raw records
    read in a DataLoader worker.

    It behaves as the plain list it is. What differs is how it crosses to the
    training process: while it still holds exactly the views it was made
    with, it travels as the buffer's shared-memory slot plus the offsets (see
    ``_transfer``), and arrives as a ``RecordViews`` of views into that slot,
    instead of one pickled array per record. A list that was changed travels
    as an ordinary list.
    """

    __slots__ = ("_data", "_offsets", "_views")

    def __init__(self, records=(), data=None, offsets=None):
        super().__init__(records)
        self._data = data  # uint8 tensor the records view, or None
        self._offsets = offsets  # int64 numpy offsets into it
        self._views = tuple(self) if data is not None else ()

    @classmethod
    def over(cls, data, offsets):
        """The records ``data[offsets[k]:offsets[k + 1]]`` as numpy views of
        the uint8 tensor ``data`` (they keep its memory alive)."""
        return cls(record_views(data.numpy(), offsets), data, offsets)

    def addresses(self):
        """``{id(view): address of its first byte}`` for the views this list
        was made with (empty for a list made otherwise): lets a batch that
        holds them find their bytes without asking each array."""
        if self._data is None:
            return {}
        base = self._data.data_ptr()
        return {id(v): base + start for v, start in zip(self._views, self._offsets[:-1].tolist())}

    def same_views(self, records):
        """Whether the list or tuple ``records`` holds exactly the views this
        list was made with (the same objects, in order), each unchanged."""
        return self._data is not None and views_unchanged(records, self._views)

    def packed(self):
        """(data, offsets) the views were made over (see ``over``)."""
        return self._data, self._offsets

    def __reduce__(self):
        return (RecordViews, (list(self),))


def _reduce_views_for_ipc(batch):
    """RecordViews on a multiprocessing queue: as its ring slot where it can;
    a changed list as a list whose arrays travel in shared memory."""
    if batch.same_views(batch):
        handle = _transfer.export(batch._data)
        if handle is not None:
            return (_rebuild_views_from_ring, (handle, batch._offsets))
    return _shipment.pack(list(batch))


def _rebuild_views_from_ring(handle, offsets):
    return RecordViews.over(_transfer.import_(handle), offsets)


ForkingPickler.register(RecordViews, _reduce_views_for_ipc)


def _record_bytes(sample):
    """A uint8 numpy view of one sample's bytes, without a copy where possible."""
    if isinstance(sample, torch.Tensor):
        if sample.dtype != torch.uint8 or sample.dim() != 1:
            raise TypeError(f"packed_collate needs 1-D uint8 tensors, got {sample.dtype} {tuple(sample.shape)}")
        return sample.cpu().numpy()
    if isinstance(sample, np.ndarray):
        if sample.dtype != np.uint8 or sample.ndim != 1:
            raise TypeError(f"packed_collate needs 1-D uint8 arrays, got {sample.dtype} {sample.shape}")
        return sample
    if isinstance(sample, (bytes, bytearray, memoryview)):
        return np.frombuffer(sample, dtype=np.uint8)
    raise TypeError(
        "packed_collate takes a PackedBatch or a list of byte samples (bytes, 1-D uint8 "
        f"numpy arrays or tensors), not {type(sample).__name__}"
    )


def pack(samples, indices=None):
    """Packs a list of byte samples into one ``PackedBatch`` (one copy)."""
    arrays = [_record_bytes(s) for s in samples]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    data = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    out = data.numpy()
    for a, start, end in zip(arrays, offsets[:-1], offsets[1:]):
        out[start:end] = a
    return PackedBatch(data, offsets, indices)


def packed_collate(batch):
    """A ``collate_fn`` that produces ``PackedBatch`` objects.

    Takes what a dataset's ``__getitems__`` returned: a ``PackedBatch``
    (from ``RecordDataset(..., packed=True)``, returned as is), a list of
    ``PackedBatch`` (concatenated), or a list of byte samples (bytes, 1-D uint8
    numpy arrays or tensors), which are packed with one copy each.
    """
    if isinstance(batch, PackedBatch):
        return batch
    if not isinstance(batch, (list, tuple)):
        raise TypeError(f"packed_collate takes a PackedBatch or a list of samples, not {type(batch).__name__}")
    if batch and all(isinstance(b, PackedBatch) for b in batch):
        return _concat(batch)
    return pack(batch)


def _concat(batches):
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for b in batches:
        offsets.append(b.offsets[1:].numpy() + base)
        base += b.data.numel()
    data = torch.cat([b.data for b in batches]) if batches else torch.empty(0, dtype=torch.uint8)
    indices = None
    if all(b.indices is not None for b in batches):
        indices = torch.cat([b.indices for b in batches])
    return PackedBatch(data, np.concatenate(offsets), indices)
