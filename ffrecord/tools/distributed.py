"""Which share of the work this process does: its rank and the world size.

Explicit values win; otherwise ``RANK``/``WORLD_SIZE`` (set by ``torchrun``)
are used, then ``SLURM_PROCID``/``SLURM_NTASKS`` (set by ``srun``), and a
process alone is rank 0 of 1. Work is split by whole units (shards for
``convert``, files for ``validate``): unit ``u`` belongs to rank
``u % world_size``, so every rank computes the same assignment on its own,
without talking to the others.
"""

import os

from .errors import UsageError

_ENV_PAIRS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))


def _as_int(value, name):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be an integer, got {value!r}") from None


def rank_and_world(rank=None, world_size=None, environ=None):
    """(rank, world_size) from the arguments or the environment, checked."""
    env = os.environ if environ is None else environ
    source = "--rank/--world-size"
    if rank is None and world_size is None:
        for rank_var, world_var in _ENV_PAIRS:
            if rank_var in env or world_var in env:
                if rank_var not in env or world_var not in env:
                    raise UsageError(f"{rank_var} and {world_var} must be set together")
                rank, world_size = env[rank_var], env[world_var]
                source = f"{rank_var}/{world_var}"
                break
        else:
            return 0, 1
    elif rank is None or world_size is None:
        raise UsageError("--rank and --world-size must be given together")
    rank = _as_int(rank, "rank")
    world_size = _as_int(world_size, "world size")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in [0, world size {world_size}) ({source})")
    return rank, world_size


def owned(units, rank, world_size):
    """The units (a sequence) that belong to ``rank``."""
    return [u for k, u in enumerate(units) if k % world_size == rank]
