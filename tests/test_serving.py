"""plumbing/serving.py: the inference loop with the model behind a stub OpenAI-compatible server
(tests/helpers.py's StubServer, on 127.0.0.1): the stub serving the fixture model gives infer.solve's
solutions; eval.py run --server and infer.py --server write results, resume and name failures in one
line; a reply continues a cut block as the server wrote it."""
import json
import socket
import subprocess
import sys
import threading

import pytest
import torch

import eval as evaluation
import infer
import lce_data
from helpers import FIX, KEY, ROOT, CharTokenizer, Steered, StubServer, completion, fast
from infer import GenConfig
from model import Transformer
from plumbing import serving
from tokenizer import Tokenizer


def model_server(model, tok):
    """respond() for StubServer: a /v1/completions endpoint serving `model` greedily, as vLLM
    would: the prompt (ids, or text that it encodes with BOS) is prefilled, tokens are drawn one at
    a time until a stop token (kept in the text, as include_stop_str_in_output asks) or EOS (not
    in the text) or max_tokens; the text is the continuation as decoded after the prompt."""
    lock = threading.Lock()
    stops = {tok.special["<|endofblock|>"], tok.special["<|endofmessage|>"], tok.eos_id}

    @torch.no_grad()
    def respond(path, body):
        assert path == "/v1/completions" and body["temperature"] == 0.0
        assert body["stop"] == ["<|endofblock|>", "<|endofmessage|>"]
        prompt = body["prompt"]
        ids = list(prompt) if isinstance(prompt, list) else tok.encode(prompt, bos=True)
        with lock:
            cache = model.new_cache(1, len(ids) + body["max_tokens"])
            logits = model(torch.tensor([ids]), cache=cache, last_only=True)[:, -1]
            new = []
            while True:
                new.append(int(logits.argmax(-1)))
                if new[-1] in stops or len(new) == body["max_tokens"]:
                    break
                position = torch.tensor([[len(ids) + len(new) - 1]])
                logits = model(torch.tensor([[new[-1]]]), position, cache=cache)[:, -1]
        text = tok.decode(ids + new)[len(tok.decode(ids)):]
        finish = "stop" if new[-1] in stops else "length"
        return 200, {"choices": [{"index": 0, "text": text, "finish_reason": finish}],
                     "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new)}}
    return respond


@pytest.mark.parametrize("context,execute,prompt_as", [("window", True, "ids"),
                                                       ("stop", False, "ids"),
                                                       ("window", True, "text")])
def test_the_server_engine_gives_the_local_engines_solutions(pool, context, execute, prompt_as):
    """The fixture model, steered to write code that runs (tests/helpers.py), solves four
    problems locally (infer.solve) and behind the stub (serving.solve_served, 3 in flight): the
    same solutions, messages, token counts, rounds, executions and stops, the window sliding."""
    tok = CharTokenizer()
    model = Steered(Transformer.from_pretrained(FIX / "models/llama2-mha/hf"), tok)
    qs = ["What is 2+2?", "A much longer question about ducks and eggs, 16 of them.", "x",
          "Sum 1..10"]
    cfg = GenConfig(max_new_tokens=12, max_total_tokens=160 if context == "window" else 100,
                    max_prompt_tokens=60, context=context, max_rounds=5 if execute else 3,
                    batch_size=3, execute=execute)
    local = infer.solve(model, tok, qs, "", cfg, pool=pool)
    finished = []
    with StubServer(model_server(model, tok)) as stub:
        steps = [infer.solution_steps(tok, q, "", cfg) for q in qs]   # the same loop
        served = serving.solve_served(fast(stub.url), tok, steps, cfg, infer.run_code, pool,
                                      on_result=lambda i, r: finished.append(i), concurrency=3,
                                      prompt_as=prompt_as)
    assert served == local
    assert sorted(finished) == [0, 1, 2, 3]
    # not vacuous: code ran (or the model wrote its output), the window slid, rounds went on
    assert sum(r["n_exec"] for r in served) >= (4 if execute else 0)
    lengths = [len(tok.encode(lce_data.prompt_text(q, "") + r["solution"], bos=True))
               for q, r in zip(qs, served)]
    assert max(lengths) > 60                  # contexts outgrew the 60-token window
    assert all(r["n_rounds"] >= 2 for r in served)
    for _, _, body in stub.requests:         # BOS + the window; "stop": the window + a round fit
        window = body["prompt"]
        if prompt_as == "text":
            window = tok.encode(window, bos=True)
        assert window[0] == tok.bos_id
        assert len(window) <= 60 if context == "window" else len(window) + body["max_tokens"] <= 100
    assert len(stub.requests) == sum(r["n_rounds"] for r in served)


def scripted_mathcoder(tok, fail=()):
    """respond() for StubServer: a MathCoder that reads its window (token ids, decoded with the
    checkpoint's tokenizer) and writes text, code, then the boxed answer, one block a round.
    Questions containing any string of `fail` get HTTP 500."""
    def respond(path, body):
        window = tok.decode(body["prompt"])
        if any(f in window for f in fail):
            return 500, {"error": "the GPU fell over"}
        written = window.split("<|assistant|>", 1)[1]
        if not written:
            return 200, completion("<|text|>Let me compute it.<|endofblock|>")
        if "<|code|>" not in written:
            return 200, completion("<|code|>print(6 * 7)<|endofblock|>")
        if "\\boxed" not in written:
            return 200, completion("<|text|>The answer is \\boxed{42}.<|endofblock|>")
        return 200, completion("<|endofmessage|>")
    return respond


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint directory holding only the Llama-2 tokenizer: all --server needs locally."""
    path = tmp_path_factory.mktemp("ckpt")
    Tokenizer(str(FIX / "tokenizer/llama2-tokenizer.model")).save(path)
    return path


def test_eval_run_with_a_server_results_resume_and_summary(tmp_path, checkpoint, key, capsys):
    data = tmp_path / "data"
    data.mkdir()
    questions = {"a": "What is 6 times 7?", "b": "Seven sixes?", "c": "What is 3 + 4?"}
    answers = {"a": "42", "b": "42", "c": "7"}
    (data / "GSM8K_test_post.jsonl").write_text("".join(
        json.dumps(lce_data.make_record(questions[i], answer=answers[i], id=i)) + "\n"
        for i in "abc"))
    tok = Tokenizer.from_checkpoint(str(checkpoint))
    out = tmp_path / "run"
    argv = ["run", "--server", None, "--tokenizer", str(checkpoint), "--dataset", "gsm8k",
            "--data-dir", str(data), "--out", str(out), "--concurrency", "2", "--retries", "1",
            "--api-key-env", "STUB_KEY", "--served-model", "mathcoder"]
    with StubServer(scripted_mathcoder(tok, fail=["Seven sixes"])) as stub:
        argv[2] = stub.url
        evaluation.main(argv)
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "HTTP 500" in line]
    assert line.startswith(f"problem b: {stub.url}/v1/completions answered HTTP 500")
    assert line.endswith("(after 2 tries)")
    results = [json.loads(line) for line in open(out / "results.jsonl")]
    assert sorted(r["id"] for r in results) == ["a", "c"]          # b is left for the next run
    assert {r["id"]: r["correct"] for r in results} == {"a": True, "c": False}
    a = next(r for r in results if r["id"] == "a")
    assert a["solution"] == ("<|text|>Let me compute it.<|endofblock|><|code|>print(6 * 7)"
                             "<|endofblock|><|execution|>42<|endofblock|><|text|>The answer is "
                             "\\boxed{42}.<|endofblock|><|endofmessage|>")
    assert all(body["model"] == "mathcoder" and body["max_tokens"] == 512
               for _, _, body in stub.requests)
    # resumed with the server well: only b is asked, and the summary covers all three
    with StubServer(scripted_mathcoder(tok)) as stub:
        argv[2] = stub.url
        evaluation.main(argv)
    assert {tok.decode(body["prompt"]).count("Seven sixes") for _, _, body in stub.requests} == {1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["correct"] == 2
    for path in out.iterdir():               # the key reached no file
        assert KEY not in path.read_text()
    assert KEY not in capsys.readouterr().err + err


def test_infer_cli_with_a_server_and_an_unreachable_one(tmp_path, checkpoint, monkeypatch,
                                                         capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is 6 times 7?"}) + "\n")
    tok = Tokenizer.from_checkpoint(str(checkpoint))
    out = tmp_path / "results.jsonl"
    with StubServer(scripted_mathcoder(tok)) as stub:
        monkeypatch.setattr(sys, "argv", ["infer.py", "--server", stub.url, "--tokenizer",
                                          str(checkpoint), "--file", str(questions), "--out",
                                          str(out), "--concurrency", "1"])
        infer.main()
    [result] = [json.loads(line) for line in open(out)]
    assert result["index"] == 0 and result["stop"] == "endofmessage" and result["n_exec"] == 1
    assert "\\boxed{42}" in result["solution"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "infer.py", "--server", f"http://127.0.0.1:{port}",
                           "--tokenizer", str(checkpoint), "--retries", "0", "--no-execute",
                           "What is 1 + 1?"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"error: problem 0: server http://127.0.0.1:{port} "
                                            "unreachable ([Errno 111] Connection refused) "
                                            "(after 1 tries)")


def test_a_reply_continues_a_cut_block_without_a_space_coming_in_between():
    """The Llama tokenizer puts a dummy-prefix space before every piece of text it encodes; the
    reply that continues a block cut mid-word must read on as the server wrote it."""
    tok = Tokenizer(str(FIX / "tokenizer/llama2-tokenizer.model"))
    prompt = tok.encode(lce_data.prompt_text("Q?"), bos=True)
    cut = prompt + tok.encode("<|text|>The answer is some")
    for reply in ("thing", " thing.<|endofblock|>", "\n\nx = 1.5", "<|endofblock|>"):
        ids = serving.continuation_ids(tok, cut, reply)
        assert tok.decode(cut + ids).endswith("<|text|>The answer is some" + reply)
    fresh = prompt                                    # after <|assistant|>: a new block
    assert serving.continuation_ids(tok, fresh, "<|code|>x = 1<|endofblock|>") == tok.encode(
        "<|code|>x = 1<|endofblock|>")
    assert serving.continuation_ids(tok, fresh, "Hi", eos=True) == tok.encode("Hi") + [tok.eos_id]
