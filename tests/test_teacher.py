"""plumbing/teacher.py: the teacher behind an OpenAI-compatible server, as a long run needs it:
server errors retried, reported in one line and left for the next run, an unreachable server
stopping the run, replies cached so no prompt is asked twice, tool calls read as servers send them,
and no test question entering the new problems. A stub on 127.0.0.1 plays the server
(tests/test_server.py); the helpers that script it are tests/test_recipe.py's."""
import json
import socket
import subprocess
import sys

import pytest

import recipe
from plumbing import teacher as T
from plumbing.teacher import TeachConfig
from test_recipe import (ROOT, SQUARES, fast, first_test_question, pool, reply,  # noqa: F401
                         scripted_teacher, squares_teacher)
from test_server import KEY, StubServer


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
    with StubServer(scripted_teacher(scripts)) as stub:
        counts = recipe.teach(fast(stub.url), TeachConfig("t"), problems, out,
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
    with StubServer(scripted_teacher({down: lambda n, body: (200, reply("\\boxed{1}"))})) as stub:
        counts = recipe.teach(fast(stub.url), TeachConfig("t"), problems, out, pool=pool)
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


def test_new_problems_never_repeat_a_test_question_nor_each_other():
    janet = first_test_question()
    assert janet.startswith("Janet’s ducks lay 16 eggs per day.")
    tests = T.test_questions()
    problems = [{"question": q} for q in [
        "A new one: 3 boxes of 17 pens.",
        "  " + janet.upper().replace(" ", "  ") + "  ",     # the test question, spaced and shouted
        "a NEW one -- 3 boxes of 17 pens",                   # a repeat, punctuation aside
        "Tom has 3 apples.",                                 # one of the seed examples
        "?!",                                                # nothing left once normalised
        "Another: 5 crates of 12 eggs."]]
    kept, counts = T.keep_unseen(problems, tests, {T.normalized("Tom has 3 apples.")})
    assert [p["question"] for p in kept] == ["A new one: 3 boxes of 17 pens.",
                                             "Another: 5 crates of 12 eggs."]
    assert counts == {"written": 6, "kept": 2, "in_test_set": 1, "repeat": 3}
    # every test set of data/eval is read: a MATH question too
    assert T.normalized(first_test_question("MATH_5_test_post.jsonl")) in tests


def test_teacher_generator_asks_each_prompt_once_over_runs(tmp_path, capsys):
    prompts = ["p0", "p1", "p2"]
    answers = {"p0": (200, reply("New problem: zero")), "p1": (503, {"error": "busy"}),
               "p2": (200, reply(" two "))}
    cache = tmp_path / "new.replies.jsonl"
    respond = lambda path, body: answers[body["messages"][0]["content"]]
    with StubServer(respond) as stub:
        generate = T.teacher_generator(fast(stub.url), "t", cache, concurrency=2)
        assert generate(prompts) == ["New problem: zero", "", " two "]   # p1 failed: left out
        assert len(stub.requests) == 2 + 3                 # p1: the first try and 2 retries
        assert "prompt 1: " in capsys.readouterr().err
        answers["p1"] = (200, reply("one"))
        assert generate(prompts) == ["New problem: zero", "one", " two "]
        assert len(stub.requests) == 6                     # only p1 was asked again
    with pytest.raises(ValueError, match="other prompts"):   # a cache from other pairs
        generate(["q0", "q1", "q2"])


def test_tool_calls_are_read_as_servers_send_them():
    def as_sent(arguments, name="python"):
        return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}
    assert T.tool_code(as_sent('{"code": "x = 1"}')) == "x = 1"
    assert T.tool_code(as_sent({"code": "x = 2"})) == "x = 2"      # already decoded
    assert T.tool_code(as_sent("print(3)")) == "print(3)"          # bare code
    assert T.tool_code(as_sent('{"code": "print(')) is None        # JSON cut short: not run
    assert T.tool_code(as_sent('{"code": "x"}', name="browser")) is None
    assert T.tool_code(as_sent('{"cmd": "x"}')) is None
    assert T.tool_code({"type": "function"}) is None
