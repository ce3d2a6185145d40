"""MathCoder inference: generate, execute, continue (docs/method.md §4).

The authors (src/inference.py) solved one problem per process against a text-generation server
(text-generation-inference, truncate=1536, max_new_tokens=512, 2048 tokens in all). Each round they
sent the whole conversation so far, got back ONE block (generation stops at <|endofblock|> or
<|endofmessage|>, at most 512 new tokens), rounded decimals longer than 6 places, and when the block
started with <|code|> ran it in that problem's own Jupyter kernel (state persists across the
problem's blocks) and appended <|execution|>{output}<|endofblock|>. At most 16 rounds; done when a
block ends <|endofmessage|>.

The context window (GenConfig.context = "window", the default): their server cut every round's input
to 1536 tokens. Its router encoded the conversation with BOS, kept the last 1536 ids when there were
more, decoded them to text; the model server encoded that text again with BOS, cut from the left to
1536: the model read BOS and the conversation's last 1535 tokens, at positions 0..1535, as a fresh
prompt, then generated at most 512 tokens (1536 + 512 = 2048). So a long solution goes on, with its
beginning (the question first) out of sight. Here: before every round, a context longer than
max_prompt_tokens is read as BOS + its last max_prompt_tokens - 1 tokens from position 0. context =
"stop" is the simpler rule: only the prompt is cut so, and a problem stops once its context reaches
max_total_tokens.

`solve_one` is that loop for one problem, written plainly: every round a fresh prefill of the
window, then one token at a time to the end of the block. `solve` is the same, for many problems on
one KV cache of B rows (tests/test_infer.py checks that it gives solve_one's solution for every
problem):
  * every token is fed to the model once: a prompt or an execution block is prefilled into its own
    row (model.forward(..., cache=cache, rows=[r])); the prefix is recomputed only when the window
    slides (rare: most solutions never reach 1536 tokens);
  * code runs in a thread pool, each problem in its own Sandbox, while the other rows keep decoding;
    the row rejoins once its output is ready; a finished row takes the next waiting problem
    (continuous batching);
  * ragged lengths: each row carries its own positions and the model masks cache slots past a
    query's position, so every row's logits are those it would get alone.
Where both differ from the authors' loop:
  * the window's first tokens: their server cut ids, decoded them and encoded the text again,
    which can split the window's first word differently (a piece cut mid-word gets a word-start
    "▁"); here the ids themselves are kept.
  * special tokens inside a block: their server's text skipped special tokens (they put back only
    the block's first and last), and it stopped on the text "<|endofblock|>" even when spelled in
    pieces; here every token is kept and only the stop tokens stop.
  * numerics: their server ran fp16 kernels (flash attention); greedy decoding follows the model's
    logits here in the checkpoint's dtype, so a near tie can go the other way.
  * what the model reads after its code runs is sandbox.py's rendering of the output, which has its
    own notes on where it differs from the IPython kernel they used.
  * the question is sent verbatim and the system text is the record's own, as in their released
    outputs (their public script's defaults differ: docs/method.md §4).
  * decimals are rounded where they did it: in each block the model has just written, code included
    (the code that runs is the rounded code; execution output is left alone). Their server
    re-tokenised the whole conversation every round; here the block just written is re-tokenised
    and, if its ids changed (rounding, or a non-canonical split), rewritten from its first position
    (solve: into the cache). Either way the model goes on reading exactly the text that is recorded.
  * a round cut off by max_new_tokens is, as theirs, a round: a cut code block is still run; the
    next round continues the same block (its text is re-tokenised as one piece, as their server saw
    it).
  * EOS (</s>) from the model ends the message, as <|endofmessage|> does.

    python infer.py --model CKPT "What is 2^10 - 1?"            # streams the solution
    python infer.py --model CKPT --file data/eval/GSM8K_test_post.jsonl --out results.jsonl
"""
import argparse
import json
import re
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields

import torch

import lce_data
import sandbox
import storage
from lce_data import DEFAULT_SYSTEM
from model import Transformer
from parallel import follow, init_ranks
from server_client import ServerError, add_server_args, server_from_args
from tokenizer import SPECIAL_TOKENS, Tokenizer


def option(default, help, **argparse_options):
    """A GenConfig field that is also a command-line flag (add_generation_args)."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class GenConfig:
    """How to generate; the defaults are the authors' (docs/method.md §4). Each field is also a
    flag of `infer.py` and `eval.py run` (max_new_tokens: --max-new-tokens)."""
    max_new_tokens: int = option(512, "tokens per round (one block)")
    max_total_tokens: int = option(2048, "a cache row: the window + one round (context stop: the "
                                   "whole context)")
    max_prompt_tokens: int | None = option(None, "the window: the model reads at most this many "
                                           "tokens when a round starts (default: max-total-tokens "
                                           "- max-new-tokens, at most 1536)")
    context: str = option("window", "window: the authors' sliding window; stop: cut the prompt "
                          "only, stop a problem once its context reaches max-total-tokens",
                          choices=("window", "stop"))
    max_rounds: int = option(16, "blocks per solution at most")
    temperature: float = option(0.0, "0: greedy (the paper's numbers); > 0: sampling "
                                "(self-distillation)")
    top_p: float = option(1.0, "nucleus sampling: keep the most likely tokens up to this mass")
    batch_size: int = option(16, "rows of the KV cache = problems decoded together")
    execute: bool = option(True, "run the code; --no-execute: <|execution|> is opened and the "
                           "model writes the output itself (ablation: can it compute without "
                           "the interpreter?)")
    seed: int = option(0, "sampling: problem i draws from its own generator (seed, i)")

    def __post_init__(self):
        if self.max_prompt_tokens is None:  # the authors' 1536 where a round fits beside it
            fits = self.max_total_tokens - self.max_new_tokens
            self.max_prompt_tokens = max(2, min(1536, fits))
        if self.context not in ("window", "stop"):
            raise ValueError(f"GenConfig: context must be 'window' or 'stop', not {self.context!r}")
        if not 2 <= self.max_prompt_tokens < self.max_total_tokens:
            raise ValueError(f"GenConfig: max_prompt_tokens {self.max_prompt_tokens} must be >= 2 "
                             f"and < max_total_tokens {self.max_total_tokens}")
        if (self.context == "window"
                and self.max_prompt_tokens + self.max_new_tokens > self.max_total_tokens):
            raise ValueError(f"GenConfig: the window ({self.max_prompt_tokens}) and a round "
                             f"({self.max_new_tokens}) must fit max_total_tokens "
                             f"{self.max_total_tokens}")

    def context_full(self, window_len: int) -> bool:
        """context "stop": a problem ends once the model's row holds max_total_tokens."""
        return self.context == "stop" and window_len >= self.max_total_tokens


# ------------------------------------------------------------------- one problem: the authors' loop
@torch.no_grad()
def solve_one(model, tokenizer, question: str, system: str = DEFAULT_SYSTEM,
              cfg: GenConfig | None = None, session=None, index: int = 0) -> dict:
    """The authors' loop for one problem. Every round the model reads the window afresh (BOS + the
    context's last max_prompt_tokens - 1 tokens, at positions 0, 1, ...) and writes one block; a
    code block runs in `session` (a fresh sandbox.Sandbox, needed when cfg.execute) and its output
    goes on as an execution block. index: the problem's sampling stream (as solve's problem index).
    Returns what solve returns for the problem."""
    cfg = cfg or GenConfig()
    if cfg.execute and session is None:
        raise ValueError("solve_one: cfg.execute needs a session (a sandbox.Sandbox)")
    special = tokenizer.special
    stops = {special["<|endofblock|>"], special["<|endofmessage|>"], tokenizer.eos_id}
    device = next(model.parameters()).device
    generator = _generator(cfg.seed, index)
    cache = model.new_cache(1, cfg.max_total_tokens)
    ids = tokenizer.encode(lce_data.prompt_text(question, system), bos=True)
    n_prompt = len(ids)
    round_start = n_prompt  # where this round's tokens begin
    text_start = n_prompt   # where the text since the last special token begins
    offset = 0              # the model reads BOS + ids[offset + 1:]
    n_new = 0               # tokens the model generated
    n_exec = 0
    stop = "max_rounds"
    for rounds in range(1, cfg.max_rounds + 1):
        if cfg.context == "window" or rounds == 1:  # ("stop": the prompt only)
            offset = max(0, len(ids) - cfg.max_prompt_tokens)
        window = ids[:1] + ids[offset + 1:]
        logits = model(torch.tensor([window], device=device), cache=cache, last_only=True)[:, -1]
        while True:  # one block
            token = sample(logits, cfg.temperature, cfg.top_p, [generator])[0]
            ids.append(token)
            n_new += 1
            if (token in stops or len(ids) - round_start >= cfg.max_new_tokens
                    or len(ids) - offset >= cfg.max_total_tokens):  # (full: "stop" only)
                break
            position = torch.tensor([[len(ids) - 1 - offset]], device=device)
            logits = model(torch.tensor([[token]], device=device), position, cache=cache)[:, -1]
        is_code = ids[round_start] == special["<|code|>"]
        text, _ = round_and_retokenize(tokenizer, ids, text_start)
        round_start = len(ids)
        if ids[-1] in special.values():  # else the block was cut: the next round continues it
            text_start = len(ids)
        if token in (special["<|endofmessage|>"], tokenizer.eos_id):
            stop = "endofmessage"
            break
        if cfg.context_full(len(ids) - offset):
            stop = "max_total_tokens"
            break
        if is_code and cfg.execute:  # (the authors ran a code block even in the last round)
            output = run_code(session, code_of(text))
            ids += tokenizer.encode(f"<|execution|>{output}<|endofblock|>")
            n_exec += 1
            round_start = len(ids)
            text_start = len(ids)
        elif is_code and rounds < cfg.max_rounds:  # execution withheld: the model writes it
            ids.append(special["<|execution|>"])   # (the next round's first token)
            text_start = len(ids)
        if cfg.context_full(len(ids) - offset):
            stop = "max_total_tokens"
            break
    return result(tokenizer, question, system, ids[n_prompt:], stop, n_new, rounds, n_exec)


# ---------------------------------------------------------------------------- what both solvers use
_DECIMAL = re.compile(r"\d+\.\d+")


def round_decimals(text: str, places: int = 6) -> str:
    """The authors' truncate_decimals: every decimal literal with more than `places` places is
    rewritten with exactly `places` ('{:.6f}'.format(float(x)), i.e. rounded, not truncated)."""
    def rounded(match):
        literal = match.group(0)
        if len(literal.split(".")[1]) <= places:
            return literal
        return f"{float(literal):.{places}f}"
    return _DECIMAL.sub(rounded, text)


def round_and_retokenize(tokenizer, ids: list, start: int) -> tuple[str, bool]:
    """Round the decimals in the text of ids[start:] (what the model wrote since the last special
    token) and re-tokenise it, as the authors' server re-tokenised the whole conversation each
    round. ids[start:] is rewritten in place when its ids changed. Returns (text, changed)."""
    text = round_decimals(tokenizer.decode(ids[start:]))
    new_ids = tokenizer.encode(text)
    changed = bool(new_ids) and new_ids != ids[start:]
    if changed:
        ids[start:] = new_ids
    return text, changed


def code_of(text: str) -> str:
    """The code a block's text holds: after its last <|code|>, without the closing token."""
    code = text.rsplit("<|code|>", 1)[-1]
    return code.removesuffix("<|endofblock|>").removesuffix("<|endofmessage|>")


def run_code(session, code: str) -> str:
    """The output the model reads after its code. A failure of the sandbox itself is shown to the
    model as an error, as a kernel would show it."""
    try:
        return session.run(code)
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def sample(logits: torch.Tensor, temperature: float, top_p: float, gens: list) -> list[int]:
    """Next token per row: argmax if temperature is 0, else nucleus sampling with each row's own
    generator."""
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        p, idx = probs.sort(-1, descending=True)
        p[(p.cumsum(-1) - p) >= top_p] = 0
        probs = torch.zeros_like(probs).scatter_(-1, idx, p)
    return [int(torch.multinomial(pr, 1, generator=g)) for pr, g in zip(probs, gens)]


# problem `index` samples from its own stream: batching can't change it
def _generator(seed: int, index: int):
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


_SPECIAL = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")   # keeps the separators


def parse_blocks(solution: str) -> list[tuple[str, str]]:
    """The assistant's LCE string -> [(type, content), ...]. Lenient, as generated text can be: a
    block cut off at a limit keeps what it has; text outside any block becomes a text block."""
    blocks = []
    inside = False
    for piece in _SPECIAL.split(solution):
        if piece in ("<|text|>", "<|code|>", "<|execution|>"):
            blocks.append([piece[2:-2], ""])
            inside = True
        elif _SPECIAL.fullmatch(piece):  # <|endofblock|>, <|endofmessage|>, a stray role token
            inside = False
        elif piece:
            if not inside:
                blocks.append(["text", ""])
                inside = True
            blocks[-1][1] += piece
    return [tuple(b) for b in blocks]


def result(tokenizer, question, system, solution_ids, stop, n_tokens, n_rounds, n_exec) -> dict:
    """One problem's outcome: {question, messages (system, user, assistant: the messages schema
    lce_data reads), solution (the assistant's LCE string), n_tokens (generated by the model),
    n_rounds, n_exec, stop}."""
    solution = tokenizer.decode(solution_ids)  # the context is kept canonical: decode is exact
    record = lce_data.make_record(question, parse_blocks(solution), system)
    return {"question": question, "messages": record["messages"], "solution": solution,
            "n_tokens": n_tokens, "n_rounds": n_rounds, "n_exec": n_exec, "stop": stop}


# -------------------------------------------- many problems on one KV cache: the same loop, batched
@dataclass
class Seq:
    """One problem in flight. ids = its whole context, BOS first. The model reads a window of it:
    BOS, then ids[offset + 1:], at positions 0, 1, ... (offset 0: the whole context); the window's
    first n_cached tokens have K/V in the problem's cache row."""
    index: int
    ids: list
    prompt_len: int
    generator: torch.Generator | None = None
    offset: int = 0
    n_cached: int = 0
    round_start: int = field(init=False)  # where this round's tokens begin
    # where the text since the last special token begins (a block cut by max_new_tokens continues
    # in the next round: one run of text, several rounds)
    text_start: int = field(init=False)
    rounds: int = 0
    n_new: int = 0                 # tokens the model generated
    n_exec: int = 0
    session: sandbox.Sandbox | None = None
    future: object = None          # code running in the thread pool
    shown: str = ""                # streaming: the text since text_start already shown

    def __post_init__(self):       # the first round starts right after the prompt
        self.round_start = self.prompt_len
        self.text_start = self.prompt_len

    @property
    def window_len(self):
        return len(self.ids) - self.offset

    def pending(self):
        """The window's tokens not yet in the cache (the first at position n_cached)."""
        window = self.ids if self.offset == 0 else self.ids[:1] + self.ids[self.offset + 1:]
        return window[self.n_cached:]


class Rows:
    """The B rows of one KV cache; seqs[r] is the sequence in row r (None = free)."""

    def __init__(self, model, batch_size: int, max_len: int):
        self.model = model
        self.cache = model.new_cache(batch_size, max_len)
        self.seqs = [None] * batch_size
        self.device = next(model.parameters()).device

    def admit(self, waiting: deque, new_seq):
        """Continuous batching: every free row takes the next waiting problem (new_seq(index) ->
        Seq)."""
        for r, seq in enumerate(self.seqs):
            if seq is None and waiting:
                self.seqs[r] = new_seq(waiting.popleft())

    def feed(self, rows: list) -> torch.Tensor:
        """Run the model on every row's tokens not yet in the cache, each at its own positions;
        return the logits after each row's last token, [len(rows), vocab]. Rows with one new token
        (decoding) go in one batched call; rows with several (a prompt, an execution block) are
        prefilled one by one."""
        out = [None] * len(rows)
        decoding = []
        for j, r in enumerate(rows):
            seq = self.seqs[r]
            if seq.window_len - seq.n_cached == 1:
                decoding.append(j)
                continue
            new = torch.tensor([seq.pending()], device=self.device)
            positions = torch.arange(seq.n_cached, seq.window_len, device=self.device)[None]
            row = torch.tensor([r], device=self.device)
            logits = self.model(new, positions, cache=self.cache, rows=row, last_only=True)
            out[j] = logits[0, -1]
        if decoding:
            seqs = [self.seqs[rows[j]] for j in decoding]
            new = torch.tensor([[seq.ids[-1]] for seq in seqs], device=self.device)
            positions = torch.tensor([[seq.n_cached] for seq in seqs], device=self.device)
            row_ids = torch.tensor([rows[j] for j in decoding], device=self.device)
            logits = self.model(new, positions, cache=self.cache, rows=row_ids)[:, -1]
            for k, j in enumerate(decoding):
                out[j] = logits[k]
        for r in rows:
            self.seqs[r].n_cached = self.seqs[r].window_len
        return torch.stack(out)


@torch.no_grad()
def generate(model, prompts: list, max_new_tokens: int, batch_size: int = 16, stop_ids=(),
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """The decode core on raw token ids, no tools: continuous batching over `batch_size` cache rows.
    Returns each prompt's new tokens (up to and including a stop id)."""
    rows = Rows(model, max(1, min(batch_size, len(prompts))),
                max(map(len, prompts)) + max_new_tokens)
    waiting = deque(range(len(prompts)))
    out = [None] * len(prompts)
    while waiting or any(rows.seqs):
        rows.admit(waiting,
                   lambda i: Seq(i, list(prompts[i]), len(prompts[i]), _generator(seed, i)))
        active = [r for r, seq in enumerate(rows.seqs) if seq is not None]
        gens = [rows.seqs[r].generator for r in active]
        tokens = sample(rows.feed(active), temperature, top_p, gens)
        for r, token in zip(active, tokens):
            seq = rows.seqs[r]
            seq.ids.append(token)
            if token in stop_ids or len(seq.ids) - seq.prompt_len >= max_new_tokens:
                out[seq.index] = seq.ids[seq.prompt_len:]
                rows.seqs[r] = None
    return out


class Solver:
    """solve()'s state machine: solve_one's loop for every problem in a row of the cache. A problem
    moves on at two events: its round ends (end_round: finish, run the code, or start the next
    round) and its code's output is ready (add_execution)."""

    def __init__(self, model, tokenizer, questions, systems, cfg, pool, on_result, on_stream):
        self.tokenizer = tokenizer
        self.questions = questions
        self.systems = systems
        self.cfg = cfg
        self.pool = pool
        self.on_result = on_result
        self.on_stream = on_stream
        self.special = tokenizer.special
        self.stops = {self.special["<|endofblock|>"], self.special["<|endofmessage|>"],
                      tokenizer.eos_id}
        batch_size = max(1, min(cfg.batch_size, len(questions)))
        self.rows = Rows(model, batch_size, cfg.max_total_tokens)
        self.runner = None  # the thread pool that runs code while the other rows decode
        if cfg.execute:
            self.runner = ThreadPoolExecutor(batch_size, thread_name_prefix="sandbox")
        self.waiting = deque(range(len(questions)))
        self.results = [None] * len(questions)

    def run(self) -> list[dict]:
        try:
            while self.waiting or any(self.rows.seqs):
                self.rows.admit(self.waiting, self.start)
                for r, seq in enumerate(self.rows.seqs):  # finished executions rejoin
                    if seq is not None and seq.future is not None and seq.future.done():
                        self.add_execution(r, seq)
                ready = [r for r, seq in enumerate(self.rows.seqs)
                         if seq is not None and seq.future is None]
                if ready:
                    self.decode(ready)
                else:  # everyone left is waiting for code: sleep until one is done
                    running = [seq.future for seq in self.rows.seqs
                               if seq is not None and seq.future is not None]
                    wait(running, return_when=FIRST_COMPLETED)
        finally:
            if self.runner:
                self.runner.shutdown(wait=False, cancel_futures=True)
        return self.results

    def start(self, index) -> Seq:
        prompt = lce_data.prompt_text(self.questions[index], self.systems[index])
        ids = self.tokenizer.encode(prompt, bos=True)
        seq = Seq(index, ids, len(ids), _generator(self.cfg.seed, index))
        self.next_round(seq)
        return seq

    def next_round(self, seq):
        """The window the next round reads (solve_one's offset); a new window is recomputed from
        scratch in the row's cache."""
        if self.cfg.context == "stop" and seq.rounds > 0:  # ("stop": the prompt only)
            return
        offset = max(0, len(seq.ids) - self.cfg.max_prompt_tokens)
        if offset != seq.offset:
            seq.offset = offset
            seq.n_cached = 0

    def decode(self, ready):
        """One token for every ready row (prefilling what is new in it first)."""
        gens = [self.rows.seqs[r].generator for r in ready]
        tokens = sample(self.rows.feed(ready), self.cfg.temperature, self.cfg.top_p, gens)
        for r, token in zip(ready, tokens):
            seq = self.rows.seqs[r]
            seq.ids.append(token)
            seq.n_new += 1
            if self.on_stream:
                text = self.tokenizer.decode(seq.ids[seq.text_start:])
                if text.startswith(seq.shown):  # a half-decoded UTF-8 character can change
                    self.on_stream(seq.index, text[len(seq.shown):])
                    seq.shown = text
            if (token in self.stops or len(seq.ids) - seq.round_start >= self.cfg.max_new_tokens
                    or seq.window_len >= self.cfg.max_total_tokens):  # (full: "stop" only)
                self.end_round(r, seq, token)

    def end_round(self, r, seq, token):
        """solve_one's rules, after its inner loop: round decimals, then finish, run the code, or
        go on."""
        cfg = self.cfg
        is_code = seq.ids[seq.round_start] == self.special["<|code|>"]
        text, changed = round_and_retokenize(self.tokenizer, seq.ids, seq.text_start)
        if changed:  # the cache slots from text_start on are stale: overwritten as they are fed
            seq.n_cached = min(seq.n_cached, max(0, seq.text_start - seq.offset))
            seq.shown = text
        seq.rounds += 1
        seq.round_start = len(seq.ids)
        if seq.ids[-1] in self.special.values():
            seq.text_start = len(seq.ids)
            seq.shown = ""
        if token in (self.special["<|endofmessage|>"], self.tokenizer.eos_id):
            return self.finish(r, seq, "endofmessage")
        if cfg.context_full(seq.window_len):
            return self.finish(r, seq, "max_total_tokens")
        if is_code and cfg.execute:  # add_execution goes on once the output is ready
            seq.future = self.runner.submit(self.execute, seq, code_of(text))
            return
        if is_code and seq.rounds < cfg.max_rounds:  # execution withheld: the model writes it
            seq.ids.append(self.special["<|execution|>"])
            seq.text_start = len(seq.ids)
            if self.on_stream:
                self.on_stream(seq.index, "<|execution|>")
        self.go_on(r, seq)

    def execute(self, seq, code):
        """In a worker thread: the problem takes a sandbox at its first code block."""
        if seq.session is None:
            seq.session = self.pool.acquire()
        return run_code(seq.session, code)

    def add_execution(self, r, seq):
        piece = f"<|execution|>{seq.future.result()}<|endofblock|>"
        seq.future = None
        seq.ids += self.tokenizer.encode(piece)
        seq.n_exec += 1
        seq.round_start = len(seq.ids)
        seq.text_start = len(seq.ids)
        if self.on_stream:
            self.on_stream(seq.index, piece)
        self.go_on(r, seq)

    def go_on(self, r, seq):
        if self.cfg.context_full(seq.window_len):
            self.finish(r, seq, "max_total_tokens")
        elif seq.rounds >= self.cfg.max_rounds:
            self.finish(r, seq, "max_rounds")
        else:
            self.next_round(seq)

    def finish(self, r, seq, stop):
        if seq.session is not None:
            self.pool.release(seq.session)
        index = seq.index
        outcome = result(self.tokenizer, self.questions[index], self.systems[index],
                         seq.ids[seq.prompt_len:], stop, seq.n_new, seq.rounds, seq.n_exec)
        self.results[index] = outcome
        self.rows.seqs[r] = None
        if self.on_result:
            self.on_result(index, outcome)


@torch.no_grad()
def solve(model, tokenizer, questions: list[str], system: str | list[str] = DEFAULT_SYSTEM,
          cfg: GenConfig | None = None, pool=None, on_result=None, on_stream=None) -> list[dict]:
    """Solve every question in LCE form: solve_one for each, batched. system: the system text of
    every prompt, or a list with one per question. Returns one dict per question, in order (see
    `result`). on_result(index, dict) is called as each problem finishes; on_stream(index, text)
    with each new piece of LCE text (generated text as it is decoded, before rounding; an execution
    block whole). pool: a sandbox.SandboxPool (size >= cfg.batch_size for full overlap); made and
    closed here if None."""
    cfg = cfg or GenConfig()
    if not questions:
        return []
    systems = [system] * len(questions) if isinstance(system, str) else list(system)
    if len(systems) != len(questions):
        raise ValueError(f"{len(systems)} system texts for {len(questions)} questions")
    own_pool = pool is None and cfg.execute
    if own_pool:
        pool = sandbox.SandboxPool(max(1, min(cfg.batch_size, len(questions))))
    try:
        return Solver(model, tokenizer, questions, systems, cfg, pool, on_result, on_stream).run()
    finally:
        if own_pool:
            pool.close()


# ------------------------------------------------ the same loop against an OpenAI-compatible server
STOP_STRINGS = ["<|endofblock|>", "<|endofmessage|>"]


def served_round(server, tokenizer, window, max_tokens, cfg, index, prompt_as="ids",
                 served_model=None, what="problem"):
    """One round on a /v1/completions endpoint (server_client.Server): the window (BOS first)
    continued until a stop token or max_tokens. prompt_as "ids": the window's token ids as the
    prompt (vLLM and llama.cpp accept a list of ints; nothing is re-tokenised); "text": the window
    decoded, without BOS, which the server adds (TGI; its tokenizer reads the text again, as the
    authors' server did). Returns (text, n_tokens, eos): the new text, stop string included; the
    tokens generated; whether the model ended on EOS."""
    special = tokenizer.special
    payload = {"prompt": window if prompt_as == "ids" else tokenizer.decode(window[1:]),
               "max_tokens": max_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
               "seed": cfg.seed * 1_000_003 + index, "stop": STOP_STRINGS,
               # vLLM's names: the special tokens stay in the text, unspaced, the stop one too
               "skip_special_tokens": False, "spaces_between_special_tokens": False,
               "include_stop_str_in_output": True}
    if served_model:
        payload["model"] = served_model
    reply = server.complete(payload, what)
    try:
        choice = reply["choices"][0]
        text = choice["text"]
        finish = choice.get("finish_reason")
        n_tokens = (reply.get("usage") or {}).get("completion_tokens")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ServerError(f"{what}: the completion reply has no choices[0].text") from None
    eos = False
    if finish == "stop" and not text.endswith(tuple(STOP_STRINGS)):
        reason = choice.get("stop_reason")   # vLLM: the stop string or token that ended it
        if reason in STOP_STRINGS or reason in (special[t] for t in STOP_STRINGS):
            text += reason if isinstance(reason, str) else tokenizer.id_to_special[reason]
        else:
            eos = True                        # no stop string: the model's own EOS
    if not isinstance(n_tokens, int):
        n_tokens = len(tokenizer.encode(text)) + eos
    return text, n_tokens, eos


def serve_one(server, tokenizer, question, system=DEFAULT_SYSTEM, cfg=None, pool=None, index=0,
              prompt_as="ids", served_model=None, what="problem") -> dict:
    """solve_one's loop with the model behind a server: the same window, cut on the checkpoint's
    token ids; the same rounding, re-tokenising and execution (a sandbox from `pool`, taken at the
    first code block). Each round's reply is text: the block so far is decoded, the reply added,
    and the whole encoded again, which is what round_and_retokenize makes of the model's own ids
    (the context is kept canonical). Returns what solve returns for the problem."""
    cfg = cfg or GenConfig()
    special = tokenizer.special
    ids = tokenizer.encode(lce_data.prompt_text(question, system), bos=True)
    n_prompt = len(ids)
    text_start = n_prompt
    offset = 0
    n_new = 0
    n_exec = 0
    session = None
    opened = False   # <|execution|> was opened for the model: the round's first token, not its own
    stop = "max_rounds"
    try:
        for rounds in range(1, cfg.max_rounds + 1):
            if cfg.context == "window" or rounds == 1:
                offset = max(0, len(ids) - cfg.max_prompt_tokens)
            window = ids[:1] + ids[offset + 1:]
            budget = min(cfg.max_new_tokens - opened, cfg.max_total_tokens - len(window))
            reply, n_tokens, eos = served_round(server, tokenizer, window, budget, cfg, index,
                                                prompt_as, served_model, what)
            n_new += n_tokens
            is_code = not opened and reply.startswith("<|code|>")
            opened = False
            ids[text_start:] = tokenizer.encode(tokenizer.decode(ids[text_start:]) + reply)
            ids += [tokenizer.eos_id] * eos
            text, _ = round_and_retokenize(tokenizer, ids, text_start)
            if ids[-1] in special.values():   # else the block was cut: the next round goes on
                text_start = len(ids)
            if eos or reply.endswith("<|endofmessage|>"):
                stop = "endofmessage"
                break
            if cfg.context_full(len(ids) - offset):
                stop = "max_total_tokens"
                break
            if is_code and cfg.execute:
                if session is None:
                    session = pool.acquire()
                output = run_code(session, code_of(text))
                ids += tokenizer.encode(f"<|execution|>{output}<|endofblock|>")
                n_exec += 1
                text_start = len(ids)
            elif is_code and rounds < cfg.max_rounds:
                ids.append(special["<|execution|>"])
                text_start = len(ids)
                opened = True
            if cfg.context_full(len(ids) - offset):
                stop = "max_total_tokens"
                break
    finally:
        if session is not None:
            pool.release(session)
    return result(tokenizer, question, system, ids[n_prompt:], stop, n_new, rounds, n_exec)


def solve_served(server, tokenizer, questions, system=DEFAULT_SYSTEM, cfg=None, pool=None,
                 on_result=None, concurrency=16, prompt_as="ids", served_model=None, names=None):
    """solve's contract with the model behind a server: serve_one for every question, `concurrency`
    of them in flight. A problem the server failed on (after server_client's retries) gets None
    and one line on stderr; a fatal failure (no server, a bad key) stops the run, raised.
    names[i]: how error lines name problem i (default "problem i")."""
    cfg = cfg or GenConfig()
    systems = [system] * len(questions) if isinstance(system, str) else list(system)
    results = [None] * len(questions)
    lock = threading.Lock()
    stop = threading.Event()
    own_pool = pool is None and cfg.execute and bool(questions)
    if own_pool:
        pool = sandbox.SandboxPool(max(1, min(concurrency, len(questions))))

    def one(i):
        if stop.is_set():
            return
        what = names[i] if names else f"problem {i}"
        try:
            results[i] = serve_one(server, tokenizer, questions[i], systems[i], cfg, pool, i,
                                   prompt_as, served_model, what)
        except ServerError as e:
            if e.fatal:
                stop.set()
                raise
            print(f"\n{e}", file=sys.stderr, flush=True)
            return
        if on_result:
            with lock:
                on_result(i, results[i])
    try:
        with ThreadPoolExecutor(max(1, concurrency)) as executor:
            futures = [executor.submit(one, i) for i in range(len(questions))]
            for future in futures:
                if future.exception():
                    executor.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()
    finally:
        if own_pool:
            pool.close()
    return results


# ---------------------------------------------------------------------------------------------- CLI
def add_generation_args(parser):
    """GenConfig's fields as flags of `parser` (infer.py and eval.py run declare them here only)."""
    group = parser.add_argument_group("generation (GenConfig)")
    for f in fields(GenConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:  # --execute / --no-execute
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f.metadata["help"])
            continue
        kind = f.type if f.type in (int, float, str) else int  # int | None: None = derived
        shown = "" if f.default is None else " (default: %(default)s)"
        group.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                           help=f.metadata["help"] + shown)


def config_from_args(args) -> GenConfig:
    """The GenConfig of parsed flags (a bad combination raises ValueError, naming it)."""
    return GenConfig(**{f.name: getattr(args, f.name) for f in fields(GenConfig)})


class Renderer:
    """Show LCE text on a terminal: code cyan and execution yellow on a tty, Markdown fences
    otherwise."""
    OPEN = {"tty": {"<|code|>": "\n\033[36m", "<|execution|>": "\033[33m"},
            "plain": {"<|code|>": "\n```python\n", "<|execution|>": "```output\n"}}

    def __init__(self, out=sys.stdout):
        self.out = out
        self.mode = "tty" if out.isatty() else "plain"
        self.kind = None  # the block being shown

    def __call__(self, text: str):
        for piece in _SPECIAL.split(text):
            if piece in ("<|text|>", "<|code|>", "<|execution|>"):
                self.kind = piece
                self.out.write(self.OPEN[self.mode].get(piece, ""))
            elif piece in ("<|endofblock|>", "<|endofmessage|>"):
                if self.kind in ("<|code|>", "<|execution|>"):
                    self.out.write("\033[0m\n" if self.mode == "tty" else "\n```\n")
                elif piece == "<|endofblock|>":
                    self.out.write("\n")
                self.kind = None
            elif not _SPECIAL.fullmatch(piece):
                self.out.write(piece)
        self.out.flush()


def read_questions(path: str) -> list[dict]:
    """JSONL: the eval-set schema (question = the user message's text; system = the system
    message's, if any) or {"question": ... [, "system": ...]}."""
    records = []
    for n, record in storage.numbered_jsonl(path):
        try:  # AttributeError / KeyError / TypeError: no question
            question = record.get("question") or lce_data.message_text(record, "user")
            system = (record["system"] if "system" in record
                      else lce_data.message_text(record, "system"))
            has_text = isinstance(question, str) and question
            if not has_text or not isinstance(system, (str, type(None))):
                raise TypeError
        except (AttributeError, KeyError, TypeError):
            raise ValueError(f"{path}:{n}: no 'question' field and no user message "
                             "(messages[].content[].content) with text") from None
        records.append({**record, "question": question, "system": system})
    return records


def show_solutions(model, tokenizer, questions, system, cfg, pool, solver=solve):
    """Questions from the command line: one is streamed as it is decoded; several are each shown
    whole as they finish. solver: solve, or a server's (main)."""
    show = Renderer()
    if len(questions) == 1:
        solver(model, tokenizer, questions, system, cfg, pool, on_stream=lambda i, text: show(text))
    else:
        def show_result(i, outcome):
            print(f"\n=== question {i + 1}: {outcome['question']}")
            show(outcome["solution"])
        solver(model, tokenizer, questions, system, cfg, pool, show_result)
    print()


def solve_file(model, tokenizer, args, cfg, pool, ranks, solver=solve):
    """--file: solve every question not yet in the results file (resumable), appending one line
    per problem; data-parallel replicas each take every n-th problem into a part file of their
    own, and replica 0 merges them and writes the summary."""
    records = read_questions(args.file)[:args.limit]
    out_path = args.out or re.sub(r"(\.jsonl)?$", ".results.jsonl", args.file, count=1)
    done = storage.done_keys(out_path, key="index")  # replicas' parts too; torn lines cut off
    todo = [i for i in range(len(records)) if i not in done][ranks.replica::ranks.n_replicas]
    ranks.wait_for_all()  # every replica has read the files before any writes to them
    print(f"{args.file}: {len(records)} questions, {len(done)} already in {out_path}, "
          f"solving {len(todo)}", file=sys.stderr)
    mine = out_path if ranks.n_replicas == 1 else storage.part_path(out_path, ranks.replica)
    start = time.time()
    stats = Counter()

    def system_of(record):  # --system, else the record's own (the paper's prompt), else default
        if args.system is not None:
            return args.system
        return DEFAULT_SYSTEM if record["system"] is None else record["system"]
    systems = [system_of(records[i]) for i in todo]
    with open(mine, "a", encoding="utf-8") as out:

        def on_result(j, outcome):
            storage.append_jsonl(out, {**records[todo[j]], **outcome, "index": todo[j]})
            stats.update(n=1, tokens=outcome["n_tokens"], rounds=outcome["n_rounds"],
                         exec=outcome["n_exec"])
            seconds = time.time() - start
            n = stats["n"]
            print(f"\r{n}/{len(todo)} problems  {n / seconds:.2f}/s  "
                  f"{stats['tokens'] / seconds:.0f} tok/s  "
                  f"ETA {(len(todo) - n) * seconds / n:.0f}s   ", end="", file=sys.stderr,
                  flush=True)
        solver(model, tokenizer, [records[i]["question"] for i in todo], systems, cfg, pool,
               on_result)
    seconds = time.time() - start
    replicas = ranks.wait_for_all((stats, seconds))  # all replicas are done; replica 0 sums up
    if ranks.replica != 0:
        return
    stats = sum((replica_stats for replica_stats, _ in replicas), Counter())
    seconds = max(replica_seconds for _, replica_seconds in replicas)
    storage.merge_parts(out_path, "index", range(len(records)))
    summary = {"file": args.file, "out": out_path, "solved": stats["n"],
               "seconds": round(seconds, 1), "problems_per_s": stats["n"] / max(seconds, 1e-9),
               "tokens_per_s": stats["tokens"] / max(seconds, 1e-9),
               "mean_rounds": stats["rounds"] / max(stats["n"], 1), "executions": stats["exec"]}
    storage.write_json(out_path + ".summary.json", summary)
    print("\n" + json.dumps(summary), file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description="MathCoder inference: generate text and code, run "
                                     "the code, feed its output back, continue (batched, "
                                     "continuous batching).")
    parser.add_argument("questions", nargs="*",
                        help="question(s) to solve; one question is streamed")
    parser.add_argument("--model",
                        help="checkpoint dir (weights + tokenizer.model [+ added_tokens.json])")
    parser.add_argument("--file",
                        help="JSONL of questions (eval-set schema or {\"question\": ...})")
    parser.add_argument("--out", help="results JSONL for --file (default: FILE.results.jsonl); "
                        "resumes if present")
    parser.add_argument("--limit", type=int, help="only the first N questions of --file")
    parser.add_argument("--system", help="system text (default: a --file record's own, else the "
                        f"paper's: {DEFAULT_SYSTEM!r})")
    parser.add_argument("--timeout", type=float,
                        help="seconds per code block (default: sandbox.py's)")
    parser.add_argument("--device",
                        help="default: cuda (this rank's GPU) when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: as stored")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per model "
                        "replica (torchrun --nproc_per_node=W: W / tp replicas share out --file)")
    add_generation_args(parser)
    add_serving_args(parser)
    args = parser.parse_args()
    if bool(args.questions) == bool(args.file):
        parser.error("give either question(s) or --file")
    if bool(args.model) == bool(args.server):
        parser.error("give either --model or --server (with --tokenizer)")
    cfg = config_from_args(args)  # a bad combination fails here, before the model loads
    if args.server:
        return main_served(args, cfg)
    tokenizer = Tokenizer.from_checkpoint(args.model)
    ranks = init_ranks(args.tp)
    if args.questions and ranks.n_replicas > 1:
        parser.error("several model replicas (--nproc_per_node > --tp) need --file")
    dtype = args.dtype and getattr(torch, args.dtype)
    model = Transformer.from_pretrained(args.model, args.device or ranks.device, dtype,
                                        ranks.tp_group)
    if model.args.vocab_size < tokenizer.vocab_size:
        sys.exit(f"{args.model}: model vocab {model.args.vocab_size} < tokenizer vocab "
                 f"{tokenizer.vocab_size}")
    if not ranks.leader:  # another shard of a tensor-parallel replica: make the leader's calls
        return follow(model, ranks.tp_group)
    model = ranks.lockstep(model)  # released (the followers return) in the `finally` below
    pool = None
    if cfg.execute:
        limits = {"timeout": args.timeout} if args.timeout else {}
        pool = sandbox.SandboxPool(max(1, cfg.batch_size), **limits)
    try:
        if args.questions:
            system = DEFAULT_SYSTEM if args.system is None else args.system
            show_solutions(model, tokenizer, args.questions, system, cfg, pool)
        else:
            solve_file(model, tokenizer, args, cfg, pool, ranks)
    finally:
        if pool is not None:
            pool.close()
        model.release()


def add_serving_args(parser):
    """--server and its settings (infer.py and eval.py run)."""
    group = parser.add_argument_group("a model behind an OpenAI-compatible server (--server)")
    group.add_argument("--server", help="base URL of a /v1/completions endpoint (vLLM, TGI, "
                       "llama.cpp), in place of --model")
    group.add_argument("--tokenizer", help="with --server: the served checkpoint's directory "
                       "(tokenizer.model [+ added_tokens.json]): the window is cut on its ids")
    group.add_argument("--served-model", help="the model's name on the server (default: none "
                       "sent, the server's only model)")
    group.add_argument("--concurrency", type=int, default=16, help="problems in flight")
    group.add_argument("--prompt-as", choices=("ids", "text"), default="ids",
                       help="ids: the window's token ids (vLLM, llama.cpp); text: decoded (TGI)")
    add_server_args(group)


def served_solver(args, index_of=None):
    """A solver with solve's signature for show_solutions / solve_file, over args.server.
    index_of: question -> how error lines name it."""
    def solver(server, tokenizer, questions, system, cfg, pool, on_result=None, on_stream=None):
        if on_stream:   # no streaming from the server: a problem is shown whole when done
            on_result = lambda i, outcome: on_stream(i, outcome["solution"])
        names = [f"problem {index_of.get(q, i) if index_of else i}"
                 for i, q in enumerate(questions)]
        return solve_served(server, tokenizer, questions, system, cfg, pool, on_result,
                            args.concurrency, args.prompt_as, args.served_model, names)
    return solver


def main_served(args, cfg):
    """infer.py --server: the same loop, results and resume, with the model behind a server."""
    if not args.tokenizer:
        sys.exit("error: --server needs --tokenizer CKPT_DIR (the served checkpoint's tokenizer)")
    tokenizer = Tokenizer.from_checkpoint(args.tokenizer)
    server = server_from_args(args)
    index_of = {}
    if args.file:
        for i, record in enumerate(read_questions(args.file)[:args.limit]):
            index_of.setdefault(record["question"], i)
    limits = {"timeout": args.timeout} if args.timeout else {}
    pool = sandbox.SandboxPool(max(1, args.concurrency), **limits) if cfg.execute else None
    try:
        if args.questions:
            system = DEFAULT_SYSTEM if args.system is None else args.system
            show_solutions(server, tokenizer, args.questions, system, cfg, pool,
                           served_solver(args))
        else:
            solve_file(server, tokenizer, args, cfg, pool, init_ranks(1),
                       served_solver(args, index_of))
    finally:
        if pool is not None:
            pool.close()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, ServerError) as e:  # bad input or no server: one line
        sys.exit(f"error: {e}")
