"""Pack a folder into one record file and read files back by relative path.

``pack_folder`` writes v2: one record per file, the relative POSIX path as the
record key, and ``{"ffrecord.packed_folder": 1}`` in the metadata. Folders
packed by the original FFRecord (v1: a last record holding a magic and a
pickled OrderedDict tree) are read too, with an unpickler that accepts only
dicts, strings and integers, so a crafted file cannot run code.
"""

import io
import os
import pickle
from collections import OrderedDict
from pathlib import PurePosixPath

from tqdm import tqdm

from .errors import FormatError
from .reader import FileReader
from .writer import FileWriter

__all__ = ["pack_folder", "PackedFolder"]

_V1_MAGIC = b"piouhjgbr"
_META_KEY = "ffrecord.packed_folder"


class _TreeUnpickler(pickle.Unpickler):
    """Loads the v1 folder tree: OrderedDict of str -> int or OrderedDict, nothing else."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"packed folder tree may not reference {module}.{name}")


def _walk_files(folder):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            yield full, PurePosixPath(os.path.relpath(full, folder)).as_posix()


def pack_folder(folder, out_file, verbose=False):
    """Packs every file under ``folder`` into ``out_file`` (sorted, recursive)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: not a directory")
    files = list(_walk_files(folder))
    with FileWriter(out_file, len(files), metadata={_META_KEY: 1}) as w:
        for full, rel in tqdm(files, desc=f"pack {folder}", unit="file", disable=not verbose):
            with open(full, "rb") as f:
                w.write_one(f.read(), key=rel)
    return len(files)


def _insert(tree, parts, index):
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, OrderedDict())
    node[parts[-1]] = index


class PackedFolder:
    """Random access to the files of a packed folder by relative path."""

    def __init__(self, ffr_file, check_data=True):
        self.reader = FileReader(ffr_file, check_data)
        meta = self.reader.metadata if self.reader.file_info(0)["version"] == 2 else {}
        if meta.get(_META_KEY):
            self.structure = OrderedDict()
            for i in range(self.reader.n):
                _insert(self.structure, PurePosixPath(self.reader.key(i)).parts, i)
            self._count = self.reader.n
        else:
            self.structure = self._load_v1_tree(ffr_file)
            self._count = self.reader.n - 1

    def _load_v1_tree(self, ffr_file):
        if self.reader.n == 0:
            raise FormatError(f"{ffr_file}: not a packed folder (no records)")
        meta = self.reader.read_one(self.reader.n - 1).tobytes()
        if not meta.startswith(_V1_MAGIC):
            raise FormatError(f"{ffr_file}: not a packed folder")
        try:
            tree = _TreeUnpickler(io.BytesIO(meta[len(_V1_MAGIC):])).load()
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
        """Names under ``path`` (the root when None); with ``recursive``,
        nested names are relative paths."""
        node = self.structure if path is None else self._node(path)
        if node is None:
            raise FileNotFoundError(f"{path}: not in the packed folder")
        if not isinstance(node, dict):
            raise NotADirectoryError(f"{path}: is a file in the packed folder")
        return self._list(node, list_file, list_dir, recursive, PurePosixPath())

    def _list(self, node, list_file, list_dir, recursive, prefix):
        out = []
        for name, child in node.items():
            is_file = isinstance(child, int)
            if (is_file and list_file) or (not is_file and list_dir):
                out.append(str(prefix / name))
            if recursive and not is_file:
                out += self._list(child, list_file, list_dir, recursive, prefix / name)
        return out

    def close(self):
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
