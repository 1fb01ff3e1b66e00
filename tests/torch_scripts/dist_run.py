"""One rank of the torchrun test (see tests/test_torch_distributed.py).

Usage: torchrun --nproc_per_node=2 dist_run.py DATA OUTDIR

Each rank writes OUTDIR/rank{r}.json with what it loaded, and
OUTDIR/state_rank{r}.pt with its loader state taken mid-epoch.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import records  # noqa: E402

from ffrecord.torch import DataLoader, DistributedSampler, RecordDataset  # noqa: E402

BATCH = 4
STOP_AFTER = 3  # batches consumed before the mid-epoch state is taken


def epoch(loader):
    return [i for b in loader for i in b.tolist()]


def make_loader(ds, num_workers):
    # Rank and world size come from the initialised process group.
    sampler = DistributedSampler(ds, seed=17, pad=False)
    return DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=num_workers), sampler


def main():
    data, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds = RecordDataset(data, decode=records.index_tensor)
    result = {"rank": rank, "world": world}

    loader, sampler = make_loader(ds, num_workers=2)
    assert (sampler.rank, sampler.num_replicas) == (rank, world)
    sampler.set_epoch(0)
    result["epoch0"] = epoch(loader)
    sampler.set_epoch(0)
    result["epoch0_again"] = epoch(loader)
    sampler.set_epoch(1)
    result["epoch1"] = epoch(loader)

    # Mid-epoch state of epoch 1, then the rest of the epoch in this run.
    loader, sampler = make_loader(ds, num_workers=0)
    sampler.set_epoch(1)
    it = iter(loader)
    result["epoch1_head"] = [i for _ in range(STOP_AFTER) for i in next(it).tolist()]
    state = loader.state_dict()
    torch.save(state, os.path.join(out, f"state_rank{rank}.pt"))
    result["epoch1_tail"] = [i for b in it for i in b.tolist()]

    # A new loader (as after a restart) resumes from the saved state.
    loader, sampler = make_loader(ds, num_workers=0)
    loader.load_state_dict(torch.load(os.path.join(out, f"state_rank{rank}.pt"), weights_only=False))
    sampler.set_epoch(1)
    result["epoch1_resumed_tail"] = epoch(loader)

    # torch's own DistributedSampler with RecordDataset.
    tsampler = torch.utils.data.DistributedSampler(ds, seed=3)
    tsampler.set_epoch(0)
    result["torch_sampler"] = epoch(torch.utils.data.DataLoader(ds, batch_size=BATCH, sampler=tsampler))

    # The ranks' shares, gathered over the process group.
    gathered = [None] * world
    dist.all_gather_object(gathered, result["epoch0"])
    result["gathered_epoch0"] = gathered
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
