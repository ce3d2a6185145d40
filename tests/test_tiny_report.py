"""plumbing/tiny_report.py: tiny_run.py's page tells the run's story from summary.json (the
accuracy table, the data recipe as one table with bars, D1's counts, the filter's precision, the
stage times, the loss curves, problems with and without execution), summary.md holds the same
figures, and the folder is wiped only when tiny_run.py made it."""
import json
import os
import subprocess
import sys

import pytest

from plumbing import html_views as H
from plumbing import tiny_report as R
from test_html_views import ROOT, _points, parse


def _results(path, oks):
    recs = []
    for i, ok in enumerate(oks):
        blocks = [{"type": "code", "content": f"print({i} < 9)"},
                  {"type": "execution", "content": "True"},
                  {"type": "text", "content": f"\\boxed{{{i}}} & done"}]
        recs.append({"id": f"synth-0-{i}", "question": f"Q{i} <b>?", "solution": "",
                     "messages": [{"role": "assistant", "content": blocks}], "pred": str(i),
                     "reference": str(i), "correct": ok})
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def test_tiny_run_page(tmp_path):
    modes = {"with_execution": [True, False, True, True],
             "without_execution": [False, False, True, False],
             "loss_on_execution_with_execution": [True, True, True, True],
             "loss_on_execution_without_execution": [False] * 4}
    summary = {m: {"dataset": "synthetic", "n": 4, "correct": sum(v), "accuracy": sum(v) / 4}
               for m, v in modes.items()}
    summary["data_recipe"] = {   # as tiny_run.data_recipe writes it (seed 0's figures)
        "initial_accuracy": 0.825, "final_accuracy": 0.96, "n_test": 200, "initial_correct": 165,
        "final_correct": 192, "control_accuracy": 0.845, "control_correct": 169,
        "d1": {"generated": 900, "kept": 537, "rejected_disagree": 131, "unfinished": 232,
               "no_answer": 0, "samples_per_problem": 3, "temperature": 1.0},
        "self_distillation": {"precision": 509 / 537, "kept": 537, "kept_right": 509,
                              "unfiltered_accuracy": 1887 / 2700, "samples": 2700,
                              "samples_right": 1887},
        "final_training": {"init": "MathCoder-Initial", "d0_records": 849, "d1_records": 537,
                           "steps": 150, "lr": 1e-3},
        "seed_families": {"initial_accuracy_easy": 0.98, "initial_accuracy_hard": 0.76,
                          "final_accuracy_easy": 0.99, "final_accuracy_hard": 0.86}}
    summary["seconds"] = 754.0
    summary["stage_seconds"] = {"1. D0, the seed data": 12.4,
                                "3. training MathCoder-Initial": 301.0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    for m, oks in modes.items():
        _results(str(tmp_path / m), oks)
    (tmp_path / "with_execution" / "report.html").write_text("x")
    steps = {"train": 30, "train_loss_on_execution": 25}
    for d, n in steps.items():
        os.makedirs(tmp_path / d)
        (tmp_path / d / "config.json").write_text(json.dumps(
            {"train_on_execution": d != "train"}))
        (tmp_path / d / "log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 5 / s, "lr": 1e-3}) + "\n" for s in range(1, n + 1)))
        H.write_loss_svg(str(tmp_path / d / "log.jsonl"), str(tmp_path / d / "loss.svg"))
    text = R.tiny_run_page(str(tmp_path))
    root = parse(text)
    rows = [tr.text() for tr in root.find("table")[0].find("tr")[1:]]
    assert len(rows) == 4
    assert rows[0].startswith("masked (paper)real (sandbox)75.0%3 / 4")
    assert rows[3].startswith("loss on execution toowithheld: model writes it0.0%0 / 4")
    # the data recipe's claim as one table: each model on the intermediate and seed problems
    recipe = [[td.text() for td in tr.find("td")] for tr in root.find("table")[1].find("tr")[1:]]
    assert [[c for c in row if c] for row in recipe] == [
        ["MathCoder-Initial", "D0", "82.5% (165 / 200)", "98.0%", "76.0%"],
        ["final", "D0 + D1 (849 + 537)", "96.0% (192 / 200)", "99.0%", "86.0%"],
        ["control", "D0 alone, as many", "84.5% (169 / 200)"]]
    # the claim in one sentence, the gain computed from the same figures
    assert ("the final model 96.0% against MathCoder-Initial 82.5% (+13.5 points); the control "
            "84.5%. The final model continues MathCoder-Initial for 150 steps on D0 + D1, the "
            "control as many steps") in root.text()
    d1 = [[td.text() for td in tr.find("td")] for tr in root.find("table")[2].find("tr")]
    assert [(row[0].split(":")[0], row[2]) for row in d1] == [
        ("kept in D1", "537"), ("dropped", "131"), ("dropped", "232"), ("dropped", "0")]
    precision = [[td.text() for td in tr.find("td")] for tr in root.find("table")[3].find("tr")]
    assert [row[2] for row in precision[1:]] == ["94.8% (509 / 537)", "69.9% (1887 / 2700)"]
    stages = [[td.text() for td in tr.find("td")] for tr in root.find("table")[4].find("tr")]
    assert [(row[0], row[2]) for row in stages] == [("1. D0, the seed data", "12 s"),
                                                     ("3. training MathCoder-Initial", "301 s")]
    assert "d1.kept" not in root.text() and "seed_families" not in root.text()
    assert "seconds" not in root.text()
    assert "Where the time went (the whole run: 13 min)" in root.text()
    # both models' curves on one plot, one point per step
    lines = {pl.attrs["data-name"]: len(_points(pl)) for pl in root.find("polyline")}
    assert lines == {"train/ (masked)": 30,
                     "train_loss_on_execution/ (loss on execution too)": 25}
    # side by side: first the problems that execution turns from wrong to right (0 and 3)
    pairs = root.find("div", "side")
    assert [p.parent.find("b")[0].text() for p in pairs] == ["synth-0-0", "synth-0-3",
                                                            "synth-0-1", "synth-0-2"]
    assert all(len(p.find("div", "code")) == 2 for p in pairs)
    # links resolve to files that exist
    hrefs = [a.attrs["href"] for a in root.find("a")]
    assert "with_execution/report.html" in hrefs and "train/loss.svg" in hrefs
    assert all(os.path.isfile(tmp_path / h) for h in hrefs)


def test_tables_hold_the_figures_of_summary_json():
    results = {"with_execution": {"n": 200, "correct": 174, "accuracy": 0.87},
               "loss_on_execution_without_execution": {"n": 200, "correct": 1, "accuracy": 0.005}}
    lines = R.tables(results).splitlines()
    assert lines[2:] == ["| masked (paper) | real (sandbox) | 87.0% | 174 / 200 |",
                         "| loss on execution too | withheld: model writes it | 0.5% | 1 / 200 |"]


def test_page_cli_rebuilds_the_page(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(
        {"with_execution": {"n": 2, "correct": 1, "accuracy": 0.5}, "note": "<b>kept</b>"}))
    done = subprocess.run([sys.executable, "-m", "plumbing.tiny_report", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    root = parse((tmp_path / "report.html").read_text())
    assert "note: <b>kept</b>" in root.text()          # an entry the page does not know: as it is
    assert "50.0%" in root.text()


def test_rerun_reuses_nothing_stale(tmp_path):
    out = tmp_path / "tiny"
    R.fresh_dir(str(out))
    (out / "stale.jsonl").write_text("old\n")
    R.fresh_dir(str(out))              # a second run starts empty (but for its marker)
    assert sorted(os.listdir(out)) == [R.MARKER]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(SystemExit):           # a folder tiny_run.py did not make is never wiped
        R.fresh_dir(str(foreign))
    assert (foreign / "thesis.tex").read_text() == "precious"
