"""Forged files (every checksum recomputed) and forged checkpoint manifests:
each gives a typed error naming the file, never a stray exception type."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck
from ffrecord.checkpoint.layout import MANIFEST_NAME

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import ffr_forge  # noqa: E402

zstd = pytest.importorskip("zstandard")
CLI = [sys.executable, "-m", "ffrecord.cli"]


def forged_file(path, records=(b"abc",), flags=0, **parts):
    f = ffr_forge.Forged(**parts)
    for r in records:
        f.add(r, flags)
    path.write_bytes(f.build())
    return path


# ---- 1. deeply nested metadata ----------------------------------------------------------------

@pytest.mark.parametrize("meta", [b"[" * 100000, b'{"a":' * 50000 + b"1" + b"}" * 50000])
def test_deeply_nested_metadata_is_a_format_error(tmp_path, meta):
    p = forged_file(tmp_path / "deep.ffr", metadata=meta)
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match="deep.ffr: metadata block is not valid JSON"):
            r.metadata
        assert bytes(r.read_one(0)) == b"abc"  # the records stay readable


def test_validate_and_info_report_deep_metadata_without_a_traceback(tmp_path):
    p = forged_file(tmp_path / "deep.ffr", metadata=b"[" * 100000)
    for cmd in (["validate", str(p)], ["info", str(p)]):
        res = subprocess.run(CLI + cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, (cmd, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
        assert "deep.ffr" in res.stdout + res.stderr


# ---- 2. a damaged zstd dictionary block --------------------------------------------------------

def test_bad_dictionary_is_a_format_error_on_every_read_and_in_validate(tmp_path):
    samples = [bytes([i % 7]) * 200 + str(i).encode() for i in range(400)]
    good = tmp_path / "good.ffr"
    dictionary = ffrecord.codec.train_dictionary(samples, size=4096)
    with ffrecord.FileWriter(good, compression="zstd", zstd_dict=dictionary) as w:
        w.write_batch(samples[:4])
    forged = ffr_forge.parse(good.read_bytes())
    # A dictionary with a valid magic and garbage tables.
    forged.dictionary = forged.dictionary[:8] + bytes(range(256)) * (len(forged.dictionary) // 256)
    bad = tmp_path / "bad.ffr"
    bad.write_bytes(forged.build())
    with ffrecord.FileReader(bad) as r:
        for _ in range(2):
            with pytest.raises(ffrecord.FormatError, match=r"bad.ffr: cannot decompress record 0"):
                r.read_one(0)
        with pytest.raises(ffrecord.FormatError, match="bad.ffr"):
            r.read([1, 2])
        with pytest.raises(ffrecord.FormatError, match="bad.ffr"):
            list(r.prefetch([[0], [1]]))
    res = subprocess.run(CLI + ["validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "bad.ffr" in res.stdout + res.stderr


# ---- 6. a zstd frame that declares a huge size ------------------------------------------------

def _frame_declaring(content_size, payload=b"x"):
    # Single-segment frame header: magic, descriptor (8-byte size), size, then one raw last block.
    block = struct.pack("<I", (len(payload) << 3) | 1)[:3]
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", content_size) + block + payload


@pytest.mark.parametrize("declared", [400 << 20, (1 << 63) + 5])
def test_forged_content_size_is_refused_before_allocating(tmp_path, declared):
    p = forged_file(tmp_path / "huge.ffr", records=[_frame_declaring(declared)], flags=1)
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match=r"huge.ffr: cannot decompress record 0: .*declares"):
            r.read_one(0)


def test_forged_content_size_does_not_grow_the_process(tmp_path):
    # The peak resident size of a process that reads the forged record stays far below
    # the 400 MiB it declares (memory, not time: deterministic).
    p = forged_file(tmp_path / "huge.ffr", records=[_frame_declaring(400 << 20)], flags=1)
    code = (
        "import resource, sys, ffrecord\n"
        "r = ffrecord.FileReader(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    r.read_one(0)\nexcept ffrecord.FormatError:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) < 100 * 1024  # KiB


def test_frames_within_the_bound_still_decode(tmp_path):
    # The bound is a property of zstd, not of our writer: a maximally compressible record decodes.
    data = b"\0" * (8 << 20)
    p = tmp_path / "zeros.ffr"
    with ffrecord.FileWriter(p, compression="zstd:19") as w:
        w.write_one(data)
        w.write_one(b"")
    with ffrecord.FileReader(p) as r:
        assert r.lengths([0])[0] < 1024
        assert bytes(r.read_one(0)) == data and bytes(r.read_one(1)) == b""
    frame = zstd.ZstdCompressor(write_content_size=False).compress(b"y" * 100000)
    p2 = forged_file(tmp_path / "nosize.ffr", records=[frame], flags=1)
    with ffrecord.FileReader(p2) as r:
        assert bytes(r.read_one(0)) == b"y" * 100000


def test_frame_without_size_asking_for_a_huge_window_is_refused(tmp_path):
    # Descriptor 0x00: no size, window descriptor byte follows (exponent 31 -> 2 GiB window).
    frame = b"\x28\xb5\x2f\xfd\x00" + bytes([(31 - 10) << 3]) + struct.pack("<I", (1 << 3) | 1)[:3] + b"z"
    p = forged_file(tmp_path / "window.ffr", records=[frame], flags=1)
    with ffrecord.FileReader(p) as r:
        with pytest.raises(ffrecord.FormatError, match="window.ffr: cannot decompress record 0: .*window"):
            r.read_one(0)


# ---- 3, 4. forged checkpoint manifests --------------------------------------------------------

def _manifest(directory):
    with ffrecord.FileReader(os.path.join(directory, MANIFEST_NAME)) as r:
        return json.loads(r.read_one(0).tobytes())


def _rewrite(directory, manifest):
    with ffrecord.FileWriter(os.path.join(directory, MANIFEST_NAME)) as w:
        w.write_one(json.dumps(manifest).encode())


@pytest.mark.parametrize("device", ["", "garbage", "cuda:x", "meta", 7, None, "c" * 100])
@pytest.mark.parametrize("mmap", [False, True])
def test_bad_device_field_is_a_format_error(tmp_path, device, mmap):
    ck.save({"w": torch.arange(6.0)}, tmp_path / "c")
    m = _manifest(tmp_path / "c")
    m["arrays"][0]["device"] = device
    _rewrite(tmp_path / "c", m)
    with pytest.raises(ffrecord.FormatError, match=r"c: malformed checkpoint manifest: arrays\[0\]: bad device"):
        ck.load(tmp_path / "c", mmap=mmap)


@pytest.mark.parametrize("device", ["mps", "privateuseone", "xla:0", "hpu"])
def test_device_not_available_here_names_the_tensor_and_the_way_out(tmp_path, device):
    ck.save({"w": torch.arange(6.0)}, tmp_path / "c")
    m = _manifest(tmp_path / "c")
    m["arrays"][0]["device"] = device
    _rewrite(tmp_path / "c", m)
    try:
        torch.empty(1).to(device)
    except Exception:
        pass
    else:
        pytest.skip(f"{device} is available on this machine")
    with pytest.raises(RuntimeError, match=rf"c: tensor \['w'\] was saved on {device}.*map_location='cpu'"):
        ck.load(tmp_path / "c")
    out = ck.load(tmp_path / "c", map_location="cpu")
    assert torch.equal(out["w"], torch.arange(6.0))


@pytest.mark.parametrize("field,value", [(2, 1 << 64), (3, 1 << 64), (2, (1 << 64) - 1), (1, 1 << 64),
                                         (2, 1 << 63), (3, (1 << 63) - 1)])
@pytest.mark.parametrize("mmap", [False, True])
def test_part_numbers_beyond_64_bits_are_a_format_error(tmp_path, field, value, mmap):
    ck.save({"w": torch.arange(6.0)}, tmp_path / "c")
    m = _manifest(tmp_path / "c")
    m["arrays"][0]["parts"][0][field] = value
    if field == 3:
        m["arrays"][0]["nbytes"] = value
        m["arrays"][0]["shape"] = [value // 4]
    _rewrite(tmp_path / "c", m)
    with pytest.raises(ffrecord.FormatError, match="c: malformed checkpoint manifest"):
        ck.load(tmp_path / "c", mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_empty_arrays_load_with_and_without_mmap(tmp_path, mmap):
    obj = {"e": torch.empty(0, 3), "n": np.zeros((0,), np.int64), "x": torch.arange(3)}
    ck.save(obj, tmp_path / "c")
    m = _manifest(tmp_path / "c")
    for e in m["arrays"]:
        if e["nbytes"] == 0:  # a zero-length part, as another writer may store it
            e["parts"] = [[0, 0, 0, 0, 0]]
    _rewrite(tmp_path / "c", m)
    out = ck.load(tmp_path / "c", mmap=mmap)
    assert out["e"].shape == (0, 3) and out["n"].shape == (0,)
    assert torch.equal(out["x"], torch.arange(3))
