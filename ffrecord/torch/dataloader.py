"""A ``torch.utils.data.DataLoader`` that can stop mid-epoch and resume exactly.

What "consumed" means
---------------------
A batch is *consumed* when the loader's iterator has returned it to the
training loop (``next()`` gave it back). Batches that workers have fetched
ahead, or that wait in the prefetch queue, are not consumed. ``state_dict()``
counts consumed batches and samples of the current iteration, so a state
saved right after a training step resumes at the batch after the last one
that step saw, whatever ``num_workers``, ``prefetch_factor`` or
``persistent_workers`` were.

How the position is restored
----------------------------
* With ``ffrecord.torch.DistributedSampler`` (also what ``shuffle=True``
  uses here), the sampler skips the consumed samples itself, and a state can
  be loaded by a different number of ranks (elastic resume).
* With any other sampler, the loader records the random state the sampler
  started the epoch from (the generator of ``RandomSampler`` and friends, or
  torch's global RNG when they have none; the epoch of a
  ``torch.utils.data.DistributedSampler``), replays the epoch's index order
  from it and skips the consumed batches without reading them.
"""

import collections
import inspect
import itertools
import multiprocessing
import weakref

import torch
import torch.utils.data

from ._shipment import ShippingCollate
from .packed import packed_collate
from .sampler import DistributedSampler

__all__ = ["DataLoader", "SkipableSampler"]

# torch < 2.6 has no in_order argument (and always delivers in order).
_TORCH_HAS_IN_ORDER = "in_order" in inspect.signature(torch.utils.data.DataLoader.__init__).parameters
_STATE_FORMAT = "ffrecord.torch.DataLoader"
_STATE_VERSION = 1
_END = object()


def _batch_size_of(item):
    """Samples in one item of the index sampler (a list of indices, or one index)."""
    try:
        return len(item)
    except TypeError:
        return 1


def _generators(index_sampler):
    """CPU torch.Generator objects that drive the index order, outermost first."""
    found, seen = [], set()
    for obj in (index_sampler, getattr(index_sampler, "sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and gen.device.type == "cpu" and id(gen) not in seen:
            seen.add(id(gen))
            found.append(gen)
    return found


class _Run:
    """Book-keeping of one iteration over the loader."""

    def __init__(self, epoch, skip=0, skip_samples=0, prior_batches=0, prior_samples=0, replay=None):
        self.epoch = epoch
        self.skip = skip                  # batches to skip by replaying the index order
        self.skip_samples = skip_samples  # the samples in them, when known in advance
        self.prior_batches = prior_batches  # consumed before this iteration (sampler skips them)
        self.prior_samples = prior_samples
        self.replay = replay              # random state to start the epoch from, or None
        self.snapshot = replay            # random state the epoch started from
        self.skipped_batches = 0
        self.skipped_samples = 0
        self.batches = 0                  # handed to the training loop in this iteration
        self.samples = 0
        self.produced = collections.deque()  # sizes of index batches sent ahead, oldest first
        self.started = False
        self.finished = False
        self.total = None

    def index_batches(self, inner):
        """The index stream of this iteration (replayed and skipped as planned)."""
        gens = _generators(inner)
        if self.replay is not None:
            for gen, state in zip(gens, self.replay["generators"]):
                gen.set_state(state)
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.replay["torch_rng"])
                it = iter(inner)
                first = next(it, _END)  # samplers without a generator draw their seed here
        else:
            self.snapshot = {
                "torch_rng": torch.get_rng_state(),
                "generators": [g.get_state() for g in gens],
            }
            it = iter(inner)
            first = next(it, _END)
        self.started = True
        pending = first
        while pending is not _END and self.skipped_batches < self.skip:
            self.skipped_batches += 1
            self.skipped_samples += _batch_size_of(pending)
            pending = next(it, _END)
        while pending is not _END:
            self.produced.append(_batch_size_of(pending))
            yield pending
            pending = next(it, _END)

    def consume(self):
        self.batches += 1
        self.samples += self.produced.popleft() if self.produced else 0

    @property
    def consumed_batches(self):
        skipped = self.skipped_batches if self.started else self.skip
        return self.prior_batches + skipped + self.batches

    @property
    def consumed_samples(self):
        skipped = self.skipped_samples if self.started else self.skip_samples
        return self.prior_samples + skipped + self.samples

    @property
    def samples_this_iteration(self):
        """Samples consumed since the sampler began this iteration (skips included)."""
        return (self.skipped_samples if self.started else 0) + self.samples


class _ResumableIndexSampler:
    """Stands in for the loader's index sampler: iterating it runs the plan of
    the loader's current iteration; its length is that iteration's.

    It holds the loader weakly: a reference cycle would leave the loader (and
    its persistent workers) to the garbage collector, whose late shutdown of
    workers is slow."""

    def __init__(self, loader, inner):
        self._loader = weakref.ref(loader)
        self.inner = inner

    def __iter__(self):
        return self._loader()._current_run().index_batches(self.inner)

    def __len__(self):
        return self._loader()._planned_length(self.inner)


class _LoaderIterator:
    """Counts the batches handed to the caller; everything else is torch's iterator."""

    def __init__(self, run, iterator):
        self._run = run
        self._it = iterator

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._it)
        except StopIteration:
            self._run.finished = True
            raise
        self._run.consume()
        return batch

    def __len__(self):
        return len(self._it)

    def __getattr__(self, name):
        return getattr(self._it, name)


class DataLoader(torch.utils.data.DataLoader):
    """``torch.utils.data.DataLoader`` plus mid-epoch resume.

    The arguments are torch's. Differences:

    * ``shuffle=True`` (without a sampler) with a ``generator`` and no
      ``seed`` shuffles exactly as torch's DataLoader (and the original
      FFRecord loader) does with that generator: torch's ``RandomSampler``,
      the same order for the same generator state.
    * ``shuffle=True`` otherwise orders each epoch by
      ``ffrecord.torch.DistributedSampler`` on one rank: epoch ``e`` of a
      loader is a fixed permutation of ``(seed, e)``; ``seed`` defaults to a
      number drawn from torch's global RNG when the loader is built, and the
      epoch advances by one at each new iteration (or is chosen with
      ``set_epoch``). This order survives elastic resume.
    * With workers and no ``multiprocessing_context``, workers are forked
      where the platform can (as the original FFRecord loader did); pass
      ``multiprocessing_context='spawn'`` to spawn them.
    * A dataset with ``packed=True`` gets ``collate_fn=packed_collate``.
    * What ``collate_fn`` returns in a worker crosses to the training process
      as its structure plus one shared-memory buffer for its arrays and
      tensors (see ``docs/TORCH.md``); it arrives as the same structure.
    * ``state_dict()`` / ``load_state_dict()`` save and restore the position in
      the epoch; see the module docstring for what counts as consumed.
    * ``set_step(step)`` (from the original package): every iteration after it
      starts at batch ``step`` of its epoch, until ``set_step(0)``.
      ``skippable=False`` (also from it) turns ``set_step`` off.
    * The original loader took ``generator`` as its twelfth positional
      argument, where torch has ``multiprocessing_context``: a
      ``torch.Generator`` passed there is taken as the generator.
    * ``prefetch_factor`` is ignored without workers (torch refuses it; the
      original loader passed it).
    * ``in_order=False`` is refused: counting consumed batches needs order.
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None, num_workers=0,
                 collate_fn=None, pin_memory=False, drop_last=False, timeout=0, worker_init_fn=None,
                 multiprocessing_context=None, generator=None, *, prefetch_factor=None,
                 persistent_workers=False, pin_memory_device="", in_order=True, seed=None, skippable=True):
        if not in_order:
            raise ValueError("ffrecord.torch.DataLoader needs in_order=True to know which batches were consumed")
        if isinstance(multiprocessing_context, torch.Generator) and generator is None:
            generator, multiprocessing_context = multiprocessing_context, None
        if not num_workers:
            prefetch_factor = None  # meaningless without workers; the original loader passed 2 regardless
        auto_epoch = False
        map_style = not isinstance(dataset, torch.utils.data.IterableDataset)
        torch_order = generator is not None and seed is None  # the order torch's loader gives
        if shuffle and sampler is None and batch_sampler is None and map_style and not torch_order:
            if seed is None:
                seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
            sampler = DistributedSampler(len(dataset), num_replicas=1, rank=0, shuffle=True, seed=seed)
            shuffle = None
            auto_epoch = True
        elif seed is not None:
            raise ValueError("seed is for shuffle=True without a sampler; seed your sampler instead")
        if collate_fn is None and getattr(dataset, "packed", False) is True:
            collate_fn = packed_collate
        if num_workers and multiprocessing_context is None and "fork" in multiprocessing.get_all_start_methods():
            multiprocessing_context = "fork"
        optional = {"in_order": in_order} if _TORCH_HAS_IN_ORDER else {}
        super().__init__(
            dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, batch_sampler=batch_sampler,
            num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last,
            timeout=timeout, worker_init_fn=worker_init_fn, multiprocessing_context=multiprocessing_context,
            generator=generator, prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device, **optional,
        )
        if num_workers:  # batches cross from workers as structure plus shared memory
            self.collate_fn = ShippingCollate(self.collate_fn)
        self._auto_epoch = auto_epoch
        self._next_epoch = 0
        self.skippable = bool(skippable)
        self._step = 0
        self._pending = None
        self._run = None
        self._resumable = None

    # ---- torch hooks ------------------------------------------------------
    @property
    def _index_sampler(self):
        inner = super()._index_sampler
        if self._resumable is None or self._resumable.inner is not inner:
            self._resumable = _ResumableIndexSampler(self, inner)
        return self._resumable

    def __iter__(self):
        self._run = self._begin_run()
        return _LoaderIterator(self._run, super().__iter__())

    # ---- the original package's API ---------------------------------------
    def set_step(self, step):
        """Every following iteration skips its first ``step`` batches (without
        reading them), as in the original FFRecord package; ``set_step(0)``
        turns it off. A state loaded with ``load_state_dict`` takes precedence
        for the iteration right after it. A loader built with
        ``skippable=False`` refuses it (ValueError)."""
        if not self.skippable:
            raise ValueError("set_step needs a loader built with skippable=True")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        total = len(super()._index_sampler)
        if not 0 <= step <= total:
            raise ValueError(f"step must be in [0, {total}], got {step}")
        self._step = step
        if self._run is not None:  # len() now tells the next iteration's length, as in the original
            self._run.total = None

    # ---- epochs -----------------------------------------------------------
    def set_epoch(self, epoch):
        """Chooses the epoch of the next iteration (forwarded to the sampler)."""
        target = self._sampler_with_epoch()
        if target is not None:
            target.set_epoch(epoch)
        self._next_epoch = epoch
        if self._pending is not None and self._pending.epoch != epoch:
            self._pending = None

    # ---- state ------------------------------------------------------------
    def state_dict(self):
        """The loader's position: epoch, batches and samples consumed in it, and
        what the sampler needs to reproduce the epoch. Plain Python values and
        CPU tensors, for ``torch.save`` or ``ffrecord.checkpoint``."""
        self._check_map_style()
        world, rank = self._layout()
        state = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "dataset_len": len(self.dataset),
            "world_size": world,
            "rank": rank,
            "next_epoch": self._next_epoch if self._auto_epoch else None,
        }
        run = self._pending if self._pending is not None else self._run
        if run is None or not (run.started or run is self._pending):
            if run is not None and self._auto_epoch:
                state["next_epoch"] = run.epoch  # an iteration began but drew nothing yet
            state.update(epoch=state["next_epoch"] if self._auto_epoch else self._epoch_now(),
                         started=False, finished=False, batches=0, samples=0, sampler=None, replay=None)
            return state
        ffr = self._ffrecord_sampler()
        state.update(
            epoch=run.epoch,
            started=True,
            finished=run.finished,
            batches=run.consumed_batches,
            samples=run.consumed_samples,
            replay=None if ffr is not None else run.snapshot,
            sampler=None,
        )
        if ffr is not None:
            state["sampler"] = ffr.state_dict(
                run.samples_this_iteration,
                batches=run.consumed_batches,
                batch_size=self.batch_size,
                drop_last_batch=self.drop_last,
            )
        return state

    def load_state_dict(self, state):
        """Makes the next iteration deliver exactly what the saved one had not
        yet handed out, in the same order.

        ``state`` is one ``state_dict()``, or the list of every rank's states
        saved at the same step. On the same number of ranks each rank loads
        its own (or, under lock-step training, any one). On a different number
        of ranks (elastic resume, needs ``ffrecord.torch.DistributedSampler``)
        every new rank loads the same state or list; the samples no old rank
        consumed are then shared among the new ranks, each exactly once.
        """
        self._check_map_style()
        states = list(state) if isinstance(state, (list, tuple)) else [state]
        if not states:
            raise ValueError("load_state_dict needs a state")
        for s in states:
            if not isinstance(s, dict) or s.get("format") != _STATE_FORMAT:
                raise ValueError("not a state of ffrecord.torch.DataLoader")
            if s.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported DataLoader state version {s.get('version')!r}")
            if s["dataset_len"] != len(self.dataset):
                raise ValueError(f"state is for a dataset of {s['dataset_len']} samples, this one has {len(self.dataset)}")
        world, rank = self._layout()
        mine = next((s for s in states if s["rank"] == rank), states[0])
        if self._auto_epoch and mine["next_epoch"] is not None:
            self._next_epoch = mine["next_epoch"]
        self._pending = None
        self._run = None
        if not any(s["started"] for s in states) or all(s["finished"] for s in states):
            return
        ffr = self._ffrecord_sampler()
        if ffr is not None:
            sampler_states = [s["sampler"] for s in states]
            if any(s is None for s in sampler_states):
                raise ValueError("the state was saved without ffrecord.torch.DistributedSampler")
            ffr.load_state_dict(sampler_states if len(states) > 1 else sampler_states[0])
            saved = mine["sampler"]
            continued = (saved["world_size"], saved["drop_last"], saved["pad"]) == \
                (ffr.num_replicas, ffr.drop_last, ffr.pad)
            plan = _Run(
                mine["epoch"],
                prior_batches=mine["batches"] if continued else 0,
                prior_samples=ffr.start_offset,
            )
        else:
            if mine["world_size"] != world:
                raise ValueError(
                    f"state saved by {mine['world_size']} ranks cannot be resumed on {world} without "
                    "ffrecord.torch.DistributedSampler (elastic resume)"
                )
            if mine["replay"] is None:
                raise ValueError("the state has no sampler position to replay")
            target = self._sampler_with_epoch()
            if target is not None and mine["epoch"] is not None:
                target.set_epoch(mine["epoch"])
            plan = _Run(mine["epoch"], skip=mine["batches"], skip_samples=mine["samples"], replay=mine["replay"])
        self._pending = plan
        if self._auto_epoch:
            self._next_epoch = mine["epoch"]

    # ---- internals --------------------------------------------------------
    def _check_map_style(self):
        if isinstance(self.dataset, torch.utils.data.IterableDataset):
            raise TypeError("state_dict / load_state_dict need a map-style dataset; an iterable-style "
                            "dataset keeps its position in its own iterator")

    def _ffrecord_sampler(self):
        for obj in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if isinstance(obj, DistributedSampler):
                return obj
        return None

    def _sampler_with_epoch(self):
        for obj in (self.sampler, getattr(self.batch_sampler, "sampler", None), self.batch_sampler):
            if obj is not None and hasattr(obj, "set_epoch"):
                return obj
        return None

    def _epoch_now(self):
        if self._auto_epoch:
            return self._next_epoch
        target = self._sampler_with_epoch()
        return getattr(target, "epoch", None) if target is not None else None

    def _layout(self):
        for obj in (self._ffrecord_sampler(), self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if obj is not None and hasattr(obj, "num_replicas") and hasattr(obj, "rank"):
                return int(obj.num_replicas), int(obj.rank)
        return 1, 0

    def _begin_run(self):
        plan, self._pending = self._pending, None
        if plan is not None and plan.epoch is not None:
            target = self._sampler_with_epoch()
            current = getattr(target, "epoch", plan.epoch) if target is not None else plan.epoch
            if current != plan.epoch:  # the caller moved to another epoch since loading
                plan = None
        if plan is None:
            if self._auto_epoch:
                self._ffrecord_sampler().set_epoch(self._next_epoch)
            plan = _Run(self._epoch_now(), skip=self._step)
        if self._auto_epoch:
            self._next_epoch = plan.epoch + 1
        try:
            plan.total = self._planned_length(super()._index_sampler, plan)
        except TypeError:  # an index stream without a length (iterable-style dataset)
            plan.total = None
        return plan

    def _current_run(self):
        if self._run is None:  # iterated through torch internals directly
            self._run = self._begin_run()
        return self._run

    def _planned_length(self, inner, plan=None):
        """Batches that the iteration under way (else the next one) yields in all."""
        if plan is None:
            run = self._run
            if self._pending is not None:
                plan = self._pending
            elif run is not None and not run.finished and run.total is not None:
                return run.total
        skip = plan.skip if plan is not None else self._step
        return max(0, len(inner) - skip)


class SkipableSampler(torch.utils.data.Sampler):
    """The original FFRecord loader's wrapper, for code that used it directly:
    iterating it yields the items of ``sampler`` (usually a batch sampler)
    after the first ``step`` ones, every time, until ``set_step(0)``. The
    skipped items are still drawn from ``sampler``, so a random order is the
    one an uninterrupted pass gives. (``DataLoader.set_step`` does not need it.)"""

    def __init__(self, sampler):
        self.sampler = sampler
        self.step = 0

    def __iter__(self):
        # A generator, so nothing is drawn before the first item is asked for.
        yield from itertools.islice(self.sampler, self.step, None)

    def __len__(self):
        return max(0, len(self.sampler) - self.step)

    def set_step(self, step):
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.step = step
