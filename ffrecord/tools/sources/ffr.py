"""``--from ffrecord``: record files (v1 or v2) -> a v2 dataset.

SRC is a ``.ffr`` file or a dataset directory (with or without ``index.json``;
records in force in its quarantine are left out). Records are read with
checksum verification and decoded, so the output may use another shard size
or compression than the input: this upgrades v1 files, re-shards and
re-compresses. Keys are kept when the input has them; the first file's user
metadata is carried over.
"""

import os
import warnings

import numpy as np

from ... import FFRecordError, FileReader
from ..errors import ToolError, UsageError
from .base import Inventory, Source

# What the converter itself puts in a shard's metadata; not carried over.
CONVERT_KEY = "ffrecord.convert"
_BATCH_RECORDS = 256
_BATCH_BYTES = 32 << 20


class RecordFileSource(Source):
    kind = "ffrecord"

    def __init__(self, path):
        super().__init__(path)
        if not os.path.exists(self.path):
            raise UsageError(f"{path}: no such file or directory")

    def _reader(self, warn):
        try:
            with warnings.catch_warnings():
                if not warn:  # the quarantine warning: shown once, by the scan
                    warnings.simplefilter("ignore")
                return FileReader(self.path)
        except FFRecordError as e:
            raise ToolError(f"cannot convert: {e}") from None
        except OSError as e:
            raise ToolError(f"{self._args[0]}: cannot open: {e.strerror or e}") from None

    def scan(self, need_sizes):
        r = self._reader(warn=True)
        try:
            infos = [r.file_info(f) for f in range(len(r.paths))]
            has_keys = any(i["has_keys"] for i in infos)
            metadata = dict(infos[0]["metadata"]) if infos else {}
            metadata.pop(CONVERT_KEY, None)
            sizes = r.lengths(np.arange(r.n)).astype(np.int64) if need_sizes else None
            return Inventory(
                count=r.n, sizes=sizes, has_keys=has_keys, metadata=metadata,
                details={"files": len(infos), "versions": sorted({i["version"] for i in infos})},
            )
        finally:
            r.close()

    def locate(self, start, end):
        return (start, end)

    def read(self, locator):
        start, end = locator
        r = self._reader(warn=False)
        try:
            has_keys = any(r.file_info(f)["has_keys"] for f in range(len(r.paths)))
            i = start
            while i < end:
                lengths = r.lengths(np.arange(i, min(i + _BATCH_RECORDS, end)))
                take = max(1, int(np.searchsorted(np.cumsum(lengths), _BATCH_BYTES, side="right")))
                take = min(take, lengths.size)
                try:
                    batch = r.read(range(i, i + take))
                except FFRecordError as e:
                    raise ToolError(f"cannot convert: {e}") from None
                for k, data in enumerate(batch):
                    yield data, (r.key(i + k) if has_keys else None)
                i += take
        finally:
            r.close()
