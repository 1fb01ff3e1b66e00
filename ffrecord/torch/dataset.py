"""Map-style PyTorch datasets over record files.

``RecordDataset`` is the drop-in dataset: ``ds[i]`` is one sample and
``ds.__getitems__(indices)`` (which ``torch.utils.data.DataLoader`` calls with
each batch of indices) reads the whole batch with one asynchronous call.

``Dataset``, ``Subset`` and ``ConcatDataset`` keep the interface of the
original FFRecord package: a subclass of ``Dataset`` gets the raw records of
a batch and turns them into samples in ``process(indices, data)``.

Readers are opened lazily, once per process: a dataset object copied into a
DataLoader worker (by fork or by pickling for spawn) opens its own reader on
first use and never touches the one its parent opened.
"""

import bisect
import functools
import os

import numpy as np
import torch.utils.data

from ..reader import FileReader
from . import _shipment, _transfer
from .decoders import get_decoder, raw, to_bytes
from .packed import PackedBatch, RecordViews


__all__ = ["RecordDataset", "Dataset", "Subset", "ConcatDataset", "ReaderRegistry"]


class _ProcessLocalReader:
    """A FileReader opened on first use in each process, keyed by pid."""

    def __init__(self, fnames, check_data, direct=False):
        self.fnames = fnames
        self.check_data = bool(check_data)
        self.direct = bool(direct)
        self._reader = None
        self._pid = None

    def get(self):
        pid = os.getpid()
        if self._pid != pid:
            # A reader inherited through fork is dropped here, never used.
            # (Two threads racing on first use just open two readers.)
            self._reader = FileReader(self.fnames, self.check_data, self.direct)
            self._pid = pid
        return self._reader

    def close(self):
        if self._pid == os.getpid() and self._reader is not None:
            self._reader.close()

    def __getstate__(self):
        return {"fnames": self.fnames, "check_data": self.check_data, "direct": self.direct}

    def __setstate__(self, state):
        self.__init__(state["fnames"], state["check_data"], state["direct"])


def _as_indices(indices):
    """Batch indices as the reader takes them; a list of ints becomes one int64
    array (the reader checks an array in one step instead of item by item)."""
    if isinstance(indices, list):
        arr = np.asarray(indices) if indices else None
        # Anything but plain integers goes to the reader as it came, for its error.
        return arr if arr is not None and arr.dtype.kind in "iu" and arr.ndim == 1 else indices
    if isinstance(indices, (tuple, range, np.ndarray)):
        return indices
    if isinstance(indices, torch.Tensor):
        return indices.numpy() if indices.device.type == "cpu" else indices.cpu().numpy()
    raise TypeError(f"indices must be a list, tuple, range, numpy array or tensor, not {type(indices).__name__}")


class RecordDataset(torch.utils.data.Dataset):
    """The records of ``path`` (a ``.ffr`` file, a list of them, or a dataset
    directory) as a map-style dataset.

    A sample is ``transform(decode(record))``: ``record`` is a 1-D numpy uint8
    array, ``decode`` a name from ``ffrecord.torch.decoders`` (``'raw'``, the
    default; ``'bytes'``, ``'npy'``, ``'json'``, ``'pil'``, ``'labeled'``,
    ``'parts'``; ``'pickle'`` only when asked for) or any callable;
    ``transform`` any callable or None. A name follows the layout that
    ``ffrecord convert`` recorded in the dataset's metadata: ``'pil'`` on a
    converted image folder gives ``(image, label)``, ``'npy'`` on converted
    ``.npy`` rows gives arrays of the source's dtype and shape.
    ``batch_transform``, when given, receives the list of samples of a batch
    (or the ``PackedBatch``) and returns what the DataLoader's ``collate_fn``
    gets.

    ``packed=True``: a batch is one ``PackedBatch`` (one uint8 tensor plus
    offsets, see ``ffrecord.torch.packed``), to be used with
    ``collate_fn=ffrecord.torch.packed_collate`` (``ffrecord.torch.DataLoader``
    sets it); ``decode`` and ``transform`` must then be unset.

    ``check_data`` verifies every record's checksum (the default);
    ``direct=True`` reads with ``O_DIRECT`` (see ``ffrecord.FileReader``).
    The dataset opens its reader lazily in each process and pickles by path,
    so it works with any ``num_workers``, fork or spawn.

    In a DataLoader worker, a batch's records are read into shared memory and
    the list of samples crosses to the training process as its structure plus
    that memory (``docs/TORCH.md``, "How batches cross processes"): a sample
    may hold views of its record, but the worker must not keep them after the
    batch is returned. A subclass may override ``__getitems__`` (its lists
    cross the same way) or only ``__getitem__`` (then batches are made of
    ``self[i]`` one by one).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__getitems__")
        if own is not None:
            if not getattr(own, "_ships", False):
                cls.__getitems__ = _shipping(own)
        elif "__getitem__" in cls.__dict__ and cls.__getitems__ is RecordDataset.__getitems__:
            cls.__getitems__ = _one_by_one  # torch would call __getitems__ and skip the override

    def __init__(self, path, decode=None, transform=None, check_data=True, packed=False, *,
                 batch_transform=None, direct=False):
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, not {type(transform).__name__}")
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"batch_transform must be callable, not {type(batch_transform).__name__}")
        self.packed = bool(packed)
        if self.packed and (decode is not None or transform is not None):
            raise ValueError("packed=True returns raw bytes per batch: use batch_transform instead of decode/transform")
        self.transform = transform
        self.batch_transform = batch_transform
        self._reads = _BatchReads()
        self._source = _ProcessLocalReader(path, check_data, direct)
        reader = self._source.get()  # opens now: a bad path fails here, not in a worker
        self._len = reader.n
        # A decoder name follows the layout the dataset's metadata records.
        if isinstance(decode, str) and decode != "raw":
            where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else f"{len(reader.paths)} files"
            self.decode = get_decoder(decode, reader.metadata, where=where)
        else:
            self.decode = get_decoder(decode)

    @property
    def reader(self):
        """The FileReader of the calling process (opened on first use)."""
        return self._source.get()

    @property
    def path(self):
        return self._source.fnames

    def __len__(self):
        return self._len

    def _sample(self, record):
        sample = self.decode(record)
        return self.transform(sample) if self.transform is not None else sample

    def __getitem__(self, index):
        """Sample ``index`` (negative counts from the end)."""
        record = self._source.get().read_one(index)
        return record if self.packed else self._sample(record)

    def __getitems__(self, indices):
        """The samples of a batch of indices, read with one batch call: a list,
        or with ``packed=True`` one ``PackedBatch`` (then given to
        ``batch_transform`` when set)."""
        indices = _as_indices(indices)
        reader = self._source.get()
        records = ()
        if self.packed:
            data, offsets = self._reads.packed(reader, indices)
            idx = np.asarray(indices, dtype=np.int64)  # valid: the read checked them
            if idx.size and idx.min() < 0:
                idx = np.where(idx < 0, idx + self._len, idx)
            batch = PackedBatch(data, offsets, idx)
        elif self.decode is to_bytes and self.transform is None:
            batch = reader.read_bytes(indices)  # straight into the bytes objects
        else:
            # In a worker the records view shared memory: samples that keep
            # views of them cross without a copy.
            views = self._reads.views(reader, indices)
            records = (views,) if isinstance(views, RecordViews) else ()
            if self.decode is raw and self.transform is None:
                batch = views  # raw records: the views as they come
            else:
                batch = list(map(self._per_record(), views))
        if self.batch_transform is not None:
            batch = self.batch_transform(batch)
        return _shipment.in_worker(batch, records)

    def _per_record(self):
        """The function from a record to its sample, with no call more than
        the ones asked for (it runs once per record)."""
        decode, transform = self.decode, self.transform
        if transform is None:
            return decode
        return transform if decode is raw else self._sample

    def close(self):
        """Closes this process's reader (reads then raise ValueError)."""
        self._source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<ffrecord.torch.RecordDataset {self.path!r} records={self._len} packed={self.packed}>"


class _BatchReads:
    """Reads the records of a batch. In a DataLoader worker they are read
    straight into a free slot of the worker's shared-memory ring, the memory
    that goes to the training process, with no other copy: packed batches
    cross as that slot, and samples holding the views (noted for
    ``_shipment.records_read``) cross as the slot plus offsets, not as one
    pickled array per record. Elsewhere, with no free slot, or for
    compressed records (whose stored lengths are not their bytes), the
    reader's own calls."""

    def __init__(self):
        self.into_shared = True

    def packed(self, reader, indices):
        """(uint8 data, int64 offsets) of a batch."""
        shared = self._shared(reader, indices)
        return shared if shared is not None else reader.read_packed(indices)

    def views(self, reader, indices):
        """The records of a batch as numpy views (a ``RecordViews`` in a worker)."""
        shared = self._shared(reader, indices)
        if shared is None:
            return reader.read(indices)
        views = RecordViews.over(*shared)
        _shipment.note(views)
        return views

    def _shared(self, reader, indices):
        if not (self.into_shared and len(indices) and _transfer.in_worker()):
            return None
        target = _transfer.worker_buffer(int(reader.lengths(indices).sum()))
        if target is None:
            return None
        try:
            return target, reader.read_packed_into(indices, target.numpy())
        except ValueError:
            if reader.closed:
                raise
            self.into_shared = False  # compressed records
            return None


def _shipping(getitems):
    """A subclass's ``__getitems__`` whose lists cross from workers as one buffer."""

    @functools.wraps(getitems)
    def __getitems__(self, indices):
        with _shipment.records_read() as records:
            samples = getitems(self, indices)
        return _shipment.in_worker(samples, records)

    __getitems__._ships = True
    return __getitems__


def _one_by_one(self, indices):
    """The samples ``self[i]`` of a batch, for subclasses that override only ``__getitem__``."""
    return _shipment.in_worker([self[i] for i in indices])


_one_by_one._ships = True


class ReaderRegistry:
    """Finds the FileReaders an object reads through, as the original FFRecord
    package's ``ReaderRegistry`` did: ``ffreaders()`` lists the readers held
    in the object's attributes, then those of attributes that are themselves
    registries (also inside a list or tuple attribute, e.g. the datasets of a
    ``ConcatDataset``), each reader once. Attributes are plain attributes
    here: nothing is intercepted when they are set."""

    def ffreaders(self):
        readers, seen = [], set()
        _collect_readers(self, readers, seen)
        return readers


def _collect_readers(registry, readers, seen):
    if id(registry) in seen:
        return
    seen.add(id(registry))
    nested = []
    for value in _held_values(registry):
        if isinstance(value, FileReader):
            if id(value) not in seen:
                seen.add(id(value))
                readers.append(value)
        elif isinstance(value, ReaderRegistry):
            nested.append(value)
        elif isinstance(value, (list, tuple)):
            nested.extend(v for v in value if isinstance(v, ReaderRegistry))
    for child in nested:
        _collect_readers(child, readers, seen)


def _held_values(obj):
    """The attribute values of ``obj``; a reader opened per process stands for
    the FileReader it gives in this process."""
    for value in vars(obj).values():
        yield value.get() if isinstance(value, _ProcessLocalReader) else value


class Dataset(torch.utils.data.Dataset, ReaderRegistry):
    """Compatibility base class of the original FFRecord package.

    Indexed with a *batch* of indices, it reads their records in one call and
    passes them to ``process(indices, data)``, which a subclass defines and
    which returns the list of samples::

        class MyDataset(ffrecord.torch.Dataset):
            def __init__(self, fname, check_data=True, transform=None):
                super().__init__(fname, check_data)
                self.transform = transform

            def process(self, indices, data):
                samples = [pickle.loads(b) for b in data]
                return [self.transform(s) for s in samples] if self.transform else samples

        ds = MyDataset("train.ffr")
        ds[[3, 4, 1, 0]]        # -> 4 samples

    ``ds[i]`` with a single int gives one sample. ``__getitems__`` makes the
    plain ``torch.utils.data.DataLoader`` fetch whole batches the same way.
    Subclasses may also override ``__getitem__(indices)`` and ``__len__``
    and set ``self.reader = FileReader(...)`` themselves, as the original
    package allowed.
    """

    def __init__(self, fnames, check_data=True):
        self.fnames = fnames
        self._source = _ProcessLocalReader(fnames, check_data)
        self._source.get()

    @property
    def reader(self):
        """The FileReader of the calling process (opened on first use)."""
        own = self.__dict__.get("_own_reader")
        if own is not None:
            return own
        source = self.__dict__.get("_source")
        if source is None:
            raise AttributeError("this ffrecord.torch.Dataset has no reader: call super().__init__(fnames)")
        return source.get()

    @reader.setter
    def reader(self, value):
        self.__dict__["_own_reader"] = value

    def __len__(self):
        return self.reader.n

    def __getitem__(self, indices):
        if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
            return self.process([int(indices)], self.reader.read([int(indices)]))[0]
        if not isinstance(indices, (list, tuple)):
            raise TypeError(f"indices must be a list of indices (or one int), not {type(indices).__name__}")
        return self.process(indices, self._read_batch(indices))

    def _read_batch(self, indices):
        # A subclass may not call __init__ (it may set self.reader itself).
        reads = self.__dict__.get("_reads")
        if reads is None:
            reads = self.__dict__["_reads"] = _BatchReads()
        return reads.views(self.reader, indices)

    def __getitems__(self, indices):
        with _shipment.records_read() as records:
            samples = self[list(indices)]
        return _shipment.in_worker(samples, records)

    def process(self, indices, data):
        """Turns the raw records ``data`` (numpy uint8 arrays, one per index)
        into the list of samples handed to the DataLoader's ``collate_fn``.
        In a DataLoader worker ``data`` views shared memory that is reused
        once the batch is consumed: copy a record kept beyond the call."""
        raise NotImplementedError("subclasses of ffrecord.torch.Dataset define process(indices, data)")

    def __add__(self, other):
        # Ours, not torch's ConcatDataset: it takes a batch of indices too.
        return ConcatDataset([self, other])


def _fetch_many(dataset, indices):
    """The samples of ``indices`` from any map-style dataset, batched when it can."""
    if not indices:
        return []
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        out = getitems(list(indices))
    elif isinstance(dataset, Dataset):
        out = dataset[list(indices)]
    else:
        out = [dataset[i] for i in indices]
    return list(out) if isinstance(out, PackedBatch) else out


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices`` (fetched as one batch)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, indices):
        if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
            return _fetch_many(self.dataset, [self.indices[indices]])[0]
        if not isinstance(indices, (list, tuple)):
            raise TypeError(f"indices must be a list of indices (or one int), not {type(indices).__name__}")
        return _fetch_many(self.dataset, [self.indices[i] for i in indices])


class ConcatDataset(Dataset):
    """Datasets one after another; a batch is fetched with one call per
    dataset it touches, and its samples come back in the order asked."""

    @staticmethod
    def cumsum(sequence):
        out, total = [], 0
        for d in sequence:
            total += len(d)
            out.append(total)
        return out

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("datasets should not be an empty iterable")
        self.cumulative_sizes = self.cumsum(self.datasets)

    def __len__(self):
        return self.cumulative_sizes[-1]

    def _locate(self, idx):
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"index must be an int, not {type(idx).__name__}")
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} samples")
        d = bisect.bisect_right(self.cumulative_sizes, idx)
        return d, idx - (self.cumulative_sizes[d - 1] if d else 0)

    def __getitem__(self, indices):
        if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
            d, i = self._locate(indices)
            return _fetch_many(self.datasets[d], [i])[0]
        if not isinstance(indices, (list, tuple)):
            raise TypeError(f"indices must be a list of indices (or one int), not {type(indices).__name__}")
        groups = {}
        for pos, idx in enumerate(indices):
            d, i = self._locate(idx)
            groups.setdefault(d, ([], []))
            groups[d][0].append(i)
            groups[d][1].append(pos)
        out = [None] * len(indices)
        for d, (local, positions) in sorted(groups.items()):
            for pos, sample in zip(positions, _fetch_many(self.datasets[d], local)):
                out[pos] = sample
        return out
