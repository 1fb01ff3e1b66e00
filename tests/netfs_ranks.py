"""Long-lived worker processes that play the ranks of a job on the network filesystem rig.

Races between ranks only show when both finish within milliseconds, so each
round's calls are released together from a barrier after the workers have long
finished their imports; a round costs milliseconds, not a process start.
Workers are started with "spawn" (no forked copy of pytest's threads) and run
module-level functions; an exception in a worker comes back as a ``Failed``
value with its traceback, never a hang.
"""

import contextlib
import io
import multiprocessing
import os
import traceback

_CTX = multiprocessing.get_context("spawn")


class Failed:
    """What a call that raised returns: the exception's type, text and traceback."""

    def __init__(self, exc):
        self.type = type(exc).__name__
        self.message = str(exc)
        self.traceback = traceback.format_exc()

    def __repr__(self):
        return f"Failed({self.type}: {self.message})"


def _serve(conn, barrier):
    while True:
        job = conn.recv()
        if job is None:
            return
        fn, args, env, together = job
        for k, v in env.items():  # None unsets a variable
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            if together:
                barrier.wait(timeout=60)
            result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            result = Failed(e)
        conn.send(result)


class RankPool:
    """``n`` worker processes; a context manager that stops them on exit."""

    def __init__(self, n=2):
        self._barrier = _CTX.Barrier(n)
        self._conns, self._procs = [], []
        for _ in range(n):
            parent, child = _CTX.Pipe()
            p = _CTX.Process(target=_serve, args=(child, self._barrier), daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)

    def submit(self, rank, fn, *args, env=None, together=False):
        self._conns[rank].send((fn, args, dict(env or {}), together))

    def result(self, rank, timeout=120):
        conn = self._conns[rank]
        if not conn.poll(timeout):
            raise TimeoutError(f"rank {rank} did not answer within {timeout} s")
        return conn.recv()

    def call(self, rank, fn, *args, env=None):
        """Runs ``fn(*args)`` on one worker and returns its result."""
        self.submit(rank, fn, *args, env=env)
        return self.result(rank)

    def together(self, calls, env=None):
        """Runs one ``(fn, args)`` per rank, all released at once from a barrier;
        returns their results in rank order."""
        for rank, (fn, args) in enumerate(calls):
            self.submit(rank, fn, *args, env=env, together=True)
        return [self.result(rank) for rank in range(len(calls))]

    def close(self):
        for conn, p in zip(self._conns, self._procs):
            try:
                conn.send(None)
            except OSError:
                pass
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cli(args):
    """``ffrecord ARGS`` in this process: (exit status, stdout, stderr)."""
    from ffrecord.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()
