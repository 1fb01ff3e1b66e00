"""The kinds of failure the tools report without a traceback.

``UsageError`` is a mistake in how the tool was called (a missing path, an
unknown source kind, conflicting options): the command exits with status 2.
``ToolError`` is a failure of the work itself (an unreadable source, a
conversion that cannot resume, missing shards): status 1.
``EnvironmentFailure`` is the filesystem refusing an operation while
``validate`` or ``convert`` checks existing files: not a verdict on the data,
so it is kept apart from "bad data" (status 1) and exits with status 2. All
carry a one-line message meant for the user.
"""

import errno


class UsageError(Exception):
    """The caller asked for something impossible; exit status 2."""


class ToolError(Exception):
    """The work failed for a reason the message explains; exit status 1."""


class EnvironmentFailure(Exception):
    """The operating system or filesystem refused an operation (EIO, EACCES,
    ENODEV, ESTALE, ETIMEDOUT, ...). That says nothing about the data, so the
    command judges nothing and changes nothing; exit status 2."""

    @classmethod
    def from_os_error(cls, e, path, doing, consequence):
        """'<path>: cannot <doing>: <strerror> (<ERRNO NAME>); <consequence>'."""
        text = describe_os_error(e)
        prefix = f"{path}: "  # the core's messages already name the file
        return cls(f"{path}: cannot {doing}: {text[len(prefix):] if text.startswith(prefix) else text}; {consequence}")


def describe_os_error(e):
    """'Permission denied (EACCES)': the system's text and the errno's name."""
    text = e.strerror or str(e) or type(e).__name__
    name = errno.errorcode.get(e.errno) if isinstance(e.errno, int) else None
    return f"{text} ({name})" if name else text
