"""Ranks that share a directory without locks, and errors of the environment that are not damage.

Races only show when two ranks finish within milliseconds, so the ranks are
long-lived worker processes released together from a barrier after their
imports, for many rounds, each round in a fresh directory. Environment errors
are real ones: a shard behind a symlink loop (ELOOP), and a shard made
unreadable with chmod 000 for a process without CAP_DAC_OVERRIDE (EACCES).
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

import ffrecord
from ffrecord import quarantine
from ffrecord._atomic import unique_tag
from ffrecord.cli import main
from ffrecord.tools import convert
from damage import flip_byte
from netfs_ranks import RankPool, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 60
PER_SHARD = 20
SHARDS = [f"shard-{i:05d}-of-00003.ffr" for i in range(3)]


def record(i):
    return f"record-{i:05d}-".encode() + bytes([65 + i % 26]) * (150 + 7 * i)


def make_source(tmp):
    src = tmp / "src.jsonl"
    src.write_bytes(b"".join(record(i) + b"\n" for i in range(RECORDS)))
    return src


def make_dataset(tmp, name="ds"):
    dst = tmp / name
    assert main(["convert", str(make_source(tmp)), str(dst), "--records-per-shard", str(PER_SHARD), "-q"]) == 0
    return dst


def damage(dst, i):
    """Flips a byte inside record ``i`` (dataset-wide index)."""
    path = dst / SHARDS[i // PER_SHARD]
    flip_byte(path, path.read_bytes().index(record(i)) + 40)


def in_force(dst):
    doc = quarantine.load(dst)
    return sorted((e["file"], e["index"]) for e in doc.records), sorted(e["file"] for e in doc.files)


def snapshot(directory):
    """Every path under ``directory`` with its size and mtime: what "nothing changed" means."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            out[os.path.relpath(p, directory)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def ranks():
    with RankPool(2) as pool:
        yield pool


# ---- quarantine: no lost entry, reruns supersede ---------------------------------
def validate_args(path, rank, world=2):
    return (["validate", path, "--rank", rank, "--world-size", world, "--quarantine", "-q"],)


def test_two_ranks_quarantining_at_once_lose_no_entry(tmp_path, ranks):
    template = make_dataset(tmp_path, "template")
    damage(template, 3)   # shard 0: rank 0
    damage(template, 25)  # shard 1: rank 1
    for round_ in range(50):
        d = tmp_path / f"r{round_}"
        shutil.copytree(template, d, ignore=shutil.ignore_patterns(".ffrecord-convert"))
        results = ranks.together([(cli, validate_args(d, 0)), (cli, validate_args(d, 1))])
        assert [r[0] for r in results] == [1, 1], (round_, results)
        assert in_force(d) == ([(SHARDS[0], 3), (SHARDS[1], 5)], []), round_
        assert len(os.listdir(d / "quarantine.d")) == 2  # one report per rank, neither edited by the other
        shutil.rmtree(d)


def test_a_rerun_supersedes_earlier_findings_and_compacts(tmp_path, capsys):
    dst = make_dataset(tmp_path)
    pristine = (dst / SHARDS[0]).read_bytes()
    damage(dst, 3)
    damage(dst, 45)
    assert main(["validate", str(dst), "--quarantine", "-q", "--rank", "0", "--world-size", "2"]) == 1
    assert main(["validate", str(dst), "--quarantine", "-q", "--rank", "1", "--world-size", "2"]) == 0
    assert in_force(dst) == ([(SHARDS[0], 3), (SHARDS[2], 5)], [])

    # Shard 0 repaired; a rerun by rank 0 alone clears it and keeps nothing else it did not check.
    (dst / SHARDS[0]).write_bytes(pristine)
    assert main(["validate", str(dst / SHARDS[0]), "--quarantine", "-q"]) == 0
    assert in_force(dst) == ([(SHARDS[2], 5)], [])

    # One rank over the whole dataset: every earlier report is superseded and removed.
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 1
    reports = os.listdir(dst / "quarantine.d")
    assert len(reports) == 1
    doc = json.loads((dst / "quarantine.d" / reports[0]).read_text())
    assert doc["checked"] == SHARDS
    assert [(e["file"], e["index"], e["reason"]) for e in doc["records"]] == [(SHARDS[2], 5, "checksum")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ffrecord.FileReader(dst) as r:
            assert len(r) == RECORDS - 1
    assert ["1 quarantined record(s)" in str(w.message) for w in caught] == [True]


def test_a_clean_dataset_gets_no_quarantine(tmp_path):
    dst = make_dataset(tmp_path)
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 0
    assert not (dst / "quarantine.d").exists()


def test_a_missing_shard_is_quarantined_with_its_reason(tmp_path):
    dst = make_dataset(tmp_path)
    os.unlink(dst / SHARDS[1])
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 1
    doc = quarantine.load(dst)
    assert [(e["file"], e["reason"]) for e in doc.files] == [(SHARDS[1], "missing")]


def test_a_legacy_quarantine_json_is_read_then_superseded(tmp_path):
    dst = make_dataset(tmp_path)
    legacy = {"version": 1, "records": [{"file": SHARDS[0], "index": 1, "error": "checksum mismatch"},
                                        {"file": SHARDS[2], "index": 2, "error": "checksum mismatch"}],
              "files": []}
    (dst / "quarantine.json").write_text(json.dumps(legacy))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ffrecord.FileReader(dst) as r:
            assert len(r) == RECORDS - 2
    # Shard 0 checked again and sound: its legacy entry goes, shard 2's stays.
    assert main(["validate", str(dst / SHARDS[0]), "--quarantine", "-q"]) == 0
    assert in_force(dst) == ([(SHARDS[2], 2)], [])
    assert (dst / "quarantine.json").exists()
    # Every file it names checked again: the legacy file is compacted away.
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 0
    assert in_force(dst) == ([], []) and not (dst / "quarantine.json").exists()


def test_a_rerun_orders_after_every_report_it_saw_whatever_the_clock(tmp_path):
    dst = make_dataset(tmp_path)
    (dst / "quarantine.d").mkdir()
    # A report from a node whose clock runs far ahead.
    ahead = {"format": "ffrecord-quarantine", "version": 2, "tool": "ffrecord 2.0.0", "order": 4 * 10**18,
             "writer": "fast-1-000000000000", "checked": [SHARDS[1]],
             "records": [{"file": SHARDS[1], "index": 0, "reason": "checksum", "error": "checksum mismatch"}],
             "files": []}
    (dst / "quarantine.d" / "4000000000000000000-fast-1-000000000000.json").write_text(json.dumps(ahead))
    assert in_force(dst) == ([(SHARDS[1], 0)], [])
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 0
    assert in_force(dst) == ([], [])
    (report,) = os.listdir(dst / "quarantine.d")
    assert json.loads((dst / "quarantine.d" / report).read_text())["order"] > 4 * 10**18


@pytest.mark.parametrize("content, complaint", [
    ("{not json", "not valid JSON"),
    ('{"format": "something else"}', "not a quarantine report"),
    ('{"format": "ffrecord-quarantine", "order": 1, "writer": "w", "checked": ["a.ffr"], '
     '"records": [{"file": "a.ffr", "index": "7"}]}', "'records' must be a list"),
    ('{"format": "ffrecord-quarantine", "order": "1", "writer": "w", "checked": []}', "integer 'order'"),
])
def test_a_broken_report_is_a_format_error_naming_it(tmp_path, content, complaint):
    dst = make_dataset(tmp_path)
    (dst / "quarantine.d").mkdir()
    bad = dst / "quarantine.d" / "1-w.json"
    bad.write_text(content)
    with pytest.raises(ffrecord.FormatError, match=complaint) as info:
        ffrecord.FileReader(dst)
    assert str(bad) in str(info.value)


def test_temporary_names_differ_across_processes_and_name_the_writer():
    here = unique_tag()
    other = subprocess.run([sys.executable, "-c", "from ffrecord._atomic import unique_tag; print(unique_tag())"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert here != other and here != unique_tag()
    assert f"-{os.getpid()}-" in here and all(c.isalnum() or c in "_.-" for c in here)


# ---- environment errors are not damage -------------------------------------------
def loop_shard(dst, name):
    """Replaces shard ``name`` by a symlink to itself: every open or stat fails with ELOOP."""
    os.unlink(dst / name)
    os.symlink(name, dst / name)


@pytest.mark.parametrize("quarantining", [True, False])
def test_validate_fails_on_an_environment_error_and_changes_nothing(tmp_path, capsys, quarantining):
    dst = make_dataset(tmp_path)
    damage(dst, 30)  # real damage elsewhere must not be reported either: nothing is judged
    loop_shard(dst, SHARDS[2])
    before = snapshot(dst)
    capsys.readouterr()
    args = ["validate", str(dst), "-q"] + (["--quarantine"] if quarantining else [])
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no BAD line: an unreadable file is not a bad one
    line, = err.strip().splitlines()
    assert str(dst / SHARDS[2]) in line and "(ELOOP)" in line and "nothing was judged" in line
    assert snapshot(dst) == before


def test_convert_rerun_fails_on_an_environment_error_and_rewrites_nothing(tmp_path, capsys):
    dst = make_dataset(tmp_path)
    src = tmp_path / "src.jsonl"
    loop_shard(dst, SHARDS[1])
    before = snapshot(dst)
    capsys.readouterr()
    assert main(["convert", str(src), str(dst), "--records-per-shard", str(PER_SHARD), "-q"]) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(dst / SHARDS[1]) in line and "(ELOOP)" in line and "not rewritten" in line
    assert snapshot(dst) == before


def without_dac_override():
    """A command prefix under which chmod 000 really denies reading, or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    probe = subprocess.run(prefix + ["true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def run_cli(prefix, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    return subprocess.run(prefix + [sys.executable, "-m", "ffrecord.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_unreadable_shards_fail_validate_and_convert_with_eacces(tmp_path):
    prefix = without_dac_override()
    if prefix is None:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here (no setpriv), so chmod 000 would not deny root")
    dst = make_dataset(tmp_path)
    os.chmod(dst / SHARDS[0], 0)
    before = snapshot(dst)
    for quarantining in ([], ["--quarantine"]):
        res = run_cli(prefix, "validate", dst, "-q", *quarantining)
        assert res.returncode == 2, res
        assert res.stdout == "" and "Permission denied (EACCES)" in res.stderr and SHARDS[0] in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = run_cli(prefix, "convert", tmp_path / "src.jsonl", dst, "--records-per-shard", PER_SHARD, "-q")
    assert res.returncode == 2, res
    assert "Permission denied (EACCES)" in res.stderr and "not rewritten" in res.stderr
    assert snapshot(dst) == before


# ---- convert: the last rank writes index.json ------------------------------------
def convert_rank(src, dst, rank, **options):
    result = convert.convert(src, dst, records_per_shard=PER_SHARD // 2, rank=rank, world_size=2, **options)
    return result.manifest_written, len(result.written)


def test_two_ranks_finishing_together_always_write_the_manifest(tmp_path, ranks):
    src = make_source(tmp_path)
    single = tmp_path / "single"
    convert.convert(src, single, records_per_shard=PER_SHARD // 2)
    expected = (single / "index.json").read_bytes()
    for round_ in range(50):
        d = str(tmp_path / f"c{round_}")
        results = ranks.together([(convert_rank, (str(src), d, 0)), (convert_rank, (str(src), d, 1))])
        assert all(isinstance(r, tuple) for r in results), results
        assert [r[1] for r in results] == [3, 3]
        assert any(r[0] for r in results), (round_, results)
        with open(os.path.join(d, "index.json"), "rb") as f:
            assert f.read() == expected
        shutil.rmtree(d)


def test_two_ranks_training_a_dictionary_at_once_share_the_first_one(tmp_path, ranks):
    src = make_source(tmp_path)
    options = {"compression": "zstd", "zstd_dict": True}
    single = tmp_path / "single"
    convert.convert(src, single, records_per_shard=PER_SHARD // 2, **options)
    for round_ in range(10):
        d = tmp_path / f"z{round_}"
        results = ranks.together([(convert_rank_with_dictionary, (str(src), str(d), rank)) for rank in (0, 1)])
        assert all(isinstance(r, tuple) for r in results), results
        assert sorted(os.listdir(d)) == sorted(os.listdir(single))
        for name in os.listdir(single):
            if name.endswith(".ffr") or name == "index.json":
                assert (d / name).read_bytes() == (single / name).read_bytes(), (round_, name)


def convert_rank_with_dictionary(src, dst, rank):
    return convert_rank(src, dst, rank, compression="zstd", zstd_dict=True)


def test_finalize_fails_cleanly_on_an_environment_error(tmp_path, capsys):
    dst = make_dataset(tmp_path)
    os.unlink(dst / "index.json")
    loop_shard(dst, SHARDS[0])
    capsys.readouterr()
    assert main(["convert", "--finalize", str(dst)]) == 2
    assert "(ELOOP)" in capsys.readouterr().err
    assert not (dst / "index.json").exists()


def test_a_quarantine_that_cannot_be_written_is_an_environment_error(tmp_path, capsys):
    dst = make_dataset(tmp_path)
    damage(dst, 3)
    os.symlink("elsewhere", dst / "quarantine.d")  # dangling: reads find no reports, the write fails
    capsys.readouterr()
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert "cannot write the quarantine report" in line and "no report was written" in line
    # A file where the reports belong fails already when the quarantine is read.
    os.unlink(dst / "quarantine.d")
    (dst / "quarantine.d").write_text("not a directory")
    assert main(["validate", str(dst), "--quarantine", "-q"]) == 2
    assert "(ENOTDIR)" in capsys.readouterr().err
