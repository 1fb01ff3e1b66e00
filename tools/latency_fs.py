#!/usr/bin/env python3
"""A FUSE passthrough that delays every operation: a network's round trip on one machine.

    python tools/latency_fs.py BACKING MOUNT --delay-ms 0.2

mounts BACKING at MOUNT (in the foreground, until `fusermount3 -u MOUNT` or
Ctrl-C). Each filesystem operation that reaches it (lookup, getattr, open,
read, write, fsync, ...) sleeps ``--delay-ms`` before doing the same on
BACKING. By default the kernel is told to cache nothing (direct I/O, zero
attribute and entry timeouts), so every request a client makes pays the delay,
as every request to a file server pays a round trip; ``--cache`` keeps the
kernel's caches, so only misses pay it.

It is a test and benchmark tool (the rig in tests/netfs_rig.py stacks it
under its sshd export), not part of ffrecord. It needs the mfusepy binding
and libfuse 3.
"""

import argparse
import errno
import os
import sys
import time

try:
    import mfusepy as fuse
except ImportError:  # pragma: no cover - reported as a usage error below
    fuse = None


class DelayedPassthrough(fuse.Operations if fuse else object):
    """Every call is delayed, then forwarded to the same path under ``root``."""

    use_ns = True  # times as integer nanoseconds, exact through the round trip

    def __init__(self, root, delay_s):
        self.root = os.path.realpath(root)
        self.delay_s = delay_s

    def _delay(self):
        # time.sleep releases the GIL: concurrent requests overlap, as on a network
        if self.delay_s > 0:
            time.sleep(self.delay_s)

    def _path(self, path):
        """The delayed request's path under the backing directory."""
        self._delay()
        return os.path.join(self.root, path.lstrip("/"))

    # ---- metadata ------------------------------------------------------

    def getattr(self, path, fh=None):
        if fh is not None:
            self._delay()
            st = os.fstat(fh)
        else:
            st = os.lstat(self._path(path))
        keys = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_blocks", "st_blksize", "st_rdev")
        attrs = {k: getattr(st, k) for k in keys}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def access(self, path, amode):
        if not os.access(self._path(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def statfs(self, path):
        sv = os.statvfs(self._path(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                            "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)
        return 0

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._path(path), ns=times, follow_symlinks=False)
        return 0

    # ---- namespace -----------------------------------------------------

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path):
        os.rmdir(self._path(path))
        return 0

    def mknod(self, path, mode, dev):
        os.mknod(self._path(path), mode, dev)
        return 0

    def unlink(self, path):
        os.unlink(self._path(path))
        return 0

    def rename(self, old, new):
        os.rename(self._path(old), os.path.join(self.root, new.lstrip("/")))
        return 0

    def symlink(self, target, source):
        os.symlink(source, self._path(target))
        return 0

    def link(self, target, source):
        os.link(os.path.join(self.root, source.lstrip("/")), self._path(target))
        return 0

    # ---- file data -----------------------------------------------------

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, flags=os.O_WRONLY | os.O_CREAT):
        return os.open(self._path(path), flags | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        self._delay()
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._delay()
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            self._delay()
            os.ftruncate(fh, length)
        else:
            os.truncate(self._path(path), length)
        return 0

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        self._delay()
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="Mount BACKING at MOUNT, delaying every operation.")
    ap.add_argument("backing", help="the directory whose files are served")
    ap.add_argument("mount", help="an empty directory to mount on")
    ap.add_argument("--delay-ms", type=float, default=0.2, help="delay per operation (default 0.2)")
    ap.add_argument("--cache", action="store_true",
                    help="let the kernel cache pages and attributes (only misses pay the delay)")
    args = ap.parse_args(argv)
    if fuse is None:
        ap.error("the mfusepy package is needed (pip install mfusepy)")
    if args.delay_ms < 0:
        ap.error("--delay-ms must be >= 0")
    for d in (args.backing, args.mount):
        if not os.path.isdir(d):
            ap.error(f"{d}: not a directory")
    options = {"foreground": True, "fsname": "latency_fs", "default_permissions": True}
    if not args.cache:
        options.update(direct_io=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)
    fuse.FUSE(DelayedPassthrough(args.backing, args.delay_ms / 1000.0), args.mount, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
