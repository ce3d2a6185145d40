"""MathCoder benchmarks, one script: each figure is a ratio to a baseline run in the same process.

Speed claims live here, not in timed tests. Each subcommand prints a small table and, with --write,
replaces its own section of BENCHMARKS.md (machine, exact command, date, load average, figures).

    .venv/bin/python bench.py decode    # KV-cached greedy decode vs the naive loop, vs the roofline
    .venv/bin/python bench.py sandbox   # sandbox round trip, new problem; vs a cold start
    .venv/bin/python bench.py grade     # answer grading on MATH vs string compare and SymPy-only
    .venv/bin/python bench.py infer     # batched solve() (code runs while others decode) vs 1 by 1
    .venv/bin/python bench.py tp        # peak host memory per rank: loading with --tp 2 vs TP=1
    .venv/bin/python bench.py all --write    # the CPU benchmarks, BENCHMARKS.md updated
    .venv/bin/python bench.py gpu --write    # CUDA only: 7B-shape bf16 decode vs the bandwidth
                                             # roofline, and training-step MFU
Every benchmark checks that the fast path and its baseline compute the same thing before timing
counts.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import grader
import infer
import lce_data
import model as M
import sandbox
import train
from eval import load_dataset
from storage import atomic_write
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.abspath(__file__))
LLAMA_TOKENIZER = os.path.join(ROOT, "tests/fixtures/tokenizer/llama2-tokenizer.model")


# --------------------------------------------------------------------------------------- helpers
def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn, device="cpu"):
    """(result, seconds) of one call; waits for the GPU when timing CUDA work."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def median_s(fn, n):
    return statistics.median(timed(fn)[1] for _ in range(n))


def fmt_time(s):
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def machine(device):
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    found = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    cpu = found.group(1) if found else platform.processor() or "unknown CPU"
    gpu = f"; GPU {torch.cuda.get_device_name()}" if device == "cuda" else ""
    threads = torch.get_num_threads()
    return (f"{len(os.sched_getaffinity(0))} CPUs (nproc), {cpu}{gpu}; torch {torch.__version__} "
            f"({threads} CPU thread{'s' * (threads > 1)}), Python {platform.python_version()}")


def report(name, title, rows, notes, write, load_before, device="cpu"):
    """Print one benchmark's section: where, when and how, then its table. rows: (measured, value,
    baseline, baseline value, ratio). With write, the section replaces its own in BENCHMARKS.md.
    load_before: os.getloadavg() from before the benchmark ran."""
    load_after = os.getloadavg()
    ncpu = len(os.sched_getaffinity(0))
    load = f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)"
    if load_before[0] > ncpu:     # more runnable work than CPUs before we even started: other jobs
        load += f" on {ncpu} CPUs: **the machine was shared with other jobs, figures are noisy**"
    command = shlex.join(["bench.py", *sys.argv[1:]])
    head = ["measured", "value", "baseline (same run)", "baseline value", "ratio"]
    lines = [f"## {title}", "",
             f"- machine: {machine(device)}",
             f"- command: `cd {ROOT} && .venv/bin/python {command}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {load}",
             "",
             "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head),
             *("| " + " | ".join(row) + " |" for row in rows),
             "",
             *notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        update_section(os.path.join(ROOT, "BENCHMARKS.md"), name, text)
        log(f"wrote section '{name}' of BENCHMARKS.md")


def update_section(path, name, text):
    """Replace the text between <!-- bench:NAME --> and <!-- /bench:NAME --> (atomically); a
    section not there yet goes at the end."""
    start = f"<!-- bench:{name} -->"
    end = f"<!-- /bench:{name} -->"
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{start}\n{text}{end}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        new = old.rstrip("\n") + "\n\n" + block
    atomic_write(path, new)


# ------------------------------------------------------------ decode: cache vs recompute, roofline
@torch.no_grad()
def naive_greedy(model, prompt, n):
    """Baseline: no KV cache; the whole prefix is run again for every new token (O(T^2) work)."""
    seq = torch.tensor([prompt], device=model.output.weight.device)
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
    return seq[0, len(prompt):].tolist()


def step_bytes(model, context):
    """Bytes one single-token decode step must read from memory: every weight once (of the embedding
    table only one row) plus the KV cache up to `context` positions. Weights dominate at batch 1."""
    args = model.args
    width = model.output.weight.element_size()
    weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if name != "tok_embeddings.weight")
    kv_cache = 2 * args.n_layers * context * (args.n_kv_heads or args.n_heads) * args.head_dim
    return weights + (args.dim + kv_cache) * width


def copy_bandwidth(device, nbytes=1 << 28, reps=5):
    """Achievable memory bandwidth: the best of `reps` copies of a large buffer (each reads and
    writes nbytes)."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), device)[1] for _ in range(reps))
    return 2 * nbytes / best


def roofline_row(model, prompt, n, device, bandwidth):
    """One table row: the measured single-token decode rate of model.greedy (the project's KV-cached
    decoder) vs the memory-bandwidth roofline. Seconds per step = (time of n+1 tokens - time of 1
    token, the prefill) / n."""
    prefill = min(timed(lambda: M.greedy(model, prompt, 1), device)[1] for _ in range(2))
    step = (timed(lambda: M.greedy(model, prompt, n + 1), device)[1] - prefill) / n
    need = step_bytes(model, len(prompt) + n // 2)  # KV cache read at the average position
    roof = bandwidth / need
    return ("decode step, batch 1 (tokens/s)", f"{1 / step:,.1f}",
            f"memory roofline: {need / 1e6:,.0f} MB/step at {bandwidth / 1e9:,.1f} GB/s copy "
            "bandwidth", f"{roof:,.1f}", f"{(1 / step) / roof:.0%} of roofline")


def bench_decode(opts):
    torch.manual_seed(0)
    args = M.ModelArgs(dim=opts.dim, n_layers=opts.n_layers, n_heads=opts.n_heads,
                       n_kv_heads=opts.n_kv_heads, vocab_size=32008, hidden_dim=opts.hidden_dim)
    model = M.Transformer(args).eval()
    prompt = torch.randint(0, args.vocab_size, (opts.prompt_len,)).tolist()
    n = opts.new_tokens
    M.greedy(model, prompt, 4)                              # warm-up
    naive_greedy(model, prompt, 4)
    log(f"decode: cached greedy, {n} tokens")
    ours, t_ours = timed(lambda: M.greedy(model, prompt, n))
    log(f"decode: naive recompute loop, {n} tokens (slow on purpose)")
    base, t_base = timed(lambda: naive_greedy(model, prompt, n))
    if ours != base:
        sys.exit("bench decode: cached and naive greedy decoding disagree: model.py's KV cache is "
                 "wrong")
    log("decode: memory bandwidth and per-step time")
    rows = [(f"prompt {opts.prompt_len} + {n} new tokens, KV cache (tokens/s)",
             f"{n / t_ours:,.1f}", "naive loop, prefix recomputed each token", f"{n / t_base:,.1f}",
             f"**{t_base / t_ours:.1f}x** faster"),
            roofline_row(model, prompt, n, "cpu", copy_bandwidth("cpu"))]
    notes = [f"Model: random init, fp32, dim {args.dim}, {args.n_layers} layers, {args.n_heads} "
             f"heads ({args.n_kv_heads} KV heads), FFN {args.hidden_dim}, vocab 32008: "
             f"{n_params(model) / 1e6:.1f}M parameters. `model.greedy` (prefill once, one token "
             "per step) vs a loop that calls the model on the whole sequence for every token; "
             f"both give the same {n} ids (checked). The roofline assumes every weight (one "
             "embedding row) and the KV cache are read once per step at the bandwidth of a "
             f"{(1 << 28) >> 20} MiB tensor copy; on a CPU part of the weights can sit in cache, "
             "and small matmuls run below bandwidth, so this is a rough bound. Per-step time = "
             "(time of n+1 tokens - time of 1 token) / n."]
    return "decode: KV-cached greedy vs naive loop, vs memory roofline (CPU)", rows, notes


# ------------------------------------------------------------ sandbox: round trip, reset, restart
def bench_sandbox(opts):
    namespace = {}
    in_process = median_s(lambda: eval(compile("1+1", "<cell>", "eval"), namespace), opts.iters)
    modes = [mode for mode, why in sandbox.isolation_modes().items() if why is None]  # default 1st
    round_trip = {}
    new_problem = {}
    restart = {}
    for mode in modes:
        with sandbox.Sandbox(isolation=mode) as box:  # the default preload: numpy, sympy, ...
            if box.run("1+1") != "2":
                sys.exit("bench sandbox: Sandbox.run('1+1') did not return '2'")
            for _ in range(20):
                box.run("1+1")  # warm-up
            log(f"sandbox ({mode}): {opts.iters} round trips and new problems, "
                f"{opts.restarts} restarts")
            round_trip[mode] = median_s(lambda: box.run("1+1"), opts.iters)

            def fresh_problem():  # reset() forks a fresh worker, which runs the problem's cell
                box.reset()
                if box.run("1+1") != "2":
                    sys.exit("bench sandbox: reset() + run('1+1') did not return '2'")
            new_problem[mode] = median_s(fresh_problem, opts.iters)

            def crash_restart():  # the worker dies; a fresh one is forked and runs the next cell
                if ("exit code 3" not in box.run("import os; os._exit(3)")
                        or not box.run("1+1").endswith("2")):
                    sys.exit("bench sandbox: crash + restart did not behave as documented")
            restart[mode] = median_s(crash_restart, opts.restarts)
    default = modes[0]
    log(f"sandbox ({default}): {opts.restarts} cold starts")
    cold_starts = []
    for _ in range(opts.restarts):  # what every restart cost before the fork server
        start = time.perf_counter()
        box = sandbox.Sandbox(isolation=default)
        if box.run("1+1") != "2":
            sys.exit("bench sandbox: a new Sandbox did not run '1+1'")
        cold_starts.append(time.perf_counter() - start)
        box.close()
    cold = statistics.median(cold_starts)
    fresh = "crash + fresh worker + `1+1`"
    cold_what = ("cold start: new Sandbox + `1+1` (a new interpreter imports the preload, as every "
                 "restart did before the fork server)")
    rows = [(f"round trip of `1+1` ({default})", fmt_time(round_trip[default]),
             "`eval` of the same cell in-process (no isolation)", fmt_time(in_process),
             f"{round_trip[default] / in_process:,.0f}x slower"),
            (f"new problem: `reset()` + `1+1` ({default}: a fresh worker forked from the "
             "template)", fmt_time(new_problem[default]), cold_what, fmt_time(cold),
             f"**{cold / new_problem[default]:,.0f}x** faster"),
            (f"{fresh} ({default})", fmt_time(restart[default]), cold_what, fmt_time(cold),
             f"{cold / restart[default]:,.0f}x faster")]
    for mode in modes[1:]:
        rows += [(f"round trip of `1+1` ({mode})", fmt_time(round_trip[mode]),
                  f"the same, {default}", fmt_time(round_trip[default]),
                  f"{round_trip[mode] / round_trip[default]:.2f}x"),
                 (f"new problem: `reset()` + `1+1` ({mode})", fmt_time(new_problem[mode]),
                  f"the same, {default}", fmt_time(new_problem[default]),
                  f"{new_problem[mode] / new_problem[default]:.2f}x")]
    notes = [f"Isolation modes available here: {', '.join(modes)} (default: {default}). Every "
             f"Sandbox has the default preload (numpy, sympy, ...). Medians of {opts.iters} round "
             f"trips and new problems, {opts.restarts} restarts and cold starts. A new problem "
             "gets a fresh worker: `reset()` has the template kill the last one (with all it "
             "started) and fork another, which empties the work directory and answers the "
             "problem's first cell; nothing of the last problem survives. A crash costs the same "
             "plus the dead worker's cell. Targets: round trip <= 0.2 ms, new problem <= 30 ms."]
    return "sandbox: round trip, new problem and restart (CPU)", rows, notes


# ------------------------------------------------------------------ grade: MATH self-consistency
def bench_grade(opts):
    problems = load_dataset("math", os.path.join(ROOT, "data/eval"))[:opts.limit or None]
    preds = [grader.extract_answer(p["solution"]) for p in problems]
    refs = [str(p["answer"]) for p in problems]
    pairs = list(zip(preds, refs))
    shifted = list(zip(preds[:opts.mismatched], refs[1:opts.mismatched + 1]))  # answer i+1

    def rate(equal, pairs, label):
        """(pairs/s, pairs found equal)."""
        log(f"grade: {label}, {len(pairs)} pairs")
        grader.to_sympy.cache_clear()  # every pass starts with a cold SymPy parse cache
        n_equal, seconds = timed(lambda: sum(bool(equal(x, y)) for x, y in pairs))
        return len(pairs) / seconds, n_equal

    string, n_string = rate(lambda x, y: x is not None and x == y, pairs, "plain string equality")
    full, n_full = rate(grader.is_equiv, pairs, "is_equiv")
    grader.FAST_PATH = False
    try:
        slow, n_slow = rate(grader.is_equiv, pairs, "is_equiv without the fast path")
    finally:
        grader.FAST_PATH = True
    mismatched, n_mismatched = rate(grader.is_equiv, shifted, "is_equiv on mismatched pairs")
    n = len(pairs)
    measured = f"`is_equiv`, {n} MATH answers (answers/s)"
    rows = [(measured, f"{full:,.0f}", "plain string equality", f"{string:,.0f}",
             f"{string / full:,.0f}x slower"),
            (measured, f"{full:,.0f}", "`is_equiv` with FAST_PATH = False (every scalar through "
             "SymPy)", f"{slow:,.0f}", f"**{full / slow:.1f}x** faster"),
            (f"`is_equiv`, {len(shifted)} mismatched pairs (answers/s)", f"{mismatched:,.0f}",
             "`is_equiv`, matching pairs", f"{full:,.0f}", f"{full / mismatched:.1f}x slower")]
    notes = [f"Input: every MATH test problem's reference solution, its extracted answer graded "
             "against the reference answer (the self-consistency run of tests/test_eval.py). "
             f"Equal: string {n_string}/{n}, is_equiv {n_full}/{n}, without fast path "
             f"{n_slow}/{n}; mismatched pairs (solution i vs answer i+1), where most pairs reach "
             f"SymPy: {n_mismatched}/{len(shifted)} equal. SymPy parse cache cleared before each "
             "pass. Without the fast path, answers equal only as strings (`\\text{odd}`, "
             "`\\overline{CD}`, ...) are not matched: the fast path is also what grades "
             "non-numeric answers."]
    return "grade: answer checking throughput (CPU)", rows, notes


# --------------------------------------------------------------- infer: batched vs one at a time
SOLUTION = ("<|text|>We multiply the two numbers and then add the third one; the interpreter does "
            "the arithmetic.<|endofblock|><|code|>a = 1234 * 5678\nb = a + 91011\nprint(a, b)"
            "<|endofblock|><|text|>Now check the remainder modulo 7 before answering."
            "<|endofblock|><|code|>import math\nprint(b % 7, math.gcd(a, b))<|endofblock|>"
            "<|text|>So the answer is \\boxed{7097663}.<|endofblock|><|endofmessage|>")


class ScriptOverReal(nn.Module):
    """A random model never writes code, so this one runs the REAL forward pass (real cost, real KV
    cache) and then overwrites the logits so that every row emits SOLUTION's tokens in order, one
    per call. The solve loop, the prefills and the sandbox round trips are therefore all real."""

    def __init__(self, net, script, eom):
        super().__init__()
        self.net = net
        self.script = script
        self.eom = eom
        self.step = {}   # cache row -> index of the next script token

    def new_cache(self, *args, **kw):
        return self.net.new_cache(*args, **kw)

    def forward(self, tokens, positions=None, **kw):
        logits = self.net(tokens, positions, **kw)
        rows = kw.get("rows")
        rows = range(tokens.shape[0]) if rows is None else rows.tolist()
        for b, row in enumerate(rows):
            new_problem = int(positions[b, 0]) == 0
            self.step[row] = 0 if new_problem else self.step[row] + 1
            k = self.step[row]
            logits[b, -1] = -1e4
            logits[b, -1, self.script[k] if k < len(self.script) else self.eom] = 1e4
        return logits


def bench_infer(opts):
    warnings.filterwarnings("ignore", message="sandbox: the standard library")
    torch.manual_seed(0)
    tokenizer = Tokenizer(LLAMA_TOKENIZER)
    args = M.ModelArgs(dim=opts.dim, n_layers=opts.n_layers, n_heads=opts.dim // 64,
                       vocab_size=tokenizer.vocab_size, hidden_dim=int(opts.dim * 8 / 3) // 32 * 32)
    net = M.Transformer(args).eval()
    script = tokenizer.encode(SOLUTION)
    scripted = ScriptOverReal(net, script, tokenizer.special["<|endofmessage|>"])
    n = opts.n
    questions = [f"Problem {i}: what is 1234 * 5678 + 91011, and its remainder mod 7?"
                 for i in range(n)]

    with sandbox.SandboxPool(opts.batch_size) as pool:
        def solve(questions, batch_size):
            return infer.solve(scripted, tokenizer, questions,
                               cfg=infer.GenConfig(batch_size=batch_size), pool=pool)
        solve(questions[:2], 2)  # warm-up
        log(f"infer: solve {n} problems, batch {opts.batch_size}")
        batched, t_batched = timed(lambda: solve(questions, opts.batch_size))
        log(f"infer: solve {n} problems, batch 1 (the baseline; slower)")
        one_by_one, t_one = timed(lambda: solve(questions, 1))
    if ([r["solution"] for r in batched] != [r["solution"] for r in one_by_one]
            or not all("7097663" in r["solution"] and r["n_exec"] == 2 for r in batched)):
        sys.exit("bench infer: batched and one-at-a-time solutions differ, or the code did not run "
                 "twice")
    prompts = [tokenizer.encode(lce_data.prompt_text(q), bos=True) for q in questions]
    log(f"infer: generate {len(script)} tokens x {n} prompts, batch {opts.batch_size} and 1")
    generated_batched, g_batched = timed(
        lambda: infer.generate(net, prompts, len(script), batch_size=opts.batch_size))
    generated_one, g_one = timed(lambda: infer.generate(net, prompts, len(script), batch_size=1))
    same = sum(x == y for x, y in zip(generated_batched, generated_one))
    tokens = sum(r["n_tokens"] for r in batched)
    rows = [(f"`solve`, {n} problems, batch {opts.batch_size} (problems/s)", f"{n / t_batched:.2f}",
             "`solve`, batch 1 (one problem at a time)", f"{n / t_one:.2f}",
             f"**{t_one / t_batched:.1f}x** faster"),
            (f"`generate`, {n} x {len(script)} tokens, batch {opts.batch_size} (tokens/s)",
             f"{n * len(script) / g_batched:,.1f}", "`generate`, batch 1",
             f"{n * len(script) / g_one:,.1f}", f"{g_one / g_batched:.1f}x faster")]
    notes = [f"Model: random init, fp32, dim {args.dim}, {args.n_layers} layers, vocab "
             f"{args.vocab_size} ({n_params(net) / 1e6:.1f}M parameters). `solve`: the real "
             "model's forward pass with its logits overwritten so each problem writes the same "
             f"LCE solution ({len(script)} generated tokens: text, code, text, code, text; "
             f"{tokens} in all), whose two code blocks really run in a `SandboxPool` of "
             f"{opts.batch_size}; batched and batch-1 solutions are identical (checked). "
             "`generate`: the random model's own greedy tokens, no tools; identical outputs at "
             f"both batch sizes: {same}/{n} (a random model's near-tied logits may flip under "
             "batched float arithmetic)."]
    return "infer: batched solve vs one problem at a time (CPU)", rows, notes


# ------------------------------------------------------------- tp: peak memory per rank, TP=2 vs 1
PEAK_RSS_SCRIPT = """
import ctypes, gc, json, os, sys, torch
import model, parallel
ranks = parallel.init_ranks(int(sys.argv[2]))
def kib(field):
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith(field)).split()[1])
model.load_pretrained("tests/fixtures/models/llama2-mha/hf", tp_group=ranks.tp_group)  # warm-up
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


def peak_rss_per_rank(checkpoint, tp):
    """Peak RSS growth of each rank while it loads its part of the checkpoint and runs a forward
    pass."""
    cmd = [sys.executable, "-c", PEAK_RSS_SCRIPT, str(checkpoint), str(tp)]
    if tp > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={tp}", "--no-python", *cmd]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"bench tp: the --tp {tp} run failed:\n{p.stderr[-8000:]}")
    found = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return sorted(found, key=lambda r: r["rank"])


def bench_tp(opts):
    """Peak host memory per rank, loading a checkpoint (HF layout, bf16) with --tp 2 vs TP=1."""
    torch.manual_seed(0)
    args = M.ModelArgs(dim=opts.dim, n_layers=opts.n_layers, n_heads=opts.dim // 128,
                       n_kv_heads=opts.dim // 512, hidden_dim=int(opts.dim * 8 / 3) // 256 * 256,
                       vocab_size=32008)
    net = M.Transformer(args).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"tp: writing a {n_params(net) / 1e6:.0f}M-parameter bf16 checkpoint")
        net.save_pretrained(tmp, max_shard_bytes=2**28)
        del net
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        log("tp: TP=1 (one process), then TP=2 (torchrun, 2 processes)")
        one = peak_rss_per_rank(tmp, 1)[0]
        two = peak_rss_per_rank(tmp, 2)
    reference = torch.tensor(one["logits"])
    error = max((torch.tensor(r["logits"]) - reference).abs().max().item() for r in two)
    if error > 0.02 * reference.abs().max().item():   # bf16: partial sums rounded in another order
        sys.exit(f"bench tp: TP=2 logits differ from TP=1 by {error} ({reference.tolist()})")

    def mb(n):
        return f"{n / 2**20:,.0f} MB"
    rows = [(f"peak RSS growth, TP=2, rank {r['rank']}", mb(r["peak"]), "TP=1 (one process)",
             mb(one["peak"]), f"**{r['peak'] / one['peak']:.2f}x**") for r in two]
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
    return "tp: peak host memory per rank, tensor-parallel loading (CPU, gloo)", rows, notes


# --------------------------------------------------------- gpu: 7B-shape decode roofline and MFU
LLAMA2_7B = M.ModelArgs(dim=4096, n_layers=32, n_heads=32, hidden_dim=11008, vocab_size=32008)


def matmul_tflops(device, n=8192, reps=5):
    """Achievable dense bf16 matmul throughput: the best of `reps` n x n x n products."""
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    x @ y
    return 2 * n ** 3 / min(timed(lambda: x @ y, device)[1] for _ in range(reps)) / 1e12


def training_tflops(model, device, batch, seq, steps):
    """Achieved TFLOP/s of train.forward_backward (the code train.py runs) on a full-length random
    batch: the median of `steps` calls after a warm-up. FLOPs as train.py counts them: 6 per matmul
    weight per token + 12 * layers * dim * T."""
    model.train()
    n_matmul = sum(p.numel() for name, p in model.named_parameters()
                   if "tok_embeddings" not in name)
    ids = torch.randint(0, model.args.vocab_size, (batch, seq), device=device)
    micro_batch = {"input_ids": ids, "labels": ids, "doc_ids": None,
                   "positions": torch.arange(seq, device=device).expand(batch, seq)}
    train.forward_backward(model, [micro_batch], 1, None, n_matmul)  # warm-up (allocates grads)
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=False)
        totals, seconds = timed(
            lambda: train.forward_backward(model, [micro_batch], 1, None, n_matmul), device)
        times.append(seconds)
    return totals["flops"].item() / statistics.median(times) / 1e12


def gpu_figures(args, device, opts, matmul_n=8192):
    """The GPU benchmark proper: a bf16 model of shape `args` on `device`. Device-agnostic, so its
    logic can be exercised on CPU with a tiny shape."""
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = M.Transformer(args).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    size = n_params(model)
    log(f"gpu: {size / 1e9:.2f}B parameters in bf16 on {device}; bandwidth, then "
        f"{opts.new_tokens} decode steps")
    cuda = torch.device(device).type == "cuda"
    bandwidth = copy_bandwidth(device, nbytes=1 << 30 if cuda else 1 << 26)
    prompt = torch.randint(0, args.vocab_size, (opts.prompt_len,)).tolist()
    M.greedy(model, prompt, 2)  # warm-up
    rows = [roofline_row(model, prompt, opts.new_tokens, device, bandwidth)]
    batch = opts.train_batch
    seq = opts.train_seq
    log(f"gpu: training step, {batch} x {seq} tokens, 1 warm-up + {opts.train_steps} timed")
    try:
        achieved = training_tflops(model, device, batch, seq, opts.train_steps)
    except torch.cuda.OutOfMemoryError:
        sys.exit(f"bench gpu: out of memory in the training step at {batch} x {seq}; try "
                 f"--train-seq {seq // 2}")
    del model                                     # its memory, for the matmul below
    measured = f"training step fwd+bwd, {batch} x {seq} tokens (TFLOP/s)"
    peak = opts.peak_tflops
    matmul = matmul_tflops(device, matmul_n)
    rows += [(measured, f"{achieved:,.1f}", "spec-sheet dense bf16 peak", f"{peak:,.0f}",
              f"MFU **{achieved / peak:.1%}**"),
             (measured, f"{achieved:,.1f}", f"bf16 matmul {matmul_n}^3 measured", f"{matmul:,.1f}",
              f"{achieved / matmul:.1%}")]
    notes = [f"Model: Llama-2-7B shape (dim {args.dim}, {args.n_layers} layers, {args.n_heads} "
             f"heads, FFN {args.hidden_dim}, vocab {args.vocab_size}), random init, weights in "
             f"bf16: {size / 1e9:.2f}B parameters. Decode: `model.greedy`, batch 1, prompt "
             f"{opts.prompt_len}, per-step time over {opts.new_tokens} steps; roofline = copy "
             "bandwidth / bytes read per step (all weights but the embedding table, plus the KV "
             f"cache at the average position). Training: median of {opts.train_steps} "
             "`train.forward_backward` calls (bf16 weights and gradients, no optimizer step, no "
             "gradient checkpointing); FLOPs as train.py counts them (6 x matmul parameters x "
             "tokens + attention 12 x layers x dim x T per token)."]
    return rows, notes


def bench_gpu(opts):
    if not torch.cuda.is_available():
        sys.exit("bench gpu: no CUDA device (torch.cuda.is_available() is False; torch "
                 f"{torch.__version__}). Run it on a machine with an NVIDIA GPU and the CUDA "
                 "build of torch.")
    rows, notes = gpu_figures(LLAMA2_7B, "cuda", opts)
    return "gpu: 7B-shape bf16 decode vs bandwidth roofline, training-step MFU", rows, notes


# -------------------------------------------------------------------------------------------- CLI
BENCHMARKS = {"decode": bench_decode, "sandbox": bench_sandbox, "grade": bench_grade,
              "infer": bench_infer, "tp": bench_tp, "gpu": bench_gpu}


def add_flags(parser, **defaults):
    """--name for each name=default, or name=(default, help); the type is the default's."""
    for name, default in defaults.items():
        default, help = default if isinstance(default, tuple) else (default, None)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help=(f"{help} " if help else "") + "(default: %(default)s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--write", action="store_true",
                        help="replace this benchmark's section of BENCHMARKS.md")
    common.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")

    def command(name, summary, **defaults):
        add_flags(commands.add_parser(name, parents=[common], help=summary), **defaults)
    command("decode", "KV-cached decode vs naive loop vs memory roofline", dim=256, n_layers=4,
            n_heads=4, n_kv_heads=2, hidden_dim=704, prompt_len=64, new_tokens=192)
    command("sandbox", "sandbox round trip / new problem / restart",
            iters=(200, "round trips and new problems"),
            restarts=(10, "crash + restarts and cold starts"))
    command("grade", "grading throughput on MATH", limit=(0, "first N MATH problems (0: all 5000)"),
            mismatched=(1000, "mismatched pairs for the slow case"))
    command("infer", "batched solve vs one problem at a time", n=(16, "problems"), batch_size=8,
            dim=256, n_layers=2)
    command("tp", "peak memory per rank loading with --tp 2 vs 1", dim=1024, n_layers=12)
    command("gpu", "CUDA only: 7B-shape bf16 decode roofline and training MFU", prompt_len=128,
            new_tokens=128, train_seq=2048, train_batch=1, train_steps=3,
            peak_tflops=(989.0, "spec dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989, H100 PCIe: "
                                "756, A100: 312)"))
    command("all", "decode, sandbox, grade, infer and tp with their defaults")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    os.chdir(ROOT)
    if opts.cmd != "all":
        return run(opts.cmd, opts)
    for name in [n for n in BENCHMARKS if n != "gpu"]:
        defaults = parser.parse_args([name])  # each benchmark's own defaults, plus the shared flags
        defaults.write = opts.write
        defaults.threads = opts.threads
        start = time.perf_counter()
        run(name, defaults)
        log(f"{name} done in {time.perf_counter() - start:.0f} s")


def run(name, opts):
    """One benchmark, and its section: the load average is read before it starts."""
    load_before = os.getloadavg()
    title, rows, notes = BENCHMARKS[name](opts)
    report(name, title, rows, notes, opts.write, load_before,
           device="cuda" if name == "gpu" else "cpu")


if __name__ == "__main__":
    main()
