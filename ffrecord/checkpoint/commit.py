"""Atomic commit of a checkpoint directory.

The protocol (docs/CHECKPOINT.md has the full story):

1. Everything is written into a hidden temporary directory beside the target,
   ``.<name>.ffrtmp-<host>-<pid>-<random>``; every file in it is fsynced by
   its writer, the manifest last.
2. ``commit()`` fsyncs the temporary directory, then makes it the target in
   one step: ``rename`` when the target does not exist, else an atomic
   exchange (``renameat2(RENAME_EXCHANGE)``), so the target path always names
   either the old complete checkpoint or the new complete one. The parent
   directory is fsynced, and only then is the old checkpoint (now under the
   temporary name) deleted.
3. Where the filesystem cannot exchange, the old checkpoint is first renamed
   to ``.<name>.ffrold-<host>-<pid>-<random>`` and the new one renamed into
   place. A crash between the two renames leaves no target but a complete
   backup, which ``resolve_for_load`` finds (and the next save restores).

Stale temporary directories (their process on this host is gone, or they are
older than a day) are removed by the next save to the same target. Nothing is
ever written under the target path itself, so an interrupted save leaves the
target exactly as it was.

``sync_point(name)`` marks each step; tests install a hook there to stop a
process at an exact point of the protocol.
"""

import os
import secrets
import shutil
import socket
import time
import warnings

from .. import _core
from .._process import pid_alive
from .layout import is_checkpoint_dir

__all__ = ["DirectoryCommit", "resolve_for_load", "sync_point"]

TMP_TAG = ".ffrtmp-"
OLD_TAG = ".ffrold-"
STALE_AFTER_S = 24 * 3600

# Test seam: a callable taking the step name, or None.
_sync_hook = None


def sync_point(name):
    if _sync_hook is not None:
        _sync_hook(name)


def _host():
    return socket.gethostname().replace("-", "_") or "host"


def _hidden_name(name, tag):
    return f".{name}{tag}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner_alive(entry_suffix):
    """Whether the process that created a temp/backup entry may still be running."""
    try:
        host, pid, _ = entry_suffix.rsplit("-", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != _host():
        return None  # unknown: another machine
    return pid == os.getpid() or pid_alive(pid)


def _siblings(parent, name, tag):
    prefix = f".{name}{tag}"
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return []
    return [(e, e[len(prefix):]) for e in entries if e.startswith(prefix)]


def _stale(parent, entry, suffix):
    alive = _owner_alive(suffix)
    if alive is None:
        try:
            return time.time() - os.lstat(os.path.join(parent, entry)).st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return False
    return not alive


def recover(target):
    """Restores a backup stranded by a crash in the fallback commit (when the
    target is missing) and removes stale temporary directories of ``target``."""
    parent, name = os.path.split(target)
    if not os.path.lexists(target):
        backups = [(e, s) for e, s in _siblings(parent, name, OLD_TAG) if _stale(parent, e, s)]
        backups = [e for e, _ in backups if is_checkpoint_dir(os.path.join(parent, e))]
        if backups:
            newest = max(backups, key=lambda e: os.lstat(os.path.join(parent, e)).st_mtime)
            try:
                os.rename(os.path.join(parent, newest), target)
                _core.sync_path(parent, True)
            except OSError:
                pass  # another process restored it first
    for tag in (TMP_TAG, OLD_TAG):
        for entry, suffix in _siblings(parent, name, tag):
            if _stale(parent, entry, suffix):
                if tag == OLD_TAG and not os.path.lexists(target):
                    continue  # never delete the only copy
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def resolve_for_load(path):
    """The directory to load for ``path``: the path itself, or, when a save
    was interrupted between the two renames of the fallback commit, the
    complete backup it left (with a warning)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        return path
    parent, name = os.path.split(path)
    backups = [os.path.join(parent, e) for e, _ in _siblings(parent, name, OLD_TAG)]
    backups = [b for b in backups if is_checkpoint_dir(b)]
    if backups:
        newest = max(backups, key=lambda b: os.lstat(b).st_mtime)
        warnings.warn(
            f"{path}: missing because a save was interrupted mid-commit; loading the previous "
            f"checkpoint from {newest} (the next save to this path restores it)",
            RuntimeWarning,
            stacklevel=3,
        )
        return newest
    return path


class DirectoryCommit:
    """A temporary directory beside ``target`` that ``commit()`` turns into
    ``target`` atomically; ``abort()`` (or an exception in a ``with`` block)
    removes it and leaves ``target`` untouched.

    An existing ``target`` must be a checkpoint directory (one with a
    manifest) or an empty directory: anything else is refused with
    FileExistsError rather than replaced.
    """

    def __init__(self, target):
        target = os.path.abspath(os.fspath(target))
        self.target = target
        self.parent, self.name = os.path.split(target)
        if not os.path.isdir(self.parent):
            raise FileNotFoundError(2, "parent directory of the checkpoint does not exist", self.parent)
        self._check_replaceable()
        recover(target)
        self.tmp = os.path.join(self.parent, _hidden_name(self.name, TMP_TAG))
        os.mkdir(self.tmp, 0o755)
        self.committed = False

    def _check_replaceable(self):
        if not os.path.lexists(self.target) or is_checkpoint_dir(self.target):
            return
        if os.path.isdir(self.target) and not os.path.islink(self.target) and not os.listdir(self.target):
            return  # an empty directory made ready for the checkpoint
        raise FileExistsError(17, "exists and is not a checkpoint directory; refusing to replace it", self.target)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def commit(self):
        if self.committed:
            return
        sync_point("before-commit")
        _core.sync_path(self.tmp, True)
        for _ in range(8):  # retried only if another saver changes the target meanwhile
            self._check_replaceable()
            if not os.path.lexists(self.target):
                try:
                    os.rename(self.tmp, self.target)
                except OSError as e:
                    if os.path.lexists(self.target):
                        continue  # created by a concurrent save: exchange with it instead
                    raise e
                self._finish(None)
                return
            if _core.exchange_paths(self.tmp, self.target):
                sync_point("exchanged")
                self._finish(self.tmp)  # the old checkpoint now lives under the temporary name
                return
            old = os.path.join(self.parent, _hidden_name(self.name, OLD_TAG))
            try:
                os.rename(self.target, old)
            except FileNotFoundError:
                continue
            sync_point("moved-old")
            os.rename(self.tmp, self.target)
            self._finish(old)
            return
        raise RuntimeError(f"{self.target}: could not commit the checkpoint: the path kept changing")

    def _finish(self, old):
        self.committed = True
        _core.sync_path(self.parent, True)
        sync_point("committed")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self):
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
