"""lce_data.py: which tokens carry loss, batching/packing, validation, the authors' format."""
import json
import os
import subprocess
import sys

import pytest
import torch

import lce_data as D
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SAMPLE = os.path.join(ROOT, "data", "samples", "official_outputs_sample.jsonl")
IDS = {t: 32000 + k for k, t in enumerate(["<|system|>", "<|user|>", "<|assistant|>", "<|text|>", "<|code|>",
                                           "<|execution|>", "<|endofblock|>", "<|endofmessage|>"])}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(os.path.join(FIX, "tokenizer", "llama2-tokenizer.model"))


def rec(blocks, system="", question="What is 12*34?"):
    return {"messages": [{"role": "system", "content": [{"type": "text", "content": system}]},
                         {"role": "user", "content": [{"type": "text", "content": question}]},
                         {"role": "assistant", "content": [{"type": t, "content": c} for t, c in blocks]}]}


R408 = rec([("text", "Let's compute it."), ("code", "print(12*34)"), ("execution", "408"),
            ("text", "The answer is \\boxed{408}.")])


def test_serialize_and_ids_match_the_reference_conversation(tok):
    # tests/fixtures/tokenizer/expected.json case 8 is this very conversation, with its reference ids
    case = json.load(open(os.path.join(FIX, "tokenizer", "expected.json")))["cases"][7]
    assert D.serialize(R408) == case["text"]
    ids, labels = D.encode_example(R408, tok, 4096)
    assert ids == case["ids_with_bos"]
    assert len(labels) == len(ids)


def test_loss_positions_token_by_token(tok):
    ids, labels = D.encode_example(R408, tok, 4096)
    e = tok.sentencepiece.encode
    # (tokens, carries loss) written out by hand from docs/method.md §3
    expected = [([1], 0), ([IDS["<|system|>"], IDS["<|text|>"], IDS["<|endofblock|>"], IDS["<|endofmessage|>"]], 0),
                ([IDS["<|user|>"], IDS["<|text|>"]] + e("What is 12*34?") + [IDS["<|endofblock|>"]], 0),
                ([IDS["<|endofmessage|>"], IDS["<|assistant|>"]], 0),
                ([IDS["<|text|>"]] + e("Let's compute it.") + [IDS["<|endofblock|>"]], 1),
                ([IDS["<|code|>"]] + e("print(12*34)") + [IDS["<|endofblock|>"]], 1),
                ([IDS["<|execution|>"]] + e("408") + [IDS["<|endofblock|>"]], 0),
                ([IDS["<|text|>"]] + e("The answer is \\boxed{408}.") + [IDS["<|endofblock|>"]], 1),
                ([IDS["<|endofmessage|>"]], 1)]
    want_ids = [t for toks, _ in expected for t in toks]
    want_labels = [t if learn else -100 for toks, learn in expected for t in toks]
    assert ids == want_ids
    assert labels == want_labels
    learned = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert learned == ("<|text|>Let's compute it.<|endofblock|><|code|>print(12*34)<|endofblock|>"
                       "<|text|>The answer is \\boxed{408}.<|endofblock|><|endofmessage|>")


def test_multi_round_and_execution_ablation(tok):
    r = rec([("code", "x = 3\nx**2"), ("execution", "9"), ("text", "Now add."), ("code", "x + 1"),
             ("execution", "Traceback: <|token|> error"), ("text", "So \\boxed{4}.")],
            system=D.DEFAULT_SYSTEM, question="Q?")
    ids, labels = D.encode_example(r, tok, 4096)
    assert ids == tok.encode(D.serialize(r), bos=True)
    learned = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert learned == ("<|code|>x = 3\nx**2<|endofblock|><|text|>Now add.<|endofblock|><|code|>x + 1"
                       "<|endofblock|><|text|>So \\boxed{4}.<|endofblock|><|endofmessage|>")
    # every execution token (content and both markers) carries no loss
    in_exec = False
    for i, lab in zip(ids, labels):
        in_exec = in_exec or i == IDS["<|execution|>"]
        if in_exec:
            assert lab == -100
        if i == IDS["<|endofblock|>"]:
            in_exec = False
    ids2, labels2 = D.encode_example(r, tok, 4096, train_on_execution=True)
    assert ids2 == ids
    assert tok.decode([i for i, lab in zip(ids2, labels2) if lab != -100]) == \
        D.serialize(r).split("<|assistant|>")[1]


def test_prompt_text_is_the_serialized_prefix():
    p = D.prompt_text("What is 12*34?", system="")
    assert p == D.serialize(R408)[:len(p)] and p.endswith("<|endofmessage|><|assistant|>")
    # the default system text is the paper's, the one every released solution shows (debug_result)
    released = json.loads(open(SAMPLE, encoding="utf-8").readline())["debug_result"][0]
    assert released == {"role": "system",
                        "content": "Below is a math problem. Please solve it step by step."}
    assert D.prompt_text("Q").startswith(f'<|system|><|text|>{released["content"]}<|endofblock|>')


def test_overflow_truncate_drop_and_stats(tok):
    st = {}
    ids, labels = D.encode_example(R408, tok, 20, stats=st)
    full, full_labels = D.encode_example(R408, tok, 4096)
    assert ids == full[:20] and labels == full_labels[:20] and st == {"examples": 1, "truncate": 1}
    assert D.encode_example(R408, tok, 20, overflow="drop", stats=st) is None and st["drop"] == 1
    with pytest.raises(ValueError, match="overflow"):                  # refused even when nothing overflows
        D.encode_example(R408, tok, 4096, overflow="cut")
    exs, st = D.encode_records([R408, R408], tok, 12)       # truncated inside the prompt: no loss left
    assert exs == [] and st["no_loss"] == 2 and st["truncate"] == 2
    exs, st = D.encode_records([R408], tok, 4096)
    assert st["loss_tokens"] == sum(lab != -100 for lab in full_labels) and st["tokens"] == len(full)


def test_pad_batch():
    ex = [([1, 5, 6], [-100, 5, 6]), ([1, 7], [-100, 7])]
    b = D.pad_batch(ex, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert b["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert b["positions"].tolist() == [[0, 1, 2], [0, 1, 2]] and b["doc_ids"] is None
    assert D.token_utilisation(ex, [b]) == 5 / 6


def _random_examples(n, seed, lo=3, hi=40, vocab=320):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        L = int(torch.randint(lo, hi, (1,), generator=g))
        ids = torch.randint(3, vocab, (L,), generator=g).tolist()
        out.append(([1] + ids, [-100] + [t if k % 3 else -100 for k, t in enumerate(ids)]))
    return out


def test_packing_keeps_examples_whole_and_apart():
    ex = _random_examples(50, 0)
    rows = D.pack_examples(ex, 64, pad_id=0)
    found = []
    for row in rows:
        assert all(v.shape == (64,) for v in row.values())
        doc = row["doc_ids"].tolist()
        for d in sorted(set(doc) - {-1}):
            span = [k for k, x in enumerate(doc) if x == d]
            assert span == list(range(span[0], span[0] + len(span)))          # contiguous
            assert row["positions"][span].tolist() == list(range(len(span)))  # positions restart at 0
            found.append((row["input_ids"][span].tolist(), row["labels"][span].tolist()))
        pads = [k for k, x in enumerate(doc) if x == -1]
        assert pads == list(range(64 - len(pads), 64))                         # padding only at the end
        assert set(row["labels"][pads].tolist()) <= {-100}
    assert sorted(found) == sorted(ex)                                         # each example exactly once
    # best-fit decreasing: 6+4 and 5+3+2 fill two rows of 10 exactly
    small = [([1] * n, [-100] * n) for n in (6, 5, 4, 3, 2)]
    rows = D.pack_examples(small, 10, pad_id=0)
    assert len(rows) == 2 and D.token_utilisation(small, rows) == 1.0
    with pytest.raises(ValueError, match="seq_len"):
        D.pack_examples([([1] * 11, [-100] * 11)], 10, 0)
    # packing wastes less than padding the same examples in batches of 8
    padded = [D.pad_batch(ex[i:i + 8], 0) for i in range(0, len(ex), 8)]
    assert D.token_utilisation(ex, D.pack_examples(ex, 64, 0)) > D.token_utilisation(ex, padded)


def test_packed_logits_equal_examples_alone():
    model_py = pytest.importorskip("model")
    m = model_py.Transformer.from_pretrained(os.path.join(FIX, "models", "llama2-mha", "hf"))
    m.eval()
    ex = _random_examples(9, 1, lo=5, hi=30)
    rows = D.pack_examples(ex, 64, pad_id=0)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        packed = m(batch["input_ids"], positions=batch["positions"], doc_ids=batch["doc_ids"])
        n_checked = 0
        for b, row in enumerate(rows):
            for d in sorted(set(row["doc_ids"].tolist()) - {-1}):
                span = (row["doc_ids"] == d).nonzero().flatten()
                alone = m(row["input_ids"][span][None])[0]
                torch.testing.assert_close(packed[b, span], alone, atol=1e-5, rtol=1e-5)
                n_checked += 1
    assert n_checked == len(ex)


# ---- reading and validation ---------------------------------------------------------------------------
GOOD = json.dumps(R408)


def _bad(tmp_path, lines, match, name="bad.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(D.DataError, match=match):
        D.read_jsonl_records(str(p))
    return p


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["messages"][2].update(role="robot"), r"line 2, field messages\[2\]\.role: unknown role 'robot'"),
    (lambda r: r["messages"][2]["content"][1].update(type="output"),
     r"line 2, field messages\[2\]\.content\[1\]\.type: unknown block type 'output'"),
    (lambda r: r["messages"][1]["content"][0].pop("content"), r"line 2, field messages\[1\]\.content\[0\]\.content: missing"),
    (lambda r: r["messages"][2].pop("role"), r"line 2, field messages\[2\]\.role: missing"),
    (lambda r: r.pop("messages"), r"line 2, field messages: missing"),
    (lambda r: r["messages"][2]["content"].pop(), r"line 2, field messages\[2\]\.content\[2\]: assistant turn ends on an execution block"),
    (lambda r: r["messages"][2]["content"][0].update(content=5), r"line 2, field messages\[2\]\.content\[0\]\.content: expected a string"),
    (lambda r: r["messages"][1]["content"].append({"type": "code", "content": "1"}), r"line 2, field messages\[1\]\.content\[1\]\.type: a user message may only hold text"),
])
def test_bad_records_name_file_line_field(tmp_path, mutate, match):
    r = json.loads(GOOD)
    mutate(r)
    _bad(tmp_path, [GOOD, json.dumps(r), GOOD], r"bad\.jsonl, " + match)


def test_empty_file_invalid_json_and_skip_bad(tmp_path):
    _bad(tmp_path, [""], r"empty\.jsonl, line 0, field <file>: empty file", name="empty.jsonl")
    p = _bad(tmp_path, [GOOD, "{oops", GOOD], r"line 2, field <record>: invalid JSON")
    st = {}
    out = D.read_jsonl_records(str(p), skip_bad=True, stats=st)
    assert len(out) == 2 and st["bad"] == 1 and st["records"] == 2 and "line 2" in st["errors"][0]
    p.write_text("\n\n")
    with pytest.raises(D.DataError, match="empty file"):           # empty even with --skip-bad
        D.read_jsonl_records(str(p), skip_bad=True)


def test_a_byte_that_is_not_utf8_names_file_and_line(tmp_path):
    """Training data saved as Latin-1 ("é" is the one byte 0xe9): the error names file and line, and
    --skip-bad can skip the line; the command line says so in one line, without a traceback."""
    p = tmp_path / "latin1.jsonl"
    bad = GOOD.replace("print", "print('caf\\u00e9'); print").encode().replace(b"\\u00e9", b"\xe9")
    p.write_bytes(f"{GOOD}\n".encode() + bad + f"\n{GOOD}\n".encode())
    column = bad.index(b"\xe9") + 1
    match = rf"latin1\.jsonl, line 2, field <record>: not UTF-8 \(byte 0xe9 at column {column}\)"
    with pytest.raises(D.DataError, match=match):
        D.read_jsonl_records(str(p))
    st = {}
    assert len(D.read_jsonl_records(str(p), skip_bad=True, stats=st)) == 2 and st["bad"] == 1
    r = subprocess.run([sys.executable, "lce_data.py", "stats", str(p)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == (f"error: {p}, line 2, field <record>: not UTF-8 "
                                              f"(byte 0xe9 at column {column})\n"), r.stderr


def test_authors_debug_result_format_parses():
    raw = [json.loads(line) for line in open(SAMPLE, encoding="utf-8")]
    recs = D.read_jsonl_records(SAMPLE)
    assert len(recs) == len(raw) == 40
    for r, x in zip(recs, raw):
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
        dr = x["debug_result"]
        assert r["messages"][1]["content"][0]["content"] == dr[1]["content"]
        # the assistant turn is debug_result[2:-1]: the trailing copy of `completion` is dropped
        assert [(b["type"], b["content"]) for b in r["messages"][2]["content"]] == \
            [(d["role"], d["content"]) for d in dr[2:-1]]
        assert r["ground_truth"] == x["ground_truth"]
    assert D.serialize(recs[0]).startswith("<|system|><|text|>Below is a math problem. Please solve it step by "
                                           "step.<|endofblock|><|endofmessage|><|user|><|text|>Each pack")


def script_format(released):
    """The same solution as the authors' public src/inference.py writes it: system and user items
    keyed "role" (its default prompt: empty system text, the question + "\\n"), then one item per
    block keyed "type", no appended answer, `completion` = the last item's content."""
    dr = released["debug_result"]
    items = [{"role": "system", "content": ""},
             {"role": "user", "content": dr[1]["content"] + "\n"}]
    items += [{"type": d["role"], "content": d["content"]} for d in dr[2:-1]]
    return {"messages": released["messages"], "ground_truth": released["ground_truth"],
            "debug_result": items, "completion": items[-1]["content"]}


def test_authors_script_format_parses(tmp_path):
    raw = [json.loads(line) for line in open(SAMPLE, encoding="utf-8")]
    path = tmp_path / "script_out.jsonl"
    path.write_text("".join(json.dumps(script_format(x)) + "\n" for x in raw))
    recs = D.read_jsonl_records(str(path))
    assert len(recs) == 40
    for r, x in zip(recs, raw):
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"][0]["content"] == ""
        assert r["messages"][1]["content"][0]["content"] == x["debug_result"][1]["content"] + "\n"
        # every block kept, the last one too: here `completion` is a copy of a real block
        assert [(b["type"], b["content"]) for b in r["messages"][2]["content"]] == \
            [(d["role"], d["content"]) for d in x["debug_result"][2:-1]]
    bad = script_format(raw[0])
    bad["debug_result"][3] = {"type": "output", "content": "5"}
    with pytest.raises(D.DataError,
                       match=r"field debug_result\[3\]\.type: unknown role 'output'"):
        D.normalize_record(bad)
    bad["debug_result"][3] = {"content": "5"}
    with pytest.raises(D.DataError,
                       match=r"field debug_result\[3\]: expected an object with 'role'"):
        D.normalize_record(bad)


def test_a_released_run_that_ends_on_an_execution_keeps_it():
    """A released solution cut off after a code block's output has no appended answer: its last
    item is the execution block the model was shown (`completion` is a copy of it), kept."""
    path = os.path.join(ROOT, "data", "official_outs", "MathCoder-CL-7b_SVAMP-wrong.jsonl")
    raw = [json.loads(line) for line in open(path, encoding="utf-8")]
    ended = [x for x in raw if x["debug_result"][-1]["role"] == "execution"]
    assert len(ended) >= 10
    for x in ended:
        msgs = D.debug_result_messages(x)
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert [(b["type"], b["content"]) for b in msgs[2]["content"]] == \
            [(d["role"], d["content"]) for d in x["debug_result"][2:]]
        assert msgs[2]["content"][-1]["content"] == x["completion"]


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("debug_result"), r"field debug_result: missing"),
    (lambda r: r.update(debug_result={"role": "code"}), r"field debug_result: expected a list"),
    (lambda r: r["debug_result"][2].update(content=None),
     r"field debug_result\[2\]\.content: expected a string, got NoneType"),
    (lambda r: r["debug_result"][3].update(role="robot"),
     r"field debug_result\[3\]\.role: unknown role 'robot'"),
])
def test_debug_result_errors_name_the_field(mutate, match):
    r = json.loads(open(SAMPLE, encoding="utf-8").readline())
    D.debug_result_messages(r, "run.jsonl:7")              # the released record itself is fine
    mutate(r)
    with pytest.raises(D.DataError, match=r"^run\.jsonl:7, " + match):
        D.debug_result_messages(r, "run.jsonl:7")


def test_official_test_files_parse():
    recs = D.read_jsonl_records(os.path.join(ROOT, "data", "eval", "SVAMP_test_post.jsonl"))
    assert len(recs) == 1000 and all(len(r["messages"]) == 2 for r in recs)


def test_cli_help_and_stats():
    for cmd in ([], ["stats"], ["show"]):
        r = subprocess.run([sys.executable, "lce_data.py", *cmd, "--help"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0 and "usage" in r.stdout
    r = subprocess.run([sys.executable, "lce_data.py", "stats", SAMPLE], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    st = json.loads(r.stdout.strip().splitlines()[-1])
    assert st["records"] == 40 and 0.5 < st["loss_share"] < 1 and sum(st["length_histogram"].values()) == 40
