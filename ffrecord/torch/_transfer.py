"""Moves packed batches from DataLoader workers to the training process
through a shared-memory ring, one small message per batch.

Why: torch sends each tensor from a worker through a fresh shared-memory
segment whose file descriptor is passed over a socket; for batches of about
a megabyte that per-batch cost, not the copying, limits a loader. Here each
worker process owns one ring: up to ``SLOTS`` fixed-size slots plus a flag
byte per slot, in one shared segment that is sent to the training process
once. Per batch only ``(ring, slot, offset, size)`` travels; the training
process wraps the slot in a tensor without copying, and a finaliser on that
tensor's memory clears the flag when the last view of the batch is gone, so
a slot is never reused while the training loop can still see it.

A batch gets into a slot in one of two ways:
* ``worker_buffer(n)`` hands the dataset a slot to read into directly (the
  records land in shared memory with no extra copy); if the batch built on it
  is never sent, the slot frees itself when its memory is dropped;
* otherwise ``export`` copies the batch into a free slot while it is pickled.

Rules: a slot is taken (flag 1) only by its worker and given back (flag 0)
by the training process once sent, or by the worker if never sent. When no
slot is free or a batch does not fit, the batch travels the plain torch way
(correct, just slower): nothing ever waits on the ring. A larger batch makes
the worker start a bigger ring; the worker names an old ring as retired (with
a later message) once none of its slots is held unsent, and the training
process then forgets it, as it forgets the rings of workers that are gone;
tensors still using a ring keep its memory. A worker must not keep a batch
after returning it: the slot is reused once the training loop lets go of it.
"""

import gc
import os
import secrets
import threading
import time
import weakref

import torch
from torch.utils.data import get_worker_info

from .._process import pid_alive

SLOTS = 8
MAX_RING_BYTES = 256 << 20
_HEADER = 64  # flag bytes, one per slot
_ALIGN = 64 << 10

_worker_ring = None  # the ring of this worker process (worker side)
_old_rings = []  # replaced rings of this worker, until the training process is told
_worker_lock = threading.RLock()  # re-entrant: a finaliser may run while it is held
_attached = {}  # ring id -> (numpy view of the ring, owner pid)   (training side)
_attached_lock = threading.Lock()


class _Ring:
    def __init__(self, slot_bytes):
        self.slot_bytes = slot_bytes
        self.slots = max(2, min(SLOTS, MAX_RING_BYTES // slot_bytes))
        self.tensor = _shared_bytes(_HEADER + self.slots * slot_bytes)
        self.array = self.tensor.numpy()
        self.array[:_HEADER] = 0  # every slot free (fresh shared memory is not zeroed)
        self.base = self.tensor.data_ptr()
        self.id = (os.getpid(), secrets.token_hex(8))
        self.sent = False
        self.held = set()  # slots handed out by worker_buffer and not sent yet

    def slot_of(self, ptr, nbytes):
        """(slot, offset) when [ptr, ptr + nbytes) lies inside one slot, else None."""
        rel = ptr - self.base - _HEADER
        if rel < 0:
            return None
        slot, offset = divmod(rel, self.slot_bytes)
        if slot >= self.slots or offset + nbytes > self.slot_bytes:
            return None
        return slot, offset

    def take(self):
        """The lowest free slot, flagged as taken, or None. Lowest first: the
        few slots in steady use stay warm (mapped, in cache) and the rest of
        the ring is never touched."""
        flags = self.array
        for k in range(self.slots):
            if flags[k] == 0:
                flags[k] = 1
                return k
        return None


def _shared_bytes(nbytes):
    """A uint8 tensor in fresh shared memory, its pages untouched until used
    (``share_memory_()`` would first fill and copy every page)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what default_collate uses
    if new_shared is None:
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(nbytes))


def _slot_size(nbytes):
    want = max(nbytes + nbytes // 4, 256 << 10)
    return -(-want // _ALIGN) * _ALIGN


def _ring_for(nbytes):
    """This worker's ring, replaced by a bigger one when ``nbytes`` does not fit."""
    global _worker_ring
    ring = _worker_ring
    if ring is None or nbytes > ring.slot_bytes:
        if ring is not None:
            _old_rings.append(ring)
        ring = _worker_ring = _Ring(_slot_size(nbytes))
    return ring


def in_worker():
    """Whether this is a DataLoader worker (the only place a ring is used)."""
    return get_worker_info() is not None


def _fits(nbytes):
    return in_worker() and 0 < nbytes <= MAX_RING_BYTES // 2


def worker_buffer(nbytes):
    """Worker side: a uint8 tensor of ``nbytes`` over a free ring slot, to
    read a batch into, or None (not in a worker, no free slot, too big)."""
    if not _fits(nbytes):
        return None
    with _worker_lock:
        ring = _ring_for(nbytes)
        slot = ring.take()
        if slot is None:
            return None
        ring.held.add(slot)
    start = _HEADER + slot * ring.slot_bytes
    view = ring.array[start:start + nbytes]
    weakref.finalize(view, _drop_unsent, ring, slot, os.getpid())
    return torch.from_numpy(view)


def keep_slot(ring, slot):
    """Worker side: undoes ``export_slot`` for a handle that was never sent."""
    with _worker_lock:
        ring.held.add(slot)


def _drop_unsent(ring, slot, pid):
    if os.getpid() != pid:  # a forked copy of the object: only its owner frees the slot
        return
    with _worker_lock:
        if slot in ring.held:  # never sent: the worker gives it back itself
            ring.held.discard(slot)
            ring.array[slot] = 0


def _payload(ring):
    """The segment itself travels once, with the first batch of a ring."""
    if ring.sent:
        return None
    ring.sent = True
    return (ring.tensor, ring.slots, ring.slot_bytes)


def _retired():
    """Ids of replaced rings with no slot held unsent any more: no later
    message can refer to them, so the training process may forget them."""
    done = [r for r in _old_rings if not r.held]
    for r in done:
        _old_rings.remove(r)
    return [r.id for r in done]


def _handle(ring, slot, offset, nbytes):
    return (ring.id, _payload(ring), slot, offset, nbytes, _retired())


def locate(ptr, nbytes):
    """Worker side: ``(ring, slot, offset, held)`` when ``[ptr, ptr + nbytes)``
    lies in a slot of this worker's rings (``held``: handed out by
    ``worker_buffer`` and not sent yet), else None."""
    with _worker_lock:
        for ring in (_worker_ring, *_old_rings):
            where = ring.slot_of(ptr, nbytes) if ring is not None else None
            if where is not None:
                return ring, where[0], where[1], where[0] in ring.held
    return None


def export_slot(ring, slot):
    """Worker side: a handle for ``import_`` to the whole held ``slot`` of
    ``ring``; from now on the training process frees it."""
    with _worker_lock:
        ring.held.discard(slot)
        return _handle(ring, slot, 0, ring.slot_bytes)


def export(data):
    """Worker side: a handle for ``import_`` that carries ``data`` (a CPU
    uint8 tensor) through this worker's ring, or None to send it plainly.
    Data already in a held slot goes as it is; anything else is copied into
    a free slot."""
    if data.device.type != "cpu" or not data.is_contiguous():
        return None
    nbytes = data.numel()
    if not _fits(nbytes):
        return None
    with _worker_lock:
        found = locate(data.data_ptr(), nbytes)
        if found is not None and found[3]:
            ring, slot, offset, _ = found
            ring.held.discard(slot)  # from now on the training process frees it
            return _handle(ring, slot, offset, nbytes)
        ring = _ring_for(nbytes)
        slot = ring.take()
        if slot is None:
            return None
        start = _HEADER + slot * ring.slot_bytes
        ring.array[start:start + nbytes] = data.numpy()
        return _handle(ring, slot, 0, nbytes)


def _release(flags, slot, pid):
    # Only the process that received the batch frees its slot: a process
    # forked from it may collect its own copy of the batch at any time.
    if os.getpid() == pid:
        flags[slot] = 0


def import_(handle):
    """Training side: the batch bytes as a uint8 tensor over the ring slot;
    the slot is given back when the tensor's memory is released."""
    ring_id, payload, slot, offset, nbytes, retired = handle
    with _attached_lock:
        if payload is not None:
            tensor, slots, slot_bytes = payload
            _forget_exited(keep=ring_id[0])
            _attached[ring_id] = (tensor.numpy(), slots, slot_bytes)
        entry = _attached.get(ring_id)
        for key in retired:  # after the lookup: the handle may name its own ring
            _attached.pop(key, None)
    if entry is None:
        raise ValueError(
            "a packed batch refers to a shared-memory ring this process never received "
            "(PackedBatch objects from DataLoader workers can only be unpickled by that DataLoader)"
        )
    array, slots, slot_bytes = entry
    if not 0 <= slot < slots or not (0 <= offset and 0 < nbytes and offset + nbytes <= slot_bytes):
        raise ValueError(f"bad packed-batch handle: slot {slot}, offset {offset}, {nbytes} bytes")
    start = _HEADER + slot * slot_bytes + offset
    view = array[start:start + nbytes]
    weakref.finalize(view, _release, array, slot, os.getpid())
    return torch.from_numpy(view)


def _forget_exited(keep=None):
    """Drops the rings of workers that have exited (call with the lock held);
    batches still using one keep its memory."""
    for key in [k for k in _attached if k[0] != keep and not pid_alive(k[0])]:
        del _attached[key]


_last_sweep = 0.0


def _sweep_after_gc(phase, info):
    # After a loader and its workers are gone no batch arrives to trigger the
    # clean-up in import_; the garbage collector runs often in any program,
    # so the training process lets go of their rings then (at most 10 times a second).
    global _last_sweep
    if phase != "stop" or not _attached:
        return
    now = time.monotonic()
    if now - _last_sweep < 0.1 or not _attached_lock.acquire(blocking=False):
        return
    try:
        _last_sweep = now
        _forget_exited()
    finally:
        _attached_lock.release()


gc.callbacks.append(_sweep_after_gc)


def _reset_after_fork():
    # A forked worker starts with no ring of its own, no attached rings, and
    # fresh locks (another thread may have held one at the fork).
    global _worker_ring, _worker_lock, _attached_lock
    _worker_ring = None
    _old_rings.clear()
    _worker_lock = threading.RLock()
    _attached_lock = threading.Lock()
    _attached.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
