"""Coverage-guided fuzzing of the open/read path (atheris).

Each input is written to a file and opened as a dataset; every record is then
read with checksums on and off. The only acceptable outcomes are success or an
ffrecord.FFRecordError / OSError: any other exception is a finding, and a crash
(the process dying on a signal) is a finding that atheris reports itself.

    python tools/fuzz_open.py -max_total_time=60 [corpus_dir]

Without a corpus directory, it seeds from the checked-in test vector.
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import ffrecord

_DIR = tempfile.mkdtemp(prefix="ffrecord-fuzz-")
_PATH = os.path.join(_DIR, "input.ffr")
_MAX_RECORD_BYTES = 1 << 20  # a crafted index may claim huge records; don't read those


def one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    for check in (True, False):
        try:
            r = ffrecord.FileReader(_PATH, check_data=check)
        except (ffrecord.FFRecordError, OSError):
            return
        n = min(r.n, 64)
        lengths = r.lengths(range(n)) if n else []
        wanted = [i for i in range(n) if lengths[i] <= _MAX_RECORD_BYTES]
        try:
            got = r.read(wanted)
            assert len(got) == len(wanted)
            batches = list(r.prefetch([wanted[:3], wanted[3:]], depth=2))
            assert [len(b) for b in batches] == [len(wanted[:3]), len(wanted[3:])]
        except (ffrecord.FFRecordError, OSError):
            pass
        r.close()


def main():
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        seeds = tempfile.mkdtemp(prefix="ffrecord-fuzz-seeds-")
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "tests", "data", "vector_v2.ffr"), "rb") as f:
            vector = f.read()
        with open(os.path.join(seeds, "vector_v2"), "wb") as f:
            f.write(vector)
        argv.append(seeds)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
