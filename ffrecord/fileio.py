"""The original FFRecord package's ``ffrecord.fileio`` module: ``FileReader``,
``FileWriter`` and ``checkFsAlign``, so imports written for it keep working."""

import fcntl
import struct

from .reader import FileReader
from .writer import FileWriter

__all__ = ["FileReader", "FileWriter", "checkFsAlign"]

# The ioctl by which a filesystem that serves O_DIRECT reads at any alignment
# says so (_IOR('f', 100, int)); every other filesystem refuses it.
_FS_IOC_CHECK_FS_ALIGN = 0x80046664


def checkFsAlign(fd):
    """True when the filesystem of the open file descriptor ``fd`` answers the
    alignment ioctl with 1; False for every other filesystem, and for a
    descriptor the ioctl cannot be asked about (closed, a pipe, ...)."""
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int file descriptor, not {type(fd).__name__}")
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, _FS_IOC_CHECK_FS_ALIGN, buf)
    except (OSError, OverflowError):
        return False
    return struct.unpack("i", buf)[0] == 1
