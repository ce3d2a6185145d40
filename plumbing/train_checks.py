"""train.py's flags checked before anything is built: every check that needs no model fails in
seconds, in one line naming the flag, before a model, its memory or hours of a run exist. (The
memory plan's check, which needs the model's shape, is plumbing/memory_plan.py's plan_verdict.)
"""
import os

from plumbing.train_checkpoint import checkpoints_dir, complete_checkpoints


def check_config(cfg, world: int) -> str:
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
    if cfg.export_dtype not in ("auto", "float32", "bfloat16", "float16"):
        bad("--export-dtype is auto|float32|bfloat16|float16")
    if cfg.reduce_dtype not in ("fp32", "bf16"):
        bad("--reduce-dtype is fp32|bf16")
    if not cfg.timeout_minutes > 0:
        bad(f"--timeout-minutes must be > 0, got {cfg.timeout_minutes}")
    if cfg.resume and not complete_checkpoints(checkpoints_dir(cfg.out)):
        bad(f"--resume: no complete checkpoint in {checkpoints_dir(cfg.out)}")
    return tokenizer_path
