"""Llama checkpoints on disk: the Hugging Face and Meta layouts read one tensor at a time, and the
Hugging Face layout written. (llama2.c keeps this in export.py, gpt-fast in its converter.)

The same weights come in two layouts:
  Hugging Face: config.json + model.safetensors (or model-0000N-of-0000M.safetensors and an index;
    older: pytorch_model*.bin); names like model.layers.3.self_attn.q_proj.weight; q/k rows in
    "rotate half" order.
  Meta: params.json + consolidated.00 .. M-1.pth, M model-parallel shards; names like
    layers.3.attention.wq.weight (model.py's names); q/k rows in interleaved order.
Read top to bottom: a small safetensors reader/writer; the name map and the ONE place where q/k
rows are permuted; each layout's config as plain fields (ModelArgs's names) and its tensors as
(file, name, shape, read) without reading them; open_checkpoint, whose `tensors` reads them one at
a time, whole or only one tensor-parallel rank's rows or columns; write_hf and write_hf_stream
(one tensor at a time). (Training checkpoints, sharded over the ranks that write them:
plumbing/train_checkpoint.py.)
This file knows the files, not the model: model.py builds the model from the fields and gives the
shapes every tensor must have (model.load_pretrained, model.save_pretrained).
"""
import functools
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from plumbing.parallel import split_dim
from plumbing.storage import atomic_open, read_json, write_json

# ------------------------------------------------------------------------------------ safetensors
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(file):
    """Yield (name, shape, read) for each tensor of a .safetensors file: u64 little-endian header
    length, JSON header {name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Nothing
    is read until read() is called (before the next tensor): the whole tensor, or with read(dim,
    start, n) only rows (dim 0) or columns (dim 1) start .. start+n, for tensor parallelism."""
    with open(file, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > os.fstat(f.fileno()).st_size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        except (struct.error, ValueError):  # ValueError: also bad JSON, bad UTF-8
            raise ValueError(f"{file}: not a safetensors file (unreadable header)") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}, expected "
                                 "F32/F16/BF16")
            start, end = info["data_offsets"]
            yield name, info["shape"], functools.partial(
                _read_tensor, f, f"{file}: truncated data for tensor {name!r}", 8 + n + start,
                end - start, info["shape"], _ST_DTYPES[info["dtype"]])


def _read_tensor(f, truncated, offset, nbytes, shape, dtype, dim=None, start=0, n=0):
    """A tensor whose bytes begin at `offset` of the open file f, or only its rows (dim 0) or
    columns (dim 1) start .. start+n, reading no other row."""
    def read(skip, count, shape):  # `count` bytes from offset + skip, as a tensor of `shape`
        f.seek(offset + skip)
        buf = bytearray(count)
        if f.readinto(buf) != count:
            raise ValueError(truncated)
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return t.reshape(shape)
    if dim is None:
        return read(0, nbytes, shape)
    row_bytes = nbytes // shape[0]
    if dim == 0:  # rows: one contiguous read
        return read(start * row_bytes, n * row_bytes, [n, *shape[1:]])
    out = torch.empty(shape[0], n, dtype=dtype)  # columns of a matrix: <= 16 MiB of rows at a time
    block = max(1, 2**24 // row_bytes)
    for first in range(0, shape[0], block):
        rows = min(block, shape[0] - first)
        whole = read(first * row_bytes, rows * row_bytes, [rows, shape[1]])
        out[first:first + rows] = whole[:, start:start + n]
    return out


def _safetensors_header(specs):
    """The length-prefixed JSON header for tensors [(name, shape, dtype)] stored back to back."""
    dtype_name = {dtype: name for name, dtype in _ST_DTYPES.items()}
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = _nbytes(shape, dtype)
        header[name] = {"dtype": dtype_name[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # pad: data 8-byte aligned, as the safetensors library does
    return struct.pack("<Q", len(text)) + text


# ---------------------------------------------------------------------------------- names, q and k
# our (Meta's) parameter names -> Hugging Face's
_HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_HF_LAYER = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj",
             "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def hf_name(key: str) -> str:
    """Ours -> HF's: "layers.3.attention.wq.weight" -> "model.layers.3.self_attn.q_proj.weight"."""
    if key in _HF_TOP:
        return _HF_TOP[key]
    _, layer, rest = key.split(".", 2)
    return f"model.layers.{layer}.{_HF_LAYER[rest.removesuffix('.weight')]}.weight"


def _permute_qk(w, head_dim: int):
    """THE one place where q/k layouts meet. Rotary embeddings rotate pairs of coordinates in each
    head. Meta's checkpoints (and llama/model.py) pair interleaved coordinates (0,1), (2,3), ...;
    HF's, and model.py's apply_rope, pair coordinate i with i + head_dim/2 ("rotate half").
    Attention scores only depend on q.k, so permuting the rows of wq and wk the same way inside each
    head gives the same model. We keep HF's order internally, so HF files load and save untouched
    and Meta's wq/wk are permuted once, on load: within each head, rows (2i, 2i+1) move to (i, i +
    head_dim/2). (Same as transformers' convert_llama_weights_to_hf.py.) Head by head: a
    tensor-parallel slice of whole heads is permuted the same way."""
    out_dim, in_dim = w.shape
    pairs = w.view(out_dim // head_dim, head_dim // 2, 2, in_dim)     # [heads, i, (2i, 2i+1), in]
    return pairs.transpose(1, 2).reshape(out_dim, in_dim)


# ---------------------------------------------------------------------------- Hugging Face layout
# config.json keys that do not change the forward math (pretraining_tp only splits HF's matmuls)
_HF_HARMLESS = {"_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id",
                "torch_dtype", "dtype", "transformers_version", "use_cache", "initializer_range",
                "pretraining_tp", "max_position_embeddings"}
# keys that change the math: accepted only at the value model.py implements
_HF_MUST_BE = {"model_type": "llama", "hidden_act": "silu", "rope_scaling": None,
               "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
               "attention_dropout": 0.0}
_HF_SHAPE = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "head_dim"}


def _hf_source(path):
    """(fields, iterator of (file, name, shape, read)) for a Hugging Face checkpoint."""
    fields = _hf_fields(path / "config.json")
    tensors = ((file, name, shape, read) for file, reader in _hf_files(path)
               for name, shape, read in reader(file)
               if not name.endswith("rotary_emb.inv_freq"))  # old HF files have it; we compute it
    return fields, tensors


def _hf_fields(config_file):
    """ModelArgs's fields from a Hugging Face config.json (refusing keys that change the math)."""
    config = read_json(config_file)
    for key, want in _HF_MUST_BE.items():
        if key in config and config[key] != want:
            raise ValueError(f"{config_file}: {key} = {config[key]!r} is not supported (this Llama "
                             f"implements {want!r})")
    if unknown := sorted(set(config) - _HF_HARMLESS - set(_HF_MUST_BE) - _HF_SHAPE):
        raise ValueError(f"{config_file}: unknown keys {unknown} may change the model; refusing "
                         "to guess")
    try:
        fields = dict(dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                      n_heads=config["num_attention_heads"],
                      n_kv_heads=config.get("num_key_value_heads"),
                      vocab_size=config["vocab_size"], hidden_dim=config["intermediate_size"],
                      norm_eps=config.get("rms_norm_eps", 1e-6),
                      rope_theta=config.get("rope_theta", 10000.0),
                      max_seq_len=config.get("max_position_embeddings", 4096))
    except KeyError as e:
        raise ValueError(f"{config_file}: missing required key {e.args[0]!r}") from None
    head_dim = fields["dim"] // fields["n_heads"]
    if config.get("head_dim", head_dim) != head_dim:
        raise ValueError(f"{config_file}: head_dim {config['head_dim']} != hidden_size / "
                         "num_attention_heads")
    return fields


def _hf_config(fields: dict, dtype) -> dict:
    """config.json for ModelArgs `fields` and weights of `dtype` (what _hf_source reads back)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": fields["dim"], "intermediate_size": fields["hidden_dim"],
            "num_hidden_layers": fields["n_layers"], "num_attention_heads": fields["n_heads"],
            "num_key_value_heads": fields["n_kv_heads"], "vocab_size": fields["vocab_size"],
            "rms_norm_eps": fields["norm_eps"], "rope_theta": fields["rope_theta"],
            "max_position_embeddings": fields["max_seq_len"], "rope_scaling": None,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
            "torch_dtype": str(dtype).removeprefix("torch.")}


def _read_bin(file):  # pytorch_model.bin: memory-mapped, so a slice touches only its own pages
    for name, t in torch.load(file, map_location="cpu", mmap=True, weights_only=True).items():
        yield name, t.shape, functools.partial(_narrow, t)


def _narrow(t, dim=None, start=0, n=0):
    return t if dim is None else t.narrow(dim, start, n).contiguous()


def _hf_files(path):
    """(file, reader) for the weight files, honouring the index; errors if a listed shard is
    missing."""
    for single, index, reader in [
            ("model.safetensors", "model.safetensors.index.json", read_safetensors),
            ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_bin)]:
        if (path / single).is_file():
            return [(path / single, reader)]
        if (path / index).is_file():
            weight_map = read_json(path / index).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (path / f).is_file():
                    raise FileNotFoundError(f"{path / index}: lists shard {f}, which is missing "
                                            f"from {path}")
            return [(path / f, reader) for f in files]
    raise FileNotFoundError(f"{path}: config.json found but no model.safetensors, "
                            "model.safetensors.index.json, pytorch_model.bin or "
                            "pytorch_model.bin.index.json")


# ------------------------------------------------------------------------------------ Meta layout
_META_KNOWN = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
               "ffn_dim_multiplier", "norm_eps", "rope_theta", "max_seq_len", "max_batch_size",
               "use_scaled_rope"}


def _meta_source(path, rank=0, world=1):
    """(fields, iterator of (file, name, shape, read)) for a Meta checkpoint: params.json and M
    model-parallel shards consolidated.00 .. M-1.pth, each weight split as split_dim says (norms
    replicated). `shape` is the merged tensor's. Only the shards holding rank's part of a world-way
    split are opened (memory-mapped): with M == world, rank r opens consolidated.r.pth alone."""
    params_file = path / "params.json"
    params = read_json(params_file)
    if params.get("use_scaled_rope"):
        raise ValueError(f"{params_file}: use_scaled_rope (Llama-3.1 rope scaling) is not "
                         "supported")
    if unknown := sorted(set(params) - _META_KNOWN):
        raise ValueError(f"{params_file}: unknown keys {unknown} may change the model; refusing "
                         "to guess")
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise FileNotFoundError(f"{path}: params.json found but no consolidated.*.pth")
    n_files = len(files)
    if [f.name for f in files] != [f"consolidated.{i:02d}.pth" for i in range(n_files)]:
        raise FileNotFoundError(f"{path}: model-parallel shards are not consolidated.00 .. "
                                f"{n_files - 1:02d}.pth")
    # The shards holding this rank's rows: rank r of `world` wants the r-th world-th of each split
    # tensor, which lies in shards floor(r * M / world) .. ceil((r + 1) * M / world) - 1.
    # Worked example: Llama-2-13B (M = 2 shards, dim 5120, 40 heads of 128) at tensor parallelism
    # world = 4, rank 1. Merged wq is [5120, 5120]; consolidated.00 holds its rows 0..2559,
    # consolidated.01 rows 2560..5119. Rank 1 wants rows 1280..2559 (5120 / 4 = 1280 rows: heads
    # 10..19): first = 1 * 2 // 4 = 0, last = ceil(2 * 2 / 4) = 1, so it opens consolidated.00
    # alone; its parts begin at offset 0 * 2560 = 0 (_meta_slice), and it reads that file's rows
    # 1280..2559, its second half. Rank 2 opens consolidated.01 alone (first = 1, last = 2; offset
    # 2560) and reads its rows 0..1279. wo and w2 (split by columns) take columns the same way.
    # With 8 ranks over the 2 shards, rank 5 opens consolidated.01 and reads its rows 640..1279.
    # (A rank whose rows straddle two shards would open both; _meta_slice concatenates them.)
    first = rank * n_files // world
    last = -(-(rank + 1) * n_files // world)
    mine = files[first:last]
    # mmap: opening a shard costs no memory; only the slices read below are touched
    shards = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in mine]
    for f, shard in zip(mine[1:], shards[1:]):
        if set(shard) != set(shards[0]):
            raise ValueError(f"{f}: tensor names differ from {mine[0].name}: "
                             f"{sorted(set(shard) ^ set(shards[0]))[:5]}")
    try:
        dim = params["dim"]
        multiple_of = params["multiple_of"]
        hidden = int(2 * 4 * dim / 3)  # Meta's FFN width rule (llama/model.py FeedForward)
        if params.get("ffn_dim_multiplier") is not None:
            hidden = int(params["ffn_dim_multiplier"] * hidden)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        vocab = params.get("vocab_size", -1)
        if vocab <= 0:  # Meta's Llama-2 release: take it from the embedding
            vocab = shards[0]["tok_embeddings.weight"].shape[0]
        fields = dict(dim=dim, n_layers=params["n_layers"], n_heads=params["n_heads"],
                      n_kv_heads=params.get("n_kv_heads"), vocab_size=vocab, hidden_dim=hidden,
                      norm_eps=params.get("norm_eps", 1e-5),
                      rope_theta=params.get("rope_theta", 10000.0),
                      max_seq_len=params.get("max_seq_len", 4096))
    except KeyError as e:
        raise ValueError(f"{params_file}: missing required key {e.args[0]!r}") from None
    head_dim = dim // fields["n_heads"]

    def tensors():
        where = files[0] if n_files == 1 else f"{path}/consolidated.*.pth"
        for name in shards[0]:
            if name == "rope.freqs":  # Meta stores the rotary frequencies; we recompute them
                continue
            parts = [shard[name] for shard in shards]
            axis = split_dim(name)
            if axis is None:
                yield where, name, parts[0].shape, functools.partial(_narrow, parts[0])
                continue
            if len({part.shape for part in parts}) > 1:
                raise ValueError(f"{where}: shards disagree on the shape of {name!r}: "
                                 f"{[list(part.shape) for part in parts]}")
            shape = list(parts[0].shape)
            shape[axis] *= n_files
            read = functools.partial(_meta_slice, parts, axis, first * parts[0].shape[axis], name,
                                     head_dim)
            yield where, name, shape, read
    return fields, tensors()


def _meta_slice(parts, axis, offset, name, head_dim, dim=None, start=0, n=0):
    """The merged tensor (dim None) or its slice start .. start+n along dim (== axis), from the
    shards `parts` (which begin at `offset` along axis), q/k rows permuted to HF's rotary order."""
    t = torch.cat(parts, dim=axis) if len(parts) > 1 else parts[0]
    if dim is not None:
        t = t.narrow(dim, start - offset, n)
    if name.endswith(("attention.wq.weight", "attention.wk.weight")):
        t = _permute_qk(t.contiguous(), head_dim)
    return t.contiguous()


# -------------------------------------------------------------------------------- open, write
@dataclass
class Checkpoint:
    """An opened checkpoint: the model it holds (`fields`, ModelArgs's names), its tensors not yet
    read."""
    path: Path
    fields: dict
    hf: bool         # Hugging Face names in the files (else Meta's, which are ours)
    stored: object   # iterator of (file, name in the file, whole shape, read)
    rank: int = 0
    world: int = 1

    def tensors(self, shapes: dict):
        """Yield (key, tensor): our parameter names, HF's rotary order, stored dtype, CPU, one
        tensor at a time. Each tensor's name and shape are checked against `shapes` ({key: shape},
        the model's) before it is read; missing tensors are an error at the end. world > 1: only
        rank's slice of each split weight (split_dim: Meta's model-parallel layout) is read, so a
        rank holds 1/world of the weights (the norms whole)."""
        key_of = {(hf_name(key) if self.hf else key): key for key in shapes}  # file name -> ours
        seen_in = {}
        for file, name, shape, read in self.stored:
            if (key := key_of.get(name)) is None:
                raise ValueError(f"{file}: unexpected tensor {name!r}")
            if list(shape) != shapes[key]:
                raise ValueError(f"{file}: tensor {name!r} has shape {list(shape)}, the config "
                                 f"implies {shapes[key]}")
            if key in seen_in:
                raise ValueError(f"{file}: tensor {name!r} also appears in {seen_in[key]}")
            seen_in[key] = file
            axis = split_dim(key) if self.world > 1 else None
            if axis is None:
                yield key, read()
            else:
                n = shape[axis] // self.world
                yield key, read(axis, self.rank * n, n)
        if missing := [name for name, key in key_of.items() if key not in seen_in]:
            more = " ..." if len(missing) > 5 else ""
            raise ValueError(f"{self.path}: checkpoint lacks tensors {missing[:5]}{more}")


def open_checkpoint(path, rank: int = 0, world: int = 1) -> Checkpoint:
    """A checkpoint in HF (config.json) or Meta (params.json) layout, opened: its config read, its
    tensors listed (Meta: only the shards holding rank's part of a world-way split)."""
    path = Path(path)
    if (path / "config.json").is_file():
        fields, stored = _hf_source(path)
        return Checkpoint(path, fields, True, stored, rank, world)
    if (path / "params.json").is_file():
        fields, stored = _meta_source(path, rank, world)
        return Checkpoint(path, fields, False, stored, rank, world)
    raise FileNotFoundError(f"{path}: no config.json (Hugging Face layout) or params.json "
                            "(Meta layout)")


def read_config(path) -> dict:
    """The model's fields (ModelArgs's names) from a Hugging Face config.json (a folder holding one,
    or the file itself), no weights needed: what `train.py --plan` sizes a run from."""
    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no such file (give a Hugging Face config.json or "
                                "its folder)")
    return _hf_fields(config_file)


def stored_dtype(path) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (its first tensor's), read from the
    safetensors header or a memory-mapped .pth / .bin: no tensor is read."""
    path = Path(path)
    if (path / "config.json").is_file():
        file, _ = _hf_files(path)[0]
        if file.suffix == ".safetensors":
            with open(file, "rb") as f:
                try:
                    (n,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(n))
                except (struct.error, ValueError):
                    raise ValueError(f"{file}: not a safetensors file (unreadable header)") \
                        from None
            dtypes = [info["dtype"] for name, info in header.items() if name != "__metadata__"]
            if not dtypes or dtypes[0] not in _ST_DTYPES:
                raise ValueError(f"{file}: no F32/F16/BF16 tensor in the header")
            return _ST_DTYPES[dtypes[0]]
    else:
        files = sorted(path.glob("consolidated.*.pth"))
        if not files:
            raise FileNotFoundError(f"{path}: no config.json or consolidated.*.pth")
        file = files[0]
    tensors = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    return next(iter(tensors.values())).dtype


def write_hf(path, fields: dict, state: dict, max_shard_bytes: int = 5 * 10**9):
    """Write the Hugging Face layout of the model `fields` (ModelArgs's) with weights `state` ({our
    name: tensor}): config.json + model.safetensors, or model-0000N-of-0000M.safetensors +
    model.safetensors.index.json above max_shard_bytes, q/k rows in HF order so other tools read
    it. Every file is written atomically (storage.atomic_open); stale weight files are removed."""
    specs = {key: (list(t.shape), t.dtype) for key, t in state.items()}
    write_hf_stream(path, fields, specs, iter(state.items()), max_shard_bytes)


def write_hf_stream(path, fields: dict, specs: dict, tensors, max_shard_bytes: int = 5 * 10**9):
    """write_hf from a stream: `specs` ({our name: (shape, dtype)}, in file order) lays out the
    shards and their headers before any tensor exists; `tensors` then yields (name, tensor) in
    that order, each written and dropped before the next is taken. So a model sharded over ranks
    (train.py's export) is written holding one whole tensor at a time, never the whole model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards = [[]]
    size = 0
    for key, (shape, dtype) in specs.items():
        nbytes = _nbytes(shape, dtype)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    n = len(shards)
    if n == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    tensors = iter(tensors)
    for name, keys in zip(names, shards):
        with atomic_open(path / name, "wb") as f:
            f.write(_safetensors_header([(hf_name(key), *specs[key]) for key in keys]))
            for key in keys:
                got, t = next(tensors)
                if got != key or list(t.shape) != specs[key][0] or t.dtype != specs[key][1]:
                    raise ValueError(f"{path / name}: expected {key} {specs[key]}, got {got} "
                                     f"{[list(t.shape), t.dtype]}")
                f.write(t.detach().cpu().contiguous().view(torch.uint8).numpy())
                del t
    if n > 1:
        total = sum(_nbytes(*spec) for spec in specs.values())
        weight_map = {hf_name(key): name for name, keys in zip(names, shards) for key in keys}
        names.append("model.safetensors.index.json")
        write_json(path / names[-1], {"metadata": {"total_size": total}, "weight_map": weight_map})
    for stale in path.glob("model*.safetensors*"):  # weights of an earlier save, other sharding
        if stale.name not in names:
            stale.unlink()
    write_json(path / "config.json", _hf_config(fields, specs["output.weight"][1]))


def _nbytes(shape, dtype):
    return math.prod(shape) * dtype.itemsize
