"""How much GPU memory a training step of train.py takes, from the model's shape alone: what
`python train.py --plan` prints, and what makes train.py turn activation checkpointing on by
itself before anything is allocated. docs/scaling.md works it out for 34B and 70B.

Read top to bottom: the bytes per GPU of each part of a step (memory_plan), the verdict against a
GPU's memory (plan_verdict: fits, fits with checkpointing, or the flags that would fit), the
model's shape from a checkpoint or config without its weights (plan_args), the plan as train.py
logs it (plan_run) and the --plan report.
"""
import os

import torch

from model import ModelArgs, Transformer, read_checkpoint
from plumbing import checkpoint
from tokenizer import Tokenizer

USABLE = 0.9    # of a GPU's memory: the rest for the CUDA context, NCCL buffers, fragmentation


def memory_plan(args: ModelArgs, world: int, micro_batch_size: int, seq_len: int, bf16: bool,
                reduce_dtype: str = "fp32", sharded: bool = True) -> dict:
    """Bytes per GPU of a training step, from the model's shape alone (built on the meta device:
    no memory) and the run's world size, micro-batch, sequence length and precision. The worst
    micro-batch is a full one: micro_batch_size rows padded to seq_len. Counted:
      params, grads, optimizer  float32 shards: 4 + 4 + 8 (Adam's two moments) bytes a parameter,
                                divided over the ranks (FSDP; sharded=False: one process, whole)
      working                   FSDP's unsharded compute copies: the root (embeddings, output)
                                for the whole step, two blocks (one in use, one prefetched) and
                                one block's unsharded gradients; one process in bf16: autocast's
                                bf16 copy of every weight
      activations               what backward keeps, per token and layer (a = 2 bf16, 4 fp32
                                bytes; d = dim, kv = KV width, h = FFN width): the two RMSNorms
                                (a float32 copy 4d and the output a*d each), rotary q and k (their
                                float32 copies, 8(d + kv)), attention's q, k, v and output
                                (a(2d + 2kv); a fused kernel: no T x T scores), wo's input (a*d),
                                SwiGLU's four h-wide tensors (4ah); plus one block's worth again
                                for the gradients backward makes of them. With checkpointing: each
                                block's input (a*d), one block recomputed, and its gradients
      logits                    tokens x vocab: the model's output, its float32 copy, the shifted
                                copy, log-softmax, and in backward their gradients (a + 20 bytes
                                an entry)
    Checked on the CPU (float32, one process) against the measured peak (tests/test_train.py)."""
    with torch.device("meta"):
        model = Transformer(args)
    n = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.layers[0].parameters())
    root = n - args.n_layers * block
    a = 2 if bf16 else 4
    r = 4 if reduce_dtype == "fp32" else 2
    tokens = micro_batch_size * seq_len
    d, kv, h = args.dim, args.n_kv_heads * args.head_dim, args.hidden_dim
    per_token_layer = 8 * d + 2 * a * d + 8 * (d + kv) + a * (2 * d + 2 * kv) + a * d + 4 * a * h
    share = world if sharded else 1
    if sharded:
        working = (root + 2 * block) * a + block * (a + r)
    else:
        working = 2 * n if bf16 else 0
    plan = dict(params=4 * n / share, grads=4 * n / share, optimizer=8 * n / share,
                working=working,
                activations=(args.n_layers + 1) * per_token_layer * tokens,
                activations_checkpointed=(args.n_layers * a * d + 2 * per_token_layer) * tokens,
                logits=tokens * args.vocab_size * (a + 20))
    fixed = sum(plan[k] for k in ("params", "grads", "optimizer", "working", "logits"))
    plan.update(total=fixed + plan["activations"],
                total_checkpointed=fixed + plan["activations_checkpointed"])
    plan = {key: round(value / 1e9, 3) for key, value in plan.items()}     # GB
    plan.update(n_params=n, world=world, sharded=sharded, micro_batch_size=micro_batch_size,
                seq_len=seq_len, compute="bf16" if bf16 else "fp32", reduce_dtype=reduce_dtype)
    return plan


def plan_verdict(plan: dict, gpu_gb: float, grad_checkpoint: bool, cfg, args, bf16) -> tuple:
    """(checkpointing on?, one line saying so). Turns checkpointing on when the run fits only with
    it; raises ValueError naming flags that fit when it does not fit even so."""
    usable = USABLE * gpu_gb
    head = f"memory plan: {plan['total']:.1f} GB per GPU, {plan['total_checkpointed']:.1f} GB " \
           f"with --grad-checkpoint; {usable:.0f} GB usable ({USABLE:.0%} of {gpu_gb:g} GB)"
    if not grad_checkpoint and plan["total"] <= usable:
        return False, f"{head}: fits"
    if plan["total_checkpointed"] <= usable:
        turned = "" if grad_checkpoint else ": turning activation checkpointing on"
        return True, f"{head}{turned}"
    # does not fit: the largest micro-batch that does, else the fewest GPUs
    fits = [m for m in range(cfg.micro_batch_size - 1, 0, -1)
            if cfg.batch_size % (plan["world"] * m) == 0
            and memory_plan(args, plan["world"], m, cfg.seq_len, bf16, cfg.reduce_dtype,
                            plan["sharded"])["total_checkpointed"] <= usable]
    if fits:
        hint = f"--micro-batch-size {fits[0]} --grad-checkpoint fits"
    else:       # more GPUs (a power of 2), the largest micro-batch that then fits
        more = next(((w, m) for w in (2 ** k for k in range(1, 12)) if w > plan["world"]
                     for m in range(cfg.micro_batch_size, 0, -1) if cfg.batch_size % (w * m) == 0
                     and memory_plan(args, w, m, cfg.seq_len, bf16, cfg.reduce_dtype)
                     ["total_checkpointed"] <= usable), None)
        hint = (f"--micro-batch-size {more[1]} --grad-checkpoint on {more[0]} GPUs fits" if more
                else "no GPU count up to 2048 fits: shorten --seq-len")
    raise ValueError(f"train.py: does not fit: {head}; {hint}")


def plan_args(cfg, tokenizer=None) -> ModelArgs:
    """The model's shape without its weights: --init's config (a Hugging Face config.json, its
    folder, or a Meta checkpoint), else the from-scratch flags; the vocabulary grown to the
    tokenizer's."""
    if cfg.init and os.path.isdir(cfg.init) and not os.path.isfile(
            os.path.join(cfg.init, "config.json")):
        args, _ = read_checkpoint(cfg.init)     # Meta layout: params.json + the shards, mmap-ed
    elif cfg.init:
        args = ModelArgs(**checkpoint.read_config(cfg.init))
    else:
        args = ModelArgs(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads, hidden_dim=cfg.hidden_dim,
                         vocab_size=tokenizer.vocab_size if tokenizer else 32008,
                         max_seq_len=max(cfg.seq_len, 2048))
    if tokenizer is not None:
        args.vocab_size = max(args.vocab_size, tokenizer.vocab_size)
    return args


def format_plan(plan: dict) -> str:
    rows = [("parameters (fp32 shards)", plan["params"]), ("gradients (fp32 shards)",
            plan["grads"]), ("AdamW moments (fp32 shards)", plan["optimizer"]),
            ("unsharded working copies", plan["working"]),
            ("activations", plan["activations"]),
            ("activations, checkpointed", plan["activations_checkpointed"]),
            ("logits and loss", plan["logits"]), ("total", plan["total"]),
            ("total, checkpointed", plan["total_checkpointed"])]
    head = (f"{plan['n_params'] / 1e9:.2f}B parameters on {plan['world']} GPU(s), micro-batch "
            f"{plan['micro_batch_size']} x {plan['seq_len']} tokens, {plan['compute']} compute, "
            f"{plan['reduce_dtype']} reduction; GB per GPU:")
    return "\n".join([head] + [f"  {name:<28} {gb:9.2f}" for name, gb in rows])


def plan_run(cfg, args: ModelArgs, world: int, gpu_gb: float, bf16: bool, sharded: bool,
             log=print) -> tuple:
    """What train.py does before it builds the model: the plan for this run, logged with its
    verdict. Returns (plan, activation checkpointing on?); raises ValueError if it cannot fit."""
    plan = memory_plan(args, world, cfg.micro_batch_size, cfg.seq_len, bf16, cfg.reduce_dtype,
                       sharded)
    log(format_plan(plan))
    checkpointing, verdict = plan_verdict(plan, gpu_gb, cfg.grad_checkpoint, cfg, args, bf16)
    log(verdict)
    return plan, checkpointing


def print_plan(cfg):
    """train.py --plan: the plan for --gpus GPUs of --gpu-memory-gb, what train.py would do."""
    world = cfg.gpus or int(os.environ.get("WORLD_SIZE", 1))
    tokenizer = Tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    args = plan_args(cfg, tokenizer)
    bf16 = cfg.precision != "fp32"             # --plan sizes GPUs: auto means bf16 there
    try:
        plan_run(cfg, args, world, cfg.gpu_memory_gb, bf16, sharded=True)
    except ValueError as e:
        print(str(e).removeprefix("train.py: "))
