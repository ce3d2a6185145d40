"""Every top-level script answers --help (the project's promise to its users) without side effects."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["model.py", "tokenizer.py", "lce_data.py", "train.py", "sandbox.py", "infer.py",
           "eval.py", "tiny_run.py", "bench.py", "replay.py", "html_views.py", "recipe.py"]
LIBRARIES = ["notebook.py",    # below sandbox.py: what a cell shows (replay.py checks it)
             "pretty.py",      # below notebook.py: IPython's display of a value
             "storage.py",     # atomic writes and JSONL, used by every module
             "checkpoint.py",  # checkpoint files, below model.py (whose CLI loads and saves them)
             "parallel.py",    # tensor parallelism and replicas, below model.py, infer.py, eval.py
             "grader.py",      # how an answer is graded, below eval.py and recipe.py
             "server_client.py",   # HTTP to OpenAI-compatible servers, below infer.py, recipe.py
             "authors_grader.py",   # the authors' grader, rewritten: below grader.py
             "latex_sympy.py"]      # LaTeX -> SymPy under a time limit: below both graders


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage:") and script in p.stdout
    assert os.listdir(tmp_path) == []          # --help writes nothing


def test_every_script_is_listed():
    top = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    assert top == set(SCRIPTS) | set(LIBRARIES)
