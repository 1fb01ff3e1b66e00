"""Byte sizes written by people: ``1GiB``, ``512MiB``, ``100MB``, ``4096``."""

import re

from .errors import UsageError

# KB/MB/GB/TB are decimal (as disks are sold); K/M/G/T and KiB/MiB/... binary.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text):
    """'1GiB' -> 1073741824. Raises UsageError for anything else than a
    positive number with an optional unit."""
    m = _PATTERN.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UsageError(f"bad size {text!r}; write e.g. 1GiB, 512MiB, 100MB or a number of bytes")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return value


def format_size(n):
    """1536 -> '1.5 KiB' (for reports)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - loop always returns
