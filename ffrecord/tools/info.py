"""``ffrecord info``: what a record file or dataset holds.

``describe(path)`` returns a plain dict (also printed as JSON by ``--json``):
format versions, files, records, bytes, keys, codec and compression ratio,
metadata, the distribution of record sizes, and for a converted dataset its
manifest summary and quarantine. Record sizes come from the index (no record
is read for them); the codec and ratio are measured by decoding a sample of at
most ``SAMPLE`` records spread over the dataset, unless the converter recorded
the exact source bytes in ``index.json``.
"""

import json
import os
import tempfile
import warnings

import numpy as np

from .. import FFRecordError, FileReader, FileWriter
from ..dataset_paths import resolve
from .errors import UsageError
from .sizes import format_size
from .sources.ffr import CONVERT_KEY

SAMPLE = 1000
SIZE_SAMPLE = 1_000_000  # records whose lengths make the size distribution


def describe(path, engine=False):
    """A dict describing ``path`` (a ``.ffr`` file or a dataset directory)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Sizes and codec need no checksums; `ffrecord validate` checks those.
        r = FileReader(path, check_data=False)
    with r:
        ds = resolve(path)
        infos = [r.file_info(f) for f in range(len(r.paths))]
        out = {
            "path": path,
            "versions": sorted({i["version"] for i in infos}),
            "files": len(infos),
            "records": len(r),
            "bytes": sum(i["file_size"] for i in infos),
            "keys": any(i["has_keys"] for i in infos),
            "alignment": sorted({i["alignment"] for i in infos}),
            "metadata": _user_metadata(infos[0]["metadata"]) if infos else {},
        }
        out.update(_sizes(r))
        out.update(_codec(r, infos, ds.manifest))
        if ds.manifest is not None:
            m = ds.manifest
            out["manifest"] = {k: m.get(k) for k in ("tool", "source", "options", "records", "bytes") if k in m}
        if ds.quarantine:
            out["quarantined"] = len(ds.quarantine)
        if caught:
            out["warnings"] = [str(w.message) for w in caught]
        if engine:
            out.update(_engine(r))
    return out


def probe_engine():
    """The I/O engine a reader gets here, and why io_uring was not used (if not)."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "probe.ffr")
        with FileWriter(p) as w:
            w.write_one(b"probe")
        with FileReader(p) as r:
            return _engine(r)


def _engine(r):
    """The filesystem, the engine a reader of it uses, and why."""
    return {"filesystem": r.filesystem, "engine": r.engine, "engine_reason": r.engine_reason,
            "engine_fallback_reason": r.engine_fallback_reason,
            "mapping_available": r.mapping_available}


def format_text(d):
    """Human-readable lines for ``describe``'s dict."""
    lines = []
    if "path" in d:
        versions = ", ".join(f"v{v}" for v in d["versions"]) or "-"
        lines += [
            f"path:         {d['path']}",
            f"format:       {versions}, {d['files']} file(s)",
            f"records:      {d['records']}",
            f"bytes:        {d['bytes']} ({format_size(d['bytes'])})",
            f"keys:         {'yes' if d['keys'] else 'no'}",
        ]
        if d["alignment"] != [1]:
            lines.append(f"alignment:    {', '.join(map(str, d['alignment']))}")
        codec = d["codec"]
        if d.get("dictionary_bytes"):
            codec += f" (dictionary {d['dictionary_bytes']} bytes)"
        lines.append(f"codec:        {codec}")
        if d.get("compression_ratio") is not None and d["codec"] != "none":
            how = "" if d.get("ratio_exact") else f" (from a sample of {d['ratio_sample']} records)"
            lines.append(f"compression:  {d['compression_ratio']:.2f}x{how}")
        s = d.get("record_sizes")
        if s:
            sampled = "" if s["exact"] else f", sampled {s['count']}"
            lines.append(
                f"record sizes: min {s['min']}  p50 {s['p50']}  p90 {s['p90']}  p99 {s['p99']}  "
                f"max {s['max']}  mean {s['mean']:.1f} (stored bytes{sampled})"
            )
        if d.get("manifest"):
            m = d["manifest"]
            src = m.get("source") or {}
            lines.append(f"manifest:     {m.get('tool', '?')}; source {src.get('kind', '?')} {src.get('path', '')}")
            lines.append(f"options:      {m.get('options')}")
        if d.get("quarantined"):
            lines.append(f"quarantined:  {d['quarantined']} record(s) skipped by readers (its quarantine reports)")
        meta = d.get("metadata")
        if meta:
            text = json.dumps(meta, sort_keys=True)
            lines.append(f"metadata:     {text if len(text) <= 2000 else text[:2000] + '...'}")
    if "engine" in d:
        lines.append(f"filesystem:   {d['filesystem']}")
        lines.append(f"engine:       {d['engine']}")
        lines.append(f"why:          {d['engine_reason']}")
    return "\n".join(lines)


def _user_metadata(meta):
    """The file's metadata without the converter's own bookkeeping entry."""
    if not isinstance(meta, dict):
        return meta
    return {k: v for k, v in meta.items() if k != CONVERT_KEY}


def _sizes(r):
    n = len(r)
    if n == 0:
        return {"record_sizes": None}
    idx = np.arange(n) if n <= SIZE_SAMPLE else np.linspace(0, n - 1, SIZE_SAMPLE).astype(np.int64)
    lengths = r.lengths(idx).astype(np.int64)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99], method="nearest")
    return {"record_sizes": {
        "exact": n <= SIZE_SAMPLE, "count": int(idx.size), "min": int(lengths.min()), "max": int(lengths.max()),
        "mean": float(lengths.mean()), "p50": int(p50), "p90": int(p90), "p99": int(p99),
        "total": int(lengths.sum()) if n <= SIZE_SAMPLE else None,
    }}


def _codec(r, infos, manifest_doc):
    dictionary = sum(i["dictionary_size"] for i in infos)
    n = len(r)
    out = {"codec": "none", "dictionary_bytes": dictionary, "compression_ratio": None,
           "ratio_exact": False, "ratio_sample": 0}
    if n == 0:
        return out
    idx = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64))
    stored = r.lengths(idx).astype(np.int64)
    try:
        decoded = np.array([a.size for a in r.read(idx)], dtype=np.int64)
    except FFRecordError:  # a damaged record in the sample: measure the others
        keep, sizes = [], []
        for k, i in enumerate(idx):
            try:
                sizes.append(r.read_one(int(i)).size)
                keep.append(k)
            except FFRecordError:
                pass
        stored, decoded = stored[keep], np.array(sizes, dtype=np.int64)
        idx = idx[keep]
    compressed = bool((stored != decoded).any()) or dictionary > 0
    if compressed:
        out["codec"] = "zstd with dictionary" if dictionary else "zstd"
    out["ratio_sample"] = int(idx.size)
    if stored.sum() > 0:
        out["compression_ratio"] = float(decoded.sum() / stored.sum())
    opts = (manifest_doc or {}).get("options") or {}
    raw = (manifest_doc or {}).get("raw_bytes")
    if opts.get("compression") and raw:
        out["codec"] = opts["compression"] + (" with dictionary" if dictionary else "")
        data_bytes = int(r.lengths(np.arange(n)).sum()) if n <= SIZE_SAMPLE else None
        if data_bytes:
            out["compression_ratio"] = raw / data_bytes
            out["ratio_exact"] = True
    return out
