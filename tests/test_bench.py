"""plumbing/bench.py: the arithmetic its speed figures rest on, and each benchmark's own code run at
a tiny shape (each checks that its fast path and its baseline compute the same thing), so that a
session lent a GPU spends its minutes measuring, not debugging."""
import os
import subprocess
import sys

import torch

import model as M
from plumbing import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bytes_read_bound_counts_each_weight_once_and_each_rows_cache_to_its_position():
    args = M.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                       vocab_size=100)
    counted = bench.CountBytes(M.Transformer(args).eval())
    # float32 weights a forward call reads, by hand: per layer wq, wo (64 x 64), wk, wv (64 x 32:
    # 2 KV heads of 16), w1, w3 (128 x 64), w2 (64 x 128) and two norms; the final norm; the output
    # layer (100 x 64). Not the embedding table (a call reads only its tokens' rows).
    layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 128 * 64 + 2 * 64
    weights = 4 * (2 * layer + 64 + 100 * 64)
    kv_per_token = 4 * 2 * 2 * 32  # float32, K and V, 2 layers, 2 KV heads x 16
    cache = counted.new_cache(2, 16)
    with torch.no_grad():
        counted(torch.zeros(2, 5, dtype=torch.long),        # ragged prefill: 5 and 3 tokens
                torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, -1, -1]]), cache=cache)
        counted(torch.zeros(2, 1, dtype=torch.long), torch.tensor([[5], [3]]), cache=cache)
    assert counted.bytes == 2 * weights + (5 + 3 + 6 + 4) * kv_per_token


def run_bench(*argv):
    p = subprocess.run([sys.executable, "-m", "plumbing.bench", *argv, "--threads", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p.stdout


def test_decode_and_infer_benchmarks_run_and_check_themselves_at_a_tiny_shape():
    out = run_bench("decode", "--dim", "64", "--n-layers", "2", "--n-heads", "4",
                    "--n-kv-heads", "2", "--hidden-dim", "64", "--new-tokens", "16",
                    "--batches", "1,3")
    assert "`solve`, batch 3, contexts to" in out and "of the bound" in out
    # infer exits non-zero when batched and one-at-a-time solutions differ or the code did not run
    out = run_bench("infer", "--n", "3", "--batch-size", "2", "--dim", "64", "--n-layers", "1")
    assert "`solve`, 3 problems, batch 2 (problems/s)" in out


def test_gpu_benchmark_code_path_runs_on_the_cpu():
    out = run_bench("gpu", "--tiny", "1")
    assert "of the bound" in out and "MFU" in out
    assert "SDPA backends taken" in out and "scaled_dot_product" in out
    assert "not a GPU figure" in out
