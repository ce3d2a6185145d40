"""
The data recipe's commands with a real teacher, served: what recipe.py's steps need to run against
a model behind an OpenAI-compatible chat endpoint (plumbing/server_client.py; docs/serving.md), not
the method itself (that is recipe.py: what is asked, and what is kept).

  * the teacher: a `python` tool whose calls run in this project's sandbox, one session per
    attempt (as GPT-4 Code Interpreter keeps its state): teacher_attempt turns the chat into LCE
    blocks;
  * long runs: every problem / prompt on `concurrency` threads (run_all), one status line with
    rate and ETA (Progress), resumable (teach_all logs each attempt to OUT.attempts.jsonl,
    teacher_generator keeps each reply in a cache), a fatal server error stopping the run in one
    line;
  * input and output: problems read from JSONL (read_problems), new problems checked against the
    test sets of data/eval/ (keep_unseen), MathCoder-Initial loaded (load_initial), and the command
    line of `python recipe.py teach / interpolate / distill` (parse_args).
"""
import argparse
import glob
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import infer
import lce_data
import sandbox
from plumbing import storage
from plumbing.server_client import ServerError, add_server_args

# --------------------------------------------------------------------------------------------------
# The teacher: a model behind a chat endpoint, with a `python` tool
TEACHER_SYSTEM = (  # what the teacher is told; the LCE record keeps lce_data.DEFAULT_SYSTEM
    "Solve the math problem step by step. You have a `python` tool: it runs your code in a "
    "Jupyter-like session that keeps variables between calls, and returns what the code prints "
    "and the value of its last line. Use it for the calculations. Put the final answer in "
    "\\boxed{}.")
PYTHON_TOOL = {"type": "function", "function": {
    "name": "python",
    "description": "Run Python code in a stateful session (variables persist between calls). "
                   "Returns what it prints and the value of its last expression.",
    "parameters": {"type": "object", "required": ["code"],
                   "properties": {"code": {"type": "string", "description": "the code to run"}}}}}


@dataclass
class TeachConfig:
    model: str                      # the teacher's name on the server
    temperature: float = 0.7        # samples after a wrong one must differ: not greedy
    max_tokens: int = 2048          # per reply
    max_calls: int = 16             # tool calls per attempt (the authors' loop: 16 rounds)
    dataset: str | None = None      # the grader's protocol for the references (gsm8k, math, ...)


def tool_code(call):
    """The code of an OpenAI tool call to `python`, or None if it is not one. Arguments are JSON
    {"code": ...}; a few servers send the bare code instead, which is taken as it is."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or function.get("name") != "python":
        return None
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:   # bare code, or JSON cut short (never run that)
        return None if arguments.lstrip().startswith("{") else arguments or None
    code = parsed.get("code") if isinstance(parsed, dict) else None
    return code if isinstance(code, str) and code.strip() else None


def teacher_attempt(server, cfg, question, sample, run_code, what="problem") -> dict:
    """One attempt of the teacher at `question`: chat until it answers without calling the tool.
    Each tool call's code runs with run_code(code) -> output, in one session for the attempt; the
    reply's text, then each call's code and output, become LCE blocks in that order. Returns
    {"blocks": [(type, content), ...], "stop": "final" | "length" | "max_calls" | "bad_tool_call"
    | "no_final_text", "n_calls"}. Server failures raise ServerError."""
    messages = [{"role": "system", "content": TEACHER_SYSTEM},
                {"role": "user", "content": question}]
    blocks = []
    n_calls = 0
    while True:
        reply = server.chat({"model": cfg.model, "messages": messages, "tools": [PYTHON_TOOL],
                             "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                             "seed": sample}, what)
        try:
            choice = reply["choices"][0]
            message = choice["message"]
            text = (message.get("content") or "").strip()
            calls = message.get("tool_calls") or []
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ServerError(f"{what}: the chat reply has no choices[0].message") from None
        if text:
            blocks.append(("text", text))
        if choice.get("finish_reason") == "length":     # cut by max_tokens, a tool call too
            return {"blocks": blocks, "stop": "length", "n_calls": n_calls}
        if not calls:    # an LCE solution ends on a text block, the answer in it
            return {"blocks": blocks, "stop": "final" if text else "no_final_text",
                    "n_calls": n_calls}
        messages.append({"role": "assistant", "content": message.get("content"),
                         "tool_calls": calls})
        for call in calls:
            code = tool_code(call)
            if code is None:
                return {"blocks": blocks, "stop": "bad_tool_call", "n_calls": n_calls}
            if n_calls == cfg.max_calls:
                return {"blocks": blocks, "stop": "max_calls", "n_calls": n_calls}
            output = run_code(code)
            n_calls += 1
            blocks += [("code", code), ("execution", output)]
            messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": output})


def read_problems(path, need_answer=False) -> list[dict]:
    """Problems from JSONL: {"id", "question"[, "answer"]}. The question is "question" or the user
    message's text (messages schema), the answer "answer" or ground_truth.answer, the id "id"
    (default: FILE:LINE)."""
    problems = []
    for n, record in storage.numbered_jsonl(path):
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        question = record.get("question") or lce_data.message_text(record, "user")
        truth = record.get("ground_truth")
        answer = record.get("answer", truth.get("answer") if isinstance(truth, dict) else None)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}:{n}: field question: missing (nor a user message)")
        if need_answer and answer is None:
            raise ValueError(f"{path}:{n}: field answer: missing (nor ground_truth.answer)")
        problem = {"id": str(record.get("id", f"{os.path.basename(path)}:{n}")),
                   "question": question}
        if answer is not None:
            problem["answer"] = str(answer)
        problems.append(problem)
    ids = Counter(p["id"] for p in problems)
    twice = [i for i, count in ids.items() if count > 1]
    if twice:
        raise ValueError(f"{path}: field id: {twice[0]!r} appears {ids[twice[0]]} times")
    return problems


def attempts_path(out_path) -> str:
    """Where teach logs every attempt (d0.jsonl -> d0.attempts.jsonl)."""
    return re.sub(r"(\.jsonl)?$", ".attempts.jsonl", os.fspath(out_path), count=1)


class Progress:
    """One status line on stderr: problems done of all, counts, rate, ETA."""

    def __init__(self, total, name):
        self.total = total
        self.name = name
        self.done = 0
        self.start = time.time()

    def step(self, counts):
        self.done += 1
        seconds = time.time() - self.start
        rate = self.done / max(seconds, 1e-9)
        shown = "  ".join(f"{k} {v}" for k, v in counts.items())
        print(f"\r{self.name}: {self.done}/{self.total}  {shown}  {rate:.2f}/s  "
              f"ETA {(self.total - self.done) / rate:.0f}s   ", end="", file=sys.stderr,
              flush=True)


def run_all(jobs, work, concurrency):
    """work(job) for every job on `concurrency` threads. A fatal ServerError (no server, a bad key)
    stops them all and is raised: every later request would fail the same way."""
    stop = threading.Event()

    def guarded(job):
        if stop.is_set():
            return
        try:
            work(job)
        except ServerError as e:
            if e.fatal:
                stop.set()
            raise
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
        for future in as_completed(futures):
            error = future.exception()
            if isinstance(error, ServerError) and error.fatal:
                pool.shutdown(wait=True, cancel_futures=True)
                raise error
            if error is not None:
                raise error


def teach_all(server, cfg, problems, out_path, judge, samples=1, concurrency=8,
              pool=None) -> dict:
    """The teacher solves every problem not yet kept in out_path, up to `samples` attempts each
    (counted over runs: a resumed run goes on where the last one stopped), stopping at the first
    kept one. judge(problem, attempt, cfg) -> (outcome: "kept" | "wrong" | "unfinished", the
    record to keep or None, the answer read): recipe.judge_attempt. Appends kept records to
    out_path and every attempt to attempts_path(out_path).
    A server failure on a problem is one line on stderr; the problem is left for the next run.
    pool: a sandbox.SandboxPool (default: one of `concurrency` sandboxes, made here). Returns
    the counts of this run's attempts (kept, wrong, unfinished) and problems (failed, skipped)."""
    log_path = attempts_path(out_path)
    kept = storage.done_keys(out_path, "id")   # torn last lines cut off
    storage.done_keys(log_path, "id")
    tried = Counter(r["id"] for r in storage.read_jsonl(log_path)) if os.path.exists(
        log_path) else Counter()
    todo = [p for p in problems if p["id"] not in kept and tried[p["id"]] < samples]
    counts = Counter(kept=0, wrong=0, unfinished=0, failed=0)
    counts["skipped"] = len(problems) - len(todo)
    print(f"teach: {len(problems)} problems, {len(kept)} already kept in {out_path}, "
          f"{counts['skipped']} skipped (kept, or {samples} attempts made), solving {len(todo)}",
          file=sys.stderr)
    lock = threading.Lock()
    progress = Progress(len(todo), "teach")
    own_pool = pool is None and bool(todo)
    if own_pool:
        pool = sandbox.SandboxPool(max(1, min(concurrency, len(todo))))

    def solve_problem(problem):
        outcome = None
        try:
            for j in range(tried[problem["id"]], samples):
                session = []           # the attempt's sandbox, taken at its first tool call

                def run_code(code):
                    if not session:
                        session.append(pool.acquire())
                    return infer.run_code(session[0], code)
                try:
                    attempt = teacher_attempt(server, cfg, problem["question"], j, run_code,
                                              f"problem {problem['id']}")
                finally:
                    if session:
                        pool.release(session[0])
                outcome, record, pred = judge(problem, attempt, cfg)
                with lock:
                    if record is not None:
                        storage.append_jsonl(out, record)
                    storage.append_jsonl(log, {"id": problem["id"], "sample": j,
                                               "outcome": outcome, "stop": attempt["stop"],
                                               "pred": pred, "n_calls": attempt["n_calls"]})
                    counts[outcome] += 1
                if outcome == "kept":
                    break
        except ServerError as e:
            if e.fatal:        # no server, a bad key: the run stops with this one line
                raise
            with lock:
                counts["failed"] += 1
            print(f"\n{e}", file=sys.stderr, flush=True)  # one line; a resumed run tries again
        with lock:
            progress.step({k: counts[k] for k in ("kept", "wrong", "unfinished", "failed")})
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    try:
        with open(out_path, "a", encoding="utf-8") as out, \
                open(log_path, "a", encoding="utf-8") as log:
            run_all(todo, solve_problem, concurrency)
    finally:
        if own_pool:
            pool.close()
    if todo:
        print(file=sys.stderr)
    return dict(counts, problems=len(problems))


# --------------------------------------------------------------------------------------------------
# Interpolation through the chat endpoint; what may enter the data
def teacher_generator(server, model, cache_path, temperature=0.7, max_tokens=1024,
                      concurrency=8):
    """generate(prompts) -> completions for interpolate_problems: each prompt one user message to
    the chat endpoint. Resumable: every completion is appended to cache_path ({"index", "prompt",
    "text"}) and not asked again; a prompt the server failed on gives "" (left out) and one line on
    stderr, and is asked again by the next run."""
    def generate(prompts):
        done = {}
        storage.done_keys(cache_path, "index")   # a torn last line cut off
        if os.path.exists(cache_path):
            for n, r in storage.numbered_jsonl(cache_path):
                if r["index"] >= len(prompts) or r["prompt"] != prompts[r["index"]]:
                    raise ValueError(f"{cache_path}:{n}: made from other prompts (other --seed, "
                                     "--easy or --hard?): remove it to start over")
                done[r["index"]] = r["text"]
        todo = [i for i in range(len(prompts)) if i not in done]
        print(f"interpolate: {len(prompts)} prompts, {len(done)} already answered in "
              f"{cache_path}, asking {len(todo)}", file=sys.stderr)
        lock = threading.Lock()
        progress = Progress(len(todo), "interpolate")
        counts = Counter(answered=0, failed=0)

        def ask(i):
            try:
                reply = server.chat({"model": model, "temperature": temperature,
                                     "max_tokens": max_tokens, "seed": i,
                                     "messages": [{"role": "user", "content": prompts[i]}]},
                                    f"prompt {i}")
                text = reply["choices"][0]["message"].get("content") or ""
            except ServerError as e:
                if e.fatal:
                    raise
                print(f"\n{e}", file=sys.stderr, flush=True)
                text = None
            except (KeyError, IndexError, TypeError, AttributeError):
                print(f"\nprompt {i}: the chat reply has no choices[0].message", file=sys.stderr)
                text = None
            with lock:
                if text is not None:
                    done[i] = text
                    storage.append_jsonl(cache, {"index": i, "prompt": prompts[i], "text": text})
                counts["answered" if text is not None else "failed"] += 1
                progress.step(counts)
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with open(cache_path, "a", encoding="utf-8") as cache:
            run_all(todo, ask, concurrency)
        if todo:
            print(file=sys.stderr)
        return [done.get(i, "") for i in range(len(prompts))]
    return generate


EVAL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        "eval")


def normalized(question: str) -> str:
    """A question's text for matching: lower case, every run of characters other than letters and
    digits one space ("Find $x^2$." and "find x^2" match)."""
    return re.sub(r"[^0-9a-z]+", " ", question.lower()).strip()


def test_questions(data_dir=EVAL_DIR) -> set[str]:
    """The normalized question of every test record in data_dir (*_test_post.jsonl)."""
    out = set()
    for path in sorted(glob.glob(os.path.join(data_dir, "*_test_post.jsonl"))):
        for _, record in storage.numbered_jsonl(path):
            question = lce_data.message_text(record, "user")
            if question:
                out.add(normalized(question))
    return out


def keep_unseen(problems, test_set, seen=()) -> tuple[list[dict], dict]:
    """The new problems whose normalized question is no test question, no seed problem (`seen`:
    normalized questions, e.g. the examples themselves) and no earlier new problem.
    Returns (kept, counts)."""
    seen = set(seen)
    kept = []
    counts = Counter(written=len(problems), kept=0, in_test_set=0, repeat=0)
    for problem in problems:
        key = normalized(problem["question"])
        if key in test_set:
            counts["in_test_set"] += 1     # no test question may enter the data
        elif key in seen or not key:
            counts["repeat"] += 1
        else:
            seen.add(key)
            kept.append(problem)
            counts["kept"] += 1
    return kept, dict(counts)


def load_initial(path, device=None):
    """(model, tokenizer) of the checkpoint directory `path`."""
    import torch                         # lazy: only distill loads a model
    from model import Transformer
    from tokenizer import Tokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Transformer.from_pretrained(path, device).eval(), Tokenizer.from_checkpoint(path)


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    """The command line of recipe.py."""
    ap = argparse.ArgumentParser(prog="recipe.py", description="The data recipe with a teacher "
                                 "behind an "
                                 "OpenAI-compatible server: D0 (teach), D1's new problems "
                                 "(interpolate) and their solutions (distill).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teach", help="D0: the teacher solves training problems with a python "
                       "tool; kept where its answer equals the reference")
    i = sub.add_parser("interpolate", help="D1's new problems between an easy and a hard one")
    for p in (t, i):
        p.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8000")
        p.add_argument("--model", required=True, help="the teacher's model name on the server")
        p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
        p.add_argument("--temperature", type=float, default=0.7)
        p.add_argument("--max-tokens", type=int, default=2048, help="per reply")
        add_server_args(p)
    t.add_argument("--data", required=True, help="JSONL: question (or a user message), answer "
                   "(or ground_truth.answer), id")
    t.add_argument("--out", required=True, help="kept records (messages schema); resumes; every "
                   "attempt is logged beside it (OUT.attempts.jsonl)")
    t.add_argument("--samples", type=int, default=1, help="attempts per problem until one is "
                   "kept, over all runs (default 1)")
    t.add_argument("--max-calls", type=int, default=16, help="tool calls per attempt")
    t.add_argument("--dataset", help="grading protocol of the references (gsm8k, math, ...)")
    t.add_argument("--limit", type=int, help="only the first N problems")
    i.add_argument("--easy", required=True, help="JSONL of easy problems (GSM8K): question, id")
    i.add_argument("--hard", required=True, help="JSONL of hard problems (MATH): question, id")
    i.add_argument("--n", type=int, required=True, help="prompts (each pairs an easy and a hard)")
    i.add_argument("--seed", type=int, default=0, help="which pairs")
    i.add_argument("--out", required=True, help="the new problems (JSONL: id, question, easy_id, "
                   "hard_id); the teacher's replies are kept in OUT.replies.jsonl (resumes)")
    i.add_argument("--data-dir", default=EVAL_DIR, help="test sets no new problem may repeat")
    d = sub.add_parser("distill", help="D1: MathCoder-Initial solves the new problems k times; "
                       "kept where the answers agree")
    d.add_argument("--problems", required=True, help="JSONL of new problems (question)")
    d.add_argument("--out", required=True, help="D1 records (messages schema)")
    for p in (i, d):
        p.add_argument("--initial", required=p is d, help="MathCoder-Initial's checkpoint "
                       "(interpolate: then distill the new problems)")
        p.add_argument("--k", type=int, default=3, help="samples per problem that must agree")
        p.add_argument("--distill-temperature", type=float, default=0.7)
        p.add_argument("--device", help="default: cuda when available, else cpu")
        p.add_argument("--force-new", action="store_true", help="delete the samples drawn so far "
                       "beside the D1 file (D1.samples.jsonl: resumes) and start over")
    i.add_argument("--d1", help="with --initial: where D1's records go")
    args = ap.parse_args(argv)
    if args.cmd == "interpolate" and bool(args.initial) != bool(args.d1):
        ap.error("--initial and --d1 go together")
    return args

