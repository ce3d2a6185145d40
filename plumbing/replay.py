"""replay.py: run the authors' released solutions through our sandbox and compare what it shows.

After each of its code blocks the model read what the authors' IPython kernel showed
(docs/method.md §4). sandbox.py, notebook.py and pretty.py rebuild that display without IPython;
this script checks the rebuild against the ground truth: the 10 released runs in
data/official_outs/ (4,347 solutions, 10,299 code cells). Each solution's code blocks run in order
in a fresh sandbox, and each produced block is compared with the released one,
whitespace-normalised and to the character.

    python -m plumbing.replay data/official_outs/*.jsonl  # the table in README.md; ~30 s on 2 cores

Not compared: a released timeout and every later cell of its solution (their kernel was still
busy with the timed-out cell, so those blocks say nothing about display; see notebook.TIMEOUT),
and a cell that times out here only (a slower machine). Each difference gets a cause
(difference()); the thresholds that must hold are in tests/test_replay.py.
"""
import argparse
import collections
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from lce_data import debug_result_messages
from plumbing.notebook import ANSI, RULE, TIMEOUT
from sandbox import MODES, SandboxPool
from plumbing.storage import numbered_jsonl, write_jsonl


def released_cells(path):
    """[(record's line, [(code, released execution block), ...]), ...] for each solution of a
    released run (the authors' format, read by lce_data.debug_result_messages): each code block
    and the execution block that follows it."""
    solutions = []
    for line, record in numbered_jsonl(path):
        pairs = []
        for message in debug_result_messages(record, f"{path}:{line}"):
            blocks = message["content"] if message["role"] == "assistant" else []
            pairs += [(code["content"], shown["content"]) for code, shown in zip(blocks, blocks[1:])
                      if code["type"] == "code" and shown["type"] == "execution"]
        solutions.append((line, pairs))
    return solutions


# ---------------------------------------------------------------------------------- comparing
def normalise(text):
    """For comparing execution blocks: colour codes removed, whitespace runs made one space."""
    return " ".join(ANSI.sub("", text).split())


_ERROR = re.compile(RULE + r" \w[\w.]* *Traceback \(most recent call last\)"  # VerboseTB's header
                    r"|Cell In\[\d+\], line \d+\n.*\n *\^\n\w+: "        # a SyntaxError
                    r"|^An exception has occurred, use %tb", re.M)           # SystemExit


def is_error(text):
    """An execution block that shows an error in one of IPython's layouts."""
    return bool(_ERROR.search(ANSI.sub("", text)))


def cell_headers(text):
    return re.findall(r"Cell In\[\d+\], line \d+", ANSI.sub("", text))


def final_line(text):
    lines = ANSI.sub("", text).strip().splitlines()
    return lines[-1].strip() if lines else ""


# The same error, worded differently by the authors' Python 3.9 / SymPy 1.12 and by ours:
# (their final line, ours), as regular expressions.
REWORDED = [
    (r"SyntaxError: invalid syntax", r"SyntaxError: .+"),  # Python 3.10's parser names the problem
    (r"(IndentationError: expected an indented block)", r"\1 after .+"),            # Python 3.10
    (r"(TypeError: cannot determine truth value of Relational)", r"\1: .+"),       # SymPy 1.13
    (r"TypeError: can't take floor of complex number\.",                           # Python 3.10
     r"TypeError: unsupported operand type\(s\) for //: .*'complex'.*"),
    (r"TypeError: can't mod complex numbers\.",
     r"TypeError: unsupported operand type\(s\) for %: .*'complex'.*"),
    (r"(\w+Error: .*) \(/\S+\.py\)", r"\1 \(/\S+\.py\)"),   # a module's path in an ImportError
]


def same_error(theirs, ours):
    """Same final line, or the same error as reworded by a newer Python or SymPy (REWORDED)."""
    for pattern, ours_pattern in REWORDED:
        match = re.fullmatch(pattern, theirs)
        if match is None:
            continue
        kept = re.escape(match[1]) if match.groups() else ""
        if re.fullmatch(ours_pattern.replace(r"\1", kept), ours):
            return True
    return theirs == ours


def difference(theirs, ours):
    """Why a produced block differs from the released one, as far as a rule can tell."""
    if normalise(ours) == normalise(theirs):
        return "only whitespace differs (line breaks: the pretty printer)"
    if ours == TIMEOUT:
        return "timed out here only (machine speed)"
    if "characters cut ...]" in ours:
        return "cut here (sandbox max_output)"
    if "ModuleNotFoundError: No module named" in ours:
        return "module not installed here"
    if is_error(theirs) and final_line(theirs) == final_line(ours):
        return "same error; library paths, line numbers or source differ"
    if is_error(theirs) and same_error(final_line(theirs), final_line(ours)):
        return "same error, reworded by a newer Python or SymPy"
    return "other"


# ---------------------------------------------------------------------------------- replaying
def replay(paths, pool, workers=4, progress=None):
    """Run every released solution's code blocks, in order, each solution in a fresh sandbox from
    `pool` (acquire() resets one, release() returns it), and compare each produced block with the
    released one (colour codes removed; "same" whitespace-normalised, and to the character). Returns
    a dict of counts per file and the list of cells that differ, each with its cause."""
    jobs = [(path, record, pairs) for path in paths for record, pairs in released_cells(path)]

    def run(job):  # in a thread: each waits on its own worker process
        path, record, pairs = job
        sandbox = pool.acquire()
        produced = []  # (code, theirs, ours); ours None: not run, their kernel was still busy
        try:
            for code, theirs in pairs:
                busy = produced and TIMEOUT in produced[-1][1]
                produced.append((code, theirs, None if busy else sandbox.run(code)))
        finally:
            pool.release(sandbox)
        return path, record, produced

    stats = {path: collections.Counter() for path in paths}
    diffs = []
    start = time.monotonic()
    with ThreadPoolExecutor(workers) as executor:
        for done, (path, record, produced) in enumerate(executor.map(run, jobs), 1):
            counts = stats[path]
            for cell, (code, theirs, ours) in enumerate(produced, 1):
                kind = _count(counts, theirs, ours)
                if kind and ours != ANSI.sub("", theirs).strip():
                    diffs.append(dict(file=os.path.basename(path), record=record, cell=cell,
                                      kind=kind, why=difference(theirs, ours), code=code,
                                      released=theirs, ours=ours))
            if progress and (done % 500 == 0 or done == len(jobs)):
                rate = done / (time.monotonic() - start)
                progress(f"replay: {done}/{len(jobs)} solutions, {rate:.0f}/s, "
                         f"ETA {(len(jobs) - done) / rate:.0f} s")
    return {os.path.basename(path): stats[path] for path in paths}, diffs


def _count(counts, theirs, ours):
    """Add one cell to `counts`; its kind ("value" or "error"), or None if it is not compared."""
    counts["cells"] += 1
    if ours is None:
        counts["kernel busy (theirs)"] += 1
        return None
    if TIMEOUT in theirs:
        counts["timeout (theirs)"] += 1
        counts["timeout same"] += ours == TIMEOUT
        return None
    if ours == TIMEOUT:
        counts["timeout (ours only)"] += 1
        return None
    kind = "error" if is_error(theirs) else "value"
    counts[kind] += 1
    counts[kind + " same"] += normalise(ours) == normalise(theirs)
    counts[kind + " same to the character"] += ours == ANSI.sub("", theirs).strip()
    if kind == "error":
        counts["error final line same"] += final_line(ours) == final_line(theirs)
        counts["error final line same or reworded"] += same_error(final_line(theirs),
                                                                  final_line(ours))
        headers = cell_headers(theirs)
        counts["error with header"] += bool(headers)
        counts["error header same"] += bool(headers) and cell_headers(ours) == headers
    return kind


def summary_table(stats, diffs):
    """replay()'s figures as Markdown: a row per file and a total, then the differences by cause."""
    def pct(part, whole):
        return f"{100 * part / whole:.1f}" if whole else "-"
    total = sum(stats.values(), collections.Counter())
    out = ["| file | cells | values | same % (to the character) | errors | same % (to the "
           "character) | final line same % (reworded ok) | Cell In header same % | not compared "
           "(timeouts) |", "|---" * 9 + "|"]
    for name, counts in [*stats.items(), ("all", total)]:
        values = counts["value"]
        errors = counts["error"]
        skipped = sum(counts[why] for why in ("timeout (theirs)", "kernel busy (theirs)",
                                              "timeout (ours only)"))
        cells = [name, counts["cells"], values,
                 f"{pct(counts['value same'], values)} "
                 f"({pct(counts['value same to the character'], values)})",
                 errors,
                 f"{pct(counts['error same'], errors)} "
                 f"({pct(counts['error same to the character'], errors)})",
                 f"{pct(counts['error final line same'], errors)} "
                 f"({pct(counts['error final line same or reworded'], errors)})",
                 pct(counts["error header same"], counts["error with header"]),
                 skipped]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    out += ["", "| differing cells, by cause | values | errors |", "|---|---|---|"]
    causes = collections.Counter((diff["why"], diff["kind"]) for diff in diffs)
    by_count = sorted({why for why, _ in causes},
                      key=lambda why: (-causes[why, "value"] - causes[why, "error"], why))
    for why in by_count:
        out.append(f"| {why} | {causes[why, 'value']} | {causes[why, 'error']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description="Run the code blocks of the authors' released "
                                 "solutions in the sandbox and compare each execution block with "
                                 "the released one; a Markdown table on stdout.")
    ap.add_argument("files", nargs="+", metavar="FILE",
                    help="released runs in the authors' format (data/official_outs/*.jsonl)")
    ap.add_argument("--workers", type=int, default=4, help="sandboxes at once (default 4)")
    ap.add_argument("--isolation", choices=MODES, help="default: the strongest available")
    ap.add_argument("--diffs", metavar="OUT.jsonl",
                    help="also write every differing cell (code, released, ours, cause) here")
    args = ap.parse_args()
    try:
        with SandboxPool(args.workers, isolation=args.isolation) as pool:  # the authors' 6 s
            stats, diffs = replay(args.files, pool, args.workers,
                                  lambda message: print(message, file=sys.stderr))
    except OSError as e:
        sys.exit(f"error: {e.filename}: {e.strerror}")
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.diffs:
        write_jsonl(args.diffs, diffs)
    print(summary_table(stats, diffs))


if __name__ == "__main__":
    main()
