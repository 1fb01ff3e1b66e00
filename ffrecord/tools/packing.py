"""``ffrecord pack`` / ``unpack`` / ``cat``: whole folders and single records.

``pack`` is ``ffrecord.pack_folder``. ``unpack`` writes every file of a packed
folder (v2, or v1 from the original FFRecord) back under a directory; it
refuses names that would escape it (absolute paths, ``..``) and does not
overwrite existing files unless asked. ``cat`` fetches one record by index or
by key.
"""

import os
import posixpath

from .. import FileReader, PackedFolder, pack_folder
from .errors import ToolError, UsageError
from .records import LABELED, LAYOUT_KEY, PARTS, select_part


def pack(folder, out_file, verbose=False):
    """Packs ``folder`` into ``out_file``; returns the number of files."""
    folder, out_file = os.fspath(folder), os.fspath(out_file)
    if not os.path.exists(folder):
        raise UsageError(f"{folder}: no such file or directory")
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a directory")
    if os.path.isdir(out_file):
        raise UsageError(f"{out_file}: is a directory; give the name of the .ffr file to write")
    out_dir = os.path.dirname(os.path.abspath(out_file))
    if not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir}: no such directory")
    return pack_folder(folder, out_file, verbose=verbose)


def unpack(ffr_file, out_dir, overwrite=False, on_file=None):
    """Writes the files packed in ``ffr_file`` under ``out_dir``, and its
    folders, empty ones included; returns the number of files."""
    ffr_file, out_dir = os.fspath(ffr_file), os.fspath(out_dir)
    if not os.path.exists(ffr_file):
        raise UsageError(f"{ffr_file}: no such file or directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir}: exists and is not a directory")
    with PackedFolder(ffr_file) as packed:
        names = [os.fspath(name) for name in packed.list(list_dir=False, recursive=True)]
        # Every folder, so that empty ones come back too (files make their own parents).
        folders = [os.fspath(name) for name in packed.list(list_file=False, recursive=True)]
        for name in names + folders:
            _check_safe(name, ffr_file)
        for name in folders:
            target = os.path.join(out_dir, *name.split("/"))
            if os.path.exists(target) and not os.path.isdir(target):
                raise ToolError(f"{target}: exists and is not a directory; the packed folder has a folder there")
        if not overwrite:
            for name in names:
                target = os.path.join(out_dir, *name.split("/"))
                if os.path.exists(target):
                    raise ToolError(f"{target}: exists; pass --overwrite to replace files")
        os.makedirs(out_dir, exist_ok=True)
        for name in folders:
            os.makedirs(os.path.join(out_dir, *name.split("/")), exist_ok=True)
        for name in names:
            target = os.path.join(out_dir, *name.split("/"))
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            data = packed.read_one(name)
            with open(target, "wb") as f:
                f.write(memoryview(data))
            if on_file is not None:
                on_file(name)
    return len(names)


def _check_safe(name, ffr_file):
    if not name or name.startswith("/") or "\\" in name or ".." in name.split("/") \
            or posixpath.normpath(name) != name:
        raise ToolError(f"{ffr_file}: refusing unsafe file name {name!r} (it would land outside the output directory)")


def cat(path, which, by_key=None, part=None):
    """The bytes of one record as a numpy uint8 array, or with ``part`` the
    bytes of that part of it, in the layout ``ffrecord convert`` recorded
    (``ffrecord.tools.records.select_part``).

    ``which`` is an index (an int, or a string of digits with an optional
    minus sign) unless ``by_key`` is True or it is not a number, in which case
    it is a record key. ``by_key=False`` forces an index."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    index = None
    if by_key is not True:
        try:
            index = int(which)
        except (TypeError, ValueError):
            if by_key is False:
                raise UsageError(f"not a record index: {which!r}") from None
    with FileReader(path) as r:
        if index is None:
            try:
                index = r.find(str(which))
            except KeyError:
                has_keys = any(r.file_info(f)["has_keys"] for f in range(len(r.paths)))
                if not has_keys:
                    raise ToolError(f"{path}: has no record keys; give a record index") from None
                raise ToolError(f"{path}: no record with key {which!r}") from None
        if not -len(r) <= index < len(r):
            raise ToolError(f"{path}: record index {index} out of range ({len(r)} records)")
        if part is None:
            return r.read_one(index)
        layout = r.metadata.get(LAYOUT_KEY) if isinstance(r.metadata, dict) else None
        if layout not in (LABELED, PARTS):
            raise UsageError(f"{path}: --part needs a layout with parts (labeled or parts, as written by "
                             "`ffrecord convert --from imagefolder|tar`); its records are whole")
        try:
            return select_part(r.read_one(index), layout, part)
        except KeyError as e:
            raise UsageError(f"{path}: record {index}: {e.args[0]}") from None
        except ValueError as e:
            raise ToolError(f"{path}: record {index}: {e}") from None
