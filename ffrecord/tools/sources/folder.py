"""``--from folder``: one record per file, its relative path as the key.

Files are taken depth first in sorted order; hidden files and directories
(names starting with '.') are skipped. Records are the files' bytes unchanged.
"""

import os

from .base import Inventory, Source, file_sizes, read_file, walk_sorted


class FolderSource(Source):
    kind = "folder"

    def __init__(self, path, exclude=None):
        super().__init__(path, exclude=exclude)
        self.require_dir()
        self._files = None

    def scan(self, need_sizes):
        self._files = walk_sorted(self.path, self.options.get("exclude"))
        sizes = file_sizes(self.path, self._files) if need_sizes else None
        return Inventory(count=len(self._files), sizes=sizes, has_keys=True,
                         details={"files": len(self._files)})

    def locate(self, start, end):
        return self._files[start:end]

    def read(self, locator):
        for rel in locator:
            yield read_file(os.path.join(self.path, rel)), rel
