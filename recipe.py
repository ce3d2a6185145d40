"""
How MathCodeInstruct was built (paper §2, docs/method.md §2): the data recipe, generators pluggable.

D0, the seed data, is GSM8K and MATH training problems solved in LCE form by GPT-4 Code Interpreter;
a model trained on it is MathCoder-Initial. D1 adds problems of a difficulty between the two:
  1. problem interpolation: GPT-4 is shown one easy (GSM8K) and one hard (MATH) problem and writes a
     new one "harder than Example 1 and simpler than Example 2" (interpolation_prompts and
     interpolate_problems; `generate` is GPT-4 in the paper, any model or program here);
  2. self-distillation: MathCoder-Initial solves each new problem k times, and a solution is kept
     only where the k answers agree: there is no reference answer to check it against
     (self_distill).
The released models train on D0 + D1 (about 49k + 31k solutions, recalled).

tiny_run.py runs the whole recipe in miniature: synthetic_interpolator below plays GPT-4's part, a
program that writes the new problem from the two examples it finds in the prompt.
"""
import random
import re

import grader
import lce_data

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
        e, h = rng.choice(easy), rng.choice(hard)
        prompt = INTERPOLATION_PROMPT.format(easy=e["question"].strip(),
                                             hard=h["question"].strip())
        out.append({"prompt": prompt, "easy_id": e.get("id"), "hard_id": h.get("id")})
    return out


def interpolate_problems(easy, hard, n, generate, seed=0) -> list[dict]:
    """D1's new problems: generate(list of prompts) -> list of completions. Completions are
    stripped of a leading "New problem:"; empty ones and repeats are left out."""
    prompts = interpolation_prompts(easy, hard, n, seed)
    seen, out = set(), []
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
# The tiny run's stand-in for GPT-4 (lce_data's synthetic problems)
def synthetic_interpolate(easy, hard):
    """A STAND-IN FOR GPT-4 in problem interpolation: from an easy and a hard synthetic problem
    (lce_data.synthetic_problems), one harder than the first and simpler than the second, of the
    "intermediate" shape: the easy problem's story and start, one change (the easy problem's own,
    else the hard one's first) and a grouping question (the easy problem's, else the hard one's).
    None when neither asks one, as GPT-4 too sometimes fails. It knows the new problem's answer,
    which the recipe keeps hidden from D1's construction."""
    start, *easy_changes, easy_end = easy["steps"]
    hard_changes = [step for step in hard["steps"] if step[0] in lce_data.CHANGE_OPS]
    ends = [step for step in (easy_end, hard["steps"][-1]) if step[0] in lce_data.GROUP_OPS]
    if not ends:
        return None
    steps = [start, (easy_changes + hard_changes)[0], ends[0]]
    return lce_data.synthetic_problem(easy["story"], steps, "intermediate")


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
