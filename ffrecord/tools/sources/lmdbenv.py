"""``--from lmdb``: every key/value of an LMDB environment's main database.

SRC is the environment directory (holding ``data.mdb``) or the data file
itself. Records are the values, in key order; keys are kept as record keys,
decoded as UTF-8 when every key is valid UTF-8, otherwise written as
lowercase hex for all records (the metadata then says
``"lmdb_key_encoding": "hex"``). The environment is opened read-only and
without locking, so a converter never blocks or alters a live writer's file.
"""

import os

import numpy as np

from ..errors import ToolError, UsageError
from .base import Inventory, Source


def _lmdb():
    try:
        import lmdb
    except ImportError:  # pragma: no cover - depends on the environment
        raise UsageError("--from lmdb needs the 'lmdb' package: pip install lmdb") from None
    return lmdb


class LmdbSource(Source):
    kind = "lmdb"

    def __init__(self, path):
        super().__init__(path)
        if not os.path.exists(self.path):
            raise UsageError(f"{path}: no such file or directory")
        if os.path.isdir(self.path) and not os.path.exists(os.path.join(self.path, "data.mdb")):
            raise UsageError(f"{path}: not an LMDB environment (no data.mdb)")
        self._keys = None
        self._encoding = None

    def _open(self):
        lmdb = _lmdb()
        try:
            return lmdb.open(self.path, readonly=True, lock=False, readahead=False,
                             subdir=os.path.isdir(self.path), max_readers=512)
        except lmdb.Error as e:
            raise ToolError(f"{self._args[0]}: cannot open the LMDB environment: {e}") from None

    def scan(self, need_sizes):
        lmdb = _lmdb()
        keys, sizes = [], []
        env = self._open()
        try:
            with env.begin(buffers=True) as txn:
                cursor = txn.cursor()
                if need_sizes:
                    for k, v in cursor.iternext(keys=True, values=True):
                        keys.append(bytes(k))
                        sizes.append(len(v))
                else:
                    keys = [bytes(k) for k in cursor.iternext(keys=True, values=False)]
        except lmdb.Error as e:
            raise ToolError(f"{self._args[0]}: cannot read the LMDB environment: {e}") from None
        finally:
            env.close()
        try:
            for k in keys:
                k.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            encoding = "hex"
        self._keys, self._encoding = keys, encoding
        return Inventory(
            count=len(keys),
            sizes=np.asarray(sizes, dtype=np.int64) if need_sizes else None,
            has_keys=True,
            metadata={"lmdb_key_encoding": encoding},
        )

    def locate(self, start, end):
        if start == end:
            return (None, 0, self._encoding)
        return (self._keys[start], end - start, self._encoding)

    def read(self, locator):
        lmdb = _lmdb()
        first, count, encoding = locator
        if count == 0:
            return
        env = self._open()
        try:
            with env.begin() as txn:
                cursor = txn.cursor()
                if not cursor.set_key(first):
                    raise ToolError(f"{self._args[0]}: key {first!r} vanished since the scan (the source changed)")
                for _ in range(count):
                    k, v = cursor.item()
                    yield v, (k.decode("utf-8") if encoding == "utf-8" else k.hex())
                    if not cursor.next():
                        break
        except lmdb.Error as e:
            raise ToolError(f"{self._args[0]}: cannot read the LMDB environment: {e}") from None
        finally:
            env.close()
