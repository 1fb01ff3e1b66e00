"""The safe encoding of a checkpoint's object tree (non-tensor leaves as JSON).

A checkpoint stores the nested structure of the saved object as a JSON tree.
Tensors and numpy arrays become references (``{"$": "tensor", "i": k}``) to
entries of the manifest's array table, whose bytes live in record files; every
other leaf is encoded in JSON so that loading it can never execute code.

What is encoded without pickling (``load`` restores exactly these types):

- ``None``, ``bool``, ``int``, ``float`` (incl. nan/inf/-0.0), ``complex``,
  ``str``, ``bytes``, ``bytearray``;
- ``list``, ``tuple``, ``set``, ``frozenset``, ``dict`` and ``OrderedDict``
  (with the ``_metadata`` attribute ``Module.state_dict()`` attaches); dict
  keys may be any of these hashable plain values, not only strings;
- ``torch.Tensor`` / ``nn.Parameter`` (restored as plain tensors), numpy arrays
  of fixed-size dtypes (bool, ints, floats, complex, datetimes, bytes, str),
  numpy scalars, ``torch.dtype``, ``torch.device``, ``torch.Size``.

Anything else (custom classes, namedtuples, sparse/quantized tensors, object
arrays) is pickled only when the caller passes ``trusted=True`` to ``save``;
such an entry is refused by ``load`` unless it also passes ``trusted=True``.

Every node is validated on load: a malformed or crafted tree raises
``FormatError`` (or ``UnsafeCheckpointError`` for a pickled entry), never
anything worse.
"""

import base64
import collections
import functools
import math

import numpy as np

from ..errors import FFRecordError, FormatError

__all__ = ["UnsafeCheckpointError", "Encoder", "Decoder", "format_path"]


class UnsafeCheckpointError(FFRecordError):
    """The checkpoint holds pickled objects and the caller did not pass
    ``trusted=True``; nothing from it was unpickled."""


MAX_DEPTH = 500

# numpy dtype kinds whose values are plain bit patterns (no Python objects).
_NUMPY_KINDS = frozenset("biufcmMSU")


def format_path(path):
    """A readable, unambiguous name for a position in the tree, e.g. ``['model']['fc.weight']``."""
    if not path:
        return "<root>"
    return "".join(f"[{k!r}]" for k in path)


def _torch():
    import torch

    return torch


def torch_dtype_by_name(name):
    """The torch dtype called ``name`` (e.g. 'bfloat16'); None when there is none."""
    if not isinstance(name, str):
        return None
    return _torch_dtypes().get(name)


@functools.lru_cache(maxsize=1)
def _torch_dtypes():
    torch = _torch()
    return {n: d for n in dir(torch) if isinstance(d := getattr(torch, n), torch.dtype)}


def torch_dtype_name(dtype):
    return str(dtype).rpartition(".")[2]


def numpy_dtype_from_str(s):
    """A numpy dtype from its ``dtype.str`` if it is a plain fixed-size one, else None."""
    if not isinstance(s, str) or len(s) > 32:
        return None
    try:
        d = np.dtype(s)
    except (TypeError, ValueError):
        return None
    if d.kind not in _NUMPY_KINDS or d.fields is not None or d.subdtype is not None or d.str != s:
        return None
    return d


def plain_numpy_dtype(d):
    return d.kind in _NUMPY_KINDS and d.fields is None and d.subdtype is None


def _encode_float(x):
    if math.isfinite(x):
        return x
    return {"$": "float", "v": repr(x)}  # 'nan', 'inf', '-inf'


def _b64(b):
    return base64.b64encode(bytes(b)).decode("ascii")


class Encoder:
    """Turns an object into a JSON tree, collecting array leaves and pickles.

    ``arrays``: list of (value, path) for every distinct tensor / numpy array;
    two leaves that are the same view of the same memory (same storage,
    offset, shape, strides and dtype, e.g. tied weights) share one entry and
    load as one tensor. ``pickles``: list of (bytes, path) (trusted only).
    """

    def __init__(self, trusted=False):
        self.trusted = trusted
        self.arrays = []
        self.pickles = []
        self._ids = {}
        self._active = set()  # containers on the current path: cycle detection

    def encode(self, obj, path=()):
        if len(path) > MAX_DEPTH:
            raise ValueError(f"{format_path(path[:5])}...: nesting deeper than {MAX_DEPTH} levels")
        t = type(obj)
        if obj is None or t is bool or t is int or t is str:
            return obj
        if t is float:
            return _encode_float(obj)
        if t in (dict, collections.OrderedDict, list, tuple, set, frozenset):
            return self._container(obj, t, path)
        if t is complex:
            return {"$": "complex", "v": [_encode_float(obj.real), _encode_float(obj.imag)]}
        if t is bytes:
            return {"$": "bytes", "v": _b64(obj)}
        if t is bytearray:
            return {"$": "bytearray", "v": _b64(obj)}
        if t is np.ndarray:
            if plain_numpy_dtype(obj.dtype):
                return {"$": "ndarray", "i": self._array(obj, "numpy", path)}
            return self._pickle(obj, path, f"numpy array of dtype {obj.dtype}")
        if isinstance(obj, np.generic) and t.__module__ == "numpy":
            if plain_numpy_dtype(obj.dtype):
                return {"$": "npscalar", "dtype": obj.dtype.str, "v": _b64(obj.tobytes())}
            return self._pickle(obj, path, f"numpy scalar of dtype {obj.dtype}")
        if t.__module__.startswith("torch"):
            return self._torch_leaf(obj, path)
        return self._pickle(obj, path, f"object of type {t.__module__}.{t.__qualname__}")

    def _container(self, obj, t, path):
        if id(obj) in self._active:
            raise ValueError(f"{format_path(path)}: the object contains itself (a reference cycle)")
        self._active.add(id(obj))
        try:
            if t is dict or t is collections.OrderedDict:
                keys, values = [], []
                for k, v in obj.items():
                    keys.append(self._key(k, path))
                    values.append(self.encode(v, path + (k,)))
                node = {"$": "dict" if t is dict else "odict", "k": keys, "v": values}
                meta = getattr(obj, "_metadata", None) if t is collections.OrderedDict else None
                if meta is not None:
                    node["m"] = self.encode(meta, path + ("_metadata",))
                return node
            tag = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}[t]
            if t in (set, frozenset):
                return {"$": tag, "v": [self._key(x, path) for x in obj]}
            return {"$": tag, "v": [self.encode(x, path + (i,)) for i, x in enumerate(obj)]}
        finally:
            self._active.discard(id(obj))

    def _key(self, k, path):
        """Dict keys and set members: hashable plain values only."""
        t = type(k)
        if k is None or t in (bool, int, str, float, complex, bytes):
            return self.encode(k, path)
        if t is tuple:
            return {"$": "tuple", "v": [self._key(x, path) for x in k]}
        if t is frozenset:
            return {"$": "frozenset", "v": [self._key(x, path) for x in k]}
        if isinstance(k, np.generic) and plain_numpy_dtype(k.dtype):
            return self.encode(k, path)
        if self.trusted:
            return self._pickle(k, path, "key")
        raise TypeError(
            f"{format_path(path)}: dict key {k!r} of type {t.__qualname__} is not a plain value "
            "(str, int, float, bool, None, bytes, tuple); pass trusted=True to pickle it"
        )

    def _torch_leaf(self, obj, path):
        torch = _torch()
        if isinstance(obj, torch.dtype):
            return {"$": "dtype", "v": torch_dtype_name(obj)}
        if isinstance(obj, torch.device):
            return {"$": "device", "v": str(obj)}
        if isinstance(obj, torch.Size):
            return {"$": "size", "v": list(obj)}
        if isinstance(obj, torch.Tensor):
            why = unsupported_tensor_reason(obj)
            if why is None:
                return {"$": "tensor", "i": self._array(obj, "torch", path)}
            return self._pickle(obj, path, why)
        return self._pickle(obj, path, f"object of type {type(obj).__module__}.{type(obj).__qualname__}")

    def _array(self, value, kind, path):
        key = _alias_key(value, kind)
        if key is not None and key in self._ids:
            return self._ids[key]
        self.arrays.append((value, path))
        i = len(self.arrays) - 1
        if key is not None:
            self._ids[key] = i
        return i

    def _pickle(self, obj, path, what):
        if not self.trusted:
            raise TypeError(
                f"{format_path(path)}: {what} cannot be stored without pickling; "
                "pass trusted=True to save() to pickle it (load() will then need trusted=True too)"
            )
        import pickle

        self.pickles.append((pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), path))
        return {"$": "pickle", "i": len(self.pickles) - 1}


def unsupported_tensor_reason(t):
    """None if the tensor's bytes can be stored as they are, else why not."""
    torch = _torch()
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        return f"tensor subclass {type(t).__qualname__}"
    if t.layout != torch.strided:
        return f"tensor with layout {t.layout}"
    if t.is_quantized:
        return "quantized tensor"
    if t.is_nested:
        return "nested tensor"
    if t.device.type == "meta":
        return "meta tensor (it has no data)"
    return None


def _alias_key(value, kind):
    """Identity of a view: equal keys mean the same bytes seen the same way."""
    if kind == "torch":
        if value.numel() == 0:
            return None
        return ("torch", value.data_ptr(), value.shape, value.stride(), value.dtype, value.device)
    if value.size == 0:
        return None
    return ("numpy", value.__array_interface__["data"][0], value.shape, value.strides, value.dtype.str)


class Decoder:
    """Rebuilds objects from a JSON tree. ``array(i)`` and ``pickle(i)`` are
    callables that return the loaded array / unpickled object for entry i;
    the decoder checks everything else and raises FormatError naming
    ``source`` for any malformed node."""

    def __init__(self, source, array, pickle=None):
        self.source = source
        self.array = array
        self.pickle = pickle

    def bad(self, path, what):
        return FormatError(f"{self.source}: malformed checkpoint tree at {format_path(path)}: {what}")

    def decode(self, node, path=()):
        if len(path) > MAX_DEPTH:
            raise self.bad(path[:5], "nesting too deep")
        if node is None or type(node) in (bool, int, str, float):
            return node
        if type(node) is not dict:
            raise self.bad(path, f"unexpected JSON value of type {type(node).__name__}")
        tag = node.get("$")
        if tag in ("dict", "odict"):
            keys, values = node.get("k"), node.get("v")
            if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
                raise self.bad(path, "a dict needs equally long 'k' and 'v' lists")
            out = {} if tag == "dict" else collections.OrderedDict()
            for kn, vn in zip(keys, values):
                k = self.key(kn, path)
                out[k] = self.decode(vn, path + (k,))
            if tag == "odict" and "m" in node:
                out._metadata = self.decode(node["m"], path + ("_metadata",))
            return out
        if tag in ("list", "tuple", "set", "frozenset"):
            items = node.get("v")
            if not isinstance(items, list):
                raise self.bad(path, f"a {tag} needs a 'v' list")
            if tag in ("set", "frozenset"):
                members = [self.key(x, path) for x in items]
                return set(members) if tag == "set" else frozenset(members)
            seq = [self.decode(x, path + (i,)) for i, x in enumerate(items)]
            return seq if tag == "list" else tuple(seq)
        if tag in ("tensor", "ndarray", "pickle"):
            i = node.get("i")
            if type(i) is not int or i < 0:
                raise self.bad(path, f"a {tag} reference needs an index")
            if tag == "pickle":
                return self.pickle(i, path)
            return self.array(i, "torch" if tag == "tensor" else "numpy", path)
        if tag == "float":
            v = node.get("v")
            if v not in ("nan", "inf", "-inf"):
                raise self.bad(path, "bad float")
            return float(v)
        if tag == "complex":
            v = node.get("v")
            if not isinstance(v, list) or len(v) != 2:
                raise self.bad(path, "bad complex")
            re, im = (self.decode(x, path) for x in v)
            if type(re) is not float or type(im) is not float:
                raise self.bad(path, "bad complex")
            return complex(re, im)
        if tag in ("bytes", "bytearray"):
            raw = self._b64(node.get("v"), path)
            return raw if tag == "bytes" else bytearray(raw)
        if tag == "npscalar":
            d = numpy_dtype_from_str(node.get("dtype"))
            raw = self._b64(node.get("v"), path)
            if d is None or len(raw) != d.itemsize:
                raise self.bad(path, "bad numpy scalar")
            return np.frombuffer(raw, dtype=d)[0]
        if tag == "dtype":
            d = torch_dtype_by_name(node.get("v"))
            if d is None:
                raise self.bad(path, f"unknown torch dtype {node.get('v')!r}")
            return d
        if tag == "device":
            v = node.get("v")
            if isinstance(v, str) and len(v) < 64:
                try:
                    return _torch().device(v)
                except (RuntimeError, TypeError, ValueError):
                    pass
            raise self.bad(path, f"bad device {v!r}")
        if tag == "size":
            v = node.get("v")
            if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
                raise self.bad(path, "bad torch.Size")
            return _torch().Size(v)
        raise self.bad(path, f"unknown node type {tag!r}")

    def key(self, node, path):
        """A dict key or set member: plain hashable values only."""
        if type(node) is dict:
            tag = node.get("$")
            if tag in ("tuple", "frozenset"):
                items = node.get("v")
                if not isinstance(items, list):
                    raise self.bad(path, f"a {tag} needs a 'v' list")
                members = [self.key(x, path) for x in items]
                return tuple(members) if tag == "tuple" else frozenset(members)
            if tag not in ("float", "complex", "bytes", "npscalar"):
                raise self.bad(path, f"a dict key cannot be a {tag!r} node")
        k = self.decode(node, path)
        try:
            hash(k)
        except TypeError:
            raise self.bad(path, f"unhashable dict key of type {type(k).__name__}") from None
        return k

    def _b64(self, v, path):
        if not isinstance(v, str):
            raise self.bad(path, "bad base64 payload")
        try:
            return base64.b64decode(v.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise self.bad(path, "bad base64 payload") from None
