"""`ffrecord validate`: sound data passes, every kind of damage is found and named.

Damage is done to real files on purpose: a flipped byte inside a record, a
truncated shard, a shard swapped for another valid file, a missing shard, a
broken index.json. `--quarantine` then lets readers skip what is bad.
"""

import json
import os
import warnings

import numpy as np
import pytest

import ffrecord
from ffrecord import quarantine
from ffrecord.cli import main
from ffrecord.tools.validate import validate

GOLDEN_V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "v1")


def cli(*args):
    return main([str(a) for a in args])


def make_dataset(tmp_path, n=60, per_shard=20, extra=()):
    """A converted dataset of `n` distinct random records keyed 'r000'.. (via --from folder)."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(11)
    records = []
    for i in range(n):
        data = rng.bytes(int(rng.integers(200, 2000)))
        (src / f"r{i:03d}").write_bytes(data)
        records.append(data)
    dst = tmp_path / "ds"
    assert cli("convert", src, dst, "--records-per-shard", per_shard, "-q", *extra) == 0
    return dst, records


def flip_inside_record(path, record, at=17):
    """Flips one bit inside `record`'s bytes in the file `path`."""
    data = bytearray(open(path, "rb").read())
    pos = data.find(record)
    assert pos > 0
    data[pos + at] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)


def test_sound_dataset_passes(tmp_path, capsys):
    dst, _ = make_dataset(tmp_path)
    capsys.readouterr()
    assert cli("validate", dst) == 0
    out = capsys.readouterr().out
    assert "checked 3 file(s), 60 records" in out and "all sound" in out
    assert cli("validate", *sorted(dst.glob("*.ffr")), "--workers", 2, "-q") == 0


def test_flipped_byte_names_file_record_and_key(tmp_path, capsys):
    dst, records = make_dataset(tmp_path)
    shard = dst / "shard-00001-of-00003.ffr"
    flip_inside_record(shard, records[27])  # record 7 of the second shard
    capsys.readouterr()
    assert cli("validate", dst) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1
    assert str(shard) in bad[0] and "record 7" in bad[0] and "'r027'" in bad[0]
    assert "checksum" in bad[0]
    assert "1 problem(s)" in out


def test_truncated_shard_is_found(tmp_path, capsys):
    dst, _ = make_dataset(tmp_path)
    shard = dst / "shard-00002-of-00003.ffr"
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 50)
    capsys.readouterr()
    assert cli("validate", dst, "-q") == 1
    out = capsys.readouterr().out
    assert out.count("BAD") == 1 and str(shard) in out and "truncated" in out


def test_many_bad_records_found_by_several_workers(tmp_path):
    dst, records = make_dataset(tmp_path, n=90, per_shard=30)
    bad = {3, 31, 32, 59, 88}
    for i in bad:
        flip_inside_record(dst / f"shard-{i // 30:05d}-of-00003.ffr", records[i], at=i % 100)
    result = validate([dst], workers=2)
    assert not result.ok and result.records == 90
    assert {(p.path.rsplit("/", 1)[-1], p.index, p.key) for p in result.problems} == {
        (f"shard-{i // 30:05d}-of-00003.ffr", i % 30, f"r{i:03d}") for i in bad}


def test_one_big_file_is_split_across_workers(tmp_path, monkeypatch):
    import ffrecord.tools.validate as validate_module

    # "Big" (worth splitting across workers) from 16 KiB on: the file is read as two ranges.
    monkeypatch.setattr(validate_module, "BATCH_BYTES", 4096)
    rng = np.random.default_rng(5)
    records = [rng.bytes(1000) for _ in range(200)]
    with ffrecord.FileWriter(tmp_path / "one.ffr") as w:
        for rec in records:
            w.write_one(rec)
    flip_inside_record(tmp_path / "one.ffr", records[10])
    flip_inside_record(tmp_path / "one.ffr", records[190])
    result = validate([tmp_path / "one.ffr"], workers=2)
    assert result.records == 200 and [p.index for p in result.problems] == [10, 190]


def test_quarantine_lets_readers_skip_bad_records(tmp_path, capsys):
    dst, records = make_dataset(tmp_path)
    flip_inside_record(dst / "shard-00000-of-00003.ffr", records[5])
    flip_inside_record(dst / "shard-00002-of-00003.ffr", records[44])
    with ffrecord.FileReader(dst) as r:  # without quarantine, reading the bad record fails
        with pytest.raises(ffrecord.ChecksumError):
            r.read_one(44)
    capsys.readouterr()
    assert cli("validate", dst, "--quarantine") == 1
    reports = os.listdir(dst / "quarantine.d")
    assert len(reports) == 1 and f"quarantine report: {dst / 'quarantine.d' / reports[0]}" in capsys.readouterr().out
    doc = quarantine.load(dst)
    assert [(e["file"], e["index"], e["key"], e["reason"]) for e in doc.records] == [
        ("shard-00000-of-00003.ffr", 5, "r005", "checksum"), ("shard-00002-of-00003.ffr", 4, "r044", "checksum")]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = ffrecord.FileReader(dst)
    with r:
        assert len([w for w in caught if "quarantine" in str(w.message)]) == 1
        assert len(r) == 58
        good = [rec for i, rec in enumerate(records) if i not in (5, 44)]
        assert [a.tobytes() for a in r.read(range(len(r)))] == good
        with pytest.raises(KeyError):
            r.find("r044")

    # A second run finds the same records and leaves the same quarantine, in one report.
    assert cli("validate", dst, "--quarantine", "-q") == 1
    assert quarantine.load(dst).records == doc.records
    assert len(os.listdir(dst / "quarantine.d")) == 1

    # Converting the dataset again leaves the quarantined records out: a clean copy.
    capsys.readouterr()
    assert cli("convert", dst, tmp_path / "clean", "-q") == 0
    err = capsys.readouterr().err
    assert err.strip() == f"ffrecord: warning: {dst}: skipping 2 quarantined record(s) listed in its quarantine"
    assert cli("validate", tmp_path / "clean", "-q") == 0
    with ffrecord.FileReader(tmp_path / "clean") as clean:
        assert [clean.read_one(i).tobytes() for i in range(len(clean))] == good
        assert clean.find("r045") == 43


def test_quarantine_from_two_ranks_merges(tmp_path):
    dst, records = make_dataset(tmp_path)
    flip_inside_record(dst / "shard-00000-of-00003.ffr", records[1])
    flip_inside_record(dst / "shard-00001-of-00003.ffr", records[22])
    r0 = validate([dst], rank=0, world_size=2, quarantine=True)
    r1 = validate([dst], rank=1, world_size=2, quarantine=True)
    assert r0.files + r1.files == 3
    assert {p.index for p in r0.problems} == {1} and {p.index for p in r1.problems} == {2}
    assert len(r0.quarantine_files) == len(r1.quarantine_files) == 1
    entries = quarantine.load(dst).records
    assert [(e["file"], e["index"]) for e in entries] == [("shard-00000-of-00003.ffr", 1),
                                                          ("shard-00001-of-00003.ffr", 2)]


def test_manifest_mismatches_are_found(tmp_path, capsys):
    dst, _ = make_dataset(tmp_path)
    # Shard 1 replaced by another valid record file: it opens, but is not the listed one.
    os.unlink(dst / "shard-00001-of-00003.ffr")
    with ffrecord.FileWriter(dst / "shard-00001-of-00003.ffr") as w:
        for i in range(20):
            w.write_one(b"%d" % i)
    os.unlink(dst / "shard-00002-of-00003.ffr")
    capsys.readouterr()
    assert cli("validate", dst, "-q") == 1
    out = capsys.readouterr().out
    assert "shard-00002-of-00003.ffr: missing (listed in index.json)" in out
    assert "shard-00001-of-00003.ffr: is" in out and "index.json says" in out


def test_shard_crc_differs_from_manifest(tmp_path, capsys):
    dst, _ = make_dataset(tmp_path)
    doc = json.loads((dst / "index.json").read_text())
    doc["shards"][0]["crc32c"] = "00000000"
    (dst / "index.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert cli("validate", dst, "-q") == 1
    assert "differs from 00000000 in index.json" in capsys.readouterr().out
    assert cli("validate", dst, "-q", "--no-shard-crc") == 0


def test_broken_manifest_is_reported_and_shards_still_checked(tmp_path, capsys):
    dst, records = make_dataset(tmp_path)
    (dst / "index.json").write_text("{not json")
    flip_inside_record(dst / "shard-00001-of-00003.ffr", records[30])
    capsys.readouterr()
    assert cli("validate", dst, "-q") == 1
    out = capsys.readouterr().out
    assert "index.json: not valid JSON" in out and "record 10" in out


def test_compressed_dataset_validates_and_damage_is_found(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"i": i, "pad": "x" * (i % 50)}) + "\n" for i in range(300)))
    dst = tmp_path / "ds"
    assert cli("convert", src, dst, "--compression", "zstd", "--records-per-shard", 100, "-q") == 0
    assert cli("validate", dst, "-q") == 0
    shard = dst / "shard-00001-of-00003.ffr"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # inside the records area of a compressed shard
    shard.write_bytes(data)
    capsys.readouterr()
    assert cli("validate", dst, "-q", "--no-shard-crc") == 1
    assert "record" in capsys.readouterr().out


def test_v1_files_validate(tmp_path, capsys):
    assert cli("validate", os.path.join(GOLDEN_V1, "small.ffr"), os.path.join(GOLDEN_V1, "pickled.ffr"), "-q") == 0
    data = bytearray(open(os.path.join(GOLDEN_V1, "small.ffr"), "rb").read())
    data[-10] ^= 1  # inside the last record
    (tmp_path / "small.ffr").write_bytes(data)
    capsys.readouterr()
    assert cli("validate", tmp_path / "small.ffr") == 1
    assert "record 49" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli("validate") == 2
    assert cli("validate", tmp_path / "missing.ffr") == 2
    err = capsys.readouterr().err
    assert "missing.ffr: no such file or directory" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert cli("validate", tmp_path / "empty") == 2
    assert cli("validate", tmp_path / "empty", "--workers", "0") == 2


def test_garbage_file_is_bad_not_a_crash(tmp_path, capsys):
    (tmp_path / "junk.ffr").write_bytes(b"this is not a record file at all" * 10)
    assert cli("validate", tmp_path / "junk.ffr", "-q") == 1
    assert "not a record file" in capsys.readouterr().out


def test_quarantine_lets_readers_leave_out_a_truncated_shard(tmp_path, capsys):
    dst, records = make_dataset(tmp_path)
    shard = dst / "shard-00001-of-00003.ffr"
    with ffrecord.FileReader(shard) as r:
        n_middle = len(r)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 10)
    with pytest.raises(ffrecord.FormatError):
        ffrecord.FileReader(dst)
    assert cli("validate", dst, "--quarantine", "-q") == 1
    doc = quarantine.load(dst)
    assert [(e["file"], e["reason"]) for e in doc.files] == [(shard.name, "format")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = ffrecord.FileReader(dst)
    messages = [str(w.message) for w in caught if "quarantine" in str(w.message)]
    assert len(messages) == 1 and "1 quarantined file(s)" in messages[0]
    with r:  # shards hold 20 records each; the middle one is gone
        assert n_middle == 20 and len(r) == 40
        assert [a.tobytes() for a in r.read(range(len(r)))] == records[:20] + records[40:]
