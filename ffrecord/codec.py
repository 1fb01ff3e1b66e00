"""Per-record codecs: the bytes a record stores versus the bytes a user sees.

The codec of a record is kept in the low four bits of its index flags
(docs/FORMAT.md): 0 none, 1 zstd, 2 zstd with the file's shared dictionary.
Compression uses the ``zstandard`` package (``pip install ffrecord[zstd]``),
which releases the GIL while it works.
"""

import numpy as np

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DICT = 2


def _zstd():
    try:
        import zstandard
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "zstd compression needs the 'zstandard' package: pip install 'ffrecord[zstd]'"
        ) from None
    return zstandard


def parse_compression(spec):
    """'zstd' or 'zstd:LEVEL' (or None) -> (codec name, level)."""
    if spec is None or spec == "none":
        return None, 0
    if not isinstance(spec, str):
        raise TypeError(f"compression must be a string such as 'zstd:3', not {type(spec).__name__}")
    name, _, level = spec.partition(":")
    if name != "zstd":
        raise ValueError(f"unknown compression {spec!r}; supported: 'zstd' or 'zstd:LEVEL'")
    try:
        level = int(level) if level else 3
    except ValueError:
        raise ValueError(f"bad zstd level in {spec!r}") from None
    if not -7 <= level <= 22:
        raise ValueError(f"zstd level must be in [-7, 22], got {level}")
    return name, level


class Encoder:
    """Compresses records for one file; ``dictionary`` (bytes) is optional."""

    def __init__(self, level, dictionary=None):
        zstd = _zstd()
        self.dictionary = dictionary
        self.flags = CODEC_ZSTD_DICT if dictionary else CODEC_ZSTD
        dict_data = zstd.ZstdCompressionDict(dictionary) if dictionary else None
        self._cctx = zstd.ZstdCompressor(level=level, dict_data=dict_data, write_content_size=True)

    def encode(self, data):
        return self._cctx.compress(data)


def train_dictionary(samples, size=112640):
    """Trains a zstd dictionary on a list of sample records (bytes-like)."""
    zstd = _zstd()
    return zstd.train_dictionary(size, [bytes(s) for s in samples]).as_bytes()


class Decoder:
    """Decompresses the records of one file (with its dictionary, if any)."""

    def __init__(self, dictionary=b""):
        zstd = _zstd()
        self._plain = zstd.ZstdDecompressor()
        self._with_dict = zstd.ZstdDecompressor(dict_data=zstd.ZstdCompressionDict(dictionary)) if dictionary else None

    def decode(self, data, flags):
        codec = int(flags) & 0xF
        if codec == CODEC_NONE:
            return data
        if codec == CODEC_ZSTD_DICT:
            if self._with_dict is None:
                raise ValueError("record needs the file's zstd dictionary, but the file has none")
            out = self._with_dict.decompress(data)
        else:
            out = self._plain.decompress(data)
        return np.frombuffer(out, dtype=np.uint8)
