"""model.py (and plumbing/checkpoint.py beneath it) against the reference outputs in tests/fixtures/models
(HF transformers' LlamaForCausalLM, fp32)."""
import json, os, shutil, struct, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import READ_BUCKET, KVCache, Linear, ModelArgs, Transformer, attention_mask, generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIX = Path(__file__).parent / "fixtures" / "models"
MODELS = ["llama2-mha", "codellama-gqa"]  # HF single-file fp32 / HF 2-shard bf16 GQA theta 1e6
CASES = [(m, layout) for m in MODELS for layout in ["hf", "meta"]]


def load(path, **kw):
    return Transformer.from_pretrained(path, dtype=kw.pop("dtype", torch.float32), **kw)


def expected(name):
    return {k: torch.from_numpy(v) for k, v in np.load(FIX / name / "expected.npz").items()}


@pytest.fixture(scope="module")
def models():
    return {(m, lay): load(FIX / m / lay) for m, lay in CASES}


@pytest.mark.parametrize("name,layout", CASES)
def test_logits_match_reference(models, name, layout):
    e = expected(name)
    with torch.no_grad():
        logits = models[name, layout](e["input_ids"])
        # norm + output on the last position only
        last = models[name, layout](e["input_ids"], last_only=True)
    assert logits.dtype == torch.float32 and logits.shape == e["logits"].shape
    assert (logits - e["logits"]).abs().max() < 1e-4
    assert last.shape == (e["logits"].shape[0], 1, e["logits"].shape[2])
    assert (last - e["logits"][:, -1:]).abs().max() < 1e-4


@pytest.mark.parametrize("name,layout", CASES)
def test_greedy_with_cache_matches_reference(models, name, layout):
    e = expected(name)
    assert generate(models[name, layout], e["prompt_ids"][0].tolist(), 24) == e["greedy_ids"].tolist()


def test_stored_dtype_kept_by_default():
    gqa = Transformer.from_pretrained(FIX / "codellama-gqa" / "hf")
    mha = Transformer.from_pretrained(FIX / "llama2-mha" / "hf")
    assert gqa.output.weight.dtype == torch.bfloat16 and mha.output.weight.dtype == torch.float32


@pytest.mark.parametrize("name", MODELS)
def test_cached_decoding_equals_full_recompute(models, name):
    model, e = models[name, "hf"], expected(name)
    seq = e["input_ids"][:1]                       # [1, 24]
    with torch.no_grad():
        full = model(seq)
        cache = model.new_cache(1, 32)
        steps = [model(seq[:, :10], cache=cache)]  # prefill 10, then one token at a time
        for p in range(10, 24):
            steps.append(model(seq[:, p:p + 1], positions=torch.tensor([[p]]), cache=cache))
        # what a prefill needs
        last = model(seq[:, :10], cache=model.new_cache(1, 32), last_only=True)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert last.shape == (1, 1, full.shape[-1])
    assert torch.allclose(last[0, 0], steps[0][0, -1], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_batched_ragged_decoding_equals_each_alone(models, name):
    """Right-padded prefill of 3 prompts into cache rows 2, 0, 3 (rows hold stale junk), then
    per-row decode."""
    model, e = models[name, "hf"], expected(name)
    ids = e["input_ids"].reshape(-1)
    prompts, n_new, pad = [ids[:5], ids[5:14], ids[14:21]], 6, 0
    with torch.no_grad():
        solo = []
        for p in prompts:
            seq = p.tolist()
            for _ in range(n_new):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            solo.append(seq)
        cache = model.new_cache(4, 40)
        rows = torch.tensor([2, 0, 3])
        model(torch.randint(0, 50, (4, 30)), cache=cache)  # junk a previous batch left behind
        T = max(len(p) for p in prompts)
        batch = torch.tensor([p.tolist() + [pad] * (T - len(p)) for p in prompts])
        logits = model(batch, cache=cache, rows=rows)
        lens = torch.tensor([len(p) for p in prompts])
        seqs = [p.tolist() for p in prompts]
        nxt = logits[torch.arange(3), lens - 1].argmax(-1)
        for step in range(n_new):
            for s, t in zip(seqs, nxt.tolist()):
                s.append(t)
            if step == n_new - 1:
                break
            logits = model(nxt[:, None], positions=(lens + step)[:, None], cache=cache, rows=rows)
            nxt = logits[:, -1].argmax(-1)
    assert seqs == solo


@pytest.mark.parametrize("name", MODELS)
def test_packed_doc_ids_equals_each_document_alone(models, name):
    model, e = models[name, "hf"], expected(name)
    docs = [e["input_ids"][0, :7], e["input_ids"][1, :11], e["input_ids"][0, 3:9]]
    tokens = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        packed = model(tokens, positions=positions, doc_ids=doc_ids)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
    assert torch.allclose(packed, alone, atol=1e-5)


def split_meta(src, dst, n):
    """Write consolidated.00..n-1.pth as Meta's model parallelism does (independent of model.py)."""
    dst.mkdir()
    shutil.copy(src / "params.json", dst / "params.json")
    sd = torch.load(src / "consolidated.00.pth", weights_only=True)
    parts = [{} for _ in range(n)]
    for k, t in sd.items():
        if t.dim() == 1:
            pieces = [t.clone()] * n
        else:
            dim = 1 if any(s in k for s in ("wo.", "w2.", "tok_embeddings.")) else 0
            pieces = [c.clone() for c in t.chunk(n, dim=dim)]
        for p, c in zip(parts, pieces):
            p[k] = c
    for i, p in enumerate(parts):
        torch.save(p, dst / f"consolidated.{i:02d}.pth")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [2, 4])
def test_meta_model_parallel_shards(tmp_path, name, n):
    split_meta(FIX / name / "meta", tmp_path / "mp", n)
    e = expected(name)
    with torch.no_grad():
        logits = load(tmp_path / "mp")(e["input_ids"])
    assert (logits - e["logits"]).abs().max() < 1e-4


def read_safetensors_numpy(file):
    """Independent reader (numpy only) used to check what save_pretrained wrote."""
    raw = Path(file).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header, out = json.loads(raw[8:8 + n]), {}
    for k, v in header.items():
        if k != "__metadata__":
            a, b = v["data_offsets"]
            assert v["dtype"] in ("F32", "BF16")
            dtype = np.float32 if v["dtype"] == "F32" else np.uint16
            data = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dtype)
            if v["dtype"] == "BF16":  # bf16 = top half of a float32
                data = (data.astype(np.uint32) << 16).view(np.float32)
            out[k] = data.reshape(v["shape"])
    return out


@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained_round_trip(models, tmp_path, name):
    e = expected(name)
    model = models[name, "meta"]  # Meta in, HF out: checks the q/k permutation direction too
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_bytes=60_000)
    shards = sorted((tmp_path / "many").glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "many" / "model.safetensors").exists()
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    # the weights written equal the reference HF files (fp32 upcast of the fixture), name for name
    ref = {}
    for f in sorted((FIX / name / "hf").glob("*.safetensors")):
        ref.update(read_safetensors_numpy(f))
    mine = read_safetensors_numpy(tmp_path / "one" / "model.safetensors")
    assert mine.keys() == ref.keys()
    assert all(np.array_equal(mine[k], ref[k]) for k in ref)
    with torch.no_grad():
        before = model(e["input_ids"])
        for d in ["one", "many"]:
            assert torch.equal(load(tmp_path / d)(e["input_ids"]), before)


def test_save_bf16_and_resave_removes_stale_shards(tmp_path):
    model = Transformer.from_pretrained(FIX / "codellama-gqa" / "hf")  # bf16 as stored
    model.save_pretrained(tmp_path, max_shard_bytes=100_000)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = Transformer.from_pretrained(tmp_path)
    assert again.output.weight.dtype == torch.bfloat16
    pairs = zip(model.state_dict().values(), again.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)


def test_grow_vocab():
    model = load(FIX / "llama2-mha" / "hf")
    e = expected("llama2-mha")
    old_emb = model.tok_embeddings.weight.detach().numpy().copy()
    old_out = model.output.weight.detach().numpy().copy()
    model.grow_vocab(328)
    assert model.args.vocab_size == 328 and model.tok_embeddings.weight.shape == (328, 64)
    new_emb = model.tok_embeddings.weight[320:].detach().numpy()
    assert np.allclose(new_emb, old_emb.mean(0), atol=1e-6)
    assert np.allclose(model.output.weight[320:].detach().numpy(), old_out.mean(0), atol=1e-6)
    with torch.no_grad():
        logits = model(e["input_ids"])
    assert logits.shape[-1] == 328
    assert (logits[..., :320] - e["logits"]).abs().max() < 1e-4
    # a mean output row gives the mean of the old logits
    assert torch.allclose(logits[..., 320], e["logits"].mean(-1), atol=1e-4)
    # the 8 new ids embed to the same (mean) vector: as inputs they are interchangeable
    with torch.no_grad():
        a, b = model(torch.tensor([[327, 1, 325]])), model(torch.tensor([[320, 1, 321]]))
    assert a.shape == (1, 3, 328) and torch.equal(a, b)
    with pytest.raises(ValueError, match="smaller"):
        model.grow_vocab(327)


def copy_hf(name, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(FIX / name / "hf", dst)
    return dst


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_error_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transformer.from_pretrained(tmp_path)


def test_error_shard_missing_from_index(tmp_path):
    d = copy_hf("codellama-gqa", tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        Transformer.from_pretrained(d)


def test_error_wrong_shape(tmp_path):
    d = copy_hf("llama2-mha", tmp_path)
    edit_config(d, intermediate_size=176)
    with pytest.raises(ValueError, match=r"model\.safetensors.*mlp\..*shape"):
        Transformer.from_pretrained(d)


@pytest.mark.parametrize("key,value", [("rope_scaling", {"type": "linear", "factor": 2.0}),
                                       ("tie_word_embeddings", True), ("hidden_act", "gelu"),
                                       ("attention_bias", True), ("sliding_window", 4096),
                                       ("model_type", "mistral")])
def test_error_config_changes_math(tmp_path, key, value):
    d = copy_hf("llama2-mha", tmp_path)
    edit_config(d, **{key: value})
    with pytest.raises(ValueError, match=rf"config\.json.*{key}"):
        Transformer.from_pretrained(d)


def test_error_missing_and_unexpected_tensors(tmp_path):
    model = load(FIX / "llama2-mha" / "hf")
    model.save_pretrained(tmp_path / "a")
    edit_config(tmp_path / "a", num_hidden_layers=3)   # file lacks layer 2
    with pytest.raises(ValueError, match=r"lacks tensors.*model\.layers\.2\."):
        Transformer.from_pretrained(tmp_path / "a")
    edit_config(tmp_path / "a", num_hidden_layers=1)   # file has an extra layer 1
    unexpected = r"model\.safetensors: unexpected tensor 'model\.layers\.1\."
    with pytest.raises(ValueError, match=unexpected):
        Transformer.from_pretrained(tmp_path / "a")


def test_error_meta_params(tmp_path):
    d = tmp_path / "meta"
    shutil.copytree(FIX / "llama2-mha" / "meta", d)
    p = json.loads((d / "params.json").read_text())
    (d / "params.json").write_text(json.dumps({**p, "multiple_of": 64}))  # wrong FFN width
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth.*w1.*shape"):
        Transformer.from_pretrained(d)
    (d / "consolidated.00.pth").unlink()
    with pytest.raises(FileNotFoundError, match="consolidated"):
        Transformer.from_pretrained(d)


def test_fresh_model_forward_and_cache_shapes():
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                                  hidden_dim=64))
    mha = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50))
    assert mha.args.n_kv_heads == 4  # default MHA
    cache = model.new_cache(3, 16)   # [rows, KV heads, slots, head_dim]
    assert cache.k[0].shape == (3, 2, 16, 8) and len(cache.v) == 2 and cache.max_len == 16
    tokens = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        logits = model(tokens, cache=cache, rows=torch.tensor([2, 0]))
    assert logits.shape == (2, 5, 50) and logits.dtype == torch.float32
    # K/V went to rows 2 and 0, positions 0..4; row 1 there is zeroed (KVCache.clean), the slots
    # past the call's reach are left as allocated
    for i in (2, 0):
        assert cache.k[0][i, :, :5].abs().sum() > 0 and cache.v[1][i, :, :5].abs().sum() > 0
    assert cache.k[0][1, :, :5].abs().sum() == 0 and cache.cleaned == 5
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 17, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cannot be combined"):
        model(tokens, doc_ids=torch.zeros(2, 5, dtype=torch.long), cache=cache)


def test_cache_writes_each_row_at_its_positions_and_attends_to_its_own_slots():
    """Two sequences in rows 2 and 0 of a 3-row cache, at positions 0-1 and 3-4 (row 0 holds 0 in
    slots 0-2: slots as far as a call reaches are zeroed first): written there, nothing else
    touched. With zero queries attention is the plain mean of the values a query sees: its own
    row, slots 0 .. its position."""
    cache = KVCache(n_layers=2, shape=(3, 1, 6, 1), device="cpu", dtype=torch.float32)
    for t in cache.k + cache.v:
        t.fill_(9.0)                                        # what the allocation held
    cache.place(torch.tensor([2, 0]), torch.tensor([[0, 1], [3, 4]]))
    k = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(2, 2, 1, 1)
    out = cache.attend(1, torch.zeros(2, 2, 1, 1), k, -k)
    want = torch.zeros(3, 6)
    want[:, 5] = 9.0                                        # beyond the call's reach
    want[2, 0:2] = torch.tensor([1.0, 2.0])
    want[0, 3:5] = torch.tensor([3.0, 4.0])
    assert torch.equal(cache.k[1].view(3, 6), want)
    assert torch.equal(cache.v[1].view(3, 6)[:, :5], -want[:, :5])
    assert torch.equal(cache.k[0].view(3, 6), (want == 9.0) * 9.0)  # another layer: only zeroed
    by_hand = torch.tensor([[-1.0, -(1 + 2) / 2], [-3 / 4, -(3 + 4) / 5]])
    torch.testing.assert_close(out.view(2, 2), by_hand)


def test_padding_is_neither_written_nor_read():
    """Position -1 pads a shorter sequence: its slots stay untouched, last_only gives the logits
    after its last real token, equal to the sequence alone."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                                  hidden_dim=64))
    cache = model.new_cache(2, 8)
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    positions = torch.tensor([[0, 1, 2, 3], [0, 1, -1, -1]])
    with torch.no_grad():
        last = model(tokens, positions, cache=cache, last_only=True)
        alone = model(torch.tensor([[9, 10]]))[0, -1]
    torch.testing.assert_close(last[1, 0], alone, atol=1e-5, rtol=1e-5)
    assert cache.k[0][1, :, 2:4].abs().sum() == 0 and cache.k[0][0, :, 3].abs().sum() > 0


def test_attention_mask_by_hand():
    yes, no = True, False
    doc_ids = torch.tensor([[0, 0, 1, 1]])   # two packed documents: causal within each
    assert attention_mask(torch.arange(4)[None], doc_ids).tolist() == [[[[yes, no, no, no],
                                                                         [yes, yes, no, no],
                                                                         [no, no, yes, no],
                                                                         [no, no, yes, yes]]]]
    assert attention_mask(torch.arange(4)[None]) is None   # plain causal: SDPA's is_causal
    # a decode step over rows at positions 2 and 0: slots beyond each one's position are hidden
    cache = KVCache(n_layers=1, shape=(2, 1, 200, 1), device="cpu", dtype=torch.float32)
    cache.place(None, torch.tensor([[2], [0]]))
    [group] = cache.groups                   # consecutive rows: one batch, read in place
    mask = group["mask"][:, 0, 0]
    assert mask.shape == (2, READ_BUCKET)    # slots read: a multiple of READ_BUCKET, not the
    assert READ_BUCKET < 200                 # whole cache
    assert (mask[0, :3] == 0).all() and (mask[0, 3:] == float("-inf")).all()
    assert (mask[1, :1] == 0).all() and (mask[1, 1:] == float("-inf")).all()


def test_bf16_compute_within_bf16_rounding_of_reference():
    """Run entirely in bf16 (as on a GPU): logits stay within bf16 rounding of the float32
    reference, and the top token agrees almost everywhere. (fp32 runs of the same weights match to
    1e-4: see above.)"""
    e = expected("codellama-gqa")
    model = Transformer.from_pretrained(FIX / "codellama-gqa" / "hf", dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(torch.as_tensor(e["input_ids"]))
    assert model.output.weight.dtype == torch.bfloat16 and logits.dtype == torch.float32
    err = (logits - e["logits"]).abs().max().item()
    assert 1e-3 < err < 0.03 * e["logits"].abs().max().item()   # really bf16 (not fp32), and close
    assert (logits.argmax(-1) == e["logits"].argmax(-1)).float().mean().item() > 0.9


PEAK_MEMORY_SCRIPT = """
import resource, sys, torch
from model import Transformer
Transformer.from_pretrained(sys.argv[2])  # warm-up on a tiny model: one-time library, allocator
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = Transformer.from_pretrained(sys.argv[1])
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(grown / sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def test_loading_peak_memory_is_about_one_copy(tmp_path):
    """Shard by shard onto a model built on the meta device: loading a ~220 MB sharded checkpoint
    raises the process's peak RSS by about one copy of the weights, not two (a
    load-everything-then-copy loader: ~2x)."""
    torch.manual_seed(0)
    big = Transformer(ModelArgs(dim=512, n_layers=16, n_heads=8, vocab_size=4000, hidden_dim=1408))
    big.save_pretrained(tmp_path / "ckpt", max_shard_bytes=40 * 2**20)
    assert len(list((tmp_path / "ckpt").glob("model-*.safetensors"))) > 4
    warm_up = FIX / "llama2-mha" / "hf"
    p = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(tmp_path / "ckpt"),
                        str(warm_up)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert float(p.stdout) < 1.25, p.stdout    # measured here: 1.00


@pytest.mark.parametrize("name", MODELS)
def test_decode_step_on_ragged_rows_equals_each_row_alone(models, name):
    """Five sequences of 1 to 150 tokens prefilled together (padded) into rows 0, 1, 2, 4, 5 of a
    6-row cache holding junk; then one decode step for all five (two runs of consecutive rows,
    each read in place up to a bucketed length, masked per row): every row's logits equal a
    cache-free forward pass over its sequence alone."""
    model = models[name, "hf"]
    torch.manual_seed(0)
    lengths, rows = [5, 150, 37, 129, 1], [0, 1, 2, 4, 5]
    seqs = [torch.randint(3, 300, (n + 1,)).tolist() for n in lengths]   # + the decoded token
    width = max(lengths)
    tokens = torch.tensor([s[:n] + [0] * (width - n) for s, n in zip(seqs, lengths)])
    positions = torch.tensor([list(range(n)) + [-1] * (width - n) for n in lengths])
    with torch.no_grad():
        cache = model.new_cache(6, 200)
        for c in cache.k + cache.v:
            c.normal_()                                         # junk a previous batch left behind
        cache.cleaned = cache.max_len                           # (in every slot: none is zeroed)
        first = model(tokens, positions, cache=cache, rows=torch.tensor(rows), last_only=True)
        step = model(torch.tensor([[s[-1]] for s in seqs]), torch.tensor([[n] for n in lengths]),
                     cache=cache, rows=torch.tensor(rows))
        assert len(cache.groups) == 2                           # rows 0-2 and rows 4-5
        for b, s in enumerate(seqs):
            alone = model(torch.tensor([s]))[0]
            torch.testing.assert_close(first[b, 0], alone[-2], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step[b, 0], alone[-1], atol=1e-5, rtol=1e-5)


def test_decode_step_allocates_a_small_fraction_of_the_cache():
    """A decode step at batch 8 over ragged rows of up to 1,024 positions reads each row's cache in
    place: all it allocates (every allocation the profiler records) stays under 10% of the cache
    (a copy of the rows read, per layer, would be ~50% per layer)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                                  hidden_dim=128)).eval()
    cache = model.new_cache(8, 1024)
    cache_bytes = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    positions = torch.tensor([[1023 - 60 * b] for b in range(8)])
    tokens = torch.randint(0, 512, (8, 1))
    with torch.no_grad():
        model(tokens, positions, cache=cache)                   # warm-up
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(tokens, positions, cache=cache)
    allocated = sum(e.nbytes() for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.nbytes() > 0)
    assert 0 < allocated < 0.10 * cache_bytes, (allocated, cache_bytes)


def test_linear_when_decoding_on_the_cpu_equals_the_plain_product():
    """model.Linear (plumbing/cpu_kernels.py) without autograd (large products through oneDNN, small ones through the
    default) gives x @ W.T, as with autograd on (the default kernel), for 1 to 64 rows."""
    torch.manual_seed(0)
    layer = Linear(512, 4000, bias=False)
    for rows in (1, 3, 64):                                   # 2^21 .. 2^27 multiply-adds
        x = torch.randn(rows, 1, 512)
        expected = (x.double() @ layer.weight.double().T).float()
        with torch.no_grad():
            fast = layer(x)
        torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fast, layer(x).detach(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (8, 4)])
def test_cpu_decode_attention_equals_softmax_of_scores_times_values(n_heads, n_kv_heads):
    """cpu_kernels.cpu_attention (weighted sums of V's rows by embedding_bag) over views of a
    cache with ragged rows equals softmax(q k^T / sqrt(d) + mask) v computed in float64."""
    from plumbing.cpu_kernels import cpu_attention
    torch.manual_seed(0)
    rows, max_len, length, D = 5, 96, 40, 16
    G = n_heads // n_kv_heads
    cache_k = torch.randn(rows + 2, n_kv_heads, max_len, D)
    cache_v = torch.randn(rows + 2, n_kv_heads, max_len, D)
    k, v = cache_k[1:1 + rows, :, :length], cache_v[1:1 + rows, :, :length]  # rows 1..5, in place
    q = torch.randn(rows, n_kv_heads, G, D)
    ends = torch.tensor([40, 1, 17, 33, 25])
    mask = torch.zeros(rows, 1, 1, length).masked_fill_(
        torch.arange(length) >= ends[:, None, None, None], float("-inf"))
    scores = q.double() @ k.double().transpose(-1, -2) / D ** 0.5 + mask.double()
    expected = torch.softmax(scores, -1) @ v.double()
    torch.testing.assert_close(cpu_attention(q, k, v, mask), expected.float(), atol=1e-5,
                               rtol=1e-5)
    bf16 = cpu_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask.bfloat16())  # matmul path
    torch.testing.assert_close(bf16.float(), expected.float(), atol=5e-2, rtol=5e-2)


def test_slots_read_past_a_rows_end_are_zeroed_before_use():
    """The cache is allocated without zeroing (it may hold NaN): a ragged decode step reads the
    shorter rows past their last slot (masked), which must then hold zeros, not what the
    allocation held; each row's logits equal the row alone."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                                  hidden_dim=64)).eval()
    seqs = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13]]
    with torch.no_grad():
        cache = model.new_cache(2, 64)
        for t in cache.k + cache.v:
            t.fill_(float("nan"))
        for row, s in enumerate(seqs):      # one row at a time: each reaches only its own slots
            model(torch.tensor([s[:-1]]), cache=cache, rows=torch.tensor([row]))
        step = model(torch.tensor([[s[-1]] for s in seqs]),
                     torch.tensor([[len(s) - 1] for s in seqs]), cache=cache)
        for b, s in enumerate(seqs):
            torch.testing.assert_close(step[b, 0], model(torch.tensor([s]))[0, -1],
                                       atol=1e-5, rtol=1e-5)
