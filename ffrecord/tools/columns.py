"""Table rows -> records: how a row of named, typed columns becomes one record.

Used by every table-shaped input (``--from parquet``, ``arrow``, ``hf``, and the
Ray and Spark writers), so the same rows give the same records whichever engine
wrote them. One column may be the record's key; the others are its values.

Each value column has a *type tag* that says how one value becomes bytes:

==============  ==============================================================
``bytes``       binary values, unchanged
``bytes_field`` the ``bytes`` field of a struct (Hugging Face ``Image``/``Audio``)
``str``         UTF-8
``int8`` ...    fixed-width little-endian numbers (``int8..int64``,
                ``uint8..uint64``, ``float16/32/64``); ``bool`` is one byte 0/1
``json``        lists, structs and maps as compact JSON (UTF-8, object keys sorted)
==============  ==============================================================

The record layout (named in the metadata under ``"ffrecord.layout"``):

- ``column``: a single value column: the record is its value's bytes. A null
  value is refused (it could not be told from an empty one).
- ``parts`` (``ffrecord.tools.records``): several value columns: one part per
  column, named after it, in column order; a null value leaves its part out.

The metadata also holds ``"ffrecord.columns": {"key": NAME | null, "values":
[{"name": ..., "type": ...}, ...]}``; ``decode_row(record, metadata)`` turns a
record back into a dict of Python values.
"""

import json
import struct

import numpy as np

from .records import LABELED, LAYOUT_KEY, PARTS, decode_labeled, decode_parts, encode_parts

COLUMN = "column"
COLUMNS_KEY = "ffrecord.columns"

_NUMERIC = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64")
TAGS = ("bytes", "bytes_field", "str", "bool", "json") + _NUMERIC
KEY_TAGS = ("str", "bytes") + _NUMERIC[:8]


class ColumnError(ValueError):
    """A row or a schema that has no record encoding (the message says which column)."""


def arrow_tag(name, arrow_type):
    """The type tag for a pyarrow type; ColumnError for types with no encoding."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytes"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype()).name
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        if "bytes" in names and pa.types.is_binary(t.field("bytes").type) and set(names) <= {"bytes", "path"}:
            return "bytes_field"
        return "json"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_map(t):
        return "json"
    raise ColumnError(f"column {name!r} has type {arrow_type}, which has no record encoding; "
                      "cast it to a string, number or binary column first")


def arrow_columns(schema):
    """[(name, type tag)] for a pyarrow schema."""
    return [(field.name, arrow_tag(field.name, field.type)) for field in schema]


def arrow_rows(table):
    """The rows of a pyarrow Table or RecordBatch as dicts of Python values."""
    import pyarrow as pa

    columns = {}
    for field in table.schema:
        values = table.column(field.name).to_pylist()
        if pa.types.is_map(field.type):  # pairs -> an object, as a Spark map arrives
            values = [None if v is None else dict(v) for v in values]
        columns[field.name] = values
    for k in range(table.num_rows):
        yield {name: values[k] for name, values in columns.items()}


def arrow_type(tag):
    """The pyarrow type that holds decoded values of ``tag`` (None: inferred, for JSON)."""
    import pyarrow as pa

    if tag in ("bytes", "bytes_field"):
        return pa.binary()
    if tag == "str":
        return pa.string()
    if tag == "bool":
        return pa.bool_()
    if tag == "json":
        return None
    return pa.from_numpy_dtype(np.dtype(tag))


class RowEncoder:
    """Encodes rows (dicts of Python values) of one schema into (record, key)."""

    def __init__(self, columns, key=None):
        """``columns``: [(name, tag)] of every column, in order; ``key``: the key column's name."""
        names = [n for n, _ in columns]
        if len(set(names)) != len(names):
            raise ColumnError(f"column names repeat: {names}")
        tags = dict(columns)
        for name, tag in columns:
            if tag not in TAGS:
                raise ColumnError(f"column {name!r}: unknown type tag {tag!r}")
        if key is not None:
            if key not in tags:
                raise ColumnError(f"key column {key!r} is not a column (columns: {', '.join(names)})")
            if tags[key] not in KEY_TAGS:
                raise ColumnError(f"key column {key!r} has type {tags[key]}; a key is a string, binary or integer")
        self.key = key
        self.key_tag = tags.get(key)
        self.values = [(n, t) for n, t in columns if n != key]
        if not self.values:
            raise ColumnError("no value column is left besides the key column")
        self.layout = COLUMN if len(self.values) == 1 else PARTS

    def metadata(self):
        return {LAYOUT_KEY: self.layout,
                COLUMNS_KEY: {"key": self.key, "values": [{"name": n, "type": t} for n, t in self.values]}}

    def encode(self, row):
        """``row`` (a mapping of column name -> value) -> (record bytes, key or None)."""
        key = None
        if self.key is not None:
            key = _key_text(self.key, self.key_tag, row[self.key])
        if self.layout == COLUMN:
            name, tag = self.values[0]
            value = row[name]
            if value is None:
                raise ColumnError(f"column {name!r} is null, which a single-column record cannot hold")
            return encode_value(name, tag, value), key
        parts = [(name, encode_value(name, tag, row[name])) for name, tag in self.values if row[name] is not None]
        return encode_parts(parts), key


    def encode_arrow(self, table):
        """All rows of a pyarrow Table or RecordBatch at once -> ``EncodedRows``:
        the same records and keys as ``encode`` gives row by row, built by Arrow's
        kernels over whole columns instead of one Python call per value. A row
        that has no encoding raises ``ColumnError`` with ``row`` set to its index
        in ``table``."""
        fast = _encode_columns(self, table)
        if fast is not None:
            return fast
        # Slow path (JSON columns, nulls where a record cannot hold them, keys
        # that need checking): row by row, which also finds the row at fault.
        records, keys = [], ([] if self.key is not None else None)
        for k, row in enumerate(arrow_rows(table)):
            try:
                data, key = self.encode(row)
            except ColumnError as e:
                err = ColumnError(str(e))
                err.row = k
                raise err from None
            records.append(data)
            if keys is not None:
                keys.append(key)
        offsets = np.zeros(len(records) + 1, np.int64)
        np.cumsum([len(r) for r in records], out=offsets[1:])
        return EncodedRows(b"".join(records), offsets, keys)


class EncodedRows:
    """Records back to back: record ``i`` is ``data[offsets[i]:offsets[i + 1]]``
    (``data`` a buffer, ``offsets`` int64); ``keys`` a list of str or None.
    ``FileWriter.write_packed`` takes them as they are."""

    __slots__ = ("data", "offsets", "keys")

    def __init__(self, data, offsets, keys):
        self.data, self.offsets, self.keys = data, offsets, keys

    def __len__(self):
        return len(self.offsets) - 1

    def lengths(self):
        return np.diff(self.offsets)

    def records(self):
        """Each record as a memoryview of ``data``."""
        view = memoryview(self.data).cast("B")
        ends = self.offsets.tolist()
        return [view[ends[i]:ends[i + 1]] for i in range(len(ends) - 1)]


# ---- whole columns at once ----------------------------------------------------------
# Types whose value encoding Arrow can do over a whole column; "json" goes row by row.
_VECTOR_TAGS = {"bytes", "bytes_field", "str", "bool"} | set(_NUMERIC)


def _encode_columns(encoder, table):
    """``EncodedRows`` for ``table`` from whole-column kernels, or None when some
    column or row needs the row-by-row path (which gives the same bytes, or the error)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if any(tag not in _VECTOR_TAGS for _, tag in encoder.values):
        return None
    n = table.num_rows
    if isinstance(table, pa.Table):
        table = table.combine_chunks()
    try:
        keys = None
        if encoder.key is not None:
            keys = _arrow_keys(_column(table, encoder.key), encoder.key_tag)
            if keys is None:
                return None
        values = []
        for name, tag in encoder.values:
            v = _arrow_values(_column(table, name), tag)
            if v is None:
                return None
            values.append((name, v))
        empty = pa.scalar(b"", pa.large_binary())
        if encoder.layout == COLUMN:
            joined = values[0][1]
            if joined.null_count:
                return None  # the row-by-row path names the null row
        else:
            # parts: count | per present part (name_len | name | size) | payloads
            present = np.zeros(n, np.uint32)
            heads = []
            for name, v in values:
                valid = np.ones(n, bool) if not v.null_count else v.is_valid().to_numpy(zero_copy_only=False)
                present += valid
                raw = name.encode("utf-8")
                if len(raw) > 0xFFFF:
                    return None
                prefix = np.frombuffer(struct.pack("<H", len(raw)) + raw, np.uint8)
                head = np.empty((n, len(prefix) + 8), np.uint8)
                head[:, :len(prefix)] = prefix
                sizes = pc.binary_length(v).fill_null(0).to_numpy(zero_copy_only=False).astype("<u8")
                head[:, len(prefix):] = sizes.view(np.uint8).reshape(n, 8)
                heads.append(_fixed_to_binary(head, None if v.null_count == 0 else valid))
            count = _fixed_to_binary(present.astype("<u4").view(np.uint8).reshape(n, 4), None)
            joined = pc.binary_join_element_wise(count, *heads, *(v for _, v in values), empty,
                                                 null_handling="skip")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None  # e.g. a value Arrow will not cast: the row-by-row path says which
    if len(joined) != n:
        return None
    # Offsets index the whole values buffer (an array sliced from a larger one starts past 0).
    offsets = np.frombuffer(joined.buffers()[1], np.int64, count=n + 1, offset=joined.offset * 8)
    return EncodedRows(joined.buffers()[2] or b"", offsets, keys)


def _column(table, name):
    import pyarrow as pa

    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _fixed_to_binary(rows, valid):
    """A (n, width) uint8 array -> large_binary array of its rows (null where not ``valid``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, width = rows.shape
    out = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(rows))])
    out = out.cast(pa.large_binary())
    if valid is not None:
        out = pc.if_else(pa.array(valid), out, pa.scalar(None, pa.large_binary()))
    return out


def _arrow_values(col, tag):
    """The encoded values of one column as a large_binary array (nulls stay null),
    or None where only the row-by-row path can encode them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if tag == "bytes":
        return col.cast(pa.large_binary())
    if tag == "str":
        return col.cast(pa.large_string()).cast(pa.large_binary())
    if tag == "bool":
        one, zero = pa.scalar(b"\x01", pa.large_binary()), pa.scalar(b"\x00", pa.large_binary())
        return pc.if_else(col, one, zero)
    if tag == "bytes_field":
        inner = pc.struct_field(col, "bytes")
        if inner.null_count != col.null_count:
            return None  # a value with no bytes (only a path): an error, raised row by row
        return inner.cast(pa.large_binary())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        dtype = np.dtype(tag).newbyteorder("<")
        numbers = col.fill_null(0).to_numpy(zero_copy_only=False)
        if numbers.dtype != np.dtype(tag):
            return None
        rows = np.ascontiguousarray(numbers.astype(dtype, copy=False)).view(np.uint8).reshape(len(col), dtype.itemsize)
        return _fixed_to_binary(rows, None if not col.null_count else col.is_valid().to_numpy(zero_copy_only=False))
    return None


def _arrow_keys(col, tag):
    """The key of every row as str, or None where the row-by-row path must check them."""
    import pyarrow as pa

    if col.null_count:
        return None
    if tag == "str":
        return col.to_pylist()
    if tag == "bytes":
        return col.cast(pa.large_binary()).cast(pa.large_string()).to_pylist()  # raises if not UTF-8
    if pa.types.is_integer(col.type):
        return col.cast(pa.string()).to_pylist()
    return None


def encode_value(name, tag, value):
    if tag == "bytes":
        return bytes(value)
    if tag == "bytes_field":
        inner = value.get("bytes") if isinstance(value, dict) else None
        if inner is None:
            raise ColumnError(f"column {name!r}: the value holds no bytes (only a path?)")
        return bytes(inner)
    if tag == "str":
        if not isinstance(value, str):
            raise ColumnError(f"column {name!r}: expected a string, got {type(value).__name__}")
        return value.encode("utf-8")
    if tag == "bool":
        return b"\x01" if value else b"\x00"
    if tag == "json":
        try:
            # Sorted keys: Spark hands maps over in hash order, Arrow in stored order.
            return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False,
                              sort_keys=True).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise ColumnError(f"column {name!r}: cannot encode as JSON: {e}") from None
    try:
        return np.asarray(value, dtype=np.dtype(tag).newbyteorder("<")).tobytes()
    except (TypeError, ValueError, OverflowError) as e:
        raise ColumnError(f"column {name!r}: not a {tag}: {e}") from None


def decode_value(tag, buf):
    data = bytes(buf)
    if tag in ("bytes", "bytes_field"):
        return data
    if tag == "str":
        return data.decode("utf-8")
    if tag == "bool":
        return data != b"\x00"
    if tag == "json":
        return json.loads(data.decode("utf-8"))
    return np.frombuffer(data, dtype=np.dtype(tag).newbyteorder("<"))[0].item()


def decode_row(record, metadata):
    """A record written with ``metadata`` -> dict of column name -> value (None for a
    null). The key column is not in the record; read it with ``FileReader.key``."""
    spec = metadata.get(COLUMNS_KEY) if isinstance(metadata, dict) else None
    if not spec:
        raise ValueError("the metadata describes no columns (not written from a table)")
    values = [(v["name"], v["type"]) for v in spec["values"]]
    if metadata.get(LAYOUT_KEY) == COLUMN:
        name, tag = values[0]
        return {name: decode_value(tag, record)}
    parts = decode_parts(record)
    return {name: (decode_value(tag, parts[name]) if name in parts else None) for name, tag in values}


def _key_text(name, tag, value):
    if value is None:
        raise ColumnError(f"key column {name!r} is null")
    if tag == "str":
        return value
    if tag == "bytes":
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ColumnError(f"key column {name!r}: a binary key that is not UTF-8") from None
    return str(int(value))


def _plain(value):
    """Python values from what engines hand over (Spark Rows, numpy scalars and arrays)."""
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("binary values inside a nested column")
    return value


def record_columns(metadata, has_keys):
    """How records of a dataset with ``metadata`` become columns: a function
    ``(record bytes, key) -> dict``. Rows written from a table get their columns
    back (the key column under its own name); ``parts`` records one binary column
    per part; ``labeled`` records ``data`` and ``label``; other records ``data``.
    Keys, when the dataset has them and no key column is named, go to ``key``."""
    meta = metadata if isinstance(metadata, dict) else {}
    spec = meta.get(COLUMNS_KEY)
    key_name = (spec or {}).get("key") or "key"
    layout = meta.get(LAYOUT_KEY)
    if spec:
        def values(record):
            return decode_row(record, meta)
    elif layout == PARTS:
        def values(record):
            return {name: part.tobytes() for name, part in decode_parts(record).items()}
    elif layout == LABELED:
        def values(record):
            data, label = decode_labeled(record)
            return {"data": data.tobytes(), "label": label}
    else:
        def values(record):
            return {"data": bytes(record)}

    def row(record, key):
        out = {key_name: key} if has_keys else {}
        out.update(values(record))
        return out

    return row
