"""MathCoder inference: generate, execute, continue (docs/method.md §4). Read top to bottom: the
authors' loop for one problem, the engine that runs many of them at once, the command line.

The authors (src/inference.py) solved one problem per process against a text-generation server
(truncate=1536, max_new_tokens=512). Each round they sent the conversation so far and got back ONE
block (it stops at <|endofblock|> or <|endofmessage|>, at most 512 new tokens), rounded decimals
longer than 6 places, and when the block started with <|code|> ran it in the problem's own Jupyter
kernel (state persists) and appended <|execution|>{output}<|endofblock|>. At most 16 rounds. Their
server cut every round's input to BOS + the conversation's last 1535 tokens, read from position 0
(context "window"; "stop" cuts only the prompt and stops a problem at max_total_tokens).

`solution_steps` is that loop, written once, as a generator: it yields Generate ("continue these
ids") and Execute ("run this code") and is sent the answers. `solve_one` drives one plainly (a fresh
prefill every round); `solve` drives many on one static KV cache (`Engine`), code running in a
sandbox pool while the other rows decode. tests/test_infer.py checks they agree problem by problem.
plumbing/serving.py drives it with the model behind an OpenAI-compatible server (--server;
docs/serving.md).
Where both differ from the authors' loop:
  * the window is cut in ids; their server decoded the cut ids and encoded the text again.
  * every generated token is kept, and only stop tokens stop (their server's text skipped special
    tokens, and it stopped on the text "<|endofblock|>" even when spelled in pieces).
  * execution output is data: encoded as plain text, so a special-token string that code prints
    stays text (their server re-tokenised it into a special token); blocks are read from the ids.
  * numerics: their server ran fp16 kernels; here the model's logits in --dtype decide (a near tie
    can go the other way). The output the model reads is sandbox.py's rendering of it.
  * the question is sent verbatim with the record's own system text, as in their released outputs
    (their public script's defaults differ: docs/method.md §4).
  * decimals are rounded where they did it, in each block the model has just written, code
    included (the code that runs is the rounded code); that block is re-tokenised (they re-tokenised
    the whole conversation), and the model goes on reading exactly the text that is recorded.
  * a round cut off by max_new_tokens is a round (a cut code block still runs; the next round
    continues the block). EOS (</s>) ends the message, as <|endofmessage|> does.

    python infer.py --model CKPT "What is 2^10 - 1?"            # streams the solution
    python infer.py --model CKPT --file data/eval/GSM8K_test_post.jsonl --out results.jsonl
"""
import argparse
import contextlib
import re
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch

import lce_data
import sandbox
from lce_data import DEFAULT_SYSTEM
from model import Transformer, default_dtype, generate
from plumbing.cli import add_flags, flag, from_flags
from plumbing.parallel import follow, init_ranks
from plumbing.question_files import add_file_args, check_file_run, solve_file
from plumbing.server_client import ServerError, server_from_args
from plumbing.serving import add_serving_args, served_solver
from plumbing.terminal import Stream, show_solutions
from tokenizer import Tokenizer


@dataclass
class GenConfig:
    """How to generate; the defaults are the authors' (docs/method.md §4). Each field is also a
    flag of `infer.py` and `eval.py run` (max_new_tokens: --max-new-tokens)."""
    max_new_tokens: int = flag(512, "tokens per round (one block)")
    max_total_tokens: int = flag(2048, "a cache row: the window + one round (context stop: the "
                                 "whole context)")
    max_prompt_tokens: int | None = flag(None, "the window: the model reads at most this many "
                                         "tokens when a round starts (default: max-total-tokens "
                                         "- max-new-tokens, at most 1536)")
    context: str = flag("window", "window: the authors' sliding window; stop: cut the prompt "
                        "only, stop a problem once its context reaches max-total-tokens",
                        choices=("window", "stop"))
    max_rounds: int = flag(16, "blocks per solution at most")
    temperature: float = flag(0.0, "0: greedy (the paper's numbers); > 0: sampling "
                              "(self-distillation)")
    top_p: float = flag(1.0, "nucleus sampling: keep the most likely tokens up to this mass")
    batch_size: int = flag(16, "rows of the KV cache = problems decoded together")
    execute: bool = flag(True, "run the code; --no-execute: <|execution|> is opened and the "
                         "model writes the output itself (ablation: can it compute without "
                         "the interpreter?)")
    seed: int = flag(0, "sampling: problem i draws from its own generator (seed, i)")

    def __post_init__(self):
        if self.max_prompt_tokens is None:  # the authors' 1536 where a round fits beside it
            fits = self.max_total_tokens - self.max_new_tokens
            self.max_prompt_tokens = max(2, min(1536, fits))
        if min(self.max_new_tokens, self.max_rounds) < 1 or self.temperature < 0 or not (
                0 < self.top_p <= 1):
            raise ValueError("GenConfig: need max_new_tokens >= 1, max_rounds >= 1, temperature "
                             f">= 0, 0 < top_p <= 1 (got {self})")
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


# ------------------------------------------------------------------ one problem: the authors' loop
# The loop's two requests are its whole interface to an engine (the batched one below, or another):
@dataclass
class Generate:
    """Answer: the new ids that continue `window` (BOS first, read afresh from position 0): at most
    max_new, ending early after a token in `stops`. on_token(id), if set, wants each as it comes."""
    window: list
    max_new: int
    stops: frozenset
    on_token: object = None


@dataclass
class Execute:
    """Answer: the output the model reads after `code` runs in the problem's own sandbox session
    (its state persists across the problem's blocks)."""
    code: str


def solution_steps(tokenizer, question: str, system: str, cfg, show=None):
    """The authors' loop for one problem: yields Generate / Execute requests, is sent the answers,
    returns the problem's `result`. show(text): each new piece of LCE text (generated text as it is
    decoded, before rounding; an execution block whole)."""
    special = tokenizer.special
    stops = frozenset({special["<|endofblock|>"], special["<|endofmessage|>"], tokenizer.eos_id})
    stream = Stream(tokenizer, show)
    ids = tokenizer.encode(lce_data.prompt_text(question, system), bos=True)
    n_prompt = round_start = text_start = len(ids)  # where this round's tokens, and the text
    offset = n_new = n_exec = 0                     # since the last special token, begin
    stop = "max_rounds"
    for rounds in range(1, cfg.max_rounds + 1):
        if cfg.context == "window" or rounds == 1:  # the model reads BOS + ids[offset + 1:]
            offset = max(0, len(ids) - cfg.max_prompt_tokens)
        room = min(cfg.max_new_tokens - (len(ids) - round_start),  # (an opened <|execution|>
                   cfg.max_total_tokens - (len(ids) - offset))    # counts; full: "stop" only)
        new = yield Generate(ids[:1] + ids[offset + 1:], max(1, room), stops,
                             stream.token if show else None)
        ids += new
        n_new += len(new)
        is_code = ids[round_start] == special["<|code|>"]
        text, changed = round_and_retokenize(tokenizer, ids, text_start)
        if changed:
            stream.restart(ids[text_start:], text)
        round_start = len(ids)
        if ids[-1] in special.values():  # else the block was cut: the next round continues it
            text_start = len(ids)
            stream.restart([], "")
        if new[-1] in (special["<|endofmessage|>"], tokenizer.eos_id):
            stop = "endofmessage"
            break
        if cfg.context_full(len(ids) - offset):
            stop = "max_total_tokens"
            break
        if is_code and cfg.execute:  # (the authors ran a code block even in the last round)
            output = yield Execute(code_of(text))
            ids += ([special["<|execution|>"]] + tokenizer.encode(output, special=False)
                    + [special["<|endofblock|>"]])  # data: plain text, whatever it spells
            n_exec += 1
            round_start = text_start = len(ids)
            stream.piece(f"<|execution|>{output}<|endofblock|>")
        elif is_code and rounds < cfg.max_rounds:  # execution withheld: the model writes it
            ids.append(special["<|execution|>"])   # (the next round's first token)
            text_start = len(ids)
            stream.piece("<|execution|>")
        if cfg.context_full(len(ids) - offset):
            stop = "max_total_tokens"
            break
    return result(tokenizer, question, system, ids[n_prompt:], stop, n_new, rounds, n_exec)


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


def result(tokenizer, question, system, solution_ids, stop, n_tokens, n_rounds, n_exec) -> dict:
    """One problem's outcome: {question, messages (system, user, assistant: the messages schema
    lce_data reads), solution (the assistant's LCE string: the text the model read), n_tokens
    (generated by the model), n_rounds, n_exec, stop}."""
    record = lce_data.make_record(question, lce_data.blocks_of(tokenizer, solution_ids),
                                  system)
    return {"question": question, "messages": record["messages"],
            "solution": tokenizer.decode(solution_ids), "n_tokens": n_tokens,
            "n_rounds": n_rounds, "n_exec": n_exec, "stop": stop}


# ------------------------------------------------------------------------- sampling, solve_one
def sample(logits, temperature: float, top_p: float, generators: list):
    """Next token per row, on the logits' device: argmax if temperature is 0, else nucleus sampling,
    row b drawing one uniform number from its own generator (so a problem's draws do not depend on
    the rows beside it) and taking the token where its cumulative probability passes it."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        probs, order = probs.sort(-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    pick = torch.searchsorted(cdf, target, right=True)
    return (pick if order is None else order.gather(-1, pick))[:, 0]


def sampling_generator(seed: int, index: int, device):
    """Problem `index`'s own random stream, on the model's device."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


@torch.no_grad()
def solve_one(model, tokenizer, question: str, system: str = DEFAULT_SYSTEM,
              cfg: GenConfig | None = None, session=None, index: int = 0) -> dict:
    """solution_steps driven plainly, one problem: every Generate a fresh prefill of its window,
    then a token at a time; every Execute run in `session` (a sandbox.Sandbox, needed when
    cfg.execute). index: the problem's sampling stream. Returns what solve returns for it."""
    cfg = cfg or GenConfig()
    if cfg.execute and session is None:
        raise ValueError("solve_one: cfg.execute needs a session (a sandbox.Sandbox)")
    device = next(model.parameters()).device
    generator = sampling_generator(cfg.seed, index, device)
    steps, answer = solution_steps(tokenizer, question, system, cfg), None
    while True:
        try:
            request = steps.send(answer)
        except StopIteration as done:
            return done.value
        if isinstance(request, Execute):
            answer = run_code(session, request.code)
            continue
        answer = generate(model, request.window, request.max_new, request.stops,
                          lambda logits: sample(logits, cfg.temperature, cfg.top_p, [generator]))


# ----------------------------------------------------------- many problems: the batched engine
@dataclass
class Problem:
    index: int
    steps: object                      # its solution_steps generator
    generator: torch.Generator         # its random stream
    request: Generate | None = None    # the Generate it is decoding; new: the ids written for it
    new: list = field(default_factory=list)
    future: object = None              # its Execute, running in the thread pool
    session: object = None             # its sandbox, from its first code block on


class Engine:
    """Many problems' solution_steps on one static KV cache (rows x cfg.max_total_tokens slots).
    held[r]: the ids whose keys and values row r holds, at slots 0, 1, ...; todo[r]: the ids to feed
    it next (a new window past what the row holds, then each new token). A step feeds every
    decoding row: rows with several new ids (a prompt, an execution block, a slid window)
    prefilled together, rows with one decoding together, each row read in place (model.KVCache);
    then every row gets its token, with one transfer from the device. Code runs in a thread pool
    while the other rows decode; a free row takes the next problem (continuous batching)."""

    def __init__(self, model, cfg: GenConfig, n_rows: int, pool, finished):
        self.model, self.cfg, self.pool, self.finished = model, cfg, pool, finished
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(n_rows, cfg.max_total_tokens)
        self.rows = [None] * n_rows    # the Problem in each row
        self.held = [[] for _ in range(n_rows)]
        self.todo = [[] for _ in range(n_rows)]
        self.runner = ThreadPoolExecutor(n_rows, thread_name_prefix="sandbox")

    def run(self, waiting: deque):
        """Until every Problem in `waiting` is done."""
        try:
            while waiting or any(self.rows):
                for r, problem in enumerate(self.rows):
                    if problem is None and waiting:  # a free row takes the next problem
                        self.rows[r], self.held[r] = waiting.popleft(), []
                        self.advance(r, None)
                    elif problem is not None and problem.future and problem.future.done():
                        self.advance(r, problem.future.result())  # its code's output is ready
                ready = [r for r, p in enumerate(self.rows) if p is not None and p.request]
                if ready:
                    self.step(ready)
                else:  # every problem left waits for its code
                    wait([p.future for p in self.rows if p], return_when=FIRST_COMPLETED)
        finally:
            self.runner.shutdown(wait=False, cancel_futures=True)

    def advance(self, r: int, answer):
        """Send row r's problem its answer; take its next request."""
        problem = self.rows[r]
        problem.request = problem.future = None
        try:
            request = problem.steps.send(answer)
        except StopIteration as done:
            self.rows[r] = None
            if problem.session is not None:
                self.pool.release(problem.session)
            return self.finished(problem.index, done.value)
        if isinstance(request, Execute):
            problem.future = self.runner.submit(self.execute, problem, request.code)
            return
        problem.request, problem.new = request, []
        window, held = request.window, self.held[r]
        keep = 0  # what the row holds of the window already (its last id is fed again: logits)
        while keep < min(len(held), len(window) - 1) and held[keep] == window[keep]:
            keep += 1
        del held[keep:]
        self.todo[r] = window[keep:]

    def execute(self, problem: Problem, code: str) -> str:
        """In a worker thread: a problem takes a sandbox at its first code block."""
        if problem.session is None:
            problem.session = self.pool.acquire()
        return run_code(problem.session, code)

    def step(self, ready: list):
        """One token for every ready row."""
        prefill = [r for r in ready if len(self.todo[r]) > 1]
        decode = [r for r in ready if len(self.todo[r]) == 1]
        logits = [self.feed(rows) for rows in (prefill, decode) if rows]
        rows = prefill + decode
        generators = [self.rows[r].generator for r in rows]
        tokens = sample(torch.cat(logits), self.cfg.temperature, self.cfg.top_p, generators)
        for r, token in zip(rows, tokens.tolist()):  # the step's one transfer from the device
            problem = self.rows[r]
            self.held[r] += self.todo[r]
            self.todo[r] = [token]
            problem.new.append(token)
            if problem.request.on_token:
                problem.request.on_token(token)
            if token in problem.request.stops or len(problem.new) >= problem.request.max_new:
                self.advance(r, problem.new)

    def feed(self, rows: list):
        """The model on each row's todo ids at its own positions (padded with position -1: neither
        written nor read), on the device; positions and rows stay on the host, where the cache
        plans the call without waiting. Returns the logits after each row's last id."""
        width = max(len(self.todo[r]) for r in rows)
        tokens = [self.todo[r] + [0] * (width - len(self.todo[r])) for r in rows]
        positions = [list(range(len(self.held[r]), len(self.held[r]) + len(self.todo[r])))
                     + [-1] * (width - len(self.todo[r])) for r in rows]
        logits = self.model(torch.tensor(tokens, device=self.device), torch.tensor(positions),
                            cache=self.cache, rows=torch.tensor(rows), last_only=True)
        return logits[:, -1]


@torch.no_grad()
def solve(model, tokenizer, questions: list[str], system: str | list[str] = DEFAULT_SYSTEM,
          cfg: GenConfig | None = None, pool=None, on_result=None, on_stream=None,
          indices: list[int] | None = None) -> list[dict]:
    """Every question's solution_steps on the batched Engine. system: every prompt's system text,
    or one per question. Returns one `result` per question, in order; on_result(index, result) as
    each finishes; on_stream(index, text) with each new piece of LCE text. pool: a
    sandbox.SandboxPool (size >= cfg.batch_size for full overlap); made and closed here if None.
    indices: question i samples from generator (cfg.seed, indices[i]), its place in the whole
    file, so a resumed run draws what an uninterrupted one drew (default: its place here)."""
    cfg = cfg or GenConfig()
    systems = [system] * len(questions) if isinstance(system, str) else list(system)
    if len(systems) != len(questions):
        raise ValueError(f"{len(systems)} system texts for {len(questions)} questions")
    results = [None] * len(questions)
    device = next(model.parameters()).device

    def problem(i):
        show = on_stream and (lambda text: on_stream(i, text))
        steps = solution_steps(tokenizer, questions[i], systems[i], cfg, show)
        return Problem(i, steps, sampling_generator(cfg.seed, indices[i] if indices else i, device))

    def finished(i, outcome):
        results[i] = outcome
        if on_result:
            on_result(i, outcome)
    n_rows = max(1, min(cfg.batch_size, len(questions)))
    own_pool = pool is None and cfg.execute
    pool = sandbox.SandboxPool(n_rows) if own_pool else pool
    try:
        if questions:
            waiting = deque(map(problem, range(len(questions))))
            Engine(model, cfg, n_rows, pool, finished).run(waiting)
    finally:
        if own_pool:
            pool.close()
    return results


# ---------------------------------------------------------------------------------------------- CLI
def add_model_args(parser):
    """The flags of infer.py and eval.py run alike: the model (--model, or --server), where and in
    what dtype it runs, and how to generate (GenConfig's fields)."""
    parser.add_argument("--model", help="checkpoint directory (weights + tokenizer.model "
                        "[+ added_tokens.json]), or --server")
    parser.add_argument("--device", help="default: this rank's GPU when there is one, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weights and KV cache (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per model replica "
                        "(torchrun --nproc_per_node=W: W / tp replicas share the problems)")
    add_flags(parser.add_argument_group("generation (GenConfig)"), GenConfig)
    add_serving_args(parser)


def open_model(args, ranks, name_of=None):
    """The model of --model (this rank's shard under --tp, in --dtype) or of --server, for the
    loop: (tokenizer, model, solver: solve or serving.served_solver's). Leaving `with model`
    releases a tensor-parallel replica's followers. On a follower: None, once it has made its
    leader's model calls. name_of: question -> how a server's error lines name it."""
    if args.server:  # the same loop, the model behind a server (plumbing/serving.py)
        solver = served_solver(args, solution_steps, run_code, name_of)
        return (Tokenizer.from_checkpoint(args.tokenizer),
                contextlib.nullcontext(server_from_args(args)), solver)
    tokenizer = Tokenizer.from_checkpoint(args.model)
    device = args.device or ranks.device
    model = Transformer.from_pretrained(args.model, device, default_dtype(args.dtype, device),
                                        ranks.tp_group).eval()
    if model.args.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"{args.model}: model vocab {model.args.vocab_size} < tokenizer vocab "
                         f"{tokenizer.vocab_size}")
    if not ranks.leader:  # another shard of a tensor-parallel replica: make the leader's calls
        return follow(model, ranks.tp_group)
    return tokenizer, ranks.lockstep(model), solve


def main():
    parser = argparse.ArgumentParser(description="MathCoder inference: generate, run the code, "
                                     "feed its output back, continue.")
    parser.add_argument("questions", nargs="*",
                        help="question(s) to solve; one question is streamed")
    add_file_args(parser)  # --file, --out, --limit, --force-new
    parser.add_argument("--system", help="system text (default: a --file record's own, else the "
                        f"paper's: {DEFAULT_SYSTEM!r})")
    parser.add_argument("--timeout", type=float, help="seconds per code block (default: sandbox's)")
    add_model_args(parser)
    args = parser.parse_args()
    if bool(args.questions) == bool(args.file):
        parser.error("give either question(s) or --file")
    if bool(args.model) == bool(args.server) or args.server and not args.tokenizer:
        parser.error("give either --model or --server with --tokenizer (the served checkpoint)")
    cfg = from_flags(GenConfig, args)  # a bad combination fails here, before loading
    ranks = init_ranks(1 if args.server else args.tp)
    if args.questions and ranks.n_replicas > 1:
        parser.error("several model replicas (--nproc_per_node > --tp) need --file")
    if args.file and ranks.leader:  # another run's results: refused before the model loads
        check_file_run(args, cfg, ranks)
    opened = open_model(args, ranks)
    if opened is None:  # a tensor-parallel follower, done
        return
    tokenizer, model, solver = opened
    limits = {"timeout": args.timeout} if args.timeout else {}
    rows = args.concurrency if args.server else cfg.batch_size  # problems in flight
    pool = sandbox.SandboxPool(max(1, rows), **limits) if cfg.execute else contextlib.nullcontext()
    with model as model, pool as pool:
        if args.questions:
            system = DEFAULT_SYSTEM if args.system is None else args.system
            show_solutions(solver, model, tokenizer, args.questions, system, cfg, pool)
        else:
            solve_file(solver, model, tokenizer, args, cfg, pool, ranks)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, ServerError) as e:  # bad input or no server: one line
        sys.exit(f"error: {e}")
