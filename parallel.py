"""Several processes (torchrun): ranks grouped into model replicas; tensor-parallel inference in
lockstep.

    torchrun --nproc_per_node=W eval.py run ... --tp N

The W ranks form W/N model replicas of N consecutive ranks. The N ranks of a replica hold the N
shards of one model (tensor parallelism, model.tensor_parallel); the replicas share out the problems
(data parallelism: eval.py run, infer.py --file). NCCL between GPUs, gloo on the CPU (the tests).

Inference under tensor parallelism runs in lockstep. The replica's first rank, the leader, runs the
whole loop (infer.solve): it samples, runs the code in its sandbox, starts and retires rows. Its
model is wrapped in Lockstep, which broadcasts each call's inputs (token ids: the sampled tokens and
the encoded execution output alike) before making the call; the other ranks (follow) receive every
call and make it on their shards, so each of the model's collectives meets its partner on every
rank. Nothing a follower does depends on sampling, code execution or timing (a timeout seen by one
rank only would otherwise desynchronise them), so the ranks cannot diverge.
"""
import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Ranks:
    """Where this process sits. A plain `python script.py` is Ranks(device): one replica, one
    rank."""
    device: torch.device
    rank: int = 0
    tp: int = 1               # ranks per model replica (tensor-parallel degree)
    replica: int = 0          # which replica this rank belongs to ...
    n_replicas: int = 1       # ... of how many (data parallelism)
    tp_group: object = None   # the process group of this replica's ranks (None: tp 1)
    end_group: object = None  # all ranks, for wait_for_all

    @property
    def leader(self) -> bool:  # runs the loop and writes the results for its replica
        return self.rank % self.tp == 0

    def wait_for_all(self):
        """Return once every rank has called this. Replicas can finish far apart in time, so this
        uses a CPU (gloo) group with a long timeout: the first ones wait instead of timing out."""
        if self.end_group is not None:
            dist.barrier(group=self.end_group)

    def lockstep(self, model):
        """On a leader: the model to hand to the loop (wrapped in Lockstep under tensor
        parallelism). A context manager: on leaving, the followers are released."""
        return Lockstep(model, self.tp_group) if self.tp > 1 else nullcontext(model)


def init(tp: int = 1) -> Ranks:
    """Start the process group when launched by torchrun (NCCL on GPUs, gloo on CPU) and arrange the
    ranks into replicas of `tp` consecutive ranks. Without torchrun: one process, tp must be 1."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if tp != 1:
            raise ValueError(f"--tp {tp} needs torchrun --nproc_per_node=<a multiple of {tp}>")
        return Ranks(torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if tp < 1 or world % tp:
        raise ValueError(f"--tp {tp}: the {world} ranks of this run do not form replicas of {tp} "
                         "ranks")
    # every rank creates every group, in the same order (torch.distributed requires it)
    groups = [dist.new_group(list(range(k, k + tp))) for k in range(0, world, tp)] if tp > 1 else []
    end_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
    return Ranks(device, rank, tp, rank // tp, world // tp, groups[rank // tp] if groups else None,
                 end_group)


class Lockstep(nn.Module):
    """The leader's model: each call is announced to the followers, then made. Used as a context
    manager; on leaving (also on an error), the followers are released."""

    def __init__(self, model, group):
        super().__init__()
        self.model, self.group, self.args = model, group, model.args
        self.cache = None

    def announce(self, call):
        dist.broadcast_object_list([call], group=self.group, group_src=0)

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None):
        self.announce(("new_cache", batch_size, max_len, dtype))
        self.cache = None  # free the old cache first: a 70B model's cache can fill most of a GPU
        self.cache = self.model.new_cache(batch_size, max_len, device, dtype)
        return self.cache

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None, last_only=False):
        if cache is not None and cache is not self.cache:
            raise ValueError("Lockstep: only the cache made by the last new_cache can be used")
        cpu = lambda t: None if t is None else torch.as_tensor(t).cpu()
        self.announce(("forward", cpu(tokens), cpu(positions), cpu(doc_ids), cache is not None,
                       cpu(rows), last_only))
        return self.model(tokens, positions, doc_ids, cache, rows, last_only)

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.announce(None)


@torch.no_grad()
def follow(model, group):
    """A follower: make every call the leader announces, on this rank's shards, until it is
    released. The outputs are dropped (the leader computes the same)."""
    device, cache = next(model.parameters()).device, None
    while True:
        box = [None]
        dist.broadcast_object_list(box, group=group, group_src=0)
        if box[0] is None:
            return
        kind, *args = box[0]
        if kind == "new_cache":
            batch_size, max_len, dtype = args
            cache = None
            cache = model.new_cache(batch_size, max_len, dtype=dtype)
        else:
            tokens, positions, doc_ids, cached, rows, last_only = (
                t.to(device) if torch.is_tensor(t) else t for t in args)
            model(tokens, positions, doc_ids, cache if cached else None, rows, last_only)
