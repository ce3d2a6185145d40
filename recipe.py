"""
How MathCodeInstruct was built (paper §2, docs/method.md §2): the data recipe.

  D0, the seed data: GSM8K and MATH training problems solved in LCE form by GPT-4 Code
     Interpreter, a solution kept only where its answer equals the reference (teach,
     judge_attempt). A model trained on D0 is MathCoder-Initial.
  D1 adds problems of a difficulty between the two:
  1. problem interpolation: GPT-4 is shown one easy (GSM8K) and one hard (MATH) problem and writes a
     new one "harder than Example 1 and simpler than Example 2" (interpolation_prompts and
     interpolate_problems; `generate` is GPT-4 in the paper, any model or program here);
  2. self-distillation: MathCoder-Initial solves each new problem k times, and a solution is kept
     only where the k answers agree: there is no reference answer to check it against
     (self_distill, distill).
The released models train on D0 + D1 (about 49k + 31k solutions, recalled).

`python tiny_run.py` runs the whole recipe in miniature, on the synthetic families of problems
below (family_problems: easy and hard, as GSM8K and MATH): synthetic_records plays GPT-4 Code
Interpreter (its code runs in the sandbox) and synthetic_interpolator plays GPT-4, a program that
writes the new problem from the two examples it finds in the prompt.

With a real teacher behind an OpenAI-compatible server (plumbing/teacher.py runs it: the tool
calls, resumable runs, the command line; docs/serving.md):

    python recipe.py teach --server URL --model NAME --data train.jsonl --out d0.jsonl
    python recipe.py interpolate --server URL --model NAME --easy gsm8k_train.jsonl \
        --hard math_train.jsonl --n 1000 --out new.jsonl [--initial CKPT --d1 d1.jsonl]
    python recipe.py distill --initial CKPT --problems new.jsonl --out d1.jsonl

No test question of data/eval/ may enter the new problems (teacher.keep_unseen).
"""
import hashlib
import json
import os
import random
import re
import sys
import time

import grader
import infer
import lce_data
from plumbing import storage, teacher
from plumbing.server_client import ServerError, server_from_args


# --------------------------------------------------------------------------------------------------
# D0: the teacher's solutions, kept where right
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


def teach(server, cfg, problems, out_path, samples=1, concurrency=8, pool=None) -> dict:
    """D0: the teacher (teacher.TeachConfig: a model behind a server) solves each problem with a
    `python` tool, each call run in the sandbox, one session per attempt (teacher.teacher_attempt);
    judge_attempt keeps the transcript as an LCE record where its answer is right, as the paper
    kept GPT-4's solutions. Up to `samples` attempts a problem, resumable (teacher.teach_all)."""
    return teacher.teach_all(server, cfg, problems, out_path, judge_attempt, samples,
                             concurrency, pool)


# --------------------------------------------------------------------------------------------------
# D1: problem interpolation, then self-distillation with MathCoder-Initial
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


def distill(model, tokenizer, questions, k=3, temperature=0.7, seed=0, cfg=None,
            samples_path=None):
    """Self-distillation (self_distill) with MathCoder-Initial, a local model
    (teacher.load_initial): k samples of every question at `temperature`, sample j drawn with
    seed + j. samples_path: each sample is appended there as it finishes ({"sample": j, "index":
    i, "solution", "messages"}), and those already there are not drawn again: a run stopped and
    started again goes on (question i draws from its own generator, so the samples are those of
    an uninterrupted run). The caller checks that they are this run's (main: storage.check_run)."""
    base = cfg or infer.GenConfig()
    done = {}
    if samples_path and os.path.exists(samples_path):
        storage.done_keys(samples_path, key="index")      # a torn last line (a crash) cut off
        done = {(r["sample"], r["index"]): r for r in storage.read_jsonl(samples_path)}

    def solve(qs, j):
        sample_cfg = infer.GenConfig(**{**vars(base), "temperature": temperature,
                                        "seed": seed + j})
        if samples_path is None:
            print(f"distill: sample {j + 1}/{k} of {len(qs)} questions", file=sys.stderr)
            return infer.solve(model, tokenizer, qs, cfg=sample_cfg)
        todo = [i for i in range(len(qs)) if (j, i) not in done]
        print(f"distill: sample {j + 1}/{k}: {len(qs) - len(todo)} of {len(qs)} questions "
              f"in {samples_path}, solving {len(todo)}", file=sys.stderr)
        start, finished = time.time(), []
        with open(samples_path, "a", encoding="utf-8") as f:

            def on_result(t, outcome):
                finished.append(t)
                done[j, todo[t]] = {"sample": j, "index": todo[t],
                                    "solution": outcome["solution"],
                                    "messages": outcome["messages"]}
                storage.append_jsonl(f, done[j, todo[t]])
                seconds = time.time() - start
                n = len(finished)
                print(f"\rdistill: sample {j + 1}/{k}  {n}/{len(todo)}  {n / seconds:.2f}/s  "
                      f"ETA {(len(todo) - n) * seconds / n:.0f}s   ", end="", file=sys.stderr,
                      flush=True)
            if todo:
                infer.solve(model, tokenizer, [qs[i] for i in todo], cfg=sample_cfg,
                            on_result=on_result, indices=todo)
                print(file=sys.stderr)
        return [done[j, i] for i in range(len(qs))]
    return self_distill(questions, solve, k)


# --------------------------------------------------------------------------------------------------
# The recipe in miniature (tiny_run.py): synthetic problems of a known difficulty, whose arithmetic
# is hard in one's head and whose code is trivial. A problem is a story told in steps, each step
# one sentence of the question and one line of the code: a count (a product, or a plain number),
# changes to it (some lost, some gained), then the question (how many now, how many full groups,
# how many left over).
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
# The tiny run's stand-ins: programs playing GPT-4 Code Interpreter (D0) and GPT-4 (interpolation)
def synthetic_records(problems, sandbox=None, run_code=None,
                      system=lce_data.DEFAULT_SYSTEM) -> list[dict]:
    """A STAND-IN FOR GPT-4 CODE INTERPRETER in D0: LCE solutions of problems {"id", "question",
    "answer", "code"} (family_problems): text, code, execution (the code's real output in the
    sandbox), final text with \\boxed{}. Short and regular, so a tiny model can learn them in
    minutes. run_code(code) -> str may replace the sandbox (tests); with neither, a
    sandbox.Sandbox is opened here."""
    if run_code is None:
        if sandbox is None:     # open one for this call (lazy import: only needed to build data)
            from sandbox import Sandbox
            with Sandbox() as sb:
                return synthetic_records(problems, sb, system=system)

        def run_code(code):
            sandbox.reset()                   # each problem starts from a fresh interpreter state
            return sandbox.run(code)
    out = []
    for p in problems:
        output = run_code(p["code"])
        if output.strip() != p["answer"]:     # as the paper kept only GPT-4's right solutions
            raise RuntimeError(f"problem {p['id']}: code printed {output!r}, "
                               f"expected {p['answer']}")
        blocks = [("text", "Let's compute it with Python."), ("code", p["code"]),
                  ("execution", output), ("text", f"The answer is \\boxed{{{output.strip()}}}.")]
        out.append(lce_data.make_record(p["question"], blocks, system=system, answer=p["answer"],
                                        id=p["id"]))
    return out


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


# ---------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    args = teacher.parse_args(argv)          # the command line: plumbing/teacher.py
    if args.cmd == "teach":
        problems = teacher.read_problems(args.data, need_answer=True)[:args.limit]
        cfg = teacher.TeachConfig(args.model, args.temperature, args.max_tokens, args.max_calls,
                                  args.dataset)
        counts = teach(server_from_args(args), cfg, problems, args.out, args.samples,
                       args.concurrency)
        print(json.dumps({"out": args.out, **counts}))
        return
    if args.cmd == "interpolate":
        easy = teacher.read_problems(args.easy)
        hard = teacher.read_problems(args.hard)
        cache = re.sub(r"(\.jsonl)?$", ".replies.jsonl", args.out, count=1)
        generate = teacher.teacher_generator(server_from_args(args), args.model, cache,
                                             args.temperature, args.max_tokens, args.concurrency)
        written = interpolate_problems(easy, hard, args.n, generate, args.seed)
        seeds = {teacher.normalized(p["question"]) for p in easy + hard}
        new, counts = teacher.keep_unseen(written, teacher.test_questions(args.data_dir), seeds)
        new = [{"id": f"interpolated-{args.seed}-{n}", **p} for n, p in enumerate(new)]
        storage.write_jsonl(args.out, new)
        print(json.dumps({"out": args.out, "prompts": args.n, **counts}))
        if not args.initial:
            return
        questions = [p["question"] for p in new]
        out = args.d1
    else:
        if os.path.realpath(args.out) == os.path.realpath(args.problems):   # D1 would replace it
            raise ValueError(f"--out {args.out} is the --problems file")
        questions = [p["question"] for p in teacher.read_problems(args.problems)]
        out = args.out
    # the samples drawn so far beside OUT (resumable): only this run's (model, questions, sampling)
    samples = re.sub(r"(\.jsonl)?$", ".samples.jsonl", out, count=1)
    storage.check_run(samples + ".run.json", {
        "initial": os.path.abspath(args.initial),
        "initial_files": storage.checkpoint_fingerprint(args.initial),
        "questions": hashlib.sha256(json.dumps(questions).encode()).hexdigest()[:16],
        "temperature": args.distill_temperature}, [samples], args.force_new)
    model, tokenizer = teacher.load_initial(args.initial, args.device)
    records, stats = distill(model, tokenizer, questions, args.k, args.distill_temperature,
                             samples_path=samples)
    storage.write_jsonl(out, records)
    print(json.dumps({"out": out, **stats}))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, ServerError) as e:  # one line naming the problem, no traceback
        sys.exit(f"error: {e}")
