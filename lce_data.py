"""
MathCoder's data: LCE conversations -> training tensors. How MathCodeInstruct itself is built
(paper §2: seed data, problem interpolation, self-distillation) is recipe.py.

An LCE solution (docs/method.md §1) interleaves natural-language Text, Python Code and the
Execution output:

    <|system|><|text|>{system}<|endofblock|><|endofmessage|><|user|><|text|>{question}<|endofblock|>
    <|endofmessage|><|assistant|><|text|>...<|endofblock|><|code|>...<|endofblock|><|execution|>...
    <|endofblock|><|text|>... \\boxed{42}<|endofblock|><|endofmessage|>

The loss (docs/method.md §3) is on what the model must learn to WRITE: the assistant's text and
code blocks (their opening token and <|endofblock|> included) and the final <|endofmessage|>. The
system and user messages and every execution block (written by the interpreter at inference time)
get label -100 (IGNORE).

Records come in the messages schema (MathCodeInstruct) or the authors' output format
(`debug_result`); debug_result_messages is the one reader of the latter (eval.py and
plumbing/replay.py use it too).

    python lce_data.py stats data.jsonl --tokenizer tok.model    # records, tokens, loss, lengths
    python lce_data.py show data.jsonl --index 3 --html conv.html  # the loss mask, token by token
"""
import argparse, bisect, json, os, re, sys
from collections import Counter

from plumbing import html_views
from plumbing import storage
from tokenizer import Tokenizer

# The system text of the paper's numbers: every released solution and every test record in
# data/eval/ carries it (docs/method.md §4). The authors' script defaulted to "" (or, with --syspt,
# this text plus ' and put your answer in "\\boxed{}".'), but their released outputs were not made
# with those defaults.
DEFAULT_SYSTEM = "Below is a math problem. Please solve it step by step."
ROLES = ("system", "user", "assistant")
BLOCKS = ("text", "code", "execution")
IGNORE = -100          # label of tokens that carry no loss (cross_entropy's default ignore_index)


class DataError(ValueError):       # "file, line N, field F: problem"
    pass


# --------------------------------------------------------------------------------------------------
# Reading and validating records
def read_jsonl_records(path, skip_bad=False, stats=None) -> list[dict]:
    """Records in the messages schema (MathCodeInstruct) or the authors' output format
    (`debug_result`), validated and normalised to the messages schema. A bad record raises DataError
    naming file, line and field; with skip_bad it is counted, reported on stderr and in `stats`, and
    left out."""
    stats = {} if stats is None else stats
    stats.update(records=0, bad=0, errors=[])
    out = []
    n_lines = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n_lines += 1
            try:
                try:
                    rec = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}, line {lineno}, field <record>: not UTF-8 (byte "
                                    f"0x{line[e.start]:02x} at column {e.start + 1})") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {lineno}, field <record>: "
                                    f"invalid JSON ({e.msg})") from None
                out.append(normalize_record(rec, f"{path}, line {lineno}"))
            except DataError as e:
                if not skip_bad:
                    raise
                stats["bad"] += 1
                stats["errors"].append(str(e))
                print(f"skipping bad record: {e}", file=sys.stderr)
    if n_lines == 0:
        raise DataError(f"{path}, line 0, field <file>: empty file (no records)")
    stats["records"] = len(out)
    if stats["bad"]:
        print(f"{path}: skipped {stats['bad']} bad of {n_lines} records", file=sys.stderr)
    return out


def normalize_record(rec, where="<record>") -> dict:
    """Validate one record and return it in the messages schema (id and ground_truth kept)."""
    def need(ok, field, problem):
        if not ok:
            raise DataError(f"{where}, field {field}: {problem}")
    need(isinstance(rec, dict), "<record>", "expected a JSON object")
    need("messages" in rec or "debug_result" in rec, "messages",
         "missing (no 'messages' or 'debug_result')")
    msgs = debug_result_messages(rec, where) if "debug_result" in rec else rec["messages"]
    need(isinstance(msgs, list) and msgs, "messages", "expected a non-empty list")
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        need(isinstance(m, dict), f, "expected an object with 'role' and 'content'")
        for key in ("role", "content"):
            need(key in m, f"{f}.{key}", "missing")
        need(m["role"] in ROLES, f"{f}.role",
             f"unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        need(isinstance(m["content"], list) and m["content"], f"{f}.content",
             "expected a non-empty list of blocks")
        for j, b in enumerate(m["content"]):
            g = f"{f}.content[{j}]"
            need(isinstance(b, dict), g, "expected an object with 'type' and 'content'")
            for key in ("type", "content"):
                need(key in b, f"{g}.{key}", "missing")
            need(b["type"] in BLOCKS, f"{g}.type",
                 f"unknown block type {b['type']!r} (expected one of {', '.join(BLOCKS)})")
            need(isinstance(b["content"], str), f"{g}.content",
                 f"expected a string, got {type(b['content']).__name__}")
            need(b["type"] == "text" or m["role"] == "assistant", f"{g}.type",
                 f"a {m['role']} message may only hold text blocks, not {b['type']!r}")
        need(m["role"] != "assistant" or m["content"][-1]["type"] != "execution",
             f"{f}.content[{len(m['content']) - 1}]", "assistant turn ends on an execution block")
    need(any(m["role"] == "user" for m in msgs), "messages", "no user message")
    out = {"messages": [{"role": m["role"], "content": [{"type": b["type"], "content": b["content"]}
                                                      for b in m["content"]]} for m in msgs]}
    out.update({k: rec[k] for k in ("id", "ground_truth") if k in rec})
    return out


def debug_result_messages(rec, where="<record>") -> list[dict]:
    """The authors' output format -> messages (not yet checked as a conversation: normalize_record
    does that). `debug_result` is a flat list: {"role": "system"|"user", "content": str}, then one
    item per block. Their public script (src/inference.py) keys the blocks {"type": "text"|"code"|
    "execution", "content"} and sets `completion` to the last block's content; their released runs
    key them "role" too and append the extracted answer as one more text item equal to
    `completion`: that is not something the model wrote, so it is dropped. The one reader of this
    format: eval.py grades it and plumbing/replay.py runs its code through it. A bad item raises
    DataError naming `where` and the field."""
    def need(ok, field, problem):
        if not ok:
            raise DataError(f"{where}, field {field}: {problem}")
    need(isinstance(rec, dict) and "debug_result" in rec, "debug_result", "missing")
    items = rec["debug_result"]
    need(isinstance(items, list), "debug_result", "expected a list")
    msgs = []
    for i, it in enumerate(items):
        need(isinstance(it, dict) and ("role" in it or "type" in it) and "content" in it,
             f"debug_result[{i}]", "expected an object with 'role' (or 'type') and 'content'")
        key = "type" if "type" in it else "role"
        kind, content = it[key], it["content"]
        need(kind in ("system", "user") + BLOCKS, f"debug_result[{i}].{key}",
             f"unknown role {kind!r}")
        need(isinstance(content, str), f"debug_result[{i}].content",
             f"expected a string, got {type(content).__name__}")
        if (i == len(items) - 1 and key == "role" and kind == "text"
                and content == rec.get("completion") and msgs and msgs[-1]["role"] == "assistant"):
            break                                  # the released runs' appended answer
        if kind in ("system", "user"):
            msgs.append({"role": kind, "content": [{"type": "text", "content": content}]})
        else:
            if not msgs or msgs[-1]["role"] != "assistant":
                msgs.append({"role": "assistant", "content": []})
            msgs[-1]["content"].append({"type": kind, "content": content})
    return msgs


def message_text(record, role):
    """The text of a messages-schema record's `role` messages (the question: "user"), or None."""
    texts = [block["content"] for message in record.get("messages") or []
             if message["role"] == role for block in message["content"]]
    return "".join(texts) if texts else None


# --------------------------------------------------------------------------------------------------
# Strings and tokens
def serialize(record) -> str:
    """The whole conversation as one LCE string, nothing between the pieces (docs/method.md §1)."""
    return "".join(f"<|{m['role']}|>" + "".join(f"<|{b['type']}|>{b['content']}<|endofblock|>"
                                                for b in m["content"]) + "<|endofmessage|>"
                   for m in record["messages"])


def prompt_text(question: str, system: str = DEFAULT_SYSTEM) -> str:
    """What the model sees before it writes its solution: up to and including <|assistant|>."""
    return serialize(make_record(question, system=system)) + "<|assistant|>"


def make_record(question, blocks=None, system=DEFAULT_SYSTEM, answer=None, id=None) -> dict:
    """A messages-schema record; blocks = [(type, content), ...]: the assistant's turn (None:
    none)."""
    rec = {"messages": [{"role": "system", "content": [{"type": "text", "content": system}]},
                        {"role": "user", "content": [{"type": "text", "content": question}]}]}
    if blocks:
        rec["messages"].append({"role": "assistant",
                                "content": [{"type": t, "content": c} for t, c in blocks]})
    if id is not None:
        rec["id"] = id
    if answer is not None:
        rec["ground_truth"] = {"answer": answer}
    return rec


def encode_example(record, tokenizer, max_len, train_on_execution=False, overflow="truncate",
                   stats=None):
    """(input_ids, labels), BOS first. labels[i] = input_ids[i] where token i carries loss, else
    -100. Labels are NOT shifted: the loss predicts input_ids[i] from logits[i-1]. Tokenising block
    by block gives exactly tokenizer.encode(serialize(record), bos=True), because the tokenizer
    itself splits on the special strings. overflow="truncate" cuts at max_len, "drop" returns None;
    both are counted in stats."""
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    sp = tokenizer.special
    ids, labels = [tokenizer.bos_id], [IGNORE]

    def add(toks, learn):
        ids.extend(toks)
        labels.extend(toks if learn else [IGNORE] * len(toks))
    for m in record["messages"]:
        mine = m["role"] == "assistant"       # only the assistant's own writing is learned
        add([sp[f"<|{m['role']}|>"]], False)  # <|assistant|> is part of the prompt at inference
        for b in m["content"]:
            learn = mine and (b["type"] != "execution" or train_on_execution)
            block = [sp[f"<|{b['type']}|>"]] + tokenizer.encode(b["content"])
            add(block + [sp["<|endofblock|>"]], learn)
        add([sp["<|endofmessage|>"]], mine)        # learning to stop
    if stats is not None:
        stats["examples"] = stats.get("examples", 0) + 1
    if len(ids) > max_len:
        if stats is not None:
            stats[overflow] = stats.get(overflow, 0) + 1
        if overflow == "drop":
            return None
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def encode_records(records, tokenizer, max_len, train_on_execution=False, overflow="truncate",
                   keep_no_loss=False):
    """encode_example over a dataset -> (examples, stats). Examples with no loss token (no assistant
    turn, or the answer truncated away) are counted as 'no_loss' and, unless keep_no_loss, left
    out."""
    stats = {"examples": 0, "truncate": 0, "drop": 0, "no_loss": 0, "tokens": 0, "loss_tokens": 0}
    out = []
    for r in records:
        ex = encode_example(r, tokenizer, max_len, train_on_execution, overflow, stats)
        if ex is None:
            continue
        n_loss = sum(lab != IGNORE for lab in ex[1])
        stats["no_loss"] += n_loss == 0
        if n_loss or keep_no_loss:
            stats["tokens"] += len(ex[0])
            stats["loss_tokens"] += n_loss
            out.append(ex)
    stats["kept"] = len(out)
    return out, stats


# --------------------------------------------------------------------------------------------------
# Batching: pad, or pack
def pad_batch(examples, pad_id) -> dict:
    """Right-pad (input_ids, labels) pairs to the longest; pads carry label -100. With causal
    attention a real token never looks at the pads after it, so no attention mask is needed."""
    import torch   # here, not at the top: reading records (eval.py, replay) needs no torch
    T = max(len(ids) for ids, _ in examples)
    pad = lambda xs, value: list(xs) + [value] * (T - len(xs))
    return {"input_ids": torch.tensor([pad(ids, pad_id) for ids, _ in examples]),
            "labels": torch.tensor([pad(labels, IGNORE) for _, labels in examples]),
            "positions": torch.arange(T).repeat(len(examples), 1), "doc_ids": None}


def pack_examples(examples, seq_len, pad_id) -> list[dict]:
    """Pack examples into rows of exactly seq_len tokens (best-fit decreasing bin packing), so no
    compute goes to padding. Each row: input_ids, labels, positions (restarting at 0 for each
    example, as if it were alone) and doc_ids (0, 1, ... per example; -1 on the padding at the end).
    The model's document-masked attention lets token i see token j only if doc_ids match: examples
    never mix."""
    import torch
    order = sorted(range(len(examples)), key=lambda k: -len(examples[k][0]))
    bins = []
    free = []                               # sorted (room left, bin index)
    for k in order:
        n = len(examples[k][0])
        if n > seq_len:
            raise ValueError(f"example {k} has {n} tokens > seq_len {seq_len}: "
                             "truncate or drop it first")
        at = bisect.bisect_left(free, (n, -1))          # the fullest bin that still has room for it
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = seq_len, len(bins)
            bins.append([])
        bins[b].append(k)
        bisect.insort(free, (room - n, b))
    rows = []
    for members in bins:
        ids, labels, positions, doc_ids = [], [], [], []
        for d, k in enumerate(sorted(members)):        # keep the original order inside a row
            ids += examples[k][0]
            labels += examples[k][1]
            positions += range(len(examples[k][0]))
            doc_ids += [d] * len(examples[k][0])
        pad = seq_len - len(ids)             # the padding: a dummy document of its own (doc -1)
        rows.append({"input_ids": torch.tensor(ids + [pad_id] * pad),
                     "labels": torch.tensor(labels + [IGNORE] * pad),
                     "positions": torch.tensor(positions + list(range(pad))),
                     "doc_ids": torch.tensor(doc_ids + [-1] * pad)})
    return rows


def token_utilisation(examples, batches) -> float:
    """Share of the batches' token slots holding real tokens (1.0 = no compute spent on padding)."""
    slots = sum(b["input_ids"].numel() for b in batches)
    return sum(len(ids) for ids, _ in examples) / max(slots, 1)


def parse_assistant(solution: str) -> list[tuple[str, str]]:
    """'<|text|>a<|endofblock|><|code|>b<|endofblock|>...' -> [("text", "a"), ("code", "b"),
    ...]."""
    return re.findall(r"<\|(text|code|execution)\|>(.*?)<\|endofblock\|>", solution, flags=re.S)


# --------------------------------------------------------------------------------------------------
def blocks_of(tokenizer, ids) -> list[tuple[str, str]]:
    """A solution's ids -> [(type, content), ...], split at the special ids the model read (text
    that only looks like a special token, as code may print, stays text). Lenient, as generated
    text can be: a block cut off keeps what it has; text outside any block is a text block."""
    opens = {tokenizer.special[f"<|{kind}|>"]: kind for kind in ("text", "code", "execution")}
    blocks, inside, run = [], False, []
    for i in list(ids) + [None]:
        if i is not None and i not in tokenizer.id_to_special:
            run.append(i)
            continue
        text = tokenizer.decode(run) if run else ""
        run = []
        if text and not inside:
            blocks.append(["text", ""])
        if text:
            blocks[-1][1] += text
            inside = True
        if i is not None:  # a block opens, or <|endofblock|>, <|endofmessage|>, a role closes it
            inside = i in opens
            if inside:
                blocks.append([opens[i], ""])
    return [tuple(b) for b in blocks]


def dataset_stats(records, tokenizer, max_len=2048, seq_len=2048, train_on_execution=False) -> dict:
    examples, st = encode_records(records, tokenizer, max_len, train_on_execution,
                                  keep_no_loss=True)
    lengths = [len(ids) for ids, _ in examples]
    edges = [64 * 2 ** k for k in range(12)]
    hist = Counter(next(e for e in edges + [float("inf")] if n <= e) for n in lengths)
    st.update(records=len(records), loss_share=st["loss_tokens"] / max(st["tokens"], 1),
              mean_len=sum(lengths) / max(len(lengths), 1), max_len_seen=max(lengths, default=0),
              length_histogram={f"<={e}": hist[e] for e in sorted(hist)})
    if examples:
        cut = [(ids[:seq_len], labels[:seq_len]) for ids, labels in examples]
        packed = pack_examples(cut, seq_len, tokenizer.pad_id)
        st.update(packed_rows=len(packed), packed_utilisation=token_utilisation(examples, packed))
    return st


def main():
    ap = argparse.ArgumentParser(description="MathCoder LCE data: statistics and the loss mask.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="records, tokens, share of tokens with loss, length histogram")
    s.add_argument("file")
    here = os.path.dirname(os.path.abspath(__file__))
    s.add_argument("--tokenizer",
                   default=os.path.join(here, "tests/fixtures/tokenizer/llama2-tokenizer.model"),
                   help="SentencePiece .model (default: the Llama-2 one in tests/fixtures)")
    s.add_argument("--ckpt", help="checkpoint dir (tokenizer.model + added_tokens.json); "
                   "overrides --tokenizer")
    s.add_argument("--max-len", type=int, default=2048, help="longer examples are truncated")
    s.add_argument("--seq-len", type=int, default=2048, help="row length for the packing estimate")
    s.add_argument("--train-on-execution", action="store_true",
                   help="ablation: loss on execution blocks")
    s.add_argument("--skip-bad", action="store_true", help="skip (and count) invalid records")
    v = sub.add_parser("show", help="the loss mask made visible: one record token by token (HTML)")
    v.add_argument("file")
    v.add_argument("--tokenizer", default=s.get_default("tokenizer"), help="as for stats")
    v.add_argument("--ckpt", help="as for stats")
    v.add_argument("--index", type=int, default=0, help="record number in FILE, from 0")
    v.add_argument("--html", required=True, help="the page to write")
    v.add_argument("--max-len", type=int, default=2048, help="truncate the record to this")
    v.add_argument("--train-on-execution", action="store_true", help="ablation: execution loss")
    args = ap.parse_args()
    tok = Tokenizer.from_checkpoint(args.ckpt) if args.ckpt else Tokenizer(args.tokenizer)
    if args.cmd == "show":
        records = read_jsonl_records(args.file)
        if not 0 <= args.index < len(records):
            raise DataError(f"{args.file}: --index {args.index}: not in 0..{len(records) - 1}")
        st = {}
        ids, labels = encode_example(records[args.index], tok, args.max_len,
                                     args.train_on_execution, stats=st)
        pieces = [tok.id_to_special.get(i) or tok.sentencepiece.id_to_piece(i) for i in ids]
        title = f"{args.file}, record {args.index}" + (f", cut to {args.max_len} tokens"
                                                        if st.get("truncate") else "")
        page = html_views.tokens_page(title, ids, labels, pieces, tok.special, IGNORE)
        storage.atomic_write(args.html, page)
        print(args.html)
    elif args.cmd == "stats":
        read = {}
        records = read_jsonl_records(args.file, skip_bad=args.skip_bad, stats=read)
        st = dataset_stats(records, tok, args.max_len, args.seq_len, args.train_on_execution)
        st["bad_records"] = read["bad"]
        for k, v in st.items():
            print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")
        top = max(st["length_histogram"].values(), default=1)
        for k, v in st["length_histogram"].items():
            print(f"{k:>20}  {'#' * round(40 * v / top)} {v}")
        print(json.dumps(st))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad input: one line naming the file, no traceback
        sys.exit(f"error: {e}")
