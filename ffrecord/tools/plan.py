"""How a conversion splits its source into shards.

A plan is the list of shard boundaries over the source's item positions:
shard ``i`` holds items ``bounds[i] .. bounds[i+1]``, so shards are contiguous
and in source order, and the concatenation of all shards is the source. Every
rank computes the same plan from the same scan. ``fingerprint`` names a plan
together with the options that shape the output bytes; shards and the
conversion state carry it, so a rerun recognises its own work and refuses to
mix in shards of another conversion.
"""

import hashlib
import json

import numpy as np


DEFAULT_SHARD_SIZE = 1 << 30


def shard_options(shard_size, records_per_shard, compression, error, names=("shard size", "records per shard")):
    """Checks how shards are bounded and compressed, the same for ``convert`` and
    the engine writers; returns (shard_size, records_per_shard, compression as
    'zstd:LEVEL' or None). A bad value raises ``error`` (the caller's type), with
    the option ``names`` the caller's users know."""
    from ..codec import parse_compression

    if shard_size is not None and records_per_shard is not None:
        raise error(f"give {names[0]} or {names[1]}, not both")
    for value, name in ((shard_size, names[0]), (records_per_shard, names[1])):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise error(f"{name} must be a positive integer, got {value!r}")
    if records_per_shard is None and shard_size is None:
        shard_size = DEFAULT_SHARD_SIZE
    try:
        codec, level = parse_compression(compression)
    except (TypeError, ValueError) as e:
        raise error(str(e)) from None
    return shard_size, records_per_shard, None if codec is None else f"{codec}:{level}"


def by_records(count, per_shard):
    """Boundaries for shards of ``per_shard`` items (the last may be smaller)."""
    if count == 0:
        return [0, 0]
    return list(range(0, count, per_shard)) + [count]


def by_size(sizes, shard_size):
    """Boundaries for shards of at most ``shard_size`` source bytes; an item
    larger than that gets a shard of its own."""
    count = int(len(sizes))
    if count == 0:
        return [0, 0]
    cum = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(sizes, out=cum[1:])
    bounds, i = [0], 0
    while i < count:
        j = int(np.searchsorted(cum, cum[i] + shard_size, side="right")) - 1
        j = max(j, i + 1)
        bounds.append(j)
        i = j
    return bounds


def shard_name(i, n):
    """'shard-00003-of-00010.ffr' (zero-padded to at least 5 digits)."""
    width = max(5, len(str(n)))
    return f"shard-{i:0{width}d}-of-{n:0{width}d}.ffr"


def fingerprint(kind, count, bounds, options):
    """A short hex digest of what determines the output (not where the source lives)."""
    doc = json.dumps({"kind": kind, "count": count, "bounds": list(map(int, bounds)), "options": options},
                     sort_keys=True)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()[:32]
