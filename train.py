"""
Supervised fine-tuning of a Llama model on LCE data (paper §2.3, docs/method.md §3); no Trainer.

The whole recipe in one loop:
    loss    next-token cross-entropy on the assistant's text and code blocks only (labels other than
            lce_data.IGNORE; execution output and the prompt carry no loss), summed over the global
            batch and divided by the loss tokens of the WHOLE global batch (all micro-batches, all
            ranks), so a long solution counts per token however the batch is split
    optim   AdamW, linear warmup then cosine decay, gradient clipping, gradient accumulation
    scale   FSDP2 (`fully_shard`: each TransformerBlock, then the root) under torchrun: parameters,
            grads and optimizer state are sharded over the ranks (the paper's DeepSpeed ZeRO-3)
    numbers bf16 compute with float32 master weights on GPU; float32 on CPU
Defaults follow the paper: 3 epochs, lr 2e-5, global batch 128, sequence length 2048.

    python train.py --data train.jsonl --out out/sft --init /ckpt/Llama-2-7b-hf          # 1 process
    torchrun --nproc_per_node=8 train.py --data train.jsonl --out out/sft --init /ckpt/...  # FSDP
    python train.py --data tiny.jsonl --out out/tiny --tokenizer tok.model --dim 64 --n-layers 2 \\
        --n-heads 4 --hidden-dim 172 --batch-size 8 --micro-batch-size 4 --seq-len 512 --lr 1e-3
    python train.py ... --resume    # after a crash or kill: on from OUT/checkpoint.pt, same losses

Writes OUT/config.json, OUT/log.jsonl (one line per step), OUT/checkpoint.pt (every --save-every
steps and at the end), OUT/final/ (Hugging Face layout: save_pretrained + tokenizer.save),
OUT/summary.json, and OUT/loss.svg (loss and learning rate per step, redrawn at each checkpoint).
"""
import argparse
import dataclasses
import functools
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.utils.checkpoint import checkpoint

import html_views
import lce_data
from lce_data import IGNORE
from model import ModelArgs, Transformer, grow_rows, read_checkpoint
from storage import append_jsonl, atomic_open, atomic_write, write_json
from tokenizer import Tokenizer


def arg(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    data: str = arg("", "training records, JSONL (messages or debug_result schema) [required]")
    out: str = arg("", "output directory [required]")
    init: str | None = arg(None, "pretrained checkpoint (HF or Meta layout); none: from scratch")
    tokenizer: str | None = arg(None, "SentencePiece .model (default: INIT's, with added tokens)")
    dim: int = arg(64, "from scratch: model width (ignored with --init)")
    n_layers: int = arg(2, "from scratch: transformer blocks")
    n_heads: int = arg(4, "from scratch: attention heads")
    n_kv_heads: int | None = arg(None, "from scratch: key/value heads (GQA); default = n_heads")
    hidden_dim: int = arg(172, "from scratch: SwiGLU FFN width")
    epochs: int = arg(3, "passes over the data (paper: 3)")
    lr: float = arg(2e-5, "peak learning rate (paper: 2e-5)")
    min_lr: float = arg(0.0, "learning rate at the end of the cosine decay")
    warmup_ratio: float = arg(0.03, "linear warmup over this fraction of all steps ...")
    warmup_steps: int | None = arg(None, "... or over exactly this many steps")
    weight_decay: float = arg(0.0, "AdamW weight decay (matrices only, not norm gains)")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.999, "AdamW beta2")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0: no clipping)")
    batch_size: int = arg(128, "GLOBAL batch in sequences, all ranks and micro-batches (paper 128)")
    micro_batch_size: int = arg(4, "sequences per forward/backward per rank; accumulation = "
                                   "batch / (world * this)")
    seq_len: int = arg(2048, "examples are truncated to this many tokens (paper: 2048)")
    pack: bool = arg(False, "pack examples in seq_len rows, document-masked (paper: one per row)")
    train_on_execution: bool = arg(False, "ablation: also put loss on execution blocks (paper: no)")
    precision: str = arg("auto", "auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32; weights stay fp32")
    grad_checkpoint: bool = arg(False, "activation checkpointing: recompute each block in backward")
    seed: int = arg(0, "seed for the init and the data order")
    max_steps: int | None = arg(None, "stop after this many steps (the schedule ends there too)")
    save_every: int = arg(500, "checkpoint every N steps (and at the end)")
    resume: bool = arg(False, "continue from OUT/checkpoint.pt")
    export_dtype: str = arg("float32", "dtype of the OUT/final weights: float32 | bfloat16")
    peak_tflops: float = arg(989.0, "dense bf16 TFLOP/s of a GPU, for MFU (H100 SXM 989, A100 312)")
    log_every: int = arg(1, "print the progress line every N steps (log.jsonl gets every step)")
    quiet: bool = arg(False, "no progress lines")


def parse_args(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.default is False:
            parser.add_argument(flag, action="store_true", help=field.metadata["help"])
            continue
        kind = str(field.type)
        parse = int if "int" in kind else float if "float" in kind else str
        parser.add_argument(flag, type=parse, default=field.default,
                            help=field.metadata["help"] + " (%(default)s)")
    return TrainConfig(**vars(parser.parse_args(argv)))


def check_config(cfg: TrainConfig, world: int) -> str:
    """Every check that needs no model: fail in seconds, before any GPU memory is taken. Returns the
    tokenizer's path."""
    def bad(msg):
        raise ValueError(f"train.py: {msg}")
    if not cfg.data or not os.path.isfile(cfg.data):
        bad(f"--data {cfg.data!r}: file not found")
    if not cfg.out:
        bad("--out is required")
    if cfg.init is not None and not os.path.isdir(cfg.init):
        bad(f"--init {cfg.init!r}: checkpoint directory not found")
    tokenizer_path = cfg.tokenizer
    if tokenizer_path is None and cfg.init:
        tokenizer_path = os.path.join(cfg.init, "tokenizer.model")
    if tokenizer_path is None or not os.path.isfile(tokenizer_path):
        bad(f"tokenizer {tokenizer_path!r} not found (give --tokenizer TOK.model, or --init DIR "
            "holding tokenizer.model)")
    for name in ("epochs", "batch_size", "micro_batch_size", "seq_len", "save_every", "log_every",
                 "max_steps", "warmup_steps", "dim", "n_layers", "n_heads", "n_kv_heads",
                 "hidden_dim"):
        value = getattr(cfg, name)
        low = 0 if name == "warmup_steps" else 1
        if value is not None and value < low:
            bad(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if not (cfg.lr > 0 and 0 <= cfg.min_lr <= cfg.lr and 0 <= cfg.warmup_ratio < 1
            and cfg.grad_clip >= 0):
        bad("need lr > 0, 0 <= min-lr <= lr, 0 <= warmup-ratio < 1, grad-clip >= 0")
    if cfg.batch_size % (world * cfg.micro_batch_size):
        bad(f"--batch-size {cfg.batch_size} must be a multiple of world size {world} x "
            f"--micro-batch-size {cfg.micro_batch_size}")
    n_kv_heads = cfg.n_kv_heads or cfg.n_heads
    if cfg.init is None and (cfg.dim % cfg.n_heads or cfg.n_heads % n_kv_heads):
        bad(f"--dim {cfg.dim} must divide by --n-heads {cfg.n_heads}, which must divide by "
            "--n-kv-heads")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        bad("--precision is auto|bf16|fp32")
    if cfg.export_dtype not in ("float32", "bfloat16"):
        bad("--export-dtype is float32|bfloat16")
    if cfg.resume and not os.path.isfile(os.path.join(cfg.out, "checkpoint.pt")):
        bad(f"--resume: no checkpoint at {os.path.join(cfg.out, 'checkpoint.pt')}")
    return tokenizer_path


# ------------------------------------------------------------------------------------------ data
def load_data(cfg, tokenizer, log):
    """records -> (input_ids, labels) examples -> training rows (packed, or examples to pad)."""
    records = lce_data.read_jsonl_records(cfg.data)       # raises naming file, line and field
    t0 = time.time()
    examples, stats = lce_data.encode_records(records, tokenizer, cfg.seq_len,
                                              train_on_execution=cfg.train_on_execution)
    log(f"encoded {len(records)} records in {time.time() - t0:.1f}s: {stats}")
    if not examples:
        raise ValueError(f"{cfg.data}: no record has a loss token within --seq-len {cfg.seq_len}")
    if cfg.pack:    # bin-packed rows; the per-epoch shuffle below then shuffles rows
        return lce_data.pack_examples(examples, cfg.seq_len, tokenizer.pad_id)
    return examples


def micro_batches(rows, step, cfg, rank, world, pad_id):
    """This rank's micro-batches for global step `step`. The order is a pure function of (seed,
    epoch), so the data position in a checkpoint is just the step number. Rank r takes the r-th
    slice of the global batch."""
    B = cfg.batch_size
    per_rank = B // world
    epoch, index = divmod(step, math.ceil(len(rows) / B))
    shuffle = torch.Generator().manual_seed(cfg.seed + epoch)
    order = torch.randperm(len(rows), generator=shuffle).tolist()
    batch = [rows[k] for k in order[index * B:(index + 1) * B]]
    # the last batch of an epoch is partial: top it up with filler rows that carry no loss
    if cfg.pack:
        T = cfg.seq_len
        filler = dict(input_ids=torch.full((T,), pad_id), labels=torch.full((T,), IGNORE),
                      positions=torch.arange(T), doc_ids=torch.zeros(T, dtype=torch.long))
    else:
        filler = ([pad_id], [IGNORE])               # one pad token, no label: pad_batch widens it
    batch += [filler] * (B - len(batch))
    mine = batch[rank * per_rank:(rank + 1) * per_rank]
    for start in range(0, per_rank, cfg.micro_batch_size):
        chunk = mine[start:start + cfg.micro_batch_size]
        if cfg.pack:
            yield {key: torch.stack([row[key] for row in chunk]) for key in filler}
        else:
            yield lce_data.pad_batch(chunk, pad_id)


def lr_at(step, cfg, total):
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at the last step."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def forward_backward(model, batches, world=1, autocast=None, n_matmul=0) -> dict:
    """Accumulate the gradient of (sum of token losses) / (loss tokens in the global batch) over
    this rank's micro-batches `batches`. Returns the step's figures summed over all ranks, as 0-d
    tensors (reading them waits for the GPU): loss_sum, tokens (processed), flops, loss_tokens."""
    # first the loss tokens of the whole global batch (position 0 is predicted by nothing)
    device = batches[0]["labels"].device
    n_loss = sum((mb["labels"][:, 1:] != IGNORE).sum() for mb in batches).to(device, torch.float64)
    if dist.is_initialized():
        dist.all_reduce(n_loss)
    args = model.args
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens = 0
    flops = 0
    for mb in batches:
        with autocast or torch.autocast(device.type, enabled=False):
            logits = model(mb["input_ids"], positions=mb["positions"], doc_ids=mb["doc_ids"])
        # logits[:, t] predicts token t+1: logits[:, :-1] vs labels[:, 1:]; IGNORE: no loss (§3)
        mb_loss_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                      mb["labels"][:, 1:].flatten(),
                                      ignore_index=IGNORE, reduction="sum")
        # FSDP averages gradients over ranks; * world turns that average back into the global sum
        (mb_loss_sum * world / n_loss.clamp(min=1)).backward()
        B, T = mb["input_ids"].shape
        loss_sum += mb_loss_sum.detach()
        n_tokens += B * T
        flops += B * T * (6 * n_matmul + 12 * args.n_layers * args.dim * T)
    summed = torch.stack([loss_sum, loss_sum.new_tensor(n_tokens), loss_sum.new_tensor(flops)])
    if dist.is_initialized():
        dist.all_reduce(summed)
    return dict(loss_sum=summed[0], tokens=summed[1], flops=summed[2], loss_tokens=n_loss)


def apply_grad_checkpoint(model):
    """Keep only each block's input, recompute the rest in backward: memory for ~1/3 more work."""
    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


# ----------------------------------------------------------------------------------------- model
def build_model(cfg, tokenizer, device, world, log):
    torch.manual_seed(cfg.seed)                    # same random init on every rank
    streamed = cfg.init and dist.is_initialized()  # FSDP from a checkpoint: no whole copy per rank
    if streamed:
        args, tensors = read_checkpoint(cfg.init)  # the config now, the tensors one by one below
        args.vocab_size = max(args.vocab_size, tokenizer.vocab_size)    # + the 8 LCE tokens
        with torch.device("meta"):                 # shapes only, no memory
            model = Transformer(args)
    elif cfg.init:
        model = Transformer.from_pretrained(cfg.init, dtype=torch.float32)  # float32 master weights
        rows = model.tok_embeddings.weight.shape[0]
        if rows < tokenizer.vocab_size:
            log(f"growing vocab {rows} -> {tokenizer.vocab_size} (8 LCE tokens)")
            model.grow_vocab(tokenizer.vocab_size)  # new rows = mean of old rows
    else:
        model = Transformer(ModelArgs(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                      n_kv_heads=cfg.n_kv_heads, hidden_dim=cfg.hidden_dim,
                                      vocab_size=tokenizer.vocab_size,
                                      max_seq_len=max(cfg.seq_len, 2048)))
    if cfg.grad_checkpoint:
        apply_grad_checkpoint(model)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if dist.is_initialized():                      # under torchrun
        # FSDP2: each block is one all-gather unit (gathered just before use, freed after); the
        # root holds the embeddings, final norm and output. Params stay float32 shards; compute
        # runs in param_dtype.
        mesh = init_device_mesh(device.type, (world,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else torch.float32,
                                      reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)    # also moves the shards to `device`
    else:
        model.to(device)
    if streamed:
        model.to_empty(device=device)              # this rank's shards, not yet filled
        load_sharded(model, tensors)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, {'bf16' if bf16 else 'fp32'} compute, "
        f"world {world}")
    return model, bf16


@torch.no_grad()
def load_sharded(model, tensors):
    """Fill a model that fully_shard has split (built on the meta device, then to_empty) from a
    checkpoint, one tensor at a time: each rank reads the tensor (from the page cache, after the
    first), keeps its rows of it (FSDP shards dim 0) and drops the rest. Host memory per rank stays
    near its shard plus one tensor, per node near one copy of the weights (loading the whole model
    first takes one copy per rank). New vocabulary rows get the mean of the old rows, as grow_vocab
    gives them."""
    params = dict(model.named_parameters())
    for key, tensor in tensors:                     # our names; read_checkpoint checked each shape
        param = params[key]
        tensor = tensor.to(torch.float32)           # float32 master weights
        if tensor.shape[0] < param.shape[0]:        # tok_embeddings / output: the LCE tokens' rows
            tensor = grow_rows(tensor, param.shape[0])
        param.copy_(distribute_tensor(tensor, param.device_mesh, param.placements,
                                      src_data_rank=None))


def full_state_options(**kw):   # the whole unsharded tensor, not this rank's shard
    return StateDictOptions(full_state_dict=True, **kw)


def save_checkpoint(path, model, opt, step, fingerprint, rank):
    """One file, same format for 1 process and FSDP: the full (unsharded) state gathered to CPU on
    rank 0. Simple, and resumable on any world size; at 70B scale use torch.distributed.checkpoint
    (sharded) instead."""
    options = full_state_options(cpu_offload=True)
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    state = dict(model=get_model_state_dict(model, options=options),   # collectives: all ranks
                 optim=get_optimizer_state_dict(model, opt, options=options),
                 step=step,
                 data=fingerprint,                                      # data position = step
                 rng=dict(torch=torch.get_rng_state(), python=random.getstate(), cuda=cuda_rng))
    if rank == 0:
        with atomic_open(path, "wb") as f:  # a kill leaves the old checkpoint or the new one
            torch.save(state, f)
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(path, model, opt, fingerprint):
    state = torch.load(path, map_location="cpu", mmap=True)   # mmap: a node's ranks share the pages
    if state["data"] != fingerprint:
        raise ValueError(f"{path}: checkpoint was made for {state['data']}, this run is "
                         f"{fingerprint}")
    set_model_state_dict(model, state["model"], options=full_state_options())  # rank keeps a shard
    set_optimizer_state_dict(model, opt, state["optim"], options=full_state_options())
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


def export_final(out_dir, model, tokenizer, cfg, rank):
    """Gather the full weights to rank 0 and write a Hugging Face checkpoint that infer.py and
    eval.py load."""
    options = full_state_options(cpu_offload=True)
    state = get_model_state_dict(model, options=options)   # collective; {} on ranks > 0
    final = os.path.join(out_dir, "final")
    if rank == 0:
        vocab_size = state["tok_embeddings.weight"].shape[0]
        with torch.device("meta"):              # an unsharded copy that adopts the gathered tensors
            plain = Transformer(dataclasses.replace(model.args, vocab_size=vocab_size))
        plain.load_state_dict(state, assign=True)
        plain.to(getattr(torch, cfg.export_dtype))
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp)
        tokenizer.save(tmp)
        shutil.rmtree(final, ignore_errors=True)  # a folder cannot be os.replace'd over a full one
        os.replace(tmp, final)
    if dist.is_initialized():
        dist.barrier()
    return final


def cut_log(log_path, step):
    """Line k of OUT/log.jsonl is step k. A crash leaves lines past the checkpoint (the last one
    maybe torn in half), and those steps run again: keep the first `step` lines only."""
    kept = []
    if step and os.path.isfile(log_path):
        with open(log_path, encoding="utf-8") as f:
            kept = f.readlines()[:step]
    atomic_write(log_path, "".join(kept))


# ----------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict:
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ      # launched by torchrun
    world = int(os.environ["WORLD_SIZE"]) if distributed else 1
    rank = int(os.environ["RANK"]) if distributed else 0

    def log(msg):
        if rank == 0 and not cfg.quiet:
            print(f"[train] {msg}", flush=True)

    # 1. everything that can fail cheaply, before a process group, a model or GPU memory exists
    tokenizer_path = check_config(cfg, world)
    if cfg.init and not cfg.tokenizer:
        tokenizer = Tokenizer.from_checkpoint(cfg.init)
    else:
        tokenizer = Tokenizer(tokenizer_path)
    rows = load_data(cfg, tokenizer, log)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    fingerprint = dict(rows=len(rows), batch_size=cfg.batch_size, seed=cfg.seed, pack=cfg.pack,
                       total=total)

    # 2. devices and processes, the model and its optimizer
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    own_group = distributed and not dist.is_initialized()   # a caller's group stays the caller's
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    os.makedirs(cfg.out, exist_ok=True)
    model, bf16 = build_model(cfg, tokenizer, device, world, log)
    decay = [p for p in model.parameters() if p.dim() >= 2]          # no weight decay on norm gains
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    # one process on GPU: autocast runs matmuls in bf16 (FSDP's MixedPrecisionPolicy does it when
    # sharded)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=bf16 and not dist.is_initialized())
    # MFU numerator: 6 flops per parameter per token (forward 2, backward 4) for every matmul
    # weight (the input embedding is a lookup) plus attention scores 12 * layers * dim * T per
    # token (PaLM, App. B); the count is global (full shapes, also under FSDP)
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if "tok_embeddings" not in n)

    # 3. where to start: step 0, or the checkpoint's step (the log cut back to it)
    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    log_path = os.path.join(cfg.out, "log.jsonl")
    start = 0
    if cfg.resume:
        start = load_checkpoint(ckpt_path, model, opt, fingerprint)
        log(f"resumed from {ckpt_path} at step {start}")
    if rank == 0:
        write_json(os.path.join(cfg.out, "config.json"), dataclasses.asdict(cfg))
        cut_log(log_path, start)

    # 4. the loop
    accumulation = cfg.batch_size // (world * cfg.micro_batch_size)
    log(f"{len(rows)} rows, {steps_per_epoch} steps/epoch, {total} steps, global batch "
        f"{cfg.batch_size} = {world} ranks x {accumulation} micro-batches x {cfg.micro_batch_size}")
    model.train()
    t_start = time.time()
    losses = []
    for step in range(start, total):
        t0 = time.time()
        lr = lr_at(step, cfg, total)
        for group in opt.param_groups:
            group["lr"] = lr
        batches = [{key: (v.to(device) if v is not None else None) for key, v in mb.items()}
                   for mb in micro_batches(rows, step, cfg, rank, world, tokenizer.pad_id)]
        totals = forward_backward(model, batches, world, autocast, n_matmul)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if hasattr(grad_norm, "full_tensor"):      # FSDP: a sharded DTensor
            grad_norm = grad_norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)

        # reading the figures waits for the GPU: dt is the real step time
        figures = {name: value.item() for name, value in totals.items()}
        dt = time.time() - t0
        loss = figures["loss_sum"] / max(figures["loss_tokens"], 1)
        losses.append(loss)
        record = dict(step=step + 1, epoch=step // steps_per_epoch, loss=round(loss, 6), lr=lr,
                      grad_norm=round(grad_norm.item(), 6), loss_tokens=int(figures["loss_tokens"]),
                      tokens_per_s=round(figures["tokens"] / dt, 1), step_s=round(dt, 4))
        if device.type == "cuda":
            record["mfu"] = round(figures["flops"] / dt / (cfg.peak_tflops * 1e12 * world), 4)
        if rank == 0:
            with open(log_path, "a", encoding="utf-8") as f:
                append_jsonl(f, record)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            done = step + 1 - start
            elapsed = time.time() - t_start
            eta = elapsed / done * (total - step - 1)
            mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
            log(f"step {step + 1}/{total} loss {loss:.4f} lr {lr:.2e} gnorm "
                f"{record['grad_norm']:.3f} {record['tokens_per_s']:,.0f} tok/s{mfu} | "
                f"{done / elapsed:.2f} steps/s, eta {eta / 60:.1f} min")
        if (step + 1) % cfg.save_every == 0 or step + 1 == total:
            save_checkpoint(ckpt_path, model, opt, step + 1, fingerprint, rank)
            log(f"checkpoint at step {step + 1} -> {ckpt_path}")
            if rank == 0:                           # the curve so far: loss and lr per step
                html_views.write_loss_svg(log_path, os.path.join(cfg.out, "loss.svg"))

    final = export_final(cfg.out, model, tokenizer, cfg, rank)
    result = dict(final_loss=losses[-1] if losses else None, losses=losses, steps=total,
                  final=final, checkpoint=ckpt_path, seconds=round(time.time() - t_start, 2))
    if rank == 0:
        write_json(os.path.join(cfg.out, "summary.json"),
                   {key: value for key, value in result.items() if key != "losses"})
        log(f"done: final loss {result['final_loss']}, model in {final}")
    if own_group:
        dist.destroy_process_group()
    return result


def main(argv=None):
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
