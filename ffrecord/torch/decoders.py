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
``labeled``   ``(image bytes as a uint8 view, label)`` of the labeled layout
``parts``     ``{name: bytes}`` of the parts layout
``pickle``    ``pickle.loads`` — runs code from the file: name it only for
              data you trust; it is never chosen implicitly
============  ===========================================================

Datasets written by ``ffrecord convert`` record how their records are laid
out (``ffrecord.tools.records``), and ``get_decoder(name, metadata)`` follows
that record, so a name means the same thing whatever the source was:

* ``--from imagefolder`` (layout ``labeled``): ``pil`` gives
  ``(PIL image, label)``, ``bytes`` gives ``(image bytes, label)``.
* ``--from tar`` / ``webdataset`` (layout ``parts``): ``pil`` gives
  ``(PIL image, label)`` from the sample's one image part and its ``cls``
  part, or the image alone when there is no ``cls``; ``parts`` gives every
  part by name.
* ``--from npy``: ``npy`` gives each row as an array of the source's dtype
  and shape.

A name that does not apply to the recorded layout is refused when the
dataset is made, with the names that do. ``raw`` is always the stored record.
"""

import io
import json as _json
import pickle as _pickle

import numpy as np

from ..tools.records import LABELED, LAYOUT_KEY, PARTS, decode_labeled, decode_parts

__all__ = ["raw", "to_bytes", "npy", "json", "pil_image", "labeled", "parts", "unpickle", "get_decoder", "DECODERS"]

# Part names (the file extensions of a webdataset sample) that hold an image.
IMAGE_PARTS = ("jpg", "jpeg", "png", "ppm", "pgm", "bmp", "tif", "tiff", "webp", "gif")


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


def labeled(record):
    """A record of the labeled layout: ``(image bytes as a uint8 view, label)``."""
    return decode_labeled(record)


def parts(record):
    """A record of the parts layout: ``{part name: bytes}``, in stored order."""
    return {name: view.tobytes() for name, view in decode_parts(record).items()}


def labeled_pil(record):
    """A labeled record: ``(PIL image, label)``."""
    image, label = decode_labeled(record)
    return pil_image(image), label


def labeled_bytes(record):
    """A labeled record: ``(image bytes, label)``."""
    image, label = decode_labeled(record)
    return image.tobytes(), label


def parts_pil(record):
    """A parts record: ``(PIL image, label)`` from its one image part and its
    ``cls`` part (an integer in text, as webdataset writes it); the image alone
    when there is no ``cls``."""
    found = decode_parts(record)
    images = [name for name in found if name.rpartition(".")[2].lower() in IMAGE_PARTS]
    if len(images) != 1:
        names = ", ".join(found) or "none"
        raise ValueError(f"decode='pil' needs exactly one image part, the record has {names}; "
                         "use decode='parts' and pick the parts yourself")
    image = pil_image(found[images[0]])
    if "cls" not in found:
        return image
    text = found["cls"].tobytes()
    try:
        return image, int(text)
    except ValueError:
        raise ValueError(f"the cls part is not an integer: {text[:40]!r}; use decode='parts'") from None


class NpyRows:
    """Rows of an array converted with ``--from npy``: each record back to an
    array of the recorded dtype and shape (a copy, so it is writable)."""

    def __init__(self, dtype, shape):
        self.dtype, self.shape = dtype, tuple(shape)
        self.row_bytes = dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))

    def __call__(self, record):
        if record.size != self.row_bytes:
            raise ValueError(f"a row of {self.dtype} {self.shape} has {self.row_bytes} bytes, the record {record.size}")
        return np.frombuffer(record, dtype=self.dtype).reshape(self.shape).copy()


def unpickle(record):
    """``pickle.loads`` — executes code stored in the record; trusted data only."""
    return _pickle.loads(memoryview(record))


DECODERS = {
    "raw": raw,
    "bytes": to_bytes,
    "npy": npy,
    "json": json,
    "pil": pil_image,
    "labeled": labeled,
    "parts": parts,
    "pickle": unpickle,
}

# The decoders each recorded layout takes, by name; other names are refused.
_LAYOUT_DECODERS = {
    LABELED: {"raw": raw, "bytes": labeled_bytes, "pil": labeled_pil, "labeled": labeled},
    PARTS: {"raw": raw, "pil": parts_pil, "parts": parts},
}
_LAYOUT_WHAT = {
    LABELED: "an integer label + an image file's bytes, as `ffrecord convert --from imagefolder` writes them",
    PARTS: "named parts of one sample, as `ffrecord convert --from tar/webdataset` writes them",
}


def get_decoder(decode, metadata=None, where="the dataset"):
    """``None`` -> ``raw``; a name from ``DECODERS``; or any callable, as is.

    ``metadata`` is the dataset's metadata (``FileReader.metadata``): a name
    then decodes the layout recorded there (see the module's docstring), and a
    name that does not fit that layout raises ``ValueError`` naming ``where``
    and the decoders that fit."""
    if decode is None:
        return raw
    if isinstance(decode, str):
        if decode not in DECODERS:
            names = ", ".join(sorted(DECODERS))
            raise ValueError(f"unknown decoder {decode!r}; choose one of {names} or pass a callable")
        return _for_layout(decode, metadata if isinstance(metadata, dict) else {}, where)
    if callable(decode):
        return decode
    raise TypeError(f"decode must be None, a decoder name or a callable, not {type(decode).__name__}")


def _for_layout(name, metadata, where):
    layout = metadata.get(LAYOUT_KEY)
    if layout in _LAYOUT_DECODERS:
        fitting = _LAYOUT_DECODERS[layout]
        if name not in fitting:
            names = ", ".join(repr(n) for n in fitting)
            raise ValueError(f"{where}: decode={name!r} does not fit its records ({_LAYOUT_WHAT[layout]}); "
                             f"use one of {names} or a callable")
        return fitting[name]
    rows = metadata.get("npy")
    if name == "npy" and isinstance(rows, dict) and "dtype" in rows and "shape" in rows:
        try:
            dtype = np.lib.format.descr_to_dtype(_as_descr(rows["dtype"]))
            return NpyRows(dtype, [int(d) for d in rows["shape"]])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: its metadata describes npy rows it cannot read ({e})") from None
    if name in ("labeled", "parts"):
        raise ValueError(f"{where}: decode={name!r} needs records in the {name} layout "
                         "(written by `ffrecord convert`), and its metadata records none")
    return DECODERS[name]


def _as_descr(descr):
    # JSON turns a structured dtype's tuples into lists; numpy wants tuples back.
    if isinstance(descr, list):
        return [tuple(_as_descr(x) for x in field) if isinstance(field, list) else field for field in descr]
    return descr
