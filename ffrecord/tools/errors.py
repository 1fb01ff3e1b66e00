"""The two kinds of failure the tools report without a traceback.

``UsageError`` is a mistake in how the tool was called (a missing path, an
unknown source kind, conflicting options): the command exits with status 2.
``ToolError`` is a failure of the work itself (an unreadable source, a
conversion that cannot resume, missing shards): status 1. Both carry a
one-line message meant for the user.
"""


class UsageError(Exception):
    """The caller asked for something impossible; exit status 2."""


class ToolError(Exception):
    """The work failed for a reason the message explains; exit status 1."""
