#!/usr/bin/env bash
# One entry point for the README's commands. It sets up everything on a fresh
# machine (a virtualenv in .venv, torch 2.13.0, the C++ extension) and then
# runs the requested job:
#   bash tools/dev.sh demo    convert a demo dataset, read it, train, checkpoint
#   bash tools/dev.sh test    run the test suite
#   bash tools/dev.sh bench   run the benchmark comparison (slow)
#   bash tools/dev.sh fuzz [--asan] [args]   fuzz the readers (under ASan + UBSan)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# The network-filesystem rig of the tests (tests/netfs_rig.py) needs sshfs, sshd and
# fusermount3; its tests skip, saying why, where they cannot be installed.
need_apt=()
command -v sshfs >/dev/null || need_apt+=(sshfs)
{ [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null; } || need_apt+=(openssh-server)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
case "${1:-demo}" in test|bench) ;; *) need_apt=() ;; esac  # the demo needs none of it
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing ${need_apt[*]} (apt)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"; } >/dev/null 2>&1 \
    || echo "(could not install ${need_apt[*]}: the network-filesystem tests will skip)"
fi

stamp="$VENV/.ffrecord-deps"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing dependencies into $VENV"
  "$VPY" -m pip install -q --upgrade pip setuptools wheel "pybind11>=2.11"
  # An explicit CPU build of torch; a bare 'torch' would pull a multi-GB CUDA build.
  "$VPY" -m pip install -q "torch==2.13.0"
  "$VPY" -m pip install -q --no-build-isolation -e ".[torch,test,zstd]"
  touch "$stamp"
fi
# Engines (Parquet/Arrow/Hugging Face/TFRecord sources, Ray Data, Spark): their
# tests need pyarrow, ray, pyspark, datasets and tfrecord, and Spark a Java
# runtime. Kept apart from the core set-up above, which stays light.
# The demo needs none of it.
engines_stamp="$VENV/.ffrecord-engines"
case "${1:-demo}" in test|bench) with_engines=1 ;; *) with_engines=0 ;; esac
if [ "$with_engines" = 1 ] && { [ ! -f "$engines_stamp" ] || [ pyproject.toml -nt "$engines_stamp" ]; }; then
  echo "== installing the engines' test dependencies into $VENV"
  # The same list as pyproject's "engines-test" extra (no second editable build).
  "$VPY" -m pip install -q "pyarrow>=12" "ray[data]>=2.40" "pyspark>=3.5" "datasets>=2.14" "tfrecord>=1.14"
  touch "$engines_stamp"
fi
if [ "$with_engines" = 1 ] && ! command -v java >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "== installing a Java runtime for Spark"
  { apt-get update -q && apt-get install -y -q default-jre-headless; } >/dev/null 2>&1 \
    || echo "(no Java runtime: the Spark tests are skipped)"
fi

# The core decodes zstd records with libzstd: its header and library are needed to build.
if [ ! -f /usr/include/zstd.h ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing libzstd-dev (apt)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libzstd-dev; } >/dev/null 2>&1 \
    || echo "(could not install libzstd-dev: the build needs zstd.h and libzstd)"
fi
echo "== building the C++ extension"
"$VPY" setup.py -q build_ext --inplace -j 2

job=${1:-demo}
shift || true
case "$job" in
  demo) exec "$VPY" -m ffrecord.demo "$@" ;;
  test) exec "$VPY" -m pytest -q "$@" ;;
  bench)
    "$VPY" -m pip install -q -e ".[bench]" --no-build-isolation
    # Mosaic Streaming (MDS) would pull another torch and torchvision build; its MDS
    # reader and writer need neither, so it comes without dependencies.
    "$VPY" -m pip install -q --no-deps mosaicml-streaming || echo "(MDS not installed: compared without it)"
    "$VPY" -m pip install -q xxhash zstd Brotli python-snappy catalogue filelock || true
    if ! command -v zstd >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get install -y -q zstd >/dev/null 2>&1 || echo "(zstd not installed: compressed reads compared without zstd -b)"
    fi
    if ! command -v fio >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get install -y -q fio >/dev/null 2>&1 || echo "(fio not installed: cold ceiling measured without it)"
    fi
    exec "$VPY" benchmarks/compare.py "$@" ;;
  fuzz)
    # bash tools/dev.sh fuzz [--asan] [fuzz_open.py arguments]; docs/FUZZING.md.
    "$VPY" -m pip install -q atheris
    if [ "${1:-}" = "--asan" ]; then
      shift
      # The extension, rebuilt with ASan + UBSan into build/asan (the normal build stays).
      rm -rf build/asan && mkdir -p build/asan && cp -r ffrecord build/asan/ && rm -f build/asan/ffrecord/_core*.so
      # The C++ sources compile with $CXX (CFLAGS would not reach them).
      san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
      rm -rf build/asan-obj
      CXX="g++ $san" LDFLAGS="$san" "$VPY" setup.py -q build_ext -b build/asan -t build/asan-obj -j 2
      nm -D --undefined-only build/asan/ffrecord/_core*.so | grep -q __asan_report \
        || { echo "the sanitizer build is not instrumented" >&2; exit 1; }
      # Python itself is not instrumented: the ASan runtime must be loaded first,
      # with libstdc++ beside it; CPython's own allocations are not leaks to report.
      export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
      export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
      export PYTHONPATH="$PWD/build/asan"
    fi
    exec "$VPY" tools/fuzz_open.py "$@" ;;
  *) echo "usage: bash tools/dev.sh demo|test|bench|fuzz [args...]" >&2; exit 2 ;;
esac
