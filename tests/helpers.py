"""Stand-ins shared by the tests of infer.py and plumbing/serving.py (test_infer, test_server):
the fixture files, a tokenizer for the fixture model, and the fixture model steered to write LCE
whose code runs."""
import re
from pathlib import Path

import torch
import torch.nn as nn

from tokenizer import SPECIAL_TOKENS

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests/fixtures"
LLAMA_TOK = FIX / "tokenizer/llama2-tokenizer.model"


class CharTokenizer:
    """One character per id for the 320-id fixture model: 0 unk, 1 BOS, 2 EOS, 3..311 characters,
    312..319 the 8 LCE tokens."""
    def __init__(self):
        chars = [chr(c) for c in range(32, 127)] + ["\n"]
        chars += [chr(0x100 + k) for k in range(309 - len(chars))]
        self.id_of = {c: 3 + k for k, c in enumerate(chars)}
        self.char_of = {i: c for c, i in self.id_of.items()}
        self.special = {t: 312 + k for k, t in enumerate(SPECIAL_TOKENS)}
        self.id_to_special = {i: t for t, i in self.special.items()}
        self.bos_id, self.eos_id, self.pad_id, self.vocab_size = 1, 2, 0, 320

    def encode(self, text, bos=False, special=True):
        ids = [1] if bos else []
        for piece in re.split("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")", text):
            if piece in self.special and special:
                ids.append(self.special[piece])
            else:
                ids += [self.id_of.get(c, 0) for c in piece]
        return ids

    def decode(self, ids):
        return "".join(self.id_to_special.get(i, self.char_of.get(i, "")) for i in ids)



class Steered(nn.Module):
    """The fixture model with a fixed bias on the next token's logits that depends only on the
    token just read (so every grouping of the same calls gives the same logits): after a block it
    opens <|code|> or <|text|>, code is digits and + or *, and the model's own logits pick among
    the favoured tokens. It writes LCE whose code runs ("89+55555555" -> 55555644)."""
    def __init__(self, inner, tok):
        super().__init__()
        self.inner = inner
        special = tok.special
        digits = [tok.id_of[d] for d in "0123456789"]
        ops = [tok.id_of[c] for c in "+*"]
        self.bias = torch.zeros(tok.vocab_size, tok.vocab_size)   # [token read, next token]
        for read in (special["<|assistant|>"], special["<|endofblock|>"]):
            self.bias[read, [special["<|code|>"], special["<|text|>"]]] = 6.0
        for read in [special["<|code|>"], special["<|execution|>"], *ops]:
            self.bias[read, digits] = 6.0
        for read in digits:
            self.bias[read, digits + ops + [special["<|endofblock|>"]]] = 6.0

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)

    def forward(self, tokens, positions=None, doc_ids=None, cache=None, rows=None, last_only=False):
        logits = self.inner(tokens, positions, doc_ids, cache, rows, last_only)
        if logits.shape[1] == tokens.shape[1]:
            return logits + self.bias[tokens]
        n = (positions >= 0).sum(1) if positions is not None else tokens.shape[1]  # -1: padding
        return logits + self.bias[tokens[torch.arange(len(tokens)), n - 1]][:, None]
