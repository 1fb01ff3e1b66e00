"""Progress bars that appear on a terminal and stay out of logs.

A bar is drawn (by tqdm, on stderr) only when stderr is a terminal and the
user did not pass ``--quiet``; otherwise the same calls do nothing, so job
logs on a cluster are not filled with carriage returns.
"""

import sys

from tqdm import tqdm


class _Silent:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def wanted(quiet=False, stream=None):
    """Whether a bar should be drawn."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar(total, desc, unit="rec", enabled=False, binary=False):
    """A tqdm bar when ``enabled``, else an object with the same methods that does nothing.
    ``binary`` scales by 1024 and names the units KiB, MiB, ... as the summaries do."""
    if not enabled:
        return _Silent()
    if binary:
        # tqdm writes prefix + unit: "i" + "B" after K/M/G makes KiB/MiB/GiB.
        return tqdm(total=total, desc=desc, unit="i" + unit, unit_scale=True, unit_divisor=1024,
                    dynamic_ncols=True, file=sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr)
