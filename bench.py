"""MathCoder benchmarks: ONE script; every figure is a ratio against a baseline measured in the same run.

Speed claims live here, not in timed tests. Each subcommand prints a small table and, with --write, replaces
its own section of BENCHMARKS.md (machine, exact command, date, load average, figures).

    .venv/bin/python bench.py decode    # KV-cached greedy decode vs the naive recompute loop, vs the roofline
    .venv/bin/python bench.py sandbox   # sandbox round trip, reset; restart vs a cold start
    .venv/bin/python bench.py grade     # answer grading on MATH vs plain string compare and SymPy-only
    .venv/bin/python bench.py infer     # batched solve() (code runs while others decode) vs one at a time
    .venv/bin/python bench.py tp        # peak host memory per rank: loading with --tp 2 vs TP=1
    .venv/bin/python bench.py all --write                # the CPU benchmarks, BENCHMARKS.md updated
    .venv/bin/python bench.py gpu --write                # CUDA only: 7B-shape bf16 decode vs bandwidth
                                                         # roofline, and training-step MFU
Every benchmark checks that the fast path and its baseline compute the same thing before timing counts.
"""
import argparse, datetime, json, os, platform, re, shlex, statistics, subprocess, sys, tempfile
import time, warnings
from pathlib import Path

import torch
import torch.nn as nn

import model as M

ROOT = os.path.dirname(os.path.abspath(__file__))
MARK = "<!-- bench:{} -->", "<!-- /bench:{} -->"


# ------------------------------------------------------------------------------------------- helpers
def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn, device=None):
    """(result, seconds) of one call; waits for the GPU when timing CUDA work."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: 0)
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def median_s(fn, n):
    return statistics.median(timed(fn)[1] for _ in range(n))


def fmt_t(s):
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def machine(device="cpu"):
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    cpu = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    cpu = cpu.group(1) if cpu else platform.processor() or "unknown CPU"
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else ""
    n = torch.get_num_threads()
    return (f"{len(os.sched_getaffinity(0))} CPUs (nproc), {cpu}{gpu}; torch {torch.__version__} ({n} CPU "
            f"thread{'s' * (n > 1)}), Python {platform.python_version()}")


def table(rows):
    """rows: (measured, value, baseline, baseline value, ratio) -> Markdown table lines."""
    head = ["measured", "value", "baseline (same run)", "baseline value", "ratio"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def report(name, title, rows, notes, write, load0, device="cpu"):
    """Print the table; with write=True replace this benchmark's section of BENCHMARKS.md (atomically).
    load0: os.getloadavg() from before the benchmark ran."""
    load1 = os.getloadavg()
    ncpu = len(os.sched_getaffinity(0))
    busy = load0[0] > ncpu  # more runnable work than CPUs before we even started: other jobs
    load = f"load average {load0[0]:.2f} before, {load1[0]:.2f} after (1 min)"
    lines = [f"## {title}", "",
             f"- machine: {machine(device)}",
             f"- command: `cd {ROOT} && .venv/bin/python {shlex.join(['bench.py', *sys.argv[1:]])}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {load}"
             + (f" on {ncpu} CPUs: **the machine was shared with other jobs, figures are noisy**" if busy else ""),
             "", *table(rows), "", *notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        update_section(os.path.join(ROOT, "BENCHMARKS.md"), name, text)
        log(f"wrote section '{name}' of BENCHMARKS.md")


HEADER = """# Benchmarks

Speed is a feature, proven here rather than by timed tests. All figures come from ONE script, `bench.py`
(`.venv/bin/python bench.py --help`); each is a ratio against a baseline measured in the same process and
run, so a slower or busier machine moves both sides. Each section says where, when and how it was measured.

On a 2-core machine that other jobs share, pass `--threads 1`: torch's OpenMP threads spin while they wait
for each other, so when another process holds the cores, 2 threads are far slower than 1 (2026-11-25, load
average ~5.7 on 2 CPUs: a dim-256 model decoded 36 tokens/s with 2 threads and 187 tokens/s with 1).

"""
PENDING = {  # what a section says until its benchmark has been run with --write
    "gpu": "Not measured yet: no GPU was available. Run `.venv/bin/python bench.py gpu --write` on a CUDA "
           "machine (about 14 GB of weights, roughly 45-60 GB for the 1 x 2048 training step).",
}
SECTIONS = ["decode", "sandbox", "grade", "infer", "tp", "gpu"]  # their order in BENCHMARKS.md


def update_section(path, name, text):
    start, end = (m.format(name) for m in MARK)
    old = open(path).read() if os.path.exists(path) else HEADER + "".join(
        f"{MARK[0].format(n)}\n## {n}\n\n{PENDING.get(n, 'Not measured yet.')}\n{MARK[1].format(n)}\n\n"
        for n in SECTIONS)
    block = f"{start}\n{text}{end}\n"
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pat.sub(lambda _: block, old) if pat.search(old) else old.rstrip("\n") + "\n\n" + block
    with open(path + ".tmp", "w") as f:
        f.write(new)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------- decode: cache vs recompute, roofline
@torch.no_grad()
def naive_greedy(model, prompt, n):
    """Baseline: no KV cache; the whole prefix is run again for every new token (O(T^2) work)."""
    seq = torch.tensor([prompt], device=model.output.weight.device)
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
    return seq[0, len(prompt):].tolist()


def step_bytes(model, context):
    """Bytes one single-token decode step must read from memory: every weight once (of the embedding table
    only one row) plus the KV cache up to `context` positions. Weights dominate at batch 1."""
    a, w = model.args, model.output.weight
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "tok_embeddings.weight")
    kv = 2 * a.n_layers * context * (a.n_kv_heads or a.n_heads) * (a.dim // a.n_heads) * w.element_size()
    return weights + a.dim * w.element_size() + kv


def copy_bandwidth(device, nbytes=1 << 28, reps=5):
    """Achievable memory bandwidth: best of `reps` copies of a large buffer (each reads + writes nbytes)."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), device)[1] for _ in range(reps))
    return 2 * nbytes / best


def decode_step_s(model, prompt, n, device):
    """Seconds per single-token decode step of model.greedy (the project's KV-cached decoder): the time of
    n+1 tokens minus the time of 1 token (prefill only), divided by n."""
    t1 = min(timed(lambda: M.greedy(model, prompt, 1), device)[1] for _ in range(2))
    return (timed(lambda: M.greedy(model, prompt, n + 1), device)[1] - t1) / n


def roofline_rows(model, prompt, n, device, bw):
    """One table row: measured single-token decode rate vs the memory-bandwidth roofline."""
    step = decode_step_s(model, prompt, n, device)
    need = step_bytes(model, len(prompt) + n // 2)  # KV cache read at the average position
    roof = bw / need
    return [("decode step, batch 1 (tokens/s)", f"{1 / step:,.1f}", "memory roofline: "
                   f"{need / 1e6:,.0f} MB/step at {bw / 1e9:,.1f} GB/s copy bandwidth", f"{roof:,.1f}",
                   f"{(1 / step) / roof:.0%} of roofline")]


def bench_decode(a):
    torch.manual_seed(0)
    args = M.ModelArgs(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads,
                       vocab_size=32008, hidden_dim=a.hidden_dim)
    model = M.Transformer(args).eval()
    prompt = torch.randint(0, args.vocab_size, (a.prompt_len,)).tolist()
    load0 = os.getloadavg()
    M.greedy(model, prompt, 4), naive_greedy(model, prompt, 4)  # warm-up
    log(f"decode: cached greedy, {a.new_tokens} tokens")
    ours, t_ours = timed(lambda: M.greedy(model, prompt, a.new_tokens))
    log(f"decode: naive recompute loop, {a.new_tokens} tokens (slow on purpose)")
    base, t_base = timed(lambda: naive_greedy(model, prompt, a.new_tokens))
    if ours != base:
        sys.exit("bench decode: cached and naive greedy decoding disagree: model.py's KV cache is wrong")
    log("decode: memory bandwidth and per-step time")
    bw = copy_bandwidth("cpu")
    roof = roofline_rows(model, prompt, a.new_tokens, "cpu", bw)
    n_p = sum(p.numel() for p in model.parameters())
    rows = [(f"prompt {a.prompt_len} + {a.new_tokens} new tokens, KV cache (tokens/s)",
             f"{a.new_tokens / t_ours:,.1f}", "naive loop, prefix recomputed each token",
             f"{a.new_tokens / t_base:,.1f}", f"**{t_base / t_ours:.1f}x** faster")] + roof
    notes = [f"Model: random init, fp32, dim {a.dim}, {a.n_layers} layers, {a.n_heads} heads ({a.n_kv_heads} KV "
             f"heads), FFN {a.hidden_dim}, vocab 32008: {n_p / 1e6:.1f}M parameters. `model.greedy` "
             f"(prefill once, one token per step) vs a loop that calls the model on the whole sequence for every "
             f"token; both give the same {a.new_tokens} ids (checked). The roofline assumes every weight (one "
             f"embedding row) and the KV cache are read once per step at the bandwidth of a "
             f"{(1 << 28) >> 20} MiB tensor copy; on a CPU part of the weights can sit in cache, and small "
             f"matmuls run below bandwidth, so this is a rough bound. Per-step time = (time of n+1 tokens - "
             f"time of 1 token) / n."]
    report("decode", "decode: KV-cached greedy vs naive loop, vs memory roofline (CPU)", rows, notes, a.write,
           load0=load0)


# ------------------------------------------------------------ sandbox: round trip, reset, restart
def bench_sandbox(a):
    import sandbox
    load0 = os.getloadavg()
    ns = {}
    inproc = median_s(lambda: eval(compile("1+1", "<cell>", "eval"), ns), a.iters)  # no isolation
    modes = [m for m, why in sandbox.isolation_modes().items() if why is None]  # default first
    rt, reset, restart = {}, {}, {}
    for mode in modes:
        with sandbox.Sandbox(isolation=mode) as sb:  # the default preload: numpy, sympy, ...
            if sb.run("1+1") != "2":
                sys.exit("bench sandbox: Sandbox.run('1+1') did not return '2'")
            for _ in range(20):
                sb.run("1+1")  # warm-up
            log(f"sandbox ({mode}): {a.iters} round trips and resets, {a.restarts} restarts")
            rt[mode] = median_s(lambda: sb.run("1+1"), a.iters)
            cycle = median_s(lambda: (sb.run("x = 1"), sb.reset()), a.iters)
            reset[mode] = max(cycle - rt[mode], 1e-9)

            def crash_restart():  # the worker dies; a fresh one is forked and runs the next cell
                if ("exit code 3" not in sb.run("import os; os._exit(3)")
                        or not sb.run("1+1").endswith("2")):
                    sys.exit("bench sandbox: crash + restart did not behave as documented")
            restart[mode] = median_s(crash_restart, a.restarts)
    default = modes[0]
    log(f"sandbox ({default}): {a.restarts} cold starts")
    cold = []
    for _ in range(a.restarts):  # what every restart cost before the fork server
        t = time.perf_counter()
        sb = sandbox.Sandbox(isolation=default)
        if sb.run("1+1") != "2":
            sys.exit("bench sandbox: a new Sandbox did not run '1+1'")
        cold.append(time.perf_counter() - t)
        sb.close()
    cold = statistics.median(cold)
    rows = [(f"round trip of `1+1` ({default})", fmt_t(rt[default]),
             "`eval` of the same cell in-process (no isolation)", fmt_t(inproc),
             f"{rt[default] / inproc:,.0f}x slower"),
            (f"`reset()` (new problem, {default})", fmt_t(reset[default]),
             "crash + fresh worker + `1+1`", fmt_t(restart[default]),
             f"{restart[default] / reset[default]:,.0f}x faster"),
            (f"crash + fresh worker + `1+1` ({default}: forked from the template)",
             fmt_t(restart[default]), "cold start: new Sandbox + `1+1` (a new interpreter imports "
             "the preload, as every restart did before)", fmt_t(cold),
             f"**{cold / restart[default]:,.0f}x** faster")]
    for mode in modes[1:]:
        rows += [(f"round trip of `1+1` ({mode})", fmt_t(rt[mode]), f"the same, {default}",
                  fmt_t(rt[default]), f"{rt[mode] / rt[default]:.2f}x"),
                 (f"crash + fresh worker + `1+1` ({mode})", fmt_t(restart[mode]),
                  f"the same, {default}", fmt_t(restart[default]),
                  f"{restart[mode] / restart[default]:.2f}x")]
    notes = [f"Isolation modes available here: {', '.join(modes)} (default: {default}). Every "
             f"Sandbox has the default preload (numpy, sympy, ...). Medians of {a.iters} round "
             f"trips / resets and {a.restarts} restarts and cold starts. `reset()` = median of "
             "(`x = 1` + `reset()`) minus a round trip. A restart is what a crash or hard timeout "
             "costs beyond the time limit itself: the template kills the worker and what it "
             "started, forks a fresh one, which runs the next cell; `reset()` is why a problem "
             "never needs one otherwise."]
    report("sandbox", "sandbox: round trip, reset and restart (CPU)", rows, notes, a.write,
           load0=load0)


# ---------------------------------------------------------------------------- grade: MATH self-consistency
def bench_grade(a):
    import grader as E
    from eval import load_dataset
    load0 = os.getloadavg()
    probs = load_dataset("math", os.path.join(ROOT, "data/eval"))[: a.limit or None]
    preds = [E.extract_answer(p["solution"]) for p in probs]
    pairs = list(zip(preds, [str(p["answer"]) for p in probs]))
    shifted = list(zip(preds[: a.mismatched], [str(p["answer"]) for p in probs[1: a.mismatched + 1]]))

    def rate(fn, ps, label):
        log(f"grade: {label}, {len(ps)} pairs")
        E.to_sympy.cache_clear()  # every pass starts with a cold SymPy parse cache
        n_eq, dt = timed(lambda: sum(bool(fn(x, y)) for x, y in ps))
        return len(ps) / dt, n_eq

    string, n_str = rate(lambda x, y: x is not None and x == y, pairs, "plain string equality")
    full, n_full = rate(E.is_equiv, pairs, "is_equiv")
    E.FAST_PATH = False
    try:
        slow, n_slow = rate(E.is_equiv, pairs, "is_equiv without the fast path")
    finally:
        E.FAST_PATH = True
    mism, n_mism = rate(E.is_equiv, shifted, "is_equiv on mismatched pairs")
    n = len(pairs)
    rows = [(f"`is_equiv`, {n} MATH answers (answers/s)", f"{full:,.0f}", "plain string equality",
             f"{string:,.0f}", f"{string / full:,.0f}x slower"),
            (f"`is_equiv`, {n} MATH answers (answers/s)", f"{full:,.0f}", "`is_equiv` with FAST_PATH = False "
             "(every scalar through SymPy)", f"{slow:,.0f}", f"**{full / slow:.1f}x** faster"),
            (f"`is_equiv`, {len(shifted)} mismatched pairs (answers/s)", f"{mism:,.0f}",
             "`is_equiv`, matching pairs", f"{full:,.0f}", f"{full / mism:.1f}x slower")]
    notes = [f"Input: every MATH test problem's reference solution, its extracted answer graded against the "
             f"reference answer (the self-consistency run of tests/test_eval.py). Equal: string {n_str}/{n}, "
             f"is_equiv {n_full}/{n}, without fast path {n_slow}/{n}; mismatched pairs (solution i vs answer "
             f"i+1), where most pairs reach SymPy: {n_mism}/{len(shifted)} equal. SymPy parse cache cleared "
             "before each pass. Without the fast path, answers equal only as strings (`\\text{odd}`, "
             "`\\overline{CD}`, ...) are not matched: the fast path is also what grades non-numeric answers."]
    report("grade", "grade: answer checking throughput (CPU)", rows, notes, a.write, load0=load0)


# ------------------------------------------------------------------------- infer: batched vs one at a time
SOLUTION = ("<|text|>We multiply the two numbers and then add the third one; the interpreter does the "
            "arithmetic.<|endofblock|><|code|>a = 1234 * 5678\nb = a + 91011\nprint(a, b)<|endofblock|>"
            "<|text|>Now check the remainder modulo 7 before answering.<|endofblock|><|code|>import math\n"
            "print(b % 7, math.gcd(a, b))<|endofblock|><|text|>So the answer is \\boxed{7097663}.<|endofblock|>"
            "<|endofmessage|>")


class ScriptOverReal(nn.Module):
    """A random model never writes code, so this one runs the REAL forward pass (real cost, real KV cache)
    and then overwrites the logits so that every row emits SOLUTION's tokens in order, one per call.
    The solve loop, the prefills and the sandbox round trips are therefore all real."""

    def __init__(self, net, script, eom):
        super().__init__()
        self.net, self.script, self.eom, self.step = net, script, eom, {}

    def new_cache(self, *args, **kw):
        return self.net.new_cache(*args, **kw)

    def forward(self, tokens, positions=None, **kw):
        logits = self.net(tokens, positions, **kw)
        rows = kw.get("rows")
        rows = range(tokens.shape[0]) if rows is None else rows.tolist()
        for b, r in enumerate(rows):
            self.step[r] = 0 if int(positions[b, 0]) == 0 else self.step[r] + 1  # position 0: a new problem
            k = self.step[r]
            logits[b, -1] = -1e4
            logits[b, -1, self.script[k] if k < len(self.script) else self.eom] = 1e4
        return logits


def bench_infer(a):
    import infer, lce_data, sandbox
    from tokenizer import Tokenizer
    warnings.filterwarnings("ignore", message="sandbox: the standard library")
    torch.manual_seed(0)
    tok = Tokenizer(os.path.join(ROOT, "tests/fixtures/tokenizer/llama2-tokenizer.model"))
    args = M.ModelArgs(dim=a.dim, n_layers=a.n_layers, n_heads=a.dim // 64, vocab_size=tok.vocab_size,
                       hidden_dim=int(a.dim * 8 / 3) // 32 * 32)
    net = M.Transformer(args).eval()
    script = tok.encode(SOLUTION)
    scripted = ScriptOverReal(net, script, tok.special["<|endofmessage|>"])
    qs = [f"Problem {i}: what is 1234 * 5678 + 91011, and its remainder mod 7?" for i in range(a.n)]
    load0 = os.getloadavg()
    with sandbox.SandboxPool(a.batch_size) as pool:
        infer.solve(scripted, tok, qs[:2], cfg=infer.GenConfig(batch_size=2), pool=pool)  # warm-up
        log(f"infer: solve {a.n} problems, batch {a.batch_size}")
        res_b, t_b = timed(lambda: infer.solve(scripted, tok, qs, cfg=infer.GenConfig(batch_size=a.batch_size),
                                               pool=pool))
        log(f"infer: solve {a.n} problems, batch 1 (the baseline; slower)")
        res_1, t_1 = timed(lambda: infer.solve(scripted, tok, qs, cfg=infer.GenConfig(batch_size=1), pool=pool))
    if [r["solution"] for r in res_b] != [r["solution"] for r in res_1] or not all(
            "7097663" in r["solution"] and r["n_exec"] == 2 for r in res_b):
        sys.exit("bench infer: batched and one-at-a-time solutions differ, or the code did not run twice")
    prompts = [tok.encode(lce_data.prompt_text(q), bos=True) for q in qs]
    log(f"infer: generate {len(script)} tokens x {a.n} prompts, batch {a.batch_size} and batch 1")
    out_b, g_b = timed(lambda: infer.generate(net, prompts, len(script), batch_size=a.batch_size))
    out_1, g_1 = timed(lambda: infer.generate(net, prompts, len(script), batch_size=1))
    same = sum(x == y for x, y in zip(out_b, out_1))
    toks = sum(r["n_tokens"] for r in res_b)
    rows = [(f"`solve`, {a.n} problems, batch {a.batch_size} (problems/s)", f"{a.n / t_b:.2f}",
             "`solve`, batch 1 (one problem at a time)", f"{a.n / t_1:.2f}", f"**{t_1 / t_b:.1f}x** faster"),
            (f"`generate`, {a.n} x {len(script)} tokens, batch {a.batch_size} (tokens/s)",
             f"{a.n * len(script) / g_b:,.1f}", "`generate`, batch 1", f"{a.n * len(script) / g_1:,.1f}",
             f"{g_1 / g_b:.1f}x faster")]
    notes = [f"Model: random init, fp32, dim {a.dim}, {a.n_layers} layers, vocab {tok.vocab_size} "
             f"({sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters). `solve`: the real model's forward "
             f"pass with its logits overwritten so each problem writes the same LCE solution ({len(script)} "
             f"generated tokens: text, code, text, code, text; {toks} in all), whose two code blocks really run in "
             f"a `SandboxPool` of {a.batch_size}; batched and batch-1 solutions are identical (checked). `generate`: "
             f"the random model's own greedy tokens, no tools; identical outputs at both batch sizes: "
             f"{same}/{a.n} (a random model's near-tied logits may flip under batched float arithmetic)."]
    report("infer", "infer: batched solve vs one problem at a time (CPU)", rows, notes, a.write, load0=load0)


# -------------------------------------------------------------- tp: peak memory per rank, TP=2 vs 1
PEAK_RSS_SCRIPT = """
import ctypes, gc, json, os, sys, torch
import model, parallel
ranks = parallel.init_ranks(int(sys.argv[2]))
def kib(field):
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith(field)).split()[1])
model.load_pretrained("tests/fixtures/models/llama2-mha/hf", tp_group=ranks.tp_group)   # warm-up
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)        # freed memory back to the OS
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
before = kib("VmRSS:")
net = model.load_pretrained(sys.argv[1], tp_group=ranks.tp_group)
with torch.no_grad():
    logits = net(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
line = json.dumps({"rank": ranks.rank, "peak": (kib("VmHWM:") - before) * 1024,
                   "logits": logits[0, -1, :8].float().tolist()})
os.write(1, (line + "\\n").encode())   # one write: the ranks' lines do not interleave
"""


def peak_rss_per_rank(ckpt, tp):
    """Peak RSS growth of each rank while it loads its part of ckpt and runs a forward pass."""
    cmd = [sys.executable, "-c", PEAK_RSS_SCRIPT, str(ckpt), str(tp)]
    if tp > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={tp}", "--no-python", *cmd]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"bench tp: the --tp {tp} run failed:\n{p.stderr[-8000:]}")
    out = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    return sorted(out, key=lambda r: r["rank"])


def bench_tp(a):
    """Peak host memory per rank, loading a checkpoint (HF layout, bf16) with --tp 2 vs TP=1."""
    torch.manual_seed(0)
    args = M.ModelArgs(dim=a.dim, n_layers=a.n_layers, n_heads=a.dim // 128,
                       n_kv_heads=a.dim // 512, hidden_dim=int(a.dim * 8 / 3) // 256 * 256,
                       vocab_size=32008)
    net = M.Transformer(args).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"tp: writing a {sum(p.numel() for p in net.parameters()) / 1e6:.0f}M-parameter bf16 "
            "checkpoint")
        net.save_pretrained(tmp, max_shard_bytes=2**28)
        del net
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        load0 = os.getloadavg()
        log("tp: TP=1 (one process), then TP=2 (torchrun, 2 processes)")
        one, two = peak_rss_per_rank(tmp, 1), peak_rss_per_rank(tmp, 2)
    ref = torch.tensor(one[0]["logits"])
    err = max((torch.tensor(r["logits"]) - ref).abs().max().item() for r in two)
    if err > 0.02 * ref.abs().max().item():   # bf16: partial sums are rounded in another order
        sys.exit(f"bench tp: TP=2 logits differ from TP=1 by {err} ({ref.tolist()})")
    mb = lambda n: f"{n / 2**20:,.0f} MB"
    rows = [(f"peak RSS growth, TP=2, rank {r['rank']}", mb(r["peak"]), "TP=1 (one process)",
             mb(one[0]["peak"]), f"**{r['peak'] / one[0]['peak']:.2f}x**") for r in two]
    rows += [(f"peak RSS growth, TP=2, rank {r['rank']}", mb(r["peak"]), "checkpoint size",
              mb(size), f"{r['peak'] / size:.2f}x") for r in two]
    notes = [f"Model: random init stored in bf16 (HF layout, shards of 256 MiB), dim {args.dim}, "
             f"{args.n_layers} layers, {args.n_heads} heads ({args.n_kv_heads} KV heads), FFN "
             f"{args.hidden_dim}, vocab {args.vocab_size}: {mb(size)}. Each process warms up on "
             "the fixture model, returns freed memory to the OS (malloc_trim), restarts its peak "
             "(VmHWM), then loads with `model.load_pretrained(..., tp_group)` and runs one 8-token "
             "forward pass: the growth of its peak RSS. Under TP=2 a rank reads only its rows and "
             "columns of each tensor (the rest of the file never enters its memory); the TP=2 "
             "logits agree with TP=1's within bf16 rounding (checked). Host memory on the CPU "
             "(gloo) only: GPU memory under NCCL and decode speed under TP are not measured here."]
    report("tp", "tp: peak host memory per rank, tensor-parallel loading (CPU, gloo)", rows, notes,
           a.write, load0)


# ------------------------------------------------------------------- gpu: 7B-shape decode roofline and MFU
def matmul_tflops(device, n=8192, reps=5):
    """Achievable dense bf16 matmul throughput: best of `reps` n x n x n products."""
    x, y = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    x @ y
    return 2 * n ** 3 / min(timed(lambda: x @ y, device)[1] for _ in range(reps)) / 1e12


def gpu_figures(args, device, prompt_len, new_tokens, train_seq, train_batch, train_steps, peak_tflops, mm_n):
    """The GPU benchmark proper, device-agnostic so its logic can be exercised on CPU with a tiny shape."""
    import train
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = M.Transformer(args).eval()
    finally:
        torch.set_default_dtype(old)
    n_p = sum(p.numel() for p in model.parameters())
    log(f"gpu: {n_p / 1e9:.2f}B parameters in bf16 on {device}; bandwidth, then {new_tokens} decode steps")
    bw = copy_bandwidth(device, nbytes=1 << 30 if torch.device(device).type == "cuda" else 1 << 26)
    prompt = torch.randint(0, args.vocab_size, (prompt_len,)).tolist()
    M.greedy(model, prompt, 2)  # warm-up
    rows = roofline_rows(model, prompt, new_tokens, device, bw)
    # training step: forward + backward of a full-length random batch through train.forward_backward (the code
    # train.py runs), which also counts its FLOPs: 6 per matmul weight per token + 12 * layers * dim * T
    model.train()
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if "tok_embeddings" not in n)
    ids = torch.randint(0, args.vocab_size, (train_batch, train_seq), device=device)
    mb = {"input_ids": ids, "labels": ids, "doc_ids": None,
          "positions": torch.arange(train_seq, device=device).expand(train_batch, train_seq)}
    log(f"gpu: training step, {train_batch} x {train_seq} tokens, 1 warm-up + {train_steps} timed")
    try:
        train.forward_backward(model, [mb], 1, None, n_matmul)  # warm-up (allocates the gradients)
        dts, flops = [], 0.0
        for _ in range(train_steps):
            model.zero_grad(set_to_none=False)
            stats, dt = timed(lambda: train.forward_backward(model, [mb], 1, None, n_matmul), device)
            dts.append(dt)
            flops = stats[2].item()
        dt = statistics.median(dts)
    except torch.cuda.OutOfMemoryError:
        sys.exit(f"bench gpu: out of memory in the training step at {train_batch} x {train_seq}; "
                 f"try --train-seq {train_seq // 2}")
    del model, mb
    mm = matmul_tflops(device, mm_n)
    achieved = flops / dt / 1e12
    rows += [(f"training step fwd+bwd, {train_batch} x {train_seq} tokens (TFLOP/s)", f"{achieved:,.1f}",
              "spec-sheet dense bf16 peak", f"{peak_tflops:,.0f}", f"MFU **{achieved / peak_tflops:.1%}**"),
             (f"training step fwd+bwd, {train_batch} x {train_seq} tokens (TFLOP/s)", f"{achieved:,.1f}",
              f"bf16 matmul {mm_n}^3 measured", f"{mm:,.1f}", f"{achieved / mm:.1%}")]
    notes = [f"Model: Llama-2-7B shape (dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads, FFN "
             f"{args.hidden_dim}, vocab {args.vocab_size}), random init, weights in bf16: {n_p / 1e9:.2f}B parameters. "
             f"Decode: `model.greedy`, batch 1, prompt {prompt_len}, per-step time over {new_tokens} steps; roofline "
             f"= copy bandwidth / bytes read per step (all weights but the embedding table, plus the KV cache at the "
             f"average position). Training: median of {train_steps} `train.forward_backward` calls (bf16 weights "
             f"and gradients, no optimizer step, no gradient checkpointing); FLOPs as train.py counts them "
             f"(6 x matmul parameters x tokens + attention 12 x layers x dim x T per token)."]
    return rows, notes


def bench_gpu(a):
    if not torch.cuda.is_available():
        sys.exit(f"bench gpu: no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__}). "
                 "Run it on a machine with an NVIDIA GPU and the CUDA build of torch.")
    args = M.ModelArgs(dim=4096, n_layers=32, n_heads=32, hidden_dim=11008, vocab_size=32008)
    load0 = os.getloadavg()
    rows, notes = gpu_figures(args, "cuda", a.prompt_len, a.new_tokens, a.train_seq, a.train_batch,
                                 a.train_steps, a.peak_tflops, 8192)
    report("gpu", "gpu: 7B-shape bf16 decode vs bandwidth roofline, training-step MFU", rows, notes, a.write,
           load0, device="cuda")


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    common.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    d = sub.add_parser("decode", parents=[common], help="KV-cached decode vs naive loop vs memory roofline")
    d.add_argument("--dim", type=int, default=256)
    d.add_argument("--n-layers", type=int, default=4)
    d.add_argument("--n-heads", type=int, default=4)
    d.add_argument("--n-kv-heads", type=int, default=2)
    d.add_argument("--hidden-dim", type=int, default=704)
    d.add_argument("--prompt-len", type=int, default=64)
    d.add_argument("--new-tokens", type=int, default=192)
    s = sub.add_parser("sandbox", parents=[common], help="sandbox round trip / reset / restart")
    s.add_argument("--iters", type=int, default=200, help="round trips and resets")
    s.add_argument("--restarts", type=int, default=10, help="crash + restarts and cold starts")
    g = sub.add_parser("grade", parents=[common], help="grading throughput on MATH")
    g.add_argument("--limit", type=int, default=0, help="first N MATH problems (0: all 5000)")
    g.add_argument("--mismatched", type=int, default=1000, help="mismatched pairs for the slow case")
    i = sub.add_parser("infer", parents=[common], help="batched solve vs one problem at a time")
    i.add_argument("--n", type=int, default=16, help="problems")
    i.add_argument("--batch-size", type=int, default=8)
    i.add_argument("--dim", type=int, default=256)
    i.add_argument("--n-layers", type=int, default=2)
    p = sub.add_parser("tp", parents=[common], help="peak memory per rank loading with --tp 2 vs 1")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--n-layers", type=int, default=12)
    u = sub.add_parser("gpu", parents=[common], help="CUDA only: 7B-shape bf16 decode roofline and training MFU")
    u.add_argument("--prompt-len", type=int, default=128)
    u.add_argument("--new-tokens", type=int, default=128)
    u.add_argument("--train-seq", type=int, default=2048)
    u.add_argument("--train-batch", type=int, default=1)
    u.add_argument("--train-steps", type=int, default=3)
    u.add_argument("--peak-tflops", type=float, default=989.0,
                   help="spec dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989, H100 PCIe: 756, A100: 312)")
    sub.add_parser("all", parents=[common],
                   help="decode, sandbox, grade, infer and tp with their defaults")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.chdir(ROOT)
    cmds = {"decode": bench_decode, "sandbox": bench_sandbox, "grade": bench_grade, "infer": bench_infer,
            "tp": bench_tp, "gpu": bench_gpu}
    if a.cmd != "all":
        return cmds[a.cmd](a)
    for name in [n for n in SECTIONS if n != "gpu"]:
        defaults = ap.parse_args([name])  # each benchmark's own defaults, plus the shared flags
        defaults.write, defaults.threads = a.write, a.threads
        t = time.perf_counter()
        cmds[name](defaults)
        log(f"{name} done in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
