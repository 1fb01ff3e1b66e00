"""A real two-node network filesystem on one machine, for tests and benchmarks.

One directory is exported by a throwaway sshd (its own key, its own port) and
mounted twice with sshfs: "node A" and "node B". Each mount is its own FUSE
client with its own attribute, directory and page caches, and each runs in its
own network namespace, joined to the host by a veth pair, so its traffic
really crosses a network interface. Where network namespaces are refused both
mounts connect over 127.0.0.1 instead (still two clients, two caches).

With ``latency_ms`` a FUSE passthrough (tools/latency_fs.py) that delays every
operation sits between sshd and the files, so both nodes pay a round trip.

Every name (namespaces, veth links, subnets, port) is derived from the pid and
checked to be free, so rigs of concurrent test runs never meet. Teardown runs
from ``__exit__``, from ``close()``, at interpreter exit and on SIGTERM, and
removes mounts, processes, namespaces and directories even after a failed
start.
"""

import atexit
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
LATENCY_FS = os.path.join(os.path.dirname(HERE), "tools", "latency_fs.py")

FUSE_SUPER_MAGIC = 0x65735546  # statfs f_type of every FUSE mount
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")
MOUNT_TIMEOUT_S = 20.0

_live_rigs = []          # rigs this process started and has not torn down yet
_live_lock = threading.Lock()
_serial = [0]            # distinguishes several rigs of one process


class RigError(RuntimeError):
    """The rig could not be built (the message carries the failing tool's stderr)."""


def _sshd_path():
    for p in SSHD_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("sshd")


def unavailable_reason(latency=False) -> Optional[str]:
    """One line saying why no rig can be built here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"the network-filesystem rig needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "the network-filesystem rig needs root (network namespaces, sshd, FUSE mounts)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"no usable /dev/fuse ({e.strerror})"
    for tool in ("sshfs", "fusermount3", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install sshfs openssh-server fuse3)"
    if _sshd_path() is None:
        return "sshd is not installed (apt-get install openssh-server)"
    if latency:
        try:
            import mfusepy  # noqa: F401
        except ImportError:
            return "the latency layer needs mfusepy (pip install mfusepy)"
    return None


def fs_type(path):
    """statfs(2) f_type of the filesystem holding ``path``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def mounted_fs_type(path):
    """The fstype column of /proc/self/mountinfo for the mount at ``path``, or None."""
    path = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == path:
                found = right.split()[0]  # the last one stacked there wins
    return found


def _run(cmd, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    if check and r.returncode != 0:
        raise RigError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class NetDir:
    """One fresh directory of the export, as seen from each side."""

    def __init__(self, name, backing, a, b):
        self.name, self.backing, self.a, self.b = name, backing, a, b

    def __repr__(self):
        return f"NetDir({self.name!r})"


class NetFSRig:
    """One export mounted on two nodes; a context manager whose exit tears it all down."""

    def __init__(self, options=(), latency_ms=0.0, use_netns=True):
        """``options``: extra sshfs -o options for both mounts (("direct_io",), ("cache=no",)).
        ``latency_ms``: delay per filesystem operation on the server side (0: none).
        ``use_netns=False``: both nodes over 127.0.0.1, as where namespaces are refused."""
        reason = unavailable_reason(latency=latency_ms > 0)
        if reason:
            raise RigError(reason)
        self.options = tuple(options)
        self.latency_ms = float(latency_ms)
        self.use_netns = use_netns
        self.owner_pid = os.getpid()
        self._netns = []          # namespaces created, deleted at teardown
        self._links = []          # host-side veth ends (go with their namespace)
        self._sshfs = []          # (mount point, Popen) of each node
        self._latency = None      # (mount point, Popen) of the latency layer
        self._sshd_pid_file = None
        self._closed = False
        self.root = tempfile.mkdtemp(prefix="ffrecord-netfs-")
        with _live_lock:
            _live_rigs.append(self)
        _install_exit_hooks()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ---- set-up --------------------------------------------------------

    def _start(self):
        r = self.root
        self.raw = os.path.join(r, "export")
        self.node_a = os.path.join(r, "nodeA")
        self.node_b = os.path.join(r, "nodeB")
        for d in (self.raw, self.node_a, self.node_b, "/run/sshd"):
            os.makedirs(d, exist_ok=True)
        self.backing = self.raw
        if self.latency_ms > 0:
            self.backing = os.path.join(r, "delayed")
            os.makedirs(self.backing)
            self._start_latency(self.raw, self.backing)

        self.key = os.path.join(r, "id")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(r, "hostkey")])
        shutil.copy(self.key + ".pub", os.path.join(r, "authorized_keys"))

        self.namespaces = self.use_netns and self._make_namespaces()
        if self.namespaces:
            ns_a, ns_b = self._netns
            addr_a, addr_b = self._server_addrs
            targets = [(self.node_a, ns_a, addr_a), (self.node_b, ns_b, addr_b)]
        else:
            targets = [(self.node_a, None, "127.0.0.1"), (self.node_b, None, "127.0.0.1")]
        self._start_sshd([t[2] for t in targets])
        for mnt, ns, addr in targets:
            self._mount(mnt, ns, addr)

    def _tag(self):
        """A short hex tag from the pid and a per-process serial (veth names <= 15 chars)."""
        _serial[0] += 1
        return f"{(os.getpid() * 16 + _serial[0]) & 0xFFFFFF:06x}"

    def _make_namespaces(self):
        """Two namespaces, each joined to the host by a veth pair in its own /24.
        Returns False when the kernel refuses network namespaces here."""
        existing = set(_run(["ip", "netns", "list"], check=False).stdout.split())
        addrs = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
        routes = _run(["ip", "-4", "route", "show"], check=False).stdout
        for _attempt in range(64):
            tag = self._tag()
            names = [f"nfr{tag}a", f"nfr{tag}b"]
            n = int(tag, 16) % (32 * 128)
            nets = [f"10.{200 + n // 128}.{(n % 128) * 2 + i}" for i in (0, 1)]
            if any(x in existing for x in names):
                continue
            if any(f" {net}." in addrs or f"{net}.0/24" in routes for net in nets):
                continue
            if any(os.path.exists(f"/sys/class/net/{x}0") for x in names):
                continue
            break
        else:
            raise RigError("no free namespace names or subnets for the rig")

        first = _run(["ip", "netns", "add", names[0]], check=False)
        if first.returncode != 0:
            if "File exists" in first.stderr:
                raise RigError(f"network namespace {names[0]} appeared meanwhile: {first.stderr.strip()}")
            return False  # namespaces refused here: fall back to loopback
        self._netns.append(names[0])
        _run(["ip", "netns", "add", names[1]])
        self._netns.append(names[1])
        self._server_addrs = []
        for ns, net in zip(names, nets):
            host, peer = ns + "0", ns + "1"
            _run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
            self._links.append(host)
            _run(["ip", "link", "set", peer, "netns", ns])
            _run(["ip", "addr", "add", f"{net}.1/24", "dev", host])
            _run(["ip", "link", "set", host, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", peer])
            _run(["ip", "-n", ns, "link", "set", peer, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self._server_addrs.append(f"{net}.1")
        return True

    def _start_sshd(self, listen):
        r = self.root
        self._sshd_pid_file = os.path.join(r, "sshd.pid")
        log = os.path.join(r, "sshd.log")
        for attempt in range(32):
            port = 30000 + (os.getpid() * 7 + _serial[0] * 131 + attempt * 977) % 30000
            if not _port_free(port):
                continue
            config = os.path.join(r, "sshd_config")
            with open(config, "w") as f:
                f.write(f"Port {port}\n")
                for a in dict.fromkeys(listen):
                    f.write(f"ListenAddress {a}\n")
                f.write(
                    f"HostKey {r}/hostkey\nPidFile {self._sshd_pid_file}\n"
                    f"AuthorizedKeysFile {r}/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                    "MaxStartups 64\nMaxSessions 64\nSubsystem sftp internal-sftp\n")
            res = _run([_sshd_path(), "-f", config, "-E", log], check=False)
            if res.returncode == 0 and self._wait_for(lambda: os.path.exists(self._sshd_pid_file)
                                                      and os.path.getsize(self._sshd_pid_file) > 0):
                self.port = port
                return
            if self._sshd_pid() is not None:  # started but not seen in time
                self._kill_sshd()
        detail = open(log).read().strip() if os.path.exists(log) else res.stderr.strip()
        raise RigError(f"sshd would not start: {detail}")

    def _mount(self, mnt, ns, addr):
        opts = ",".join([
            f"IdentityFile={self.key}", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR", f"port={self.port}", "reconnect", "ServerAliveInterval=15",
            *self.options])
        cmd = ["sshfs", f"root@{addr}:{self.backing}", mnt, "-f", "-F", "/dev/null", "-o", opts]
        if ns:
            cmd = ["nsenter", f"--net=/run/netns/{ns}"] + cmd
        err_path = os.path.join(self.root, f"sshfs-{os.path.basename(mnt)}.err")
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True)
        self._sshfs.append((mnt, proc))
        if not self._wait_for(lambda: proc.poll() is not None or mounted_fs_type(mnt) is not None,
                              MOUNT_TIMEOUT_S) or proc.poll() is not None:
            with open(err_path) as f:
                detail = f.read().strip() or f"exit status {proc.poll()}"
            raise RigError(f"sshfs mount of {mnt} failed: {detail}")

    def _start_latency(self, src, mnt):
        err_path = os.path.join(self.root, "latency_fs.err")
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, LATENCY_FS, src, mnt, "--delay-ms", str(self.latency_ms)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        self._latency = (mnt, proc)
        if not self._wait_for(lambda: proc.poll() is not None or mounted_fs_type(mnt) is not None,
                              MOUNT_TIMEOUT_S) or proc.poll() is not None:
            with open(err_path) as f:
                raise RigError(f"latency layer at {mnt} failed: {f.read().strip()}")

    @staticmethod
    def _wait_for(cond, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.02)
        return cond()

    # ---- use -----------------------------------------------------------

    def new_dir(self, prefix="t") -> NetDir:
        """A fresh, empty subdirectory created on the server side, with its path on each node.
        Fresh names sidestep sshfs's attribute and directory caches."""
        path = tempfile.mkdtemp(prefix=prefix + "-", dir=self.backing)
        name = os.path.basename(path)
        return NetDir(name, path, os.path.join(self.node_a, name), os.path.join(self.node_b, name))

    @property
    def client_pids(self):
        """The sshfs process of node A and of node B."""
        return tuple(proc.pid for _, proc in self._sshfs)

    @property
    def network_namespaces(self):
        """The namespaces the nodes run in (empty when both use loopback)."""
        return tuple(self._netns)

    @property
    def sshd_pid(self):
        return self._sshd_pid()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- teardown ------------------------------------------------------

    def _sshd_pid(self):
        try:
            with open(self._sshd_pid_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError, TypeError):
            return None

    def _kill_sshd(self):
        pid = self._sshd_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        # the listener's connections (its children) end with their clients' unmounts
        self._wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5.0)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _unmount(mnt, proc):
        if mounted_fs_type(mnt) is not None:
            if _run(["fusermount3", "-u", mnt], check=False).returncode != 0:
                _run(["fusermount3", "-u", "-z", mnt], check=False)  # busy: detach lazily
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self):
        """Tears everything down; safe to call twice and after a failed start."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        self._closed = True
        try:
            for mnt, proc in self._sshfs:
                self._unmount(mnt, proc)
            self._kill_sshd()
            if self._latency is not None:
                self._unmount(*self._latency)
            for ns in self._netns:
                _run(["ip", "netns", "del", ns], check=False)  # its veth pair goes with it
            for link in self._links:
                if os.path.exists(f"/sys/class/net/{link}"):
                    _run(["ip", "link", "del", link], check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            with _live_lock:
                if self in _live_rigs:
                    _live_rigs.remove(self)


def _close_all():
    for rig in list(_live_rigs):
        rig.close()


_hooks_installed = [False]


def _install_exit_hooks():
    """atexit for normal exits and Ctrl-C; SIGTERM turned into SystemExit so atexit runs too."""
    if _hooks_installed[0]:
        return
    _hooks_installed[0] = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        def on_term(signum, frame):
            _close_all()
            raise SystemExit(128 + signum)
        signal.signal(signal.SIGTERM, on_term)
