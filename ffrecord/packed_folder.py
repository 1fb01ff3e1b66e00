"""Pack a folder into one record file and read files back by relative path.

``pack_folder`` writes v2: one record per file, the relative POSIX path as the
record key, and ``{"ffrecord.packed_folder": 1}`` in the metadata (plus the
list of empty sub-folders, if any, under ``"ffrecord.packed_folder.empty_dirs"``),
in the order of the original package (see ``_walk``). Folders
packed by the original FFRecord (v1: a last record holding a magic and a
pickled OrderedDict tree) are read too, with an unpickler that accepts only
dicts, strings and integers, so a crafted file cannot run code.
"""

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .errors import FormatError
from .reader import FileReader
from .writer import FileWriter

__all__ = ["pack_folder", "PackedFolder"]

V1_MAGIC = b"piouhjgbr"  # starts the tree record of a folder packed by the original (v1)
_META_KEY = "ffrecord.packed_folder"
_EMPTY_DIRS_KEY = "ffrecord.packed_folder.empty_dirs"


class _TreeUnpickler(pickle.Unpickler):
    """Loads the v1 folder tree: OrderedDict of str -> int or OrderedDict, nothing else."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"packed folder tree may not reference {module}.{name}")


def _walk(folder):
    """Yields ``(full path, relative POSIX path, is_dir)`` for everything under
    ``folder``, depth first, each folder's entries sorted by name with files
    and sub-folders interleaved: the record order of the original package.
    Links to folders are followed, as there; a link back to a folder being
    walked is refused."""
    yield from _walk_below(folder, folder, {os.path.realpath(folder)})


def _walk_below(root, folder, ancestors):
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = PurePosixPath(os.path.relpath(entry.path, root)).as_posix()
        if entry.is_dir():
            real = os.path.realpath(entry.path)
            if real in ancestors:
                raise ValueError(f"{entry.path}: links back to a folder that contains it")
            yield entry.path, rel, True
            yield from _walk_below(root, entry.path, ancestors | {real})
        else:
            yield entry.path, rel, False


def pack_folder(folder, out_file, verbose=False):
    """Packs every file under ``folder`` into ``out_file`` (recursive; the
    records are in the original package's order, see ``_walk``); returns the
    number of files. Empty sub-folders are kept in the metadata."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: not a directory")
    entries = list(_walk(folder))
    files = [(full, rel) for full, rel, is_dir in entries if not is_dir]
    non_empty = {str(parent) for _, rel in files for parent in PurePosixPath(rel).parents}
    empty_dirs = [rel for _, rel, is_dir in entries if is_dir and rel not in non_empty]
    metadata = {_META_KEY: 1}
    if empty_dirs:
        metadata[_EMPTY_DIRS_KEY] = empty_dirs
    with FileWriter(out_file, len(files), metadata=metadata) as w:
        for full, rel in tqdm(files, desc=f"pack {folder}", unit="file", disable=not verbose):
            with open(full, "rb") as f:
                w.write_one(f.read(), key=rel)
    return len(files)


def _insert(tree, parts, entry, path):
    """Puts ``entry`` (a record index, or an empty folder) at ``parts``."""
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, OrderedDict())
        if not isinstance(node, dict):
            raise FormatError(f"{path}: packed folder names {'/'.join(parts)} below a file")
    if not parts or isinstance(node.get(parts[-1]), int):
        raise FormatError(f"{path}: packed folder has a bad or repeated name {'/'.join(parts)!r}")
    node.setdefault(parts[-1], entry)


def _sorted_tree(tree):
    """Each folder's entries sorted by name, as the original package lists them."""
    return OrderedDict(
        (name, child if isinstance(child, int) else _sorted_tree(child)) for name, child in sorted(tree.items())
    )


class PackedFolder:
    """Random access to the files of a packed folder by relative path."""

    def __init__(self, ffr_file, check_data=True):
        self.reader = FileReader(ffr_file, check_data)
        meta = self.reader.metadata if self.reader.file_info(0)["version"] == 2 else {}
        if meta.get(_META_KEY):
            tree = OrderedDict()
            for i in range(self.reader.n):
                _insert(tree, PurePosixPath(self.reader.key(i)).parts, i, ffr_file)
            empty_dirs = meta.get(_EMPTY_DIRS_KEY, [])
            if not isinstance(empty_dirs, list) or not all(isinstance(d, str) for d in empty_dirs):
                raise FormatError(f"{ffr_file}: packed folder metadata lists empty folders wrongly")
            for rel in empty_dirs:
                _insert(tree, PurePosixPath(rel).parts, OrderedDict(), ffr_file)
            self.structure = _sorted_tree(tree)
            self._count = self.reader.n
        else:
            self.structure = self._load_v1_tree(ffr_file)
            self._count = self.reader.n - 1

    def _load_v1_tree(self, ffr_file):
        if self.reader.n == 0:
            raise FormatError(f"{ffr_file}: not a packed folder (no records)")
        meta = self.reader.read_one(self.reader.n - 1).tobytes()
        if not meta.startswith(V1_MAGIC):
            raise FormatError(f"{ffr_file}: not a packed folder")
        try:
            tree = _TreeUnpickler(io.BytesIO(meta[len(V1_MAGIC):])).load()
        except Exception as e:
            raise FormatError(f"{ffr_file}: unreadable packed-folder tree: {e}") from None
        if not isinstance(tree, dict):
            raise FormatError(f"{ffr_file}: packed-folder tree is not a mapping")
        return tree

    def num_files(self):
        return self._count

    def _node(self, path):
        node = self.structure
        for part in PurePosixPath(os.fspath(path)).parts:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def _fname_to_index(self, fname):
        node = self._node(fname)
        if node is None:
            raise FileNotFoundError(f"{fname}: not in the packed folder")
        if not isinstance(node, int):
            raise IsADirectoryError(f"{fname}: is a directory in the packed folder")
        return node

    def read_one(self, fname):
        """The bytes of file ``fname`` as a numpy uint8 array."""
        return self.reader.read_one(self._fname_to_index(fname))

    def read(self, fnames):
        """The files ``fnames`` (a list or tuple), read as one batch."""
        if not isinstance(fnames, (list, tuple)):
            raise TypeError("fnames must be a list or tuple of paths")
        return self.reader.read([self._fname_to_index(p) for p in fnames])

    def exists(self, path):
        return self._node(path) is not None

    def is_file(self, path):
        return isinstance(self._node(path), int)

    def is_dir(self, path):
        return isinstance(self._node(path), dict)

    def list(self, path=None, list_file=True, list_dir=True, recursive=False):
        """The entries of folder ``path`` (the root when None), sorted by name,
        as the original package returns them: names (``str``) of the folder's
        own entries, and with ``recursive`` each sub-folder's entries right
        after it as ``pathlib.Path`` objects relative to ``path``."""
        node = self.structure if path is None else self._node(path)
        if node is None:
            raise FileNotFoundError(f"{path}: not in the packed folder")
        if not isinstance(node, dict):
            raise NotADirectoryError(f"{path}: is a file in the packed folder")
        return self._list(node, list_file, list_dir, recursive)

    def _list(self, node, list_file, list_dir, recursive):
        out = []
        for name, child in node.items():
            is_file = isinstance(child, int)
            if (is_file and list_file) or (not is_file and list_dir):
                out.append(name)
            if recursive and not is_file:
                out += [Path(name) / p for p in self._list(child, list_file, list_dir, recursive)]
        return out

    def close(self):
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
