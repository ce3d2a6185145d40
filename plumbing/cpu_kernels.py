"""Faster CPU kernels for the products a decode step spends its time in: nothing here changes what
is computed (tests/test_model.py checks each against a plain reference), only which kernel computes
it on the CPU. On a GPU model.py runs torch's own (nn.Linear's product, SDPA's kernels). Measured
on the 2-core AMD EPYC of BENCHMARKS.md (its decode section says what each gave): there MKL, torch's
default for float32 products, ran these shapes at a fraction of the core's speed. Linear calls a
private torch op (torch.ops.mkldnn._linear_pointwise): where a torch lacks it, nn.Linear's.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN_LINEAR = (torch.backends.mkldnn.is_available()
                 and hasattr(torch.ops.mkldnn, "_linear_pointwise"))  # (see Linear)


class Linear(nn.Linear):
    """nn.Linear; on the CPU without autograd (decoding, float32), a large product goes through
    oneDNN's AVX-512 matrix kernels instead of MKL's sgemm, with the weight as it is: on the AMD
    EPYC of BENCHMARKS.md they ran the 32,008-row output layer 1.8x faster at 1 to 32 rows and a
    512 x 1344 FFN weight 1.7x faster at 16 rows, but cost ~12 us more per call, so small products
    (under 2^22 multiply-adds) stay with MKL. (oneDNN's own blocked copy of the weight was ~1.1x
    faster still, at the cost of a second copy of each large weight: not kept.)"""

    def forward(self, x):
        if (x.device.type == "cpu" and x.dtype == torch.float32 and ONEDNN_LINEAR
                and self.bias is None and not torch.is_grad_enabled()
                and x.numel() * self.out_features >= 1 << 22):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return super().forward(x)


def cpu_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(head_dim) + mask) v, as SDPA's math, for a decode step's G queries per
    KV head (q [B, kv_heads, G, head_dim]; k, v [B, kv_heads, L, head_dim], views of the cache).
    The scores [B, kv_heads, G, L] are small; softmax in float32. Then each output is a weighted
    sum of L rows of V: exactly what embedding_bag computes (mode "sum" with per-row weights), and
    its kernel read them ~1.7x as fast as the batched product did (torch.matmul, 2 queries per KV
    head: ~570 against ~340 us a layer in a batch-16 step) on the AMD EPYC of BENCHMARKS.md. The
    CPU's flash kernel, made for long query blocks, read the cache ~10% slower than two products."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores += mask
    probs = torch.softmax(scores, -1, dtype=torch.float32)
    B, kv_heads, G, L = probs.shape
    D = v.shape[-1]
    if v.dtype != torch.float32 or v.stride(-1) != 1 or v.stride(-2) != D or any(
            s % D for s in v.stride()[:2]):
        return torch.matmul(probs.to(v.dtype), v)
    # V's storage as a table of head_dim-wide rows: row (b, h, l) of v is row b*s0 + h*s1 + l
    s0, s1 = v.stride(0) // D, v.stride(1) // D
    table = v.as_strided(((B - 1) * s0 + (kv_heads - 1) * s1 + L, D), (D, 1), v.storage_offset())
    rows = rows_of(B, kv_heads, G, L, s0, s1)                          # [B * kv_heads * G, L]
    out = F.embedding_bag(rows, table, mode="sum", per_sample_weights=probs.view(-1, L))
    return out.view(B, kv_heads, G, D)


@functools.lru_cache(maxsize=2)  # the same for every layer of a step, and for ~32 steps
def rows_of(B: int, kv_heads: int, G: int, L: int, s0: int, s1: int):
    """Which table rows each of the B * kv_heads * G queries sums: b*s0 + h*s1 + l, l < L."""
    first = torch.arange(B)[:, None] * s0 + torch.arange(kv_heads) * s1    # (int64: the fast path)
    rows = first[:, :, None, None] + torch.arange(L)
    return rows.expand(B, kv_heads, G, L).reshape(-1, L)
