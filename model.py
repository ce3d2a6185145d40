"""The Llama-2 / CodeLlama decoder, written out by hand, plus loading and saving real checkpoints.

MathCoder (Wang et al., ICLR 2024) fine-tunes Llama-2 and CodeLlama unchanged: the only architectural change
is 8 extra vocabulary rows for the LCE tokens (METHOD.md §1, `grow_vocab`). Read top to bottom:
  1. the math: RMSNorm, rotary embeddings, grouped-query attention with a KV cache, SwiGLU, Transformer
  2. checkpoints: a ~20-line safetensors reader/writer, the HF <-> internal name map, the ONE place where
     q/k rows are permuted (Meta vs HF rotary order), from_pretrained (HF or Meta layout), save_pretrained
  3. a tiny CLI: `python model.py CKPT --prompt-ids 1,2,3` (greedy continuation), `--save OUT` (convert).
Parameter names follow Meta's llama/model.py (tok_embeddings, layers.N.attention.wq, ..., output).
"""
import argparse, json, os, re, struct, sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None      # < n_heads: grouped-query attention (CodeLlama-34B, Llama-2-70B)
    vocab_size: int = 32000
    hidden_dim: int = 11008            # explicit FFN width (HF intermediate_size)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0        # CodeLlama: 1e6
    max_seq_len: int = 4096            # informational only: rotary angles are computed from positions

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads

    @property
    def head_dim(self):
        return self.dim // self.n_heads


# ----------------------------------------------------------------------------------------------- the math
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):  # normalise in float32, scale in the model dtype (as Meta and HF both do)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cos_sin(positions, head_dim: int, theta: float):
    """cos/sin [B, T, 1, head_dim] for rotary embeddings at integer positions [B, T] (float32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions[..., None].float() * inv_freq                  # [B, T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]       # rotate-half layout, see _permute_qk
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (i, i + head_dim/2) of each head by position-dependent angles (HF "rotate half")."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


@dataclass
class KVCache:
    k: list  # per layer: [batch_size, max_len, n_kv_heads, head_dim]
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
        if kv is not None:  # write this step's K/V into the cache, then attend over everything cached so far
            cache_k, cache_v, write, read = kv
            cache_k[write], cache_v[write] = k.to(cache_k.dtype), v.to(cache_v.dtype)
            k, v = cache_k[read].to(q.dtype), cache_v[read].to(q.dtype)
        # [B, heads, T, head_dim]; enable_gqa lets each group of n_heads/n_kv_heads query heads share a K/V head
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
        self.attention, self.feed_forward = Attention(args), FeedForward(args.dim, args.hidden_dim)
        self.attention_norm, self.ffn_norm = RMSNorm(args.dim, args.norm_eps), RMSNorm(args.dim, args.norm_eps)

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
        w, a = self.output.weight, self.args
        make = lambda: torch.zeros(batch_size, max_len, a.n_kv_heads, a.head_dim, device=device or w.device,
                                   dtype=dtype or w.dtype)
        return KVCache([make() for _ in range(a.n_layers)], [make() for _ in range(a.n_layers)])

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None, last_only=False):
        """tokens [B, T] -> float32 logits [B, T, vocab]. See CONTRACT.md for positions/doc_ids/cache/rows.
        last_only: logits of the last position only, [B, 1, vocab]: a prefill then skips the vocabulary
        projection of every prompt token (with right-padded rows the last position is a pad: don't)."""
        B, T = tokens.shape
        dev = tokens.device
        if positions is None:
            positions = torch.arange(T, device=dev).expand(B, T)
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta)
        mask = None  # mask None = plain causal (lets SDPA pick its fastest kernel)
        if cache is not None:
            if doc_ids is not None:
                raise ValueError("forward: doc_ids (packed training) and cache (decoding) cannot be combined")
            S = int(positions.max()) + 1  # only the first S cache slots can be attended to: slice for speed
            if S > cache.max_len:
                raise ValueError(f"forward: position {S - 1} does not fit a cache of max_len {cache.max_len}")
            r = torch.arange(B, device=dev) if rows is None else torch.as_tensor(rows, device=dev)
            write = (r[:, None], positions)                           # cache[row, position] = this token's K/V
            read = (slice(0, B) if rows is None else r, slice(0, S))  # rows None: the first B rows, a view
            # query at position p sees its row's cached keys at positions <= p; stale slots beyond p are masked
            mask = (torch.arange(S, device=dev) <= positions[:, :, None])[:, None]               # [B, 1, T, S]
        elif doc_ids is not None:  # packed sequences: causal AND same document
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            mask = (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]           # [B, 1, T, T]
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, None if cache is None else (cache.k[i], cache.v[i], write, read))
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()

    @torch.no_grad()
    def grow_vocab(self, new_vocab_size: int):
        """Add rows for new tokens (MathCoder's 8 LCE tokens), initialised to the mean of the old rows."""
        old = self.args.vocab_size
        if new_vocab_size < old:
            raise ValueError(f"grow_vocab: new size {new_vocab_size} is smaller than the current {old}")
        for mod, attr in ((self.tok_embeddings, "num_embeddings"), (self.output, "out_features")):
            w = mod.weight
            mean = w.float().mean(0, keepdim=True).to(w.dtype)
            mod.weight = nn.Parameter(torch.cat([w, mean.expand(new_vocab_size - old, -1)]),
                                      requires_grad=w.requires_grad)
            setattr(mod, attr, new_vocab_size)
        self.args.vocab_size = new_vocab_size

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=None) -> "Transformer":
        """Load HF (config.json + *.safetensors) or Meta (params.json + consolidated.*.pth) weights.
        dtype None keeps the stored dtype. Peak memory stays near one copy: the model is built on the meta
        device (no storage), every tensor is read one at a time (safetensors) or memory-mapped (.pth / .bin)
        straight into its final dtype/device, and load_state_dict(assign=True) adopts those tensors as the
        parameters instead of copying them."""
        path = Path(path)
        hf = (path / "config.json").is_file()
        if hf:
            args, tensors = _hf_source(path)
        elif (path / "params.json").is_file():
            args, tensors = _meta_source(path)
        else:
            raise FileNotFoundError(f"{path}: no config.json (Hugging Face layout) or params.json (Meta layout)")
        with torch.device("meta"):
            model = cls(args)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        key_of = {(_hf_name(k) if hf else k): k for k in expected}  # the file's tensor name -> ours
        sd, where = {}, {}
        for file, name, t in tensors:
            if (key := key_of.get(name)) is None:
                raise ValueError(f"{file}: unexpected tensor {name!r}")
            if t.shape != expected[key]:
                raise ValueError(f"{file}: tensor {name!r} has shape {list(t.shape)}, the config implies "
                                 f"{list(expected[key])}")
            if key in sd:
                raise ValueError(f"{file}: tensor {name!r} also appears in {where[key]}")
            dtype = dtype or t.dtype  # None: every tensor takes the stored dtype of the first
            sd[key], where[key] = t.to(device=device, dtype=dtype), file
        if missing := [name for name, k in key_of.items() if k not in sd]:
            raise ValueError(f"{path}: checkpoint lacks tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        model.load_state_dict(sd, strict=True, assign=True)
        return model.eval()

    def save_pretrained(self, path, max_shard_bytes: int = 5 * 10**9):
        """Write the Hugging Face layout (config.json + model.safetensors, or model-0000N-of-0000M.safetensors
        + model.safetensors.index.json above max_shard_bytes), q/k rows in HF order so other tools read it.
        Every file is written to a temporary name and os.replace'd (atomic); stale weight files are removed."""
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
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for name, shard in zip(names, shards):
            _atomic_write(path / name, lambda f, shard=shard: _write_safetensors(f, shard))
        if n > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for _, t in s)},
                     "weight_map": {k: name for name, s in zip(names, shards) for k, _ in s}}
            names.append("model.safetensors.index.json")
            _atomic_write(path / names[-1], lambda f: f.write(json.dumps(index, indent=2).encode()))
        for stale in path.glob("model*.safetensors*"):  # weights of an earlier save with other sharding
            if stale.name not in names:
                stale.unlink()
        a = self.args
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                  "hidden_size": a.dim, "intermediate_size": a.hidden_dim, "num_hidden_layers": a.n_layers,
                  "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
                  "vocab_size": a.vocab_size, "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta,
                  "max_position_embeddings": a.max_seq_len, "rope_scaling": None, "tie_word_embeddings": False,
                  "bos_token_id": 1, "eos_token_id": 2,
                  "torch_dtype": str(self.output.weight.dtype).removeprefix("torch.")}
        _atomic_write(path / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode()))


# ------------------------------------------------------------------------------------------ checkpoints
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _read_safetensors(file):
    """Yield (name, tensor) from a .safetensors file: u64 little-endian header length, JSON header
    {name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Reads one tensor at a time."""
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
                raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}, expected F32/F16/BF16")
            start, end = info["data_offsets"]
            f.seek(8 + n + start)
            buf = bytearray(end - start)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"{file}: truncated data for tensor {name!r}")
            dt = _ST_DTYPES[info["dtype"]]
            t = torch.frombuffer(buf, dtype=dt) if buf else torch.empty(0, dtype=dt)
            yield name, t.reshape(info["shape"])


def _write_safetensors(f, named_tensors):
    inv = {v: k for k, v in _ST_DTYPES.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": inv[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # pad so tensor data is 8-byte aligned, as the safetensors library does
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
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj",
             "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _hf_name(key: str) -> str:  # "layers.3.attention.wq.weight" -> "model.layers.3.self_attn.q_proj.weight"
    if key in _HF_TOP:
        return _HF_TOP[key]
    _, i, rest = key.split(".", 2)
    return f"model.layers.{i}.{_HF_LAYER[rest.removesuffix('.weight')]}.weight"


def _permute_qk(w, n_heads: int):
    """THE one place where q/k layouts meet. Rotary embeddings rotate pairs of coordinates in each head.
    Meta's checkpoints (and llama/model.py) pair interleaved coordinates (0,1), (2,3), ...; HF's, and this
    file's apply_rope, pair coordinate i with i + head_dim/2 ("rotate half"). Attention scores only depend on
    q.k, so permuting the rows of wq and wk the same way inside each head gives the same model. We keep HF's
    order internally, so HF files load and save untouched and Meta's wq/wk are permuted once, on load:
    within each head, rows (2i, 2i+1) move to (i, i + head_dim/2). (Same as transformers'
    convert_llama_weights_to_hf.py.)"""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# config.json keys that do not change the forward math (pretraining_tp only splits HF's matmuls into slices)
_HF_HARMLESS = {"_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype",
                "dtype", "transformers_version", "use_cache", "initializer_range", "pretraining_tp",
                "max_position_embeddings"}
# keys that change the math: accepted only at the value this file implements
_HF_MUST_BE = {"model_type": "llama", "hidden_act": "silu", "rope_scaling": None, "tie_word_embeddings": False,
               "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0}


def _read_json(file):
    try:
        return json.loads(Path(file).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _hf_source(path):
    cfg_file = path / "config.json"
    cfg = _read_json(cfg_file)
    for k, want in _HF_MUST_BE.items():
        if k in cfg and cfg[k] != want:
            raise ValueError(f"{cfg_file}: {k} = {cfg[k]!r} is not supported (this Llama implements {want!r})")
    known = _HF_HARMLESS | set(_HF_MUST_BE) | {"hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "head_dim"}
    if unknown := sorted(set(cfg) - known):
        raise ValueError(f"{cfg_file}: unknown keys {unknown} may change the model; refusing to guess")
    try:
        args = ModelArgs(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
                         n_heads=cfg["num_attention_heads"],
                         n_kv_heads=cfg.get("num_key_value_heads"),
                         vocab_size=cfg["vocab_size"], hidden_dim=cfg["intermediate_size"],
                         norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=cfg.get("rope_theta", 10000.0),
                         max_seq_len=cfg.get("max_position_embeddings", 4096))
    except KeyError as e:
        raise ValueError(f"{cfg_file}: missing required key {e.args[0]!r}") from None
    if cfg.get("head_dim", args.head_dim) != args.head_dim:
        raise ValueError(f"{cfg_file}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
    tensors = ((file, name, t) for file, read in _hf_files(path) for name, t in read(file)
               if not name.endswith("rotary_emb.inv_freq"))  # old HF checkpoints store this buffer; we recompute it
    return args, tensors


def _hf_files(path):
    """(file, reader) for the weight files, honouring the index; errors if a listed shard is missing."""
    read_bin = lambda f: torch.load(f, map_location="cpu", mmap=True, weights_only=True).items()
    for single, index, read in [("model.safetensors", "model.safetensors.index.json", _read_safetensors),
                                ("pytorch_model.bin", "pytorch_model.bin.index.json", read_bin)]:
        if (path / single).is_file():
            return [(path / single, read)]
        if (path / index).is_file():
            weight_map = _read_json(path / index).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (path / f).is_file():
                    raise FileNotFoundError(f"{path / index}: lists shard {f}, which is missing from {path}")
            return [(path / f, read) for f in files]
    raise FileNotFoundError(f"{path}: config.json found but no model.safetensors, model.safetensors.index.json, "
                            "pytorch_model.bin or pytorch_model.bin.index.json")


_META_KNOWN = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
               "norm_eps", "rope_theta", "max_seq_len", "max_batch_size", "use_scaled_rope"}


def _meta_source(path):
    p_file = path / "params.json"
    p = _read_json(p_file)
    if p.get("use_scaled_rope"):
        raise ValueError(f"{p_file}: use_scaled_rope (Llama-3.1 rope scaling) is not supported")
    if unknown := sorted(set(p) - _META_KNOWN):
        raise ValueError(f"{p_file}: unknown keys {unknown} may change the model; refusing to guess")
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise FileNotFoundError(f"{path}: params.json found but no consolidated.*.pth")
    if [f.name for f in files] != [f"consolidated.{i:02d}.pth" for i in range(len(files))]:
        raise FileNotFoundError(f"{path}: model-parallel shards are not consolidated.00 .. {len(files) - 1:02d}.pth")
    # mmap: opening all shards costs no memory; each full tensor is materialised once, when concatenated
    shards = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in files]
    for f, sd in zip(files[1:], shards[1:]):
        if set(sd) != set(shards[0]):
            raise ValueError(f"{f}: tensor names differ from {files[0].name}: {sorted(set(sd) ^ set(shards[0]))[:5]}")
    try:
        dim = p["dim"]
        hidden = int(2 * 4 * dim / 3)  # Meta's FFN width rule (llama/model.py FeedForward)
        if p.get("ffn_dim_multiplier") is not None:
            hidden = int(p["ffn_dim_multiplier"] * hidden)
        hidden = p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])
        vocab = p.get("vocab_size", -1)
        args = ModelArgs(dim=dim, n_layers=p["n_layers"], n_heads=p["n_heads"], n_kv_heads=p.get("n_kv_heads"),
                         vocab_size=vocab if vocab > 0 else shards[0]["tok_embeddings.weight"].shape[0],
                         hidden_dim=hidden, norm_eps=p.get("norm_eps", 1e-5),
                         rope_theta=p.get("rope_theta", 10000.0), max_seq_len=p.get("max_seq_len", 4096))
    except KeyError as e:
        raise ValueError(f"{p_file}: missing required key {e.args[0]!r}") from None

    def tensors():
        where = files[0] if len(files) == 1 else f"{path}/consolidated.*.pth"
        for name in shards[0]:
            if name == "rope.freqs":  # Meta stores the rotary frequencies; we recompute them
                continue
            parts = [sd[name] for sd in shards]
            if parts[0].dim() == 1:  # norms are replicated on every shard
                t = parts[0]
            else:                    # row-parallel (wo, w2) and tok_embeddings split on dim 1, the rest on dim 0
                axis = 1 if re.search(r"(wo|w2|tok_embeddings)\.weight$", name) else 0
                if len({part.shape[1 - axis] for part in parts}) > 1:
                    raise ValueError(f"{where}: shards disagree on the shape of {name!r}: "
                                     f"{[list(part.shape) for part in parts]}")
                t = torch.cat(parts, dim=axis)
            if name.endswith("attention.wq.weight"):
                t = _permute_qk(t, args.n_heads)
            elif name.endswith("attention.wk.weight"):
                t = _permute_qk(t, args.n_kv_heads)
            yield where, name, t
    return args, tensors()


@torch.no_grad()
def greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt with the KV cache (prefill once, then one token per step)."""
    dev = model.output.weight.device
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
    ap = argparse.ArgumentParser(description="Load a Llama checkpoint (HF or Meta layout); print its size, "
                                 "optionally a greedy continuation, optionally save it in HF layout.")
    ap.add_argument("ckpt", help="checkpoint folder (config.json + safetensors, or params.json + consolidated.*.pth)")
    ap.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3: print the greedy continuation")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: as stored")
    ap.add_argument("--save", metavar="OUT", help="write the model to OUT in Hugging Face layout")
    a = ap.parse_args()
    model = Transformer.from_pretrained(a.ckpt, a.device, a.dtype and getattr(torch, a.dtype))
    n = sum(p.numel() for p in model.parameters())
    print(f"{a.ckpt}: {n:,} parameters ({n / 1e9:.2f}B), {model.args}")
    if a.prompt_ids:
        print(greedy(model, [int(x) for x in a.prompt_ids.split(",")], a.max_new_tokens))
    if a.save:
        model.save_pretrained(a.save)
        print(f"saved to {a.save}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad input: one line naming the file, no traceback
        sys.exit(f"error: {e}")
