"""Checkpoints: save/load, async save, training state, torch.distributed.checkpoint backends.

A checkpoint is a directory (layout and commit protocol in docs/CHECKPOINT.md):
tensors as records of ``.ffr`` files, each part with its own CRC32C, and a JSON
manifest describing the object tree. It is committed atomically: ``path``
names the previous checkpoint until the new one is complete and durable.
Nothing in a checkpoint is executed on load unless the caller passes
``trusted=True``.

- ``save(obj, path)`` / ``load(path, map_location=None, trusted=False, keys=None, direct=False)``
- ``Checkpoint(path)``: lazy, partial access (``ck.keys()``, ``ck[key]``)
- ``async_save(obj, path, max_staging_bytes=None, staging="blocking")`` -> ``SaveFuture``
  (``wait_staged()`` before changing the tensors when ``staging="background"``)
- ``training_state(...)`` / ``restore_training_state(...)``, RNG helpers,
  ``dataset_fingerprint``
- ``StorageWriter`` / ``StorageReader`` for ``torch.distributed.checkpoint``
"""

from .async_saving import SaveFuture, async_save, release_staging_memory, staging_bytes
from .encoding import UnsafeCheckpointError
from .loading import Checkpoint, load
from .saving import save
from .training import (
    DatasetMismatchWarning,
    capture_rng_state,
    dataset_fingerprint,
    restore_rng_state,
    restore_training_state,
    training_state,
)

__all__ = [
    "save",
    "load",
    "Checkpoint",
    "async_save",
    "SaveFuture",
    "release_staging_memory",
    "staging_bytes",
    "UnsafeCheckpointError",
    "DatasetMismatchWarning",
    "capture_rng_state",
    "restore_rng_state",
    "dataset_fingerprint",
    "training_state",
    "restore_training_state",
    "StorageWriter",
    "StorageReader",
]


def __getattr__(name):
    # The DCP backends import torch.distributed.checkpoint, which is slow to
    # import and absent from some torch builds: load them on first use.
    if name in ("StorageWriter", "StorageReader"):
        from . import dcp

        return getattr(dcp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
