"""``--from imagefolder``: ``SRC/<class>/.../<image>`` -> (image bytes, label).

Classes are the sorted names of SRC's subdirectories; label ``k`` is the
``k``-th class. Every file with an image extension under a class directory
(recursively, sorted) becomes one record in the ``labeled`` layout
(``ffrecord.tools.records``), keyed by its path relative to SRC. The class
names are stored in the metadata as ``"classes"``.
"""

import os

from ..errors import UsageError
from ..records import LABELED, LAYOUT_KEY, encode_labeled
from .base import Inventory, Source, file_sizes, read_file, walk_sorted

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, path, exclude=None):
        super().__init__(path, exclude=exclude)
        self.require_dir()
        self._items = None

    def scan(self, need_sizes):
        exclude = self.options.get("exclude")
        classes = sorted(
            d for d in os.listdir(self.path)
            if not d.startswith(".") and os.path.isdir(os.path.join(self.path, d))
            and os.path.join(self.path, d) != exclude
        )
        if not classes:
            raise UsageError(f"{self._args[0]}: no class subdirectories (--from imagefolder expects SRC/<class>/<image>)")
        items = []
        for label, name in enumerate(classes):
            for rel in walk_sorted(os.path.join(self.path, name), exclude):
                if rel.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((f"{name}/{rel}", label))
        self._items = items
        sizes = file_sizes(self.path, [rel for rel, _ in items]) + 8 if need_sizes else None
        return Inventory(
            count=len(items), sizes=sizes, has_keys=True,
            metadata={"classes": classes, LAYOUT_KEY: LABELED},
            details={"classes": len(classes)},
        )

    def locate(self, start, end):
        return self._items[start:end]

    def read(self, locator):
        for rel, label in locator:
            yield encode_labeled(read_file(os.path.join(self.path, rel)), label), rel
