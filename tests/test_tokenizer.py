"""tokenizer.py against the real Llama-2 SentencePiece model and the ids in
tests/fixtures/tokenizer/."""
import json
import os

import pytest

from tokenizer import SPECIAL_RE, SPECIAL_TOKENS, Tokenizer, train_sentencepiece

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer")
MODEL = os.path.join(FIX, "llama2-tokenizer.model")
with open(os.path.join(FIX, "expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)
CASES = EXPECTED["cases"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(MODEL)


def test_fixture_is_the_real_llama2_model():
    import hashlib
    with open(MODEL, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == EXPECTED["md5"]


def test_ids_and_constants(tok):
    assert tok.special == EXPECTED["special_tokens"]
    assert list(tok.special) == SPECIAL_TOKENS
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (EXPECTED["bos_id"], EXPECTED["eos_id"], 0)
    assert tok.n_base == EXPECTED["base_vocab_size"] and tok.vocab_size == 32008


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:30] for c in CASES])
def test_encode_matches_reference_ids(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.encode(case["text"], bos=True) == case["ids_with_bos"]


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:30] for c in CASES])
def test_exact_round_trip(tok, case):
    assert tok.decode(case["ids"]) == case["text"]
    assert tok.decode(case["ids_with_bos"]) == case["text"]   # BOS decodes to nothing


def test_special_tokens_are_atomic(tok):
    for t, i in EXPECTED["special_tokens"].items():
        assert tok.encode(t) == [i]
        assert tok.decode([i]) == t
    # glued to text on both sides, and repeated back to back: still one id each
    ids = tok.encode("x<|code|><|code|>y<|endofblock|>")
    assert ids.count(32004) == 2 and ids.count(32006) == 1
    plain = tok.sentencepiece.encode
    assert ids == plain("x") + [32004, 32004] + plain("y") + [32006]


def test_lookalikes_are_text(tok):
    text = "text with a fake <|token|> and <|text| and |> pieces"
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special.values())
    assert ids == tok.sentencepiece.encode(text)           # exactly plain SentencePiece
    # a special string inside a longer look-alike is still split out
    assert 32003 in tok.encode("<<|text|>>")


def test_special_re_splits_out_the_eight_strings_only():
    """The one regex for the special strings (the grader and the terminal renderer split with it):
    separators kept, every marker at an odd index, look-alikes left in the text."""
    text = "<|system|>S<|user|>Q<|assistant|><|text|>a <|token|><|code|>b<|endofblock|>" \
           "<|execution|><|text| c<|endofmessage|>"
    assert SPECIAL_RE.split(text) == [
        "", "<|system|>", "S", "<|user|>", "Q", "<|assistant|>", "", "<|text|>", "a <|token|>",
        "<|code|>", "b", "<|endofblock|>", "", "<|execution|>", "<|text| c", "<|endofmessage|>", ""]
    assert sorted(SPECIAL_RE.findall("".join(SPECIAL_TOKENS))) == sorted(SPECIAL_TOKENS)


def test_decode_ignores_ids_past_vocab(tok):
    assert tok.decode([15043, 40000, 3186]) == "Hello world"


def test_special_ids_from_added_tokens_json(tmp_path):
    # a checkpoint that puts the tokens in a different order, after a <pad> token
    ids = {t: 32001 + (7 - k) for k, t in enumerate(SPECIAL_TOKENS)}
    ids["<pad>"] = 32000
    os.symlink(os.path.abspath(MODEL), tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps(ids))
    tok = Tokenizer.from_checkpoint(tmp_path)
    assert tok.special == {t: ids[t] for t in SPECIAL_TOKENS}
    assert tok.encode("<|text|>Hi<|endofblock|>") == [ids["<|text|>"], 6324, ids["<|endofblock|>"]]
    assert tok.vocab_size == 32009
    assert tok.decode([ids["<|endofmessage|>"]]) == "<|endofmessage|>"


def test_special_ids_from_tokenizer_config(tmp_path):
    os.symlink(os.path.abspath(MODEL), tmp_path / "tokenizer.model")
    dec = {str(32100 + k): {"content": t, "special": True} for k, t in enumerate(SPECIAL_TOKENS)}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": dec}))
    tok = Tokenizer.from_checkpoint(tmp_path)
    assert tok.special["<|system|>"] == 32100 and tok.special["<|endofmessage|>"] == 32107


def test_missing_tokens_are_appended_after_known_added_tokens(tmp_path):
    os.symlink(os.path.abspath(MODEL), tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": 32000}))
    tok = Tokenizer.from_checkpoint(tmp_path)
    assert tok.special == {t: 32001 + k for k, t in enumerate(SPECIAL_TOKENS)}


def test_save_then_load(tmp_path, tok):
    tok.save(tmp_path / "ckpt")
    written = json.loads((tmp_path / "ckpt" / "added_tokens.json").read_text())
    assert written == EXPECTED["special_tokens"]
    tok2 = Tokenizer.from_checkpoint(tmp_path / "ckpt")
    text = CASES[7]["text"]
    assert tok2.encode(text) == tok.encode(text)


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        Tokenizer.from_checkpoint(tmp_path)
    os.symlink(os.path.abspath(MODEL), tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text("{not json")
    with pytest.raises(ValueError, match="added_tokens.json"):
        Tokenizer.from_checkpoint(tmp_path)
    # an id that would shadow an ordinary piece of the base vocabulary
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|text|>": 100}))
    with pytest.raises(ValueError, match="ordinary piece"):
        Tokenizer.from_checkpoint(tmp_path)


def test_train_tiny_sentencepiece(tmp_path):
    lines = []
    for a in range(60):
        q = (f"Tom has {a * 37 + 12} apples and buys {a + 5} bags of {a % 9 + 3} apples. "
             "How many apples?")
        lines.append(f"<|user|><|text|>{q}<|endofblock|><|endofmessage|><|assistant|><|text|>"
                     f"Let's compute it with Python.<|endofblock|><|code|>a = {a * 37 + 12}\n"
                     f"print(a + {a + 5} * {a % 9 + 3})<|endofblock|>")
    (tmp_path / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    path = train_sentencepiece(str(tmp_path / "corpus.txt"), str(tmp_path / "tok"), 400)
    tok = Tokenizer(path)
    assert tok.n_base <= 400
    assert tok.special["<|system|>"] == tok.n_base        # specials go on top of the learned pieces
    learned = tok.sentencepiece
    pieces = [learned.id_to_piece(i) for i in range(tok.n_base)]
    assert not any("<|" in p or "|>" in p for p in pieces)   # special strings were not learned
    # digits are split one by one (Llama's split_digits)
    assert [learned.id_to_piece(i) for i in learned.encode("12345")][-5:] == list("12345")
    for text in lines[:5] + ["unseen: ünïcödé 数学 {}\t  \\boxed{408}", "  two  spaces\n"]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(lines[0], bos=True)
    assert ids[0] == tok.bos_id and ids.count(tok.special["<|text|>"]) == 2
    # deterministic: the same text gives the same pieces with the same scores
    tok2 = Tokenizer(train_sentencepiece(str(tmp_path / "corpus.txt"), str(tmp_path / "tok2"), 400))
    again = tok2.sentencepiece
    assert [(again.id_to_piece(i), again.get_score(i)) for i in range(tok2.n_base)] == \
        [(p, learned.get_score(i)) for i, p in enumerate(pieces)]
