"""The Llama-2 / CodeLlama decoder, written out by hand.

MathCoder (Wang et al., ICLR 2024) fine-tunes Llama-2 and CodeLlama unchanged: the only
architectural change is 8 extra vocabulary rows for the LCE special tokens (`grow_vocab`).
Read top to bottom:
  1. the math: RMSNorm, rotary embeddings, the KV cache and the attention mask, grouped-query
     attention, SwiGLU, the Transformer
  2. checkpoints: a model built from a Hugging Face or Meta checkpoint (optionally one
     tensor-parallel rank's shard of it) and saved as one. The files themselves are
     plumbing/checkpoint.py's concern, the split over ranks plumbing/parallel.py's.
  3. greedy decoding and a tiny CLI: `python model.py CKPT --prompt-ids 1,2,3` (greedy
     continuation), `--save OUT` (convert), `torchrun --nproc_per_node=2 model.py CKPT --tp 2
     --prompt-ids 1,2,3`.
Parameter names follow Meta's llama/model.py (tok_embeddings, layers.N.attention.wq, ..., output).
"""
import argparse
import dataclasses
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from plumbing import checkpoint
from plumbing.cpu_kernels import Linear, cpu_attention  # nn.Linear, SDPA: faster CPU kernels
from plumbing.parallel import check_tensor_parallel, follow, init_ranks, tensor_parallel


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
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

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
    half"; checkpoint._permute_qk turns Meta's interleaved pairs into these)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


READ_BUCKET = 32  # a ragged decode step reads its rows' slots up to a multiple of this past the
#                   longest row: never the whole cache, 16 padding slots per row on average, and
#                   the shapes SDPA sees change once every 32 tokens (nothing here is compiled or
#                   captured per shape: eager kernels take any length)


class KVCache:
    """A static cache: keys and values of the tokens seen so far, per layer k[layer] and v[layer]
    of shape [rows, n_kv_heads (this rank's, under TP), max_len, head_dim]. Each sequence owns a
    row and its token at position p sits in slot p, so rows hold sequences of different lengths.
    A forward call is planned on the host first (`place`: which row, which slots, which masks;
    nothing waits for the device), then every layer `attend`s: it writes its new keys and values
    into their slots and reads each row in place (views of the cache, never a copy of it)."""

    def __init__(self, n_layers: int, shape, device, dtype):
        # Not zeroed up front (at batch 32 x 2,048 slots even a dim-512, 4-layer model's cache is
        # 1.1 GB to write, most of it never read), but as far as calls reach (`clean`): the slots a
        # ragged decode step reads past a row's last one are masked: they must hold finite
        # numbers (0 * NaN is NaN).
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.cleaned = 0  # slots 0 .. cleaned - 1 of every row: zeros, or keys and values written
        self.groups = []  # this call's plan: see place()

    @property
    def max_len(self):
        return self.k[0].shape[2]

    def place(self, rows, positions) -> list[int]:
        """Plan a call: sequence b goes to row rows[b] (rows None: row b), its tokens to slots
        positions[b] [B, T] (consecutive; -1: padding after its last token, never written or
        read). Host tensors or lists are best: device ones are copied to the host (a wait).
        Sequences of one token (a decode step) in consecutive rows form one group, read as one
        batch; every longer sequence (a prefill) is a group of its own. Returns each sequence's
        number of tokens."""
        pos = positions.tolist() if torch.is_tensor(positions) else positions
        B = len(pos)
        rows = list(range(B)) if rows is None else [int(r) for r in torch.as_tensor(rows).tolist()]
        counts = [sum(p >= 0 for p in ps) for ps in pos]
        device = self.k[0].device
        self.groups = []
        b = 0
        while b < B:
            start = pos[b][0]
            if start < 0 or start + counts[b] > self.max_len:
                raise ValueError(f"forward: positions {start}..{start + counts[b] - 1} do not fit "
                                 f"a cache of max_len {self.max_len}")
            end = b + 1
            if len(pos[b]) == 1:  # decoding: take the next rows while they are consecutive
                while end < B and rows[end] == rows[end - 1] + 1 and len(pos[end]) == 1:
                    end += 1
            self.groups.append(self.plan_group(b, end, rows[b], [p[0] for p in pos[b:end]],
                                               counts[b], device))
            b = end
        self.clean(max(g["length"] for g in self.groups))
        return counts

    def clean(self, length: int):
        """Zero slots cleaned .. length - 1 of every row: before this call writes or reads them,
        so nothing written is ever zeroed (at most once every READ_BUCKET slots when decoding)."""
        if length > self.cleaned:
            for t in self.k + self.v:
                t[:, :, self.cleaned:length].zero_()
            self.cleaned = length

    def plan_group(self, b0, b1, row, starts, n, device):
        """Group b0..b1-1 in rows row.. : what its attention reads and which mask it needs."""
        dtype = self.k[0].dtype
        group = {"batch": slice(b0, b1), "rows": slice(row, row + b1 - b0), "n": n,
                 "start": starts[0], "mask": None}
        if b1 - b0 > 1:  # ragged decode: rows read up to a shared bucketed length, masked
            length = min(self.max_len, -(-(max(starts) + 1) // READ_BUCKET) * READ_BUCKET)
            slots = torch.tensor(starts, device=device)
            hidden = torch.arange(length, device=device) > slots[:, None]
            group["mask"] = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(
                hidden, float("-inf"))[:, None, None]          # [n, 1, 1, length]
            group["slots"] = slots
            group["index"] = torch.arange(b1 - b0, device=device)
        else:  # one sequence: its own slots 0 .. its last; a mask only after a prefix
            length = starts[0] + n
            if n > 1 and starts[0] > 0:  # query t sees slots 0 .. start + t
                hidden = (torch.arange(length, device=device)
                          > torch.arange(starts[0], length, device=device)[:, None])
                group["mask"] = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(
                    hidden, float("-inf"))[None, None]          # [1, 1, n, length]
        group["length"] = length
        return group

    def attend(self, layer: int, q, k, v):
        """Write this call's keys and values [B, T, n_kv_heads, head_dim] into `layer`'s cache;
        return the attention of queries q [B, T, n_heads, head_dim] over each row's cached keys
        (padding positions: zeros)."""
        cache_k, cache_v = self.k[layer], self.v[layer]
        k, v = k.transpose(1, 2), v.transpose(1, 2)           # [B, n_kv_heads, T, head_dim]
        out = []
        for g in self.groups:
            keys, values = cache_k[g["rows"]], cache_v[g["rows"]]   # views: the rows in place
            start, n, length = g["start"], g["n"], g["length"]
            if "slots" in g:  # a decode step over several rows, each at its own slot
                keys[g["index"], :, g["slots"]] = k[g["batch"], :, 0]
                values[g["index"], :, g["slots"]] = v[g["batch"], :, 0]
            else:
                keys[:, :, start:start + n] = k[g["batch"], :, :n]
                values[:, :, start:start + n] = v[g["batch"], :, :n]
            keys, values = keys[:, :, :length], values[:, :, :length]
            queries = q[g["batch"], :n]
            if g["mask"] is None and n > 1:  # a fresh prefill: causal, no mask. CUDA: flash
                o = F.scaled_dot_product_attention(queries.transpose(1, 2), keys, values,
                                                   is_causal=True, enable_gqa=True).transpose(1, 2)
            else:
                o = grouped_attention(queries, keys, values, g["mask"])
            if n < q.shape[1]:
                o = F.pad(o, (0, 0, 0, 0, 0, q.shape[1] - n))
            out.append(o)
        return out[0] if len(out) == 1 else torch.cat(out)


def grouped_attention(q, k, v, mask):
    """q [B, T, n_heads, head_dim] over k, v [B, n_kv_heads, L, head_dim] (views of the cache),
    mask None or additive [B, 1, T, L] (T = 1: a decode step). The G = n_heads / n_kv_heads query
    heads that share a KV head are read as G * T queries of that head: K and V are read once per
    KV head (no repeat), in a plain multi-head SDPA call. CUDA: with a mask the memory-efficient
    kernel (flash takes none), without one (one row, one query each) flash. CPU, decode step: the
    same math by other kernels (cpu_attention)."""
    B, T, H, D = q.shape
    kv_heads = k.shape[1]
    G = H // kv_heads
    q = q.view(B, T, kv_heads, G, D).permute(0, 2, 3, 1, 4).reshape(B, kv_heads, G * T, D)
    if mask is not None and T > 1:  # each of the G heads' queries: the same rows of the mask
        mask = mask[:, :, None].expand(B, 1, G, T, mask.shape[-1]).reshape(B, 1, G * T, -1)
    if q.device.type == "cpu" and T == 1:
        out = cpu_attention(q, k, v, mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.view(B, kv_heads, G, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, H, D)


def attention_mask(positions, doc_ids=None):
    """Which keys each query may see without a cache, [B, 1, T, T] (True: sees it), or None: plain
    causal (lets SDPA pick its fastest kernel). Packed documents (doc_ids [B, T], training):
    causal and within the same document."""
    if doc_ids is not None:
        T = doc_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
        return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]
    return None


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id            # its keys and values are the cache's layer_id-th
        self.n_heads = args.n_heads         # (tensor_parallel divides the heads over the ranks)
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache=None):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if cache is not None:  # this call's K/V into the cache; attend over each row's cache
            return self.wo(cache.attend(self.layer_id, q, k, v).reshape(B, T, -1))
        # training: [B, heads, T, head_dim]; enable_gqa: n_heads / n_kv_heads query heads share
        # each K/V head. CUDA: flash when plain causal, else (packed documents) memory-efficient
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):  # SwiGLU: w2(silu(w1 x) * w3 x)
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = Linear(dim, hidden_dim, bias=False)
        self.w2 = Linear(hidden_dim, dim, bias=False)
        self.w3 = Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):  # pre-norm residual block
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)
        for p in self.parameters():  # from-scratch init (GPT-2 style); a no-op on the meta device
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        """An empty cache for batch_size sequences of up to max_len tokens (default: on the
        model's device, in its dtype)."""
        weight = self.output.weight
        n_kv_heads = self.layers[0].attention.n_kv_heads   # this rank's heads under tensor_parallel
        shape = (batch_size, n_kv_heads, max_len, self.args.head_dim)
        return KVCache(self.args.n_layers, shape, device or weight.device, dtype or weight.dtype)

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None, last_only=False):
        """tokens [B, T] -> float32 logits [B, T, vocab]. positions [B, T] (default 0..T-1) place
        each token (rotary angles; cache slots); doc_ids [B, T] restrict attention to the same
        document (packed training). cache: K/V of earlier tokens (KVCache.place: rows [B], which
        cache row each sequence uses, default the first B; positions best on the host, -1 for
        padding after a sequence's last token). last_only: logits after each sequence's last
        token only, [B, 1, vocab]: a prefill then skips the vocabulary projection of the others."""
        B, T = tokens.shape
        if positions is None:
            on = "cpu" if cache is not None else tokens.device  # (a cache plans on the host)
            positions = torch.arange(T, device=on).expand(B, T)
        counts = None
        if cache is not None:
            if doc_ids is not None:
                raise ValueError("forward: doc_ids (packed training) and cache (decoding) cannot "
                                 "be combined")
            counts = cache.place(rows, positions)
        positions = positions.to(tokens.device)
        mask = attention_mask(positions, doc_ids)
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)
        if last_only and (counts is None or min(counts) == T):
            h = h[:, -1:]
        elif last_only:  # padded sequences: each one's last token
            last = torch.tensor([n - 1 for n in counts], device=h.device)
            h = h[torch.arange(B, device=h.device), last][:, None]
        return self.output(self.norm(h)).float()

    @torch.no_grad()
    def grow_vocab(self, new_vocab_size: int):
        """Add rows for new tokens (MathCoder's 8 LCE tokens), each the mean of the old rows."""
        old = self.args.vocab_size
        if new_vocab_size < old:
            raise ValueError(f"grow_vocab: new size {new_vocab_size} is smaller than the current "
                             f"{old}")
        for module, size_attr in ((self.tok_embeddings, "num_embeddings"),
                                  (self.output, "out_features")):
            w = module.weight
            grown = grow_rows(w, new_vocab_size)
            module.weight = nn.Parameter(grown, requires_grad=w.requires_grad)
            setattr(module, size_attr, new_vocab_size)
        self.args.vocab_size = new_vocab_size

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=None, tp_group=None) -> "Transformer":
        """load_pretrained (below): HF or Meta weights; tp_group: this rank's shard (TP)."""
        return load_pretrained(path, device, dtype, tp_group)

    def save_pretrained(self, path, max_shard_bytes: int = 5 * 10**9):
        """save_pretrained (below): the Hugging Face layout."""
        save_pretrained(self, path, max_shard_bytes)


def grow_rows(w, n_rows: int):
    """w with rows appended up to n_rows, each the mean of the old rows (computed in float32)."""
    mean = w.float().mean(0, keepdim=True).to(w.dtype)
    return torch.cat([w, mean.expand(n_rows - w.shape[0], -1)])


# -------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path, rank: int = 0, world: int = 1):
    """A checkpoint (HF or Meta layout) as (ModelArgs, iterator of (key, tensor)): our parameter
    names, HF's rotary order, stored dtype, CPU, one tensor at a time, each checked against the
    shape this model gives it before it is read. world > 1: only rank's slice of each split weight
    is read (checkpoint.Checkpoint.tensors)."""
    ckpt = checkpoint.open_checkpoint(path, rank, world)
    args = ModelArgs(**ckpt.fields)
    check_tensor_parallel(args, world)
    with torch.device("meta"):
        shapes = {key: list(t.shape) for key, t in Transformer(args).state_dict().items()}
    return args, ckpt.tensors(shapes)


def load_pretrained(path, device="cpu", dtype=None, tp_group=None) -> Transformer:
    """Load HF (config.json + *.safetensors) or Meta (params.json + consolidated.*.pth) weights.
    dtype None keeps the stored dtype. Peak memory stays near one copy: the model is built on the
    meta device (no storage), every tensor is read one at a time (safetensors) or memory-mapped
    (.pth / .bin) straight into its final dtype/device, and load_state_dict(assign=True) adopts
    those tensors as the parameters instead of copying them. tp_group (a process group, under
    torchrun): this rank's tensor-parallel shard only (parallel.tensor_parallel), read without the
    other ranks' parts."""
    rank = 0 if tp_group is None else dist.get_rank(tp_group)
    world = 1 if tp_group is None else dist.get_world_size(tp_group)
    args, tensors = read_checkpoint(path, rank, world)
    with torch.device("meta"):
        model = Transformer(args)
    if tp_group is not None:
        tensor_parallel(model, tp_group)
    state = {}
    for key, t in tensors:
        dtype = dtype or t.dtype  # None: every tensor takes the stored dtype of the first
        state[key] = t.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_pretrained(model: Transformer, path, max_shard_bytes: int = 5 * 10**9):
    """Write the Hugging Face layout (config.json + model.safetensors, or
    model-0000N-of-0000M.safetensors + model.safetensors.index.json above max_shard_bytes), each
    file atomically, stale weight files removed (checkpoint.write_hf)."""
    checkpoint.write_hf(path, dataclasses.asdict(model.args), model.state_dict(), max_shard_bytes)


def default_dtype(name: str | None, device) -> torch.dtype:
    """--dtype as a torch dtype; None: bfloat16 on CUDA, float32 elsewhere."""
    if name:
        return getattr(torch, name)
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


# ------------------------------------------------------------------------ one continuation, CLI
@torch.no_grad()
def generate(model, prompt_ids: list[int], max_new_tokens: int, stops=(), pick=None) -> list[int]:
    """Continue one prompt with the KV cache (prefill once, then a token a step) until a token in
    `stops` or max_new_tokens. pick(logits [1, vocab]) -> the next token ([1]): greedy if None.
    infer.solve_one decodes each block through it; infer.Engine is the batched form."""
    device = next(model.parameters()).device
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids], device=device), cache=cache, last_only=True)
    out = []
    while True:
        out.append(int(pick(logits[:, -1]) if pick else logits[0, -1].argmax()))
        if out[-1] in stops or len(out) == max_new_tokens:
            return out
        position = torch.tensor([[len(prompt_ids) + len(out) - 1]])  # on the host: the cache plans
        logits = model(torch.tensor([out[-1:]], device=device), position, cache=cache)


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
    args = ap.parse_args()
    ranks = init_ranks(args.tp)
    if ranks.n_replicas > 1 or (args.save and args.tp > 1):
        raise ValueError("model.py: --nproc_per_node must equal --tp, and --save needs --tp 1")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_pretrained(args.ckpt, args.device or ranks.device, dtype, ranks.tp_group)
    if not ranks.leader:  # the other shards of a tensor-parallel model: make the leader's calls
        return follow(model, ranks.tp_group)
    n_params = sum(p.numel() for p in model.parameters())
    shard = f" on each of {args.tp} ranks (tensor parallel)" if args.tp > 1 else ""
    print(f"{args.ckpt}: {n_params:,} parameters ({n_params / 1e9:.2f}B){shard}, {model.args}")
    if args.prompt_ids:
        prompt_ids = [int(x) for x in args.prompt_ids.split(",")]
        with ranks.lockstep(model) as leader:  # under TP: each call announced to the followers
            print(generate(leader, prompt_ids, args.max_new_tokens))
    if args.save:
        model.save_pretrained(args.save)
        print(f"saved to {args.save}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad input: one line naming the file, no traceback
        sys.exit(f"error: {e}")
