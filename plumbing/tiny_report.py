"""
What tiny_run.py shows, and where: its output folder (wiped at the start, but only if tiny_run.py
made it), each stage's title and wall time, the tables (OUT/summary.md, also printed) and the page
(OUT/report.html): the accuracy table, the data recipe's story (MathCoder-Initial -> the final
model, what self-distillation kept and how often it was right), the stage times, every model's
training loss on one plot, and held-out problems solved with and without execution side by side.
The raw figures stay in OUT/summary.json.

    python -m plumbing.tiny_report out/tiny     # rebuild out/tiny/report.html from what is there
"""
import argparse
import os
import shutil
import sys
import time

from plumbing.html_views import bar, blocks_html, esc, line_chart, page, pct, verdict_html
from plumbing.storage import atomic_write, read_json, read_jsonl, write_json

MARKER = ".tiny_run"   # OUT is wiped at the start only if this file says tiny_run.py made it


# -------------------------------------------------------------------------------------------------
# The run's folder and its stage lines
def fresh_dir(out):
    """Running twice reuses nothing stale: wipe OUT, but only if it is empty or we made it."""
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MARKER)):
            sys.exit(f"error: {out} exists and was not made by tiny_run.py; choose another --out")
        shutil.rmtree(out)
    os.makedirs(out)
    open(os.path.join(out, MARKER), "w").close()


def stage(name, times):
    """Print the stage's title; returns done(), which prints and records its wall seconds."""
    print(f"\n== {name}", flush=True)
    t0 = time.time()

    def done():
        times[name.split(":")[0]] = round(time.time() - t0, 1)
        print(f"   {time.time() - t0:.1f}s", flush=True)
    return done


# -------------------------------------------------------------------------------------------------
# The tables (summary.md)
def mode_in_words(name):
    """A graded mode's folder (with_execution, loss_on_execution_without_execution, ...) -> (how
    the model was trained, where its execution output came from), in words."""
    model = "loss on execution too" if name.startswith("loss_on_execution") else "masked (paper)"
    how = "withheld: model writes it" if name.endswith("without_execution") else "real (sandbox)"
    return model, how


def tables(results) -> str:
    """summary.md: accuracy per mode, then the data recipe's figures and its table."""
    lines = ["| model | execution | accuracy | correct / n |", "|---|---|---|---|"]
    for name, r in results.items():
        if name.endswith("execution"):
            trained, how = mode_in_words(name)
            lines.append(f"| {trained} | {how} | {pct(r['accuracy'])} | "
                         f"{r['correct']} / {r['n']} |")
    if "data_recipe" in results:
        r = results["data_recipe"]
        d1 = r["d1"]
        sd = r["self_distillation"]
        seed = r["seed_families"]
        lines += ["", f"Data recipe (§2): {d1['generated']} interpolated problems, "
                  f"{d1['samples_per_problem']} samples each at temperature {d1['temperature']}; "
                  f"D1 keeps {d1['kept']} (rejected: {d1['rejected_disagree']} disagree, "
                  f"{d1['unfinished']} unfinished, {d1['no_answer']} without an answer). "
                  f"Self-distillation precision {pct(sd['precision'])} ({sd['kept_right']} / "
                  f"{sd['kept']} kept solutions right) vs {pct(sd['unfiltered_accuracy'])} of all "
                  f"{sd['samples']} samples.", "",
                  "| model | trained on | held-out intermediate | seed problems: easy | hard |",
                  "|---|---|---|---|---|",
                  f"| MathCoder-Initial | D0 | {pct(r['initial_accuracy'])} "
                  f"({r['initial_correct']} / {r['n_test']}) | "
                  f"{pct(seed['initial_accuracy_easy'])} | {pct(seed['initial_accuracy_hard'])} |",
                  f"| final | D0 + D1 | {pct(r['final_accuracy'])} ({r['final_correct']} / "
                  f"{r['n_test']}) | {pct(seed['final_accuracy_easy'])} | "
                  f"{pct(seed['final_accuracy_hard'])} |"]
        if "control_accuracy" in r:
            lines.append(f"| control: the final model's steps on D0 alone | D0 | "
                         f"{pct(r['control_accuracy'])} ({r['control_correct']} / "
                         f"{r['n_test']}) | | |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# The page: accuracy table, the data recipe, stage times, loss curves, problems with and without
# execution
def _assistant_blocks(rec):
    msgs = rec.get("messages") or []
    turn = msgs[-1]["content"] if msgs and msgs[-1].get("role") == "assistant" else []
    return [(b["type"], b["content"]) for b in turn]


def _accuracy_cell(x, right=None, n=None) -> str:
    if not isinstance(x, (int, float)):
        return "<td></td><td></td>"
    count = f" ({esc(right)} / {esc(n)})" if right is not None and n is not None else ""
    return f"<td>{bar(x)}</td><td class=num>{pct(x)}{count}</td>"


def recipe_html(r: dict) -> str:
    """The paper's data-recipe claim (§2) as the tiny run measured it: MathCoder-Initial (trained
    on D0) against the final model (D0 + D1) and, where it ran, the control (D0 alone, as many
    records and steps), on held-out problems of the new intermediate shape and of each seed
    family; then what self-distillation kept of D1, and the filter's precision: how often a kept
    solution is right, against every sample unfiltered."""
    seed = r.get("seed_families", {})
    run = r.get("final_training", {})
    d0, d1_records = run.get("d0_records"), run.get("d1_records")
    counted = d0 is not None and d1_records is not None
    rows = [("MathCoder-Initial", "D0", "initial"),
            ("final", "D0 + D1" + (f" ({d0} + {d1_records})" if counted else ""), "final")]
    if "control_accuracy" in r:
        rows.append(("control", "D0 alone, as many", "control"))
    head = ("<table><tr><th>model</th><th>trained on</th><th colspan=2>held-out intermediate"
            "</th><th colspan=2>seed problems: easy</th><th colspan=2>hard</th></tr>")
    body = "".join(
        f'<tr><td style="white-space:nowrap">{name}</td><td>{esc(trained)}</td>'
        + _accuracy_cell(r.get(f"{key}_accuracy"), r.get(f"{key}_correct"), r.get("n_test"))
        + _accuracy_cell(seed.get(f"{key}_accuracy_easy"))
        + _accuracy_cell(seed.get(f"{key}_accuracy_hard")) + "</tr>"
        for name, trained, key in rows)
    parts = ["<h2>The data recipe: MathCoder-Initial, then the final model</h2>",
             head + body + "</table>"]
    figures = [r.get(k) for k in ("initial_accuracy", "final_accuracy", "n_test")]
    if all(isinstance(x, (int, float)) for x in figures):
        initial, final, n = figures
        control = r.get("control_accuracy")
        has_control = isinstance(control, (int, float))
        steps = f"{run['steps']} steps" if "steps" in run else "a few steps"
        parts.append(f'<p class="note">On {esc(n)} held-out problems of the intermediate shape (no '
                     f"D0 problem has it): the final model {pct(final)} against MathCoder-Initial "
                     f"{pct(initial)} ({100 * (final - initial):+.1f} points)"
                     + (f"; the control {pct(control)}" if has_control else "")
                     + f". The final model continues MathCoder-Initial for {esc(steps)} on D0 + D1"
                     + (", the control as many steps on as many records of D0 alone"
                        if has_control else "")
                     + ". It learnt the new shape only from MathCoder-Initial's own agreeing "
                     "answers: no reference answer was read to build D1.</p>")
    d1 = r.get("d1", {})
    if d1:
        generated = d1.get("generated") or 0
        counts = [("kept in D1: the samples agree", d1.get("kept")),
                  ("dropped: the samples disagree", d1.get("rejected_disagree")),
                  ("dropped: a sample did not finish", d1.get("unfinished")),
                  ("dropped: a sample has no answer", d1.get("no_answer"))]
        rows = "".join(f"<tr><td>{what}</td><td>{bar(n / generated if generated else 0)}</td>"
                       f"<td class=num>{esc(n)}</td></tr>"
                       for what, n in counts if n is not None)
        parts.append(f"<h3>Self-distillation: {esc(generated)} new problems, "
                     f"{esc(d1.get('samples_per_problem', '?'))} samples each at temperature "
                     f"{esc(d1.get('temperature', '?'))}</h3><table>{rows}</table>")
    sd = r.get("self_distillation", {})
    if "precision" in sd:
        kept = _accuracy_cell(sd["precision"], sd.get("kept_right"), sd.get("kept"))
        every = _accuracy_cell(sd.get("unfiltered_accuracy"), sd.get("samples_right"),
                               sd.get("samples"))
        parts.append("<h3>The filter's precision: agreement, with no reference answer</h3>"
                     "<table><tr><th>solutions</th><th colspan=2>right (the reference answer is "
                     "read only after D1 is built)</th></tr>"
                     f"<tr><td>kept in D1</td>{kept}</tr>"
                     f"<tr><td>every sample, unfiltered</td>{every}</tr></table>")
    return "\n".join(parts)


def stages_html(seconds: dict, whole=None) -> str:
    """tiny_run's stage times: one row a stage, its title as printed by the run."""
    total = sum(v for v in seconds.values() if isinstance(v, (int, float))) or 1
    rows = "".join(f"<tr><td>{esc(title)}</td><td>{bar(s / total)}</td>"
                   f"<td class=num>{s:.0f} s</td></tr>" for title, s in seconds.items()
                   if isinstance(s, (int, float)))
    took = f" (the whole run: {whole / 60:.0f} min)" if isinstance(whole, (int, float)) else ""
    return f"<h2>Where the time went{took}</h2><table>{rows}</table>"


def tiny_run_page(out_dir, n_examples=4) -> str:
    """out/tiny/report.html from what tiny_run.py left in out_dir: summary.json (the graded modes
    as a table, any other entry as it is), every */log.jsonl on one plot, a few held-out problems
    solved with and without execution side by side, links to the per-run pages."""
    def path(*names):
        return os.path.join(out_dir, *names)

    def load(*names):
        return read_json(path(*names)) if os.path.isfile(path(*names)) else {}
    parts = ["<h1>MathCoder in miniature: the tiny run</h1>",
             '<p class="note">A small Llama trained from scratch on synthetic LCE solutions (text, '
             "code, execution output) solves held-out problems with the generate-execute-continue "
             "loop: once with real execution (its code runs in the sandbox and the output is fed "
             "back), once with execution withheld (it must write the numbers itself). With "
             "--ablation, a second model is the paper's ablation: trained with loss on the "
             "execution output too. Below the table: the paper's data recipe (§2), run from "
             "this model as MathCoder-Initial.</p>",
             "<h2>Accuracy on the held-out problems</h2>",
             "<table><tr><th>model</th><th>execution</th><th colspan=2>accuracy</th>"
             "<th>right / n</th><th>every problem</th></tr>"]
    others = []
    summary = load("summary.json")
    for name, graded in summary.items():
        if not (isinstance(graded, dict) and {"accuracy", "n", "correct"} <= set(graded)):
            others.append((name, graded))
            continue
        model, how = mode_in_words(name)
        link = (f'<a href="{esc(name)}/report.html" title="{esc(name)}/report.html">'
                f"{esc(graded['n'])} problems</a>" if os.path.isfile(path(name, "report.html"))
                else esc(name))
        parts.append(f"<tr><td>{model}</td><td>{how}</td><td>{bar(graded['accuracy'])}</td>"
                     f"<td class=num>{pct(graded['accuracy'])}</td><td class=num>"
                     f"{esc(graded['correct'])} / {esc(graded['n'])}</td><td>{link}</td></tr>")
    parts.append("</table>")
    for name, value in others:
        if name == "data_recipe" and isinstance(value, dict):
            parts.append(recipe_html(value))
        elif name == "stage_seconds" and isinstance(value, dict):
            parts.append(stages_html(value, summary.get("seconds")))
        elif name == "seconds":       # shown with the stage table where there is one
            if "stage_seconds" not in summary:
                parts.append(f"<p>The whole run took {value / 60:.0f} min.</p>")
        else:                     # anything else tiny_run may add later: shown as it is
            parts.append(f"<p>{esc(name)}: {esc(value)}</p>")
    # the training curves: every folder with a log.jsonl, on one plot
    series = []
    links = []
    for run in sorted(os.listdir(out_dir)) + [os.path.join("recipe", "train_final"),
                                              os.path.join("recipe", "train_control")]:
        if not os.path.isfile(path(run, "log.jsonl")):
            continue
        on_execution = load(run, "config.json").get("train_on_execution")
        how = "loss on execution too" if on_execution else "masked"
        log = read_jsonl(path(run, "log.jsonl"))
        series.append((f"{run}/ ({how})", [(r["step"], r["loss"]) for r in log]))
        if os.path.isfile(path(run, "loss.svg")):
            links.append(f'<a href="{esc(run)}/loss.svg">{esc(run)}/loss.svg</a>')
    if series:
        parts.append("<h2>Training loss</h2>" + line_chart(
            series, "optimizer step", "loss per loss-carrying token (nats)", log_y=True,
            width=900) + '<p class="note">Each model\'s loss is averaged over its own '
            "loss-carrying tokens: the masked model's over text and code, the other's over the "
            "execution output too, whose digits it must guess."
            + (" Loss and learning rate per run: " + ", ".join(links) if links else "") + "</p>")
    # the same held-out problems, solved with and without execution
    pairs = []
    if all(os.path.isfile(path(mode, "results.jsonl"))
           for mode in ("with_execution", "without_execution")):
        without = {r["id"]: r for r in read_jsonl(path("without_execution", "results.jsonl"))}
        both = [(r, without[r["id"]]) for r in read_jsonl(path("with_execution", "results.jsonl"))
                if r["id"] in without]
        # first the problems that execution turns from wrong into right, then the others
        pairs = sorted(both, key=lambda pair: not (pair[0]["correct"] and not pair[1]["correct"]))
    if pairs:
        parts.append("<h2>The same problems with and without execution (masked model)</h2>")
    for with_exec, without_exec in pairs[:n_examples]:
        columns = "".join(
            f"<div><b>{label}</b> &middot; answer <code>{esc(r.get('pred'))}</code> "
            f"{verdict_html(r['correct'])}{blocks_html(_assistant_blocks(r))}</div>"
            for label, r in (("real execution", with_exec), ("execution withheld", without_exec)))
        parts.append(f'<details class="problem" open><summary><b class="mono">'
                     f"{esc(with_exec['id'])}</b> &middot; {esc(with_exec['question'])} &middot; "
                     f"reference <code>{esc(with_exec['reference'])}</code></summary>"
                     f'<div class="side">{columns}</div></details>')
    files = [f for f in ("summary.md", "summary.json", "data/train.jsonl", "data/test.jsonl",
                         "recipe/d1.jsonl", "recipe/initial/report.html",
                         "recipe/final/report.html") if os.path.isfile(path(f))]
    parts.append("<h2>Files</h2><p>" + " &middot; ".join(f'<a href="{f}">{f}</a>' for f in files)
                 + "</p>")
    return page("MathCoder tiny run", "\n".join(parts))


def write_report(out_dir, results) -> str:
    """OUT/summary.json (every figure), OUT/summary.md (the tables) and OUT/report.html; returns
    the tables."""
    table = tables(results)
    write_json(os.path.join(out_dir, "summary.json"), results)
    atomic_write(os.path.join(out_dir, "summary.md"), table + "\n")
    atomic_write(os.path.join(out_dir, "report.html"), tiny_run_page(out_dir))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a tiny_run.py folder (out/tiny)")
    args = parser.parse_args(argv)
    try:
        target = os.path.join(args.out_dir, "report.html")
        atomic_write(target, tiny_run_page(args.out_dir))
        print(target)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
