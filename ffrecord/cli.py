"""The ``ffrecord`` command: convert, validate, info, cat, pack, unpack, bench.

Exit status, the same for every subcommand: 0 success, 1 the work failed or
found bad data (the message says why), 2 a usage error (bad arguments, a
missing path, a directory without record files, an unknown kind; for
validate and convert also the filesystem refusing to let existing files be
checked, which judges and changes nothing), 141 (as a
program killed by SIGPIPE) when the reader of stdout went away, e.g.
``ffrecord info X | head -3``; that last one is silent. Errors a user can
cause are reported on one line, without a traceback. Progress
bars go to stderr when it is a terminal; ``--quiet`` turns them and the
summaries off. See docs/TOOLS.md for every subcommand.
"""

import argparse
import json
import os
import sys
import warnings

from . import FFRecordError, __version__
from .tools.errors import ToolError, UsageError
from .tools.sizes import format_size, parse_size
from .tools.sources import KINDS

# This process holds no threads or handles a worker could trip on when the
# workers start (sources and readers are closed by then), so they fork: no
# interpreter start and imports per worker. The library default stays spawn.
_START_METHOD = "fork"

# What a process killed by SIGPIPE reports to its shell (128 + 13).
_EXIT_STDOUT_CLOSED = 141


class _StdoutClosed(Exception):
    """The reader of stdout (e.g. `head`) went away."""


def main(argv=None):
    """Runs the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or argparse's own usage error (status 2)
        return e.code if isinstance(e.code, int) else 2
    except BrokenPipeError:  # --help into `head`
        return _stdout_closed()
    if not getattr(args, "command", None):
        print("ffrecord: error: choose a command: convert, validate, info, cat, pack, unpack, bench "
              "(see ffrecord --help)", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args) or 0
    except _StdoutClosed:
        return _stdout_closed()
    except UsageError as e:
        return _fail(args.command, e, 2)
    except (ToolError, FFRecordError) as e:
        return _fail(args.command, e, 1)
    except OSError as e:
        return _fail(args.command, _os_message(e), 1)
    except KeyboardInterrupt:
        print(f"ffrecord {args.command}: interrupted", file=sys.stderr)
        return 130


def _say(text):
    """One line to stdout, flushed now, so a closed pipe shows up here and not
    at interpreter exit."""
    _write_out(lambda: (sys.stdout.write(text + "\n"), sys.stdout.flush()))


def _write_out(write):
    try:
        write()
    except BrokenPipeError:
        raise _StdoutClosed() from None


def _stdout_closed():
    # Later flushes (at exit) must not fail again on the closed pipe.
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # stdout is not a file (captured): nothing buffered will reach a pipe
    if fd is not None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return _EXIT_STDOUT_CLOSED


def _require_dataset(path):
    """A PATH argument that names no record file or dataset is a usage error
    (exit 2), for every subcommand alike."""
    from .dataset_paths import resolve

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        try:
            resolve(path)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # Warnings (e.g. records skipped by a quarantine) are news for the user, not for a developer.
    print(f"ffrecord: warning: {message}", file=sys.stderr if file is None else file)


def _fail(command, message, status):
    # One line, whatever the underlying library put in its message.
    text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"ffrecord {command}: error: {text}", file=sys.stderr)
    return status


def _os_message(e):
    text = e.strerror or str(e)
    if e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text


# ---- subcommands ---------------------------------------------------------------
def _convert(args):
    from .tools import convert, progress
    from .tools.errors import EnvironmentFailure

    if args.finalize:
        if len(args.paths) not in (1, 2):
            raise UsageError("--finalize takes DST (or SRC DST)")
        try:
            doc = convert.finalize(args.paths[-1])
        except EnvironmentFailure as e:
            return _fail("convert", e, 2)
        if not args.quiet:
            _say(f"wrote {args.paths[-1].rstrip('/')}/index.json: {len(doc['shards'])} shards, "
                 f"{doc['records']} records, {format_size(doc['bytes'])} of shard files")
        return 0
    if len(args.paths) != 2:
        raise UsageError("convert takes SRC DST")
    shard_size = parse_size(args.shard_size) if args.shard_size is not None else None
    try:
        result = convert.convert(
            args.paths[0], args.paths[1], args.kind, shard_size=shard_size,
            records_per_shard=args.records_per_shard, compression=args.compression,
            zstd_dict=args.zstd_dict, zstd_dict_file=args.zstd_dict_file, workers=args.workers,
            rank=args.rank, world_size=args.world_size, show_progress=progress.wanted(args.quiet),
            start_method=_START_METHOD, key_column=args.key_column,
        )
    except EnvironmentFailure as e:  # checking existing work hit the filesystem, not bad data
        return _fail("convert", e, 2)
    if not args.quiet:
        # Source bytes are the records as taken from the source (before compression);
        # shard bytes are the files on disk, this rank's shards written now or before.
        rate = result.source_bytes / result.seconds if result.seconds > 0 else 0.0
        _say(f"{result.dst}: wrote {len(result.written)} shard(s)"
             + (f", {len(result.skipped)} already complete" if result.skipped else "")
             + f"; {result.records} records; read {format_size(result.source_bytes)} of source records, "
             + f"shard files hold {format_size(result.bytes)}; {result.seconds:.1f} s "
             + f"({format_size(rate)}/s of source records)")
        if result.manifest_written:
            _say(f"{result.dst}: index.json lists all {result.shards} shard(s)")
        else:
            _say(f"{result.dst}: left index.json to the rank that finishes last ({result.missing[0]} is not done "
                 "yet); if no rank is still running, run `ffrecord convert --finalize DST`")
    return 0


def _validate(args):
    from .tools import progress, validate
    from .tools.errors import EnvironmentFailure

    try:
        result = validate.validate(
            args.paths, workers=args.workers, rank=args.rank, world_size=args.world_size,
            quarantine=args.quarantine, shard_crc=not args.no_shard_crc,
            show_progress=progress.wanted(args.quiet), start_method=_START_METHOD,
        )
    except EnvironmentFailure as e:  # not a verdict on the data: kept apart from status 1
        return _fail("validate", e, 2)
    for p in result.problems:
        _say(f"BAD {p.describe()}")
    if not args.quiet:
        # The same bytes as the progress bar's total: records, plus whole files for their CRC32C.
        read = result.bytes + result.file_bytes
        rate = read / result.seconds if result.seconds > 0 else 0.0
        verdict = "all sound" if result.ok else f"{len(result.problems)} problem(s)"
        whole_files = f" + {format_size(result.file_bytes)} whole-file CRC32C" if result.file_bytes else ""
        _say(f"checked {result.files} file(s), {result.records} records: read {format_size(read)} "
             f"({format_size(result.bytes)} of records{whole_files}) in {result.seconds:.1f} s "
             f"({format_size(rate)}/s): {verdict}")
        for q in result.quarantine_files:
            _say(f"quarantine report: {q}")
        whole = [p for p in result.problems if p.index is None]
        if args.quarantine and whole:
            _say(f"note: readers of the dataset leave out the {len(whole)} file(s) with file-level problems; "
                 "restore or reconvert those files")
    return 0 if result.ok else 1


def _info(args):
    from .tools import info

    if args.path is None:
        if not args.engine:
            raise UsageError("info takes PATH (or --engine alone to show the I/O engine)")
        d = info.probe_engine()
    else:
        _require_dataset(args.path)
        d = info.describe(args.path, engine=args.engine)
    if args.json:
        _say(json.dumps(d, indent=1, sort_keys=True, default=str))
    else:
        for w in d.get("warnings", []):
            print(f"ffrecord: warning: {w}", file=sys.stderr)
        _say(info.format_text(d))
    return 0


def _bench(args):
    from .tools import bench

    _require_dataset(args.path)
    result = bench.bench(args.path, batch_size=args.batch_size, seconds=args.seconds, depth=args.depth,
                         direct=args.direct, check_data=not args.no_check)
    if args.json:
        _say(json.dumps(vars(result), indent=1, sort_keys=True))
    else:
        _say(bench.format_text(args.path, result))
    return 0


def _cat(args):
    from .tools import packing

    by_key = True if args.key else (False if args.index else None)
    _require_dataset(args.path)
    data = packing.cat(args.path, args.which, by_key=by_key, part=args.part)
    _write_out(lambda: (sys.stdout.buffer.write(memoryview(data)), sys.stdout.buffer.flush()))
    return 0


def _pack(args):
    from .tools import packing, progress

    n = packing.pack(args.folder, args.out, verbose=progress.wanted(args.quiet))
    if not args.quiet:
        _say(f"packed {n} file(s) into {args.out}")
    return 0


def _unpack(args):
    from .tools import packing

    n = packing.unpack(args.file, args.out_dir, overwrite=args.overwrite)
    if not args.quiet:
        _say(f"unpacked {n} file(s) into {args.out_dir}")
    return 0


# ---- arguments -----------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage itself is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _add_rank_options(p):
    p.add_argument("--rank", type=_non_negative_int, default=None,
                   help="this process's rank (default: $RANK or $SLURM_PROCID, else 0)")
    p.add_argument("--world-size", type=_positive_int, default=None,
                   help="number of ranks (default: $WORLD_SIZE or $SLURM_NTASKS, else 1)")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def _parser():
    parser = _Parser(
        prog="ffrecord", description="Convert, validate and inspect ffrecord datasets.")
    parser.add_argument("--version", action="version", version=f"ffrecord {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("convert", help="convert a source into a directory of shards plus index.json",
                       description="Convert SRC into the dataset directory DST (shards + index.json).")
    p.add_argument("paths", nargs="+", metavar="SRC DST", help="source and output directory")
    p.add_argument("--from", dest="kind", choices=KINDS, default=None,
                   help="source kind (default: guessed from SRC)")
    p.add_argument("--key-column", default=None, metavar="NAME",
                   help="parquet/arrow/hf: the column that becomes the record keys (the others become the record)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-size", default=None, help="shard size in source bytes, e.g. 1GiB (default)")
    size.add_argument("--records-per-shard", type=_positive_int, default=None, help="records per shard")
    p.add_argument("--compression", default=None, help="zstd or zstd:LEVEL (default: none)")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--zstd-dict", action="store_true", help="train a zstd dictionary on a sample of records")
    d.add_argument("--zstd-dict-file", default=None, help="compress with this zstd dictionary")
    p.add_argument("--finalize", action="store_true",
                   help="only write DST/index.json from the finished shards (after all ranks ran)")
    _add_rank_options(p)
    p.set_defaults(run=_convert)

    p = sub.add_parser("validate", help="check headers, indexes, record checksums and manifests",
                       description="Check files and dataset directories. Exit 0: all sound; 1: problems found "
                                   "(listed on stdout); 2: usage error, or the filesystem refused an operation "
                                   "(nothing judged, nothing written).")
    p.add_argument("paths", nargs="+", metavar="PATH", help=".ffr files or dataset directories")
    p.add_argument("--quarantine", action="store_true",
                   help="report bad records and files in the dataset's quarantine.d/ so readers skip them")
    p.add_argument("--no-shard-crc", action="store_true",
                   help="skip the whole-file CRC32C check against index.json (records are still checked)")
    _add_rank_options(p)
    p.set_defaults(run=_validate)

    p = sub.add_parser("info", help="describe a file or dataset",
                       description="Version, records, bytes, codec and compression ratio, keys, metadata, "
                                   "record size distribution.")
    p.add_argument("path", nargs="?", metavar="PATH", help="a .ffr file or dataset directory")
    p.add_argument("--engine", action="store_true", help="also show the I/O engine and why io_uring is not used")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_info)

    p = sub.add_parser("cat", help="write one record's bytes (or one part of it) to stdout",
                       description="Write record INDEX (a number) or KEY of PATH to stdout.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("which", metavar="INDEX|KEY")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key", action="store_true", help="treat the argument as a key even if it is a number")
    g.add_argument("--index", action="store_true", help="treat the argument as an index")
    p.add_argument("--part", default=None, metavar="NAME",
                   help="write only this part of the record, in the layout convert recorded: image or label "
                        "(--from imagefolder; the label as decimal text), or a part name such as jpg or cls "
                        "(--from tar/webdataset)")
    p.set_defaults(run=_cat)

    p = sub.add_parser("pack", help="pack a folder into one .ffr file")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("out", metavar="OUT.ffr")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_pack)

    p = sub.add_parser("unpack", help="write the files of a packed folder into a directory")
    p.add_argument("file", metavar="PACKED.ffr")
    p.add_argument("out_dir", metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_unpack)

    p = sub.add_parser("bench", help="measure random batched read throughput of a dataset",
                       description="Read random batches of PATH for a while, plainly and with prefetch, "
                                   "and print records/s and MB/s.")
    p.add_argument("path", metavar="PATH", help="a .ffr file or a dataset directory")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="records per batch (default 256)")
    p.add_argument("--seconds", type=float, default=4.0, help="measuring time (default 4)")
    p.add_argument("--depth", type=_positive_int, default=4, help="prefetch depth (default 4)")
    p.add_argument("--direct", action="store_true", help="read with O_DIRECT (bypass the page cache)")
    p.add_argument("--no-check", action="store_true", help="skip record checksum verification")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_bench)
    return parser


if __name__ == "__main__":
    sys.exit(main())
