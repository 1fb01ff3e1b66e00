"""``dump``: write a whole indexable dataset to record files, as the original
FFRecord package's ``ffrecord.utils.dump`` did (same arguments, same names)."""

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import traceback
import warnings
from pathlib import Path

from tqdm import tqdm

from .writer import FileWriter

__all__ = ["dump"]

# At most this many files are written at once (one process each).
_MAX_PROCESSES = 16


def dump(dataset, fname, nfiles, verbose=False):
    """Writes ``dataset[0] .. dataset[len(dataset) - 1]`` (each bytes-like:
    bytes, bytearray, memoryview, a numpy array) as records.

    With ``nfiles == 1`` ``fname`` is the output file. Otherwise ``fname`` is a
    folder (created if needed) that receives ``PART_00000.ffr``,
    ``PART_00001.ffr``, ... of ``ceil(len(dataset) / nfiles)`` records each, in
    order, so ``FileReader(fname)`` reads the dataset back; there are fewer
    files than ``nfiles`` (with a warning) when the records do not fill them
    all. Files are written by forked processes, up to 16 at a time, where the
    platform forks. If any part fails, the writers still running are stopped,
    the parts written by this call are removed, and the error is raised. ``verbose`` shows a progress bar
    per file.
    """
    if isinstance(nfiles, bool) or not isinstance(nfiles, int):
        raise TypeError(f"nfiles must be an int, not {type(nfiles).__name__}")
    if nfiles < 1:
        raise ValueError(f"nfiles must be >= 1, got {nfiles}")
    n = len(dataset)
    if nfiles == 1:
        _write_part(dataset, 0, n, fname, verbose)
        return
    out_dir = Path(fname)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_file = -(-n // nfiles)
    starts = range(0, n, per_file) if n else [0]  # an empty dataset still gets one (empty) file
    parts = [(start, min(per_file, n - start), out_dir / f"PART_{k:05d}.ffr") for k, start in enumerate(starts)]
    if len(parts) != nfiles:
        warnings.warn(f"{out_dir}: {n} records split into {len(parts)} files rather than {nfiles}", stacklevel=2)
    try:
        if "fork" in multiprocessing.get_all_start_methods():
            _write_parts_forked(dataset, parts, verbose)
        else:  # without fork the dataset would have to be pickled: write here instead
            for start, count, path in parts:
                _write_part(dataset, start, count, path, verbose)
    except BaseException:
        for _, _, path in parts:
            path.unlink(missing_ok=True)
        raise


def _write_part(dataset, start, count, path, verbose):
    with FileWriter(path, count) as w:
        for i in tqdm(range(start, start + count), desc=os.fspath(path), unit="record", disable=not verbose):
            try:
                w.write_one(dataset[i])
            except TypeError as e:
                raise TypeError(f"{os.fspath(path)}: sample {i}: {e}") from None


def _write_parts_forked(dataset, parts, verbose):
    ctx = multiprocessing.get_context("fork")
    for first in range(0, len(parts), _MAX_PROCESSES):
        running = {}  # receiving end of each process's pipe -> (process, path)
        try:
            for start, count, path in parts[first:first + _MAX_PROCESSES]:
                receiver, sender = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_part_process, args=(sender, dataset, start, count, path, verbose))
                proc.start()
                sender.close()
                running[receiver] = (proc, path)
            waiting = dict(running)
            while waiting:
                for receiver in multiprocessing.connection.wait(list(waiting)):
                    proc, path = waiting.pop(receiver)
                    try:
                        outcome = receiver.recv()
                    except EOFError:  # the process died before it could report
                        outcome = None
                    proc.join()
                    if outcome != "ok" or proc.exitcode != 0:
                        raise _part_error(outcome, proc.exitcode, path)
        finally:
            # After a failure or an interruption, stop the writers still running
            # (each discards its temporary file) instead of waiting for them.
            for receiver, (proc, _) in running.items():
                if proc.is_alive():
                    proc.terminate()
                proc.join()
                receiver.close()


def _part_process(sender, dataset, start, count, path, verbose):
    # terminate() by the parent unwinds the writer, which then removes its temporary file.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        _write_part(dataset, start, count, path, verbose)
        sender.send("ok")
    except BaseException as e:
        try:
            sender.send(("error", pickle.dumps(e), traceback.format_exc()))
        except Exception:  # an exception that does not pickle travels as text
            sender.send(("error", None, traceback.format_exc()))
    finally:
        sender.close()


def _part_error(outcome, exitcode, path):
    if outcome is None:
        return ChildProcessError(f"{os.fspath(path)}: the process writing it exited with code {exitcode}")
    _, pickled, text = outcome
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
            error.__cause__ = ChildProcessError(f"raised while writing {os.fspath(path)}:\n{text}")
            return error
        except Exception:
            pass
    return ChildProcessError(f"{os.fspath(path)}: writing it failed:\n{text}")
