"""The two-node network filesystem rig itself: two real FUSE clients of one export,
with caches of their own, that leave nothing behind."""

import os
import signal
import subprocess
import sys

import pytest

import netfs_rig
from netfs_rig import FUSE_SUPER_MAGIC, NetFSRig, RigError

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module", autouse=True)
def _needs_rig():
    reason = netfs_rig.unavailable_reason()
    if reason:
        pytest.skip(reason)


def netns_names():
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def mounted(path):
    return netfs_rig.mounted_fs_type(path) is not None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def snapshot(rig):
    """What a torn-down rig must no longer have."""
    return {"root": rig.root, "mounts": [rig.node_a, rig.node_b], "netns": rig.network_namespaces,
            "links": [ns + "0" for ns in rig.network_namespaces],
            "pids": [rig.sshd_pid, *rig.client_pids]}


def assert_gone(snap):
    for m in snap["mounts"]:
        assert not mounted(m), m
    assert not os.path.exists(snap["root"])
    assert not set(snap["netns"]) & netns_names()
    for link in snap["links"]:
        assert not os.path.exists(f"/sys/class/net/{link}")
    for pid in snap["pids"]:
        assert pid is not None and not alive(pid), pid


def test_a_file_written_on_node_a_is_read_on_node_b(netfs):
    d = netfs.new_dir()
    data = os.urandom(200_000)
    with open(os.path.join(d.a, "f.bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(d.b, "f.bin"), "rb") as f:
        assert f.read() == data
    with open(os.path.join(d.backing, "f.bin"), "rb") as f:
        assert f.read() == data
    assert os.listdir(d.b) == ["f.bin"]


def test_new_dirs_are_fresh_and_visible_on_both_nodes(netfs):
    d1, d2 = netfs.new_dir("x"), netfs.new_dir("x")
    assert d1.name != d2.name and d1.name.startswith("x-")
    for d in (d1, d2):
        assert os.path.isdir(d.a) and os.path.isdir(d.b) and os.listdir(d.a) == []


def test_nodes_are_distinct_fuse_mounts_in_their_own_network_namespaces(netfs):
    assert netfs.node_a != netfs.node_b
    for node in (netfs.node_a, netfs.node_b):
        assert netfs_rig.fs_type(node) == FUSE_SUPER_MAGIC
        assert netfs_rig.mounted_fs_type(node) == "fuse.sshfs"
    assert os.stat(netfs.node_a).st_dev != os.stat(netfs.node_b).st_dev
    assert netfs.namespaces and len(netfs.network_namespaces) == 2
    nets = {os.readlink(f"/proc/{pid}/ns/net") for pid in netfs.client_pids}
    assert len(nets) == 2 and os.readlink("/proc/self/ns/net") not in nets


def test_each_node_has_its_own_attribute_cache(netfs):
    d = netfs.new_dir()
    with open(os.path.join(d.a, "grow"), "wb") as f:
        f.write(b"x" * 10)
    assert os.stat(os.path.join(d.b, "grow")).st_size == 10  # node B caches the size now
    with open(os.path.join(d.a, "grow"), "ab") as f:
        f.write(b"y" * 90)
    assert os.stat(os.path.join(d.a, "grow")).st_size == 100
    assert os.stat(os.path.join(d.backing, "grow")).st_size == 100
    assert os.stat(os.path.join(d.b, "grow")).st_size == 10  # a stale cache: a separate client


def test_cache_no_sees_changes_at_once(netfs_cache_no):
    d = netfs_cache_no.new_dir()
    with open(os.path.join(d.a, "grow"), "wb") as f:
        f.write(b"x" * 10)
    assert os.stat(os.path.join(d.b, "grow")).st_size == 10
    with open(os.path.join(d.a, "grow"), "ab") as f:
        f.write(b"y" * 90)
    assert os.stat(os.path.join(d.b, "grow")).st_size == 100


def test_direct_io_mount_refuses_shared_mappings(netfs_direct_io):
    import mmap

    d = netfs_direct_io.new_dir()
    with open(os.path.join(d.backing, "f"), "wb") as f:
        f.write(b"z" * 8192)
    with open(os.path.join(d.b, "f"), "rb") as f:
        assert f.read() == b"z" * 8192
        with pytest.raises(OSError) as e:
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    assert e.value.errno == 19  # ENODEV


def test_teardown_removes_mounts_namespaces_processes_and_directories():
    rig = NetFSRig()
    snap = snapshot(rig)
    assert all(alive(p) for p in snap["pids"]) and os.path.isdir(snap["root"])
    assert set(snap["netns"]) <= netns_names()
    rig.close()
    assert_gone(snap)
    rig.close()  # twice is harmless


def test_loopback_fallback_still_gives_two_clients():
    with NetFSRig(use_netns=False) as rig:
        assert not rig.namespaces and rig.network_namespaces == ()
        d = rig.new_dir()
        with open(os.path.join(d.a, "f"), "wb") as f:
            f.write(b"loop")
        with open(os.path.join(d.b, "f"), "rb") as f:
            assert f.read() == b"loop"
        assert os.stat(rig.node_a).st_dev != os.stat(rig.node_b).st_dev
        snap = snapshot(rig)
    assert_gone(snap)


def test_a_failed_mount_raises_with_sshfs_stderr_and_leaves_nothing():
    started = []

    class Probe(NetFSRig):
        def _start(self):
            started.append(self)
            super()._start()

    with pytest.raises(RigError, match=r"sshfs mount of .*nodeA failed: .*no_such_option"):
        Probe(options=("no_such_option",))
    (rig,) = started
    assert not os.path.exists(rig.root)
    assert not set(rig.network_namespaces) & netns_names()
    assert rig.sshd_pid is None or not alive(rig.sshd_pid)
    for pid in rig.client_pids:
        assert not alive(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_process_tears_its_rig_down(sig):
    script = (
        "import json, signal, sys, time\n"
        # A shell without job control starts background jobs with SIGINT ignored, and
        # Python keeps an ignored SIGINT: restore Ctrl-C's usual meaning for this test.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import netfs_rig\n"
        "rig = netfs_rig.NetFSRig()\n"
        "print(json.dumps({'root': rig.root, 'mounts': [rig.node_a, rig.node_b],"
        " 'netns': rig.network_namespaces, 'links': [n + '0' for n in rig.network_namespaces],"
        " 'pids': [rig.sshd_pid, *rig.client_pids]}), flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        import json

        snap = json.loads(proc.stdout.readline())
        assert all(mounted(m) for m in snap["mounts"])
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert_gone(snap)


def test_latency_layer_serves_the_right_bytes():
    reason = netfs_rig.unavailable_reason(latency=True)
    if reason:
        pytest.skip(reason)
    with NetFSRig(latency_ms=0.5) as rig:
        assert netfs_rig.fs_type(rig.backing) == FUSE_SUPER_MAGIC  # the export is the delayed layer
        d = rig.new_dir()
        data = os.urandom(300_000)
        with open(os.path.join(d.a, "f.bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(d.b, "f.bin"), "rb") as f:
            f.seek(123_457)
            assert f.read(4096) == data[123_457:123_457 + 4096]
        with open(os.path.join(rig.raw, d.name, "f.bin"), "rb") as f:
            assert f.read() == data  # it passed through to the real files
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(d.b, "missing"))
        snap = snapshot(rig)
        layer = rig.backing
    assert_gone(snap)
    assert not mounted(layer)
