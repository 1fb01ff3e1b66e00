"""async_save(): copy a state to host memory, write it in the background.

The tree is encoded in the caller's thread; every tensor is then copied into
a staging buffer in host memory (pinned when CUDA is available, so
device-to-host copies run at full speed; host memory is copied by the C++
core without the GIL, large records split across the usable CPUs); a
background thread writes the staged bytes with the same writer and commit
protocol as ``save``.

Staging modes:

- ``"blocking"`` (the default): the copy runs in the caller's thread, so the
  caller may change or free its tensors as soon as ``async_save`` returns.
- ``"background"``: the copy runs in a background thread too, and
  ``async_save`` returns once the tree is encoded. The caller must call
  ``future.wait_staged()`` before it changes the bytes of any saved tensor or
  array (e.g. before the next ``optimizer.step()``).
- ``"fork"`` (host memory only): no copy at all. The process forks; the
  child, which sees the state exactly as it was at the fork, writes and
  commits the checkpoint and exits, while the kernel's copy-on-write gives
  the caller a private copy of each page it changes before the child is
  done. The caller may change its tensors at once. The child runs only the
  writer (no tensor operation, no thread it did not start), and reports its
  error, or its death, to the future.

Bounded staging: the staging buffer is a FIFO ring of at most
``max_staging_bytes``. When the state is larger, the stager copies records
into the ring as fast as the writer frees space, so it waits only as long as
needed and never allocates more. The buffer is kept for the next call (saves
of the same shapes reuse it); ``release_staging_memory()`` frees it.

At most one async save is in flight per process: a second call first waits
for the previous one to finish (the staging buffer is shared). A future is
resolved only once its staging has stopped, so the buffer is never written
by two saves.
"""

import collections
import concurrent.futures
import gc
import os
import pickle
import signal
import threading
import warnings

from .. import _core
from ..errors import FFRecordError
from .commit import DirectoryCommit, sync_point
from .encoding import format_path
from .gc_pause import gc_paused
from .layout import CHUNK_BYTES, PACK_BYTES, PIECE_ALIGN, record_bytes, write_manifest
from .saving import PayloadWriter, SavePlan, write_plan

__all__ = ["async_save", "SaveFuture", "release_staging_memory", "staging_bytes"]

MIN_STAGING_BYTES = 1 << 20
HELD_COPY_BATCH = 256 << 20  # bytes copied per call when the whole state is staged before writing

_lock = threading.Lock()
_arena = None  # the kept staging buffer (a uint8 tensor)
_inflight = None  # the future of the last async save


def _torch():
    import torch

    return torch


def _align(n):
    return -(-n // PIECE_ALIGN) * PIECE_ALIGN


class SaveFuture(concurrent.futures.Future):
    """The outcome of an ``async_save``.

    ``result()`` returns the checkpoint path once it is committed and
    durable, and raises the error of the staging or of the writing if the
    save failed; ``wait()`` does the same and returns None.
    ``wait_staged()`` returns once every saved tensor and array has been
    copied to host memory (at once for ``staging="blocking"``), raising the
    staging copy's error if it failed; ``staged()`` says whether that point
    has been reached, without waiting.
    """

    def __init__(self):
        super().__init__()
        self._staged = threading.Event()
        self._staging_error = None

    def wait(self, timeout=None):
        self.result(timeout)

    def staged(self):
        """True once the staging copy has ended (successfully or not)."""
        return self._staged.is_set()

    def wait_staged(self, timeout=None):
        """Waits until every saved tensor and array is copied to host memory;
        from then on the caller may change them. Raises the copy's error (the
        same one ``result()`` raises), or TimeoutError after ``timeout``
        seconds. An error of the writing that stopped the copy early is left
        to ``result()``: the tensors are no longer read either way."""
        if not self._staged.wait(timeout):
            raise TimeoutError("staging did not finish in time")
        if self._staging_error is not None:
            raise self._staging_error

    def _end_staging(self, error=None):
        self._staging_error = error
        self._staged.set()


class _Ring:
    """FIFO allocator over a staging buffer: the producer allocates records in
    order, the consumer frees them in the same order."""

    def __init__(self, buffer):
        self.buffer = buffer
        self.capacity = buffer.numel()
        self._allocs = collections.deque()  # (start, size)
        self._cv = threading.Condition()
        self.failed = None

    def _fit(self, n):
        if not self._allocs:
            return 0
        tail = self._allocs[0][0]
        last_start, last_size = self._allocs[-1]
        head = last_start + last_size
        if head > tail:  # in use: [tail, head); free: [head, end) and [0, tail)
            if self.capacity - head >= n:
                return head
            return 0 if tail >= n else None
        return head if tail - head >= n else None  # wrapped: free is [head, tail)

    def alloc(self, n):
        if n > self.capacity:
            raise ValueError(f"a record of {n} bytes does not fit the {self.capacity}-byte staging buffer")
        with self._cv:
            while True:
                if self.failed is not None:
                    raise self.failed
                start = self._fit(n)
                if start is not None:
                    self._allocs.append((start, n))
                    return start
                self._cv.wait()

    def free_oldest(self):
        with self._cv:
            self._allocs.popleft()
            self._cv.notify_all()

    def fail(self, exc):
        with self._cv:
            self.failed = exc
            self._cv.notify_all()


def release_staging_memory():
    """Frees the staging buffer kept between async saves (waits for a save in flight)."""
    global _arena
    with _lock:
        if _inflight is not None:
            concurrent.futures.wait([_inflight])
        _arena = None


def staging_bytes():
    """Bytes of host memory held by the kept staging buffer (0 when none)."""
    arena = _arena
    return 0 if arena is None else arena.numel()


def _staging_buffer(capacity, limit):
    """A staging buffer of at least ``capacity`` bytes (and at most ``limit``),
    reusing the kept one when it fits."""
    global _arena
    torch = _torch()
    pin = torch.cuda.is_available()
    if _arena is not None and capacity <= _arena.numel() <= limit and _arena.is_pinned() == pin:
        return _arena
    _arena = None  # drop the old one before allocating: bounded memory
    _arena = torch.empty(capacity, dtype=torch.uint8, pin_memory=pin)
    return _arena


STAGING_MODES = ("blocking", "background", "fork")


def async_save(obj, path, *, max_staging_bytes=None, trusted=False, chunk_bytes=None, file_bytes=None,
               staging="blocking"):
    """Starts saving ``obj`` to ``path`` (as ``save`` does) and returns a
    SaveFuture.

    ``staging="blocking"`` (the default) returns once every tensor is copied
    to host memory: the caller may change its tensors at once.

    ``staging="background"`` returns as soon as the tree is encoded and
    copies the tensors in a background thread. Contract: until
    ``future.wait_staged()`` returns, the caller must not change the bytes of
    any tensor or numpy array in ``obj`` (no in-place update such as an
    optimizer step, ``zero_()``, ``copy_()``, or writes into an array);
    reading them is fine, and so is changing the containers of ``obj`` and its
    non-tensor values, which were encoded before the call returned. Call
    ``wait_staged()`` before the first such change (e.g. before the next
    ``optimizer.step()``); bytes changed before it returns may be saved in
    either state, or torn.

    ``staging="fork"`` (Linux, every tensor in host memory) returns once
    the process has forked: a child process holds a copy-on-write snapshot of
    the state and writes it, so nothing is copied up front and the caller may
    change its tensors at once; each page the caller changes while the child
    is writing is copied by the kernel then. The fork itself costs time in
    proportion to the whole process's memory (its page tables), not to the
    state. A state holding a tensor that is not in host memory raises
    ValueError. ``max_staging_bytes`` does not apply: pages copied on write
    are not bounded by it.

    ``max_staging_bytes`` caps the host memory used for staging (at least
    1 MiB); beyond it, the copy streams the state through the cap, waiting
    for the writer (in the caller's thread for blocking staging). Errors
    about the object itself (unsupported leaves), the arguments and the path
    are raised here; errors of the staging copy are raised by
    ``wait_staged()`` and by ``result()`` / ``wait()``; errors of the writing
    by ``result()`` / ``wait()``. The checkpoint appears at ``path``
    atomically when the write completes; until then ``path`` keeps its
    previous content.
    """
    global _inflight
    if staging not in STAGING_MODES:
        raise ValueError(f"staging must be one of {STAGING_MODES}, got {staging!r}")
    limit = float("inf")
    chunk = CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    pack = PACK_BYTES
    if max_staging_bytes is not None:
        if isinstance(max_staging_bytes, bool) or not isinstance(max_staging_bytes, int):
            raise TypeError("max_staging_bytes must be an int or None")
        if max_staging_bytes < MIN_STAGING_BYTES:
            raise ValueError(f"max_staging_bytes must be at least {MIN_STAGING_BYTES}, got {max_staging_bytes}")
        limit = max_staging_bytes
        chunk = max(1, min(chunk, limit // 2 - PIECE_ALIGN))
        pack = min(pack, limit // 4)
    with _lock:
        if _inflight is not None:
            concurrent.futures.wait([_inflight])  # serialise: its error belongs to its own future
        with gc_paused():
            plan = SavePlan(obj, trusted=trusted, chunk_bytes=chunk, pack_bytes=pack)
        if staging == "fork":
            _inflight = _fork_and_write(plan, path, file_bytes)
            return _inflight
        sizes = [_align(record_bytes(r)) for r in plan.records]
        capacity = int(min(sum(sizes), limit)) if sizes else 0
        buffer = _staging_buffer(max(capacity, PIECE_ALIGN), limit)
        commit = DirectoryCommit(path)
        future = SaveFuture()
        future.set_running_or_notify_cancel()
        ring = _Ring(buffer)
        queue = collections.deque()
        ready = threading.Condition()
        writer = threading.Thread(
            target=_write_staged,
            args=(plan, ring, queue, ready, commit, file_bytes, future),
            name="ffrecord-async-save",
        )
        writer.start()
        _inflight = future
        background = staging == "background"
        stage = (plan, ring, queue, ready, sum(sizes) <= buffer.numel(), background, future)
        if background:
            threading.Thread(target=_stage_or_abort, args=stage, name="ffrecord-async-stage").start()
        else:
            error = _stage_or_abort(*stage)
            if error is not None:
                raise error
        return future


def _stage_or_abort(plan, ring, queue, ready, hold, settle, future):
    """Runs the staging copy; on failure tells the writer to abort (the
    future then raises the error). Ends the future's staging, last. Returns
    the copy's own error, or None (also when the writer's error stopped it:
    that one is the future's)."""
    error = None
    try:
        _stage(plan, ring, queue, ready, hold, settle)
    except BaseException as e:
        with ready:
            queue.append(("abort", e))
            ready.notify()
        if ring.failed is None:
            error = e
    finally:
        future._end_staging(error)
    return error


def _stage(plan, ring, queue, ready, hold, settle):
    """Copies every record into the ring and queues it for the writer. With
    ``hold`` (the ring holds the whole state), the writer gets nothing until
    all is copied, so it does not compete with the copy for CPU and memory
    bandwidth. With ``settle``, returns only once device-to-host copies
    have landed."""
    torch = _torch()
    base = ring.buffer.data_ptr()
    cached = (None, None, None)  # (item index, owner, host address or device bytes)
    held = []
    last_event = None
    copies, owners, pending = [], [], 0
    for record in plan.records:
        start = ring.alloc(_align(record_bytes(record)))
        pieces, at, cuda = [], start, False
        for i, begin, n in record:
            if cached[0] != i:
                item = plan.items[i]
                if item.device is None or item.device.type == "cpu":
                    cached = (i, *item.host_memory())
                else:
                    cached = (i, None, item.byte_tensor())
            if cached[1] is not None:
                # Host memory: copied below by the C++ core, without the GIL
                # and split across the usable CPUs when the record is large.
                copies.append((base + at, cached[2] + begin, n))
                owners.append(cached[1])  # keeps a non-contiguous tensor's temporary copy until copied
                pending += n
            else:
                src = cached[2]
                ring.buffer[at : at + n].copy_(src[begin : begin + n], non_blocking=True)
                cuda = cuda or src.device.type == "cuda"
            pieces.append((base + at, n))
            at = _align(at + n)
        # Held records are copied in large batches: each call ends with one
        # thread finishing alone, which per 20 MiB record cost a fifth of
        # the copy's time. The writer sees no held record before the end.
        if copies and (not hold or pending >= HELD_COPY_BATCH):
            _core.copy_memory(copies)
            copies, owners, pending = [], [], 0
        event = None
        if cuda:
            event = last_event = torch.cuda.Event()
            event.record()
        if hold:
            held.append(("record", (record, pieces, event)))
            continue
        with ready:
            queue.append(("record", (record, pieces, event)))
            ready.notify()
    if copies:
        _core.copy_memory(copies)
    del owners
    if settle and last_event is not None:
        # Background staging: "staged" means the device-to-host copies have
        # landed, not only been queued, so the caller may then change the
        # tensors from any stream. (Blocking staging returns after queueing
        # them; the caller's later work on the same stream runs after them.)
        last_event.synchronize()
    with ready:
        queue.extend(held)
        queue.append(("done", None))
        ready.notify()


def _write_staged(plan, ring, queue, ready, commit, file_bytes, future):
    out = PayloadWriter(commit.tmp, file_bytes)
    try:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                what, payload = queue.popleft()
            if what == "abort":
                raise payload
            if what == "done":
                break
            record, pieces, event = payload
            if event is not None:
                event.synchronize()
            plan.record_written(record, out.write(pieces))  # the ring keeps the memory alive
            ring.free_oldest()
        files = out.finish()
        sync_point("data-written")
        with gc_paused():
            write_manifest(commit.tmp, plan.manifest(files))
        sync_point("manifest-written")
        commit.commit()
        future._staged.wait()  # resolved after staged, in every outcome
    except BaseException as e:
        ring.fail(e)
        out.abort()
        commit.abort()
        # Resolve only once the stager has stopped writing into the shared
        # staging buffer (ring.fail makes it stop at its next record).
        future._staged.wait()
        future.set_exception(e)
        return
    future.set_result(commit.target)


# ---- staging="fork" ---------------------------------------------------------------

_CHILD_OK, _CHILD_ERROR = b"\x00", b"\x01"
_MAX_ERROR_BYTES = 32 << 10  # well under a pipe's buffer: the child never blocks reporting


def _fork_and_write(plan, path, file_bytes):
    """Forks a child that writes and commits ``plan``; returns the future a
    reaper thread resolves from the child's report and exit status."""
    memory = []
    for item in plan.items:
        device = item.device
        if device is not None and device.type != "cpu":
            raise ValueError(
                f"staging='fork' snapshots host memory; the tensor at {format_path(item.path)} is on {device}: "
                "use staging='blocking' or 'background'"
            )
        # Resolved here, before the fork: the child must run no tensor
        # operation (a non-contiguous tensor's copy could wait forever on
        # intra-op threads that do not exist in the child).
        memory.append(item.host_memory())
    read_end, write_end = os.pipe()
    try:
        commit = DirectoryCommit(path)
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    future = SaveFuture()
    future.set_running_or_notify_cancel()
    try:
        with warnings.catch_warnings():
            # Python warns that a child forked from a threaded process may
            # deadlock; the child runs only code that takes no lock held by
            # another thread of the parent (the writer starts its own threads).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        commit.abort()
        raise
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child_writes(plan, memory, commit, file_bytes, write_end)
    os.close(write_end)
    del memory  # the child has its own snapshot
    future._end_staging()
    threading.Thread(target=_reap, args=(pid, read_end, commit, future), name="ffrecord-async-save").start()
    return future


def _child_writes(plan, memory, commit, file_bytes, report):
    status = 1
    try:
        # Garbage the parent had not collected yet would be finalised here,
        # running its finalisers (say, a loader shutting down its workers) in
        # the wrong process.
        gc.disable()
        try:
            write_plan(plan, commit.tmp, file_bytes, memory)
            commit.commit()
            message, status = _CHILD_OK, 0
        except BaseException as e:  # reported to the parent, whatever it is
            try:
                blob = pickle.dumps(e)
            except Exception:
                blob = b""
            if not blob or len(blob) > _MAX_ERROR_BYTES:
                blob = pickle.dumps(FFRecordError(f"{type(e).__name__}: {str(e)[:4000]}"))
            message = _CHILD_ERROR + blob
        os.write(report, message)
    finally:
        os._exit(status)  # no atexit handlers, no flushing of the parent's buffers


def _reap(pid, report, commit, future):
    try:
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): the report decides
            code = None
        os.set_blocking(report, False)
        try:
            message = os.read(report, _MAX_ERROR_BYTES + 1024)
        except BlockingIOError:
            message = b""
    finally:
        os.close(report)
    if message[:1] == _CHILD_OK and code in (0, None):
        future.set_result(commit.target)
        return
    commit.abort()  # the temporary directory, if the child left it
    error = None
    if message[:1] == _CHILD_ERROR:
        try:
            error = pickle.loads(message[1:])  # from our own child
        except Exception as e:  # an exception class that does not unpickle: the future must still resolve
            error = FFRecordError(f"{commit.target}: the process writing the checkpoint failed ({e!r} while "
                                  "reading its report); the path keeps its previous content")
    if error is None:
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with status {code}"
        error = FFRecordError(
            f"{commit.target}: the process writing the checkpoint {how} before reporting success; the path "
            "holds its previous content (or the new checkpoint, if that came after the commit)"
        )
    future.set_exception(error)
