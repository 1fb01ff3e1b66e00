"""Fuzzing the parser: random and mutated files never crash the process."""

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffrecord

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import ffr_forge  # noqa: E402
VECTOR = open(os.path.join(HERE, "data", "vector_v2.ffr"), "rb").read()


def open_and_read_all(path):
    """Either the file reads (every record) or a data error is raised."""
    try:
        r = ffrecord.FileReader(path)
    except ffrecord.FFRecordError:
        return "rejected"
    try:
        n = r.n
        if n <= 1024 and int(r.lengths(range(n)).sum() if n else 0) <= (1 << 24):
            r.read(range(n))
    except ffrecord.FFRecordError:
        return "bad record"
    return "ok"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VECTOR) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, len(VECTOR))),
)
def test_mutated_vector(tmp_path, edits, cut):
    data = bytearray(VECTOR)
    for pos, value in edits:
        data[pos] = value
    if cut is not None:
        data = data[:cut]
    p = tmp_path / "m.ffr"
    p.write_bytes(bytes(data))
    assert open_and_read_all(p) in ("ok", "rejected", "bad record")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_random_bytes(tmp_path, blob):
    p = tmp_path / "r.ffr"
    p.write_bytes(blob)
    assert open_and_read_all(p) in ("ok", "rejected", "bad record")


def _run_harness(tmp_path, *args, seconds=4):
    pytest.importorskip("atheris")
    harness = os.path.join(HERE, "..", "tools", "fuzz_open.py")
    res = subprocess.run(
        [sys.executable, harness, *args, f"-max_total_time={seconds}", "-rss_limit_mb=4096", "-timeout=20"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Done" in res.stderr or "DONE" in res.stderr
    assert not list(tmp_path.glob("crash-*"))


@pytest.mark.parametrize("mode", [
    [],
    ["--structure"],
    ["--target=checkpoint"],
    ["--target=checkpoint", "--structure"],
], ids=["ffr", "ffr-forged", "checkpoint", "checkpoint-forged"])
def test_atheris_harness_runs_clean_for_a_few_seconds(tmp_path, mode):
    _run_harness(tmp_path, *mode)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["offset", "length", "flags", "num_records", "index_offset", "meta_length", "dict_length",
                           "keys_length"]),
    value=st.one_of(st.sampled_from([0, 31, 32, 40, 96, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]),
                    st.integers(0, (1 << 64) - 1)),
    which=st.integers(0, 2),
)
def test_forged_fields_with_recomputed_checksums_are_rejected_or_read(tmp_path, field, value, which):
    # Every checksum is recomputed, so only the structural checks stand between the field and the reader.
    f = ffr_forge.parse(VECTOR)
    if field in ("offset", "length", "flags"):
        f.entries[which][("offset", "length", "crc", "flags").index(field)] = value
        f.reseal(which)
    else:
        f.footer[field] = value
    p = tmp_path / "forged.ffr"
    p.write_bytes(f.build())
    assert open_and_read_all(p) in ("ok", "rejected", "bad record")
