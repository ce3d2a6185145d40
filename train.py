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
    numbers bf16 compute with float32 master weights on GPU; float32 on CPU; rotary tables float32
            in training as at inference; the gradient reduction's dtype is --reduce-dtype
    memory  a plan per GPU computed before the model is built (plumbing/memory_plan.py):
            activation checkpointing turns on by itself when the run would not fit without it
Defaults follow the paper: 3 epochs, lr 2e-5, global batch 128, sequence length 2048.

    python train.py --data train.jsonl --out out/sft --init /ckpt/Llama-2-7b-hf          # 1 process
    torchrun --nproc_per_node=8 train.py --data train.jsonl --out out/sft --init /ckpt/...  # FSDP
    python train.py --data tiny.jsonl --out out/tiny --tokenizer tok.model --dim 64 --n-layers 2 \\
        --n-heads 4 --hidden-dim 172 --batch-size 8 --micro-batch-size 4 --seq-len 512 --lr 1e-3
    python train.py ... --resume    # after a crash or kill: same losses, any number of processes
    python train.py --plan --init /ckpt/Llama-2-70b-hf/config.json --gpus 32   # memory per GPU

Read top to bottom: the config (every field a flag), the data (rows, each step's micro-batches),
the schedule, the loss and its gradient, the model (FSDP2 under torchrun), the run. What serves it
is one folder down: the checks of the flags before anything is built (plumbing/train_checks.py),
the memory plan (plumbing/memory_plan.py), the checkpoints, resume and export
(plumbing/train_checkpoint.py), what the run reports (plumbing/train_log.py).

Writes OUT/config.json (the flags, the data's sha256, the model's shape, the memory plan),
OUT/log.jsonl (one line per step), OUT/checkpoints/step-N/ (sharded: each rank writes its own
part; every --save-every steps and at the end), OUT/final/ (Hugging Face layout, written one
whole tensor at a time, + tokenizer.save), OUT/summary.json, and OUT/loss.svg (loss and learning
rate per step, redrawn at each checkpoint). docs/scaling.md: 34B and 70B.
"""
import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

import lce_data
from lce_data import IGNORE
from model import Transformer
from plumbing.cli import add_flags, flag, from_flags
from plumbing.memory_plan import plan_args, plan_run, print_plan
from plumbing.parallel import Timeouts, init_ranks
from plumbing.train_checkpoint import (check_resume, checkpoints_dir, complete_checkpoints,
                                       export_dtype, export_final, load_checkpoint,
                                       load_into_shards, run_fingerprint, save_checkpoint)
from plumbing.train_checks import check_config
from plumbing.train_log import TrainLog
from tokenizer import Tokenizer


@dataclass
class TrainConfig:
    data: str = flag("", "training records, JSONL (messages or debug_result schema) [required]")
    out: str = flag("", "output directory [required]")
    init: str | None = flag(None, "pretrained checkpoint (HF or Meta layout); none: from scratch")
    tokenizer: str | None = flag(None, "SentencePiece .model (default: INIT's, with added tokens)")
    dim: int = flag(64, "from scratch: model width (ignored with --init)")
    n_layers: int = flag(2, "from scratch: transformer blocks")
    n_heads: int = flag(4, "from scratch: attention heads")
    n_kv_heads: int | None = flag(None, "from scratch: key/value heads (GQA); default = n_heads")
    hidden_dim: int = flag(172, "from scratch: SwiGLU FFN width")
    epochs: int = flag(3, "passes over the data (paper: 3)")
    lr: float = flag(2e-5, "peak learning rate (paper: 2e-5)")
    min_lr: float = flag(0.0, "learning rate at the end of the cosine decay")
    warmup_ratio: float = flag(0.03, "linear warmup over this fraction of all steps ...")
    warmup_steps: int | None = flag(None, "... or over exactly this many steps")
    weight_decay: float = flag(0.0, "AdamW weight decay (matrices only, not norm gains)")
    beta1: float = flag(0.9, "AdamW beta1")
    beta2: float = flag(0.999, "AdamW beta2")
    grad_clip: float = flag(1.0, "clip the global gradient norm to this (0: no clipping)")
    batch_size: int = flag(128, "GLOBAL batch in sequences, all ranks and micro-batches "
                                "(paper: 128)")
    micro_batch_size: int = flag(4, "sequences per forward/backward per rank; accumulation = "
                                    "batch / (world * this)")
    seq_len: int = flag(2048, "examples are truncated to this many tokens (paper: 2048)")
    pack: bool = flag(False, "pack examples in seq_len rows, document-masked (paper: one per "
                             "row)")
    train_on_execution: bool = flag(False, "ablation: also put loss on execution blocks (paper: "
                                           "no)")
    precision: str = flag("auto", "auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32; weights stay "
                                  "fp32")
    reduce_dtype: str = flag("fp32", "dtype of FSDP's gradient reduce-scatter: fp32 sums the "
                             "ranks' bf16 gradients without further rounding but moves twice "
                             "the bytes; bf16 halves that traffic (a 70B run over several nodes "
                             "is communication-bound) at the cost of rounding each partial sum "
                             "to 8 bits of mantissa: fp32 | bf16")
    grad_checkpoint: bool = flag(False, "activation checkpointing: recompute each block in "
                                 "backward (turned on by itself when the memory plan says it is "
                                 "needed)")
    plan: bool = flag(False, "print the memory plan per GPU and exit: no data, no weights needed "
                             "(--init may be a Hugging Face config.json or its folder)")
    gpus: int | None = flag(None, "GPUs (ranks) to plan for with --plan (default: this run's)")
    gpu_memory_gb: float = flag(80.0, "memory of one GPU for the plan (on CUDA: the device's own)")
    timeout_minutes: float = flag(30.0, "timeout of every collective (a step's all-reduces, a "
                                        "checkpoint's barrier: each rank writes only its own "
                                        "shard, so none waits for a whole-model write)")
    seed: int = flag(0, "seed for the init and the data order")
    max_steps: int | None = flag(None, "stop after this many steps (the schedule ends there too)")
    save_every: int = flag(500, "checkpoint every N steps (and at the end)")
    no_save: bool = flag(False, "write no checkpoint and no OUT/final (benchmarks)")
    resume: bool = flag(False, "continue from the newest complete checkpoint in OUT/checkpoints/ "
                               "(refused if the data, the model or a hyper-parameter differs)")
    export_dtype: str = flag("auto", "dtype of the OUT/final weights: auto (the --init "
                                     "checkpoint's; float32 from scratch) | float32 | bfloat16 | "
                                     "float16")
    peak_tflops: float = flag(989.0, "dense bf16 TFLOP/s of a GPU, for MFU (H100 SXM 989, A100 "
                                     "312)")
    log_every: int = flag(1, "print the progress line every N steps (log.jsonl gets every step)")
    quiet: bool = flag(False, "no progress lines")


def parse_args(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, TrainConfig)
    return from_flags(TrainConfig, parser.parse_args(argv))


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
            mb = {key: torch.stack([row[key] for row in chunk]) for key in filler}
            docs = [row["doc_ids"][row["doc_ids"] >= 0].bincount().tolist()
                    for row in chunk if row is not filler]
        else:
            mb = lce_data.pad_batch(chunk, pad_id)
            docs = [[len(ids)] for ids, _ in (row for row in chunk if row is not filler)]
        # the real (unpadded) tokens and the sum of squared document lengths, for the FLOP count
        mb["n_real"] = sum(n for row in docs for n in row)
        mb["n_sq"] = sum(n * n for row in docs for n in row)
        yield mb


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
    tensors (reading them waits for the GPU): loss_sum, tokens (real ones: padding and filler
    rows not counted), flops (on those real tokens, so MFU is not inflated by padding),
    loss_tokens, padded_tokens (all the positions computed)."""
    # first the loss tokens of the whole global batch (position 0 is predicted by nothing)
    device = batches[0]["labels"].device
    n_loss = sum((mb["labels"][:, 1:] != IGNORE).sum() for mb in batches).to(device, torch.float64)
    if dist.is_initialized():
        dist.all_reduce(n_loss)
    args = model.args
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens = 0
    n_padded = 0
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
        n_real, n_sq = mb.get("n_real", B * T), mb.get("n_sq", B * T * T)
        n_tokens += n_real
        n_padded += B * T
        # 6 flops per matmul weight per token; attention 12 * layers * dim per pair of a document
        flops += 6 * n_matmul * n_real + 12 * args.n_layers * args.dim * n_sq
    summed = torch.stack([loss_sum, loss_sum.new_tensor(n_tokens), loss_sum.new_tensor(flops),
                          loss_sum.new_tensor(n_padded)])
    if dist.is_initialized():
        dist.all_reduce(summed)
    return dict(loss_sum=summed[0], tokens=summed[1], flops=summed[2], loss_tokens=n_loss,
                padded_tokens=summed[3])


def apply_grad_checkpoint(model):
    """Keep only each block's input, recompute the rest in backward: memory for ~1/3 more work."""
    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


# ----------------------------------------------------------------------------------------- model
def build_model(cfg, args, device, world, bf16, log):
    """The model of shape `args` (the vocabulary grown to the tokenizer's) in float32 master
    weights, --init's or a seeded random init; under torchrun, sharded by FSDP2."""
    torch.manual_seed(cfg.seed)                    # same random init on every rank
    streamed = cfg.init and dist.is_initialized()  # FSDP from a checkpoint: no whole copy per rank
    if streamed:
        with torch.device("meta"):                 # shapes only, no memory: filled once sharded
            model = Transformer(args)
    elif cfg.init:
        model = Transformer.from_pretrained(cfg.init, dtype=torch.float32)  # float32 master weights
        rows = model.tok_embeddings.weight.shape[0]
        if rows < args.vocab_size:
            log(f"growing vocab {rows} -> {args.vocab_size} (8 LCE tokens)")
            model.grow_vocab(args.vocab_size)      # new rows = mean of old rows
    else:
        model = Transformer(args)
    if cfg.grad_checkpoint:
        apply_grad_checkpoint(model)
    if dist.is_initialized():                      # under torchrun
        # FSDP2: each block is one all-gather unit (gathered just before use, freed after); the
        # root holds the embeddings, final norm and output. Params stay float32 shards; compute
        # runs in param_dtype.
        # Blocks do not cast their float inputs (cast_forward_inputs=False): the hidden state
        # arrives in bf16 from the bf16 embedding anyway, and the rotary cos/sin tables stay
        # float32, as at inference (a bf16 table rounds the angles of late positions).
        mesh = init_device_mesh(device.type, (world,))
        compute = torch.bfloat16 if bf16 else torch.float32
        reduce = torch.bfloat16 if cfg.reduce_dtype == "bf16" else torch.float32
        root_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=reduce)
        block_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=reduce,
                                            cast_forward_inputs=False)
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=block_policy)
        fully_shard(model, mesh=mesh, mp_policy=root_policy)   # also moves the shards to `device`
    else:
        model.to(device)
    if streamed:
        model.to_empty(device=device)              # this rank's shards, not yet filled
        load_into_shards(model, cfg.init)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, {'bf16' if bf16 else 'fp32'} compute, "
        f"world {world}")
    return model


# ----------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict:
    # 0. where this process sits: one of torchrun's ranks (the process group up, every
    # collective's timeout explicit: NCCL's default is 10 min) or the only process
    ranks = init_ranks(timeouts=Timeouts(call=60 * cfg.timeout_minutes))
    rank, world, device = ranks.rank, ranks.world, ranks.device

    log = TrainLog(cfg.out, rank, world, cfg.quiet, device.type == "cuda", cfg.peak_tflops)

    # 1. everything that can fail cheaply, before a model or its memory exists
    tokenizer_path = check_config(cfg, world)
    if cfg.init and not cfg.tokenizer:
        tokenizer = Tokenizer.from_checkpoint(cfg.init)
    else:
        tokenizer = Tokenizer(tokenizer_path)
    rows = load_data(cfg, tokenizer, log)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    args = plan_args(cfg, tokenizer)
    fingerprint = run_fingerprint(cfg, len(rows), total, args)   # data, model, hyper-parameters
    saves = checkpoints_dir(cfg.out)
    if cfg.resume:     # refuse another run's (or a damaged) checkpoint before building anything
        check_resume(complete_checkpoints(saves)[-1], fingerprint)

    # 2. the memory plan (activation checkpointing on if needed), the model and its optimizer
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    gpu_gb = (torch.cuda.get_device_properties(device).total_memory / 1e9
              if device.type == "cuda" else cfg.gpu_memory_gb)
    plan, checkpointing = plan_run(cfg, args, world, gpu_gb, bf16, dist.is_initialized(), log)
    cfg = dataclasses.replace(cfg, grad_checkpoint=checkpointing)
    os.makedirs(cfg.out, exist_ok=True)
    model = build_model(cfg, args, device, world, bf16, log)
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
    start = 0
    if cfg.resume:
        start, resumed_from = load_checkpoint(saves, model, opt, fingerprint)
        log(f"resumed from {resumed_from} at step {start}")
    log.begin(start, total, {**dataclasses.asdict(cfg), "data_sha256": fingerprint["data_sha256"],
                             "model": dataclasses.asdict(args), "memory_plan": plan})

    # 4. the loop
    accumulation = cfg.batch_size // (world * cfg.micro_batch_size)
    log(f"{len(rows)} rows, {steps_per_epoch} steps/epoch, {total} steps, global batch "
        f"{cfg.batch_size} = {world} ranks x {accumulation} micro-batches x {cfg.micro_batch_size}")
    model.train()
    losses = []
    for step in range(start, total):
        t0 = time.time()
        lr = lr_at(step, cfg, total)
        for group in opt.param_groups:
            group["lr"] = lr
        batches = [{key: (v.to(device) if torch.is_tensor(v) else v) for key, v in mb.items()}
                   for mb in micro_batches(rows, step, cfg, rank, world, tokenizer.pad_id)]
        totals = forward_backward(model, batches, world, autocast, n_matmul)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if hasattr(grad_norm, "full_tensor"):      # FSDP: a sharded DTensor
            grad_norm = grad_norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)

        # reading the figures waits for the GPU: dt is the real step time
        figures = {name: value.item() for name, value in totals.items()}
        loss = figures["loss_sum"] / max(figures["loss_tokens"], 1)
        losses.append(loss)
        log.step(step + 1, step // steps_per_epoch, loss, lr, grad_norm.item(), figures,
                 time.time() - t0, cfg.log_every)
        if not cfg.no_save and ((step + 1) % cfg.save_every == 0 or step + 1 == total):
            saved = save_checkpoint(saves, model, opt, step + 1, fingerprint, rank)
            log(f"checkpoint at step {step + 1} -> {saved}")
            log.curve()                             # loss.svg: the curve so far

    final = None if cfg.no_save else export_final(cfg.out, model, tokenizer, export_dtype(cfg),
                                                  rank)
    last = complete_checkpoints(saves)
    result = dict(final_loss=losses[-1] if losses else log.last_loss, losses=losses, steps=total,
                  final=final, checkpoint=str(last[-1]) if last else None,
                  seconds=round(time.time() - log.t_start, 2))
    log.summary(result)
    return result


def main(argv=None):
    cfg = parse_args(argv)
    try:
        if cfg.plan:
            return print_plan(cfg)
        train(cfg)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
