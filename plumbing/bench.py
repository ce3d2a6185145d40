"""MathCoder benchmarks, one script: each figure is a ratio to a baseline run in the same process.

Speed claims live here, not in timed tests. Each subcommand prints a small table and, with --write,
replaces its own section of BENCHMARKS.md (machine, exact command, date, load average, figures).

    python -m plumbing.bench decode    # batched solve at batch 1, 16, 64 vs the bytes-read bound
    python -m plumbing.bench sandbox   # sandbox round trip, new problem; vs a cold start
    python -m plumbing.bench grade     # answer grading on MATH vs string compare and SymPy-only
    python -m plumbing.bench infer     # batched solve() (code runs while others decode) vs 1 by 1
    python -m plumbing.bench tp        # peak host memory per rank: loading with --tp 2 vs TP=1
    python -m plumbing.bench all --write    # the CPU benchmarks, BENCHMARKS.md updated
    python -m plumbing.bench gpu --write    # CUDA only: 7B-shape bf16 solve at batch 64 vs the
                                            # bytes-read bound, SDPA kernels, training-step MFU
    python -m plumbing.bench gpu --tiny     # the same code at a tiny shape, CPU too (a check)
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
from eval import load_dataset
from plumbing.storage import atomic_write
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo
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
    command = shlex.join(["python", "-m", "plumbing.bench", *sys.argv[1:]])
    head = ["measured", "value", "baseline (same run)", "baseline value", "ratio"]
    lines = [f"## {title}", "",
             f"- machine: {machine(device)}",
             f"- command (from the repo root): `{command}`",
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


# ------------------------------------------- decode: the eval path vs the bytes each step must read
def copy_bandwidth(device, nbytes=1 << 28, reps=5):
    """Achievable memory bandwidth: the best of `reps` copies of a large buffer (each reads and
    writes nbytes)."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), device)[1] for _ in range(reps))
    return 2 * nbytes / best


class CountBytes(nn.Module):
    """Wraps a model; adds up the bytes each forward call must read from memory: every weight
    once (the embedding table: only its rows, left out) and each sequence's KV cache up to its
    last position, once. Reads the positions on the host (no wait for the device)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.args = model.args
        width = model.output.weight.element_size()
        self.weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                           if name != "tok_embeddings.weight")
        self.kv_per_token = 2 * model.args.n_layers * model.args.n_kv_heads * model.args.head_dim
        self.kv_per_token *= width
        self.bytes = 0

    def new_cache(self, *args, **kwargs):
        return self.model.new_cache(*args, **kwargs)

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None,
                last_only=False):
        self.bytes += self.weights + self.kv_per_token * int((positions.amax(1) + 1).sum())
        return self.model(tokens, positions, doc_ids, cache, rows, last_only)


def never_stopping(model, tokenizer):
    """A random model whose rows for the 8 LCE tokens and EOS in the output layer are zero: a
    logit of 0, below the largest random logit, so it writes every token of every round."""
    with torch.no_grad():
        for token in [*tokenizer.special.values(), tokenizer.eos_id]:
            model.output.weight[token] = 0
    return model


def solve_against_bound(model, tokenizer, batch, new_tokens, bandwidth, device):
    """infer.solve on `batch` problems with ragged prompts, batch_size = batch, one round of
    new_tokens, execution withheld: (tokens/s, fraction of the bytes-read bound, longest context).
    The bound: the bytes every forward call must read (CountBytes) at copy bandwidth."""
    questions = [f"Problem {i}: how many apples are left? " + "Count them again. " * (i % 8 * 4)
                 for i in range(batch)]
    cfg = infer.GenConfig(max_new_tokens=new_tokens, max_total_tokens=new_tokens + 512,
                          max_prompt_tokens=512, max_rounds=1, execute=False, batch_size=batch)
    counted = CountBytes(model)
    results, seconds = timed(lambda: infer.solve(counted, tokenizer, questions, cfg=cfg), device)
    if any(r["n_tokens"] != new_tokens for r in results):
        sys.exit("bench: a problem stopped before its last token")
    longest = max(len(tokenizer.encode(lce_data.prompt_text(q), bos=True)) for q in questions)
    return batch * new_tokens / seconds, counted.bytes / bandwidth / seconds, longest + new_tokens


def bench_decode(opts):
    torch.manual_seed(0)
    tokenizer = Tokenizer(LLAMA_TOKENIZER)
    args = M.ModelArgs(dim=opts.dim, n_layers=opts.n_layers, n_heads=opts.n_heads,
                       n_kv_heads=opts.n_kv_heads, vocab_size=tokenizer.vocab_size,
                       hidden_dim=opts.hidden_dim)
    model = never_stopping(M.Transformer(args).eval(), tokenizer)
    log("decode: copy bandwidth")
    bandwidth = copy_bandwidth("cpu")
    solve_against_bound(model, tokenizer, 2, 8, bandwidth, "cpu")          # warm-up
    batches = [int(b) for b in opts.batches.split(",")]
    rates, rows = {}, []
    for batch in batches:
        log(f"decode: solve, batch {batch}, {opts.new_tokens} tokens each")
        rate, fraction, longest = solve_against_bound(model, tokenizer, batch, opts.new_tokens,
                                                      bandwidth, "cpu")
        rates[batch] = rate
        rows.append((f"`solve`, batch {batch}, contexts to {longest} (tokens/s)", f"{rate:,.1f}",
                     f"bytes-read bound at {bandwidth / 1e9:.1f} GB/s copy bandwidth",
                     f"{rate / fraction:,.1f}", f"**{fraction:.1%}** of the bound"))
    for batch in batches[1:]:
        rows.append((f"`solve`, batch {batch} (tokens/s)", f"{rates[batch]:,.1f}",
                     f"batch {batches[0]}", f"{rates[batches[0]]:,.1f}",
                     f"**{rates[batch] / rates[batches[0]]:.1f}x**"))
    kv = 2 * args.n_layers * args.n_kv_heads * args.head_dim * 4
    notes = [f"Model: random init, fp32, dim {args.dim}, {args.n_layers} layers, {args.n_heads} "
             f"heads ({args.n_kv_heads} KV heads), FFN {args.hidden_dim}, the Llama-2 tokenizer "
             f"(vocab {args.vocab_size}): {n_params(model) / 1e6:.1f}M parameters, "
             f"{kv / 1024:.0f} KiB of KV cache per token (attention-heavy: at batch 16 the cache "
             "read outweighs the weights). Its output rows for the LCE tokens and EOS are zero, so "
             f"each problem writes all {opts.new_tokens} tokens, in one round (execution "
             "withheld); the prompts are ragged. Timed: the whole `infer.solve` call. The bound: "
             "every forward call reads every weight once (not the embedding table) and each "
             "row's KV cache up to its position once, at the bandwidth of a "
             f"{(1 << 28) >> 20} MiB tensor copy measured in the same run. On a CPU part of the "
             "weights can sit in its cache (batch 1 profits) and the 32,008-row output layer is "
             "compute-bound at large batch, so this is a rough bound."]
    return "decode: batched `solve` vs the bytes-read bound (CPU)", rows, notes


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
    differ = [(x, y) for x, y in pairs if x is None or x.strip() != y.strip()]
    written, n_written = rate(grader.is_equiv, differ, "is_equiv, answer written differently")
    n = len(pairs)
    measured = f"`is_equiv`, {n} MATH answers (answers/s)"
    rows = [(measured, f"{full:,.0f}", "plain string equality", f"{string:,.0f}",
             f"{string / full:,.0f}x slower"),
            (measured, f"{full:,.0f}", "`is_equiv` with FAST_PATH = False (every scalar through "
             "SymPy)", f"{slow:,.0f}", f"**{full / slow:.1f}x** faster"),
            (f"`is_equiv`, the {len(differ)} answers not written as their reference (answers/s)",
             f"{written:,.0f}", "`is_equiv`, all matching pairs", f"{full:,.0f}",
             f"{full / written:.1f}x slower"),
            (f"`is_equiv`, {len(shifted)} mismatched pairs (answers/s)", f"{mismatched:,.0f}",
             "`is_equiv`, matching pairs", f"{full:,.0f}", f"{full / mismatched:.1f}x slower")]
    notes = [f"Input: every MATH test problem's reference solution, its extracted answer graded "
             "against the reference answer (the self-consistency run of tests/test_eval.py). "
             f"Equal: string {n_string}/{n}, is_equiv {n_full}/{n}, without fast path "
             f"{n_slow}/{n}; written differently (the same text is equal without reading it): "
             f"{n_written}/{len(differ)} equal; mismatched pairs (solution i vs answer i+1), "
             f"where most pairs reach SymPy: {n_mismatched}/{len(shifted)} equal. SymPy parse "
             "cache cleared before each pass. Without the fast path, answers equal only as "
             "strings (`\\text{odd}`, `\\overline{CD}`, ...) are not matched: the fast path is "
             "also what grades non-numeric answers."]
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
    tokens = sum(r["n_tokens"] for r in batched)
    rows = [(f"`solve`, {n} problems, batch {opts.batch_size} (problems/s)", f"{n / t_batched:.2f}",
             "`solve`, batch 1 (one problem at a time)", f"{n / t_one:.2f}",
             f"**{t_one / t_batched:.1f}x** faster")]
    notes = [f"Model: random init, fp32, dim {args.dim}, {args.n_layers} layers, vocab "
             f"{args.vocab_size} ({n_params(net) / 1e6:.1f}M parameters). `solve`: the real "
             "model's forward pass with its logits overwritten so each problem writes the same "
             f"LCE solution ({len(script)} generated tokens: text, code, text, code, text; "
             f"{tokens} in all), whose two code blocks really run in a `SandboxPool` of "
             f"{opts.batch_size}; batched and batch-1 solutions are identical (checked)."]
    return "infer: batched solve vs one problem at a time (CPU)", rows, notes


# ------------------------------------------------------------- tp: peak memory per rank, TP=2 vs 1
PEAK_RSS_SCRIPT = """
import ctypes, gc, json, os, sys, torch
import model
from plumbing import parallel
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


def synthetic_sft_data(path, n, seq_len, seed=0):
    """n LCE records (text, code, execution, text) of uneven length, from about seq_len/6 to
    seq_len Llama-2 tokens, as real fine-tuning data is: padding then really costs something."""
    rng = torch.Generator().manual_seed(seed)
    words = ["the", "number", "of", "apples", "is", "twice", "what", "remains", "so", "we", "add"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = int(torch.randint(seq_len // 10, seq_len // 2, (1,), generator=rng))
            text = " ".join(words[int(j)] for j in torch.randint(0, len(words), (k,),
                                                                  generator=rng))
            f.write(json.dumps({"id": f"s{i}", "messages": [
                {"role": "user", "content": [{"type": "text", "content": f"Problem {i}?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "content": text}, {"type": "code", "content": "print(6 * 7)"},
                    {"type": "execution", "content": "42"},
                    {"type": "text", "content": "So \\boxed{42}."}]}]}) + "\n")


def fsdp_training_step(args, opts, nproc, device):
    """The real training step: `torchrun --nproc_per_node=nproc train.py` from scratch at model
    shape `args` (bf16 compute on GPU, float32 master weights, FSDP2, AdamW, clipping, the
    gradient reduce-scatter), on synthetic data of uneven lengths; no checkpoint. Reads its
    log.jsonl: median step time, achieved TFLOP/s per GPU on the REAL (unpadded) tokens, and the
    real share of the tokens the step computed. The first step (warm-up) is not counted."""
    with tempfile.TemporaryDirectory() as tmp:
        batch = nproc * opts.train_batch * opts.train_accumulation
        data = os.path.join(tmp, "data.jsonl")
        synthetic_sft_data(data, batch * (opts.train_steps + 1), opts.train_seq)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", os.path.join(ROOT, "train.py"), "--data", data,
               "--out", os.path.join(tmp, "out"), "--tokenizer", LLAMA_TOKENIZER,
               "--dim", str(args.dim), "--n-layers", str(args.n_layers),
               "--n-heads", str(args.n_heads), "--n-kv-heads", str(args.n_kv_heads),
               "--hidden-dim", str(args.hidden_dim), "--batch-size", str(batch),
               "--micro-batch-size", str(opts.train_batch), "--seq-len", str(opts.train_seq),
               "--max-steps", str(opts.train_steps + 1), "--epochs", "1", "--lr", "1e-5",
               "--no-save", "--quiet", *(["--grad-checkpoint"] if opts.train_checkpoint else [])]
        log(f"gpu: {shlex.join(cmd[2:])}")
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"bench gpu: the training run failed:\n{p.stderr[-3000:]}")
        steps = [json.loads(line) for line in
                 open(os.path.join(tmp, "out", "log.jsonl"), encoding="utf-8")][1:]
    real = sum(r["tokens_per_s"] * r["step_s"] for r in steps)
    padded = sum(r["padded_tokens"] for r in steps)
    return dict(step_s=statistics.median(r["step_s"] for r in steps),
                tflops=statistics.median(r["tflops_per_rank"] for r in steps),
                real_share=real / padded, tokens=real / len(steps), batch=batch)


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
    log(f"gpu: {size / 1e9:.2f}B parameters in bf16 on {device}; bandwidth, then solve at batch "
        f"{opts.solve_batch}, {opts.new_tokens} tokens each")
    cuda = torch.device(device).type == "cuda"
    bandwidth = copy_bandwidth(device, nbytes=1 << 30 if cuda else 1 << 26)
    tokenizer = Tokenizer(LLAMA_TOKENIZER)
    never_stopping(model, tokenizer)
    solve_against_bound(model, tokenizer, 2, 4, bandwidth, device)       # warm-up
    rate, fraction, longest = solve_against_bound(model, tokenizer, opts.solve_batch,
                                                  opts.new_tokens, bandwidth, device)
    backends = sdpa_backends(model, device)
    rows = [(f"`solve`, batch {opts.solve_batch}, bf16, contexts to {longest} (tokens/s)",
             f"{rate:,.0f}", f"bytes-read bound at {bandwidth / 1e9:,.0f} GB/s copy bandwidth",
             f"{rate / fraction:,.0f}", f"**{fraction:.1%}** of the bound")]
    del model                                     # its memory, for the training run
    if cuda:
        torch.cuda.empty_cache()
    nproc = opts.train_gpus or (torch.cuda.device_count() if cuda else 2)
    log(f"gpu: training step, torchrun on {nproc} {'GPU' if cuda else 'CPU process'}(es), "
        f"1 warm-up + {opts.train_steps} timed")
    step = fsdp_training_step(args, opts, nproc, device)
    achieved = step["tflops"]
    measured = (f"training step (torchrun FSDP x {nproc}, AdamW), global batch {step['batch']} x "
                f"<= {opts.train_seq}: TFLOP/s per GPU on real tokens")
    peak = opts.peak_tflops
    matmul = matmul_tflops(device, matmul_n)
    rows += [(measured, f"{achieved:,.2f}", "spec-sheet dense bf16 peak", f"{peak:,.0f}",
              f"MFU **{achieved / peak:.1%}**"),
             (measured, f"{achieved:,.2f}", f"bf16 matmul {matmul_n}^3 measured", f"{matmul:,.1f}",
              f"{achieved / matmul:.1%}"),
             ("real tokens per step", f"{step['tokens']:,.0f}", "tokens computed (padded)",
              f"{step['tokens'] / step['real_share']:,.0f}", f"{step['real_share']:.1%}"),
             ("step time (median)", fmt_time(step["step_s"]), "", "", "")]
    shape = "Llama-2-7B" if args.dim == 4096 else "a tiny"
    notes = [f"Model: {shape} shape (dim {args.dim}, {args.n_layers} layers, {args.n_heads} "
             f"heads, FFN {args.hidden_dim}, vocab {args.vocab_size}), random init, weights in "
             f"bf16: {size / 1e9:.2f}B parameters. Decode: the eval path, `infer.solve` on "
             f"{opts.solve_batch} ragged prompts, one round of {opts.new_tokens} tokens each "
             "(execution withheld; the output rows of the LCE tokens and EOS zeroed so no "
             "problem stops early); bound = copy bandwidth / bytes every forward call must read "
             "(all weights but the embedding table, each row's KV cache up to its position). "
             f"SDPA backends taken (torch.profiler): {backends}. Training: `torchrun train.py` "
             "itself (FSDP2, bf16 compute, float32 master weights, fp32 gradient reduce-scatter, "
             f"AdamW, clipping; micro-batch {opts.train_batch}, {opts.train_accumulation} "
             f"accumulation steps, activation checkpointing "
             f"{'on' if opts.train_checkpoint else 'off'}) on synthetic LCE records of uneven "
             "length; median of its logged steps after the first; FLOPs as train.py counts "
             "them, on the real (unpadded) tokens only: 6 x matmul parameters per token + "
             "attention 12 x layers x dim x length per token."]
    return rows, notes


def sdpa_backends(model, device) -> dict:
    """Which SDPA kernel (aten op) a fresh prefill and a ragged decode step take (profiled)."""
    cache = model.new_cache(4, 512)
    seen = {}
    calls = {"prefill": (torch.randint(3, 1000, (4, 64)), torch.arange(64).expand(4, 64)),
             "decode step": (torch.randint(3, 1000, (4, 1)),
                             torch.tensor([[99], [199], [9], [64]]))}
    for name, (tokens, positions) in calls.items():
        with torch.no_grad(), torch.profiler.profile() as prof:
            model(tokens.to(device), positions, cache=cache, last_only=True)
        seen[name] = sorted({e.name for e in prof.events() if "scaled_dot_product" in e.name
                             and e.name != "aten::scaled_dot_product_attention"})
    return seen


TINY = M.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=32008)


def bench_gpu(opts):
    if opts.tiny:  # the same code at a tiny shape on the CPU: a check of the path, no figure
        opts.write = False
        opts.solve_batch, opts.new_tokens, opts.train_seq = 4, 16, 64
        rows, notes = gpu_figures(TINY, "cpu", opts, matmul_n=256)
        return "gpu code path at a tiny shape on the CPU (not a GPU figure)", rows, notes
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
        if isinstance(default, bool):
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=help)
            continue
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
    command("decode", "batched solve at batch 1, 16, 64 vs the bytes-read bound", dim=256,
            n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=64, new_tokens=1536,
            batches=("1,16,64", "batch sizes; the first is the baseline"))
    command("sandbox", "sandbox round trip / new problem / restart",
            iters=(200, "round trips and new problems"),
            restarts=(10, "crash + restarts and cold starts"))
    command("grade", "grading throughput on MATH", limit=(0, "first N MATH problems (0: all 5000)"),
            mismatched=(1000, "mismatched pairs for the slow case"))
    command("infer", "batched solve vs one problem at a time", n=(32, "problems"), batch_size=32,
            dim=512, n_layers=4)
    command("tp", "peak memory per rank loading with --tp 2 vs 1", dim=1024, n_layers=12)
    command("gpu", "CUDA only: 7B-shape bf16 solve at batch 64 vs the bytes-read bound, SDPA "
            "backends, the real FSDP training step's MFU (--tiny 1: the same code at a tiny "
            "shape on the CPU)",
            solve_batch=64, new_tokens=1024, train_seq=2048, train_batch=1, train_steps=3,
            train_accumulation=(2, "micro-batches per step and GPU"),
            train_gpus=(0, "GPUs for the training step (0: all)"),
            train_checkpoint=(1, "activation checkpointing in the training step (1 on, 0 off)"),
            tiny=(0, "1: run the same code on the CPU at a tiny shape (a check, not a figure; "
                     "nothing written)"),
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
           device="cuda" if name == "gpu" and not opts.tiny else "cpu")


if __name__ == "__main__":
    main()
