"""recipe.py: the paper's data recipe (§2): interpolation prompts, the self-distillation filter,
the synthetic stand-in for GPT-4 that tiny_run.py uses, and the teacher behind an OpenAI-compatible
server (a stub on 127.0.0.1 plays it: tests/test_server.py)."""
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys

import pytest

import lce_data
import recipe
import sandbox
from plumbing.server_client import Server
from test_server import KEY, StubServer
from tokenizer import Tokenizer


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


# --------------------------------------------------------------------------------------------------
# The teacher behind an OpenAI-compatible chat endpoint: a stub server on 127.0.0.1 plays it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
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


def teacher(scripts):
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
    with StubServer(teacher({SQUARES: squares_teacher})) as stub:
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("teacher"), problems, out,
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
    with StubServer(teacher(scripts)) as stub:
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("t"), problems, out, pool=pool)
        assert counts == {"kept": 0, "wrong": 1, "unfinished": 1, "failed": 0, "skipped": 0,
                          "problems": 2}
        assert not out.read_text()                  # nothing kept
        # resume: with one sample each, both problems have had theirs: no request at all
        n = len(stub.requests)
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("t"), problems, out, pool=pool)
        assert counts["skipped"] == 2 and len(stub.requests) == n
        # --samples 2: a second attempt at each, drawn with another seed; the right one is kept
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("t"), problems, out,
                              samples=2, pool=pool)
        assert counts == {"kept": 1, "wrong": 0, "unfinished": 1, "failed": 0, "skipped": 0,
                          "problems": 2}
        assert {body["seed"] for _, _, body in stub.requests[n:]} == {1}
        # resume: "w" is kept, "u" has had its 2 samples
        n = len(stub.requests)
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("t"), problems, out,
                              samples=2, pool=pool)
        assert counts["skipped"] == 2 and len(stub.requests) == n
    [record] = lce_data.read_jsonl_records(str(out))
    assert record["id"] == "w" and "\\boxed{432}" in record["messages"][2]["content"][-1]["content"]
    log = [json.loads(line) for line in open(tmp_path / "d0.attempts.jsonl")]
    assert [(r["id"], r["sample"], r["outcome"], r["pred"]) for r in log if r["id"] == "w"] == [
        ("w", 0, "wrong", "430"), ("w", 1, "kept", "432")]
    assert [(r["sample"], r["stop"]) for r in log if r["id"] == "u"] == [(0, "length"),
                                                                         (1, "length")]


def test_server_errors_are_retried_reported_in_one_line_and_left_for_the_next_run(
        tmp_path, pool, capsys, monkeypatch):
    monkeypatch.setenv("STUB_KEY", KEY)
    down = "A problem the server fails on."
    problems = [{"id": "sq", "question": SQUARES, "answer": "432"},
                {"id": "down", "question": down, "answer": "1"}]
    # the server echoes the key in its error, as some do; it must reach no file and no log line
    scripts = {SQUARES: squares_teacher,
               down: lambda n, body: (500, {"error": f"internal error (key {KEY})"})}
    out = tmp_path / "d0.jsonl"
    with StubServer(teacher(scripts)) as stub:
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("t"), problems, out,
                              concurrency=2, pool=pool)
        failing = [body for _, _, body in stub.requests if body["messages"][1]["content"] == down]
    assert counts == {"kept": 1, "wrong": 0, "unfinished": 0, "failed": 1, "skipped": 0,
                      "problems": 2}
    assert len(failing) == 3                       # the first try and 2 retries
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "down" in line]
    assert line == (f"problem down: {stub.url}/v1/chat/completions answered HTTP 500 Internal "
                    'Server Error: {"error": "internal error (key ***)"} (after 3 tries)')
    # the failed problem logged no attempt: the next run asks again
    assert {json.loads(line)["id"] for line in open(tmp_path / "d0.attempts.jsonl")} == {"sq"}
    with StubServer(teacher({down: lambda n, body: (200, reply("\\boxed{1}"))})) as stub:
        counts = recipe.teach(fast(stub.url), recipe.TeachConfig("t"), problems, out, pool=pool)
    assert counts["kept"] == 1 and counts["skipped"] == 1 and len(stub.requests) == 1
    # the key was sent (as the header) and appears in no file written
    assert all(headers["Authorization"] == f"Bearer {KEY}" for _, headers, _ in stub.requests)
    for path in tmp_path.iterdir():
        assert KEY not in path.read_text()
    assert KEY not in err


def test_an_unreachable_teacher_stops_the_run_with_one_line(tmp_path):
    with socket.socket() as s:              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "1+1?", "answer": "2"}) + "\n")
    done = subprocess.run([sys.executable, "recipe.py", "teach", "--server",
                           f"http://127.0.0.1:{port}", "--model", "t", "--data", str(data),
                           "--out", str(tmp_path / "d0.jsonl"), "--retries", "0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"error: problem a: server http://127.0.0.1:{port} unreachable ([Errno 111] Connection "
        "refused) (after 1 tries)")


# --------------------------------------------------------------------------------------------------
# Interpolation through the chat endpoint
def first_test_question(name="GSM8K_test_post.jsonl"):
    with open(os.path.join(ROOT, "data", "eval", name), encoding="utf-8") as f:
        return lce_data.message_text(json.loads(f.readline()), "user")


def test_new_problems_never_repeat_a_test_question_nor_each_other():
    janet = first_test_question()
    assert janet.startswith("Janet’s ducks lay 16 eggs per day.")
    tests = recipe.test_questions()
    problems = [{"question": q} for q in [
        "A new one: 3 boxes of 17 pens.",
        "  " + janet.upper().replace(" ", "  ") + "  ",     # the test question, spaced and shouted
        "a NEW one -- 3 boxes of 17 pens",                   # a repeat, punctuation aside
        "Tom has 3 apples.",                                 # one of the seed examples
        "?!",                                                # nothing left once normalised
        "Another: 5 crates of 12 eggs."]]
    kept, counts = recipe.keep_unseen(problems, tests, {recipe.normalized("Tom has 3 apples.")})
    assert [p["question"] for p in kept] == ["A new one: 3 boxes of 17 pens.",
                                             "Another: 5 crates of 12 eggs."]
    assert counts == {"written": 6, "kept": 2, "in_test_set": 1, "repeat": 3}
    # every test set of data/eval is read: a MATH question too
    assert recipe.normalized(first_test_question("MATH_5_test_post.jsonl")) in tests


def test_teacher_generator_asks_each_prompt_once_over_runs(tmp_path, capsys):
    prompts = ["p0", "p1", "p2"]
    answers = {"p0": (200, reply("New problem: zero")), "p1": (503, {"error": "busy"}),
               "p2": (200, reply(" two "))}
    cache = tmp_path / "new.replies.jsonl"
    respond = lambda path, body: answers[body["messages"][0]["content"]]
    with StubServer(respond) as stub:
        generate = recipe.teacher_generator(fast(stub.url), "t", cache, concurrency=2)
        assert generate(prompts) == ["New problem: zero", "", " two "]   # p1 failed: left out
        assert len(stub.requests) == 2 + 3                 # p1: the first try and 2 retries
        assert "prompt 1: " in capsys.readouterr().err
        answers["p1"] = (200, reply("one"))
        assert generate(prompts) == ["New problem: zero", "one", " two "]
        assert len(stub.requests) == 6                     # only p1 was asked again
    with pytest.raises(ValueError, match="other prompts"):   # a cache from other pairs
        generate(["q0", "q1", "q2"])


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


def test_tool_calls_are_read_as_servers_send_them():
    def as_sent(arguments, name="python"):
        return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}
    assert recipe.tool_code(as_sent('{"code": "x = 1"}')) == "x = 1"
    assert recipe.tool_code(as_sent({"code": "x = 2"})) == "x = 2"      # already decoded
    assert recipe.tool_code(as_sent("print(3)")) == "print(3)"          # bare code
    assert recipe.tool_code(as_sent('{"code": "print(')) is None        # JSON cut short: not run
    assert recipe.tool_code(as_sent('{"code": "x"}', name="browser")) is None
    assert recipe.tool_code(as_sent('{"cmd": "x"}')) is None
    assert recipe.tool_code({"type": "function"}) is None


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
