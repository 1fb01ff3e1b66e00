"""Moves any batch from a DataLoader worker to the training process as its
structure plus its arrays and tensors in shared memory.

Why: a worker's batch normally crosses as one pickle in which every numpy
array is copied into the pickle stream, the stream is written through a pipe,
read back and unpickled array by array; every tensor gets a shared-memory
segment and a file descriptor of its own. For batches of many samples that
trip, not the reading, limits a loader.

Here a batch is pickled with a pickler that takes every plain CPU array and
tensor out of the stream (the *leaves*): the stream keeps only the structure
(lists, tuples, dicts, labels, strings...) and, per leaf, where its bytes
are. A leaf that already lies in a shared-memory slot the worker read the
batch into (see ``_transfer.worker_buffer``) stays where it is; every other
leaf is copied once into one more slot. The training process attaches the
slots, rebuilds the structure and makes each leaf a view of its slot. A slot
is given back when the last leaf viewing it is gone.

A list of samples of one shape (tuples or lists of one length, dicts with
the same keys in the same order, or bare records) that holds the records its
dataset read is first taken apart into columns: a column holding every
record of one read, unchanged and in order, crosses as that read's slot plus
the offsets, and the training process makes its views in one native call
(any other column of records crosses record by record); the other columns
(labels, indices...) are pickled as one tuple each, without a per-sample
reduction. The samples are zipped together again on arrival.

Anything else (bytes, PIL images, objects) is pickled as usual, so the
batch that arrives is the one the worker returned, with arrays and tensors
of the same dtype and shape (arranged C-contiguous). When no slot is free,
the leaves go in one ordinary tensor instead (torch shares it), which is
correct, only slower.
"""

import ctypes
import io
import pickle
import threading
from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..reader import record_views
from . import _transfer

__all__ = ["SampleList", "ShippingCollate", "in_worker", "note", "pack", "records_read", "ship"]

_ALIGN = 16  # leaf offsets: enough for every numpy and torch element type
# A tensor already in shared memory this big goes the torch way (its segment
# is passed as is): a copy would cost more than torch's per-tensor overhead.
_SHARED_AS_IS = 1 << 20
_rebuilding = threading.local()
_UINT8 = np.dtype(np.uint8)
_CONTIGUOUS = (1,)
# How a list of samples was taken apart (see _Columns).
_RECORDS, _TUPLES, _LISTS, _DICTS = range(4)
_SHAPES = {np.ndarray: _RECORDS, tuple: _TUPLES, list: _LISTS, dict: _DICTS}


def _address(a):
    """The address of a C-contiguous array's first byte (``a.ctypes.data``
    costs about four times as much; it is the fallback for read-only arrays)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data


class _Packer(ForkingPickler):
    """Pickles a batch, replacing its leaves by references to slots.

    ``records``: the ``RecordViews`` whose views the batch may hold (the
    records a dataset read into a slot). Their addresses are known, so such
    a view is placed without asking numpy where its bytes are."""

    def __init__(self, file, records=()):
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.records = records
        self._known = None  # id(record view) -> address of its first byte, made when first needed
        self.regions = []  # handle or tensor per region, filled by finish()
        self.arena = None  # region index of the copied leaves
        self.copies = []  # (uint8 numpy source, offset in the arena)
        self.arena_bytes = 0
        self.exported = []  # (ring, slot) handed over by this batch
        self.spans = []  # (start address, end address, region) of those slots
        self.last_span = (0, -1, None)  # the span the last leaf was found in
        self.record_columns = {}  # column number -> the records sent as that column
        self.in_columns = None  # id(record) -> (column, row), made when first needed

    def reducer_override(self, obj):
        kind = type(obj)
        if kind is np.ndarray:
            ptr = (self._known if self._known is not None else self.known).get(id(obj))
            # A record view still as it was made (user code may reshape or
            # retype a view in place): 1-D uint8, so its bytes are the leaf.
            # Inline: this runs once per record.
            if ptr is not None and obj.dtype is _UINT8 and obj.strides == _CONTIGUOUS:
                if self.record_columns:  # the same object as a record of a column: arrives as that one
                    at = self._in_columns().get(id(obj))
                    if at is not None:
                        return (_column_item, at)
                nbytes = obj.size
                start, end, region = self.last_span
                if not (start <= ptr and ptr + nbytes <= end):
                    region, offset = self._place(obj, ptr, nbytes)
                    return (_bytes_leaf, (region, offset, nbytes))
                return (_bytes_leaf, (region, ptr - start, nbytes))
            return self._array(obj)
        if kind is torch.Tensor:
            return self._tensor(obj)
        if kind is SampleList:
            return (list, (list(obj),))
        if kind is _Shipment:
            return (_identity, (obj.batch,))
        if kind is _Columns:
            return (_from_columns, obj.parts)
        return NotImplemented

    @property
    def known(self):
        if self._known is None:
            self._known = {}
            for views in self.records:
                self._known.update(views.addresses())
        return self._known

    def columns(self, samples):
        """``samples`` taken apart into columns (a ``_Columns``) when they
        have one shape and at least one column is records that can cross as
        their slot plus offsets; else ``samples`` as they are."""
        if not self.records or not samples:
            return samples
        shape = _SHAPES.get(type(samples[0]))
        if shape is None or len(set(map(type, samples))) != 1:
            return samples
        keys = None
        if shape == _RECORDS:
            columns = [samples]
        elif shape == _DICTS:
            keys = tuple(samples[0])
            if not keys or len(set(map(tuple, samples))) != 1:
                return samples
            columns = list(zip(*map(dict.values, samples)))
        else:
            width = len(samples[0])
            if not width or len(set(map(len, samples))) != 1:
                return samples
            columns = list(zip(*samples))
        records, others = [], []
        for c, column in enumerate(columns):
            where = self._record_column(column)
            if where is None:
                others.append((c, column))
            else:
                records.append(_RecordColumn(c, *where))
                self.record_columns[c] = column
                self.in_columns = None
        if not records:
            return samples
        return _Columns((shape, keys, len(columns), tuple(records), tuple(others)))

    def _record_column(self, column):
        """(region, offsets) for a column that holds every record of one read,
        unchanged and in the order of the read; else None (such a column, e.g.
        a filtered batch, crosses record by record, still without a copy)."""
        if type(column[0]) is not np.ndarray:
            return None
        if self.record_columns and any(map(self._in_columns().__contains__, map(id, column))):
            return None  # a record already sent in a column: arrives as that same object
        for views in self.records:
            if views.same_views(column):
                data, offsets = views.packed()
                where = self._held(data.data_ptr(), data.numel())
                if where is None:
                    return None
                region, offset = where
                return region, (offsets + offset).tobytes()
        return None

    def _in_columns(self):
        if self.in_columns is None:
            self.in_columns = {
                id(record): (c, row)
                for c, column in self.record_columns.items()
                for row, record in enumerate(column)
            }
        return self.in_columns

    def _place(self, raw, ptr, nbytes, align=1):
        """(region, offset) of a leaf's bytes: its held slot, or the arena.
        A leaf stays in its slot only at an offset that is a multiple of
        ``align`` (torch views a dtype only at such offsets)."""
        where = self._held(ptr, nbytes, align)
        if where is not None:
            return where
        if self.arena is None:
            self.arena = len(self.regions)
            self.regions.append(None)
        offset = self.arena_bytes
        self.copies.append((raw, offset))
        self.arena_bytes = offset + -(-nbytes // _ALIGN) * _ALIGN
        return self.arena, offset

    def _held(self, ptr, nbytes, align=1):
        """(region, offset) of bytes that lie in a shared-memory slot this
        worker holds (exported with this batch from now on), else None."""
        for span in self.spans:  # most leaves lie in a slot already found
            start, end, region = span
            if start <= ptr and ptr + nbytes <= end and (ptr - start) % align == 0:
                self.last_span = span
                return region, ptr - start
        found = _transfer.locate(ptr, nbytes)
        if found is not None and found[3] and found[2] % align == 0:
            ring, slot, offset, _ = found
            region = len(self.regions)
            self.regions.append(_transfer.export_slot(ring, slot))
            self.exported.append((ring, slot))
            start = ptr - offset
            self.last_span = (start, start + ring.slot_bytes, region)
            self.spans.append(self.last_span)
            return region, offset
        return None

    def _array(self, a):
        dtype = a.dtype
        if dtype.hasobject or a.size == 0:
            return NotImplemented
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if a.ndim == 1 and (dtype is _UINT8 or dtype == _UINT8):  # a raw record: the common case
            region, offset = self._place(a, _address(a), a.size)
            return (_bytes_leaf, (region, offset, a.size))
        raw = a.reshape(-1).view(np.uint8)
        region, offset = self._place(raw, _address(raw), raw.size)
        return (_array_leaf, (region, offset, raw.size, dtype, a.shape))

    def _tensor(self, t):
        if (t.device.type != "cpu" or t.requires_grad or t.layout != torch.strided or t.is_quantized
                or t.numel() == 0 or t.is_conj() or t.is_neg()):
            return NotImplemented
        nbytes = t.numel() * t.element_size()
        if t.is_shared() and nbytes >= _SHARED_AS_IS:
            return NotImplemented
        flat = t.contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy() if flat.dtype != torch.uint8 else flat.numpy()
        region, offset = self._place(raw, flat.data_ptr(), nbytes, t.element_size())
        return (_tensor_leaf, (region, offset, nbytes, t.dtype, tuple(t.shape)))

    def finish(self):
        """The regions, once the arena is filled: slot handles or tensors."""
        if self.arena is not None:
            target = _transfer.worker_buffer(self.arena_bytes)
            if target is None:
                target = torch.empty(self.arena_bytes, dtype=torch.uint8)
            out = target.numpy()
            for raw, offset in self.copies:
                out[offset:offset + raw.size] = raw
            handle = _transfer.export(target)
            self.regions[self.arena] = handle if handle is not None else target
            self.copies = []
        return self.regions


def pack(obj, records=()):
    """The ``(rebuild, args)`` reduction of ``obj`` on a worker's queue
    (``records``: see ``_Packer``)."""
    stream = io.BytesIO()
    packer = _Packer(stream, records)
    try:
        packer.dump(_taken_apart(packer, obj) if type(obj) is list else obj)
        regions = packer.finish()
    except BaseException:
        for ring, slot in packer.exported:  # never sent: the worker keeps them
            _transfer.keep_slot(ring, slot)
        raise
    return (_unpack, (stream.getvalue(), regions))


def _taken_apart(packer, samples):
    """``packer.columns(samples)``, or ``samples`` as they are should taking
    them apart fail on something unforeseen: this runs in the queue's feeder
    thread, where an exception would lose the batch and leave the training
    process waiting for it."""
    try:
        return packer.columns(samples)
    except Exception:
        packer.record_columns.clear()
        packer.in_columns = None
        return samples


def _unpack(skeleton, regions):
    bases = []
    for region in regions:
        data = _transfer.import_(region) if isinstance(region, tuple) else region
        bases.append((data.numpy(), data))
    outer = getattr(_rebuilding, "bases", None), getattr(_rebuilding, "columns", None)
    _rebuilding.bases, _rebuilding.columns = bases, {}
    try:
        return _Unpacker(skeleton, [array for array, _ in bases]).load()
    finally:
        _rebuilding.bases, _rebuilding.columns = outer


class _Unpacker(pickle.Unpickler):
    """Rebuilds a skeleton whose record leaves (``_bytes_leaf``, one per
    record) are sliced by a function bound to this batch's regions: the
    stream looks it up once, each leaf then costs one call and one slice."""

    def __init__(self, skeleton, arrays):
        super().__init__(io.BytesIO(skeleton))
        self.arrays = arrays

    def find_class(self, module, name):
        if name == "_bytes_leaf" and module == __name__:
            arrays = self.arrays
            return lambda region, offset, nbytes: arrays[region][offset:offset + nbytes]
        return super().find_class(module, name)


def _bytes_leaf(region, offset, nbytes):
    """A record leaf (outside ``_Unpacker``, e.g. a skeleton loaded by hand)."""
    return _rebuilding.bases[region][0][offset:offset + nbytes]


def _array_leaf(region, offset, nbytes, dtype, shape):
    return _rebuilding.bases[region][0][offset:offset + nbytes].view(dtype).reshape(shape)


def _record_column(c, region, offsets):
    """Column ``c`` of a batch taken apart: its records as views of one region."""
    views = record_views(_rebuilding.bases[region][0], np.frombuffer(offsets, dtype=np.int64))
    _rebuilding.columns[c] = views
    return views


def _column_item(c, row):
    """A record that a batch holds in column ``c`` and elsewhere too: the same view."""
    return _rebuilding.columns[c][row]


def _from_columns(shape, keys, width, records, others):
    """The samples of a batch taken apart by ``_Packer.columns``. The record
    columns are made first (``records`` comes before ``others`` in the
    stream), so ``others`` may refer to their views."""
    columns = [None] * width
    for c, views in _rebuilding.columns.items():  # what ``records`` made, by column
        columns[c] = views
    for c, column in others:
        columns[c] = column
    if shape == _RECORDS:
        return columns[0]
    if shape == _TUPLES:
        return list(zip(*columns))
    if shape == _LISTS:
        return list(map(list, zip(*columns)))
    return _dict_maker(keys)(columns)


_dict_makers = {}


def _dict_maker(keys):
    """A function from columns to a list of dicts with ``keys``, in order.

    It is compiled once per set of keys: a dict display with the keys bound
    as constants builds each dict in one step, about three times faster
    than ``dict(zip(keys, values))``. Only names made here enter the source;
    the keys themselves are bound as variables, whatever they are."""
    token = (keys, tuple(map(type, keys)))  # 1, 1.0 and True are equal keys of different types
    make = _dict_makers.get(token)
    if make is None:
        if len(_dict_makers) >= 64:
            _dict_makers.clear()
        names = [f"v{i}" for i in range(len(keys))]
        pairs = ", ".join(f"k{i}: {name}" for i, name in enumerate(names))
        source = f"lambda columns: [{{{pairs}}} for {', '.join(names)}, in zip(*columns)]"
        make = eval(source, {"zip": zip, **{f"k{i}": key for i, key in enumerate(keys)}})
        _dict_makers[token] = make
    return make


def _tensor_leaf(region, offset, nbytes, dtype, shape):
    data = _rebuilding.bases[region][1][offset:offset + nbytes]
    return (data if dtype == torch.uint8 else data.view(dtype)).view(shape)


class SampleList(list):
    """A list of samples made in a DataLoader worker. It is the plain list it
    is; what differs is how it crosses to the training process: as its
    structure plus one shared-memory buffer for all its arrays and tensors
    (see the module docstring). It arrives as a plain ``list``.

    ``records``: the ``RecordViews`` its samples were made from, if any."""

    __slots__ = ("records",)

    def __init__(self, samples=(), records=()):
        super().__init__(samples)
        self.records = records

    def __reduce__(self):
        return (list, (list(self),))


class _Columns:
    """A list of samples taken apart into columns (see ``_Packer.columns``);
    ``parts`` are the arguments of ``_from_columns``."""

    __slots__ = ("parts",)

    def __init__(self, parts):
        self.parts = parts


class _RecordColumn:
    """A column of records; it pickles as a ``_record_column`` call."""

    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (_record_column, self.args)


class _Shipment:
    """Any batch, wrapped so that the worker's queue sends it the same way."""

    __slots__ = ("batch",)

    def __init__(self, batch):
        self.batch = batch

    def __reduce__(self):
        return (_identity, (self.batch,))


def _identity(batch):
    return batch


ForkingPickler.register(SampleList, lambda batch: pack(list(batch), batch.records))
ForkingPickler.register(_Shipment, lambda shipment: pack(shipment.batch))


class ShippingCollate:
    """A ``collate_fn`` whose batches cross from workers by ``ship``."""

    __slots__ = ("collate_fn",)

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, samples):
        return ship(self.collate_fn(samples))

    def __repr__(self):
        return f"ShippingCollate({self.collate_fn!r})"


def in_worker(samples, records=()):
    """``samples`` (a list) as a ``SampleList`` inside a DataLoader worker;
    unchanged elsewhere, or when it is not a plain list. ``records``: the
    ``RecordViews`` the samples were made from (see ``_Packer``)."""
    if type(samples) is list and get_worker_info() is not None:
        return SampleList(samples, records)
    return samples


class records_read:
    """Collects the ``RecordViews`` a dataset hands out (``note``) while a
    batch is made in this thread, for ``in_worker``::

        with records_read() as records:
            samples = make_batch()
        return in_worker(samples, records)
    """

    _current = threading.local()

    def __enter__(self):
        self.outer = getattr(self._current, "records", None)
        self._current.records = records = []
        return records

    def __exit__(self, *exc):
        inner = self._current.records
        self._current.records = self.outer
        if self.outer is not None:
            self.outer.extend(inner)  # an enclosing batch may hold these samples too


def note(records):
    """Tells the ``records_read`` under way, if any, about ``records``."""
    current = getattr(records_read._current, "records", None)
    if current is not None:
        current.append(records)


def ship(batch):
    """What a worker's ``collate_fn`` returns, wrapped to cross as structure
    plus shared memory. Batches with a transport of their own (packed
    batches, raw record views, sample lists) and batches outside a worker
    are returned as they are."""
    from .packed import PackedBatch, RecordViews

    if get_worker_info() is None or isinstance(batch, (PackedBatch, RecordViews, SampleList, _Shipment)):
        return batch
    return _Shipment(batch)
