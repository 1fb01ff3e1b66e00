"""`ffrecord bench` reports throughput for a real dataset and fails cleanly on bad input."""

import json
import subprocess
import sys

from damage import write_file


def run(*args):
    return subprocess.run([sys.executable, "-m", "ffrecord.cli", *args], capture_output=True, text=True)


def test_bench_reports_records_per_second(tmp_path):
    p = write_file(tmp_path / "b.ffr", [bytes([i % 256]) * 100 for i in range(500)])
    res = run("bench", str(p), "--seconds", "0.4", "--batch-size", "32", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["records"] == 500 and out["batch_size"] == 32
    assert out["read_records_per_s"] > 0 and out["prefetch_records_per_s"] > 0
    assert out["engine"] in ("io_uring", "threads", "pread")
    assert out["mapped_batches"] + out["engine_batches"] >= 2  # at least one batch per pass
    text = run("bench", str(p), "--seconds", "0.2")
    assert text.returncode == 0 and "records/s" in text.stdout and "prefetch" in text.stdout
    assert "copied from the page cache" in text.stdout


def test_bench_on_a_bad_file_is_a_one_line_error(tmp_path):
    p = tmp_path / "junk.ffr"
    p.write_bytes(b"not a record file at all")
    res = run("bench", str(p), "--seconds", "0.1")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "not a record file" in res.stderr
    missing = run("bench", str(tmp_path / "missing.ffr"))  # a missing path is a usage error, as everywhere
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
