"""Several processes: tensor parallelism (one model split over N ranks) and model replicas.

Read top to bottom:
  1. tensor parallelism (Megatron-LM, the layout of Meta's model-parallel shards): which dimension
     of each weight is split, and the two collectives (all-reduce, all-gather) that make the split
     model compute what the whole one computes
  2. ranks: under `torchrun --nproc_per_node=W ... --tp N` the W ranks form W/N model replicas of N
     consecutive ranks, which share out the problems (data parallelism)
  3. lockstep: tensor-parallel inference, the replica's first rank running the loop and the others
     making the same model calls on their shards
NCCL between GPUs, gloo on the CPU (the tests). This file knows nothing of the model but its
parameter names (Meta's: layers.N.attention.wq, ..., output) and `args` (n_heads, dim, ...).

Every process group has an explicit timeout, sized for what its ranks wait on (Timeouts): a model
call's collectives are short waits; a follower waiting for its leader's next call, and a replica
waiting for the slowest one at the end of a run, are long ones, on groups of their own.
"""
import atexit
import datetime
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

# ------------------------------------------------------------------------------ tensor parallelism
# Megatron-LM's split, which is exactly the layout of Meta's model-parallel shards (fairscale's
# ColumnParallelLinear, RowParallelLinear and ParallelEmbedding in Meta's llama/model.py):
#   column-parallel, split by output rows (dim 0): wq wk wv (each rank has some heads), w1 w3 (some
#     hidden units), output (some vocabulary entries);
#   row-parallel, split by input columns (dim 1): wo and w2 take the matching slice of their input;
#   tok_embeddings split by embedding dimension (dim 1); norms replicated.
# Attention and the FFN then run on each rank's heads / hidden units alone, and two collectives make
# the result whole: an all-reduce after wo and after w2 (each rank holds a partial sum of the
# output), an all-gather after tok_embeddings and after output (each rank holds a slice of the last
# dimension).
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0,
             "wo": 1, "w2": 1, "tok_embeddings": 1}


def split_dim(key: str):
    """The dimension along which parameter `key` is split over tensor-parallel ranks, or None."""
    return SPLIT_DIM.get(key.removesuffix(".weight").rsplit(".", 1)[-1])


def check_tensor_parallel(args, world: int):
    """Refuse a split that would cut a head, a hidden unit or a vocabulary row in two."""
    counts = [("key/value heads", args.n_kv_heads), ("attention heads", args.n_heads),
              ("hidden units (FFN)", args.hidden_dim), ("vocabulary rows", args.vocab_size),
              ("dim", args.dim)]
    for what, n in counts:
        if n % world:
            gqa = " (each rank needs whole KV heads)" if what == "key/value heads" else ""
            raise ValueError(f"tensor parallelism over {world} ranks: the model's {n} {what} do "
                             f"not divide by {world}{gqa}")


def tensor_parallel(model, group):
    """Keep only this rank's slice of each split weight (on the meta device: only the shapes) and
    add the collectives. The KV cache (new_cache) then holds this rank's KV heads only. For
    inference: the collectives below do not carry gradients (training shards with FSDP,
    train.py)."""
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    check_tensor_parallel(model.args, world)
    for name, module in model.named_modules():
        if (dim := split_dim(name + ".weight")) is not None:
            n = module.weight.shape[dim] // world
            piece = module.weight.detach().narrow(dim, rank * n, n).clone()
            module.weight = nn.Parameter(piece, requires_grad=False)
    for block in model.layers:
        block.attention.n_heads //= world
        block.attention.n_kv_heads //= world
        block.attention.wo.register_forward_hook(functools.partial(_sum_over_ranks, group))
        block.feed_forward.w2.register_forward_hook(functools.partial(_sum_over_ranks, group))
    model.tok_embeddings.register_forward_hook(functools.partial(_concat_over_ranks, group))
    model.output.register_forward_hook(functools.partial(_concat_over_ranks, group))
    return model


def _sum_over_ranks(group, module, inputs, out):
    """After wo / w2 (split by input columns): each rank's output is the sum over its own heads /
    hidden units only; all-reduce adds the ranks' partial sums, so every rank holds the whole
    output."""
    dist.all_reduce(out, group=group)
    return out


def _concat_over_ranks(group, module, inputs, out):
    """After tok_embeddings / output (split by embedding dimension / vocabulary): each rank holds a
    slice of the last dimension; all-gather lays the ranks' slices side by side."""
    parts = [torch.empty_like(out) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, out.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


# ----------------------------------------------------------------------------- ranks and replicas
# The N ranks of a replica hold the N shards of one model (tensor_parallel above); the replicas
# share out the problems (data parallelism: eval.py run, infer.py --file), replica k taking every
# n_replicas-th problem.
@dataclass
class Timeouts:
    """How long a rank waits in a collective before the run is declared hung, per kind of wait.
    call: inside one model call (an all-reduce waits for the other ranks' matmuls; also the
      default group's setup): seconds in practice, minutes allowed for a first CUDA compile.
    wait: a follower waiting for its leader's next call (the leader may be running code in the
      sandbox, or waiting for the other replicas) and a replica waiting at the start or the end of
      a run for the slowest one (uneven model loading; problems of uneven length): hours.
    Both can be set from the environment: PARALLEL_CALL_TIMEOUT_S, PARALLEL_WAIT_TIMEOUT_S."""
    call: float = 600.0
    wait: float = 7 * 24 * 3600.0

    @classmethod
    def from_env(cls):
        return cls(float(os.environ.get("PARALLEL_CALL_TIMEOUT_S", cls.call)),
                   float(os.environ.get("PARALLEL_WAIT_TIMEOUT_S", cls.wait)))


def seconds(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=s)


@dataclass
class Ranks:
    """Where this process sits. A plain `python script.py` is Ranks(device): one replica, one
    rank."""
    device: torch.device
    rank: int = 0
    tp: int = 1               # ranks per model replica (tensor-parallel degree)
    replica: int = 0          # which replica this rank belongs to ...
    n_replicas: int = 1       # ... of how many (data parallelism)
    tp_group: object = None   # the process group of this replica's ranks (None: tp 1): the
                              # model's collectives, Timeouts.call
    end_group: object = None  # the replicas' leaders, for wait_for_all (gloo, Timeouts.wait)
    active: object = None     # the leader's Lockstep, until it is released

    @property
    def world(self) -> int:   # all ranks of the run
        return self.tp * self.n_replicas

    @property
    def leader(self) -> bool:  # runs the loop and writes the results for its replica
        return self.rank % self.tp == 0

    def wait_for_all(self, value=None) -> list:
        """Leaders only: return every leader's `value` (in replica order) once all have called this.
        Replicas can finish far apart in time, so this uses a CPU (gloo) group with the long
        timeout (Timeouts.wait): the first ones wait instead of timing out."""
        if self.end_group is None:
            return [value]
        values = [None] * self.n_replicas
        dist.all_gather_object(values, value, group=self.end_group)
        return values

    def finish(self, value=None) -> list:
        """Leaders only, at the end of a run: release this replica's followers (they return from
        follow), then wait_for_all(value). Nothing of the replica waits on its other ranks while
        it waits for the other replicas."""
        if self.active is not None:
            self.active.release()
        return self.wait_for_all(value)

    def lockstep(self, model) -> "Lockstep":
        """On a leader: the model to hand to the loop, each call announced to this replica's
        followers (nothing to announce without tensor parallelism)."""
        self.active = Lockstep(model, self.tp_group)
        return self.active


def init_ranks(tp: int = 1, timeouts: Timeouts | None = None) -> Ranks:
    """Start the process group when launched by torchrun (NCCL on GPUs, gloo on CPU) and arrange the
    ranks into replicas of `tp` consecutive ranks. Without torchrun: one process, tp must be 1.
    timeouts: per kind of wait (default Timeouts.from_env())."""
    timeouts = timeouts or Timeouts.from_env()
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
        dist.init_process_group("nccl" if cuda else "gloo", timeout=seconds(timeouts.call))
        # torn down before the interpreter is (left to exit, gloo's threads can abort the process)
        atexit.register(dist.destroy_process_group)
    rank = dist.get_rank()
    world = dist.get_world_size()
    if tp < 1 or world % tp:
        raise ValueError(f"--tp {tp}: the {world} ranks of this run do not form replicas of {tp} "
                         "ranks")
    # every rank creates every group, in the same order (torch.distributed requires it)
    tp_group = None
    if tp > 1:
        for first in range(0, world, tp):
            ranks = list(range(first, first + tp))
            model_group = dist.new_group(ranks, timeout=seconds(timeouts.call))
            # the followers wait here between calls: gloo (CPU), the long timeout
            calls_group = dist.new_group(ranks, backend="gloo", timeout=seconds(timeouts.wait))
            if rank in ranks:
                tp_group = model_group
                _ANNOUNCE[tp_group] = calls_group
    end_group = dist.new_group(list(range(0, world, tp)), backend="gloo",
                               timeout=seconds(timeouts.wait))
    return Ranks(device, rank, tp, replica=rank // tp, n_replicas=world // tp, tp_group=tp_group,
                 end_group=end_group)


# A replica's model group -> the group on which its leader announces calls (init_ranks): the
# follower listens where its leader speaks, and waits there as long as the leader needs.
_ANNOUNCE = {}


# -------------------------------------------------------------------------------------- lockstep
# Inference under tensor parallelism runs in lockstep. The replica's first rank, the leader, runs
# the whole loop (infer.solve): it samples, runs the code in its sandbox, starts and retires rows.
# Its model is wrapped in Lockstep, which broadcasts each call's inputs (token ids: the sampled
# tokens and the encoded execution output alike) before making the call; the other ranks (follow)
# receive every call and make it on their shards, so each collective meets its partner on every
# rank. Nothing a follower does depends on sampling, code execution or timing (a timeout seen by
# one rank only would otherwise desynchronise them), so the ranks cannot diverge.
class Lockstep(nn.Module):
    """The leader's model: each call is announced to the followers, then made. release() (or
    leaving a `with` block) lets the followers return. group None: no followers, calls pass
    straight through. Announcements go over the replica's gloo group with the long timeout (the
    followers wait there); the model's own collectives over `group` (the short one). The leader
    first meets its followers there, so one that loads its shard late is waited for."""

    def __init__(self, model, group=None):
        super().__init__()
        self.model = model
        self.group = None if group is None else _ANNOUNCE.get(group, group)
        self.args = model.args
        self.cache = None
        self.released = False
        if self.group is not None:
            dist.barrier(group=self.group)

    def announce(self, call):
        if self.group is not None:
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

    def release(self):
        if not self.released:
            self.released = True
            self.announce(None)

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.release()


@torch.no_grad()
def follow(model, group):
    """A follower: make every call the leader announces, on this rank's shards, until it is
    released. The outputs are dropped (the leader computes the same)."""
    device = next(model.parameters()).device
    cache = None
    group = _ANNOUNCE.get(group, group)      # where the leader announces (and we wait)
    dist.barrier(group=group)                # meet the leader (Lockstep.__init__)
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
