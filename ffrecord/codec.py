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

# A zstd block holds at most 128 KiB and costs at least a 3-byte header, so a
# frame of s bytes cannot decode to more than this; a frame that declares
# more is forged, and is rejected before anything of that size is allocated.
_ZSTD_BLOCK_MAX = 128 << 10
_ZSTD_UNKNOWN_SIZE = (1 << 64) - 1
# A frame without a declared size (ours always declare one) decodes through a
# window buffer; its declared window is capped too.
_ZSTD_MAX_WINDOW = 8 << 20


def max_decoded_size(stored_length):
    """The most bytes a zstd record of ``stored_length`` stored bytes can decode to."""
    return (int(stored_length) // 3 + 1) * _ZSTD_BLOCK_MAX


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
        zstd = self._zstd = _zstd()
        self._plain = zstd.ZstdDecompressor()
        self._with_dict = zstd.ZstdDecompressor(dict_data=zstd.ZstdCompressionDict(dictionary)) if dictionary else None

    def decode(self, data, flags):
        """The record's bytes; raises ValueError or ``zstandard.ZstdError``
        for a frame that does not decode (the reader names file and record)."""
        codec = int(flags) & 0xF
        if codec == CODEC_NONE:
            return data
        if codec == CODEC_ZSTD_DICT:
            if self._with_dict is None:
                raise ValueError("record needs the file's zstd dictionary, but the file has none")
            dctx = self._with_dict
        else:
            dctx = self._plain
        bound = max_decoded_size(len(data))
        frame = self._zstd.get_frame_parameters(data)
        if frame.content_size == _ZSTD_UNKNOWN_SIZE:
            if frame.window_size > max(bound, _ZSTD_MAX_WINDOW):
                raise ValueError(f"zstd frame asks for a {frame.window_size}-byte window, "
                                 f"more than its {len(data)} stored bytes can use")
            out = dctx.decompress(data, max_output_size=bound)
        elif frame.content_size > bound:
            raise ValueError(f"zstd frame declares {frame.content_size} bytes, more than "
                             f"its {len(data)} stored bytes can hold (at most {bound})")
        else:
            out = dctx.decompress(data)
        return np.frombuffer(out, dtype=np.uint8)
