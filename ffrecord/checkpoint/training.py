"""One atomic training state: model, optimizer, loader, RNG states, dataset fingerprint.

``training_state(...)`` gathers everything a run needs to resume into one
plain dict, which ``save`` / ``async_save`` commit as one checkpoint (all of
it or nothing); ``restore_training_state(...)`` puts it back and restores the
RNG states; ``load(path, dataset=...)`` and ``restore_training_state`` warn
with DatasetMismatchWarning when the checkpoint was trained on a different
dataset than the one given.
"""

import hashlib
import json
import os
import random
import warnings

import numpy as np

from ..dataset_paths import resolve

__all__ = [
    "DatasetMismatchWarning",
    "capture_rng_state",
    "restore_rng_state",
    "dataset_fingerprint",
    "check_dataset_fingerprint",
    "training_state",
    "restore_training_state",
]

FINGERPRINT_KEY = "dataset_fingerprint"


class DatasetMismatchWarning(UserWarning):
    """The checkpoint was written while training on a different dataset."""


def _torch():
    import torch

    return torch


def capture_rng_state():
    """The states of Python's, numpy's and torch's global generators (and every
    CUDA device's, when CUDA is initialised), as plain values a checkpoint
    stores without pickling."""
    torch = _torch()
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Restores generators from ``capture_rng_state()``'s output (as loaded)."""
    torch = _torch()
    if not isinstance(state, dict):
        raise TypeError(f"expected the dict from capture_rng_state(), got {type(state).__name__}")
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def dataset_fingerprint(dataset):
    """A short string identifying a dataset's content and order.

    With a manifest (``index.json`` of a converted dataset directory), the hash
    of its shard list (names, counts, sizes, checksums as written there);
    otherwise the hash of each file's name, size and last 4 KiB (for a v2
    file: its footer, which holds the index and metadata checksums). A string
    is returned as it is (an already computed fingerprint).
    """
    if isinstance(dataset, str) and dataset.startswith("sha256:"):
        return dataset
    ds = resolve(dataset)
    h = hashlib.sha256()
    if ds.manifest is not None:
        h.update(b"manifest\0")
        h.update(json.dumps(ds.manifest.get("shards"), sort_keys=True, separators=(",", ":")).encode())
    else:
        h.update(b"files\0")
        for p in ds.paths:
            size = os.path.getsize(p)
            with open(p, "rb") as f:
                f.seek(max(0, size - 4096))
                tail = f.read()
            h.update(f"{os.path.basename(p)}\0{size}\0".encode())
            h.update(hashlib.sha256(tail).digest())
    return "sha256:" + h.hexdigest()[:32]


def check_dataset_fingerprint(saved, dataset, where="checkpoint"):
    """Warns (DatasetMismatchWarning) when ``saved`` differs from the fingerprint
    of ``dataset``; returns True when they match."""
    if saved is None:
        warnings.warn(
            f"{where}: holds no dataset fingerprint, so it cannot be checked against the dataset",
            DatasetMismatchWarning,
            stacklevel=3,
        )
        return False
    current = dataset_fingerprint(dataset)
    if saved != current:
        warnings.warn(
            f"{where}: was saved while training on a different dataset (fingerprint {saved}, "
            f"the dataset given has {current}); the resumed run will not see the same samples",
            DatasetMismatchWarning,
            stacklevel=3,
        )
        return False
    return True


def training_state(*, model=None, optimizer=None, loader=None, dataset=None, rng=True, **extra):
    """Everything needed to resume, as one dict for ``save`` / ``async_save``.

    ``model`` / ``optimizer`` / ``loader``: objects with ``state_dict()`` (the
    loader being e.g. ``ffrecord.torch.DataLoader``, whose state resumes
    mid-epoch); ``dataset``: its path(s) or fingerprint; ``rng``: capture the
    RNG states; ``extra``: further plain entries (step, epoch, config...).
    """
    state = {}
    for name, obj in (("model", model), ("optimizer", optimizer), ("loader", loader)):
        if obj is not None:
            state[name] = obj.state_dict()
    if rng:
        state["rng"] = capture_rng_state()
    if dataset is not None:
        state[FINGERPRINT_KEY] = dataset_fingerprint(dataset)
    for k in extra:
        if k in state or k == "rng":
            raise ValueError(f"extra entry {k!r} clashes with a training_state entry")
    state.update(extra)
    return state


def restore_training_state(state, *, model=None, optimizer=None, loader=None, dataset=None, rng=True):
    """Loads ``state`` (from ``load``) into the given objects, restores the RNG
    states (unless ``rng=False``) and checks the dataset fingerprint against
    ``dataset`` (a DatasetMismatchWarning when it differs). Returns ``state``."""
    for name, obj in (("model", model), ("optimizer", optimizer), ("loader", loader)):
        if obj is not None:
            if name not in state:
                raise KeyError(f"the training state holds no {name!r} entry")
            obj.load_state_dict(state[name])
    if dataset is not None:
        check_dataset_fingerprint(state.get(FINGERPRINT_KEY), dataset)
    if rng and "rng" in state:
        restore_rng_state(state["rng"])
    return state
