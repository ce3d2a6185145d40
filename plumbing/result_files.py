"""What eval.py reads and writes around grading: result records in our format or the authors'
released one (`debug_result`), summary.md beside the paper's table, MATH's subject x level table,
and the rows of the HTML page that browses a run (html_views.report_page).
"""
import os

import lce_data
from grader import verdicts
from plumbing.storage import atomic_write, numbered_jsonl, write_json


def record_parts(rec, where):
    """(solution as an LCE string, reference, id) from our results or the authors' output format
    (`debug_result`, read by lce_data.debug_result_messages: a bad item is an error naming `where`
    and the field)."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    ground_truth = rec.get("ground_truth") or {}
    if not isinstance(ground_truth, dict):
        raise ValueError(f"{where}, field ground_truth: expected an object with 'answer', "
                         f"got {type(ground_truth).__name__}")
    if "debug_result" in rec:
        turn = [block for message in lce_data.debug_result_messages(rec, where)
                if message["role"] == "assistant" for block in message["content"]]
        solution = "".join(f"<|{b['type']}|>{b['content']}<|endofblock|>" for b in turn)
        reference = ground_truth.get("answer")
    else:
        solution = rec.get("solution")
        reference = rec.get("reference", ground_truth.get("answer"))
    if solution is None or reference is None:
        raise ValueError(f"{where}: needs solution+reference (ours) or "
                         "debug_result+ground_truth.answer")
    if not isinstance(solution, str):
        raise ValueError(f"{where}, field solution: expected a string, "
                         f"got {type(solution).__name__}")
    return solution, reference, rec.get("id")


def math_table(rows):
    """Markdown subject x level accuracy table for MATH rows [(subject, level, correct)]."""
    cells = {}                       # (subject, level) -> [correct, n]; "all" for either
    for subject, level, correct in rows:
        for key in [(subject, level), (subject, "all"), ("all", level), ("all", "all")]:
            cell = cells.setdefault(key, [0, 0])
            cell[0] += correct
            cell[1] += 1
    columns = [1, 2, 3, 4, 5, "all"]
    lines = ["| subject | " + " | ".join(f"L{c}" if c != "all" else "all" for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for subject in sorted({key[0] for key in cells} - {"all"}) + ["all"]:
        values = [f"{100 * cells[(subject, c)][0] / cells[(subject, c)][1]:.1f}"
                  if (subject, c) in cells else "-" for c in columns]
        lines.append(f"| {subject} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def write_summary(out_dir, summary, recs, model_name, paper):
    """summary.json, and summary.md: both accuracies beside the paper's (`paper`: model -> data set
    -> accuracy %), MATH by subject and level. The paper's numbers were graded by the authors'
    protocol: they sit in that column."""
    write_json(os.path.join(out_dir, "summary.json"), summary)
    dataset = summary["dataset"]
    lines = [f"{dataset} accuracy %: strict (exact equivalence) and paper protocol "
             "(the authors' grader)", "",
             "| model | strict | paper protocol |", "|---|---|---|",
             f"| {model_name} (n={len(recs)}) | {100 * summary['accuracy']:.1f} | "
             f"{100 * summary['accuracy_authors']:.1f} |"]
    lines += [f"| {m} (paper) | - | {v.get(dataset.lower(), '-')} |" for m, v in paper.items()]
    math_rows = [(r["subject"], r.get("level"), r["correct"]) for r in recs if r.get("subject")]
    if math_rows:
        lines += ["", "strict accuracy by subject and level:", "", math_table(math_rows)]
    atomic_write(os.path.join(out_dir, "summary.md"), "\n".join(lines) + "\n")


REPORT_VERDICTS = {"correct": "strict (ours)", "correct_authors": "paper protocol"}
REPORT_ANSWERS = {"pred": "extracted (ours)", "pred_authors": "extracted (paper protocol)",
                  "model_answer": "extracted (authors' file)", "grade_error": "grading failed"}


def report_rows(path, dataset, level_of):
    """The report page's rows for one results file, ours or the authors' (debug_result). Records
    without verdicts are graded here under `dataset`'s protocol, strict and paper protocol; a file
    named *-correct / *-wrong (as in data/official_outs/) also gives the official verdict.
    level_of(id): a MATH problem's level."""
    official = {"correct": True, "wrong": False}.get(path[:-len(".jsonl")].rsplit("-", 1)[-1])
    rows = []
    for line, rec in numbered_jsonl(path):
        solution, reference, pid = record_parts(rec, f"{path}:{line}")   # LCE, both formats
        if "correct" not in rec:            # the authors' files: graded here, both protocols
            rec = {**rec, **verdicts(solution, reference, dataset)}
        turn = [(b["type"], b["content"]) for m in rec.get("messages") or []
                if m["role"] == "assistant" for b in m["content"]]
        row = {"id": pid if pid is not None else f"{os.path.basename(path)}:{line}",
               "question": rec.get("question") or lce_data.message_text(rec, "user") or "",
               "blocks": turn or lce_data.parse_assistant(solution) or [("text", solution)],
               "answers": {label: rec[k] for k, label in REPORT_ANSWERS.items() if k in rec},
               "reference": reference,
               "verdicts": {label: bool(rec[k]) for k, label in REPORT_VERDICTS.items()
                            if k in rec}}
        if official is not None:
            row["verdicts"]["official (file name)"] = official
        if rec.get("subject") or str(pid).startswith("test/"):      # MATH
            row["subject"] = rec.get("subject") or str(pid).split("/")[1]
            row["level"] = rec.get("level") or level_of(pid)
        rows.append(row)
    return rows
