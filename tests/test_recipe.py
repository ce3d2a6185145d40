"""recipe.py: the paper's data recipe (§2): D0 from a teacher behind an OpenAI-compatible server (a
stub on 127.0.0.1 plays it: tests/test_server.py), interpolation prompts, the self-distillation
filter, and the synthetic stand-ins for GPT-4 Code Interpreter and GPT-4 that tiny_run.py uses.
The teacher's plumbing (errors, resuming, the cache of replies): tests/test_teacher.py."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest

import lce_data
import recipe
import sandbox
from plumbing.server_client import Server
from plumbing.teacher import TeachConfig
from test_server import StubServer
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


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
    records = recipe.synthetic_records(problems, run_code=_printed)
    for p, r in zip(problems, records):
        blocks = [(b["type"], b["content"]) for b in r["messages"][2]["content"]]
        assert blocks[1] == ("code", p["code"]) and blocks[2][1].strip() == _printed(p["code"])
        assert r["ground_truth"]["answer"] == p["answer"] == _printed(p["code"])


# --------------------------------------------------------------------------------------------------
# The stand-in for GPT-4 Code Interpreter: LCE records of synthetic problems, run in the sandbox
def _reference_outputs(codes):
    """Run each snippet in a fresh namespace of a separate Python process; its stdout."""
    script = ("import io, json, sys, contextlib\nouts = []\nfor c in json.load(sys.stdin):\n"
              "    buf = io.StringIO()\n    with contextlib.redirect_stdout(buf):\n        exec(c, {})\n"
              "    outs.append(buf.getvalue())\nprint(json.dumps(outs))")
    r = subprocess.run([sys.executable, "-c", script], input=json.dumps(codes), capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout)


# {"id", "question", "answer", "code"}, as recipe.family_problems writes them; answers by hand
PROBLEMS = [
    {"id": "p0", "question": "A factory fills 123 boxes with 45 bottles each. How many bottles?",
     "code": "bottles = 123 * 45\nprint(bottles)", "answer": "5535"},
    {"id": "p1", "question": "A farm has 9876 apples, packed into bags of 37. How many are left over?",
     "code": "apples = 9876\nleft = apples % 37\nprint(left)", "answer": "34"},
    {"id": "p2", "question": "A shop has 25 packs of 16 pens. 18 are sold and 7 more arrive. The "
     "pens are bundled in sets of 9. How many full sets are there?",
     "code": "pens = 25 * 16\npens = pens - 18\npens = pens + 7\nsets = pens // 9\nprint(sets)",
     "answer": "43"},
]


def test_synthetic_records_execute_the_code():
    tok = Tokenizer(os.path.join(FIX, "tokenizer", "llama2-tokenizer.model"))
    recs = recipe.synthetic_records(PROBLEMS)                    # the real sandbox
    ref = _reference_outputs([p["code"] for p in PROBLEMS])
    for p, r, out in zip(PROBLEMS, recs, ref):
        blocks = [(b["type"], b["content"]) for b in lce_data.normalize_record(r)["messages"][2]["content"]]
        assert [t for t, _ in blocks] == ["text", "code", "execution", "text"]
        assert blocks[1][1] == p["code"]
        assert blocks[2][1].strip() == out.strip() == p["answer"]       # what the code really prints
        assert blocks[3][1] == f"The answer is \\boxed{{{p['answer']}}}."
        assert r["messages"][1]["content"][0]["content"] == p["question"]
        ids, labels = lce_data.encode_example(r, tok, 512)
        assert len(ids) < 200
    import grader as ev
    assert all(ev.extract_answer(lce_data.serialize(r)) == p["answer"] for r, p in zip(recs, PROBLEMS))


def test_synthetic_records_refuse_code_that_prints_a_wrong_answer():
    p = PROBLEMS[:1]
    with pytest.raises(RuntimeError, match=rf"{p[0]['id']}: code printed '7\\n'"):
        recipe.synthetic_records(p, run_code=lambda code: "7\n")


# --------------------------------------------------------------------------------------------------
# The teacher behind an OpenAI-compatible chat endpoint: a stub server on 127.0.0.1 plays it
SQUARES = "A square has side 12. What area do three such squares cover?"


@pytest.fixture(scope="module")
def pool():
    p = sandbox.SandboxPool(2, timeout=2, preload=("math",))
    yield p
    p.close()


def call(n, code):
    return {"id": f"call_{n}", "type": "function",
            "function": {"name": "python", "arguments": json.dumps({"code": code})}}


def reply(content=None, calls=(), finish=None):
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    return {"choices": [{"index": 0, "message": message,
                         "finish_reason": finish or ("tool_calls" if calls else "stop")}]}


def scripted_teacher(scripts):
    """respond() for StubServer: the problem is found by its question; scripts[question] is a
    function (number of tool results so far, the request body) -> (status, reply)."""
    def respond(path, body):
        assert path == "/v1/chat/completions"
        question = body["messages"][1]["content"]
        n_results = sum(m["role"] == "tool" for m in body["messages"])
        return scripts[question](n_results, body)
    return respond


def squares_teacher(n_results, body):
    """Two tool calls, the second using the first's variable (state kept), then the answer."""
    if n_results == 0:
        return 200, reply("Let me compute the area of one square first.",
                          [call(1, "side = 12\narea = side ** 2\narea")])
    if n_results == 1:
        return 200, reply(None, [call(2, "print(area * 3)")])
    return 200, reply("Three squares cover 432 square units: \\boxed{432}.")


def fast(url):
    return Server(url, api_key_env="STUB_KEY", backoff=0.01, timeout=5, retries=2)


def test_a_teacher_transcript_with_two_tool_calls_becomes_the_lce_record(tmp_path, pool):
    problems = [{"id": "sq-1", "question": SQUARES, "answer": "432"}]
    out = tmp_path / "d0.jsonl"
    with StubServer(scripted_teacher({SQUARES: squares_teacher})) as stub:
        counts = recipe.teach(fast(stub.url), TeachConfig("teacher"), problems, out,
                              pool=pool)
    assert counts == {"kept": 1, "wrong": 0, "unfinished": 0, "failed": 0, "skipped": 0,
                      "problems": 1}
    expected = {  # written by hand: what the paper's D0 holds for such a transcript
        "messages": [
            {"role": "system", "content": [
                {"type": "text",
                 "content": "Below is a math problem. Please solve it step by step."}]},
            {"role": "user", "content": [{"type": "text", "content": SQUARES}]},
            {"role": "assistant", "content": [
                {"type": "text", "content": "Let me compute the area of one square first."},
                {"type": "code", "content": "side = 12\narea = side ** 2\narea"},
                {"type": "execution", "content": "144"},
                {"type": "code", "content": "print(area * 3)"},
                {"type": "execution", "content": "432"},
                {"type": "text",
                 "content": "Three squares cover 432 square units: \\boxed{432}."}]}],
        "id": "sq-1", "ground_truth": {"answer": "432"}}
    [record] = [json.loads(line) for line in open(out)]
    assert record == expected
    # what the teacher was sent: the tool, and each call's output as the sandbox showed it
    first, second, third = [body for _, _, body in stub.requests]
    assert first["tools"][0]["function"]["name"] == "python" and first["model"] == "teacher"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "144"}
    assert third["messages"][-1] == {"role": "tool", "tool_call_id": "call_2", "content": "432"}
    assert third["messages"][-2]["tool_calls"] == [call(2, "print(area * 3)")]
    # lce_data reads it back, and its loss mask learns the text and code, not the executions
    [read] = lce_data.read_jsonl_records(str(out))
    assert read == expected
    tok = Tokenizer(os.path.join(FIX, "tokenizer", "llama2-tokenizer.model"))
    ids, labels = lce_data.encode_example(read, tok, 4096)
    learned = tok.decode([i for i, label in zip(ids, labels) if label != lce_data.IGNORE])
    assert learned == ("<|text|>Let me compute the area of one square first.<|endofblock|>"
                       "<|code|>side = 12\narea = side ** 2\narea<|endofblock|>"
                       "<|code|>print(area * 3)<|endofblock|>"
                       "<|text|>Three squares cover 432 square units: \\boxed{432}.<|endofblock|>"
                       "<|endofmessage|>")
    log = [json.loads(line) for line in open(tmp_path / "d0.attempts.jsonl")]
    assert log == [{"id": "sq-1", "sample": 0, "outcome": "kept", "stop": "final",
                    "pred": "432", "n_calls": 2}]


def wrong_then_right(n_results, body):
    """Sample 0 answers 430 (wrong), sample 1 answers 432."""
    if n_results == 0:
        return 200, reply(None, [call(1, "12 ** 2 * 3")])
    return 200, reply(f"So \\boxed{{{430 + 2 * body['seed']}}}.")


def test_wrong_answers_are_dropped_and_counted_and_samples_retry_them(tmp_path, pool):
    cut = "Count to a million."
    problems = [{"id": "w", "question": SQUARES, "answer": "432"},
                {"id": "u", "question": cut, "answer": "1000000"}]
    scripts = {SQUARES: wrong_then_right,
               cut: lambda n, body: (200, reply("1, 2, 3, 4,", finish="length"))}
    out = tmp_path / "d0.jsonl"
    with StubServer(scripted_teacher(scripts)) as stub:
        counts = recipe.teach(fast(stub.url), TeachConfig("t"), problems, out, pool=pool)
        assert counts == {"kept": 0, "wrong": 1, "unfinished": 1, "failed": 0, "skipped": 0,
                          "problems": 2}
        assert not out.read_text()                  # nothing kept
        # resume: with one sample each, both problems have had theirs: no request at all
        n = len(stub.requests)
        counts = recipe.teach(fast(stub.url), TeachConfig("t"), problems, out, pool=pool)
        assert counts["skipped"] == 2 and len(stub.requests) == n
        # --samples 2: a second attempt at each, drawn with another seed; the right one is kept
        counts = recipe.teach(fast(stub.url), TeachConfig("t"), problems, out,
                              samples=2, pool=pool)
        assert counts == {"kept": 1, "wrong": 0, "unfinished": 1, "failed": 0, "skipped": 0,
                          "problems": 2}
        assert {body["seed"] for _, _, body in stub.requests[n:]} == {1}
        # resume: "w" is kept, "u" has had its 2 samples
        n = len(stub.requests)
        counts = recipe.teach(fast(stub.url), TeachConfig("t"), problems, out,
                              samples=2, pool=pool)
        assert counts["skipped"] == 2 and len(stub.requests) == n
    [record] = lce_data.read_jsonl_records(str(out))
    assert record["id"] == "w" and "\\boxed{432}" in record["messages"][2]["content"][-1]["content"]
    log = [json.loads(line) for line in open(tmp_path / "d0.attempts.jsonl")]
    assert [(r["id"], r["sample"], r["outcome"], r["pred"]) for r in log if r["id"] == "w"] == [
        ("w", 0, "wrong", "430"), ("w", 1, "kept", "432")]
    assert [(r["sample"], r["stop"]) for r in log if r["id"] == "u"] == [(0, "length"),
                                                                         (1, "length")]






# --------------------------------------------------------------------------------------------------
# Interpolation through the chat endpoint
def first_test_question(name="GSM8K_test_post.jsonl"):
    with open(os.path.join(ROOT, "data", "eval", name), encoding="utf-8") as f:
        return lce_data.message_text(json.loads(f.readline()), "user")






def test_interpolate_cli_with_a_served_teacher(tmp_path):
    """The stub plays GPT-4 with the synthetic interpolator (the program standing in for it), but
    for one prompt writes a GSM8K test question: it must not enter the new problems."""
    seeds = recipe.family_problems(40, seed=5)
    easy = [p for p in seeds if p["family"] == "easy"]
    hard = [p for p in seeds if p["family"] == "hard"]
    for name, problems in (("easy", easy), ("hard", hard)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": p["id"], "question": p["question"]}) + "\n"
                    for p in problems))
    interpolator, written = recipe.synthetic_interpolator(seeds)
    janet = first_test_question()
    replies = []

    def respond(path, body):
        [message] = body["messages"]
        question = interpolator([message["content"]])[0] if replies else janet
        replies.append(question)
        return 200, reply("New problem: " + question)
    out = tmp_path / "new.jsonl"
    with StubServer(respond) as stub:
        recipe.main(["interpolate", "--server", stub.url, "--model", "t", "--easy",
                     str(tmp_path / "easy.jsonl"), "--hard", str(tmp_path / "hard.jsonl"),
                     "--n", "12", "--seed", "3", "--out", str(out), "--concurrency", "1"])
    new = [json.loads(line) for line in open(out)]
    expected = []
    for question in replies:
        if question and question != janet and question not in expected:
            expected.append(question)
    assert [p["question"] for p in new] == expected and len(expected) >= 5
    assert all(written[p["question"]]["family"] == "intermediate" for p in new)
    assert [p["id"] for p in new] == [f"interpolated-3-{n}" for n in range(len(new))]
    # the prompts are the paper's, pairing the problems interpolation_prompts draws
    prompts = recipe.interpolation_prompts(easy, hard, 12, seed=3)
    assert sorted(body["messages"][0]["content"] for _, _, body in stub.requests) == sorted(
        p["prompt"] for p in prompts)




def test_distill_samples_k_times_with_their_own_seeds(monkeypatch):
    """recipe.distill hands infer.solve k configurations (sampling, seeds seed..seed+k-1) and keeps
    what self_distill keeps; the solver is a stand-in that answers by seed."""
    seen = []

    def fake_solve(model, tokenizer, questions, cfg):
        seen.append((cfg.temperature, cfg.seed, cfg.max_new_tokens))
        answer = {"agree": "7", "split": str(cfg.seed)}
        return [{"solution": _solution(answer[q])} for q in questions]
    monkeypatch.setattr(recipe.infer, "solve", fake_solve)
    records, stats = recipe.distill("model", "tok", ["agree", "split"], k=3, temperature=0.9,
                                    seed=5, cfg=recipe.infer.GenConfig(max_new_tokens=64))
    assert seen == [(0.9, 5, 64), (0.9, 6, 64), (0.9, 7, 64)]
    assert stats["kept"] == 1 and stats["disagree"] == 1
    assert records[0]["ground_truth"] == {"answer": "7"}


def test_distill_resumes_where_it_stopped(tmp_path, monkeypatch):
    """recipe.py distill killed mid-way (after 4 of its 2 x 3 samples are on disk), then the same
    command again: only the 2 samples missing are drawn, each question with its own place in the
    file (infer.solve's indices), and D1 is an uninterrupted run's. Another temperature is refused
    (its samples would mix with these); --force-new starts over."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    monkeypatch.setattr(recipe.teacher, "load_initial", lambda path, device: ("model", "tok"))
    problems = tmp_path / "new.jsonl"
    problems.write_text('{"question": "a"}\n{"question": "b"}\n{"question": "c"}\n')
    calls, budget = [], [4]

    def fake_solve(model, tokenizer, questions, cfg, on_result=None, indices=None):
        calls.append((cfg.seed, list(indices)))   # "c" answers by seed: the samples disagree
        for t, (q, i) in enumerate(zip(questions, indices)):
            if budget[0] == 0:
                raise KeyboardInterrupt           # the process dies here
            budget[0] -= 1
            answer = str(cfg.seed) if q == "c" else str(i)
            solution = _solution(answer)
            messages = lce_data.make_record(q, lce_data.parse_assistant(solution))["messages"]
            on_result(t, {"solution": solution, "messages": messages})
    monkeypatch.setattr(recipe.infer, "solve", fake_solve)

    def distill(out, *more):
        recipe.main(["distill", "--initial", str(ckpt), "--problems", str(problems), "--out",
                     str(tmp_path / out), "--k", "2", "--device", "cpu", *more])
        return (tmp_path / out).read_text()
    with pytest.raises(KeyboardInterrupt):
        distill("d1.jsonl")
    assert not (tmp_path / "d1.jsonl").exists()
    calls.clear()
    budget[0] = 100
    resumed = distill("d1.jsonl")
    assert calls == [(1, [1, 2])]                 # sample 1 of "b" and "c": the 2 missing
    assert resumed == distill("whole.jsonl")
    assert [json.loads(x)["ground_truth"] for x in resumed.splitlines()] == [
        {"answer": "0"}, {"answer": "1"}]
    with pytest.raises(ValueError, match=r"\(temperature: 0.7 vs 0.9\)"):
        distill("d1.jsonl", "--distill-temperature", "0.9")
    calls.clear()
    distill("d1.jsonl", "--distill-temperature", "0.9", "--force-new")
    assert calls == [(0, [0, 1, 2]), (1, [0, 1, 2])]


def test_distill_out_that_is_the_problems_file_is_refused(tmp_path, monkeypatch):
    """distill --out naming its --problems file is refused before anything runs (D1 replaced the
    problems at the end of the run)."""
    problems = tmp_path / "new.jsonl"
    problems.write_text('{"question": "a"}\n')
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(recipe.teacher, "load_initial", lambda path, device: ("model", "tok"))

    def fake_solve(model, tokenizer, questions, cfg, on_result=None, indices=None):
        for t, q in enumerate(questions):
            solution = _solution("7")
            on_result(t, {"solution": solution, "messages": lce_data.make_record(
                q, lce_data.parse_assistant(solution))["messages"]})
    monkeypatch.setattr(recipe.infer, "solve", fake_solve)
    with pytest.raises(ValueError, match=r"--out \./new\.jsonl is the --problems file"):
        recipe.main(["distill", "--initial", "ckpt", "--problems", "new.jsonl", "--out",
                     "./new.jsonl"])
    assert problems.read_text() == '{"question": "a"}\n'
