"""FileReader: random and batched reads over one record file or a dataset of shards."""

import collections
import json
import os
import warnings

import numpy as np

from . import _core, _index_table, _indices
from .dataset_paths import resolve
from .errors import FormatError

__all__ = ["FileReader", "record_views", "views_unchanged"]


class FileReader:
    """Reads records by index from a ``.ffr`` file, a list of files, or a directory.

    ``fnames`` is a path, a list of paths (read as one dataset, in order) or a
    directory: its ``index.json`` manifest gives the shard order when present,
    else its ``*.ffr`` files are taken in sorted order. Both format versions
    (legacy v1 and v2) are detected per file.

    Records come back as 1-D ``numpy.uint8`` arrays. A batch read makes one
    allocation: the arrays of a batch are views of that block, which lives as
    long as any of them does. With ``check_data`` (the default) every record is
    verified against its checksum. ``direct=True`` reads with ``O_DIRECT``,
    bypassing the page cache (for cold, large datasets).

    A reader is safe to use from several threads, survives ``fork`` (the child
    gets its own I/O engine), and pickles by path: unpickling re-opens the files.
    """

    def __init__(self, fnames, check_data=True, direct=False):
        self._fnames = fnames
        self._check_data = bool(check_data)
        self._direct = bool(direct)
        self._dataset = resolve(fnames)
        self._core = _core.Reader(self._dataset.paths, self._check_data, self._direct)
        self.n = self._core.size
        self._decoder = None  # built on the first compressed batch
        self._key_index = None
        # Record counts per file, read once: file f holds [ends[f] - size_f, ends[f]).
        sizes = [self._core.file_info(f)["records"] for f in range(self._core.num_files)]
        self._file_ends = np.cumsum(sizes, dtype=np.int64)
        self._file_starts = [int(e) - n for e, n in zip(self._file_ends, sizes)]
        self._skip = self._dataset.quarantined_records(self._file_starts)
        skipped_files = len(self._dataset.skipped_files)
        if self._skip is not None or skipped_files:
            what = [f"{len(self._skip)} quarantined record(s)"] if self._skip is not None else []
            what += [f"{skipped_files} quarantined file(s)"] if skipped_files else []
            warnings.warn(
                f"{self._dataset.root}: skipping {' and '.join(what)} listed in its quarantine",
                stacklevel=2,
            )
        if self._skip is not None:
            keep = np.ones(self.n, dtype=bool)
            keep[self._skip] = False
            self._visible = np.flatnonzero(keep).astype(np.uint64)
            self.n = int(self._visible.size)
        else:
            self._visible = None

    # ---- size and identity ------------------------------------------------
    def __len__(self):
        self._check_open()
        return self.n

    @property
    def paths(self):
        """The files of this dataset, in record order."""
        return list(self._dataset.paths)

    @property
    def engine(self):
        """The I/O engine in use: 'io_uring', 'threads' or 'pread' ('mmap' when
        forced with ``FFRECORD_ENGINE=mmap``). By default, batches whose records
        are in the page cache are copied from a mapping of the file instead of
        going through the engine; ``io_stats()`` counts both."""
        self._check_open()
        return self._core.engine

    def io_stats(self):
        """How many batches were copied from the page cache through the file's
        mapping (``mapped_batches``) and how many went through the I/O engine
        (``engine_batches``), since the reader was opened. Where a file's
        filesystem refuses to map it, every batch goes through the engine
        (``mapping_available`` is False, ``engine_reason`` says so)."""
        self._check_open()
        return self._core.stats()

    @property
    def filesystem(self):
        """The filesystem the files live on, e.g. 'ext4', 'nfs' or 'fuse.sshfs'
        (several joined by ', ' when the shards are spread over more than one)."""
        self._check_open()
        return self._core.filesystem

    @property
    def engine_reason(self):
        """Why this engine: the filesystem's choice or ``FFRECORD_ENGINE``, and
        whether reads can use the page-cache fast path (docs/SHARED_FS.md)."""
        self._check_open()
        return self._core.engine_reason

    @property
    def mapping_available(self):
        """False when a file's filesystem refuses to map it (e.g. sshfs with
        ``-o direct_io``): the page-cache fast path is then off and every read
        goes through the I/O engine."""
        self._check_open()
        return self._core.mapping_available

    @property
    def engine_fallback_reason(self):
        """Why io_uring was not used (empty when it was, or was not asked for)."""
        self._check_open()
        return self._core.fallback_reason

    def file_info(self, f=0):
        """Version, record count, size, alignment, metadata of file ``f`` (and,
        for ``direct=True`` readers, the O_DIRECT alignment in use)."""
        self._check_open()
        info = self._core.file_info(f)
        raw = info.pop("metadata")
        info["metadata"] = _parse_metadata(raw, info["path"])
        info["dictionary_size"] = len(info.pop("dictionary"))
        return info

    @property
    def metadata(self):
        """The JSON metadata block of the first file (``{}`` when empty)."""
        if not self._dataset.paths:
            return {}
        return self.file_info(0)["metadata"]

    # ---- reads ------------------------------------------------------------
    def read_one(self, index):
        """Record ``index`` as a numpy uint8 array."""
        self._check_open()
        i = _indices.one(index, self.n)
        return self._read_checked(np.array([i], dtype=np.uint64))[0]

    def read(self, indices):
        """Records ``indices`` (any order, repeats allowed) read as one batch."""
        self._check_open()
        return self._read_checked(_indices.many(indices, self.n))

    def read_packed(self, indices):
        """A batch as one contiguous uint8 array plus int64 ``offsets`` (n + 1 of
        them): record k is ``data[offsets[k]:offsets[k + 1]]``. Compressed
        records are returned decompressed."""
        self._check_open()
        idx = self._physical(_indices.many(indices, self.n))
        data, offsets, flags = self._core.read_packed(idx)
        if flags.any():
            parts = self._decode([data[offsets[k]:offsets[k + 1]] for k in range(len(idx))], flags, idx)
            offsets = np.zeros(len(parts) + 1, dtype=np.int64)
            np.cumsum([p.size for p in parts], out=offsets[1:])
            data = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)
        return data, offsets

    def lengths(self, indices):
        """Stored byte length of each record (before any codec is undone)."""
        self._check_open()
        return self._core.lengths(self._physical(_indices.many(indices, self.n)))

    def read_bytes(self, indices):
        """Records ``indices`` as ``bytes`` objects, read as one batch; each
        record is read straight into its ``bytes`` object (for uncompressed
        records one copy in all, the same as ``read``)."""
        self._check_open()
        idx = _indices.many(indices, self.n)
        if self._core.has_codec:  # stored lengths are not the decoded ones
            return [r.tobytes() for r in self._read_checked(idx)]
        return self._core.read_bytes(self._physical(idx))

    def read_into(self, indices, buffers):
        """Reads record ``indices[k]`` into the writable buffer ``buffers[k]``
        (e.g. pinned host memory) without an intermediate copy. Each buffer
        must hold at least ``lengths(indices)[k]`` bytes. Not for compressed
        records."""
        self._check_open()
        if self._core.has_codec:
            raise ValueError("read_into needs uncompressed records; use read() for compressed datasets")
        idx = self._physical(_indices.many(indices, self.n))
        self._core.read_into(idx, list(buffers))

    def read_packed_into(self, indices, out):
        """Reads the records ``indices`` back to back into the writable buffer
        ``out`` (e.g. a shared-memory or pinned tensor's storage) and returns
        the int64 ``offsets`` (n + 1 of them): record k is
        ``out[offsets[k]:offsets[k + 1]]``. ``out`` must hold at least
        ``lengths(indices).sum()`` bytes. Not for compressed records."""
        self._check_open()
        if self._core.has_codec:
            raise ValueError("read_packed_into needs uncompressed records; use read_packed() for compressed datasets")
        if memoryview(out).readonly:
            raise ValueError("read_packed_into needs a writable output buffer")
        idx = self._physical(_indices.many(indices, self.n))
        return self._core.read_packed_into(idx, out)

    def prefetch(self, batches, depth=4):
        """Yields ``read(b)`` for each index list ``b`` of ``batches``, in order,
        while the next ``depth`` batches are already being read in the
        background. Stopping early (``break``, an exception, dropping the
        iterator) cancels what has not started and waits for what is in
        flight. An error (a bad index list, a checksum mismatch) is raised on
        the batch it belongs to."""
        self._check_open()
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise TypeError("depth must be an int")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        return self._prefetch(iter(batches), depth)

    def _prefetch(self, batches, depth):
        prefetcher = _core.Prefetcher(self._core, min(depth, 2))
        pending = collections.deque()  # (ticket, physical indices) or (None, exception)
        with_flags = self._core.has_codec

        def fill():
            while len(pending) < depth:
                try:
                    b = next(batches)
                except StopIteration:
                    return
                except Exception as e:  # the caller's iterable failed: raise it in its turn
                    pending.append((None, e))
                    return
                try:
                    idx = self._physical(_indices.many(b, self.n))
                    pending.append((prefetcher.submit(idx), idx))
                except (TypeError, IndexError) as e:
                    pending.append((None, e))

        try:
            fill()
            while pending:
                ticket, idx = pending.popleft()
                if ticket is None:
                    raise idx
                out = prefetcher.take(ticket, with_flags)
                fill()
                if with_flags:
                    out = self._decode(out[0], out[1], idx)
                yield out
        finally:
            # Dropping the prefetcher cancels queued batches and joins its threads.
            del prefetcher

    # ---- keys -------------------------------------------------------------
    def key(self, index):
        """The key stored with record ``index`` ('' when the dataset kept none)."""
        self._check_open()
        i = _indices.one(index, self.n)
        return self._core.key(int(self._physical(np.array([i], dtype=np.uint64))[0]))

    def find(self, key):
        """The index of the record stored under ``key``; KeyError if none."""
        self._check_open()
        if self._key_index is None:
            table = {}
            for f, base in enumerate(self._file_starts):
                for k, name in enumerate(self._core.file_keys(f)):
                    table.setdefault(name, base + k)
            if self._visible is not None:
                position = {int(p): v for v, p in enumerate(self._visible)}
                table = {k: position[p] for k, p in table.items() if p in position}
            self._key_index = table
        try:
            return self._key_index[key]
        except KeyError:
            raise KeyError(f"no record with key {key!r} in {self._dataset.root}") from None

    # ---- the original FFRecord package's interface --------------------------
    @property
    def fnames(self):
        """The files of this dataset as strings, in record order."""
        return [os.fspath(p) for p in self._dataset.paths]

    @property
    def check_data(self):
        """Whether reads verify each record's checksum."""
        return self._check_data

    def validate(self):
        """Checks the header, index and metadata checksums of every file again
        (they were checked at open; records are verified as they are read, or
        all at once by ``ffrecord validate``). Raises FormatError or
        ChecksumError naming the file."""
        self._check_open()
        _core.Reader(self._dataset.paths, True, False)

    def get_offsets(self, file_index=0):
        """Where the records of file ``file_index`` start, as int64 file
        offsets, followed by where its last record ends (n + 1 values). In an
        aligned v2 file records may be padded: ``lengths()`` gives their sizes."""
        return _index_table.record_table(self._file_path(file_index))[0]

    def get_checksums(self, file_index=0):
        """The stored checksum of each record of file ``file_index`` (uint32):
        zlib CRC32 of the record in v1 files, CRC32C of the stored bytes
        followed by the record's length and flags in v2 files (docs/FORMAT.md)."""
        return _index_table.record_table(self._file_path(file_index))[1]

    def _file_path(self, file_index):
        self._check_open()
        if isinstance(file_index, bool) or not isinstance(file_index, (int, np.integer)):
            raise TypeError(f"file_index must be an int, not {type(file_index).__name__}")
        paths = self._dataset.paths
        if not 0 <= file_index < len(paths):
            raise IndexError(f"file_index {file_index} out of range for {len(paths)} file(s)")
        return paths[file_index]

    # ---- lifecycle --------------------------------------------------------
    def close(self):
        """Releases the files. Further use raises ValueError; closing twice is fine."""
        self._core = None
        self._decoder = None

    @property
    def closed(self):
        return self._core is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return {"fnames": self._fnames, "check_data": self._check_data, "direct": self._direct}

    def __setstate__(self, state):
        self.__init__(state["fnames"], state["check_data"], state["direct"])

    def __repr__(self):
        if self.closed:
            return "<ffrecord.FileReader closed>"
        return f"<ffrecord.FileReader {self._dataset.root!s} records={self.n} files={len(self._dataset.paths)}>"

    # ---- internals --------------------------------------------------------
    def _check_open(self):
        if self._core is None:
            raise ValueError("I/O operation on a closed FileReader")

    def _physical(self, idx):
        """Visible indices -> indices in the files (quarantined records hidden)."""
        return idx if self._visible is None else self._visible[idx]

    def _read_checked(self, idx):
        idx = self._physical(idx)
        if self._core.has_codec:
            arrays, flags = self._core.read_with_flags(idx)
            return self._decode(arrays, flags, idx)
        return self._core.read(idx)

    def _decode(self, arrays, flags, idx):
        # The compressed records of the batch decode in the core, in parallel
        # and without the GIL, straight into one block (see codec.py).
        if not flags.any():
            return arrays
        if self._decoder is None:
            self._decoder = _core.Decoder(self._core)
        return self._decoder.decode(arrays if isinstance(arrays, list) else list(arrays), flags, idx)


def record_views(data, offsets):
    """The records of a packed batch (see ``FileReader.read_packed`` and
    ``read_packed_into``), ``data[offsets[k]:offsets[k + 1]]`` for each k, as
    numpy views of the 1-D uint8 array ``data`` (writable where it is; they
    keep it alive), made in one native call instead of one slice per record."""
    return _core.record_views(data, offsets)


def views_unchanged(records, views):
    """Whether the list or tuple ``records`` holds exactly the arrays of the
    tuple ``views`` (the same objects, in order), each still as
    ``record_views`` made it: 1-D uint8 with unit stride (user code may have
    retyped or reshaped one in place). One native pass."""
    return _core.views_unchanged(records, views)


def _parse_metadata(raw, path):
    if not raw:
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nesting too deep
        raise FormatError(f"{path}: metadata block is not valid JSON: {e}") from None
