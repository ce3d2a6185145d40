"""Stand-ins shared by several test files: the fixture files, a tokenizer for the fixture model,
the fixture model steered to write LCE whose code runs (test_infer, test_serving), and a scripted
OpenAI-compatible server on 127.0.0.1 (test_server, test_serving, test_recipe)."""
import http.server
import json
import threading
from pathlib import Path

import torch
import torch.nn as nn

from plumbing.server_client import Server
from tokenizer import SPECIAL_RE, SPECIAL_TOKENS

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
        for piece in SPECIAL_RE.split(text):
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


KEY = "sk-test-9f2c41d7e0b3a6c8"       # what a test exports as the API key


class StubServer:
    """A scripted server. respond(path, body) -> (status, reply object) or "hang" (no reply until
    the stub is closed). Every request is recorded: requests = [(path, headers, body), ...]."""

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.released = threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, dict(self.headers), body))
                answer = stub.respond(self.path, body)
                if answer == "hang":
                    stub.released.wait(10)     # bounded: the client has long given up
                    return
                status, reply = answer[:2]
                headers = answer[2] if len(answer) > 2 else {}
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def scripted(*answers):
    """respond() that gives the answers in turn, the last one again and again."""
    calls = []

    def respond(path, body):
        calls.append(path)
        return answers[min(len(calls), len(answers)) - 1]
    return respond


def completion(text, finish="stop"):
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def fast(url, **settings):        # short waits: tests stay fast
    return Server(url, **{"backoff": 0.01, "timeout": 5, "retries": 3, **settings})
