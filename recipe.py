"""
How MathCodeInstruct was built (paper §2, docs/method.md §2): the data recipe.

D0, the seed data, is GSM8K and MATH training problems solved in LCE form by GPT-4 Code Interpreter;
a model trained on it is MathCoder-Initial. D1 adds problems of a difficulty between the two:
  1. problem interpolation: GPT-4 is shown one easy (GSM8K) and one hard (MATH) problem and writes a
     new one "harder than Example 1 and simpler than Example 2" (interpolation_prompts and
     interpolate_problems; `generate` is GPT-4 in the paper, any model or program here);
  2. self-distillation: MathCoder-Initial solves each new problem k times, and a solution is kept
     only where the k answers agree: there is no reference answer to check it against
     (self_distill).
The released models train on D0 + D1 (about 49k + 31k solutions, recalled).

`python tiny_run.py` runs the whole recipe in miniature, on the synthetic families of
problems below (family_problems: easy and hard); synthetic_interpolator plays GPT-4's part, a
program that writes the new problem from the two examples it finds in the prompt.

With a real teacher behind an OpenAI-compatible server (plumbing/server_client.py; docs/serving.md):

    python recipe.py teach --server URL --model NAME --data train.jsonl --out d0.jsonl
    python recipe.py interpolate --server URL --model NAME --easy gsm8k_train.jsonl \
        --hard math_train.jsonl --n 1000 --out new.jsonl [--initial CKPT --d1 d1.jsonl]
    python recipe.py distill --initial CKPT --problems new.jsonl --out d1.jsonl

teach: the teacher solves each problem with a `python` tool that runs in this project's sandbox
(one session per problem: state kept across its calls, as GPT-4 Code Interpreter keeps it); the
transcript becomes an LCE solution, kept only where its \\boxed{} answer equals the reference under
the strict grader (as the paper kept GPT-4's solutions). interpolate: the prompt below through the
chat endpoint; no test question of data/eval/ may enter the data. distill: self_distill with
MathCoder-Initial, a local checkpoint.
"""
import argparse
import glob
import json
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import grader
import infer
import lce_data
import sandbox
from plumbing import storage
from plumbing.server_client import ServerError, add_server_args, server_from_args

INTERPOLATION_PROMPT = (  # the paper's prompt to GPT-4 (Appendix), recalled: not verbatim
    'Please create a new problem, following the given "Example 1" and "Example 2". "Example 1" is '
    'an easy problem and "Example 2" is much more difficult than "Example 1". The new problem '
    'should be harder than "Example 1" and simpler than "Example 2".\n\nExample 1: {easy}\n\n'
    'Example 2: {hard}\n\nNew problem:')


def interpolation_prompts(easy, hard, n, seed=0) -> list[dict]:
    """n prompts, each pairing a random easy problem (GSM8K) with a random hard one (MATH). easy and
    hard: lists of {"id", "question"}."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        e = rng.choice(easy)
        h = rng.choice(hard)
        prompt = INTERPOLATION_PROMPT.format(easy=e["question"].strip(),
                                             hard=h["question"].strip())
        out.append({"prompt": prompt, "easy_id": e.get("id"), "hard_id": h.get("id")})
    return out


def interpolate_problems(easy, hard, n, generate, seed=0) -> list[dict]:
    """D1's new problems: generate(list of prompts) -> list of completions. Completions are
    stripped of a leading "New problem:"; empty ones and repeats are left out."""
    prompts = interpolation_prompts(easy, hard, n, seed)
    seen = set()
    out = []
    for p, text in zip(prompts, generate([p["prompt"] for p in prompts])):
        question = re.sub(r"^\s*(New problem:)?\s*", "", text or "").strip()
        if question and question not in seen:
            seen.add(question)
            out.append({"question": question, "easy_id": p["easy_id"], "hard_id": p["hard_id"]})
    return out


def self_distill(questions, solve, k=3):
    """Keep a solution of each question only when k sampled solutions agree on the final answer.
    solve(questions, j) -> the j-th sample (j = 0..k-1): a list of dicts with "solution" (the
    assistant's LCE string) and optionally "messages". Each j must draw different samples, e.g.
    lambda qs, j: infer.solve(model, tok, qs, cfg=GenConfig(temperature=0.7, seed=j)).
    A solution that did not finish (no <|endofmessage|>: cut by a length or round limit) never
    counts.
    Returns (records, stats); each record's ground_truth.answer is the agreed answer."""
    samples = [solve(list(questions), j) for j in range(k)]
    records = []
    stats = {"questions": len(questions), "kept": 0, "unfinished": 0, "no_answer": 0, "disagree": 0}
    for i, question in enumerate(questions):
        outs = [sample[i] for sample in samples]
        answers = [grader.extract_answer(o["solution"]) for o in outs]
        if not all(o["solution"].endswith("<|endofmessage|>") for o in outs):
            stats["unfinished"] += 1
        elif any(a is None for a in answers):
            stats["no_answer"] += 1
        elif not all(grader.is_equiv(a, answers[0]) for a in answers[1:]):
            stats["disagree"] += 1
        else:
            if "messages" in outs[0]:
                record = {"messages": outs[0]["messages"]}
            else:
                blocks = lce_data.parse_assistant(outs[0]["solution"])
                record = lce_data.make_record(question, blocks)
            record["ground_truth"] = {"answer": answers[0]}
            records.append(lce_data.normalize_record(record, f"self_distill question {i}"))
            stats["kept"] += 1
    return records, stats


# --------------------------------------------------------------------------------------------------
# The recipe in miniature (tiny_run.py, stage 7): synthetic problems of a known difficulty. As in
# lce_data.TEMPLATES the arithmetic is hard in one's head and the code trivial. A problem is a story
# told in steps, each step one sentence of the question and one line of the code: a count (a
# product, or a plain number), changes to it (some lost, some gained), then the question (how many
# now, how many full groups, how many left over).
STORIES = [  # name, start as a product (a x b), plain start (a), noun, lose, gain, grouping, unit
    ("factory", "A factory fills {0} boxes with {1} bottles each.", "A factory has {0} bottles.",
     "bottles", "break", "are delivered", "packed into crates", "crates"),
    ("farm", "A farm picks {0} baskets of {1} apples.", "A farm has {0} apples.", "apples",
     "go bad", "are bought", "put into bags", "bags"),
    ("school", "A school has {0} classes of {1} students.", "A school has {0} students.",
     "students", "leave", "join", "split into teams", "teams"),
    ("library", "A library has {0} shelves of {1} books.", "A library has {0} books.", "books",
     "are lost", "are donated", "packed into boxes", "boxes"),
    ("bakery", "A bakery buys {0} trays of {1} eggs.", "A bakery has {0} eggs.", "eggs", "crack",
     "are delivered", "packed into cartons", "cartons"),
    ("shop", "A shop orders {0} packs of {1} pens.", "A shop has {0} pens.", "pens", "are sold",
     "arrive", "bundled in sets", "sets"),
    ("port", "A port unloads {0} ships of {1} containers.", "A port has {0} containers.",
     "containers", "are shipped out", "arrive", "loaded onto trains", "trains"),
    ("garden", "A garden has {0} rows of {1} tulips.", "A garden has {0} tulips.", "tulips",
     "wilt", "are planted", "tied into bunches", "bunches"),
    ("hotel", "A hotel has {0} floors of {1} towels.", "A hotel has {0} towels.", "towels",
     "are torn", "are bought", "folded into stacks", "stacks"),
    ("mint", "A mint strikes {0} batches of {1} coins.", "A mint has {0} coins.", "coins",
     "are melted", "are struck", "wrapped into rolls", "rolls"),
    ("zoo", "A zoo orders {0} crates of {1} bananas.", "A zoo has {0} bananas.", "bananas", "rot",
     "are donated", "shared into buckets", "buckets"),
    ("press", "A press prints {0} runs of {1} posters.", "A press has {0} posters.", "posters",
     "smudge", "are printed", "rolled into tubes", "tubes"),
    ("depot", "A depot stores {0} pallets of {1} tires.", "A depot has {0} tires.", "tires",
     "burst", "arrive", "stacked in piles", "piles"),
    ("camp", "A camp buys {0} cases of {1} candles.", "A camp has {0} candles.", "candles", "melt",
     "are bought", "put into tins", "tins"),
    ("lab", "A lab orders {0} kits of {1} tubes.", "A lab has {0} tubes.", "tubes", "crack",
     "are delivered", "put into racks", "racks"),
    ("mill", "A mill weaves {0} looms of {1} scarves.", "A mill has {0} scarves.", "scarves",
     "tear", "are woven", "packed into parcels", "parcels"),
    ("studio", "A studio bakes {0} kilns of {1} mugs.", "A studio has {0} mugs.", "mugs", "chip",
     "are glazed", "boxed in sets", "sets"),
    ("club", "A club has {0} teams of {1} members.", "A club has {0} members.", "members", "quit",
     "sign up", "split into squads", "squads"),
    ("orchard", "An orchard picks {0} crates of {1} pears.", "An orchard has {0} pears.", "pears",
     "bruise", "are picked", "put into boxes", "boxes"),
    ("cinema", "A cinema prints {0} rolls of {1} tickets.", "A cinema has {0} tickets.",
     "tickets", "are voided", "are printed", "clipped into books", "books"),
]
STEPS = {  # op: (sentence (None: the story's start), line of code, numbers it draws)
    "product": (None, "{noun} = {0} * {1}", lambda r: [r.randint(15, 99), r.randint(15, 99)]),
    "plain": (None, "{noun} = {0}", lambda r: [r.randint(300, 9999)]),  # > 3 x 99: never < 0
    "minus": ("{0} of the {noun} {lose}.", "{noun} = {noun} - {0}", lambda r: [r.randint(1, 99)]),
    "plus": ("{0} more {noun} {gain}.", "{noun} = {noun} + {0}", lambda r: [r.randint(1, 99)]),
    "count": ("How many {noun} are there now?", "print({noun})", lambda r: []),
    "div": ("The {noun} are {grouping} of {0}. How many full {unit} are there?",
            "{unit} = {noun} // {0}\nprint({unit})", lambda r: [r.randint(3, 47)]),
    "mod": ("The {noun} are {grouping} of {0}. How many {noun} are left over?",
            "left = {noun} % {0}\nprint(left)", lambda r: [r.randint(3, 47)]),
}
VALUE = {"product": lambda v, n: n[0] * n[1], "plain": lambda v, n: n[0],
         "minus": lambda v, n: v - n[0], "plus": lambda v, n: v + n[0],
         "count": lambda v, n: v, "div": lambda v, n: v // n[0], "mod": lambda v, n: v % n[0]}
# Difficulty: how many changes the count goes through, and whether the question groups it. As
# GSM8K and MATH are in the paper's seed data D0 (§2), two families: "easy" problems have no
# change, or one change and "how many now?"; "hard" ones have two or three changes. Problems of
# the "intermediate" shape (one change, then a grouping question) are never drawn for D0:
# synthetic_interpolator below writes them from one easy and one hard example, as GPT-4 does.
SHAPES = {  # family: [(changes, the questions it may ask), ...]: one drawn per problem
    "easy": [(0, ("count", "div", "mod")), (1, ("count",))],
    "hard": [(2, ("count", "div", "mod")), (3, ("count", "div", "mod"))],
    "intermediate": [(1, ("div", "mod"))],
}
CHANGE_OPS = ("minus", "plus")
GROUP_OPS = ("div", "mod")


def family_problem(story, steps, family, id=None) -> dict:
    """A story and its steps [(op, numbers), ...] -> question, code and answer (computed here, apart
    from the code, which the sandbox runs later)."""
    fields = ("product", "plain", "noun", "lose", "gain", "grouping", "unit")
    words = dict(zip(fields, next(s[1:] for s in STORIES if s[0] == story)))
    sentences = []
    lines = []
    value = None
    for op, numbers in steps:
        sentence, line, _ = STEPS[op]
        sentences.append((sentence or words[op]).format(*numbers, **words))
        lines.append(line.format(*numbers, **words))
        value = VALUE[op](value, numbers)
    return {"id": id, "question": " ".join(sentences), "answer": str(value),
            "code": "\n".join(lines), "template": "-".join(op for op, _ in steps),
            "family": family, "story": story, "steps": [[op, list(n)] for op, n in steps]}


def family_problems(n, seed=0, families=("easy", "hard")) -> list[dict]:
    """n distinct problems (no question twice), the families in turn, deterministic in seed."""
    rng = random.Random(seed)
    seen = set()
    out = []
    while len(out) < n:
        family = families[len(out) % len(families)]
        changes, ends = rng.choice(SHAPES[family])
        start = rng.choice(("product", "plain"))
        if start == "plain" and not changes:   # "how many now?" of a number just given
            ends = GROUP_OPS
        ops = [start] + [rng.choice(CHANGE_OPS) for _ in range(changes)] + [rng.choice(ends)]
        steps = [(op, STEPS[op][2](rng)) for op in ops]
        story = rng.choice(STORIES)[0]
        problem = family_problem(story, steps, family, f"{family}-{seed}-{len(out)}")
        if problem["question"] not in seen:
            seen.add(problem["question"])
            out.append(problem)
    return out


def family_split(n_train, n_test, seed=0):
    """(train, test) problems: drawn together, so no question is in both."""
    problems = family_problems(n_train + n_test, seed)
    return problems[n_test:], problems[:n_test]


# --------------------------------------------------------------------------------------------------
# The tiny run's stand-in for GPT-4
def synthetic_interpolate(easy, hard):
    """A STAND-IN FOR GPT-4 in problem interpolation: from an easy and a hard synthetic problem
    (family_problems), one harder than the first and simpler than the second, of the
    "intermediate" shape: the easy problem's story and start, one change (the easy problem's own,
    else the hard one's first) and a grouping question (the easy problem's, else the hard one's).
    None when neither asks one, as GPT-4 too sometimes fails. It knows the new problem's answer,
    which the recipe keeps hidden from D1's construction."""
    start, *easy_changes, easy_end = easy["steps"]
    hard_changes = [step for step in hard["steps"] if step[0] in CHANGE_OPS]
    ends = [step for step in (easy_end, hard["steps"][-1]) if step[0] in GROUP_OPS]
    if not ends:
        return None
    steps = [start, (easy_changes + hard_changes)[0], ends[0]]
    return family_problem(easy["story"], steps, "intermediate")


def synthetic_interpolator(problems):
    """(generate, written) for interpolate_problems. generate(prompts) finds in each prompt the two
    examples, as GPT-4 would read them, looks them up in `problems` and writes the new problem with
    synthetic_interpolate; written[question] is that whole problem, its answer included."""
    by_question = {p["question"]: p for p in problems}
    examples = re.compile(re.escape(INTERPOLATION_PROMPT).replace(re.escape("{easy}"), "(.*)")
                          .replace(re.escape("{hard}"), "(.*)"), re.S)
    written = {}

    def generate(prompts):
        questions = []
        for prompt in prompts:
            easy, hard = examples.fullmatch(prompt).groups()
            problem = synthetic_interpolate(by_question[easy], by_question[hard])
            if problem is None:
                questions.append("")             # interpolate_problems leaves it out
                continue
            written[problem["question"]] = problem
            questions.append(problem["question"])
        return questions
    return generate, written


# --------------------------------------------------------------------------------------------------
# D0 with a teacher: a model behind an OpenAI-compatible chat endpoint, with a `python` tool
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


def assistant_text(blocks) -> str:
    """The assistant's LCE string of blocks (what grader.grade reads)."""
    return "".join(f"<|{kind}|>{content}<|endofblock|>" for kind, content in blocks) + \
        "<|endofmessage|>"


def judge_attempt(problem, attempt, cfg) -> tuple[str, dict | None, str | None]:
    """(outcome, record, pred): outcome "kept" (its answer equals the reference under the strict
    grader: record is the LCE record), "wrong" or "unfinished" (record None)."""
    if attempt["stop"] != "final":
        return "unfinished", None, None
    pred, correct = grader.grade(assistant_text(attempt["blocks"]), problem["answer"],
                                 cfg.dataset)
    if not correct:
        return "wrong", None, pred
    record = lce_data.make_record(problem["question"], attempt["blocks"], answer=problem["answer"],
                                  id=problem["id"])
    return "kept", lce_data.normalize_record(record, f"problem {problem['id']}"), pred


def read_questions(path, need_answer=False) -> list[dict]:
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


def teach(server, cfg, problems, out_path, samples=1, concurrency=8, pool=None) -> dict:
    """The teacher solves every problem not yet kept in out_path, up to `samples` attempts each
    (counted over runs: a resumed run goes on where the last one stopped), stopping at the first
    kept one. Appends kept records to out_path and every attempt to attempts_path(out_path).
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
                outcome, record, pred = judge_attempt(problem, attempt, cfg)
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
# Interpolation with a teacher, then self-distillation with MathCoder-Initial
EVAL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "eval")


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


def distill(model, tokenizer, questions, k=3, temperature=0.7, seed=0, cfg=None):
    """Self-distillation (self_distill) with MathCoder-Initial, a local model (load_initial): k
    samples of every question at `temperature`, sample j drawn with seed + j."""
    base = cfg or infer.GenConfig()

    def solve(qs, j):
        sample_cfg = infer.GenConfig(**{**vars(base), "temperature": temperature,
                                        "seed": seed + j})
        print(f"distill: sample {j + 1}/{k} of {len(qs)} questions", file=sys.stderr)
        return infer.solve(model, tokenizer, qs, cfg=sample_cfg)
    return self_distill(questions, solve, k)


def load_initial(path, device=None):
    """(model, tokenizer) of the checkpoint directory `path`."""
    import torch                         # lazy: only distill loads a model
    from model import Transformer
    from tokenizer import Tokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Transformer.from_pretrained(path, device).eval(), Tokenizer.from_checkpoint(path)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description="The data recipe with a teacher behind an "
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
    i.add_argument("--d1", help="with --initial: where D1's records go")
    args = ap.parse_args(argv)

    if args.cmd == "teach":
        problems = read_questions(args.data, need_answer=True)[:args.limit]
        cfg = TeachConfig(args.model, args.temperature, args.max_tokens, args.max_calls,
                          args.dataset)
        counts = teach(server_from_args(args), cfg, problems, args.out, args.samples,
                       args.concurrency)
        print(json.dumps({"out": args.out, **counts}))
        return
    if args.cmd == "interpolate":
        if bool(args.initial) != bool(args.d1):
            ap.error("--initial and --d1 go together")
        easy = read_questions(args.easy)
        hard = read_questions(args.hard)
        cache = re.sub(r"(\.jsonl)?$", ".replies.jsonl", args.out, count=1)
        generate = teacher_generator(server_from_args(args), args.model, cache, args.temperature,
                                     args.max_tokens, args.concurrency)
        written = interpolate_problems(easy, hard, args.n, generate, args.seed)
        seeds = {normalized(p["question"]) for p in easy + hard}
        new, counts = keep_unseen(written, test_questions(args.data_dir), seeds)
        new = [{"id": f"interpolated-{args.seed}-{n}", **p} for n, p in enumerate(new)]
        storage.write_jsonl(args.out, new)
        print(json.dumps({"out": args.out, "prompts": args.n, **counts}))
        if not args.initial:
            return
        questions = [p["question"] for p in new]
        out = args.d1
    else:
        questions = [p["question"] for p in read_questions(args.problems)]
        out = args.out
    model, tokenizer = load_initial(args.initial, args.device)
    records, stats = distill(model, tokenizer, questions, args.k, args.distill_temperature)
    storage.write_jsonl(out, records)
    print(json.dumps({"out": out, **stats}))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, ServerError) as e:  # one line naming the problem, no traceback
        sys.exit(f"error: {e}")
