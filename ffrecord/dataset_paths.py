"""Which files make up a dataset, in which order, and which records to skip.

A dataset is one ``.ffr`` file, a list of them, or a directory. In a directory,
``index.json`` (written by ``ffrecord convert``) lists the shards in order
under ``"shards": [{"path": <name relative to the directory>, ...}, ...]``;
without it, the directory's ``*.ffr`` files are read in sorted order.

A dataset directory may hold a quarantine (written by
``ffrecord validate --quarantine``): reports in ``quarantine.d/``, and in
datasets from older versions a single ``quarantine.json``. Their union names
records known to be bad (``{"file": <shard name>, "index": <record index in
that file>, "reason": ..., "error": ...}``) and files unusable as a whole
(``{"file": <shard name>, ...}``); readers of the directory skip both.
``ffrecord.quarantine`` documents the report schema, how the union is formed
(per file, the newest report that checked it) and when a report written on
another node becomes visible.
"""

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from . import quarantine as quarantine_reports
from .errors import FormatError

MANIFEST_NAME = "index.json"
QUARANTINE_NAME = quarantine_reports.LEGACY_NAME  # read for datasets of older versions
QUARANTINE_DIR = quarantine_reports.REPORTS_DIR


@dataclass
class Dataset:
    root: str
    paths: List[str]
    directory: Optional[str] = None
    manifest: Optional[dict] = None
    quarantine: list = field(default_factory=list)
    skipped_files: list = field(default_factory=list)

    def quarantined_records(self, file_starts):
        """Sorted global indices of quarantined records, or None when there are none."""
        if not self.quarantine:
            return None
        position = {os.path.basename(p): f for f, p in enumerate(self.paths)}
        out = set()
        for entry in self.quarantine:
            f = position.get(entry.get("file"))
            index = entry.get("index")
            if f is None or not isinstance(index, int):
                continue
            out.add(file_starts[f] + index)
        return sorted(out) or None


def _fspath(p, what):
    try:
        return os.fspath(p)
    except TypeError:
        raise TypeError(f"{what} must be a path (str or os.PathLike), not {type(p).__name__}") from None


def load_json(path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON: {e}") from None


def resolve(fnames):
    """Returns the Dataset for a path, a list of paths, or a directory."""
    if isinstance(fnames, (list, tuple)):
        paths = [_fspath(p, "each file name") for p in fnames]
        for p in paths:
            if os.path.isdir(p):
                raise IsADirectoryError(f"{p}: is a directory; pass directories on their own")
        root = paths[0] if len(paths) == 1 else f"[{len(paths)} files]"
        return Dataset(root=root, paths=paths)
    path = _fspath(fnames, "fnames")
    if not os.path.isdir(path):
        return Dataset(root=path, paths=[path])
    manifest = None
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if os.path.exists(manifest_path):
        manifest = load_json(manifest_path)
        shards = manifest.get("shards") if isinstance(manifest, dict) else None
        if not isinstance(shards, list) or not all(isinstance(s, dict) and "path" in s for s in shards):
            raise FormatError(f"{manifest_path}: no valid 'shards' list")
        paths = [os.path.join(path, s["path"]) for s in shards]
    else:
        paths = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".ffr") and not n.startswith("."))
        if not paths:
            raise FileNotFoundError(f"{path}: directory holds no .ffr files")
    found = quarantine_reports.load(path)
    bad_files = {e["file"] for e in found.files}
    skipped = [p for p in paths if os.path.basename(p) in bad_files]
    paths = [p for p in paths if os.path.basename(p) not in bad_files]
    return Dataset(root=path, paths=paths, directory=path, manifest=manifest, quarantine=found.records,
                   skipped_files=skipped)
