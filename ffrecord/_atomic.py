"""Durable, all-or-nothing file writes under names no other writer can pick.

Several processes on several machines write into the same directories of a
shared filesystem (ranks of ``ffrecord convert`` and ``ffrecord validate``).
Two rules keep them from stepping on each other without any lock:

- every temporary or per-writer name carries ``unique_tag()``: the host name,
  the process id and random bits (a pid alone repeats across machines, and
  random bits alone say nothing about who left a file behind);
- content appears under its final name only by ``rename``, after an fsync, so
  a reader on any node sees the old file or the whole new one.
"""

import os
import re
import secrets
import socket

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def unique_tag():
    """'<host>-<pid>-<12 random hex digits>', safe inside a file name."""
    host = _UNSAFE.sub("_", socket.gethostname() or "host")[:64].strip(".") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(6)}"


def _temporary_for(path):
    """A temporary name beside ``path``, unique across processes and nodes."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.{unique_tag()}.tmp")


def _write_synced(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path, data):
    """Writes ``data`` to ``path`` through a uniquely named temporary file in the
    same directory, fsynced and renamed, then fsyncs the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _temporary_for(path)
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            _name_the_file(e, path)
        raise
    fsync_dir(directory)


def publish_once(path, data):
    """Publishes ``data`` as ``path`` unless ``path`` exists (the first writer of
    several, on any node, wins); returns whether this call published it. The
    complete, fsynced file is linked into place, so ``path`` is never seen half
    written."""
    tmp = _temporary_for(path)
    try:
        _write_synced(tmp, data)
        won = link_once(tmp, path)
    except OSError as e:
        _name_the_file(e, path)
        raise
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return won


def _name_the_file(e, path):
    """A failed write (ENOSPC, EIO) names no file by itself: raise one that does."""
    if not e.filename:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def link_once(tmp, path):
    """Publishes the complete file ``tmp`` as ``path`` unless ``path`` exists;
    returns whether this call published it. ``link`` is decided by the server,
    so of several writers on several nodes exactly one wins. Some network
    filesystems answer a link onto an existing name with a generic error
    (sshfs reports EPERM) rather than EEXIST, so any failure is a lost race
    when ``path`` is there afterwards."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if os.path.exists(path):
            return False
        raise


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is done
        pass
    finally:
        os.close(fd)
