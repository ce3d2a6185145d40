"""Faster CPU kernels for the two products a decode step spends its time in: nothing here changes
what is computed (tests/test_model.py checks both against plain references), only which kernel
computes it on the CPU. On a GPU model.py runs torch's own (nn.Linear's product, SDPA's kernels).
Measured on the 2-core AMD EPYC of BENCHMARKS.md (its decode section says what each gave). Linear
calls a private torch op (torch.ops.mkldnn._linear_pointwise): where a torch lacks it, nn.Linear's.
"""
import torch
import torch.nn as nn


ONEDNN_LINEAR = (torch.backends.mkldnn.is_available()
                 and hasattr(torch.ops.mkldnn, "_linear_pointwise"))  # (see Linear)


class Linear(nn.Linear):
    """nn.Linear; on the CPU without autograd (decoding, float32), a large product goes through
    oneDNN's AVX-512 matrix kernels instead of MKL's sgemm (torch's default there), with the weight
    as it is: on the AMD EPYC of BENCHMARKS.md they ran the 32,008-row output layer 1.8x faster at
    1 to 32 rows and a 512 x 1344 FFN weight 1.7x faster at 16 rows, but cost ~12 us more per call,
    so small products (under 2^22 multiply-adds) stay with MKL."""

    def forward(self, x):
        if (x.device.type == "cpu" and x.dtype == torch.float32 and ONEDNN_LINEAR
                and self.bias is None and not torch.is_grad_enabled()
                and x.numel() * self.out_features >= 1 << 22):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return super().forward(x)


def cpu_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(head_dim) + mask) v, as SDPA's math, for a decode step's G queries per
    KV head (q [B, kv_heads, G, head_dim]). The CPU's flash kernel is made for long query blocks:
    with G = 2 it read a ragged decode step's cache ~10% slower than these two products (the
    2-core AMD EPYC of BENCHMARKS.md). The scores [B, kv_heads, G, L] are small; softmax in
    float32."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores += mask
    return torch.matmul(torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype), v)
