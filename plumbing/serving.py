"""The model behind an OpenAI-compatible server (vLLM, TGI, llama.cpp): `infer.py --server` and
`eval.py run --server` (docs/serving.md).

The loop is the same: each problem's infer.solution_steps generator (the authors' loop) is driven
here as `infer.solve` drives it on a local model, only every Generate becomes one /v1/completions
request (the window, cut on the checkpoint's token ids, and its max_new) and the reply's text is
turned back into ids (`continuation_ids`); every Execute runs in the problem's own sandbox. So the
rounding, re-tokenising and execution are infer.py's own. This module sits below infer.py (whose
command line uses it): it is handed the loop (the generators, infer.run_code) rather than
importing it.
"""
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import sandbox
from plumbing.question_files import read_questions
from plumbing.server_client import ServerError, add_server_args

STOP_STRINGS = ["<|endofblock|>", "<|endofmessage|>"]


def served_round(server, tokenizer, window, max_tokens, cfg, index, prompt_as="ids",
                 served_model=None, what="problem"):
    """One Generate on a /v1/completions endpoint (server_client.Server): the window (BOS first)
    continued until a stop token or max_tokens. prompt_as "ids": the window's token ids as the
    prompt (vLLM and llama.cpp accept a list of ints; nothing is re-tokenised); "text": the window
    decoded, without BOS, which the server adds (TGI; its tokenizer reads the text again, as the
    authors' server did). Returns (text, eos, n_tokens): the new text, stop string included;
    whether the model ended on EOS (which the text does not show); the tokens it generated as the
    server counts them (usage.completion_tokens; None if not reported)."""
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
    if not text and not eos:
        raise ServerError(f"{what}: the server returned no text (finish_reason {finish!r})")
    return text, eos, n_tokens if isinstance(n_tokens, int) else None


def continuation_ids(tokenizer, window, text, eos=False) -> list:
    """Ids that continue `window` by `text`, the server's reply, so that the window's text since
    its last special token, decoded with these ids after it, reads that text followed by `text`.
    A block cut by max_new_tokens goes on mid-word: SentencePiece's dummy-prefix space must not
    come in between, so the text is encoded after a newline (its own byte piece, which never
    merges) and the newline's pieces are dropped. solution_steps then rounds and re-tokenises the
    block, as it does with a local model's own ids. eos: the model ended on EOS (not in text)."""
    specials = set(tokenizer.special.values()) | {tokenizer.bos_id}
    cut_block = bool(window) and window[-1] not in specials
    if cut_block:
        anchor = len(tokenizer.encode("\n"))
        ids = tokenizer.encode("\n" + text)[anchor:]
    else:
        ids = tokenizer.encode(text)
    return ids + [tokenizer.eos_id] * eos


def serve_one(server, tokenizer, steps, cfg, pool, run_code, index=0, prompt_as="ids",
              served_model=None, what="problem") -> dict:
    """Drive one problem's `steps` (its infer.solution_steps generator) with a server: each
    Generate (a request with a window) is one /v1/completions request, each Execute (a request
    with code) runs through run_code (infer.run_code) in a sandbox from `pool`, taken at the
    problem's first code block. Returns the loop's result; n_tokens is the server's count where
    every reply gave one (a token that decodes to no text, such as EOS, is invisible in the
    reply's text)."""
    session = None
    answer = None
    counted = []   # the server's count of each round's tokens
    try:
        while True:
            try:
                request = steps.send(answer)
            except StopIteration as done:
                outcome = done.value
                if counted and None not in counted:
                    outcome["n_tokens"] = sum(counted)
                return outcome
            if hasattr(request, "code"):   # Execute
                if session is None:
                    session = pool.acquire()
                answer = run_code(session, request.code)
                continue
            text, eos, n_tokens = served_round(server, tokenizer, request.window,
                                               request.max_new, cfg, index, prompt_as,
                                               served_model, what)
            counted.append(n_tokens)
            answer = continuation_ids(tokenizer, request.window, text, eos)
    finally:
        if session is not None:
            pool.release(session)


def solve_served(server, tokenizer, steps, cfg, run_code, pool=None, on_result=None,
                 concurrency=16, prompt_as="ids", served_model=None, names=None, indices=None):
    """infer.solve's contract with the model behind a server: serve_one for every problem's
    generator in `steps`, `concurrency` of them in flight. Returns one result per problem, in
    order; on_result(index, result) as each finishes. A problem the server failed on (after
    server_client's retries) gets None and one line on stderr; a fatal failure (no server, a bad
    key) stops the run, raised. names[i]: how error lines name problem i (default "problem i")."""
    results = [None] * len(steps)
    lock = threading.Lock()
    stop = threading.Event()
    own_pool = pool is None and cfg.execute and bool(steps)
    if own_pool:
        pool = sandbox.SandboxPool(max(1, min(concurrency, len(steps))))

    def one(i):
        if stop.is_set():
            return
        what = names[i] if names else f"problem {i}"
        try:
            results[i] = serve_one(server, tokenizer, steps[i], cfg, pool, run_code,
                                   i if indices is None else indices[i],   # the sampling seed's
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
            futures = [executor.submit(one, i) for i in range(len(steps))]
            for future in futures:
                if future.exception():
                    executor.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()
    finally:
        if own_pool:
            pool.close()
    return results


# ------------------------------------------------------------------- infer.py and eval.py run
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


def served_solver(args, solution_steps, run_code, name_of=None):
    """A solver with infer.solve's signature over args.server (a server_client.Server in place of
    the model): solve_served on the loops solution_steps makes. name_of: question -> how error
    lines name it (default: its index in args.file, else its place in the call)."""
    if name_of is None and args.file:
        name_of = {}
        for i, record in enumerate(read_questions(args.file)[:args.limit]):
            name_of.setdefault(record["question"], i)

    def solver(server, tokenizer, questions, system, cfg, pool, on_result=None, on_stream=None,
               indices=None):
        if on_stream:   # no streaming from the server: a problem is shown whole when done
            on_result = lambda i, outcome: on_stream(i, outcome["solution"])
        systems = [system] * len(questions) if isinstance(system, str) else list(system)
        steps = [solution_steps(tokenizer, q, s, cfg) for q, s in zip(questions, systems)]
        names = [f"problem {(name_of or {}).get(q, i)}" for i, q in enumerate(questions)]
        return solve_served(server, tokenizer, steps, cfg, run_code, pool, on_result,
                            args.concurrency, args.prompt_as, args.served_model, names, indices)
    return solver
