"""``--from npy``: one record per row (first axis) of a ``.npy`` array.

Each record holds the row's bytes in C order; the metadata keeps what is
needed to turn it back into an array: ``{"npy": {"dtype": <numpy dtype
descr>, "shape": <row shape>}}``, e.g. ``np.frombuffer(rec,
np.lib.format.descr_to_dtype(d)).reshape(shape)``. The file is memory-mapped,
so arrays larger than memory convert. Arrays of Python objects are refused.
"""

import numpy as np

from ..errors import ToolError, UsageError
from .base import Inventory, Source


class NpySource(Source):
    kind = "npy"

    def __init__(self, path):
        super().__init__(path)
        self.require_file()

    def _array(self):
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ToolError(f"{self._args[0]}: cannot convert: {e}") from None
        except OSError as e:
            raise ToolError(f"{self._args[0]}: not a readable .npy file: {e}") from None
        if not isinstance(arr, np.ndarray):
            raise UsageError(f"{self._args[0]}: an .npz archive; convert its arrays as .npy files")
        if arr.ndim == 0:
            raise ToolError(f"{self._args[0]}: a 0-d array has no rows")
        return arr

    def scan(self, need_sizes):
        arr = self._array()
        row_bytes = int(arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        return Inventory(
            count=int(arr.shape[0]),
            sizes=np.full(arr.shape[0], row_bytes, dtype=np.int64) if need_sizes else None,
            metadata={"npy": {"dtype": descr, "shape": list(arr.shape[1:])}},
            details={"dtype": str(arr.dtype), "shape": list(arr.shape)},
        )

    def locate(self, start, end):
        return (start, end)

    def read(self, locator):
        arr = self._array()
        start, end = locator
        step = 1024
        for s in range(start, end, step):
            block = np.ascontiguousarray(arr[s:min(s + step, end)])
            flat = block.reshape(block.shape[0], -1).view(np.uint8) if block.size else None
            for k in range(block.shape[0]):
                yield (flat[k] if flat is not None else b""), None
