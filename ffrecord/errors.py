"""Exceptions raised for bad data.

``FFRecordError`` is the base of every error about the content of record files;
``FormatError`` means the bytes are not a (complete, supported) record file and
``ChecksumError`` means stored bytes do not match their checksum. Misuse of the
API raises the usual built-ins instead: ``IndexError``, ``TypeError``,
``ValueError`` (e.g. a closed handle), and ``OSError`` (with ``errno``) when
the operating system refuses.
"""

__all__ = ["FFRecordError", "FormatError", "ChecksumError"]


class FFRecordError(Exception):
    """Base class of ffrecord's data errors; the message names the file and,
    where it applies, the record index."""


class FormatError(FFRecordError):
    """Not a record file, an unsupported version, a truncated file or a bad index."""


class ChecksumError(FFRecordError):
    """A record, index, header or footer checksum does not match the bytes."""
