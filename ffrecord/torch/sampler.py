"""A distributed sampler over a full global shuffle, with elastic, exactly-once resume.

Every epoch has one global order of all ``n`` indices, fixed by ``(seed, epoch)``
alone (a counter-based hash sorted into a permutation, so the order does not
depend on the number of ranks, on numpy's or torch's random streams, or on
their versions). Rank ``r`` of ``W`` takes every ``W``-th entry of that order,
starting at ``r``: the shares are disjoint and together cover the epoch.

Elastic resume
--------------
A rank's state says how many samples of its share it has *consumed* (handed to
the training loop; see ``ffrecord.torch.DataLoader``). The samples consumed by
all ranks of one layout form a *generation*. When the state is loaded by a
different number of ranks, the generation is closed: the samples not consumed
yet, kept in their global order, form the new list that the new ranks share
the same way. Closed generations are kept in the state (a few integers per old
rank), so an epoch can be resumed any number of times, on any number of ranks,
and every sample not consumed before is delivered exactly once afterwards
(with ``drop_last=False, pad=False``; padding repeats a few samples and
dropping skips a few, as the options say).
"""

import os

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["DistributedSampler", "epoch_order"]

_STATE_KIND = "ffrecord.torch.DistributedSampler"
_STATE_VERSION = 1
_U64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x):
    """The splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_order(n, seed, epoch, shuffle=True):
    """The global order of epoch ``epoch``: a permutation of ``range(n)`` as int64.

    Identical on every rank, every machine and every version of numpy/torch:
    it hashes ``(seed, epoch, i)`` with splitmix64 and sorts by the hash.
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([seed & _U64], dtype=np.uint64))
        base = _splitmix64(base ^ np.array([epoch & _U64], dtype=np.uint64))
        keys = _splitmix64(np.arange(n, dtype=np.uint64) * _GOLDEN + base[0])
    return np.argsort(keys, kind="stable").astype(np.int64, copy=False)


def share_positions(m, world_size, rank, drop_last, pad):
    """Positions (into a list of ``m`` entries) that form rank ``rank``'s share.

    Strided: rank r takes positions r, r + W, r + 2W, ... With ``drop_last``
    every share has ``m // W`` entries (the last ``m % W`` are left out); else
    with ``pad`` every share has ``ceil(m / W)`` entries, the missing ones taken
    again from the start of the list; else shares differ by at most one entry.
    """
    if drop_last:
        total = (m // world_size) * world_size
    elif pad and m > 0:
        total = -(-m // world_size) * world_size
    else:
        total = m
    positions = np.arange(rank, total, world_size, dtype=np.int64)
    if total > m:
        positions %= m
    return positions


def _check_int(value, name, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _default_layout(num_replicas, rank):
    """Explicit values, else the initialised process group, else torchrun's
    environment (RANK / WORLD_SIZE), else a single process."""
    if num_replicas is None or rank is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            world, me = dist.get_world_size(), dist.get_rank()
        elif "WORLD_SIZE" in os.environ and "RANK" in os.environ:
            world, me = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        else:
            world, me = 1, 0
        num_replicas = world if num_replicas is None else num_replicas
        rank = me if rank is None else rank
    num_replicas = _check_int(num_replicas, "num_replicas", 1)
    rank = _check_int(rank, "rank", 0)
    if rank >= num_replicas:
        raise ValueError(f"rank {rank} out of range for num_replicas={num_replicas}")
    return num_replicas, rank


def _chunked(indices, chunk=1 << 16):
    """Yields the indices as Python ints, converting a slice at a time (a
    list of the whole share would cost ~36 bytes per sample at once)."""
    for start in range(0, len(indices), chunk):
        yield from indices[start:start + chunk].tolist()


class _Plan:
    """What one iteration of an epoch delivers: the closed generations before
    it and how many samples of this rank's share to skip at its start."""

    def __init__(self, history=(), skip=0):
        self.history = [dict(g) for g in history]
        self.skip = skip


class DistributedSampler(Sampler):
    """Yields this rank's share of a full global shuffle of ``dataset``.

    ``dataset`` is anything with ``len()`` (or an int, the number of samples).
    ``num_replicas`` / ``rank`` default to the initialised process group, else
    torchrun's ``WORLD_SIZE`` / ``RANK``, else 1 / 0. The order of an epoch
    depends only on ``(seed, epoch)``; ``set_epoch(e)`` selects the epoch
    (like ``torch.utils.data.DistributedSampler``, iterating again without it
    repeats the same order). The tail when ``n`` is not a multiple of
    ``num_replicas``: ``drop_last=True`` leaves the last ``n % W`` samples of
    the order out, else ``pad=True`` (the default, as in torch) repeats samples
    from the start so every share has the same length, else ``pad=False``
    gives shares that differ by one sample and deliver every sample exactly once.

    Resume: ``state_dict(consumed=k)`` describes the epoch after this rank
    consumed the first ``k`` samples of its share; ``load_state_dict`` takes
    such a state (or the list of every old rank's state) on any number of
    ranks. See the module docstring and ``docs/TORCH.md``.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False, *, pad=True):
        if isinstance(dataset, (int, np.integer)) and not isinstance(dataset, bool):
            self.n = _check_int(dataset, "number of samples")
        else:
            self.n = len(dataset)
        self.num_replicas, self.rank = _default_layout(num_replicas, rank)
        self.shuffle = bool(shuffle)
        self.seed = _check_int(seed, "seed") & _U64
        self.drop_last = bool(drop_last)
        self.pad = bool(pad)
        self.epoch = 0
        self._pending = None   # a _Plan loaded by load_state_dict, for the next iteration
        self._active = _Plan()  # the plan of the iteration under way (or last one)
        self._cache_key = None
        self._cache = None

    # ---- epoch and iteration ----------------------------------------------
    def set_epoch(self, epoch):
        """Selects the epoch whose order the next iteration yields, from its start.

        Setting the epoch that a loaded state belongs to keeps that resume
        (the usual ``for epoch in range(start, end): set_epoch(epoch)`` loop);
        any other epoch drops it."""
        epoch = _check_int(epoch, "epoch")
        if epoch != self.epoch:
            self._pending = None
            self._active = _Plan()
        self.epoch = epoch

    def __iter__(self):
        plan = self._pending if self._pending is not None else _Plan()
        self._pending = None
        self._active = plan
        return _chunked(self._share(plan)[plan.skip:])

    def __len__(self):
        plan = self._pending if self._pending is not None else _Plan()
        return max(0, len(self._share(plan)) - plan.skip)

    @property
    def start_offset(self):
        """Samples of this rank's share that the next iteration skips (nonzero
        only after loading a mid-epoch state on the same number of ranks)."""
        return self._pending.skip if self._pending is not None else 0

    def share_length(self):
        """Length of this rank's share in the current generation (skips included)."""
        plan = self._pending if self._pending is not None else self._active
        return len(self._share(plan))

    # ---- state ------------------------------------------------------------
    def state_dict(self, consumed=0, *, batches=None, batch_size=None, drop_last_batch=False):
        """The epoch's state after this rank consumed ``consumed`` samples of its
        share since the current iteration began (samples skipped at its start
        by a resume count as consumed too).

        ``batches`` / ``batch_size`` / ``drop_last_batch`` (filled in by
        ``ffrecord.torch.DataLoader``) tell how the share was cut into batches,
        so that a single rank's state can stand for all ranks under lock-step
        training (every rank consumed the same number of batches).
        """
        plan = self._pending if self._pending is not None else self._active
        consumed = _check_int(consumed, "consumed")
        share_len = len(self._share(plan))
        done = plan.skip + consumed
        if done > share_len:
            raise ValueError(f"consumed={consumed} exceeds the rest of this rank's share ({share_len - plan.skip})")
        lockstep = None
        if batches is not None and batch_size is not None:
            lockstep = {
                "batches": _check_int(batches, "batches"),
                "batch_size": _check_int(batch_size, "batch_size", 1),
                "drop_last": bool(drop_last_batch),
            }
        return {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "n": self.n,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "history": [dict(g) for g in plan.history],
            "world_size": self.num_replicas,
            "rank": self.rank,
            "drop_last": self.drop_last,
            "pad": self.pad,
            "consumed": done,
            "lockstep": lockstep,
        }

    def load_state_dict(self, state):
        """Sets up the next iteration to deliver the rest of a saved epoch.

        ``state`` is one rank's ``state_dict()`` or a list of them (one per old
        rank, all of the same moment). With the same number of ranks as when
        saved, this rank continues its own share where it stopped. With a
        different number, the old layout becomes a closed generation and the
        samples not consumed by any old rank are shared anew. One state stands
        for all old ranks only under lock-step (see ``state_dict``); a list of
        every old rank's state is exact in all cases.
        """
        states = self._validate_states(state)
        first = states[0]
        history = [dict(g) for g in first["history"]]
        old_world = first["world_size"]
        tail = (first["drop_last"], first["pad"])
        remaining = self._remaining(history)
        lengths = [
            len(share_positions(len(remaining), old_world, r, *tail)) for r in range(old_world)
        ]
        consumed = self._consumed_vector(states, old_world, lengths)
        self.epoch = first["epoch"]
        same_layout = old_world == self.num_replicas and tail == (self.drop_last, self.pad)
        if same_layout:
            self._pending = _Plan(history, consumed[self.rank])
        else:
            closed = {"world_size": old_world, "consumed": consumed, "drop_last": tail[0], "pad": tail[1]}
            self._pending = _Plan(history + [closed], 0)

    # ---- internals --------------------------------------------------------
    def _validate_states(self, state):
        states = list(state) if isinstance(state, (list, tuple)) else [state]
        if not states:
            raise ValueError("load_state_dict needs at least one state")
        for s in states:
            if not isinstance(s, dict) or s.get("kind") != _STATE_KIND:
                raise ValueError("not a state of ffrecord.torch.DistributedSampler")
            if s.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported sampler state version {s.get('version')!r}")
            if s["n"] != self.n:
                raise ValueError(f"state is for {s['n']} samples, this sampler has {self.n}")
            if s["seed"] != self.seed or s["shuffle"] != self.shuffle:
                raise ValueError("state was saved with another seed or shuffle setting")
        keys = ("epoch", "history", "world_size", "drop_last", "pad")
        for s in states[1:]:
            if any(s[k] != states[0][k] for k in keys):
                raise ValueError("the states come from different epochs or layouts")
        if len(states) > 1:
            ranks = sorted(s["rank"] for s in states)
            if ranks != list(range(states[0]["world_size"])):
                raise ValueError(f"a list of states needs one per old rank, got ranks {ranks}")
        return states

    @staticmethod
    def _consumed_vector(states, world, lengths):
        if len(states) > 1:
            out = [0] * world
            for s in states:
                out[s["rank"]] = s["consumed"]
        else:
            s = states[0]
            step = s.get("lockstep")
            out = []
            for r in range(world):
                if r == s["rank"]:
                    out.append(s["consumed"])
                elif step is None:
                    out.append(min(s["consumed"], lengths[r]))
                elif step["drop_last"]:
                    out.append(min(step["batches"], lengths[r] // step["batch_size"]) * step["batch_size"])
                else:
                    out.append(min(step["batches"] * step["batch_size"], lengths[r]))
        for r, k in enumerate(out):
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= lengths[r]:
                raise ValueError(f"rank {r} consumed {k!r} samples of a share of {lengths[r]}")
        return out

    def _remaining(self, history):
        """The global order of this epoch minus what closed generations consumed."""
        remaining = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        for gen in history:
            taken = np.zeros(len(remaining), dtype=bool)
            for r in range(gen["world_size"]):
                pos = share_positions(len(remaining), gen["world_size"], r, gen["drop_last"], gen["pad"])
                taken[pos[: gen["consumed"][r]]] = True
            remaining = remaining[~taken]
        return remaining

    def _share(self, plan):
        key = (self.epoch, repr(plan.history))
        if key != self._cache_key:
            remaining = self._remaining(plan.history)
            pos = share_positions(len(remaining), self.num_replicas, self.rank, self.drop_last, self.pad)
            self._cache = remaining[pos]
            self._cache_key = key
        return self._cache

    def __repr__(self):
        return (
            f"<ffrecord.torch.DistributedSampler n={self.n} rank={self.rank}/{self.num_replicas} "
            f"epoch={self.epoch} shuffle={self.shuffle} seed={self.seed}>"
        )
