"""Checkpoints: save/load, async save, and torch.distributed.checkpoint backends.

A checkpoint is a directory (layout in docs/CHECKPOINT.md) committed
atomically: tensors as records of ``.ffr`` files, each part with a CRC32C,
and a JSON manifest describing the object tree. Nothing in a checkpoint is
executed on load unless the caller says ``trusted=True``.
"""

from .encoding import UnsafeCheckpointError
from .loading import Checkpoint, load
from .saving import save

__all__ = ["save", "load", "Checkpoint", "UnsafeCheckpointError"]
