"""Small record datasets whose content names the record, for the torch tests.

Record ``i`` is ``i`` as 8 little-endian bytes followed by ``i % 13`` bytes of
``(i * 31 + k) % 251``: variable lengths, and every byte checkable.
"""

import numpy as np

import ffrecord


def record(i):
    tail = bytes((i * 31 + k) % 251 for k in range(i % 13))
    return int(i).to_bytes(8, "little") + tail


def write_dataset(path, n, shards=1):
    """Writes records 0..n-1 to ``path`` (a file), or to ``shards`` files in the
    directory ``path``; returns what to hand to FileReader."""
    if shards == 1:
        with ffrecord.FileWriter(str(path)) as w:
            for i in range(n):
                w.write_one(record(i))
        return str(path)
    path.mkdir()
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for s in range(shards):
        with ffrecord.FileWriter(str(path / f"part-{s:03d}.ffr")) as w:
            for i in range(bounds[s], bounds[s + 1]):
                w.write_one(record(i))
    return str(path)


def index_of(rec):
    """The index a record names, after checking all its bytes (raises if wrong)."""
    raw = bytes(memoryview(np.ascontiguousarray(rec)).cast("B"))
    i = int.from_bytes(raw[:8], "little")
    if raw != record(i):
        raise AssertionError(f"record content does not match index {i}")
    return i


def index_tensor(rec):
    """Decoder for RecordDataset: the checked index as an int (collates to a tensor)."""
    return index_of(rec)
