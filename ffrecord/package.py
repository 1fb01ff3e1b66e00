"""The original FFRecord package's ``ffrecord.package`` module: ``pack_folder``,
``PackedFolder`` (see ``ffrecord.packed_folder``) and ``MAGIC_BYTES``, what
the last record of a folder packed by the original starts with."""

from .packed_folder import V1_MAGIC as MAGIC_BYTES
from .packed_folder import PackedFolder, pack_folder

__all__ = ["MAGIC_BYTES", "PackedFolder", "pack_folder"]
