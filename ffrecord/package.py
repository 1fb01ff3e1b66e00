"""The original FFRecord package's ``ffrecord.package`` module: ``pack_folder``
and ``PackedFolder`` (see ``ffrecord.packed_folder``)."""

from .packed_folder import PackedFolder, pack_folder

__all__ = ["PackedFolder", "pack_folder"]
