"""
MathCoder in miniature: the whole method, start to finish, on a laptop CPU in about ten minutes.

    python tiny_run.py                 # writes everything under out/tiny/ and prints the tables

Every stage is the project's real code, only smaller:
  1. data       D0, the seed data, in two families as GSM8K and MATH are in D0 (docs/method.md
                §2; recipe.family_split): word problems, easy (no change to a count, or one change
                and "how many now?") and hard (two or three changes), whose arithmetic is hard to
                do "in the head" (multi-digit products, remainders) but whose code is trivial.
                recipe.synthetic_records stands in for GPT-4 Code Interpreter: each LCE solution's
                execution block is the real output of its code run in sandbox.py.
  2. tokenizer  tokenizer.train_sentencepiece: a small Llama-style BPE model + the 8 LCE tokens.
  3. train      train.train: a small Llama from scratch, masked loss (no loss on execution blocks,
                docs/method.md §3). Trained on D0 only, it is the paper's MathCoder-Initial.
  4. solve      infer.solve: generate, execute, continue, on held-out problems of both families (no
                question is shared with the training set); then again with execution withheld, so
                the model must write its own <|execution|> numbers.
  5. grade      eval.run_loop: results.jsonl per mode, graded with grader.py's SymPy equivalence.
  6. ablation   with --ablation (about 5 minutes more), the paper's ablation (docs/method.md §3):
                the same recipe with loss on execution output too, so the model learns to predict
                the numbers itself; graded with and without real execution. Its "without" row is
                arithmetic in its head.
  7. recipe     how the paper built D1 (docs/method.md §2; skip with --no-recipe). Problem
                interpolation: recipe.synthetic_interpolator, a program standing in for GPT-4, reads
                the paper's prompt holding one easy and one hard D0 problem and writes one between
                them (one change, then a grouping question: a shape no D0 problem has).
                Self-distillation: MathCoder-Initial solves each new problem k times, sampling;
                recipe.self_distill keeps a solution only where the k answers agree (D1), with no
                reference answer. The final model continues from MathCoder-Initial on D0 + D1; both
                are graded on held-out intermediate problems that no training record holds. With
                --control, MathCoder-Initial is also continued the same way on D0 alone.
The claims to watch: with real execution the model solves what it cannot compute itself; and
whether the final model solves more intermediate problems than MathCoder-Initial, having learnt
them only from MathCoder-Initial's own agreeing answers.

Outputs (a reader can open each stage's output): OUT/data/{train,test}.jsonl, OUT/tokenizer.model,
OUT/train/ (log.jsonl, final/ in Hugging Face layout), OUT/<mode>/results.jsonl + summary.json,
OUT/recipe/ (the new problems, every sample, D1, the final model, the grades), OUT/summary.json
(every mode, data_recipe, seconds per stage) and OUT/summary.md (the tables). OUT/report.html shows
all of it, and OUT/<mode>/report.html every problem (open them in a browser).
"""
import argparse
import os
import random
import sys
import time

import torch

import eval as evaluation
import lce_data
import recipe
from grader import grade, is_equiv
from infer import GenConfig, solve
from model import Transformer
from sandbox import Sandbox
from tokenizer import Tokenizer, train_sentencepiece
from train import TrainConfig, train
from plumbing import storage
from plumbing.tiny_report import fresh_dir, stage, write_report

SYSTEM = ""   # the authors' script defaults to an empty system text (docs/method.md §4; their
              # numbers used the standard one): every token saved is CPU time saved here
D0_SHARE = 49 / 80     # MathCodeInstruct: about 49k solutions from D0 and 31k from D1 (recalled)
FIELDS = ("id", "question", "answer", "template", "family")   # of a held-out problem


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "out", "tiny"),
                    help="output folder, wiped at the start (%(default)s)")
    ap.add_argument("--n-train", type=int, default=4000, help="training problems, D0 (%(default)s)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out problems (%(default)s)")
    ap.add_argument("--vocab-size", type=int, default=400, help="BPE pieces (%(default)s)")
    ap.add_argument("--dim", type=int, default=128, help="model width (%(default)s)")
    ap.add_argument("--n-layers", type=int, default=4, help="transformer blocks (%(default)s)")
    ap.add_argument("--n-heads", type=int, default=4, help="attention heads (%(default)s)")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps (%(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per step (%(default)s)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (%(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed for data, init, data order, sampling")
    ap.add_argument("--ablation", action="store_true",
                    help="add the paper's ablation (stage 6, about 5 minutes more): a second "
                    "model, with loss on execution output too")
    g = ap.add_argument_group("the data recipe (stage 7)")
    g.add_argument("--no-recipe", dest="recipe", action="store_false",
                   help="skip it (interpolation, self-distillation, the final model)")
    g.add_argument("--n-interpolate", type=int, default=900,
                   help="new problems written for D1 (%(default)s)")
    g.add_argument("--samples", type=int, default=3, help="samples of each new problem, k")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="their temperature (%(default)s; none in the paper, as recalled)")
    g.add_argument("--n-test-intermediate", type=int, default=200,
                   help="held-out intermediate problems (%(default)s)")
    g.add_argument("--recipe-steps", type=int, default=150,
                   help="steps of the final model, from MathCoder-Initial (%(default)s)")
    g.add_argument("--recipe-lr", type=float, default=1e-3, help="its peak learning rate")
    g.add_argument("--control", action="store_true",
                   help="also continue MathCoder-Initial as the final model is, on D0 alone (as "
                   "many records), to tell D1's effect from more training's (2 minutes more)")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ stages 1 to 6
def make_data(train_p, test_p, data):
    """Stage 1: LCE solutions of the training problems, whose execution blocks come from the
    sandbox, in data/train.jsonl; the held-out problems in data/test.jsonl; the text for the
    tokenizer in data/corpus.txt. Returns (train.jsonl, corpus.txt)."""
    with Sandbox() as sb:
        records = recipe.synthetic_records(train_p, sandbox=sb, system=SYSTEM)
    storage.write_jsonl(os.path.join(data, "train.jsonl"), records)
    storage.write_jsonl(os.path.join(data, "test.jsonl"),
                        [{k: p[k] for k in FIELDS if k in p} for p in test_p])
    corpus = os.path.join(data, "corpus.txt")
    storage.atomic_write(corpus, "\n".join(lce_data.serialize(r) for r in records) + "\n")
    print(f"{len(records)} training solutions, {len(test_p)} held-out problems -> {data}/")
    return os.path.join(data, "train.jsonl"), corpus


def train_model(args, data, name, tok_path=None, train_on_execution=False, init=None,
                steps=None, lr=None):
    """Stage 3: the real train.py: a small Llama from scratch (shape from the arguments), or
    continuing from the checkpoint `init` (its shape and tokenizer)."""
    steps = steps or args.steps
    lr = lr or args.lr
    cfg = TrainConfig(data=data, out=os.path.join(args.out, name), init=init, tokenizer=tok_path,
                      dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                      hidden_dim=(8 * args.dim // 3 + 15) // 16 * 16, epochs=10 ** 6,
                      max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(50, steps // 10),
                      beta2=0.95, batch_size=args.batch_size, micro_batch_size=args.batch_size,
                      seq_len=256, train_on_execution=train_on_execution, seed=args.seed,
                      save_every=10 ** 9, log_every=max(1, steps // 20))
    return train(cfg)["final"]


def load(ckpt):
    model = Transformer.from_pretrained(ckpt, dtype=torch.float32).eval()
    return model, Tokenizer.from_checkpoint(ckpt)


def gen_config(execute, **sampling):
    return GenConfig(max_new_tokens=96, max_total_tokens=384, max_prompt_tokens=128, max_rounds=6,
                     batch_size=32, execute=execute, context="stop", **sampling)  # whole contexts


def solve_and_grade(args, ckpt, tests, name, execute):
    """Stages 4-5: generate-execute-continue (or not), then grade every answer."""
    model, tok = load(ckpt)

    def solve_fn(questions, on_result):
        return solve(model, tok, questions, system=SYSTEM, cfg=gen_config(execute),
                     on_result=on_result)

    out_dir = os.path.join(args.out, name)
    summary = evaluation.run_loop(tests, out_dir, solve_fn, "synthetic", model_name=name)
    evaluation.report([out_dir])                  # out_dir/report.html: every problem, each block
    results = storage.read_jsonl(os.path.join(out_dir, "results.jsonl"))
    executed = sum(b["type"] == "execution" for r in results for b in r["messages"][-1]["content"])
    summary["executed_code_blocks"] = executed if execute else 0   # withheld: the model wrote all
    family = {p["id"]: p.get("family") for p in tests}
    for name in sorted(set(family.values()) - {None}):   # accuracy per family of problems
        right = [r["correct"] for r in results if family[r["id"]] == name]
        summary[f"accuracy_{name}"] = sum(right) / len(right)
    return summary


# ------------------------------------------------------------------ stage 7: the data recipe
def interpolate(args, train_p, test_p):
    """Problem interpolation (docs/method.md §2): D1's new problems from pairs of D0 problems;
    the held-out intermediate problems the same way from the held-out seed problems, leaving out
    any question D1 holds. Returns (D1's questions, the held-out problems, the generator's key:
    question -> problem with its answer, which D1's construction never reads)."""
    generate, key = recipe.synthetic_interpolator(train_p + test_p)

    def new_problems(problems, n, seed):    # Example 1: an easy problem (GSM8K), 2: a hard one
        easy = [p for p in problems if p["family"] == "easy"]
        hard = [p for p in problems if p["family"] == "hard"]
        new = recipe.interpolate_problems(easy, hard, 2 * n, generate, seed)  # some pairs give none
        return [p["question"] for p in new[:n]]
    d1 = new_problems(train_p, args.n_interpolate, args.seed)
    taken = set(d1)
    held_out = [q for q in new_problems(test_p, args.n_test_intermediate, args.seed + 1)
                if q not in taken]
    tests = [{"id": f"intermediate-{i}", **{k: key[q][k] for k in FIELDS[1:]}}
             for i, q in enumerate(held_out)]
    out = os.path.join(args.out, "recipe")
    storage.write_jsonl(os.path.join(out, "interpolated.jsonl"),
                        [{"id": f"d1-{i}", "question": q} for i, q in enumerate(d1)])
    storage.write_jsonl(os.path.join(out, "test_intermediate.jsonl"), tests)
    print(f"{len(d1)} new problems for D1, {len(tests)} held-out intermediate problems -> {out}/")
    return d1, tests, key


def self_distillation(args, ckpt, questions):
    """MathCoder-Initial solves every new problem k times, sampling, each draw with its own seed;
    recipe.self_distill keeps a solution where the k answers agree. No reference is read."""
    model, tok = load(ckpt)
    samples = []

    def draw(questions, j):
        t0 = time.time()
        cfg = gen_config(True, temperature=args.temperature, seed=args.seed + 1 + j)
        samples.append(solve(model, tok, questions, system=SYSTEM, cfg=cfg))
        print(f"sample {j + 1}/{args.samples}: {len(questions)} problems, "
              f"{len(questions) / (time.time() - t0):.1f}/s", flush=True)
        return samples[-1]
    d1, stats = recipe.self_distill(questions, draw, k=args.samples)
    out = os.path.join(args.out, "recipe")
    storage.write_jsonl(os.path.join(out, "samples.jsonl"),
                        [{"question": s["question"], "sample": j, "solution": s["solution"]}
                         for j, sample in enumerate(samples) for s in sample])
    storage.write_jsonl(os.path.join(out, "d1.jsonl"), d1)
    print(f"D1 keeps {stats['kept']} of {stats['questions']} ({stats['disagree']} disagree, "
          f"{stats['unfinished']} unfinished, {stats['no_answer']} without an answer)")
    return d1, stats, samples


def distillation_precision(args, questions, d1, samples, key):
    """Only now, D1 built, the generator's answers are read (and written to OUT/recipe/key.jsonl):
    how many kept solutions are right, against how many of all samples were."""
    storage.write_jsonl(os.path.join(args.out, "recipe", "key.jsonl"),
                        [{k: key[q][k] for k in ("question", "answer", "template")}
                         for q in questions])
    kept_right = sum(is_equiv(r["ground_truth"]["answer"],
                              key[lce_data.message_text(r, "user")]["answer"]) for r in d1)
    sampled = [s for sample in samples for s in sample]
    sampled_right = sum(grade(s["solution"], key[s["question"]]["answer"])[1] for s in sampled)
    return {"precision": kept_right / max(len(d1), 1), "kept_right": kept_right,
            "kept": len(d1), "unfiltered_accuracy": sampled_right / max(len(sampled), 1),
            "samples_right": sampled_right, "samples": len(sampled)}


def d0_and_d1(args, d0_path, d1, held_out):
    """The final model's data, OUT/recipe/d0_d1.jsonl: D1 and a sample of D0 in the paper's
    proportion. Raises if any held-out question is in it."""
    d0 = lce_data.read_jsonl_records(d0_path)
    n_d0 = min(len(d0), max(args.batch_size, round(len(d1) * D0_SHARE / (1 - D0_SHARE))))
    records = random.Random(args.seed).sample(d0, n_d0) + d1
    leaked = {p["question"] for p in held_out} & {lce_data.message_text(r, "user") for r in records}
    if leaked:
        raise RuntimeError(f"held-out problems in the training data: {sorted(leaked)[:3]}")
    path = os.path.join(args.out, "recipe", "d0_d1.jsonl")
    storage.write_jsonl(path, records)
    return path, n_d0


def data_recipe(args, times, initial, d0_path, train_p, test_p, initial_seed):
    """Stage 7: interpolation, self-distillation, the final model. MathCoder-Initial is the model
    of stage 3 (`initial`, trained on D0 = `d0_path`); it and the final model are graded on
    held-out intermediate problems, and the final model on stage 4's held-out seed problems too
    (`initial_seed`: MathCoder-Initial's grades there)."""
    done = stage("7a. problem interpolation: a stand-in for GPT-4 writes problems between easy "
                 "and hard", times)
    questions, tests, key = interpolate(args, train_p, test_p)
    done()
    done = stage(f"7b. self-distillation into D1: MathCoder-Initial samples {args.samples} "
                 "solutions of each new problem", times)
    d1, stats, samples = self_distillation(args, initial, questions)
    scored = distillation_precision(args, questions, d1, samples, key)
    print(f"precision: {scored['kept_right']}/{scored['kept']} kept solutions are right; "
          f"{scored['samples_right']}/{scored['samples']} of all samples were")
    done()
    # The paper trained its released models from the base model on D0 + D1. Here the final model
    # continues from MathCoder-Initial (which has learnt D0) for fewer steps, on D1 and a sample
    # of D0 in the paper's proportion: training from scratch again would double the time.
    done = stage("7c. training the final model: from MathCoder-Initial, on D0 + D1", times)
    data, n_d0 = d0_and_d1(args, d0_path, d1, tests + test_p)
    final = train_model(args, data, os.path.join("recipe", "train_final"), init=initial,
                        steps=args.recipe_steps, lr=args.recipe_lr)
    done()
    models = [("initial", initial), ("final", final)]
    if args.control:   # the same continuation without D1: is the gain D1's or more training's?
        done = stage("7c'. training the control: the same continuation on D0 alone", times)
        d0 = lce_data.read_jsonl_records(d0_path)
        control_data = os.path.join(args.out, "recipe", "d0_only.jsonl")
        storage.write_jsonl(control_data, random.Random(args.seed + 1).sample(
            d0, min(len(d0), n_d0 + len(d1))))
        models.append(("control", train_model(args, control_data,
                                               os.path.join("recipe", "train_control"),
                                               init=initial, steps=args.recipe_steps,
                                               lr=args.recipe_lr)))
        done()
    done = stage("7d. grading MathCoder-Initial and the final model: on held-out intermediate "
                 "problems, the final one on the seed problems too", times)
    graded = {name: solve_and_grade(args, model, tests, os.path.join("recipe", name), True)
              for name, model in models}
    seed_tests = [{k: p[k] for k in FIELDS} for p in test_p]
    final_seed = solve_and_grade(args, final, seed_tests, os.path.join("recipe", "final_seed"),
                                 True)
    done()
    return {"initial_accuracy": graded["initial"]["accuracy"],
            "final_accuracy": graded["final"]["accuracy"], "n_test": graded["initial"]["n"],
            "initial_correct": graded["initial"]["correct"],
            "final_correct": graded["final"]["correct"],
            "d1": {"generated": stats["questions"], "kept": stats["kept"],
                   "rejected_disagree": stats["disagree"], "unfinished": stats["unfinished"],
                   "no_answer": stats["no_answer"], "samples_per_problem": args.samples,
                   "temperature": args.temperature},
            "self_distillation": scored,
            **({"control_accuracy": graded["control"]["accuracy"],
                "control_correct": graded["control"]["correct"]} if args.control else {}),
            "final_training": {"init": "MathCoder-Initial", "d0_records": n_d0,
                               "d1_records": len(d1), "steps": args.recipe_steps,
                               "lr": args.recipe_lr},
            "seed_families": {f"{model}_accuracy_{family}": grades[f"accuracy_{family}"]
                              for model, grades in (("initial", initial_seed),
                                                    ("final", final_seed))
                              for family in ("easy", "hard")}}


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    t_all = time.time()
    times = {}
    fresh_dir(args.out)

    done = stage("1. D0, the seed data: easy and hard problems, solutions run in the sandbox",
                 times)
    train_p, test_p = recipe.family_split(args.n_train, args.n_test, seed=args.seed)
    data, corpus = make_data(train_p, test_p, os.path.join(args.out, "data"))
    done()

    done = stage("2. tokenizer: SentencePiece BPE + the 8 LCE tokens", times)
    tok_path = train_sentencepiece(corpus, os.path.join(args.out, "tokenizer"), args.vocab_size)
    print(f"{tok_path}, {Tokenizer(tok_path).vocab_size} ids")
    done()

    done = stage("3. training MathCoder-Initial: on D0, no loss on execution blocks "
                 "(docs/method.md §3)", times)
    ckpt = train_model(args, data, "train", tok_path)
    done()

    tests = [{k: p[k] for k in FIELDS} for p in test_p]
    results = {}
    for name, execute in (("with_execution", True), ("without_execution", False)):
        done = stage(f"4-5. solving + grading, {name.replace('_', ' ')}", times)
        results[name] = solve_and_grade(args, ckpt, tests, name, execute)
        done()

    if args.ablation:
        done = stage("6. ablation: training with loss on execution output too", times)
        ckpt_ab = train_model(args, data, "train_loss_on_execution", tok_path,
                              train_on_execution=True)
        for name, execute in (("loss_on_execution_with_execution", True),
                              ("loss_on_execution_without_execution", False)):
            results[name] = solve_and_grade(args, ckpt_ab, tests, name, execute)
        done()

    if args.recipe:
        results["data_recipe"] = data_recipe(args, times, ckpt, data, train_p, test_p,
                                             results["with_execution"])

    results["seconds"] = round(time.time() - t_all, 1)
    results["stage_seconds"] = times
    table = write_report(args.out, results)   # summary.json, summary.md, report.html
    print(f"\n== result on {args.n_test} held-out problems ({results['seconds']:.0f}s in all)\n"
          f"{table}")
    print(f"\nEach stage's output is under {args.out}/ (summary.json, */results.jsonl, "
          f"train/log.jsonl); open {os.path.join(args.out, 'report.html')} in a browser.")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:   # bad arguments: one line, no traceback
        sys.exit(f"error: {e}")
