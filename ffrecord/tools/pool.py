"""Runs independent jobs in worker processes and reports their progress.

``run(fn, jobs, workers, on_progress)`` calls ``fn(job, report)`` for every
job and yields ``(job index, result)`` as jobs finish. ``report(records,
nbytes)`` is how a job tells the parent about progress; the parent passes the
totals to ``on_progress``. With one worker, jobs run in this process; with
more, in worker processes started by ``start_method``: ``spawn`` (the
default) is safe whatever the calling program holds (threads, CUDA, open
handles), but each worker pays an interpreter start and imports, and a script
calling it must guard its entry point with ``if __name__ == "__main__":``.
``fork`` starts workers at once and suits a caller that knows it holds no
threads or handles a child could trip on, like the ``ffrecord`` command.

The first failing job stops the others at their next progress report and its
exception is raised in the parent; a worker that dies (killed, out of memory)
raises ``ToolError`` instead of hanging the pool.
"""

import multiprocessing
import queue as queue_module
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .errors import ToolError

_REPORT_INTERVAL = 0.2
_worker = {}  # the progress queue and stop event, set in each worker process


class _Stopped(Exception):
    """Raised inside a job when another job failed; the job is abandoned."""


class _Reporter:
    """Batches progress so a job with millions of tiny records does not flood the parent."""

    def __init__(self, sink, stop=None):
        self._sink = sink
        self._stop = stop
        self._records = 0
        self._bytes = 0
        self._last = time.monotonic()

    def __call__(self, records, nbytes=0):
        self._records += records
        self._bytes += nbytes
        now = time.monotonic()
        if now - self._last >= _REPORT_INTERVAL:
            self._last = now
            self.flush()
            if self._stop is not None and self._stop.is_set():
                raise _Stopped()

    def flush(self):
        if self._records or self._bytes:
            self._sink(self._records, self._bytes)
            self._records = self._bytes = 0


def _init_worker(q, stop):
    _worker["queue"] = q
    _worker["stop"] = stop


def _call(fn, index, job):
    q = _worker["queue"]
    reporter = _Reporter(lambda r, b: q.put((r, b)), _worker["stop"])
    try:
        return index, fn(job, reporter)
    finally:
        reporter.flush()


def run(fn, jobs, workers=1, on_progress=None, start_method="spawn"):
    on_progress = on_progress or (lambda records, nbytes: None)
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            reporter = _Reporter(on_progress)
            try:
                result = fn(job, reporter)
            finally:
                reporter.flush()
            yield index, result
        return
    ctx = multiprocessing.get_context(start_method)
    q = ctx.Queue()
    stop = ctx.Event()
    executor = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(q, stop))
    try:
        pending = {executor.submit(_call, fn, k, job) for k, job in enumerate(jobs)}
        while pending:
            done, pending = wait(pending, timeout=_REPORT_INTERVAL, return_when=FIRST_COMPLETED)
            _drain(q, on_progress)
            for future in done:
                try:
                    item = future.result()
                except BrokenProcessPool:
                    raise ToolError("a worker process died (killed, or out of memory?); "
                                    "rerun the same command to resume") from None
                yield item
        _drain(q, on_progress)
    finally:
        stop.set()  # running jobs stop at their next report; queued ones are cancelled
        executor.shutdown(wait=True, cancel_futures=True)
        q.close()
        q.join_thread()


def _drain(q, on_progress):
    while True:
        try:
            records, nbytes = q.get_nowait()
        except queue_module.Empty:
            return
        on_progress(records, nbytes)
