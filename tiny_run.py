"""
MathCoder in miniature: the whole method, start to finish, on a laptop CPU in about ten minutes.

    python tiny_run.py                 # writes everything under out/tiny/ and prints the table

Every stage is the project's real code, only smaller:
  1. data       lce_data.synthetic_*: word problems whose arithmetic is hard to do "in the head"
                (multi-digit products, remainders, two-step totals) but whose code is trivial; each LCE
                solution's execution block is the real output of its code run in sandbox.py.
  2. tokenizer  tokenizer.train_sentencepiece: a small Llama-style BPE model + the 8 LCE tokens.
  3. train      train.train: a small Llama from scratch, masked loss (no loss on execution blocks, §3).
  4. solve      infer.solve: generate, execute, continue, on held-out problems (no question is shared with
                the training set); then again with execution withheld, so the model must write its own
                <|execution|> numbers.
  5. grade      eval.run_loop: results.jsonl per mode, graded with eval.py's SymPy equivalence.
  6. ablation   the paper's ablation (skip with --no-ablation): the same recipe with loss on execution
                output too, so the model learns to predict the numbers itself; graded with and without
                real execution. Its "without" row is what a model gets by doing the arithmetic in its head.
The claim to watch: with real execution the model solves what it cannot compute itself.

Outputs (a reader can open each stage's output): OUT/data/{train,test}.jsonl, OUT/tokenizer.model,
OUT/train/ (log.jsonl, final/ in Hugging Face layout), OUT/<mode>/results.jsonl + summary.json,
OUT/summary.json (all modes) and OUT/summary.md (the table). OUT/report.html shows all of it, and
OUT/<mode>/report.html every problem (open them in a browser).
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch

import eval as grader
import html_views
import lce_data
from infer import GenConfig, solve
from model import Transformer
from sandbox import Sandbox
from tokenizer import Tokenizer, train_sentencepiece
from train import TrainConfig, train

SYSTEM = ""   # METHOD.md §4: the paper's numbers used an empty system text or the standard one; empty is
              # shorter, and every token saved is CPU time saved here
MARKER = ".tiny_run"   # OUT is wiped at the start only if this file says tiny_run.py made it


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "tiny"),
                    help="output folder inside the project, wiped at the start (%(default)s)")
    ap.add_argument("--n-train", type=int, default=4000, help="training problems (%(default)s)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out problems (%(default)s)")
    ap.add_argument("--vocab-size", type=int, default=400, help="SentencePiece pieces (%(default)s)")
    ap.add_argument("--dim", type=int, default=128, help="model width (%(default)s)")
    ap.add_argument("--n-layers", type=int, default=4, help="transformer blocks (%(default)s)")
    ap.add_argument("--n-heads", type=int, default=4, help="attention heads (%(default)s)")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps (%(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per step (%(default)s)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (%(default)s)")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false",
                    help="skip the paper's ablation (a second model trained with loss on execution output too)")
    ap.add_argument("--seed", type=int, default=0, help="seed for data, init and data order (%(default)s)")
    return ap.parse_args(argv)


def fresh_dir(out):
    """Running twice reuses nothing stale: wipe OUT, but only if it is empty or this script made it."""
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MARKER)):
            sys.exit(f"error: {out} exists and was not made by tiny_run.py; choose another --out")
        shutil.rmtree(out)
    os.makedirs(out)
    open(os.path.join(out, MARKER), "w").close()


def stage(name):
    print(f"\n== {name}", flush=True)
    return time.time()


def make_data(args):
    """Stage 1: synthetic problems, LCE solutions whose execution blocks come from the sandbox."""
    train_p, test_p = lce_data.synthetic_split(args.n_train, args.n_test, seed=args.seed)
    with Sandbox() as sb:
        records = lce_data.synthetic_records(train_p, sandbox=sb, system=SYSTEM)
    data = os.path.join(args.out, "data")
    lce_data.write_jsonl(os.path.join(data, "train.jsonl"), records)
    tests = [{"id": p["id"], "question": p["question"], "answer": p["answer"], "template": p["template"]}
             for p in test_p]
    lce_data.write_jsonl(os.path.join(data, "test.jsonl"), tests)
    corpus = os.path.join(data, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(lce_data.serialize(r) for r in records) + "\n")
    print(f"{len(records)} training solutions, {len(tests)} held-out problems -> {data}/")
    return os.path.join(data, "train.jsonl"), tests, corpus


def train_model(args, data, tok_path, name, train_on_execution):
    """Stage 3: the real train.py, a small Llama from scratch (shape from the arguments)."""
    cfg = TrainConfig(data=data, out=os.path.join(args.out, name), tokenizer=tok_path, dim=args.dim,
                      n_layers=args.n_layers, n_heads=args.n_heads, hidden_dim=(8 * args.dim // 3 + 15) // 16 * 16,
                      epochs=10 ** 6, max_steps=args.steps, lr=args.lr, min_lr=args.lr / 10,
                      warmup_steps=min(50, args.steps // 10), beta2=0.95, batch_size=args.batch_size,
                      micro_batch_size=args.batch_size, seq_len=256, train_on_execution=train_on_execution,
                      seed=args.seed, save_every=10 ** 9, log_every=max(1, args.steps // 20))
    return train(cfg)["final"]


def solve_and_grade(args, ckpt, tests, name, execute):
    """Stages 4-5: generate-execute-continue (or not), then grade every answer."""
    model = Transformer.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = Tokenizer.from_checkpoint(ckpt)
    cfg = GenConfig(max_new_tokens=96, max_total_tokens=384, max_prompt_tokens=128, max_rounds=6, batch_size=32,
                    execute=execute, context="stop")   # no window: it saw whole contexts

    def solve_fn(questions, on_result):
        return solve(model, tok, questions, system=SYSTEM, cfg=cfg, on_result=on_result)

    out_dir = os.path.join(args.out, name)
    summary = grader.run_loop(tests, out_dir, solve_fn, "synthetic", model_name=name)
    grader.report([out_dir])                        # out_dir/report.html: every problem, each block
    recs = [json.loads(line) for line in open(os.path.join(out_dir, "results.jsonl"))]
    summary["executed_code_blocks"] = sum(
        sum(b["type"] == "execution" for b in r["messages"][-1]["content"]) for r in recs) if execute else 0
    return summary


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    t_all = time.time()
    fresh_dir(args.out)

    t = stage("1. data: synthetic problems, solutions executed in the sandbox")
    data, tests, corpus = make_data(args)
    print(f"   {time.time() - t:.1f}s")

    t = stage("2. tokenizer: SentencePiece BPE + the 8 LCE tokens")
    tok_path = train_sentencepiece(corpus, os.path.join(args.out, "tokenizer"), args.vocab_size)
    print(f"{tok_path}, {Tokenizer(tok_path).vocab_size} ids; {time.time() - t:.1f}s")

    t = stage("3. train: masked loss, no loss on execution blocks (paper §3)")
    ckpt = train_model(args, data, tok_path, "train", train_on_execution=False)
    print(f"   {time.time() - t:.1f}s")

    results = {}
    for name, execute in (("with_execution", True), ("without_execution", False)):
        t = stage(f"4-5. solve + grade, {name.replace('_', ' ')}")
        results[name] = solve_and_grade(args, ckpt, tests, name, execute)
        print(f"   {time.time() - t:.1f}s")

    if args.ablation:
        t = stage("6. ablation: train with loss on execution output too")
        ckpt_ab = train_model(args, data, tok_path, "train_loss_on_execution", train_on_execution=True)
        for name, execute in (("loss_on_execution_with_execution", True),
                              ("loss_on_execution_without_execution", False)):
            results[name] = solve_and_grade(args, ckpt_ab, tests, name, execute)
        print(f"   {time.time() - t:.1f}s")

    results["seconds"] = round(time.time() - t_all, 1)
    lines = ["| model | execution | accuracy | correct / n |", "|---|---|---|---|"]
    for name, r in results.items():
        if isinstance(r, dict):
            trained = "loss on execution too" if name.startswith("loss_on") else "masked (paper)"
            how = "withheld: model writes it" if name.endswith("without_execution") else "real (sandbox)"
            lines.append(f"| {trained} | {how} | {100 * r['accuracy']:.1f}% | {r['correct']} / {r['n']} |")
    table = "\n".join(lines)
    grader.atomic_write(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2) + "\n")
    grader.atomic_write(os.path.join(args.out, "summary.md"), table + "\n")
    grader.atomic_write(os.path.join(args.out, "report.html"), html_views.tiny_run_page(args.out))
    print(f"\n== result on {args.n_test} held-out problems ({results['seconds']:.0f}s in all)\n{table}")
    print(f"\nEach stage's output is under {args.out}/ (summary.json, */results.jsonl, "
          f"train/log.jsonl); open {os.path.join(args.out, 'report.html')} in a browser.")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad arguments: one line, no traceback
        sys.exit(f"error: {e}")
