"""The repository itself: imports point one way, lines fit 100 columns, every cited file exists, no
helper is written twice. These keep the code readable."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT = "plumbing"  # what serves the method, one folder down: skip it on a first read
TOP = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))
MODULES = TOP + sorted(f"{SUPPORT}.{f[:-3]}" for f in os.listdir(os.path.join(ROOT, SUPPORT))
                       if f.endswith(".py") and f != "__init__.py")


def source(name):
    """The text of module NAME ("grader", "plumbing.storage")."""
    return open(os.path.join(ROOT, *name.split(".")) + ".py", encoding="utf-8").read()


# Who may import whom: a module imports only modules of LOWER layers (imports inside functions too).
P = SUPPORT + "."
LAYERS = [
    [P + "storage", P + "pretty", P + "parallel", P + "latex_sympy", P + "server_client",
     P + "cli", P + "isolation", P + "cpu_kernels"],
    [P + "checkpoint", "tokenizer", P + "notebook", P + "html_views", P + "authors_grader",
     P + "answer_forms"],
    [P + "worker"],                                          # below sandbox.py: its processes
    ["model", "sandbox", P + "normalisation", P + "train_log", P + "terminal", P + "tiny_report"],
    ["lce_data", "grader", P + "memory_plan", P + "train_checkpoint"],
    [P + "train_checks", P + "question_files", P + "result_files"],
    [P + "serving"],
    ["train", "infer"],
    ["eval", P + "replay", P + "teacher"],
    ["recipe"],
    ["tiny_run", P + "bench"],                               # the drivers
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}


def project_imports(name):
    """(line, imported module) for every import of a project module anywhere in module NAME."""
    found = []
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == SUPPORT:
            found += [(node.lineno, f"{SUPPORT}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m in MODULES and m != name]


def test_every_module_has_a_layer():
    assert sorted(LAYER) == sorted(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_imports_point_down(name):
    upward = [f"{name}:{line} imports {m} (layer {LAYER[m]} >= {LAYER[name]})"
              for line, m in project_imports(name) if LAYER[m] >= LAYER[name]]
    assert not upward


def test_lines_fit_100_columns():
    long = [f"{name}:{n}" for name in MODULES
            for n, line in enumerate(source(name).splitlines(), 1) if len(line) > 100]
    assert not long


def _text_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("out", "__pycache__")]
        for f in files:
            if f.endswith((".py", ".md")):
                yield os.path.join(folder, f)


GENERATED = {"summary.md"}  # written by eval.py and tiny_run.py into a run's folder


def test_every_cited_markdown_file_exists():
    missing = []
    for path in _text_files():
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"[\w./-]*\w\.md\b", text):
            cited = m.group(0)
            if os.path.basename(cited) in GENERATED:
                continue
            here = [os.path.join(os.path.dirname(path), cited), os.path.join(ROOT, cited)]
            if not any(os.path.isfile(p) for p in here):
                missing.append(f"{os.path.relpath(path, ROOT)}: {cited}")
    assert not missing


def _functions(name):
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            yield node.name, node.lineno, body


def test_no_helper_is_written_twice():
    """Two functions in different modules with the same body (3+ statements, docstrings aside):
    one should call the other. main() and argument parsing are exempt."""
    seen, twice = {}, []
    for name in MODULES:
        for fn, line, body in _functions(name):
            if len(body) < 3 or fn in ("main", "parse_args"):
                continue
            key = "\n".join(ast.dump(stmt) for stmt in body)
            if key in seen and seen[key][0] != name:
                twice.append(f"{name}:{line} {fn} == {seen[key][0]}:{seen[key][1]}")
            seen.setdefault(key, (name, line))
    assert not twice


def _top_level_names(name):
    """What `module.NAME` may cite in NAME.py: its functions, classes and assigned names."""
    names = set()
    for node in ast.parse(source(name)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


FILE_SUFFIXES = {"py", "md", "model", "pt", "json", "jsonl", "html", "svg", "png"}  # tokenizer.model


def test_every_cited_module_name_exists():
    """`grader.is_equiv`, `infer.solve` ... in README.md and docs/ name something that is there."""
    names = {name.split(".")[-1]: _top_level_names(name) for name in MODULES}  # storage.x too
    cite = re.compile(r"\b(" + "|".join(names) + r")\.([A-Za-z_]\w*)")
    missing = []
    for path in [os.path.join(ROOT, "README.md")] + [
            os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
            if f.endswith(".md")]:
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            for module, name in cite.findall(line):
                if name not in FILE_SUFFIXES and name not in names[module]:
                    missing.append(f"{os.path.relpath(path, ROOT)}:{n}: {module}.{name}")
    assert not missing


def test_no_file_mentions_an_issue_number():
    """A reader cannot look up an issue number: say what the change does instead."""
    mentions = [f"{os.path.relpath(path, ROOT)}:{n}" for path in _text_files()
                for n, line in enumerate(open(path, encoding="utf-8"), 1)
                if re.search(r"\bissues? #?\d+", line, re.IGNORECASE)]
    assert not mentions


def test_the_top_level_is_the_method_in_few_lines():
    """A learner reads the top level to learn the method: each module readable in one sitting
    (<= 500 lines), all of them in an afternoon (<= 4,000); what serves them lives in plumbing/."""
    lines = {name: len(source(name).splitlines()) for name in TOP}
    assert {name: n for name, n in lines.items() if n > 500} == {}
    assert sum(lines.values()) <= 4000, lines


def test_the_readme_names_every_module_and_stays_short():
    """README.md: a line for each module (the top level in reading order, plumbing/ one line
    each), in at most 150 lines."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = [name for name in MODULES if f"`{name.replace('.', '/')}.py`" not in readme]
    assert not missing
    assert len(readme.splitlines()) <= 150
