"""Rows and checks shared by the engine tests (Ray Data, Spark): a table of the
column types users write, and what a written dataset holds."""

import numpy as np
import pyarrow as pa

import ffrecord
from ffrecord.cli import main


def rows_table(n, seed=0, nested=False):
    """Keys, bytes, integers and nullable text; ``nested`` adds a list, a map and a struct."""
    rng = np.random.default_rng(seed)
    columns = {
        "id": [f"row-{i:06d}" for i in range(n)],
        "image": [rng.bytes(int(rng.integers(0, 100))) for _ in range(n)],
        "label": pa.array(rng.integers(0, 10, n), pa.int64()),
        "caption": [None if i % 11 == 0 else f"caption {i}" for i in range(n)],
    }
    if nested:
        columns["tags"] = [[f"t{i % 3}", "x"] for i in range(n)]
        columns["attrs"] = pa.array([[("w", i), ("h", 2 * i)] for i in range(n)], pa.map_(pa.string(), pa.int64()))
        columns["size"] = [{"w": i, "h": i + 1} for i in range(n)]
    return pa.table(columns)


def contents(path):
    """(records, keys, metadata without the per-conversion part) of a dataset, which validates."""
    assert main(["validate", str(path), "-q"]) == 0
    with ffrecord.FileReader(path) as r:
        meta = dict(r.file_info(0)["metadata"])
        meta.pop("ffrecord.convert")
        return [b.tobytes() for b in r.read(range(r.n))], [r.key(i) for i in range(r.n)], meta
