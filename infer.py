"""MathCoder inference: generate, execute, continue (docs/method.md §4), batched on one KV cache.

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
max_prompt_tokens is read as BOS + its last max_prompt_tokens - 1 tokens from position 0, and that
row's cache is recomputed for the window (rare: most solutions never reach 1536 tokens). context =
"stop" is the simpler rule: only the prompt is cut so, and a problem stops once its context reaches
max_total_tokens.

Same loop here, but B problems advance together on one KV cache of B rows:
  * every token is fed to the model once: a prompt or an execution block is prefilled into its own
    row (model.forward(..., cache=cache, rows=[r])); the prefix is recomputed only when the window
    slides;
  * code runs in a thread pool, each problem in its own Sandbox, while the other rows keep decoding;
    the row rejoins once its output is ready; a finished row takes the next waiting problem
    (continuous batching);
  * ragged lengths: each row carries its own positions and the model masks cache slots past a
    query's position, so every row's logits are those it would get alone.
Where this differs from the authors' loop:
  * the window's first tokens: their server cut ids, decoded them and encoded the text again, which
    can split the window's first word differently (a piece cut mid-word gets a word-start "▁"); here
    the ids themselves are kept.
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
    and, if its ids changed (rounding, or a non-canonical split), rewritten into the cache from its
    first position. Either way the model goes on reading exactly the text that is recorded.
  * a round cut off by max_new_tokens is, as theirs, a round: a cut code block is still run; the
    next round continues the same block (its text is re-tokenised as one piece, as their server saw
    it).
  * EOS (</s>) from the model ends the message, as <|endofmessage|> does.

    python infer.py --model CKPT "What is 2^10 - 1?"            # streams the solution
    python infer.py --model CKPT --file data/eval/GSM8K_test_post.jsonl --out results.jsonl
"""
import argparse, json, os, re, sys, time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch

import lce_data
from lce_data import DEFAULT_SYSTEM
from model import Transformer
from parallel import follow, init_ranks
from tokenizer import SPECIAL_TOKENS, Tokenizer


@dataclass
class GenConfig:
    max_new_tokens: int = 512      # per round (one block)
    max_total_tokens: int = 2048   # a cache row: the window + one round ("stop": the whole context)
    max_prompt_tokens: int = 1536  # the model reads at most this many tokens when a round starts
    # "window": the authors' sliding window; "stop": cut the prompt only, stop a problem once its
    # context reaches max_total_tokens
    context: str = "window"
    max_rounds: int = 16
    temperature: float = 0.0       # 0 = greedy (the paper's numbers); > 0 for self-distillation
    top_p: float = 1.0
    batch_size: int = 16           # rows of the KV cache = problems decoded together
    # False: code is not run; <|execution|> is opened and the model writes the output itself
    # (ablation: can it compute without the interpreter?)
    execute: bool = True
    seed: int = 0                  # sampling: problem i draws from its own generator (seed, i)


_DECIMAL = re.compile(r"\d+\.\d+")


def round_decimals(text: str, places: int = 6) -> str:
    """The authors' truncate_decimals: every decimal literal with more than `places` places is
    rewritten with exactly `places` ('{:.6f}'.format(float(x)), i.e. rounded, not truncated)."""
    def repl(m):
        s = m.group(0)
        return s if len(s.split(".")[1]) <= places else f"{float(s):.{places}f}"
    return _DECIMAL.sub(repl, text)


@dataclass
class Seq:
    """One problem in flight. ids = its whole context, BOS first. The model reads a window of it:
    BOS, then ids[offset + 1:], at positions 0, 1, ... (offset 0: the whole context); the window's
    first n_cached tokens have K/V in the problem's cache row."""
    index: int
    ids: list
    prompt_len: int
    gen: torch.Generator | None = None
    offset: int = 0
    n_cached: int = 0
    block_start: int = field(init=False)  # where this round's tokens begin
    # where the text since the last special token begins (a block cut by max_new_tokens continues in
    # the next round: one run, several rounds)
    run: int = field(init=False)
    rounds: int = 0
    n_new: int = 0                 # tokens the model generated
    n_exec: int = 0
    sandbox: object = None
    future: object = None          # code running in the thread pool
    shown: str = ""                # streaming: text of the current run already shown

    def __post_init__(self):       # the first round starts right after the prompt
        self.block_start = self.run = self.prompt_len

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
        self.model, self.cache = model, model.new_cache(batch_size, max_len)
        self.seqs = [None] * batch_size
        self.device = next(model.parameters()).device

    def admit(self, waiting: deque, new_seq):
        """Continuous batching: every free row takes the next waiting problem (new_seq(index) ->
        Seq)."""
        for r, s in enumerate(self.seqs):
            if s is None and waiting:
                self.seqs[r] = new_seq(waiting.popleft())

    def feed(self, rows: list) -> torch.Tensor:
        """Run the model on every row's tokens not yet in the cache, each at its own positions;
        return the logits after each row's last token, [len(rows), vocab]. Rows with one new token
        (decoding) go in one batched call; rows with several (a prompt, an execution block) are
        prefilled one by one."""
        out, single = [None] * len(rows), []
        for j, r in enumerate(rows):
            s = self.seqs[r]
            if s.window_len - s.n_cached == 1:
                single.append(j)
                continue
            new = torch.tensor([s.pending()], device=self.device)
            pos = torch.arange(s.n_cached, s.window_len, device=self.device)[None]
            row = torch.tensor([r], device=self.device)
            out[j] = self.model(new, pos, cache=self.cache, rows=row, last_only=True)[0, -1]
        if single:
            seqs = [self.seqs[rows[j]] for j in single]
            new = torch.tensor([[s.ids[-1]] for s in seqs], device=self.device)
            pos = torch.tensor([[s.n_cached] for s in seqs], device=self.device)
            idx = torch.tensor([rows[j] for j in single], device=self.device)
            logits = self.model(new, pos, cache=self.cache, rows=idx)[:, -1]
            for k, j in enumerate(single):
                out[j] = logits[k]
        for r in rows:
            self.seqs[r].n_cached = self.seqs[r].window_len
        return torch.stack(out)


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


_SPECIAL = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")   # keeps the separators


def parse_blocks(solution: str) -> list[tuple[str, str]]:
    """The assistant's LCE string -> [(type, content), ...]. Lenient, as generated text can be: a
    block cut off at a limit keeps what it has; text outside any block becomes a text block."""
    blocks, inside = [], False
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


# problem `index` samples from its own stream: batching can't change it
def _generator(seed: int, index: int):
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


@torch.no_grad()
def generate(model, prompts: list, max_new_tokens: int, batch_size: int = 16, stop_ids=(),
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """The decode core on raw token ids, no tools: continuous batching over `batch_size` cache rows.
    Returns each prompt's new tokens (up to and including a stop id)."""
    rows = Rows(model, max(1, min(batch_size, len(prompts))),
                max(map(len, prompts)) + max_new_tokens)
    waiting, out = deque(range(len(prompts))), [None] * len(prompts)
    while waiting or any(rows.seqs):
        rows.admit(waiting,
                   lambda i: Seq(i, list(prompts[i]), len(prompts[i]), _generator(seed, i)))
        active = [r for r, s in enumerate(rows.seqs) if s is not None]
        tokens = sample(rows.feed(active), temperature, top_p, [rows.seqs[r].gen for r in active])
        for r, t in zip(active, tokens):
            s = rows.seqs[r]
            s.ids.append(t)
            if t in stop_ids or len(s.ids) - s.prompt_len >= max_new_tokens:
                out[s.index], rows.seqs[r] = s.ids[s.prompt_len:], None
    return out


@torch.no_grad()
def solve(model, tokenizer, questions: list[str], system: str | list[str] = DEFAULT_SYSTEM,
          cfg: GenConfig | None = None, pool=None, on_result=None, on_stream=None) -> list[dict]:
    """Solve every question in LCE form (docs/method.md §4). system: the system text of every
    prompt, or a list with one per question. Returns one dict per question, in order: {question,
    messages (system, user, assistant: the messages schema lce_data reads), solution (the
    assistant's LCE string), n_tokens (generated by the model), n_rounds, n_exec, stop}.
    on_result(index, dict) is called as each problem finishes; on_stream(index, text) with each new
    piece of LCE text (generated text as it is decoded, before rounding; an execution block whole).
    pool: a sandbox.SandboxPool (size >= cfg.batch_size for full overlap); made and closed here if
    None."""
    cfg = cfg or GenConfig()
    if not questions:
        return []
    if cfg.context not in ("window", "stop"):
        raise ValueError(f"GenConfig: context must be 'window' or 'stop', not {cfg.context!r}")
    if not 2 <= cfg.max_prompt_tokens < cfg.max_total_tokens:
        raise ValueError(f"GenConfig: max_prompt_tokens {cfg.max_prompt_tokens} must be >= 2 and < "
                         f"max_total_tokens {cfg.max_total_tokens}")
    window = cfg.context == "window"
    if window and cfg.max_prompt_tokens + cfg.max_new_tokens > cfg.max_total_tokens:
        raise ValueError(f"GenConfig: the window ({cfg.max_prompt_tokens}) and a round "
                         f"({cfg.max_new_tokens}) must fit max_total_tokens {cfg.max_total_tokens}")
    systems = [system] * len(questions) if isinstance(system, str) else list(system)
    if len(systems) != len(questions):
        raise ValueError(f"{len(systems)} system texts for {len(questions)} questions")
    sp = tokenizer.special
    CODE, EXEC = sp["<|code|>"], sp["<|execution|>"]
    EOB, EOM = sp["<|endofblock|>"], sp["<|endofmessage|>"]
    specials, stops = set(sp.values()), {EOB, EOM, tokenizer.eos_id}
    B = max(1, min(cfg.batch_size, len(questions)))
    own_pool = pool is None and cfg.execute
    if own_pool:
        import sandbox
        pool = sandbox.SandboxPool(B)
    runner = ThreadPoolExecutor(B, thread_name_prefix="sandbox") if cfg.execute else None
    rows = Rows(model, B, cfg.max_total_tokens)
    waiting, results = deque(range(len(questions))), [None] * len(questions)

    def new_seq(i):
        ids = tokenizer.encode(lce_data.prompt_text(questions[i], systems[i]), bos=True)
        s = Seq(i, ids, len(ids), _generator(cfg.seed, i))
        start_round(s)
        return s

    def start_round(s):
        """Before every round ("stop": the first only), as the authors' server: a context longer
        than max_prompt_tokens is read as BOS + its last max_prompt_tokens - 1 tokens, from position
        0. A new window is recomputed from scratch in the row's cache."""
        if not window and s.rounds > 0:
            return
        offset = max(0, len(s.ids) - cfg.max_prompt_tokens)
        if offset != s.offset:
            s.offset, s.n_cached = offset, 0

    def finish(r, s, stop):
        if s.sandbox is not None:
            pool.release(s.sandbox)
        # the context is kept canonical: decode is exact
        solution = tokenizer.decode(s.ids[s.prompt_len:])
        record = lce_data.make_record(questions[s.index], parse_blocks(solution), systems[s.index])
        results[s.index] = res = {"question": questions[s.index], "messages": record["messages"],
                                  "solution": solution, "n_tokens": s.n_new, "n_rounds": s.rounds,
                                  "n_exec": s.n_exec, "stop": stop}
        rows.seqs[r] = None
        if on_result:
            on_result(s.index, res)

    # in a worker thread: the sandbox is taken on the problem's first code block
    def run_code(s, code):
        if s.sandbox is None:
            s.sandbox = pool.acquire()
        try:
            return s.sandbox.run(code)
        # the sandbox itself failed: show the model an error, as a kernel would
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    def end_block(r, s, last):
        """A round is over: round decimals, then finish, execute, or go on."""
        is_code = s.ids[s.block_start] == CODE
        # Round decimals in the text just written and re-tokenise it as the authors' server
        # re-tokenised the whole conversation each round; a changed run is rewritten from its first
        # position (the cache slots after it are stale and get overwritten as the new ids are fed).
        text = round_decimals(tokenizer.decode(s.ids[s.run:]))
        ids = tokenizer.encode(text)
        if ids and ids != s.ids[s.run:]:
            s.ids[s.run:] = ids
            s.n_cached = min(s.n_cached, max(0, s.run - s.offset))
            s.shown = text
        s.rounds += 1
        s.block_start = len(s.ids)
        # else the block was cut by max_new_tokens: the next round continues it
        if s.ids[-1] in specials:
            s.run, s.shown = len(s.ids), ""
        if last in (EOM, tokenizer.eos_id):
            return finish(r, s, "endofmessage")
        if not window and s.window_len >= cfg.max_total_tokens:
            return finish(r, s, "max_total_tokens")
        if is_code and cfg.execute:  # (the authors ran a code block even in the last round)
            code = text.rsplit("<|code|>", 1)[-1]
            code = code.removesuffix("<|endofblock|>").removesuffix("<|endofmessage|>")
            s.future = runner.submit(run_code, s, code)
        elif s.rounds >= cfg.max_rounds:
            finish(r, s, "max_rounds")
        # execution withheld (ablation): open the execution block; the model writes it
        elif is_code:
            s.ids.append(EXEC)
            s.block_start, s.run = len(s.ids) - 1, len(s.ids)
            if on_stream:
                on_stream(s.index, "<|execution|>")
            if not window and s.window_len >= cfg.max_total_tokens:
                finish(r, s, "max_total_tokens")
            else:
                start_round(s)
        else:
            start_round(s)

    def add_execution(r, s):
        out, s.future = s.future.result(), None
        piece = f"<|execution|>{out}<|endofblock|>"
        s.ids += tokenizer.encode(piece)
        s.n_exec += 1
        s.block_start = s.run = len(s.ids)
        if on_stream:
            on_stream(s.index, piece)
        if not window and s.window_len >= cfg.max_total_tokens:
            finish(r, s, "max_total_tokens")
        elif s.rounds >= cfg.max_rounds:
            finish(r, s, "max_rounds")
        else:
            start_round(s)

    try:
        while waiting or any(rows.seqs):
            rows.admit(waiting, new_seq)
            # finished executions rejoin (their output gets prefilled)
            for r, s in enumerate(rows.seqs):
                if s is not None and s.future is not None and s.future.done():
                    add_execution(r, s)
            ready = [r for r, s in enumerate(rows.seqs) if s is not None and s.future is None]
            if not ready:  # everyone left is waiting for code: sleep until one is done
                running = [s.future for s in rows.seqs if s is not None and s.future is not None]
                if running:
                    wait(running, return_when=FIRST_COMPLETED)
                continue
            tokens = sample(rows.feed(ready), cfg.temperature, cfg.top_p,
                            [rows.seqs[r].gen for r in ready])
            for r, t in zip(ready, tokens):
                s = rows.seqs[r]
                s.ids.append(t)
                s.n_new += 1
                if on_stream:
                    text = tokenizer.decode(s.ids[s.run:])
                    # a half-decoded UTF-8 byte sequence can change the tail
                    if text.startswith(s.shown):
                        on_stream(s.index, text[len(s.shown):])
                        s.shown = text
                if (t in stops or len(s.ids) - s.block_start >= cfg.max_new_tokens
                        or s.window_len >= cfg.max_total_tokens):   # (the row is full: "stop" only)
                    end_block(r, s, t)
    finally:
        if runner:
            runner.shutdown(wait=False, cancel_futures=True)
        if own_pool:
            pool.close()
    return results


# ---------------------------------------------------------------------------------------------- CLI

class Renderer:
    """Show LCE text on a terminal: code cyan and execution yellow on a tty, Markdown fences
    otherwise."""
    OPEN = {"tty": {"<|code|>": "\n\033[36m", "<|execution|>": "\033[33m"},
            "plain": {"<|code|>": "\n```python\n", "<|execution|>": "```output\n"}}

    def __init__(self, out=sys.stdout):
        self.out, self.mode, self.kind = out, "tty" if out.isatty() else "plain", None

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
    def text(rec, role):  # the text of the record's `role` messages, or None
        texts = [b["content"] for m in rec.get("messages") or [] if m["role"] == role
                 for b in m["content"]]
        return "".join(texts) if texts else None
    recs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)  # AttributeError / KeyError / TypeError below: no question
                q = rec.get("question") or text(rec, "user")
                system = rec["system"] if "system" in rec else text(rec, "system")
                if not isinstance(q, str) or not q or not isinstance(system, (str, type(None))):
                    raise TypeError
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON: {e.msg}") from None
            except (AttributeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: no 'question' field and no user message "
                                 "(messages[].content[].content) with text") from None
            recs.append({**rec, "question": q, "system": system})
    return recs


def main():
    ap = argparse.ArgumentParser(description="MathCoder inference: generate text and code, run the "
                                 "code, feed its output back, continue (batched, continuous "
                                 "batching).")
    ap.add_argument("questions", nargs="*", help="question(s) to solve; one question is streamed")
    ap.add_argument("--model", required=True,
                    help="checkpoint dir (weights + tokenizer.model [+ added_tokens.json])")
    ap.add_argument("--file", help="JSONL of questions (eval-set schema or {\"question\": ...})")
    ap.add_argument("--out", help="results JSONL for --file (default: FILE.results.jsonl); "
                    "resumes if present")
    ap.add_argument("--limit", type=int, help="only the first N questions of --file")
    ap.add_argument("--system", help="system text (default: a --file record's own, else the "
                    f"paper's: {DEFAULT_SYSTEM!r})")
    ap.add_argument("--batch-size", type=int, default=GenConfig.batch_size)
    ap.add_argument("--max-new-tokens", type=int, default=GenConfig.max_new_tokens)
    ap.add_argument("--max-total-tokens", type=int, default=GenConfig.max_total_tokens)
    ap.add_argument("--max-prompt-tokens", type=int,
                    help="the window: default max-total-tokens - max-new-tokens, at most 1536")
    ap.add_argument("--context", choices=["window", "stop"], default=GenConfig.context,
                    help="window: the authors' sliding window (default); stop: stop at "
                    "max-total-tokens")
    ap.add_argument("--max-rounds", type=int, default=GenConfig.max_rounds)
    ap.add_argument("--temperature", type=float, default=GenConfig.temperature)
    ap.add_argument("--top-p", type=float, default=GenConfig.top_p)
    ap.add_argument("--seed", type=int, default=GenConfig.seed)
    ap.add_argument("--no-execute", action="store_true",
                    help="do not run code: the model writes its own output")
    ap.add_argument("--timeout", type=float, help="seconds per code block (default: sandbox.py's)")
    ap.add_argument("--device", help="default: cuda (this rank's GPU) when available, else cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                    help="default: as stored")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per model replica "
                    "(torchrun --nproc_per_node=W: W / tp replicas share out --file)")
    a = ap.parse_args()
    if bool(a.questions) == bool(a.file):
        ap.error("give either question(s) or --file")
    # here, not at the top: eval.py imports SymPy (slow), only --file needs it
    from eval import atomic_write, done_keys, merge_parts, part_path
    tok = Tokenizer.from_checkpoint(a.model)
    ranks = init_ranks(a.tp)
    if a.questions and ranks.n_replicas > 1:
        ap.error("several model replicas (--nproc_per_node > --tp) need --file")
    net = Transformer.from_pretrained(a.model, a.device or ranks.device,
                                      a.dtype and getattr(torch, a.dtype), ranks.tp_group)
    if net.args.vocab_size < tok.vocab_size:
        sys.exit(f"{a.model}: model vocab {net.args.vocab_size} < tokenizer vocab {tok.vocab_size}")
    if not ranks.leader:   # another shard of a tensor-parallel replica: make the leader's calls
        return follow(net, ranks.tp_group)
    net = ranks.lockstep(net)   # released (the followers return) in the last `finally` below
    prompt_max = a.max_prompt_tokens or max(2, min(GenConfig.max_prompt_tokens,
                                                   a.max_total_tokens - a.max_new_tokens))
    cfg = GenConfig(max_new_tokens=a.max_new_tokens, max_total_tokens=a.max_total_tokens,
                    max_prompt_tokens=prompt_max, context=a.context, max_rounds=a.max_rounds,
                    temperature=a.temperature, top_p=a.top_p, batch_size=a.batch_size,
                    execute=not a.no_execute, seed=a.seed)
    pool = None
    if cfg.execute:
        import sandbox
        pool = sandbox.SandboxPool(max(1, cfg.batch_size),
                                   **({"timeout": a.timeout} if a.timeout else {}))
    try:
        system = DEFAULT_SYSTEM if a.system is None else a.system
        if a.questions:
            show = Renderer()
            if len(a.questions) == 1:  # streamed as it is decoded
                solve(net, tok, a.questions, system, cfg, pool,
                      on_stream=lambda i, text: show(text))
            else:                      # several: each shown whole as it finishes
                def show_result(i, r):
                    print(f"\n=== question {i + 1}: {r['question']}")
                    show(r["solution"])
                solve(net, tok, a.questions, system, cfg, pool, show_result)
            print()
            return
        recs = read_questions(a.file)[:a.limit]
        out_path = a.out or re.sub(r"(\.jsonl)?$", ".results.jsonl", a.file, count=1)
        done = done_keys(out_path, key="index")   # resume (replicas' parts too): torn lines cut off
        todo = [i for i in range(len(recs)) if i not in done][ranks.replica::ranks.n_replicas]
        ranks.wait_for_all()   # every replica has read the files before any writes to them
        print(f"{a.file}: {len(recs)} questions, {len(done)} already in {out_path}, "
              f"solving {len(todo)}", file=sys.stderr)
        mine = out_path if ranks.n_replicas == 1 else part_path(out_path, ranks.replica)
        fd = os.open(mine, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        t0, stats = time.time(), Counter()

        def on_result(j, r):  # one os.write per line on an O_APPEND file: a line is whole or absent
            rec = {**recs[todo[j]], **r, "index": todo[j]}
            os.write(fd, (json.dumps(rec, ensure_ascii=False) + "\n").encode())
            stats.update(n=1, tokens=r["n_tokens"], rounds=r["n_rounds"], exec=r["n_exec"])
            dt, n = time.time() - t0, stats["n"]
            print(f"\r{n}/{len(todo)} problems  {n / dt:.2f}/s  {stats['tokens'] / dt:.0f} tok/s  "
                  f"ETA {(len(todo) - n) * dt / n:.0f}s   ", end="", file=sys.stderr, flush=True)
        try:
            # --system, else each record's own (the paper's prompt)
            own = a.system is None
            systems = [recs[i]["system"] if own and recs[i]["system"] is not None else system
                       for i in todo]
            solve(net, tok, [recs[i]["question"] for i in todo], systems, cfg, pool, on_result)
        finally:
            os.close(fd)
        dt = time.time() - t0
        replicas = ranks.wait_for_all((stats, dt))   # every replica is done; replica 0 writes it up
        if ranks.replica != 0:
            return
        stats, dt = sum((s for s, _ in replicas), Counter()), max(t for _, t in replicas)
        merge_parts(out_path, "index", range(len(recs)))
        summary = {"file": a.file, "out": out_path, "solved": stats["n"], "seconds": round(dt, 1),
                   "problems_per_s": stats["n"] / max(dt, 1e-9),
                   "tokens_per_s": stats["tokens"] / max(dt, 1e-9),
                   "mean_rounds": stats["rounds"] / max(stats["n"], 1), "executions": stats["exec"]}
        atomic_write(out_path + ".summary.json", json.dumps(summary, indent=2) + "\n")
        print("\n" + json.dumps(summary), file=sys.stderr)
    finally:
        if pool is not None:
            pool.close()
        net.release()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad input: one line naming the file, no traceback
        sys.exit(f"error: {e}")
