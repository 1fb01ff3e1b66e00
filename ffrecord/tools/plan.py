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
