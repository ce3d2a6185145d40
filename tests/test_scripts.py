"""Every script answers --help (the project's promise to its users) without side effects."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["model.py", "tokenizer.py", "lce_data.py", "train.py", "sandbox.py", "infer.py",
           "eval.py", "tiny_run.py", "recipe.py",
           "plumbing/bench.py", "plumbing/replay.py", "plumbing/html_views.py",
           "plumbing/tiny_report.py"]  # run as python -m plumbing.x
LIBRARIES = ["grader.py",                  # how an answer is graded, below eval.py and recipe.py
             "plumbing/__init__.py",       # what the folder holds: skip it on a first read
             "plumbing/notebook.py",       # below sandbox.py: what a cell shows (replay checks it)
             "plumbing/worker.py",         # below sandbox.py: its template and worker processes
             "plumbing/isolation.py",      # below worker.py: what keeps the code from the rest
             "plumbing/pretty.py",         # below notebook.py: IPython's display of a value
             "plumbing/cpu_kernels.py",    # faster CPU kernels for model.py's decode step
             "plumbing/storage.py",        # atomic writes and JSONL, used by every module
             "plumbing/checkpoint.py",     # checkpoint files, below model.py
             "plumbing/parallel.py",       # tensor parallelism and replicas
             "plumbing/cli.py",            # a config dataclass as flags (train.py, infer.py)
             "plumbing/memory_plan.py",    # GPU memory of a training step (train.py --plan)
             "plumbing/train_checkpoint.py",  # train.py's sharded checkpoints, resume, export
             "plumbing/train_log.py",      # what train.py reports: log.jsonl, progress, summary
             "plumbing/train_checks.py",   # train.py's flags checked before anything is built
             "plumbing/server_client.py",  # HTTP to OpenAI-compatible servers
             "plumbing/serving.py",        # infer.py's loop with the model behind a server
             "plumbing/terminal.py",       # infer.py's solutions shown on a terminal
             "plumbing/question_files.py",  # infer.py --file: questions in, results out
             "plumbing/result_files.py",   # eval.py's files: both result formats, summary.md
             "plumbing/authors_grader.py",  # the authors' grader, rewritten: below grader.py
             "plumbing/latex_sympy.py",     # LaTeX -> SymPy under a time limit: below both graders
             "plumbing/normalisation.py",   # an answer's canonical string: below grader.py
             "plumbing/answer_forms.py",    # tuples, sets, relations, intervals: below grader.py
             "plumbing/teacher.py"]         # recipe.py's teacher behind a server, its command line


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    if script.startswith("plumbing/"):  # run as a module from anywhere: python -m plumbing.bench
        argv = ["-m", script[:-3].replace("/", ".")]
    else:
        argv = [os.path.join(ROOT, script)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, *argv, "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage:") and os.path.basename(script) in p.stdout
    assert os.listdir(tmp_path) == []          # --help writes nothing


def test_every_script_is_listed():
    top = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    top |= {"plumbing/" + f for f in os.listdir(os.path.join(ROOT, "plumbing"))
            if f.endswith(".py")}
    assert top == set(SCRIPTS) | set(LIBRARIES)
