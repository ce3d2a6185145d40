"""The Llama-2 / CodeLlama decoder, written out by hand, plus loading and saving real checkpoints.

MathCoder (Wang et al., ICLR 2024) fine-tunes Llama-2 and CodeLlama unchanged: the only
architectural change is 8 extra vocabulary rows for the LCE special tokens (`grow_vocab`).
Read top to bottom:
  1. the math: RMSNorm, rotary embeddings, grouped-query attention with a KV cache, SwiGLU
  2. checkpoints: a small safetensors reader/writer, the HF <-> internal name map, the ONE place
     where q/k rows are permuted (Meta vs HF rotary order), read_checkpoint / load_pretrained (HF
     or Meta layout, one tensor at a time, optionally one rank's slice only), save_pretrained
  3. tensor parallelism (Megatron-LM, the layout of Meta's model-parallel shards): which dimension
     of each weight is split, and the two collectives (all-reduce, all-gather) that make the split
     model compute what the whole one computes
  4. several processes: ranks grouped into model replicas; tensor-parallel inference in lockstep
  5. a tiny CLI: `python model.py CKPT --prompt-ids 1,2,3` (greedy continuation), `--save OUT`
     (convert), `torchrun --nproc_per_node=2 model.py CKPT --tp 2 --prompt-ids 1,2,3`.
Parameter names follow Meta's llama/model.py (tok_embeddings, layers.N.attention.wq, ..., output).
"""
import argparse, atexit, datetime, functools, json, os, struct, sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None      # < n_heads: grouped-query attention (CL-34B, L-2-70B)
    vocab_size: int = 32000
    hidden_dim: int = 11008            # explicit FFN width (HF intermediate_size)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0        # CodeLlama: 1e6
    max_seq_len: int = 4096            # informational only: rotary angles come from positions

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads

    @property
    def head_dim(self):
        return self.dim // self.n_heads


# ----------------------------------------------------------------------------------------- the math
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):  # normalise in float32, scale in the model dtype (as Meta and HF both do)
        xf = x.float()
        rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * rms).type_as(x) * self.weight


def rope_cos_sin(positions, head_dim: int, theta: float):
    """cos/sin [B, T, 1, head_dim] for rotary embeddings at integer positions [B, T] (float32)."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
    inv_freq = 1.0 / theta ** exponents
    angles = positions[..., None].float() * inv_freq                  # [B, T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]       # rotate-half: see _permute_qk
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (i, i + head_dim/2) of each head by position-dependent angles (HF's "rotate
    half")."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


@dataclass
class KVCache:
    k: list  # per layer: [batch_size, max_len, n_kv_heads (this rank's, under TP), head_dim]
    v: list

    @property
    def max_len(self):
        return self.k[0].shape[1]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, mask, kv=None):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if kv is not None:  # write this step's K/V into the cache, attend over all cached so far
            cache_k, cache_v, write, read = kv
            cache_k[write], cache_v[write] = k.to(cache_k.dtype), v.to(cache_v.dtype)
            k, v = cache_k[read].to(q.dtype), cache_v[read].to(q.dtype)
        # [B, heads, T, head_dim]; enable_gqa: n_heads / n_kv_heads query heads share each K/V head
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):  # SwiGLU: w2(silu(w1 x) * w3 x)
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):  # pre-norm residual block
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, mask, kv=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, kv)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        for p in self.parameters():  # from-scratch init (GPT-2 style); a no-op on the meta device
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        w = self.output.weight
        n_kv_heads = self.layers[0].attention.n_kv_heads   # this rank's heads under tensor_parallel
        shape = (batch_size, max_len, n_kv_heads, self.args.head_dim)
        make = lambda: torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)
        n = self.args.n_layers
        return KVCache([make() for _ in range(n)], [make() for _ in range(n)])

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None, last_only=False):
        """tokens [B, T] -> float32 logits [B, T, vocab]. positions [B, T] (default 0..T-1) place
        each token (rotary angles; cache slots); doc_ids [B, T] restrict attention to the same
        document (packed training); cache: K/V of earlier tokens, rows [B]: which cache row each
        sequence uses (default the first B). last_only: logits of the last position only, [B, 1,
        vocab]: a prefill then skips the vocabulary projection of every prompt token (with
        right-padded rows the last position is a pad: don't)."""
        B, T = tokens.shape
        dev = tokens.device
        if positions is None:
            positions = torch.arange(T, device=dev).expand(B, T)
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta)
        mask = None  # mask None = plain causal (lets SDPA pick its fastest kernel)
        if cache is not None:
            if doc_ids is not None:
                raise ValueError("forward: doc_ids (packed training) and cache (decoding) cannot "
                                 "be combined")
            S = int(positions.max()) + 1  # only the first S cache slots can be attended to
            if S > cache.max_len:
                raise ValueError(f"forward: position {S - 1} does not fit a cache of max_len "
                                 f"{cache.max_len}")
            r = torch.arange(B, device=dev) if rows is None else torch.as_tensor(rows, device=dev)
            write = (r[:, None], positions)            # cache[row, position] = this token's K/V
            read = (slice(0, B) if rows is None else r, slice(0, S))  # rows None: a view
            # query at position p sees its row's cached keys at positions <= p; stale slots beyond p
            # are masked
            mask = (torch.arange(S, device=dev) <= positions[:, :, None])[:, None]    # [B, 1, T, S]
        elif doc_ids is not None:  # packed sequences: causal AND same document
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            mask = (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]   # [B, 1, T, T]
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i], write, read)
            h = layer(h, cos, sin, mask, kv)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()

    @torch.no_grad()
    def grow_vocab(self, new_vocab_size: int):
        """Add rows for new tokens (MathCoder's 8 LCE tokens), each the mean of the old rows."""
        old = self.args.vocab_size
        if new_vocab_size < old:
            raise ValueError(f"grow_vocab: new size {new_vocab_size} is smaller than the current "
                             f"{old}")
        for mod, attr in ((self.tok_embeddings, "num_embeddings"), (self.output, "out_features")):
            w = mod.weight
            mod.weight = nn.Parameter(grow_rows(w, new_vocab_size), requires_grad=w.requires_grad)
            setattr(mod, attr, new_vocab_size)
        self.args.vocab_size = new_vocab_size

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=None, tp_group=None) -> "Transformer":
        """load_pretrained (below): HF or Meta weights; tp_group: this rank's shard (TP)."""
        return load_pretrained(path, device, dtype, tp_group)

    def save_pretrained(self, path, max_shard_bytes: int = 5 * 10**9):
        """Write the Hugging Face layout (config.json + model.safetensors, or
        model-0000N-of-0000M.safetensors + model.safetensors.index.json above max_shard_bytes), q/k
        rows in HF order so other tools read it. Every file is written to a temporary name and
        os.replace'd (atomic); stale weight files are removed."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        shards, size = [[]], 0
        for key, t in self.state_dict().items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((_hf_name(key), t))
            size += nbytes
        n = len(shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                      for i in range(n)]
        for name, shard in zip(names, shards):
            _atomic_write(path / name, lambda f, shard=shard: _write_safetensors(f, shard))
        if n > 1:
            total = sum(t.numel() * t.element_size() for s in shards for _, t in s)
            index = {"metadata": {"total_size": total},
                     "weight_map": {k: name for name, s in zip(names, shards) for k, _ in s}}
            names.append("model.safetensors.index.json")
            _atomic_write(path / names[-1], lambda f: f.write(json.dumps(index, indent=2).encode()))
        for stale in path.glob("model*.safetensors*"):  # weights of an earlier save, other sharding
            if stale.name not in names:
                stale.unlink()
        a = self.args
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "hidden_act": "silu", "hidden_size": a.dim, "intermediate_size": a.hidden_dim,
                  "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads,
                  "num_key_value_heads": a.n_kv_heads, "vocab_size": a.vocab_size,
                  "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta,
                  "max_position_embeddings": a.max_seq_len, "rope_scaling": None,
                  "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                  "torch_dtype": str(self.output.weight.dtype).removeprefix("torch.")}
        text = json.dumps(config, indent=2).encode()
        _atomic_write(path / "config.json", lambda f: f.write(text))


def grow_rows(w, n_rows: int):
    """w with rows appended up to n_rows, each the mean of the old rows (computed in float32)."""
    mean = w.float().mean(0, keepdim=True).to(w.dtype)
    return torch.cat([w, mean.expand(n_rows - w.shape[0], -1)])


# -------------------------------------------------------------------------------------- checkpoints
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _read_safetensors(file):
    """Yield (name, shape, read) for each tensor of a .safetensors file: u64 little-endian header
    length, JSON header {name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Nothing
    is read until read() is called (before the next tensor): the whole tensor, or with read(dim,
    start, n) only rows (dim 0) or columns (dim 1) start .. start+n, for tensor parallelism."""
    with open(file, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
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
    for r in range(0, shape[0], block):
        k = min(block, shape[0] - r)
        out[r:r + k] = read(r * row_bytes, k * row_bytes, [k, shape[1]])[:, start:start + n]
    return out


def _write_safetensors(f, named_tensors):
    inv = {v: k for k, v in _ST_DTYPES.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": inv[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # pad: tensor data 8-byte aligned, as the safetensors library does
    f.write(struct.pack("<Q", len(h)) + h)
    for _, t in named_tensors:
        f.write(t.detach().cpu().contiguous().view(torch.uint8).numpy())  # raw bytes, no extra copy


def _atomic_write(file, write):
    tmp = file.with_name(file.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, file)


# internal (Meta) parameter names -> Hugging Face names
_HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_HF_LAYER = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj",
             "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _hf_name(key: str) -> str:
    """Ours -> HF's: "layers.3.attention.wq.weight" -> "model.layers.3.self_attn.q_proj.weight"."""
    if key in _HF_TOP:
        return _HF_TOP[key]
    _, i, rest = key.split(".", 2)
    return f"model.layers.{i}.{_HF_LAYER[rest.removesuffix('.weight')]}.weight"


def _permute_qk(w, head_dim: int):
    """THE one place where q/k layouts meet. Rotary embeddings rotate pairs of coordinates in each
    head. Meta's checkpoints (and llama/model.py) pair interleaved coordinates (0,1), (2,3), ...;
    HF's, and this file's apply_rope, pair coordinate i with i + head_dim/2 ("rotate half").
    Attention scores only depend on q.k, so permuting the rows of wq and wk the same way inside each
    head gives the same model. We keep HF's order internally, so HF files load and save untouched
    and Meta's wq/wk are permuted once, on load: within each head, rows (2i, 2i+1) move to (i, i +
    head_dim/2). (Same as transformers' convert_llama_weights_to_hf.py.) Head by head: a
    tensor-parallel slice of whole heads is permuted the same way."""
    out_dim, in_dim = w.shape
    pairs = w.view(out_dim // head_dim, head_dim // 2, 2, in_dim)     # [heads, i, (2i, 2i+1), in]
    return pairs.transpose(1, 2).reshape(out_dim, in_dim)


# config.json keys that do not change the forward math (pretraining_tp only splits HF's matmuls)
_HF_HARMLESS = {"_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id",
                "torch_dtype", "dtype", "transformers_version", "use_cache", "initializer_range",
                "pretraining_tp", "max_position_embeddings"}
# keys that change the math: accepted only at the value this file implements
_HF_MUST_BE = {"model_type": "llama", "hidden_act": "silu", "rope_scaling": None,
               "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
               "attention_dropout": 0.0}
_HF_SHAPE = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "head_dim"}


def _read_json(file):
    try:
        return json.loads(Path(file).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _hf_source(path):
    """(ModelArgs, iterator of (file, name, shape, read)) for a Hugging Face checkpoint."""
    cfg_file = path / "config.json"
    cfg = _read_json(cfg_file)
    for k, want in _HF_MUST_BE.items():
        if k in cfg and cfg[k] != want:
            raise ValueError(f"{cfg_file}: {k} = {cfg[k]!r} is not supported (this Llama "
                             f"implements {want!r})")
    if unknown := sorted(set(cfg) - _HF_HARMLESS - set(_HF_MUST_BE) - _HF_SHAPE):
        raise ValueError(f"{cfg_file}: unknown keys {unknown} may change the model; refusing to "
                         "guess")
    try:
        args = ModelArgs(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
                         n_heads=cfg["num_attention_heads"],
                         n_kv_heads=cfg.get("num_key_value_heads"),
                         vocab_size=cfg["vocab_size"], hidden_dim=cfg["intermediate_size"],
                         norm_eps=cfg.get("rms_norm_eps", 1e-6),
                         rope_theta=cfg.get("rope_theta", 10000.0),
                         max_seq_len=cfg.get("max_position_embeddings", 4096))
    except KeyError as e:
        raise ValueError(f"{cfg_file}: missing required key {e.args[0]!r}") from None
    if cfg.get("head_dim", args.head_dim) != args.head_dim:
        raise ValueError(f"{cfg_file}: head_dim {cfg['head_dim']} != hidden_size / "
                         "num_attention_heads")
    tensors = ((file, name, shape, read) for file, reader in _hf_files(path)
               for name, shape, read in reader(file)
               if not name.endswith("rotary_emb.inv_freq"))  # old HF files have it; we compute it
    return args, tensors


def _read_bin(file):  # pytorch_model.bin: memory-mapped, so a slice touches only its own pages
    for name, t in torch.load(file, map_location="cpu", mmap=True, weights_only=True).items():
        yield name, t.shape, functools.partial(_narrow, t)


def _narrow(t, dim=None, start=0, n=0):
    return t if dim is None else t.narrow(dim, start, n).contiguous()


def _hf_files(path):
    """(file, reader) for the weight files, honouring the index; errors if a listed shard is
    missing."""
    for single, index, reader in [
            ("model.safetensors", "model.safetensors.index.json", _read_safetensors),
            ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_bin)]:
        if (path / single).is_file():
            return [(path / single, reader)]
        if (path / index).is_file():
            weight_map = _read_json(path / index).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (path / f).is_file():
                    raise FileNotFoundError(f"{path / index}: lists shard {f}, which is missing "
                                            f"from {path}")
            return [(path / f, reader) for f in files]
    raise FileNotFoundError(f"{path}: config.json found but no model.safetensors, "
                            "model.safetensors.index.json, pytorch_model.bin or "
                            "pytorch_model.bin.index.json")


_META_KNOWN = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
               "ffn_dim_multiplier", "norm_eps", "rope_theta", "max_seq_len", "max_batch_size",
               "use_scaled_rope"}


def _meta_source(path, rank=0, world=1):
    """(ModelArgs, iterator of (file, name, shape, read)) for a Meta checkpoint: params.json and M
    model-parallel shards consolidated.00 .. M-1.pth, each weight split as split_dim says (norms
    replicated). `shape` is the merged tensor's. Only the shards holding rank's part of a world-way
    split are opened (memory-mapped): with M == world, rank r opens consolidated.r.pth alone."""
    p_file = path / "params.json"
    p = _read_json(p_file)
    if p.get("use_scaled_rope"):
        raise ValueError(f"{p_file}: use_scaled_rope (Llama-3.1 rope scaling) is not supported")
    if unknown := sorted(set(p) - _META_KNOWN):
        raise ValueError(f"{p_file}: unknown keys {unknown} may change the model; refusing to "
                         "guess")
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise FileNotFoundError(f"{path}: params.json found but no consolidated.*.pth")
    M = len(files)
    if [f.name for f in files] != [f"consolidated.{i:02d}.pth" for i in range(M)]:
        raise FileNotFoundError(f"{path}: model-parallel shards are not consolidated.00 .. "
                                f"{M - 1:02d}.pth")
    first, last = rank * M // world, -(-(rank + 1) * M // world)  # shards holding this rank's rows
    mine = files[first:last]
    # mmap: opening a shard costs no memory; only the slices read below are touched
    shards = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in mine]
    for f, sd in zip(mine[1:], shards[1:]):
        if set(sd) != set(shards[0]):
            raise ValueError(f"{f}: tensor names differ from {mine[0].name}: "
                             f"{sorted(set(sd) ^ set(shards[0]))[:5]}")
    try:
        dim = p["dim"]
        hidden = int(2 * 4 * dim / 3)  # Meta's FFN width rule (llama/model.py FeedForward)
        if p.get("ffn_dim_multiplier") is not None:
            hidden = int(p["ffn_dim_multiplier"] * hidden)
        hidden = p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])
        vocab = p.get("vocab_size", -1)
        if vocab <= 0:  # Meta's Llama-2 release: take it from the embedding
            vocab = shards[0]["tok_embeddings.weight"].shape[0]
        args = ModelArgs(dim=dim, n_layers=p["n_layers"], n_heads=p["n_heads"],
                         n_kv_heads=p.get("n_kv_heads"), vocab_size=vocab, hidden_dim=hidden,
                         norm_eps=p.get("norm_eps", 1e-5), rope_theta=p.get("rope_theta", 10000.0),
                         max_seq_len=p.get("max_seq_len", 4096))
    except KeyError as e:
        raise ValueError(f"{p_file}: missing required key {e.args[0]!r}") from None

    def tensors():
        where = files[0] if M == 1 else f"{path}/consolidated.*.pth"
        for name in shards[0]:
            if name == "rope.freqs":  # Meta stores the rotary frequencies; we recompute them
                continue
            parts = [sd[name] for sd in shards]
            axis = split_dim(name)
            if axis is None:
                yield where, name, parts[0].shape, functools.partial(_narrow, parts[0])
                continue
            if len({part.shape for part in parts}) > 1:
                raise ValueError(f"{where}: shards disagree on the shape of {name!r}: "
                                 f"{[list(part.shape) for part in parts]}")
            shape = list(parts[0].shape)
            shape[axis] *= M
            read = functools.partial(_meta_slice, parts, axis, first * parts[0].shape[axis], name,
                                     args.head_dim)
            yield where, name, shape, read
    return args, tensors()


def _meta_slice(parts, axis, offset, name, head_dim, dim=None, start=0, n=0):
    """The merged tensor (dim None) or its slice start .. start+n along dim (== axis), from the
    shards `parts` (which begin at `offset` along axis), q/k rows permuted to HF's rotary order."""
    t = torch.cat(parts, dim=axis) if len(parts) > 1 else parts[0]
    if dim is not None:
        t = t.narrow(dim, start - offset, n)
    if name.endswith(("attention.wq.weight", "attention.wk.weight")):
        t = _permute_qk(t.contiguous(), head_dim)
    return t.contiguous()


def read_checkpoint(path, rank: int = 0, world: int = 1):
    """A checkpoint (HF or Meta layout) as (ModelArgs, iterator of (key, tensor)): our parameter
    names, HF's rotary order, stored dtype, CPU, one tensor at a time. Each tensor's name and shape
    are checked against the config before it is read; missing tensors are an error at the end. world
    > 1: only rank's slice of each split weight (split_dim: Meta's model-parallel layout) is read,
    so a rank holds 1/world of the weights (the norms whole)."""
    path = Path(path)
    hf = (path / "config.json").is_file()
    if hf:
        args, named = _hf_source(path)
    elif (path / "params.json").is_file():
        args, named = _meta_source(path, rank, world)
    else:
        raise FileNotFoundError(f"{path}: no config.json (Hugging Face layout) or params.json "
                                "(Meta layout)")
    check_tensor_parallel(args, world)
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in Transformer(args).state_dict().items()}
    key_of = {(_hf_name(k) if hf else k): k for k in expected}  # the file's tensor name -> ours

    def tensors():
        where = {}
        for file, name, shape, read in named:
            if (key := key_of.get(name)) is None:
                raise ValueError(f"{file}: unexpected tensor {name!r}")
            if list(shape) != expected[key]:
                raise ValueError(f"{file}: tensor {name!r} has shape {list(shape)}, the config "
                                 f"implies {expected[key]}")
            if key in where:
                raise ValueError(f"{file}: tensor {name!r} also appears in {where[key]}")
            where[key] = file
            axis = split_dim(key) if world > 1 else None
            if axis is None:
                yield key, read()
            else:
                n = shape[axis] // world
                yield key, read(axis, rank * n, n)
        if missing := [name for name, k in key_of.items() if k not in where]:
            more = " ..." if len(missing) > 5 else ""
            raise ValueError(f"{path}: checkpoint lacks tensors {missing[:5]}{more}")
    return args, tensors()


def load_pretrained(path, device="cpu", dtype=None, tp_group=None) -> Transformer:
    """Load HF (config.json + *.safetensors) or Meta (params.json + consolidated.*.pth) weights.
    dtype None keeps the stored dtype. Peak memory stays near one copy: the model is built on the
    meta device (no storage), every tensor is read one at a time (safetensors) or memory-mapped
    (.pth / .bin) straight into its final dtype/device, and load_state_dict(assign=True) adopts
    those tensors as the parameters instead of copying them. tp_group (a process group, under
    torchrun): this rank's tensor-parallel shard only (tensor_parallel below), read without the
    other ranks' parts."""
    rank, world = (dist.get_rank(tp_group), dist.get_world_size(tp_group)) if tp_group else (0, 1)
    args, tensors = read_checkpoint(path, rank, world)
    with torch.device("meta"):
        model = Transformer(args)
    if tp_group is not None:
        tensor_parallel(model, tp_group)
    sd = {}
    for key, t in tensors:
        dtype = dtype or t.dtype  # None: every tensor takes the stored dtype of the first
        sd[key] = t.to(device=device, dtype=dtype)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


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
_SPLIT = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1,
          "tok_embeddings": 1}


def split_dim(key: str):
    """The dimension along which parameter `key` is split over tensor-parallel ranks, or None."""
    return _SPLIT.get(key.removesuffix(".weight").rsplit(".", 1)[-1])


def check_tensor_parallel(args: ModelArgs, world: int):
    for what, n in [("key/value heads", args.n_kv_heads), ("attention heads", args.n_heads),
                    ("hidden units (FFN)", args.hidden_dim), ("vocabulary rows", args.vocab_size),
                    ("dim", args.dim)]:
        if n % world:
            gqa = " (each rank needs whole KV heads)" if what == "key/value heads" else ""
            raise ValueError(f"tensor parallelism over {world} ranks: the model's {n} {what} do "
                             f"not divide by {world}{gqa}")


def tensor_parallel(model: Transformer, group) -> Transformer:
    """Keep only this rank's slice of each split weight (on the meta device: only the shapes) and
    add the collectives. The KV cache (new_cache) then holds this rank's KV heads only. For
    inference: the collectives below do not carry gradients (training shards with FSDP,
    train.py)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
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


# ------------------------------------------------------------ several processes: replicas, lockstep
# Under `torchrun --nproc_per_node=W ... --tp N` the W ranks form W/N model replicas of N
# consecutive ranks. The N ranks of a replica hold the N shards of one model (tensor_parallel
# above); the replicas share out the problems (data parallelism: eval.py run, infer.py --file).
# NCCL between GPUs, gloo on the CPU (the tests).
# Inference under tensor parallelism runs in lockstep. The replica's first rank, the leader, runs
# the whole loop (infer.solve): it samples, runs the code in its sandbox, starts and retires rows.
# Its model is wrapped in Lockstep, which broadcasts each call's inputs (token ids: the sampled
# tokens and the encoded execution output alike) before making the call; the other ranks (follow)
# receive every call and make it on their shards, so each collective meets its partner on every
# rank. Nothing a follower does depends on sampling, code execution or timing (a timeout seen by
# one rank only would otherwise desynchronise them), so the ranks cannot diverge.
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
    end_group: object = None  # the replicas' leaders, for wait_for_all

    @property
    def leader(self) -> bool:  # runs the loop and writes the results for its replica
        return self.rank % self.tp == 0

    def wait_for_all(self, value=None) -> list:
        """Leaders only: return every leader's `value` (in replica order) once all have called this.
        Replicas can finish far apart in time, so this uses a CPU (gloo) group with a long timeout:
        the first ones wait instead of timing out."""
        if self.end_group is None:
            return [value]
        values = [None] * self.n_replicas
        dist.all_gather_object(values, value, group=self.end_group)
        return values

    def lockstep(self, model) -> "Lockstep":
        """On a leader: the model to hand to the loop, each call announced to this replica's
        followers (nothing to announce without tensor parallelism)."""
        return Lockstep(model, self.tp_group)


def init_ranks(tp: int = 1) -> Ranks:
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
        # torn down before the interpreter is (left to exit, gloo's threads can abort the process)
        atexit.register(dist.destroy_process_group)
    rank, world = dist.get_rank(), dist.get_world_size()
    if tp < 1 or world % tp:
        raise ValueError(f"--tp {tp}: the {world} ranks of this run do not form replicas of {tp} "
                         "ranks")
    # every rank creates every group, in the same order (torch.distributed requires it)
    groups = [dist.new_group(list(range(k, k + tp))) for k in range(0, world, tp)] if tp > 1 else []
    end_group = dist.new_group(list(range(0, world, tp)), backend="gloo",
                               timeout=datetime.timedelta(days=7))
    return Ranks(device, rank, tp, rank // tp, world // tp, groups[rank // tp] if groups else None,
                 end_group)


class Lockstep(nn.Module):
    """The leader's model: each call is announced to the followers, then made. release() (or
    leaving a `with` block) lets the followers return. group None: no followers, calls pass
    straight through."""

    def __init__(self, model, group=None):
        super().__init__()
        self.model, self.group, self.args = model, group, model.args
        self.cache = None

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
        self.announce(None)

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.release()


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


# ------------------------------------------------------------------------------------------ the CLI
@torch.no_grad()
def greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt with the KV cache (prefill once, then a token a step)."""
    dev = next(model.parameters()).device
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids], device=dev), cache=cache, last_only=True)
    out = []
    for i in range(max_new_tokens):
        out.append(int(logits[0, -1].argmax()))
        if i + 1 == max_new_tokens:
            break
        pos = torch.tensor([[len(prompt_ids) + i]], device=dev)
        logits = model(torch.tensor([[out[-1]]], device=dev), positions=pos, cache=cache)
    return out


def main():
    ap = argparse.ArgumentParser(description="Load a Llama checkpoint (HF or Meta layout); print "
                                 "its size, optionally a greedy continuation, optionally save it "
                                 "in HF layout. Tensor parallel: torchrun --nproc_per_node=N "
                                 "model.py ... --tp N (rank 0 prints).")
    ap.add_argument("ckpt", help="checkpoint folder (config.json + safetensors, or params.json + "
                    "consolidated.*.pth)")
    ap.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3: print the greedy "
                    "continuation")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", help="default: cuda (this rank's GPU) when available, else cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                    help="default: as stored")
    ap.add_argument("--save", metavar="OUT", help="write the model to OUT in Hugging Face layout")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (under torchrun, "
                    "--nproc_per_node equal to it)")
    a = ap.parse_args()
    ranks = init_ranks(a.tp)
    if ranks.n_replicas > 1 or (a.save and a.tp > 1):
        raise ValueError("model.py: --nproc_per_node must equal --tp, and --save needs --tp 1")
    model = load_pretrained(a.ckpt, a.device or ranks.device, a.dtype and getattr(torch, a.dtype),
                            ranks.tp_group)
    if not ranks.leader:  # the other shards of a tensor-parallel model: make the leader's calls
        return follow(model, ranks.tp_group)
    n = sum(p.numel() for p in model.parameters())
    shard = f" on each of {a.tp} ranks (tensor parallel)" if a.tp > 1 else ""
    print(f"{a.ckpt}: {n:,} parameters ({n / 1e9:.2f}B){shard}, {model.args}")
    if a.prompt_ids:
        with ranks.lockstep(model) as leader:  # under TP: each call announced to the followers
            print(greedy(leader, [int(x) for x in a.prompt_ids.split(",")], a.max_new_tokens))
    if a.save:
        model.save_pretrained(a.save)
        print(f"saved to {a.save}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad input: one line naming the file, no traceback
        sys.exit(f"error: {e}")
