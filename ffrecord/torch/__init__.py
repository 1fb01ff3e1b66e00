"""PyTorch integration: datasets, a resumable DataLoader, a distributed sampler
with elastic resume, and packed batches.

* ``RecordDataset(path, decode=None, transform=None, check_data=True, packed=False)``
  — the drop-in map-style dataset (one batch read per batch).
* ``Dataset`` / ``Subset`` / ``ConcatDataset`` / ``DataLoader`` /
  ``ReaderRegistry`` — the interface of the original FFRecord package
  (``process(indices, data)``, ``set_step``, ``ffreaders()``), plus
  ``DataLoader.state_dict()`` / ``load_state_dict()``.
* ``DistributedSampler`` — each rank's share of a full global shuffle per
  ``(seed, epoch)``, resumable on another number of ranks.
* ``PackedBatch`` / ``packed_collate`` — a batch as one uint8 tensor plus offsets.
* ``RecordViews`` — a batch of raw records read in a worker: a list of views of one buffer.
* ``decoders`` — record decoders (raw, bytes, npy, json, pil, pickle).

See ``docs/TORCH.md``.
"""

from . import decoders
from .dataloader import DataLoader
from .dataset import ConcatDataset, Dataset, ReaderRegistry, RecordDataset, Subset
from .packed import PackedBatch, RecordViews, packed_collate
from .sampler import DistributedSampler

__all__ = [
    "ConcatDataset",
    "DataLoader",
    "Dataset",
    "DistributedSampler",
    "PackedBatch",
    "ReaderRegistry",
    "RecordViews",
    "RecordDataset",
    "Subset",
    "decoders",
    "packed_collate",
]
