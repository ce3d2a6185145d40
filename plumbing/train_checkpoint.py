"""train.py's checkpoints: sharded over the ranks that write them, complete or absent, resumed only
by the same run (at any world size), and the trained model exported in the Hugging Face layout.
docs/scaling.md sizes them for 34B and 70B.

Read top to bottom: a pretrained checkpoint read straight into FSDP's shards; what makes two runs
the same run (the fingerprint a resume must match); the sharded training checkpoint (what it
holds, its save, its check, its load); the export, one whole tensor at a time.
plumbing/checkpoint.py knows the Hugging Face and Meta files themselves; this file knows the
training state around them.
"""
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor, distribute_tensor

from model import grow_rows, read_checkpoint
from plumbing import checkpoint
from plumbing.storage import read_json, write_json

# ------------------------------------------------------------------ a pretrained model, sharded
@torch.no_grad()
def load_into_shards(model, path):
    """Fill a model that fully_shard has split (built on the meta device, then to_empty) from the
    checkpoint at `path`, one tensor at a time: each rank reads the tensor (from the page cache,
    after the first), keeps its rows of it (FSDP shards dim 0) and drops the rest. Host memory per
    rank stays near its shard plus one tensor, per node near one copy of the weights (loading the
    whole model first takes one copy per rank). New vocabulary rows get the mean of the old rows,
    as grow_vocab gives them."""
    params = dict(model.named_parameters())
    _, tensors = read_checkpoint(path)
    for key, tensor in tensors:                     # our names; read_checkpoint checked each shape
        param = params[key]
        tensor = tensor.to(torch.float32)           # float32 master weights
        if tensor.shape[0] < param.shape[0]:        # tok_embeddings / output: the LCE tokens' rows
            tensor = grow_rows(tensor, param.shape[0])
        param.copy_(distribute_tensor(tensor, param.device_mesh, param.placements,
                                      src_data_rank=None))


# ------------------------------------------------------------------------------ the run's identity
# What makes two runs the same run: resuming with any of these changed is refused. (The world
# size and micro-batch are not among them: the loss is normalised over the global batch.)
RUN_KEYS = ("init", "epochs", "max_steps", "lr", "min_lr", "warmup_ratio", "warmup_steps",
            "weight_decay", "beta1", "beta2", "grad_clip", "batch_size", "seq_len", "pack",
            "train_on_execution", "seed", "precision", "reduce_dtype")


def run_fingerprint(cfg, rows: int, total: int, model_args) -> dict:
    """The run's identity: the data file's content, the model's shape, the hyper-parameters."""
    return dict(data_sha256=file_sha256(cfg.data), rows=rows, total=total,
                model=dataclasses.asdict(model_args),
                **{key: getattr(cfg, key) for key in RUN_KEYS})


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_diff(old: dict, new: dict) -> list:
    """What differs between two run fingerprints, as 'name X there, Y here'."""
    short = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 16 else v
    return [f"{key} {short(old.get(key))} there, {short(value)} here"
            for key, value in new.items() if old.get(key) != value]


# ---------------------------------------------------------------- training checkpoints, sharded
# A training checkpoint holds float32 weights and both Adam moments, 16 bytes a parameter (70B:
# 1.1 TB). It is never gathered: each rank writes its own shards with torch.distributed.checkpoint
# (DCP), one file per rank, and on resume each rank reads the pieces of its new shards, whatever
# the old world size was (DCP reshards). Layout, one folder per checkpoint:
#     OUT/checkpoints/step-000004/__0_0.distcp .. __{W-1}_0.distcp   each rank's shards
#                                 .metadata                        which piece lies where
#                                 done.json                        step, run fingerprint, files
# A checkpoint is complete or absent: it is written as step-000004.tmp/, done.json (with every
# file's size) goes in last, then one rename publishes it; only then are older ones deleted. A
# crash mid-save leaves a .tmp folder that no one reads (and the next save sweeps) beside the
# previous checkpoint. DCP needs one file system that every rank sees (a cluster's shared disk).
DONE = "done.json"


def checkpoints_dir(out) -> str:
    """Where a run writing into OUT keeps its checkpoints: OUT/checkpoints."""
    return os.path.join(out, "checkpoints")


def complete_checkpoints(folder) -> list:
    """The published checkpoints under `folder`, oldest first."""
    folder = Path(folder)
    found = folder.glob("step-*") if folder.is_dir() else []
    return sorted(p for p in found if p.suffix != ".tmp" and (p / DONE).is_file())


def train_state(model, opt) -> dict:
    """What a checkpoint holds, as DCP's state dict: under FSDP the model's and the optimizer's
    tensors are this rank's shards (DTensors), never gathered; the torch RNG (every rank's is
    seeded alike). The step (= the data position: the batch order is a function of the seed and
    the step) and Python's RNG go in done.json."""
    state = dict(model=get_model_state_dict(model),        # (a fresh optimizer's moments are made
                 optim=get_optimizer_state_dict(model, opt),  # here, for resume to fill)
                 rng=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(folder, model, opt, step: int, fingerprint: dict, rank: int) -> Path:
    """Every rank: write its own shards of the training state as the checkpoint of `step` under
    `folder` (complete or absent), the run's fingerprint in its done.json. Returns its folder."""
    state = train_state(model, opt)
    info = dict(fingerprint=fingerprint, python_rng=random.getstate(),
                world=dist.get_world_size() if dist.is_initialized() else 1)
    folder = Path(folder)
    final = folder / f"step-{step:06d}"
    tmp = folder / f"step-{step:06d}.tmp"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("step-*.tmp"):     # a save that a crash cut short
            shutil.rmtree(stale)
        tmp.mkdir()
    if dist.is_initialized():
        dist.barrier()
    # collective: each rank writes its file; rank 0 then writes .metadata once all have written
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp), no_dist=not dist.is_initialized())
    if rank == 0:
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        write_json(tmp / DONE, {**info, "step": step, "files": files})
        publish(tmp, final)
        for old in complete_checkpoints(folder):
            if old != final:
                shutil.rmtree(old)
    if dist.is_initialized():
        dist.barrier()
    return final


def publish(tmp: Path, final: Path):
    """The one rename that makes a written checkpoint visible (then synced to disk)."""
    if final.exists():                               # the same step saved again
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_resume(path, fingerprint: dict) -> dict:
    """The checkpoint's done.json, once its files are all there at the sizes written and it is of
    this run (same data content, model and hyper-parameters); else ValueError in one line naming
    the path."""
    path = Path(path)
    try:
        info = read_json(path / DONE)
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path / DONE}: not a training checkpoint's record ({e})") from None
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{file}: missing (the checkpoint lists it)")
        if file.stat().st_size != size:
            raise ValueError(f"{file}: {file.stat().st_size} bytes, the checkpoint wrote {size} "
                             "(truncated or overwritten)")
    fingerprint = json.loads(json.dumps(fingerprint))       # as stored: lists, not tuples
    if diffs := fingerprint_diff(info.get("fingerprint", {}), fingerprint):
        raise ValueError(f"--resume: {path} is another run's checkpoint: {'; '.join(diffs)} "
                         "(give another --out to start a new run)")
    return info


def load_checkpoint(folder, model, opt, fingerprint: dict) -> tuple:
    """Every rank: the newest complete checkpoint under `folder` into this run's shards, resharded
    from however many ranks wrote it. Refuses, in one line naming the checkpoint, one of another
    run or one that is damaged. Returns (its step, its path)."""
    path = complete_checkpoints(folder)[-1]
    info = check_resume(path, fingerprint)
    state = train_state(model, opt)
    read_shards(path, state)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"])
    version, inner, gauss = info["python_rng"]
    random.setstate((version, tuple(inner), gauss))
    return info["step"], path


def read_shards(path, state: dict):
    """Fill `state` (a DCP state dict shaped for THIS run's ranks) from the checkpoint at `path`;
    a damaged one is one ValueError naming it, not every rank's traceback."""
    from torch.distributed.checkpoint.api import CheckpointException   # (a BaseException)
    quiet = logging.getLogger("torch.distributed.checkpoint")  # it logs each rank's traceback
    level = quiet.level
    try:
        quiet.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = dcp.FileSystemReader(path)
            reader.read_metadata()                             # which piece lies where
            dcp.load(state, storage_reader=reader, no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as e:
        # DCP's errors hold every rank's traceback: keep the last "SomeError: ..." line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception):", line)]
        cause = (errors or lines or [type(e).__name__])[-1].split(". ")[0][:300]  # (no advice)
        raise ValueError(f"{path}: unreadable training checkpoint ({cause})") from None
    finally:
        quiet.setLevel(level)


# ------------------------------------------------------------------------------------- the export
def export_dtype(cfg) -> torch.dtype:
    """--export-dtype auto: the init checkpoint's dtype (bf16 for Meta's Llama-2 and CodeLlama),
    float32 for a model trained from scratch."""
    if cfg.export_dtype != "auto":
        return getattr(torch, cfg.export_dtype)
    return checkpoint.stored_dtype(cfg.init) if cfg.init else torch.float32


def export_final(out_dir, model, tokenizer, dtype, rank):
    """Write OUT/final/ (Hugging Face layout) one whole tensor at a time: every rank all-gathers
    tensor k (DTensor.full_tensor), rank 0 converts it to `dtype`, writes it into its safetensors
    shard and drops it before tensor k+1. No rank ever holds the whole model."""
    params = model.state_dict()                 # under FSDP: this rank's shards, nothing gathered
    specs = {key: (list(t.shape), dtype) for key, t in params.items()}   # global shapes

    def whole_tensors():                        # a collective per tensor: every rank iterates
        for key, t in params.items():
            full = t.full_tensor() if isinstance(t, DTensor) else t
            yield key, full.detach().to("cpu", dtype)
    final = os.path.join(out_dir, "final")
    if rank == 0:
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint.write_hf_stream(tmp, dataclasses.asdict(model.args), specs, whole_tensors())
        tokenizer.save(tmp)
        shutil.rmtree(final, ignore_errors=True)  # a folder cannot be os.replace'd over a full one
        os.replace(tmp, final)
    else:
        for _ in whole_tensors():
            pass
    if dist.is_initialized():
        dist.barrier()
    return final
