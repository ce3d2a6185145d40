"""recipe.py: the paper's data recipe (§2): interpolation prompts, the self-distillation filter, and
the synthetic stand-in for GPT-4 that tiny_run.py uses."""
import contextlib
import io
import re

import lce_data
import recipe


def test_interpolation_prompts():
    easy = [{"id": "g1", "question": "Tom has 3 apples."}]
    hard = [{"id": "m1", "question": "Find $x$ if $x^2=4$."}]
    p = recipe.interpolation_prompts(easy, hard, 2, seed=0)
    assert len(p) == 2 and p[0]["easy_id"] == "g1" and p[0]["hard_id"] == "m1"
    assert "Example 1: Tom has 3 apples.\n\nExample 2: Find $x$ if $x^2=4$." in p[0]["prompt"]
    assert p[0]["prompt"].endswith("New problem:")
    gen = lambda prompts: ["New problem: A harder one?", " A harder one? ", ""][:len(prompts)]
    out = recipe.interpolate_problems(easy, hard, 3, gen)
    assert [o["question"] for o in out] == ["A harder one?"]   # stripped, repeats and empties out


def _solution(answer):
    if answer is None:
        return "<|text|>no idea<|endofblock|><|endofmessage|>"
    return ("<|text|>Compute.<|endofblock|><|code|>x<|endofblock|><|execution|>v<|endofblock|>"
            f"<|text|>So \\boxed{{{answer}}}.<|endofblock|><|endofmessage|>")


def test_self_distillation_keeps_only_agreeing_answers():
    answers = {"agree": ["0.5", "\\frac{1}{2}", "1/2"], "split": ["2", "2", "3"],
               "none": ["1", "1", None], "cut": ["4", "4", "4"]}
    calls = []

    def solve(questions, j):
        calls.append(j)
        out = [{"solution": _solution(answers[q][j])} for q in questions]
        if j == 1:   # this sample of "cut" stopped at a length limit, inside an execution block
            out[questions.index("cut")] = {
                "solution": "<|text|>So<|endofblock|><|code|>x<|endofblock|><|execution|>4"}
        return out
    records, stats = recipe.self_distill(["agree", "split", "none", "cut"], solve, k=3)
    assert stats == {"questions": 4, "kept": 1, "unfinished": 1, "no_answer": 1, "disagree": 1}
    assert calls == [0, 1, 2]            # k different samples, each told which one it is
    r = records[0]
    assert r["messages"][1]["content"][0]["content"] == "agree"
    assert r["ground_truth"]["answer"] == "0.5"
    assert [b["type"] for b in r["messages"][2]["content"]] == ["text", "code", "execution", "text"]


def _printed(code):
    """What the code prints, run here with exec (apart from the answer the generator computed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    return out.getvalue().strip()


def test_synthetic_interpolator_writes_problems_between_the_two_examples():
    seeds = recipe.family_problems(60, seed=7)
    easy = [p for p in seeds if p["family"] == "easy"]
    hard = [p for p in seeds if p["family"] == "hard"]
    generate, written = recipe.synthetic_interpolator(seeds)
    prompts = recipe.interpolation_prompts(easy, hard, 20, seed=1)
    questions = generate([p["prompt"] for p in prompts])
    by_id = {p["id"]: p for p in seeds}
    made = 0
    for prompt, question in zip(prompts, questions):
        e, h = by_id[prompt["easy_id"]], by_id[prompt["hard_id"]]
        if e["steps"][-1][0] == "count" and h["steps"][-1][0] == "count":
            assert question == ""                # no grouping question to borrow: none written
            continue
        new = written[question]
        made += 1
        # harder than the easy example, simpler than the hard one: one change, then grouping
        assert new["family"] == "intermediate" and new["template"].count("-") == 2
        assert new["story"] == e["story"] and new["steps"][0] == e["steps"][0]
        assert new["steps"][1] == (e["steps"][1:-1] + h["steps"][1:])[0]
        assert new["steps"][2] in (e["steps"][-1], h["steps"][-1])
        assert new["steps"][2][0] in ("div", "mod")
        assert _printed(new["code"]) == new["answer"]          # its answer is right
    assert made >= 10
    # interpolate_problems drops the empty ones and the repeats
    assert len(recipe.interpolate_problems(easy, hard, 20, generate, seed=1)) == \
        len(set(questions) - {""})


def test_family_problems_split_and_determinism():
    train, test = recipe.family_split(400, 100, seed=3)
    assert len(train) == 400 and len(test) == 100
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert len({p["question"] for p in train}) == 400
    assert recipe.family_split(400, 100, seed=3) == (train, test)
    assert recipe.family_problems(10, seed=4) != recipe.family_problems(10, seed=3)
    # the seed data's two families, in turn: difficulty is the number of changes to the count and
    # whether the question groups it
    def shape(p):
        return sum(op in ("minus", "plus") for op, _ in p["steps"]), p["steps"][-1][0]
    assert [p["family"] for p in train[:4]] in (["easy", "hard"] * 2, ["hard", "easy"] * 2)
    assert {shape(p) for p in train if p["family"] == "easy"} == {
        (0, "count"), (0, "div"), (0, "mod"), (1, "count")}
    assert {shape(p) for p in train if p["family"] == "hard"} == {
        (n, end) for n in (2, 3) for end in ("count", "div", "mod")}
    assert {shape(p) for p in recipe.family_problems(20, 1, ("intermediate",))} == {
        (1, "div"), (1, "mod")}
    assert all(p["steps"][0][0] == "product" for p in train if shape(p) == (0, "count"))
    # every number in the code comes from the question, one sentence per line of code
    for p in train[:50]:
        assert set(re.findall(r"\d+", p["code"])) <= set(re.findall(r"\d+", p["question"]))
        assert p["question"].count(".") + p["question"].count("?") >= len(p["steps"])


def test_family_problems_make_valid_lce_records():
    problems = recipe.family_problems(8, seed=2)
    records = lce_data.synthetic_records(problems, run_code=_printed)
    for p, r in zip(problems, records):
        blocks = [(b["type"], b["content"]) for b in r["messages"][2]["content"]]
        assert blocks[1] == ("code", p["code"]) and blocks[2][1].strip() == _printed(p["code"])
        assert r["ground_truth"]["answer"] == p["answer"] == _printed(p["code"])
