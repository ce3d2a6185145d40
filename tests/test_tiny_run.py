"""The tiny end-to-end run, shrunken: every stage runs with the real code and leaves its artefacts,
the with-execution answers really come from running the model's code, and the data recipe keeps
what it says it keeps."""
import json
import os

import lce_data
import tiny_run
from grader import extract_answer, is_equiv
from sandbox import Sandbox
from plumbing.storage import read_jsonl


def test_tiny_run_shrunken(tmp_path):
    out = str(tmp_path / "tiny")
    tiny_run.main(["--out", out, "--n-train", "400", "--n-test", "12", "--steps", "120",
                   "--dim", "64", "--n-layers", "2", "--n-heads", "2", "--batch-size", "16",
                   "--vocab-size", "400", "--ablation", "--n-interpolate", "24", "--samples", "2",
                   "--n-test-intermediate", "12", "--recipe-steps", "10", "--control"])

    # stage 1: data; training solutions are valid LCE records, no question shared with the test set
    train = lce_data.read_jsonl_records(os.path.join(out, "data", "train.jsonl"))
    test = read_jsonl(os.path.join(out, "data", "test.jsonl"))
    assert len(train) == 400 and len(test) == 12
    train_questions = {r["messages"][1]["content"][0]["content"] for r in train}
    assert not train_questions & {p["question"] for p in test}
    # stage 2 and 3: tokenizer, training log, exported checkpoint
    assert os.path.isfile(os.path.join(out, "tokenizer.model"))
    for run in ("train", "train_loss_on_execution"):
        log = read_jsonl(os.path.join(out, run, "log.jsonl"))
        assert len(log) == 120 and log[-1]["loss"] < log[0]["loss"] / 2
        for name in ("config.json", "model.safetensors", "tokenizer.model", "added_tokens.json"):
            assert os.path.isfile(os.path.join(out, run, "final", name)), name
    config = json.load(open(os.path.join(out, "train_loss_on_execution", "config.json")))
    assert config["train_on_execution"]

    # stages 4-5: one graded record per held-out problem and mode, and the summary
    summary = json.load(open(os.path.join(out, "summary.json")))
    modes = ("with_execution", "without_execution",   # the masked model (paper), the ablation's
             "loss_on_execution_with_execution", "loss_on_execution_without_execution")
    for mode in modes:
        recs = read_jsonl(os.path.join(out, mode, "results.jsonl"))
        assert sorted(r["id"] for r in recs) == sorted(p["id"] for p in test)
        assert summary[mode]["n"] == 12 and 0.0 <= summary[mode]["accuracy"] <= 1.0
        assert summary[mode]["correct"] == sum(r["correct"] for r in recs)

    # the pages: OUT/report.html links each mode's page (one entry per problem) and each loss.svg
    page = open(os.path.join(out, "report.html")).read()
    for mode in modes:
        assert f'href="{mode}/report.html"' in page
        assert open(os.path.join(out, mode, "report.html")).read().count('class="problem"') == 12
    for run in ("train", "train_loss_on_execution"):
        assert f'href="{run}/loss.svg"' in page
        assert open(os.path.join(out, run, "loss.svg")).read().count("<polyline") == 2

    # without execution nothing ran: every execution block there was written by the model
    assert summary["without_execution"]["executed_code_blocks"] == 0
    assert type(summary["without_execution"]["executed_code_blocks"]) is int

    # the loop really executed code: every execution block after a code block is what that code
    # prints when run afresh (each problem's first code block runs in a fresh session)
    recs = read_jsonl(os.path.join(out, "with_execution", "results.jsonl"))
    executed = 0
    with Sandbox() as sb:
        for r in recs:
            blocks = [(b["type"], b["content"]) for b in r["messages"][-1]["content"]]
            for (kind, code), nxt in zip(blocks, blocks[1:]):
                if kind == "code":
                    sb.reset()
                    assert nxt == ("execution", sb.run(code))
                    executed += 1
                    break
    assert executed >= 6, f"only {executed} of 12 solutions ran code"
    assert summary["with_execution"]["executed_code_blocks"] >= executed
    check_data_recipe(out, summary)


def check_data_recipe(out, summary):
    """Stage 7: D1 holds exactly the new problems whose 2 samples finished and agree, no held-out
    problem is trained on, and the figures in summary.json are the files' figures."""
    recipe = os.path.join(out, "recipe")
    new = [p["question"] for p in read_jsonl(os.path.join(recipe, "interpolated.jsonl"))]
    held_out = read_jsonl(os.path.join(recipe, "test_intermediate.jsonl"))
    assert len(new) == len(set(new)) > 12 and 6 <= len(held_out) <= 12
    assert all(p["family"] == "intermediate" and p["template"].count("-") == 2 for p in held_out)
    samples = read_jsonl(os.path.join(recipe, "samples.jsonl"))
    assert sorted((s["question"], s["sample"]) for s in samples) == sorted(
        (q, j) for q in new for j in (0, 1))
    agreed = {}
    for q in new:
        two = [s["solution"] for s in samples if s["question"] == q]
        answers = [extract_answer(x) for x in two]
        if all(x.endswith("<|endofmessage|>") for x in two) and None not in answers \
                and is_equiv(answers[0], answers[1]):
            agreed[q] = answers[0]
    d1 = read_jsonl(os.path.join(recipe, "d1.jsonl"))            # may be empty: a tiny model
    assert {lce_data.message_text(r, "user"): r["ground_truth"]["answer"] for r in d1} == agreed
    trained = {lce_data.message_text(r, "user")
               for r in lce_data.read_jsonl_records(os.path.join(recipe, "d0_d1.jsonl"))}
    assert set(agreed) <= trained
    seed_test = read_jsonl(os.path.join(out, "data", "test.jsonl"))
    assert not trained & ({p["question"] for p in held_out} | {p["question"] for p in seed_test})
    d0 = lce_data.read_jsonl_records(os.path.join(out, "data", "train.jsonl"))
    assert {lce_data.message_text(r, "user") for r in d0} >= trained - set(agreed)
    key = {p["question"]: p["answer"] for p in read_jsonl(os.path.join(recipe, "key.jsonl"))}
    assert set(key) == set(new)

    r = summary["data_recipe"]
    assert r["d1"]["generated"] == len(new) and r["d1"]["kept"] == len(d1)
    assert r["self_distillation"]["kept_right"] == sum(
        is_equiv(a, key[q]) for q, a in agreed.items())
    assert len(read_jsonl(os.path.join(recipe, "train_final", "log.jsonl"))) == 10
    # MathCoder-Initial is stage 3's model: the final model starts from it, and its grades on the
    # seed problems are stage 4's
    final_config = json.load(open(os.path.join(recipe, "train_final", "config.json")))
    assert os.path.samefile(final_config["init"], os.path.join(out, "train", "final"))
    for family in ("easy", "hard"):
        assert r["seed_families"][f"initial_accuracy_{family}"] == \
            summary["with_execution"][f"accuracy_{family}"]
    for name, key_name in (("initial", "initial_correct"), ("final", "final_correct")):
        graded = read_jsonl(os.path.join(recipe, name, "results.jsonl"))
        assert sorted(g["id"] for g in graded) == sorted(p["id"] for p in held_out)
        assert r[key_name] == sum(g["correct"] for g in graded)
    # the control: the same continuation on D0 alone, as many records as D0 + D1
    control = lce_data.read_jsonl_records(os.path.join(recipe, "d0_only.jsonl"))
    assert len(control) == r["final_training"]["d0_records"] + len(d1)
    assert {lce_data.message_text(c, "user") for c in control} <= \
        {lce_data.message_text(c, "user") for c in d0}
    assert len(read_jsonl(os.path.join(recipe, "train_control", "log.jsonl"))) == 10
    graded = read_jsonl(os.path.join(recipe, "control", "results.jsonl"))
    assert len(graded) == len(held_out)
    assert r["control_correct"] == sum(g["correct"] for g in graded)
    assert r["n_test"] == len(held_out)
    assert "Data recipe" in open(os.path.join(out, "summary.md")).read()

