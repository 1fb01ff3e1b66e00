"""Decoders: turn one record (a 1-D numpy uint8 array) into a sample.

``RecordDataset(decode=...)`` takes one of the names below or any callable
``f(record) -> sample``. The record handed to a decoder is a read-only view
of the batch's buffer; a decoder that keeps it (``raw``) keeps that buffer
alive, one that copies out of it lets it go.

============  ===========================================================
name          result
============  ===========================================================
``raw``       the record itself (numpy uint8 view, no copy) — the default
``bytes``     ``bytes`` (one copy)
``npy``       the numpy array stored by ``numpy.save`` (no pickled objects)
``json``      ``json.loads`` of the UTF-8 text
``pil``       a ``PIL.Image.Image``, decoded (needs Pillow)
``pickle``    ``pickle.loads`` — runs code from the file: name it only for
              data you trust; it is never chosen implicitly
============  ===========================================================
"""

import io
import json as _json
import pickle as _pickle

import numpy as np

__all__ = ["raw", "to_bytes", "npy", "json", "pil_image", "unpickle", "get_decoder", "DECODERS"]


def raw(record):
    """The record as it is: a 1-D numpy uint8 array (a view, no copy)."""
    return record


def to_bytes(record):
    """The record as ``bytes``."""
    return record.tobytes()


def npy(record):
    """An array written with ``numpy.save``; object arrays (pickles) are refused."""
    return np.load(io.BytesIO(record), allow_pickle=False)


def json(record):
    """A JSON document in UTF-8."""
    return _json.loads(memoryview(record).tobytes().decode("utf-8"))


def pil_image(record):
    """An encoded image (JPEG, PNG, ...) as a loaded ``PIL.Image.Image``."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("decode='pil' needs Pillow: pip install pillow") from None
    image = Image.open(io.BytesIO(record))
    image.load()  # decode now, while the bytes are at hand
    return image


def unpickle(record):
    """``pickle.loads`` — executes code stored in the record; trusted data only."""
    return _pickle.loads(memoryview(record))


DECODERS = {
    "raw": raw,
    "bytes": to_bytes,
    "npy": npy,
    "json": json,
    "pil": pil_image,
    "pickle": unpickle,
}


def get_decoder(decode):
    """``None`` -> ``raw``; a name from ``DECODERS``; or any callable, as is."""
    if decode is None:
        return raw
    if isinstance(decode, str):
        try:
            return DECODERS[decode]
        except KeyError:
            names = ", ".join(sorted(DECODERS))
            raise ValueError(f"unknown decoder {decode!r}; choose one of {names} or pass a callable") from None
    if callable(decode):
        return decode
    raise TypeError(f"decode must be None, a decoder name or a callable, not {type(decode).__name__}")
