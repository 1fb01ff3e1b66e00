"""Per-record codecs: the bytes a record stores versus the bytes a user sees.

The codec of a record is kept in the low four bits of its index flags
(docs/FORMAT.md): 0 none, 1 zstd, 2 zstd with the file's shared dictionary.
Compression uses the ``zstandard`` package (``pip install ffrecord[zstd]``),
which releases the GIL while it works.

Decompression happens in the C++ core (``csrc/codec.*``, libzstd): a batch's
compressed records decode in parallel, without the GIL, straight into one
block, after each frame's declared size is checked against the bound of
docs/FORMAT.md. Threads: ``FFRECORD_DECODE_THREADS``, default the CPUs the
process may use. Why the core rather than zstandard's batch API
(``ZstdDecompressor.multi_decompress_to_buffer``): side by side in one run
(``benchmarks/bench_compressed.py --decoders``; 4 KiB JSON records, level 3,
batches of 256, on a busy 2-CPU machine), the core's whole read (I/O,
checksums and decoding) ran at 1.0-1.2x that API's decoding alone of frames
already in memory, with and without a dictionary, except once at 0.85x
(dictionary, one thread). The core also makes no Python object per record
before decoding, checks the size bound without the GIL, decodes into one
block for the batch and keeps its threads between batches; the zstd package
is then needed only to write compressed files.
"""

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
