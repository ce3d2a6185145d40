"""infer.py --file: questions read from a JSONL file and solved into a results file, one line per
problem as it finishes; a run started again resumes where it stopped, and data-parallel replicas
(torchrun) share out the questions. OUT.run.json records what makes the run that run
(storage.check_run): another run's results in OUT are refused.
"""
import json
import os
import re
import sys
import time
from collections import Counter

import lce_data
from lce_data import DEFAULT_SYSTEM
from plumbing import storage


def add_file_args(parser):
    """--file and its settings (infer.py)."""
    parser.add_argument("--file",
                        help="JSONL of questions (eval-set schema or {\"question\": ...})")
    parser.add_argument("--out", help="results JSONL for --file (default: FILE.results.jsonl); "
                        "resumes if present")
    parser.add_argument("--limit", type=int, help="only the first N questions of --file")
    parser.add_argument("--force-new", action="store_true", help="delete the results in --out "
                        "and start over (a resumed --file run must be the same run: OUT.run.json)")


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


def results_path(args) -> str:
    """--out, else the question file's name with .results.jsonl (q.jsonl -> q.results.jsonl)."""
    return args.out or re.sub(r"(\.jsonl)?$", ".results.jsonl", args.file, count=1)


def check_file_run(args, cfg, ranks):
    """--file resumes only the same run: OUT.run.json records the model, the question file's
    content, the system text and how to generate (--limit and --batch-size may change); another
    run's results in OUT are refused, naming what differs (--force-new deletes them)."""
    out_path = results_path(args)
    if args.limit is not None and args.limit < 0:   # records[:-1] would drop the last question
        raise ValueError(f"--limit must be >= 0, not {args.limit}")
    if os.path.realpath(out_path) == os.path.realpath(args.file):   # --force-new would delete it
        raise ValueError(f"--out {out_path} is the question file (--file {args.file})")
    identity = {**({"served_model": args.served_model,  # not the URL: a server may move
                    "tokenizer_files": storage.checkpoint_fingerprint(args.tokenizer)}
                   if args.server else {"model": os.path.abspath(args.model),
                                        "model_files": storage.checkpoint_fingerprint(args.model)}),
                "question_file": os.path.abspath(args.file),
                "questions": storage.file_digest(args.file), "system": args.system,
                "generation": {k: v for k, v in vars(cfg).items() if k != "batch_size"},
                "dtype": args.dtype, "timeout": args.timeout}
    storage.check_run(out_path + ".run.json", identity, [out_path, out_path + ".summary.json"],
                      args.force_new, write=ranks.replica == 0)
    ranks.wait_for_all()  # replica 0 has deleted old results (--force-new) before any reads them


def solve_file(solver, model, tokenizer, args, cfg, pool, ranks):
    """--file: solve every question not yet in the results file (resumable), appending one line
    per problem; data-parallel replicas each take every n-th problem into a part file of their
    own, and replica 0 merges them and writes the summary. solver: infer.solve's signature."""
    records = read_questions(args.file)[:args.limit]
    out_path = results_path(args)
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
        solver(model, tokenizer, [records[i]["question"] for i in todo], systems, cfg=cfg,
               pool=pool, on_result=on_result, indices=todo)   # sampling: (seed, place in file)
    seconds = time.time() - start
    replicas = ranks.finish((stats, seconds))  # followers released; replica 0 sums up
    if ranks.replica != 0:
        return
    stats = sum((replica_stats for replica_stats, _ in replicas), Counter())
    seconds = max(replica_seconds for _, replica_seconds in replicas)
    storage.merge_parts(out_path, "index", range(len(records)))
    # the counts are of every result of these questions (a resumed run's too); the rates, this
    # session's work
    results = [r for r in storage.read_jsonl(out_path) if r["index"] < len(records)]
    summary = {"file": args.file, "out": out_path, "solved": len(results),
               "solved_now": stats["n"], "seconds": round(seconds, 1),
               "problems_per_s": stats["n"] / max(seconds, 1e-9),
               "tokens_per_s": stats["tokens"] / max(seconds, 1e-9),
               "mean_rounds": sum(r["n_rounds"] for r in results) / max(len(results), 1),
               "executions": sum(r["n_exec"] for r in results)}
    storage.write_json(out_path + ".summary.json", summary)
    print("\n" + json.dumps(summary), file=sys.stderr)
