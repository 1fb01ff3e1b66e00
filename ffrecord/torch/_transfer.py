"""Moves packed batches from DataLoader workers to the training process
through a shared-memory ring, one small message per batch.

Why: torch sends each tensor from a worker through a fresh shared-memory
segment whose file descriptor is passed over a socket; for batches of about
a megabyte that per-batch cost, not the copying, limits a loader. Here each
worker process owns one ring: ``SLOTS`` fixed-size slots plus a flag byte per
slot, in one shared segment that is sent to the training process once. Per
batch the worker copies the bytes into a free slot and sends only
``(ring, slot, size)``; the training process wraps the slot in a tensor
without copying, and a finaliser on that tensor's memory clears the flag when
the last view of the batch is gone, so a slot is never reused while the
training loop can still see it.

Lifetime rules:
* a slot is taken by the worker (flag 1) only while pickling a batch for the
  worker's result queue, and given back (flag 0) only by the training process;
* when no slot is free or a batch does not fit, the batch travels the plain
  torch way (correct, just slower) — nothing ever waits on the ring;
* a larger batch makes the worker start a bigger ring; the training process
  forgets a ring when its worker is gone or replaced it, while the tensors
  still using it keep its memory alive.
"""

import os
import secrets
import threading
import weakref

import torch
from torch.utils.data import get_worker_info

SLOTS = 8
MAX_RING_BYTES = 256 << 20
_HEADER = 64  # flag bytes, one per slot
_ALIGN = 64 << 10

_worker_ring = None  # the ring of this worker process (worker side)
_worker_lock = threading.Lock()
_attached = {}  # ring id -> (numpy view of the ring, owner pid)   (training side)
_attached_lock = threading.Lock()


class _Ring:
    def __init__(self, slot_bytes):
        self.slot_bytes = slot_bytes
        self.slots = max(2, min(SLOTS, MAX_RING_BYTES // slot_bytes))
        self.tensor = torch.empty(_HEADER + self.slots * slot_bytes, dtype=torch.uint8).share_memory_()
        self.array = self.tensor.numpy()
        self.id = (os.getpid(), secrets.token_hex(8))
        self.sent = False
        self.retires = None
        self.next = 0

    def take(self):
        """A free slot, flagged as taken, or None."""
        flags = self.array
        for step in range(self.slots):
            k = (self.next + step) % self.slots
            if flags[k] == 0:
                flags[k] = 1
                self.next = (k + 1) % self.slots
                return k
        return None


def _slot_size(nbytes):
    want = max(nbytes + nbytes // 4, 256 << 10)
    return -(-want // _ALIGN) * _ALIGN


def export(data):
    """Worker side: copies ``data`` (a CPU uint8 tensor) into this worker's
    ring and returns a handle for ``import_``, or None to send it plainly."""
    global _worker_ring
    if get_worker_info() is None or data.device.type != "cpu" or not data.is_contiguous():
        return None
    nbytes = data.numel()
    if nbytes == 0 or nbytes > MAX_RING_BYTES // 2:
        return None
    with _worker_lock:
        ring = _worker_ring
        if ring is None or nbytes > ring.slot_bytes:
            fresh = _Ring(_slot_size(nbytes))
            fresh.retires = ring.id if ring is not None else None
            ring = _worker_ring = fresh
        slot = ring.take()
        if slot is None:
            return None
        start = _HEADER + slot * ring.slot_bytes
        ring.array[start:start + nbytes] = data.numpy()
        payload = None
        if not ring.sent:  # the segment itself travels once, with the first batch
            payload = (ring.tensor, ring.retires, ring.slots, ring.slot_bytes)
            ring.sent = True
    return (ring.id, payload, slot, nbytes)


def _release(flags, slot):
    flags[slot] = 0


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def import_(handle):
    """Training side: the batch bytes as a uint8 tensor over the ring slot;
    the slot is given back when the tensor's memory is released."""
    ring_id, payload, slot, nbytes = handle
    with _attached_lock:
        if payload is not None:
            tensor, retires, slots, slot_bytes = payload
            _attached.pop(retires, None)
            for key in [k for k in _attached if k[0] != ring_id[0] and not _alive(k[0])]:
                del _attached[key]  # rings of workers that have exited
            _attached[ring_id] = (tensor.numpy(), slots, slot_bytes)
        entry = _attached.get(ring_id)
    if entry is None:
        raise RuntimeError(
            "a packed batch refers to a shared-memory ring this process never received "
            "(PackedBatch objects from DataLoader workers can only be unpickled by that DataLoader)"
        )
    array, slots, slot_bytes = entry
    if not 0 <= slot < slots or not 0 < nbytes <= slot_bytes:
        raise RuntimeError(f"bad packed-batch handle: slot {slot}, {nbytes} bytes")
    start = _HEADER + slot * slot_bytes
    view = array[start:start + nbytes]
    weakref.finalize(view, _release, array, slot)
    return torch.from_numpy(view)


def _reset_after_fork():
    # A forked worker starts with no ring of its own, no attached rings, and
    # fresh locks (another thread may have held one at the fork).
    global _worker_ring, _worker_lock, _attached_lock
    _worker_ring = None
    _worker_lock = threading.Lock()
    _attached_lock = threading.Lock()
    _attached.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
