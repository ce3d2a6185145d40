"""
Run and re-score the paper's five benchmarks. How one answer is graded (the two verdicts, each data
set's protocol) is grader.py; this file runs it: the test sets in data/eval/ (docs/method.md §5),
the paper's table (§6), re-grading result files, the resumable run loop with data-parallel
replicas, and an HTML page per run. The files around grading (the authors' result format,
summary.md, the page's rows) are plumbing/result_files.py; a served model, plumbing/serving.py.

    python eval.py score out/run/results.jsonl       # re-grade a results file, ours or the authors'
    python eval.py run --model CKPT --dataset GSM8K --out out/gsm8k --limit 50
    python eval.py report out/gsm8k                  # out/gsm8k/report.html: every problem

A run resumes where it stopped when started again with the same --out; out/gsm8k/run.json records
what makes it that run (model, data set, generation config, system text), and resuming another run
there is refused, naming what differs (--force-new deletes the old results and starts over).

Each result line holds the problem, the solution and both verdicts (grader.verdicts): pred / correct
(strict, the headline), pred_authors / correct_authors (the paper's protocol), and grade_error when
grading itself failed. summary.json and summary.md give both accuracies beside the paper's numbers.
"""
import argparse
import functools
import os
import re
import sys
import time

import lce_data
from grader import verdicts
from plumbing import html_views
from plumbing.cli import from_flags
from plumbing.result_files import math_table, record_parts, report_rows, write_summary
from plumbing.server_client import ServerError
from plumbing.storage import (append_jsonl, atomic_write, check_run, checkpoint_fingerprint,
                              done_keys, file_digest, merge_parts, numbered_jsonl, part_path,
                              read_json, read_jsonl, write_jsonl)

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "eval")  # from any cwd

# ----------------------------------------------------------------------------------------- datasets

DATASETS = {"gsm8k": ["GSM8K_test_post.jsonl"], "svamp": ["SVAMP_test_post.jsonl"],
            "mathematics": ["mathematics_test_post.jsonl"], "simuleq": ["simuleq_test_post.jsonl"],
            "minival": ["minival_test_post.jsonl"],
            "math": [f"MATH_{k}_test_post.jsonl" for k in range(1, 6)],
            **{f"math_{k}": [f"MATH_{k}_test_post.jsonl"] for k in range(1, 6)}}   # MATH by level
_COLUMNS = ("gsm8k", "math", "svamp", "mathematics", "simuleq")
PAPER = {model: dict(zip(_COLUMNS, accuracy)) for model, accuracy in [   # docs/method.md §6
    ("MathCoder-L-7B", (64.2, 23.3, 71.5, 46.9, 47.5)),            # accuracy %, greedy, one sample
    ("MathCoder-CL-7B", (67.8, 30.2, 70.7, 55.8, 49.6)),
    ("MathCoder-L-13B", (72.6, 29.9, 76.9, 54.7, 62.3)),
    ("MathCoder-CL-13B", (74.1, 35.9, 78.0, 62.5, 60.7)),
    ("MathCoder-CL-34B", (81.7, 45.2, 82.5, 75.9, 65.8)),
    ("MathCoder-L-70B", (83.9, 45.1, 84.9, 74.4, 77.0))]}


@functools.lru_cache(maxsize=None)
def _math_levels(data_dir):
    """MATH id ("test/algebra/1.json") -> difficulty level 1-5."""
    return read_jsonl(os.path.join(data_dir, "MATH_subject_level.jsonl"))[0]


def load_dataset(name, data_dir=DATA_DIR, subject=None, level=None):
    """A benchmark in the official schema -> [{"id", "question", "system", "answer", "solution"} +
    MATH's "subject", "level"]. "system" is the record's own system text (the paper's prompt,
    docs/method.md §4; None when the record has none). name: one of DATASETS, any case."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    out = []
    for fname in DATASETS[key]:
        path = os.path.join(data_dir, fname)
        for i, (line, rec) in enumerate(numbered_jsonl(path)):
            truth = rec.get("ground_truth")
            if not isinstance(truth, dict) or "answer" not in truth:
                raise ValueError(f"{path}:{line}: field ground_truth.answer missing")
            item = {"id": str(rec.get("id", f"{key}/{i}")),
                    "question": lce_data.message_text(rec, "user") or "",
                    "system": lce_data.message_text(rec, "system"),
                    "answer": truth["answer"],
                    "solution": truth.get("solution", "")}
            if item["id"].startswith("test/"):       # MATH ids look like test/algebra/1.json
                item["subject"] = item["id"].split("/")[1]
                item["level"] = _math_levels(data_dir).get(item["id"])
            out.append(item)
    for field, value in (("subject", subject), ("level", level)):   # MATH only
        if value is None:
            continue
        kept = [p for p in out if str(p.get(field)) == str(value)]
        if not kept:   # a filter that selects nothing is a mistake, not an empty run
            found = sorted({str(p[field]) for p in out if p.get(field) is not None})
            raise ValueError(f"{name}: no problem has {field} {value!r} (there: "
                             f"{', '.join(found) or f'none, {field} is MATH only'})")
        out = kept
    return out

# ------------------------------------------------------------------------------------------ scoring

def _summary(dataset, recs):
    """Accuracy of graded records under both protocols."""
    n = len(recs)
    correct = sum(bool(r["correct"]) for r in recs)
    correct_authors = sum(bool(r["correct_authors"]) for r in recs)
    return {"dataset": dataset, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
            "correct_authors": correct_authors,
            "accuracy_authors": correct_authors / n if n else 0.0}


def _summary_line(s):
    return (f"strict {s['correct']}/{s['n']} = {100 * s['accuracy']:.2f}%, "
            f"paper protocol {s['correct_authors']}/{s['n']} = {100 * s['accuracy_authors']:.2f}%")


def score(path, dataset=None, out=None, data_dir=DATA_DIR):
    """Re-grade every record of a results file (or of a run folder's results.jsonl); returns the
    summary dict."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.jsonl")
    run_summary = os.path.join(os.path.dirname(path), "summary.json")
    if dataset is None and os.path.basename(path) == "results.jsonl" and os.path.isfile(
            run_summary):   # our run: its data set, as `report` reads it
        dataset = read_json(run_summary).get("dataset")
    if dataset is None:   # guess from the file name (authors: SVAMP_test_result-...jsonl)
        base = os.path.basename(path).lower()
        dataset = next((d for d in DATASETS if base.startswith(d)), None)
    graded = []
    math_rows = []
    for line, rec in numbered_jsonl(path):
        solution, reference, pid = record_parts(rec, f"{path}:{line}")
        graded.append({**rec, "reference": reference, **verdicts(solution, reference, dataset)})
        if pid and str(pid).startswith("test/"):
            level = _math_levels(data_dir).get(pid)
            math_rows.append((pid.split("/")[1], level, graded[-1]["correct"]))
    summary = _summary(dataset, graded)
    print(f"{path}: {_summary_line(summary)}")
    if math_rows:
        print("strict accuracy by subject and level:\n" + math_table(math_rows))
    if out:
        write_jsonl(out, graded)
    return summary

# ------------------------------------------------------------------------------- generation (run)

def graded_form(result):
    """What a result is graded on: the assistant's blocks as the loop recorded them from the token
    ids (a look-alike "<|text|>" that the code printed stays inside its execution block, so a box
    it printed is never the model's answer); the solution string where there are no messages."""
    msgs = result.get("messages") or []
    if msgs and msgs[-1].get("role") == "assistant" and isinstance(msgs[-1]["content"], list):
        return [(b["type"], b["content"]) for b in msgs[-1]["content"]]
    return result["solution"]


def run_loop(problems, out_dir, solve_fn, dataset, model_name="this run", info=None, replica=0,
             n_replicas=1, wait=None, finish=None):
    """Solve every problem not yet in out_dir/results.jsonl, appending one record per problem as it
    finishes (a whole line, on disk before the next), then write summary.json and summary.md.
    solve_fn(questions, on_result) -> list of dicts with "solution" and "messages"; on_result(i,
    result) may be called as each finishes. solve_fn is called once, with all the problems left:
    one continuous batch. Tests pass a fake solve_fn; `run` passes infer.solve.
    Data parallelism (n_replicas > 1, `wait` a barrier of the replicas): replica k solves every
    n-th problem left and appends to its own part file; after the last one is done, replica 0
    merges the parts into results.jsonl and writes the summary (the others return None). `finish`,
    if given, is the wait at the end instead (parallel.Ranks.finish releases this replica's
    tensor-parallel followers first, so they do not wait as long as the slowest replica).
    info: more facts about the run for summary.json (e.g. the sandbox's isolation mode)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.jsonl")
    done = done_keys(path)
    todo = [p for p in problems if p["id"] not in done][replica::n_replicas]
    if wait:
        wait()   # every replica has read the files before any writes to them
    print(f"[eval] {dataset}: {len(done)} done before, {len(todo)} to solve"
          + (f" (replica {replica} of {n_replicas})" if n_replicas > 1 else ""), file=sys.stderr)
    start = time.time()
    written = set()
    with open(path if n_replicas == 1 else part_path(path, replica), "a", encoding="utf-8") as f:

        def on_result(i, result):
            if i in written:
                return
            problem = todo[i]
            record = {"id": problem["id"], "question": problem["question"],
                      "solution": result["solution"], "messages": result.get("messages"),
                      "reference": problem["answer"],
                      **verdicts(graded_form(result), problem["answer"], dataset)}
            record.update({k: problem[k] for k in ("subject", "level") if k in problem})
            append_jsonl(f, record)
            written.add(i)
            rate = len(written) / max(time.time() - start, 1e-9)
            print(f"[eval] {len(written)}/{len(todo)}  {rate:.2f} problems/s  "
                  f"ETA {(len(todo) - len(written)) / rate / 60:.1f} min", file=sys.stderr)
        results = solve_fn([p["question"] for p in todo], on_result)
        for i, result in enumerate(results):   # solvers that do not stream (None: a problem
            if result is not None:             # the server failed on, left for the next run)
                on_result(i, result)
    if finish or wait:
        (finish or wait)()   # every replica is done
    if replica != 0:
        return None
    merge_parts(path, "id", [p["id"] for p in problems])
    ids = {p["id"] for p in problems}
    recs = [r for r in read_jsonl(path) if r["id"] in ids]
    for r in recs:   # lines written before the authors' verdict was recorded get it now
        if "correct_authors" not in r:
            r.update(verdicts(graded_form(r), r["reference"], dataset))
    summary = {**_summary(dataset, recs), **(info or {})}
    write_summary(out_dir, summary, recs, model_name, PAPER)
    print(f"[eval] {dataset}: {_summary_line(summary)}", file=sys.stderr)
    return summary


# What a run writes in its --out (and results.jsonl's part files); run.json says which run they
# are of. --limit, --subject and --level choose problems of the data set, and batch size, device
# and --tp change only the speed: a resumed run may change those.
RUN_FILES = ("results.jsonl", "summary.json", "summary.md", "report.html")


def run_identity(args, cfg):
    """What run.json records of `eval.py run`: the model (path, checkpoint files; or the served
    model's name and its tokenizer's files), the data set (name, files' content), the system
    text (None: each record's own), the generation config and --dtype (as infer.py --file)."""
    model = ({"served_model": args.served_model,   # not the URL: a server may move
              "tokenizer_files": checkpoint_fingerprint(args.tokenizer)} if args.server else
             {"model": os.path.abspath(args.model),
              "model_files": checkpoint_fingerprint(args.model)})
    return {**model, "dataset": args.dataset.lower(),
            "data_files": {name: file_digest(os.path.join(args.data_dir, name))
                           for name in DATASETS[args.dataset.lower()]},
            "system": args.system,
            "generation": {k: v for k, v in vars(cfg).items() if k != "batch_size"},
            "dtype": args.dtype}   # bfloat16 weights give other answers than float32


def run(args):
    """eval.py run: the model (--model, or --server: plumbing/serving.py) on the data set's
    problems through infer.py's loop, each graded as it finishes (run_loop)."""
    import infer                     # imported only when generating: scoring needs no model code
    from plumbing.parallel import init_ranks
    from sandbox import SandboxPool, default_isolation
    cfg = from_flags(infer.GenConfig, args)   # the generation flags (infer.add_model_args)
    if args.limit < 0:                        # problems[:-1]: all but the last
        raise ValueError(f"--limit must be >= 0 (0: all), not {args.limit}")
    problems = load_dataset(args.dataset, args.data_dir, args.subject, args.level)
    problems = problems[:args.limit or None]
    ranks = init_ranks(1 if args.server else args.tp)  # torchrun: W / tp replicas share problems
    if ranks.leader:              # another run's results in --out: refused before the model loads
        check_run(os.path.join(args.out, "run.json"), run_identity(args, cfg),
                  [os.path.join(args.out, name) for name in RUN_FILES], args.force_new,
                  write=ranks.replica == 0)
        ranks.wait_for_all()      # replica 0 has deleted old results (--force-new) before any reads
    opened = infer.open_model(args, ranks, {p["question"]: p["id"] for p in problems})
    if opened is None:               # another shard of a tensor-parallel replica, done
        return
    tok, model, solver = opened
    checkpoint = args.tokenizer if args.server else args.model   # the run is named after it
    name = (args.server and args.served_model) or os.path.basename(os.path.normpath(checkpoint))
    # the prompt's system text: --system, else each record's own (the paper's, docs/method.md §4)
    system_of = {p["question"]: p["system"] for p in problems}
    place = {p["question"]: k for k, p in enumerate(problems)}   # sampling: (seed, place)

    def system(question):
        if args.system is not None:
            return args.system
        return system_of[question] if system_of[question] is not None else infer.DEFAULT_SYSTEM

    rows = args.concurrency if args.server else cfg.batch_size   # problems in flight
    with SandboxPool(max(1, rows)) as pool, model as model:       # workers start once
        info = {"sandbox_isolation": default_isolation(),
                **({"server": model.base} if args.server else {})}

        def solve_fn(questions, on_result):  # a problem a server failed on: left for the next run
            return solver(model, tok, questions, [system(q) for q in questions], cfg=cfg,
                          pool=pool, on_result=on_result, indices=[place[q] for q in questions])
        return run_loop(problems, args.out, solve_fn, args.dataset, model_name=name, info=info,
                        replica=ranks.replica, n_replicas=ranks.n_replicas, wait=ranks.wait_for_all,
                        finish=ranks.finish)


# ------------------------------------------------------------------------------------------- report

def report(paths, out=None, dataset=None, data_dir=DATA_DIR):
    """A page to browse a run (html_views.report_page): RUN_DIR/report.html from its results.jsonl
    and summary.json, or one page for result files, ours or the authors' released format
    (debug_result; graded here as `score` does: result_files.report_rows). Returns its path."""
    run_dir = paths[0] if len(paths) == 1 and os.path.isdir(paths[0]) else None
    files = [os.path.join(run_dir, "results.jsonl")] if run_dir else list(paths)
    summary = None
    if run_dir and os.path.isfile(os.path.join(run_dir, "summary.json")):
        summary = read_json(os.path.join(run_dir, "summary.json"))
    stem = re.sub(r"(-correct|-wrong)?\.jsonl$", "", os.path.basename(files[0]))
    out = out or (os.path.join(run_dir, "report.html") if run_dir else stem + ".html")
    dataset = dataset or (summary or {}).get("dataset") or next(
        (w for w in re.split(r"[_.-]", stem.lower()) if w in DATASETS), None)
    rows = [row for path in files
            for row in report_rows(path, dataset, lambda pid: _math_levels(data_dir).get(pid))]
    paper = [(m, v[dataset], m.lower() in stem.lower()) for m, v in PAPER.items() if dataset in v]
    page = html_views.report_page(f"{run_dir or stem}: {dataset}", rows, summary, paper)
    atomic_write(out, page)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    score_cmd = sub.add_parser("score", help="re-grade a results file (ours or the authors' "
                               "debug_result format)")
    score_cmd.add_argument("results", help="a results JSONL (ours or the authors'), or a run "
                           "folder (its results.jsonl)")
    score_cmd.add_argument("--dataset", help="gsm8k/math/svamp/mathematics/simuleq/minival "
                           "(default: the run's summary.json, else from file name)")
    score_cmd.add_argument("--out", help="write the re-graded records here (JSONL)")
    score_cmd.add_argument("--data-dir", default=DATA_DIR)
    report_cmd = sub.add_parser("report",
                                help="an HTML page: accuracy, MATH heat map, every problem")
    report_cmd.add_argument("paths", nargs="+", help="a run directory (results.jsonl), or result "
                            "files: ours or the authors', e.g. "
                            "data/official_outs/MathCoder-CL-34b_GSM8K-*.jsonl")
    report_cmd.add_argument("--out",
                            help="default: RUN_DIR/report.html, or NAME.html here for files")
    report_cmd.add_argument("--dataset", help="grading protocol of records without a verdict "
                            "(default: from summary.json or the file name)")
    report_cmd.add_argument("--data-dir", default=DATA_DIR)
    run_cmd = sub.add_parser("run", help="generate with a checkpoint and grade (resumable)")
    run_cmd.add_argument("--dataset", required=True)
    run_cmd.add_argument("--out", required=True,
                         help="output directory: results.jsonl, summary.json/.md")
    run_cmd.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    run_cmd.add_argument("--subject", help="MATH only: e.g. algebra")
    run_cmd.add_argument("--level", type=int, help="MATH only: 1-5")
    run_cmd.add_argument("--system",
                         help="system text of every prompt (default: each record's own)")
    run_cmd.add_argument("--data-dir", default=DATA_DIR)
    run_cmd.add_argument("--force-new", action="store_true", help="delete the results in --out "
                         "and start over (a resumed run must be the same run: run.json)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:   # infer imports torch: only `run` needs it
        import infer
        infer.add_model_args(run_cmd)   # --model (or --server), --device, --dtype, --tp, GenConfig
    args = ap.parse_args(argv)
    if args.cmd == "run" and (bool(args.model) == bool(args.server)
                              or args.server and not args.tokenizer):
        ap.error("run: give either --model or --server with --tokenizer (the served checkpoint)")
    try:
        if args.cmd == "score":
            score(args.results, args.dataset, args.out, args.data_dir)
        elif args.cmd == "report":
            print(report(args.paths, args.out, args.dataset, args.data_dir))
        else:
            run(args)
    # bad input: one clear line naming the file (and line), no traceback
    except (ValueError, OSError, ServerError) as e:   # ServerError: no server, one line
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
