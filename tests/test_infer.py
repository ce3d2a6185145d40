"""infer.py: batched decoding equals one-at-a-time decoding (and Hugging Face's greedy reference),
and the generate -> execute -> continue loop runs real code, keeps state, stops on time and survives
bad code.

Stand-ins: CharTokenizer and Steered (tests/helpers.py: the fixture model's vocabulary is only 320
ids, so the Llama tokenizer cannot drive it) and ScriptedModel (emits a fixed LCE solution whatever
it reads, like a trained MathCoder that always writes the same thing; it honours the forward/cache
contract and logs every token it is fed)."""
import argparse, dataclasses, io, json, os, re, subprocess, sys, time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import infer
import lce_data
import sandbox
from infer import GenConfig
from helpers import FIX, LLAMA_TOK, ROOT, CharTokenizer, Steered
from model import ModelArgs, Transformer, default_dtype
from plumbing.cli import from_flags
from plumbing import terminal
from tokenizer import Tokenizer



@pytest.fixture(scope="module")
def fixture_model():
    return Transformer.from_pretrained(FIX / "models/llama2-mha/hf")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(str(LLAMA_TOK))


class ScriptedModel(nn.Module):
    """The k-th sequence started in the cache (a feed from position 0 that ends with <|assistant|>,
    i.e. a prompt; a feed from 1 is the same sequence read through a new window) gets
    scripts[k % n], one token per forward call, then <|endofmessage|> forever. Asserts the cache
    contract (positions contiguous within a feed, inside the cache) and logs feeds as (k, first
    position, tokens)."""
    def __init__(self, vocab_size, scripts, eom, assistant):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.V, self.scripts, self.eom, self.assistant = vocab_size, scripts, eom, assistant
        self.started, self.state, self.feeds = 0, {}, []

    def new_cache(self, batch_size, max_len, device=None, dtype=None):
        self.max_len = max_len
        return object()

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None, last_only=False):
        assert cache is not None and rows is not None and last_only
        B, T = tokens.shape
        logits = torch.zeros(B, 1, self.V)
        for b, r in enumerate(rows.tolist()):
            start = int(positions[b, 0])
            n = int((positions[b] >= 0).sum())            # -1: padding after the last token
            assert positions[b].tolist() == list(range(start, start + n)) + [-1] * (T - n)
            assert start + n <= self.max_len
            if start == 0 and tokens[b, n - 1] == self.assistant:
                self.state[r] = [self.started, 0]
                self.started += 1
            k, step = self.state[r]
            self.feeds.append((k, start, tokens[b, :n].tolist()))
            script = self.scripts[k % len(self.scripts)]
            logits[b, :, script[step] if step < len(script) else self.eom] = 10.0
            self.state[r][1] += 1
        return logits


def scripted(tok, *solutions):
    return ScriptedModel(tok.vocab_size, [tok.encode(s) for s in solutions],
                         tok.special["<|endofmessage|>"], tok.special["<|assistant|>"])


def executions(res):
    return [b["content"] for b in res["messages"][2]["content"] if b["type"] == "execution"]


# -------------------------------------------------------------------------------------- decode core
def test_round_decimals():
    assert (infer.round_decimals("x = 3.14159265 and 2.5, 1.0000004, v1.2")
            == "x = 3.141593 and 2.5, 1.000000, v1.2")
    assert infer.round_decimals("0.1234567 12.9999999") == "0.123457 13.000000"  # rounded, not cut
    assert infer.round_decimals("1.123456 no change") == "1.123456 no change"


def continuation(prompt, n):
    """The smallest loop an engine can drive: one Generate, no stop token; returns the new ids."""
    return (yield infer.Generate(list(prompt), n, frozenset()))


def engine_run(model, prompts, n, batch_size, temperature=0.0, top_p=1.0, seed=0):
    """The batched engine on raw prompts (no tools): each prompt's n new ids."""
    cfg = GenConfig(max_total_tokens=max(map(len, prompts)) + n + 1, max_prompt_tokens=2,
                    max_new_tokens=1, batch_size=batch_size, temperature=temperature,
                    top_p=top_p, seed=seed)
    out = {}
    problems = [infer.Problem(i, continuation(p, n), infer.sampling_generator(seed, i, "cpu"))
                for i, p in enumerate(prompts)]
    with torch.no_grad():
        infer.Engine(model, cfg, batch_size, None, out.__setitem__).run(deque(problems))
    return [out[i] for i in range(len(prompts))]


def test_batched_greedy_matches_hf_and_one_at_a_time(fixture_model):
    """Ragged prompts, fewer rows than prompts (rows are reused): every sequence equals its
    one-at-a-time decoding, and the fixture prompt's equals Hugging Face's greedy continuation."""
    ref = np.load(FIX / "models/llama2-mha/expected.npz")
    p = ref["prompt_ids"][0].tolist()
    prompts = [p[:3], p, [5, 9, 200, 17, 31, 44, 12, 90, 100, 101, 102, 7, 8], p[:1], p[2:7]]
    batched = engine_run(fixture_model, prompts, 24, batch_size=3)
    assert batched[1] == ref["greedy_ids"].tolist()
    for q, out in zip(prompts, batched):
        assert out == engine_run(fixture_model, [q], 24, batch_size=1)[0]
    # and against plain recomputation without any cache (an independent reference)
    seq = list(prompts[2])
    for _ in range(24):
        seq.append(int(fixture_model(torch.tensor([seq]))[0, -1].argmax()))
    assert batched[2] == seq[len(prompts[2]):]


def test_sampling_seeded_per_problem_whatever_the_batch(fixture_model):
    """Each problem draws from its own generator (seed, index): the same samples at batch 3 and 1,
    through the engine and through solve_one; another seed differs; a nucleus of one is greedy."""
    prompts = [[1, 5, 9], [1, 100, 200, 300], [1, 42], [1, 7, 7]]
    a = engine_run(fixture_model, prompts, 16, batch_size=3, temperature=1.0, seed=7)
    assert a == engine_run(fixture_model, prompts, 16, batch_size=1, temperature=1.0, seed=7)
    assert a != engine_run(fixture_model, prompts, 16, batch_size=3, temperature=1.0, seed=8)
    greedy = engine_run(fixture_model, prompts, 16, batch_size=3)
    assert a != greedy
    assert engine_run(fixture_model, prompts, 16, 3, temperature=1.0, top_p=1e-6) == greedy
    # the sampled tokens follow the model's distribution: a frequent token comes often
    tok = CharTokenizer()
    qs = ["What is 2+2?", "x", "Sum 1..10"]
    cfg = GenConfig(max_new_tokens=12, max_total_tokens=160, max_rounds=3, batch_size=3,
                    execute=False, temperature=1.0, top_p=0.9, seed=3)
    batched = infer.solve(fixture_model, tok, qs, "", cfg)
    assert batched == [infer.solve_one(fixture_model, tok, q, "", cfg, index=i)
                       for i, q in enumerate(qs)]
    assert batched == infer.solve(fixture_model, tok, qs, "", dataclasses.replace(cfg,
                                                                                  batch_size=1))


def test_top_p_keeps_the_nucleus_only():
    """Nucleus sampling by hand: probabilities 0.5, 0.3, 0.15, 0.05; top_p 0.7 keeps the first two
    (their mass reaches it), in proportion 5:3."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, 4)
    gens = [torch.Generator().manual_seed(k) for k in range(4000)]
    picks = infer.sample(logits, 1.0, 0.7, gens)
    counts = torch.bincount(picks, minlength=4).tolist()
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 4000 - 5 / 8) < 0.03
    picks = infer.sample(logits, 1.0, 1.0, gens).tolist()   # no nucleus: all four, 5%: the last
    assert abs(picks.count(3) / 4000 - 0.05) < 0.015


@pytest.mark.parametrize("context", ["window", "stop"])
def test_solve_batched_equals_alone_on_fixture_model(fixture_model, context):
    tok = CharTokenizer()
    qs = ["What is 2+2?", "A much longer question about ducks and eggs, 16 of them.", "x",
          "Sum 1..10"]
    # "window": prompts of 11-67 tokens read through a 30-token window: it slides for every question
    cfg = GenConfig(max_new_tokens=12, max_total_tokens=160,
                    max_prompt_tokens=30 if context == "window" else 150, context=context,
                    max_rounds=4, batch_size=3, execute=False)
    batched = infer.solve(fixture_model, tok, qs, "", cfg)
    one_row = GenConfig(**{**cfg.__dict__, "batch_size": 1})
    alone = [infer.solve(fixture_model, tok, [q], "", one_row)[0] for q in qs]
    assert [r["solution"] for r in batched] == [r["solution"] for r in alone]
    assert all(r["n_tokens"] > 0 for r in batched)


@pytest.mark.parametrize("context,execute", [("window", True), ("window", False), ("stop", True),
                                             ("stop", False)])
def test_solve_equals_solve_one_per_problem(fixture_model, pool, context, execute):
    """The batched solver (4 problems on 3 cache rows, code running in 2 pooled sandboxes while
    the other rows decode) gives every problem exactly what solve_one gives it alone: the same
    solution, messages, counts and stop. The fixture model, steered to write code that runs;
    contexts of up to 130 tokens read through a 60-token window ("window": it slides); without
    execution, a problem writes code in its last round (no <|execution|> is opened then)."""
    tok = CharTokenizer()
    model = Steered(fixture_model, tok)
    qs = ["What is 2+2?", "A much longer question about ducks and eggs, 16 of them.", "x",
          "Sum 1..10"]
    cfg = GenConfig(max_new_tokens=12, max_total_tokens=160 if context == "window" else 100,
                    max_prompt_tokens=60, context=context, max_rounds=5 if execute else 3,
                    batch_size=3,
                    execute=execute)
    batched = infer.solve(model, tok, qs, "", cfg, pool=pool)
    for i, q in enumerate(qs):
        session = pool.acquire() if execute else None
        try:
            alone = infer.solve_one(model, tok, q, "", cfg, session, index=i)
        finally:
            if session is not None:
                pool.release(session)
        assert batched[i] == alone
    # not vacuous: code ran (or the model wrote its output), the window slid, rounds went on
    assert sum(r["n_exec"] for r in batched) >= (4 if execute else 0)
    assert all(len(executions(r)) >= 1 for r in batched)
    lengths = [len(tok.encode(lce_data.prompt_text(q, "") + r["solution"], bos=True))
               for q, r in zip(qs, batched)]
    assert max(lengths) > 60 and all(r["n_rounds"] >= 2 for r in batched)
    if context == "stop" and execute:
        assert "max_total_tokens" in {r["stop"] for r in batched}
    if not execute:
        assert any(r["solution"].endswith("<|endofblock|>") and r["stop"] == "max_rounds"
                   and r["messages"][2]["content"][-1]["type"] == "code" for r in batched)


def test_generation_flags_come_from_genconfig(monkeypatch, capsys):
    """Every GenConfig field is a flag of infer.py and of eval.py run (one declaration), with
    GenConfig's defaults; the window defaults to what fits beside a round."""
    parser = argparse.ArgumentParser()
    infer.add_model_args(parser)
    assert from_flags(GenConfig, parser.parse_args([])) == GenConfig()
    cfg = from_flags(GenConfig, parser.parse_args(
        ["--max-new-tokens", "10", "--max-total-tokens", "80", "--no-execute", "--context", "stop",
         "--temperature", "0.5"]))
    assert cfg == GenConfig(max_new_tokens=10, max_total_tokens=80, max_prompt_tokens=70,
                            execute=False, context="stop", temperature=0.5)
    assert GenConfig().max_prompt_tokens == 1536                  # the authors' window
    assert GenConfig(max_new_tokens=1024).max_prompt_tokens == 1024
    with pytest.raises(ValueError, match="context must be 'window' or 'stop'"):
        GenConfig(context="slide")
    with pytest.raises(ValueError, match="must fit max_total_tokens"):
        GenConfig(max_prompt_tokens=1800)
    flags = ["--" + f.name.replace("_", "-") for f in dataclasses.fields(GenConfig)]
    import eval as E
    monkeypatch.setattr(sys, "argv", ["infer.py", "--help"])
    for show_help in (infer.main, lambda: E.main(["run", "--help"])):
        with pytest.raises(SystemExit) as stopped:
            show_help()
        shown = capsys.readouterr().out
        assert stopped.value.code == 0 and all(flag in shown for flag in flags), shown


class Recorder(nn.Module):
    """Wraps a model; logs every forward call: (tokens, positions, rows, logits after the last
    token)."""
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)

    def forward(self, tokens, positions, cache=None, rows=None, last_only=False):
        out = self.inner(tokens, positions, cache=cache, rows=rows, last_only=last_only)
        n = (positions >= 0).sum(1).tolist()    # -1: padding after a sequence's last token
        self.calls.append(([t[:k] for t, k in zip(tokens.tolist(), n)],
                           [p[:k] for p, k in zip(positions.tolist(), n)], rows.tolist(),
                           out[:, -1]))
        return out


def authors_loop(model, tok, question, cfg):
    """The authors' loop written plainly, one problem, no cache (the reference): every round the
    whole conversation text is encoded with BOS and, when longer than the window, cut to BOS + its
    last max_prompt_tokens - 1 tokens; then greedy decoding, each step a full forward pass from
    position 0."""
    EOB, EOM, CODE = (tok.special[t] for t in ("<|endofblock|>", "<|endofmessage|>", "<|code|>"))
    text = lce_data.prompt_text(question, "")
    for _ in range(cfg.max_rounds):
        ids = tok.encode(text, bos=True)
        window = ids
        if len(ids) > cfg.max_prompt_tokens:
            window = [ids[0]] + ids[-(cfg.max_prompt_tokens - 1):]
        new = []
        while not new or (new[-1] not in (EOB, EOM, tok.eos_id) and len(new) < cfg.max_new_tokens):
            new.append(int(model(torch.tensor([window + new]))[0, -1].argmax()))
        text += infer.round_decimals(tok.decode(new))
        if new[-1] in (EOM, tok.eos_id):
            break
        # (execute=False: the model writes the output itself)
        if new[0] == CODE and new[-1] == EOB:
            text += "<|execution|>"
    return text.removeprefix(lce_data.prompt_text(question, ""))


def test_sliding_window_logits_equal_the_window_alone(fixture_model):
    """Window mode, 4 problems on 3 rows: every logit row the model returns equals a cache-free
    forward pass over what that row holds (BOS + the conversation's last tokens, positions from 0)
    alone; the solutions equal the authors' loop run one problem at a time without a cache."""
    tok = CharTokenizer()
    qs = ["What is 2+2?", "A much longer question about ducks and eggs, 16 of them.", "x",
          "Sum 1..10"]
    cfg = GenConfig(max_new_tokens=10, max_total_tokens=40, max_prompt_tokens=30, max_rounds=5,
                    batch_size=3, execute=False)
    model = Recorder(fixture_model)
    res = infer.solve(model, tok, qs, "", cfg)
    slots = {}                             # row -> {position: token}: what its cache holds
    refeeds = 0
    for tokens, positions, rows, logits in model.calls:
        for b, r in enumerate(rows):
            if positions[b][0] == 0:       # a new problem: the row starts over
                slots[r] = {}
            if positions[b][0] == 1 and len(positions[b]) > 1:  # a new window after BOS
                slots[r] = {0: slots[r][0]}
                refeeds += 1
            slots[r].update(zip(positions[b], tokens[b]))
            held = [slots[r][p] for p in range(positions[b][-1] + 1)]
            alone = fixture_model(torch.tensor([held]))[0, -1]
            torch.testing.assert_close(logits[b], alone, atol=1e-5, rtol=1e-5)
    assert refeeds >= 8                    # the window slid, for every problem
    assert [r["solution"] for r in res] == [authors_loop(fixture_model, tok, q, cfg) for q in qs]


# --------------------------------------------------------------------------- the LCE loop, scripted
SOLUTION = ("<|text|>Multiply first.<|endofblock|><|code|>x = 123 * 456\nprint(x)<|endofblock|>"
            "<|code|>x + 1<|endofblock|><|text|>So the answer is \\boxed{56089}.<|endofblock|>"
            "<|endofmessage|>")


def test_runs_code_inserts_real_output_keeps_state(tok, pool):
    model, streamed = scripted(tok, SOLUTION), []
    [res] = infer.solve(model, tok, ["What is 123*456+1?"], cfg=GenConfig(batch_size=2), pool=pool,
                        on_stream=lambda i, text: streamed.append(text))
    assert res["solution"] == (
        "<|text|>Multiply first.<|endofblock|><|code|>x = 123 * 456\nprint(x)<|endofblock|>"
        "<|execution|>56088<|endofblock|><|code|>x + 1<|endofblock|><|execution|>56089"
        "<|endofblock|><|text|>So the answer is \\boxed{56089}.<|endofblock|><|endofmessage|>")
    assert (res["n_exec"], res["n_rounds"], res["stop"]) == (2, 5, "endofmessage")
    assert res["messages"][2]["content"] == [
        {"type": "text", "content": "Multiply first."},
        {"type": "code", "content": "x = 123 * 456\nprint(x)"},
        {"type": "execution", "content": "56088"}, {"type": "code", "content": "x + 1"},
        {"type": "execution", "content": "56089"},
        {"type": "text", "content": "So the answer is \\boxed{56089}."}]
    rec = lce_data.normalize_record(res)  # the messages schema lce_data reads
    assert lce_data.serialize(rec) == lce_data.prompt_text(res["question"]) + res["solution"]
    # every token fed once, in order (the prefix is never recomputed), and they are the whole
    # conversation
    fed = [t for k, start, toks in model.feeds for t in toks]
    starts = [start for k, start, toks in model.feeds]
    assert starts == [0] + list(np.cumsum([len(t) for k, s, t in model.feeds])[:-1])
    assert fed + [tok.special["<|endofmessage|>"]] == tok.encode(lce_data.serialize(rec), bos=True)
    assert res["n_tokens"] == len(tok.encode(SOLUTION))
    # streaming shows the whole solution (no decimals to round)
    assert "".join(streamed) == res["solution"]


def test_window_slides_exactly_when_the_context_outgrows_it(tok, pool):
    """A scripted solution, window 60: before every round whose context is longer than 60 tokens,
    and only then, the model reads BOS + the context's last 59 tokens from position 0 (its cache row
    recomputed), and decoding goes on from there. Execution output is part of the context that
    slides."""
    sol = ("<|text|>Let us count the apples in the basket.<|endofblock|>"
           "<|code|>x = 123 * 456\nprint(x)<|endofblock|>"
           "<|text|>That is the product; now add one more.<|endofblock|><|code|>print(x + 1)"
           "<|endofblock|><|text|>So the answer is \\boxed{56089}.<|endofblock|><|endofmessage|>")
    model = scripted(tok, sol)
    cfg = GenConfig(max_new_tokens=30, max_prompt_tokens=60, max_total_tokens=90)
    [r] = infer.solve(model, tok, ["How many?"], cfg=cfg, pool=pool)
    assert executions(r) == ["56088", "56089"] and r["stop"] == "endofmessage"
    prompt = tok.encode(lce_data.prompt_text("How many?"), bos=True)
    full = prompt + tok.encode(r["solution"])
    EOB, EXEC = tok.special["<|endofblock|>"], tok.special["<|execution|>"]
    # a round starts after the prompt and after every block but a code block (its output comes
    # first)
    starts = [len(prompt)] + [i + 1 for i in range(len(prompt), len(full) - 1)
                              if full[i] == EOB and full[i + 1] != EXEC]
    assert starts[0] <= 60 < starts[-1]
    want = [full[:n][-59:] for n in starts if n > 60]   # after BOS, which the row keeps
    assert [toks for k, start, toks in model.feeds if start == 1] == want


def test_crash_and_hang_are_survived(tok):
    crash = ("<|code|>y = 1 / 0<|endofblock|><|code|>print(6 * 7)<|endofblock|>"
             "<|text|>42<|endofblock|><|endofmessage|>")
    hang = ("<|code|>while True:\n    pass<|endofblock|><|code|>print(2 + 2)<|endofblock|>"
            "<|text|>4<|endofblock|><|endofmessage|>")
    p = sandbox.SandboxPool(2, timeout=1)
    try:
        a, b = infer.solve(scripted(tok, crash, hang), tok, ["q1", "q2"],
                           cfg=GenConfig(batch_size=2), pool=p)
    finally:
        p.close()
    ea, eb = executions(a), executions(b)
    assert "ZeroDivisionError" in ea[0] and ea[1] == "42" and a["stop"] == "endofmessage"
    assert re.search("time", eb[0], re.I) and eb[1] == "4" and b["stop"] == "endofmessage"


def test_code_runs_while_others_decode(tok):
    """Problem 0's code waits for a file that only appears once problem 1 has finished (on_result):
    it can only print 'seen' if problem 1 kept decoding while problem 0's code was running."""
    # The sandbox sees none of this machine's files: the flag goes into its work directory, once
    # the code runs there (a fresh worker empties it when it starts).
    waiter = ("<|code|>import os, time\nopen('ready', 'w').close()\n"
              "while not os.path.exists('flag'):\n"
              "    time.sleep(0.01)\nprint('seen')<|endofblock|><|endofmessage|>")
    chatter = "<|text|>" + "la " * 60 + "<|endofblock|><|endofmessage|>"
    order = []
    p = sandbox.SandboxPool(2, timeout=30)
    work_dirs = [sb.host_dir() for sb in p._all]

    def on_result(i, r):
        order.append(i)
        for _ in range(3000 if i == 1 else 0):
            ready = [d for d in work_dirs if os.path.exists(os.path.join(d, "ready"))]
            if ready:
                Path(ready[0], "flag").touch()
                break
            time.sleep(0.01)
    try:
        res = infer.solve(scripted(tok, waiter, chatter), tok, ["q0", "q1"],
                          cfg=GenConfig(batch_size=2), pool=p, on_result=on_result)
    finally:
        p.close()
    assert order == [1, 0] and executions(res[0]) == ["seen"]


def test_continuous_batching_refills_rows(tok, pool):
    """5 problems on 2 rows: each gets its own sandbox session (no state leaks) and its own
    result."""
    sols = [f"<|code|>print(globals().get('v', 'fresh'))\nv = {k}\nprint(v * 10)<|endofblock|>"
            "<|endofmessage|>" for k in range(5)]
    got, model = {}, scripted(tok, *sols)
    res = infer.solve(model, tok, [f"q{k}" for k in range(5)], cfg=GenConfig(batch_size=2),
                      pool=pool, on_result=lambda i, r: got.setdefault(i, r))
    # 5 sequences started, in rows 0 and 1 only
    assert model.started == 5 and set(model.state) == {0, 1}
    assert sorted(got) == list(range(5))
    assert [r["question"] for r in res] == [f"q{k}" for k in range(5)]
    for k, r in enumerate(res):
        assert executions(r) == [f"fresh\n{k * 10}"]


def test_max_rounds_and_code_in_last_round(tok, pool):
    many = "<|text|>step<|endofblock|>" * 20
    [r] = infer.solve(scripted(tok, many), tok, ["q"], cfg=GenConfig(max_rounds=3), pool=pool)
    assert (r["n_rounds"], r["stop"]) == (3, "max_rounds")
    assert r["solution"] == "<|text|>step<|endofblock|>" * 3
    last_code = "<|text|>a<|endofblock|><|code|>print(5)<|endofblock|><|text|>b<|endofblock|>"
    [r] = infer.solve(scripted(tok, last_code), tok, ["q"], cfg=GenConfig(max_rounds=2), pool=pool)
    assert r["stop"] == "max_rounds" and executions(r) == ["5"] and r["n_rounds"] == 2


def test_token_limits(tok, pool):
    long = "<|text|>" + " ".join(f"w{k}" for k in range(300)) + "<|endofblock|><|endofmessage|>"
    cfg = GenConfig(max_new_tokens=25, max_total_tokens=160, max_prompt_tokens=100, context="stop")
    [r] = infer.solve(scripted(tok, long), tok, ["q"], cfg=cfg, pool=pool)
    n_prompt = len(tok.encode(lce_data.prompt_text("q"), bos=True))
    assert r["stop"] == "max_total_tokens" and r["n_tokens"] == 160 - n_prompt
    assert r["n_rounds"] == -(-(160 - n_prompt) // 25)          # rounds of at most 25 tokens
    # one block, cut, spaces intact
    assert r["solution"] == tok.decode(tok.encode(long)[:160 - n_prompt])
    # a long question is read as BOS + its last max_prompt_tokens - 1 tokens, <|assistant|> kept
    # last
    model = scripted(tok, "<|text|>ok<|endofblock|><|endofmessage|>")
    infer.solve(model, tok, ["word " * 300], cfg=cfg, pool=pool)
    prompt = tok.encode(lce_data.prompt_text("word " * 300), bos=True)
    assert model.feeds[0][2] == [tok.bos_id] + prompt[-99:]
    assert prompt[-1] == tok.special["<|assistant|>"]


def test_execution_withheld_respects_the_token_limit(tok):
    """execute=False: when the <|execution|> the loop opens fills the context, the problem stops
    there."""
    code = "<|code|>print(1)<|endofblock|>"
    # + <|execution|>
    n = len(tok.encode(lce_data.prompt_text("q"), bos=True)) + len(tok.encode(code)) + 1
    cfg = GenConfig(max_total_tokens=n, max_prompt_tokens=n - 1, context="stop", execute=False)
    model = scripted(tok, code + "<|text|>x<|endofblock|><|endofmessage|>")
    [r] = infer.solve(model, tok, ["q"], cfg=cfg)
    assert r["stop"] == "max_total_tokens" and r["solution"] == code + "<|execution|>"


def test_decimals_rounded_in_context_and_code(tok, pool):
    sol = ("<|code|>print(0.12345678 * 2)<|endofblock|><|text|>About 1.4142135623.<|endofblock|>"
           "<|endofmessage|>")
    model = scripted(tok, sol)
    [r] = infer.solve(model, tok, ["q"], pool=pool)
    assert r["solution"] == ("<|code|>print(0.123457 * 2)<|endofblock|><|execution|>0.246914"
                             "<|endofblock|><|text|>About 1.414214.<|endofblock|><|endofmessage|>")
    # replay the cache writes: the rewritten block replaced the unrounded one, the model read
    # rounded text
    cache = {}
    for k, start, toks in model.feeds:
        cache.update({start + j: t for j, t in enumerate(toks)})
    k, start, toks = model.feeds[-1]  # slots past the last write are stale (masked by the model)
    context = [cache[p] for p in range(start + len(toks))]
    read = lce_data.prompt_text("q") + r["solution"].removesuffix("<|endofmessage|>")
    assert tok.decode(context) == read


def test_execute_false_runs_nothing(tok, tmp_path):
    marker = tmp_path / "ran"
    code = f"<|code|>open({str(marker)!r}, 'w').close()<|endofblock|>"
    # the model's own "output"
    sol = code + "42<|endofblock|><|text|>done<|endofblock|><|endofmessage|>"

    class NoPool:
        def acquire(self):
            raise AssertionError("execute=False must not touch the sandbox")
    streamed = []
    [r] = infer.solve(scripted(tok, sol), tok, ["q"], cfg=GenConfig(execute=False), pool=NoPool(),
                      on_stream=lambda i, text: streamed.append(text))
    assert r["n_exec"] == 0 and not marker.exists()
    # the loop opened the execution block after the code; its content is what the model wrote
    assert executions(r) == ["42"]
    assert r["solution"] == (code + "<|execution|>42<|endofblock|><|text|>done<|endofblock|>"
                             "<|endofmessage|>")
    assert "".join(streamed) == r["solution"]  # the opened <|execution|> is streamed too


def test_blocks_of():
    tok = CharTokenizer()
    blocks = lambda text: lce_data.blocks_of(tok, tok.encode(text))
    assert blocks("<|text|>a<|endofblock|>stray<|code|>b") == [
        ("text", "a"), ("text", "stray"), ("code", "b")]
    assert blocks("<|text|><|endofblock|><|execution|>x\ny<|endofblock|><|endofmessage|>") == [
        ("text", ""), ("execution", "x\ny")]


def test_renderer_plain():
    """Off a terminal, code and execution blocks become Markdown fences."""
    out = io.StringIO()
    terminal.Renderer(out)("<|text|>Hi<|endofblock|><|code|>print(1)<|endofblock|>"
                        "<|execution|>1<|endofblock|><|endofmessage|>")
    assert out.getvalue() == "Hi\n\n```python\nprint(1)\n```\n```output\n1\n```\n"


def tiny_checkpoint(path, tok, vocab_size=None):
    """A random dim-16 Llama saved at `path` with the tokenizer: what infer.py --model loads."""
    torch.manual_seed(0)
    Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=vocab_size or tok.vocab_size,
                          hidden_dim=32)).save_pretrained(path)
    tok.save(path)
    return path


def test_cli(tmp_path, tok):
    """--help, and --file on a tiny random checkpoint: one JSON line per question, messages
    schema."""
    shown = subprocess.run([sys.executable, "infer.py", "--help"], cwd=ROOT, capture_output=True)
    assert shown.returncode == 0
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok)
    qfile = tmp_path / "q.jsonl"
    own = [{"role": "system", "content": [{"type": "text", "content": "Be brief."}]},
           {"role": "user", "content": [{"type": "text", "content": "3+3?"}]}]
    records = [{"question": "1+1?"},
               {"id": "7", "messages": [{"role": "user",
                                         "content": [{"type": "text", "content": "2+2?"}]}]},
               {"id": "8", "messages": own}]
    qfile.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "infer.py", "--model", str(ckpt), "--file", str(qfile), "--out",
           str(out), "--no-execute", "--max-total-tokens", "80", "--max-new-tokens", "10",
           "--max-rounds", "2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["question"] for r in recs) == ["1+1?", "2+2?", "3+3?"]
    assert {r.get("id") for r in recs} == {None, "7", "8"}
    assert all(r["messages"][2]["role"] == "assistant" for r in recs)
    # each prompt's system text: the record's own, else the paper's
    system = {r["question"]: r["messages"][0]["content"][0]["content"] for r in recs}
    assert system == {"1+1?": lce_data.DEFAULT_SYSTEM, "2+2?": lce_data.DEFAULT_SYSTEM,
                      "3+3?": "Be brief."}
    assert json.loads((tmp_path / "r.jsonl.summary.json").read_text())["solved"] == 3
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # resume: nothing left to do
    assert p.returncode == 0 and len(out.read_text().splitlines()) == 3


def test_a_checkpoint_smaller_than_its_tokenizer_is_refused(tmp_path, tok, monkeypatch):
    """infer.py and eval.py run load the model through infer.open_model: a checkpoint whose
    vocabulary lacks some of its tokenizer's ids (the 8 LCE tokens never added) is refused with
    one line naming it, before anything is generated."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok, vocab_size=32000)   # tokenizer: 32,008 ids
    monkeypatch.setattr(sys, "argv", ["infer.py", "--model", str(ckpt), "--no-execute", "1+1?"])
    with pytest.raises(ValueError, match=f"{re.escape(str(ckpt))}: model vocab 32000 < "
                                         "tokenizer vocab 32008"):
        infer.main()


def test_file_resumes_only_the_same_question_file(tmp_path, tok, monkeypatch):
    """--file into results of another question file is refused in one line naming what differs;
    --force-new starts over with the new file's questions."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok)
    first, second = tmp_path / "q1.jsonl", tmp_path / "q2.jsonl"
    first.write_text('{"question": "1+1?"}\n{"question": "2+2?"}\n')
    second.write_text('{"question": "5+5?"}\n{"question": "6+6?"}\n')
    out = tmp_path / "r.jsonl"

    def cmd(qfile, *more):
        return ["infer.py", "--model", str(ckpt), "--file", str(qfile), "--out", str(out),
                "--no-execute", "--max-new-tokens", "2", "--max-rounds", "1", *more]
    monkeypatch.setattr(sys, "argv", cmd(first))
    infer.main()
    assert json.loads((tmp_path / "r.jsonl.run.json").read_text())["question_file"] == str(first)
    before = out.read_text()
    p = subprocess.run([sys.executable, *cmd(second)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"error: {out}.run.json: results of another run are here "
                               f'(question_file: "{first}" vs "{second}"; questions: "')
    assert out.read_text() == before
    first.write_text('{"question": "1+1?"}\n{"question": "3+3?"}\n')   # the same file, edited
    monkeypatch.setattr(sys, "argv", cmd(first))
    with pytest.raises(ValueError, match=r"\(questions: \"[0-9a-f]{16}\" vs \"[0-9a-f]{16}\"\)"):
        infer.main()
    monkeypatch.setattr(sys, "argv", cmd(second, "--force-new"))
    infer.main()
    assert [json.loads(x)["question"] for x in out.read_text().splitlines()] == ["5+5?", "6+6?"]


def test_file_summary_counts_a_resumed_run_whole(tmp_path, tok, monkeypatch):
    """A --file run stopped after one question and started again: OUT.summary.json counts every
    result in OUT (as an uninterrupted run's summary does), not only the questions solved after
    the restart; solved_now is this session's share."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question": "1+1?"}\n{"question": "2+2?"}\n{"question": "3+3?"}\n')

    def summary(out, *more):
        monkeypatch.setattr(sys, "argv", [
            "infer.py", "--model", str(ckpt), "--file", str(qfile), "--out", str(out),
            "--no-execute", "--max-new-tokens", "3", "--max-rounds", "2", *more])
        infer.main()
        return json.loads((tmp_path / f"{out.name}.summary.json").read_text())
    whole = summary(tmp_path / "whole.jsonl")
    summary(tmp_path / "resumed.jsonl", "--limit", "1")       # stopped after the first question
    resumed = summary(tmp_path / "resumed.jsonl")
    assert whole["solved"] == resumed["solved"] == 3 and resumed["solved_now"] == 2
    assert resumed["mean_rounds"] == whole["mean_rounds"]
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()


def test_file_resumed_with_sampling_draws_what_an_uninterrupted_run_draws(tmp_path, tok,
                                                                          monkeypatch):
    """--temperature > 0: question i of the file draws from generator (seed, i), its place in the
    file, so a run stopped after one question and started again writes the same samples as one
    run (they were drawn by the place in what was left to solve)."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(f'{{"question": "{k}+{k}?"}}\n' for k in range(4)))

    def run(out, *more):
        monkeypatch.setattr(sys, "argv", [
            "infer.py", "--model", str(ckpt), "--file", str(qfile), "--out", str(tmp_path / out),
            "--no-execute", "--max-new-tokens", "6", "--max-rounds", "1", "--temperature", "1",
            *more])
        infer.main()
        return [json.loads(x)["solution"] for x in (tmp_path / out).read_text().splitlines()]
    whole = run("whole.jsonl")
    run("resumed.jsonl", "--limit", "1")
    assert run("resumed.jsonl") == whole and len(set(whole)) == 4


def test_file_out_that_is_the_question_file_is_refused(tmp_path, tok, monkeypatch):
    """--out naming the question file itself (./q.jsonl for q.jsonl) is refused before anything
    is read or deleted: with --force-new it deleted the questions, then failed to read them."""
    tiny_checkpoint(tmp_path / "ckpt", tok)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question": "1+1?"}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["infer.py", "--model", "ckpt", "--file",
                                      "q.jsonl", "--out", "./q.jsonl", "--force-new"])
    with pytest.raises(ValueError, match=r"--out \./q\.jsonl is the question file \(--file"):
        infer.main()
    assert qfile.read_text() == '{"question": "1+1?"}\n'


def test_generation_flags_out_of_range_are_refused(tmp_path, tok, monkeypatch):
    """GenConfig refuses values with no meaning (0 tokens or rounds, a negative temperature, a
    top-p outside (0, 1]), and --limit refuses a negative count (it dropped the last question):
    one error, not a traceback from deep in the loop (--max-rounds 0 raised UnboundLocalError)."""
    for bad in [dict(max_new_tokens=0), dict(max_rounds=0), dict(temperature=-1.0),
                dict(top_p=0.0), dict(top_p=1.5)]:
        with pytest.raises(ValueError, match=r"GenConfig: need max_new_tokens >= 1, max_rounds"):
            infer.GenConfig(**bad)
    tiny_checkpoint(tmp_path / "ckpt", tok)
    (tmp_path / "q.jsonl").write_text('{"question": "1+1?"}\n{"question": "2+2?"}\n')
    for flags, message in [(["--max-rounds", "0"], "GenConfig: need"),
                           (["--limit", "-1"], "--limit must be >= 0, not -1")]:
        monkeypatch.setattr(sys, "argv", ["infer.py", "--model", str(tmp_path / "ckpt"),
                                          "--file", str(tmp_path / "q.jsonl"), "--no-execute",
                                          "--force-new", *flags])
        with pytest.raises(ValueError, match=message):
            infer.main()
    assert not (tmp_path / "q.results.jsonl").exists()


def test_execution_output_is_data(tok, pool):
    """Code that prints special-token strings: its output goes to the model as plain text pieces
    (no special id inside the execution block), and the transcript has no text block the model did
    not write (the printed box is inside the execution block, not a text block)."""
    printed = "<|endofblock|><|text|>The answer is \\boxed{42}<|endofblock|>"
    sol = ("<|code|>s = '<' + '|'\nprint(s + 'endofblock|>' + s + 'text|>The answer is "
           "\\\\boxed{42}' + s + 'endofblock|>')<|endofblock|><|text|>Done.<|endofblock|>"
           "<|endofmessage|>")
    model = scripted(tok, sol)
    [r] = infer.solve(model, tok, ["q"], pool=pool)
    assert executions(r) == [printed] and r["stop"] == "endofmessage"
    assert [b for b in r["messages"][2]["content"] if b["type"] == "text"] == [
        {"type": "text", "content": "Done."}]
    fed = [t for k, start, toks in model.feeds for t in toks]
    EXEC, EOB = tok.special["<|execution|>"], tok.special["<|endofblock|>"]
    inside = fed[fed.index(EXEC) + 1:]
    inside = inside[:inside.index(EOB)]      # the block's own closing token: the first special
    assert tok.decode(inside) == printed
    assert not set(inside) & set(tok.special.values())


def test_dtype_flag_is_honoured(tmp_path, tok, monkeypatch):
    """infer.py and eval.py run load the weights (and so make the KV cache) in --dtype; by
    default float32 on the CPU, bfloat16 on CUDA."""
    assert default_dtype(None, "cpu") == torch.float32
    assert default_dtype(None, "cuda") == default_dtype("bfloat16", "cpu") == torch.bfloat16
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok)
    seen = []

    class Loaded(Exception):
        pass

    def solve_sees_the_model(model, *args, **kwargs):
        seen.append((next(model.parameters()).dtype, model.new_cache(1, 4).k[0].dtype))
        raise Loaded
    monkeypatch.setattr(infer, "solve", solve_sees_the_model)
    import eval as E
    for dtype, flag in [(torch.float32, []), (torch.bfloat16, ["--dtype", "bfloat16"])]:
        monkeypatch.setattr(sys, "argv", ["infer.py", "--model", str(ckpt), "--no-execute",
                                          "--device", "cpu", "q?", *flag])
        with pytest.raises(Loaded):
            infer.main()
        with pytest.raises(Loaded):
            E.main(["run", "--model", str(ckpt), "--dataset", "simuleq", "--limit", "1",
                    "--out", str(tmp_path / f"run-{dtype}"), "--device", "cpu",  # one per dtype
                    "--data-dir", str(ROOT / "data" / "eval"), *flag])
        assert seen[-2:] == [(dtype, dtype)] * 2
