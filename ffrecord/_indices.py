"""Turns what users pass as record indices into checked uint64 arrays."""

import operator

import numpy as np


def _reject_bool(value):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("record index must be an integer, not bool")


def one(index, n):
    """A single index (negative counts from the end) -> int in [0, n)."""
    _reject_bool(index)
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(f"record index must be an integer, not {type(index).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"record index {index} out of range for {n} records")
    return i


def many(indices, n):
    """A list/tuple/range/1-D integer array of indices -> uint64 array in [0, n)."""
    if isinstance(indices, range):
        arr = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    elif isinstance(indices, np.ndarray):
        arr = indices
    elif isinstance(indices, (list, tuple)):
        if not indices:
            return np.empty(0, dtype=np.uint64)
        # One vectorised conversion; numpy infers a non-integer dtype (float,
        # bool, str, object) from any element that is not an integer.
        try:
            arr = np.asarray(indices)
        except (ValueError, TypeError):
            raise TypeError("record indices must be a flat sequence of integers") from None
        if arr.dtype == object:  # integers beyond 64 bits, or mixed types
            for x in indices:
                if not isinstance(x, (int, np.integer)) or isinstance(x, (bool, np.bool_)):
                    raise TypeError(f"record indices must be integers, got {type(x).__name__}")
            raise IndexError(f"record index out of range for {n} records")
        if arr.dtype.kind == "b":
            raise TypeError("record indices must be integers, not bool")
    else:
        raise TypeError(
            "record indices must be a list, tuple, range or integer numpy array, "
            f"not {type(indices).__name__}"
        )
    if arr.ndim != 1:
        raise TypeError(f"record indices must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "u":
        if arr.size and int(arr.max()) >= n:
            bad = int(arr[arr >= n][0])
            raise IndexError(f"record index {bad} out of range for {n} records")
        return arr.astype(np.uint64, copy=False)
    if arr.dtype.kind != "i":
        raise TypeError(f"record indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        fixed = np.where(arr < 0, arr + n, arr)
        bad = (fixed < 0) | (fixed >= n)
        if bad.any():
            raise IndexError(f"record index {int(arr[bad][0])} out of range for {n} records")
        arr = fixed
    return arr.astype(np.uint64)
