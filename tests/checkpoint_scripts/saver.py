"""A process that saves checkpoints, for tests that SIGKILL it mid-save.

    saver.py stop PATH VERSION STEP NTH [--async] [--no-exchange]
        saves version VERSION of the test state to PATH and, at the NTH time
        the commit protocol reaches STEP (see ffrecord.checkpoint.commit),
        prints "STOPPED" and sleeps until killed.
    saver.py loop PATH [--async]
        saves versions 1, 2, 3, ... to PATH forever, printing "SAVED n" after
        each one is committed.

--no-exchange makes the commit use its fallback (two renames) as on a
filesystem without renameat2(RENAME_EXCHANGE).
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

import ffrecord.checkpoint as ck  # noqa: E402
from ffrecord import _core  # noqa: E402
from ffrecord.checkpoint import commit  # noqa: E402

CHUNK = 256 << 10


def state(version):
    """Every value derives from ``version``, so a loaded state shows whether it is whole."""
    return {
        "step": version,
        "name": f"v{version}",
        "w": torch.full((512, 1024), float(version)),  # 2 MiB: 8 records of CHUNK
        "small": [torch.full((n,), version, dtype=torch.int32) for n in range(1, 40)],
    }


def check(loaded):
    """The version of a loaded state, after checking every part agrees with it."""
    v = loaded["step"]
    assert loaded["name"] == f"v{v}", loaded["name"]
    assert torch.equal(loaded["w"], torch.full((512, 1024), float(v)))
    assert all(torch.equal(t, torch.full((n,), v, dtype=torch.int32)) for n, t in zip(range(1, 40), loaded["small"]))
    return v


def _save(path, version, use_async):
    if use_async:
        ck.async_save(state(version), path, max_staging_bytes=1 << 20, chunk_bytes=CHUNK).result()
    else:
        ck.save(state(version), path, chunk_bytes=CHUNK)


class _NoExchange:
    """The core module, minus the atomic exchange."""

    def __getattr__(self, name):
        return getattr(_core, name)

    @staticmethod
    def exchange_paths(a, b):
        return False


def main(argv):
    use_async = "--async" in argv
    if "--no-exchange" in argv:
        commit._core = _NoExchange()
    args = [a for a in argv if not a.startswith("--")]
    if args[0] == "stop":
        path, version, step, nth = args[1], int(args[2]), args[3], int(args[4])
        seen = [0]

        def hook(name):
            if name == step:
                seen[0] += 1
                if seen[0] == nth:
                    print("STOPPED", flush=True)
                    time.sleep(600)

        commit._sync_hook = hook
        _save(path, version, use_async)
        print("FINISHED", flush=True)
    elif args[0] == "loop":
        v = 1
        while True:
            _save(args[1], v, use_async)
            print(f"SAVED {v}", flush=True)
            v += 1


if __name__ == "__main__":
    main(sys.argv[1:])
