"""
The Llama SentencePiece tokenizer plus MathCoder's 8 special tokens.

MathCoder (docs/method.md §1) writes a whole conversation as one string in which `<|system|>`,
`<|text|>`, `<|code|>`, `<|execution|>`, `<|endofblock|>` ... mark messages and blocks. Each of
those 8 strings must be ONE id that the model can read and write, never split into `<`, `|`,
`text`, ... pieces. So encoding is:

    1. split the text on the 8 special strings,
    2. each special string -> its id (default: base_vocab_size + its index in SPECIAL_TOKENS),
    3. every other piece -> SentencePiece on its own (so each piece gets SentencePiece's usual
       leading "▁" dummy-prefix, exactly as the released MathCoder models were trained),
    4. BOS in front when asked.

A look-alike such as `<|token|>` is ordinary text. A checkpoint that already carries the tokens
(a released MathCoder model) names their ids in added_tokens.json or tokenizer_config.json: those
win over the default.

    python tokenizer.py encode --model tokenizer.model "What is <|code|>print(1)<|endofblock|>"
    python tokenizer.py train --text corpus.txt --prefix out/tok --vocab-size 512
"""
import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

from plumbing.storage import atomic_write, read_json, write_json

SPECIAL_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|text|>", "<|code|>",
                  "<|execution|>", "<|endofblock|>", "<|endofmessage|>"]
# The one regex for the special strings (grader.py and plumbing/terminal.py use it too): its group
# keeps them in re.split's output, ["", "<|text|>", "Hi", "<|endofblock|>", ""]
SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


class Tokenizer:
    def __init__(self, model_path: str, special_ids: dict[str, int] | None = None):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: SentencePiece model file not found")
        self.model_path = model_path
        self.sentencepiece = spm.SentencePieceProcessor(model_file=model_path)
        self.n_base = self.sentencepiece.get_piece_size()   # 32000 for Llama-2, 32016 CodeLlama
        self.special = _assign_special_ids(self.sentencepiece, special_ids or {}, model_path)
        self.id_to_special = {i: t for t, i in self.special.items()}
        self.vocab_size = max(self.n_base, max(self.special.values()) + 1)
        self.bos_id = self.sentencepiece.bos_id()
        self.eos_id = self.sentencepiece.eos_id()
        pad_id = self.sentencepiece.pad_id()
        self.pad_id = pad_id if pad_id >= 0 else 0   # Llama has no pad: use <unk> = 0

    @classmethod
    def from_checkpoint(cls, ckpt_dir) -> "Tokenizer":
        """tokenizer.model in ckpt_dir; special ids from added_tokens.json or
        tokenizer_config.json."""
        model_path = os.path.join(ckpt_dir, "tokenizer.model")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: no tokenizer.model in checkpoint directory "
                                    f"{ckpt_dir}")
        return cls(model_path, read_special_ids(ckpt_dir))

    def save(self, ckpt_dir):
        """Copy tokenizer.model and write added_tokens.json (token -> id), as Hugging Face
        checkpoints do."""
        os.makedirs(ckpt_dir, exist_ok=True)
        dst = os.path.join(ckpt_dir, "tokenizer.model")
        if os.path.abspath(dst) != os.path.abspath(self.model_path):
            atomic_write(dst, Path(self.model_path).read_bytes())
        write_json(os.path.join(ckpt_dir, "added_tokens.json"), self.special)

    def encode(self, text: str, bos: bool = False, special: bool = True) -> list[int]:
        """special=False: all of text is ordinary text, special-token strings in it included
        (they become pieces such as "<", "|", "end"...): for text that is data, as the output of
        the model's code is."""
        ids = [self.bos_id] if bos else []
        if not special:
            return ids + (self.sentencepiece.encode(text) if text else [])
        for piece in SPECIAL_RE.split(text):
            if piece in self.special:
                ids.append(self.special[piece])
            elif piece:
                ids.extend(self.sentencepiece.encode(piece))
        return ids

    def decode(self, ids) -> str:
        """Inverse of encode: runs of ordinary ids go through SentencePiece (which drops the
        dummy-prefix space of each run, as encode added one), special ids become their strings.
        BOS/EOS decode to nothing, as do ids past the tokenizer (padding rows of a model whose vocab
        was rounded up)."""
        out = []
        run = []   # ordinary ids not yet decoded
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            i = int(i)
            if i in self.id_to_special:
                if run:
                    out.append(self.sentencepiece.decode(run))
                    run = []
                out.append(self.id_to_special[i])
            elif 0 <= i < self.n_base:
                run.append(i)
        if run:
            out.append(self.sentencepiece.decode(run))
        return "".join(out)

    def __repr__(self):
        return f"Tokenizer({self.model_path!r}, base={self.n_base}, vocab_size={self.vocab_size})"


def _assign_special_ids(sentencepiece, given: dict[str, int], source: str) -> dict[str, int]:
    """Ids for the 8 tokens: the given ones first; then any the SentencePiece model already holds as
    a piece; the rest appended after everything known, in SPECIAL_TOKENS order (default:
    32000..32007 for Llama-2)."""
    n_base = sentencepiece.get_piece_size()
    special = {t: int(given[t]) for t in SPECIAL_TOKENS if t in given}
    for t in SPECIAL_TOKENS:
        if t not in special and sentencepiece.piece_to_id(t) != sentencepiece.unk_id():
            special[t] = sentencepiece.piece_to_id(t)
    next_id = max([n_base - 1] + [int(v) for v in given.values()] + list(special.values())) + 1
    for t in SPECIAL_TOKENS:
        if t not in special:
            special[t] = next_id
            next_id += 1
    if len(set(special.values())) != len(special):
        raise ValueError(f"{source}: special tokens share an id: {special}")
    for t, i in special.items():
        if i < 0 or (i < n_base and sentencepiece.id_to_piece(i) != t):
            raise ValueError(f"{source}: special token {t} has id {i}, which is the ordinary piece "
                             f"{sentencepiece.id_to_piece(i)!r} of the SentencePiece model (size "
                             f"{n_base})")
    return special


def read_special_ids(ckpt_dir) -> dict[str, int]:
    """Token -> id for added tokens named in a checkpoint: added_tokens.json ({"<|text|>": 32003,
    ...}) or tokenizer_config.json's added_tokens_decoder ({"32003": {"content": "<|text|>", ...}}).
    {} if neither."""
    path = os.path.join(ckpt_dir, "added_tokens.json")
    if os.path.isfile(path):
        data = read_json(path)
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise ValueError(f"{path}: expected an object mapping token string -> integer id")
        return data
    path = os.path.join(ckpt_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        decoder = read_json(path).get("added_tokens_decoder") or {}
        out = {}
        for key, entry in decoder.items():
            if not isinstance(entry, dict) or "content" not in entry or not str(key).isdigit():
                raise ValueError(f"{path}: added_tokens_decoder[{key!r}]: expected an integer key "
                                 "and an object with a 'content' field")
            out[entry["content"]] = int(key)
        return out
    return {}


def train_sentencepiece(text_file: str, model_prefix: str, vocab_size: int) -> str:
    """Train a small Llama-style SentencePiece model (for the tiny end-to-end run); returns the
    .model path. Same recipe as Llama: BPE, digits split one by one, byte fallback for anything
    unseen, whitespace kept as is. The 8 special strings are removed from the training text (each
    becomes a line break), so they are never learned as pieces: the Tokenizer adds them on top.
    Single-threaded and unshuffled, so the same text gives the same model."""
    if not os.path.isfile(text_file):
        raise FileNotFoundError(f"{text_file}: training text not found")
    with open(text_file, encoding="utf-8") as f:
        text = SPECIAL_RE.sub("\n", f.read())
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        raise ValueError(f"{text_file}: no text to train a tokenizer on")
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        clean = os.path.join(tmp, "text.txt")
        with open(clean, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        spm.SentencePieceTrainer.train(
            input=clean, model_prefix=os.path.join(tmp, "trained"), vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, split_digits=True, character_coverage=1.0,
            normalization_rule_name="identity", add_dummy_prefix=True,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1,
            shuffle_input_sentence=False, input_sentence_size=0, max_sentence_length=1 << 16,
            minloglevel=2)
        out = model_prefix + ".model"
        atomic_write(out, Path(tmp, "trained.model").read_bytes())
    return out


def main():
    ap = argparse.ArgumentParser(description="Llama SentencePiece tokenizer + the 8 MathCoder "
                                 "tokens.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    encode = sub.add_parser("encode", help="print the ids of TEXT")
    encode.add_argument("text")
    encode.add_argument("--model", help="tokenizer.model (or use --ckpt)")
    encode.add_argument("--ckpt", help="checkpoint dir with tokenizer.model [+ added_tokens.json]")
    encode.add_argument("--bos", action="store_true", help="prepend BOS")
    train = sub.add_parser("train", help="train a small SentencePiece model on a text file")
    train.add_argument("--text", required=True,
                       help="training text (special-token strings are removed)")
    train.add_argument("--prefix", required=True, help="output path without .model")
    train.add_argument("--vocab-size", type=int, default=512)
    args = ap.parse_args()
    if args.cmd == "train":
        print(train_sentencepiece(args.text, args.prefix, args.vocab_size))
        return
    if not (args.model or args.ckpt):
        ap.error("encode needs --model or --ckpt")
    tok = Tokenizer.from_checkpoint(args.ckpt) if args.ckpt else Tokenizer(args.model)
    ids = tok.encode(args.text, bos=args.bos)
    print(json.dumps(ids))
    print(json.dumps([tok.decode([i]) for i in ids], ensure_ascii=False))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad input: one line naming the file, no traceback
        sys.exit(f"error: {e}")
