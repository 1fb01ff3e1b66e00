"""``--from tar`` / ``--from webdataset``: tar shards -> one record per sample.

SRC is a tar file (plain or compressed: .tar.gz, .tgz, .tar.bz2, .tar.xz), a
directory of them (taken in sorted order), or a glob pattern. As in the
webdataset convention, consecutive regular files whose paths agree up to the
first dot of the file name form one sample: ``train/0001.jpg`` and
``train/0001.cls`` are sample ``train/0001`` with parts ``jpg`` and ``cls``.
Each sample becomes one record in the ``parts`` layout
(``ffrecord.tools.records``) keyed by the sample's path; directories, links
and other non-regular members are skipped.
"""

import glob
import os
import tarfile

import numpy as np

from ..errors import ToolError, UsageError
from ..records import LAYOUT_KEY, PARTS, encode_parts
from .base import Inventory, Source

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def split_name(member_name):
    """'dir/0001.seg.png' -> ('dir/0001', 'seg.png')."""
    name = member_name[2:] if member_name.startswith("./") else member_name
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext if dot else ""


class TarSource(Source):
    kind = "tar"

    def __init__(self, path):
        super().__init__(path)
        pattern = os.fspath(path)
        if os.path.isdir(self.path):
            names = sorted(n for n in os.listdir(self.path) if n.endswith(TAR_SUFFIXES) and not n.startswith("."))
            self.tar_paths = [os.path.join(self.path, n) for n in names]
            if not self.tar_paths:
                raise UsageError(f"{pattern}: directory holds no tar files ({', '.join(TAR_SUFFIXES)})")
        elif os.path.exists(self.path):
            self.tar_paths = [self.path]
        elif glob.has_magic(pattern):
            self.tar_paths = sorted(os.path.abspath(p) for p in glob.glob(pattern))
            if not self.tar_paths:
                raise UsageError(f"{pattern}: no file matches")
        else:
            raise UsageError(f"{pattern}: no such file or directory")
        self._samples = None

    def scan(self, need_sizes):
        samples = []  # (key, [(ext, tar index, data offset, size), ...])
        for t, path in enumerate(self.tar_paths):
            try:
                with tarfile.open(path, "r:*") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        key, ext = split_name(m.name)
                        part = (ext, t, m.offset_data, m.size)
                        last = samples[-1] if samples else None
                        if last is not None and last[0] == key and last[1][-1][1] == t \
                                and all(p[0] != ext for p in last[1]):
                            last[1].append(part)
                        else:
                            samples.append((key, [part]))
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ToolError(f"{path}: not a readable tar file ({_first_line(e)})") from None
        self._samples = samples
        sizes = None
        if need_sizes:
            sizes = np.fromiter(
                (4 + sum(10 + len(p[0].encode()) + p[3] for p in parts) for _, parts in samples),
                dtype=np.int64, count=len(samples),
            )
        return Inventory(
            count=len(samples), sizes=sizes, has_keys=True,
            metadata={LAYOUT_KEY: PARTS},
            details={"tar_files": len(self.tar_paths)},
        )

    def locate(self, start, end):
        return self._samples[start:end]

    def read(self, locator):
        open_tars = {}
        try:
            for key, parts in locator:
                out = []
                for ext, t, offset, size in parts:
                    tf = open_tars.get(t)
                    if tf is None:
                        tf = open_tars[t] = _open_tar(self.tar_paths[t])
                    tf.fileobj.seek(offset)
                    data = tf.fileobj.read(size)
                    if len(data) != size:
                        raise ToolError(f"{self.tar_paths[t]}: truncated in sample {key!r}")
                    out.append((ext, data))
                yield encode_parts(out), key
        finally:
            for tf in open_tars.values():
                tf.close()


def _open_tar(path):
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ToolError(f"{path}: not a readable tar file ({_first_line(e)})") from None


def _first_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(exc).__name__
