"""
Grade MathCoder solutions: pull out the final answer, decide whether it equals the reference, and run or
re-score the paper's five benchmarks (METHOD.md §5-6).

The authors' grader (src/utils.py) compares with latex2sympy and accepts any numeric difference below 1e-2,
so it calls 0.333 equal to 1/3 and 100.004 equal to 100. This one uses only SymPy and is stricter:
  1. extract_answer: the last \\boxed{...} (nested braces), else "the answer is ...", else GSM8K's "#### x";
  2. normalise both strings (LaTeX decoration, units, degrees, percent, dollars, thousands separators, "x =");
  3. plain string / number equality (fast path, no SymPy);
  4. structure: tuples and intervals in order, sets and lists of solutions in any order, matrices by entry;
  5. each scalar: a small LaTeX -> SymPy translation, then exact comparison. A decimal counts as equal to an
     exact value only when it is that value correctly rounded to the places written AND carries about four
     significant figures (0.3333333 == 1/3, 0.333 != 1/3). Every SymPy call runs under a time limit.

    python eval.py score out/run/results.jsonl
    python eval.py run --model CKPT --dataset GSM8K --out out/gsm8k --limit 50
"""
import argparse
import functools
import json
import os
import re
import signal
import string
import sys
import threading
import time
import warnings
from fractions import Fraction

import sympy

import html_views

TIME_LIMIT = 2.0          # seconds for one SymPy parse or comparison
REL_TOL = 1e-4            # a rounded decimal must be this close (relatively) to count as equal
FAST_PATH = True          # string / plain-number equality before SymPy (False only to benchmark)
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "eval")  # from any cwd

# ----------------------------------------------------------------------------------------- extraction

def _braced(s, i):
    """s[i] == '{': return (the text inside the matching brace, index after it); nested braces allowed."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return None, len(s)


def _boxes(text):
    """The contents of every \\boxed{...} / \\fbox{...}, in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            inner = _braced(text, i)[0]
        else:                                            # "\boxed 5" form
            inner = re.match(r"[^\s$]*", text[i:]).group(0)
        if inner is not None:
            out.append(inner.strip())
    return out


def extract_answer(text, dataset=None):
    """The final answer a solution gives, or None. dataset='simuleq' takes the FIRST answer instead."""
    if text is None:
        return None
    text = str(text)
    boxes = _boxes(text)
    if dataset and dataset.lower() == "simuleq":
        # SimulEq asks for two or more unknowns but its reference holds only the first one; the authors
        # grade the first answer the solution gives, so we do too: the first box, first value inside it.
        first = boxes[0] if boxes else extract_answer(text)
        if first is None:
            return None
        parts = _split_top(_normalize(first)) if "," in first or "and" in first else []
        return (parts or [first])[0]
    if boxes:   # the last box: "\boxed{x+11} or \boxed{11+x}" restates one answer (references cut so too)
        return boxes[-1]
    m = re.findall(r"answer is[:\s]*(.+?)(?:\.?\s*$|\.\s|\n)", text, re.I | re.S)
    if m:
        return m[-1].strip().strip("$").strip()
    m = re.findall(r"####\s*([^\n]+)", text)                # GSM8K reference solutions
    return m[-1].strip() if m else None

# ------------------------------------------------------------------------------------- normalisation

def _unwrap(s, cmd):
    """\\cmd{X} -> X for every occurrence (nested braces handled)."""
    while True:
        i = s.find(cmd + "{")
        if i < 0:
            return s
        inner, end = _braced(s, i + len(cmd))
        if inner is None:
            return s
        s = s[:i] + inner + s[end:]


def _normalize(s):
    """A canonical string for an answer: the LaTeX decoration that never changes its value removed."""
    s = str(s).strip()
    for a, b in [("\n", " "), ("\\!", ""), ("\\sqrt{}", "\\sqrt"), ("{,}", ","), ("∞", "\\infty"),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("\\left", ""),
                 ("\\right", ""), ("\\displaystyle", ""), ("\\bigl", ""), ("\\bigr", ""), ("bmatrix", "pmatrix"),
                 ("\\mbox{", "\\text{"), ("\\$", ""), ("$", ""), ("\\%", ""), ("%", ""),
                 ("\\,", " "), ("\\;", " "), ("\\:", " "), ("\\ ", " "), ("\\quad", " "), ("~", " ")]:
        s = s.replace(a, b)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "", s)   # degrees: 30^\circ, 30^{\circ}, 30°
    for cmd in ("\\mathrm", "\\mathbf", "\\boldsymbol", "\\textbf"):
        s = _unwrap(s, cmd)
    s = re.sub(r"\\text\s*\{\s*(and|or)\s*\}|\s+and\s+", ", ", s)
    # \text{...}: units after a number are dropped ("10\text{ cm}^2"), a text-only answer is kept
    if re.search(r"\\text\s*\{", s):
        s = re.sub(r"\\text\s*\{", "\\\\text{", s)
        bare = re.sub(r"\\text\{[^{}]*\}(\^\{?\d\}?)?", "", s).strip()
        s = bare if re.search(r"\d", bare) and "\\text{" not in bare else _unwrap(s, "\\text")
    if "matrix" not in s:   # a "\ " space that lost its blank in the released references ("2,\1")
        s = re.sub(r"\\(?=[\d+\-(])", " ", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = _strip_lhs(s.split("\\approx")[-1].strip())             # "x = 3" -> "3"
    if "=" not in s:   # "10 inches", "18 dollars" -> number
        s = re.sub(r"^([-+]?[\d.,/]+)(?:\s+(?!pi\b)[a-zA-Z]{2,}\.?(?:\^\{?\d\}?)?)+$", r"\1", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)                          # 4210_{7} -> 4210_7
    s = re.sub(r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\0", s).replace(" ", "").replace("\0", " ")  # keep "\pi r"
    if re.fullmatch(r"\(([A-Za-z])\)", s):                         # (C) -> C
        s = s[1]
    return s


def _split_top(s, seps=","):
    """Split on separators that sit outside every bracket: '(1,2),3' -> ['(1,2)', '3']."""
    parts, depth, cur, i = [], 0, "", 0
    while i < len(s):
        c = s[i]
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            cur += s[i:i + 2]
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and c in seps:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur.strip())
    return [p for p in parts if p]

# ----------------------------------------------------------------------- time limit for SymPy calls

def _timed(fn, *args):
    """fn(*args), or None when it raises or runs past TIME_LIMIT. On the main thread a SIGALRM timer
    interrupts SymPy's Python code; elsewhere (threads, Windows) fn runs in a daemon worker thread that we
    stop waiting for (abandoned, not killed). Huge integer powers run in C where no signal reaches them, so
    _rebuild refuses those before evaluating."""
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            raise TimeoutError
        old = signal.signal(signal.SIGALRM, on_alarm)
        try:   # the outer try also catches an alarm that fires just as fn returns
            try:
                signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
                return fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        except Exception:          # TimeoutError, SymPy errors, RecursionError
            return None
    box = [None]

    def work():
        try:
            box[0] = fn(*args)
        except Exception:
            pass
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(TIME_LIMIT)
    return box[0]

# --------------------------------------------------------------------------- LaTeX -> SymPy (small)

_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos", "arctan"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "mu", "phi", "omega", "sigma", "rho", "tau"}
_NAMES = {"pi", "oo"} | _FUNCS | _GREEK
_ALIAS = {"infty": "oo", "cdot": "*", "times": "*", "div": "/"}    # LaTeX commands with a Python spelling
_TEX_NAMES = _NAMES | set(_ALIAS)
_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|([A-Za-z]+)|(\*\*|[-+*/(),]))")
_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def _arg(s, i):
    """One LaTeX argument at s[i]: a braced group or a single character/command."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("missing argument")
    if s[i] == "{":
        inner, end = _braced(s, i)
        if inner is None:
            raise ValueError("unbalanced braces")
        return inner, end
    m = re.match(r"\\[a-zA-Z]+|.", s[i:])
    return m.group(0), i + len(m.group(0))


def _tex(s):
    """LaTeX math -> a Python-like expression string (fractions, roots, powers, constants)."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            num, i = _arg(s, i + 5)
            den, i = _arg(s, i)
            whole = re.search(r"(?:^|[^\w.)}^_])(\d+)$", "".join(out))
            if whole and num.isdigit() and den.isdigit():      # mixed number: 2\frac12 = 5/2
                out = ["".join(out)[:whole.start(1)], f"({whole.group(1)}+{num}/{den})"]
            else:
                out.append(f"(({_tex(num)})/({_tex(den)}))")
        elif s.startswith("\\sqrt", i):
            i += 5
            n = None
            if i < len(s) and s[i] == "[":
                j = s.index("]", i)
                n, i = s[i + 1:j], j + 1
            arg, i = _arg(s, i)
            out.append(f"sqrt({_tex(arg)})" if n is None else f"(({_tex(arg)})**(1/({_tex(n)})))")
        elif s[i] == "\\":
            m = re.match(r"\\([a-zA-Z]+)", s[i:])
            if not m:
                raise ValueError(f"unsupported {s[i:i + 2]!r}")
            name = m.group(1)
            if name not in _TEX_NAMES:   # "\cotx", "\pir": the released references lost the space
                name = next((name[:k] for k in range(len(name) - 1, 1, -1) if name[:k] in _TEX_NAMES), None)
                if name is None:
                    raise ValueError(f"unsupported {m.group(0)}")
            out.append(f" {_ALIAS.get(name, name)} ")
            i += 1 + len(name)
        else:
            out.append({"{": "(", "}": ")", "^": "**", "[": "(", "]": ")"}.get(s[i], s[i]))
            i += 1
    return "".join(out)


def _py(s):
    """Tokenise, whitelist, add implicit multiplication; decimals become exact fractions. Returns
    (python string, fewest decimal places written or None)."""
    pos, toks, places = 0, [], None
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise ValueError(f"unsupported character {s[pos]!r}")
        pos = m.end()
        num, name, op = m.groups()
        if num:
            if "." in num:
                d = len(num.split(".")[1])
                places = d if places is None else min(places, d)
                num = f"({int(num.replace('.', '') or 0)}/1{'0' * d})" if d else num.rstrip(".")
            toks.append(("n", num))
        elif name:
            if name in _NAMES or len(name) == 1:
                toks.append(("f" if name in _FUNCS else "v", name))
            elif len(name) <= 2:                      # "xy" -> x*y
                toks += [("v", c) for c in name]
            else:
                raise ValueError(f"unknown word {name!r}")
        else:
            toks.append(("o", op))
    out = []
    for k, (kind, t) in enumerate(toks):
        if out and (kind in "nvf" or t == "("):
            pk, pt = toks[k - 1]
            if pk in "nv" or pt == ")":
                out.append("*")
        out.append(t)
        if kind == "f" and (k + 1 == len(toks) or toks[k + 1][1] != "("):   # "sin x", "\sqrt2" -> f(x)
            if k + 1 == len(toks):
                raise ValueError("function without argument")
            out.append("(")
            toks[k + 1] = (toks[k + 1][0], toks[k + 1][1] + ")")
    return "".join(out), places


_SYMPY_NS = {"Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational,
             "Symbol": sympy.Symbol, "Add": sympy.Add, "Mul": sympy.Mul, "Pow": sympy.Pow}
_LOCALS = {**{c: sympy.Symbol(c) for c in string.ascii_letters}, **{g: sympy.Symbol(g) for g in _GREEK},
           "i": sympy.I, "I": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "sqrt": sympy.sqrt, "log": sympy.log,
           "ln": sympy.log, "exp": sympy.exp, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
           "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos,
           "arctan": sympy.atan}


def _rebuild(e):
    """Evaluate an unevaluated SymPy tree bottom-up, refusing numeric powers too big to compute (they would
    run inside C integer code, where the SIGALRM time limit cannot interrupt them)."""
    if not e.args:
        return e
    args = [_rebuild(a) for a in e.args]
    if not all(isinstance(a, sympy.Expr) for a in args):   # e.g. a tuple "(1,2)" inside a power
        raise ValueError("not a scalar expression")
    if e.func is sympy.Pow and args[1].is_Number and abs(args[1]) > 10000 and args[0].is_number:
        raise ValueError("power too large")
    return e.func(*args)


@functools.lru_cache(maxsize=100_000)
def _to_sympy(s):
    """Normalised answer string -> (SymPy expression, decimal places); raises when it is not math we read
    (callers go through _timed, which turns errors and timeouts into None)."""
    py, places = _py(_tex(s))
    with warnings.catch_warnings():   # SymPy's deprecation chatter on odd input (which we then reject)
        warnings.simplefilter("ignore")
        expr = sympy.parse_expr(py, local_dict=dict(_LOCALS), global_dict={"__builtins__": {}, **_SYMPY_NS},
                                evaluate=False)
        return _rebuild(expr), places


# ------------------------------------------------------------------------------------------ equality

def _close(diff, scale, places_a, places_b):
    """Decimal rule: |diff| within half a unit of the last place written (by the less precise side, when both
    are decimals) AND within REL_TOL of the size. places None = an exact value."""
    places = min((p for p in (places_a, places_b) if p is not None), default=None)
    if diff == 0:
        return True
    if places is None:                       # two exact forms that simplify() could not reconcile
        return diff <= 1e-12 * max(1.0, scale)
    return diff <= 0.5 * 10.0 ** -places * (1 + 1e-9) and diff <= REL_TOL * scale


def _fast_number(s):
    """'3', '-0.25', '7/2', '\\frac{7}{2}' -> (Fraction, decimal places or None); else None. No SymPy."""
    m = re.fullmatch(r"([-+]?)\\frac\{(\d+)\}\{(\d+)\}|([-+]?\d+)/(\d+)", s)
    if m:
        num, den = (int(m[1] + m[2]), int(m[3])) if m[2] else (int(m[4]), int(m[5]))
        return (Fraction(num, den), None) if den else None
    if _NUM.fullmatch(s):
        return Fraction(s.rstrip(".")), (len(s.split(".")[1]) if "." in s and s.split(".")[1] else None)
    return None


def _sympy_equal(a, b):
    (ea, pa), (eb, pb) = a, b
    if ea == eb:
        return True
    if any(x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) for x in (ea, eb)):
        return False
    if ea.free_symbols or eb.free_symbols:        # expressions: exact algebra only
        return sympy.expand(ea - eb) == 0 or sympy.simplify(ea - eb) == 0
    # numbers: evaluate to 30 digits instead of simplify() (much faster; exact forms agree to ~1e-30)
    # (SymPy Floats, not Python floats: 2^2005 must not overflow to inf and then "equal" everything)
    diff = abs(sympy.N(ea - eb, 30))
    return bool(_close(diff, max(abs(sympy.N(ea, 30)), abs(sympy.N(eb, 30))), pa, pb))


def _scalar_equiv(a, b):
    fa, fb = (_fast_number(a), _fast_number(b)) if FAST_PATH else (None, None)
    if fa and fb:
        return _close(float(abs(fa[0] - fb[0])), float(max(abs(fa[0]), abs(fb[0]))), fa[1], fb[1])
    if a.count("=") == 1 and b.count("=") == 1:      # equations: lhs - rhs equal up to a constant factor
        (la, ra), (lb, rb) = a.split("="), b.split("=")
        ea, eb = _timed(_to_sympy, f"{la}-({ra})"), _timed(_to_sympy, f"{lb}-({rb})")
        ratio = _timed(lambda: sympy.simplify(ea[0] / eb[0])) if ea and eb else None
        return ratio is not None and not ratio.free_symbols and ratio != 0
    if "=" in a or "=" in b:
        return False
    ea = _timed(_to_sympy, a)
    eb = _timed(_to_sympy, b) if ea else None
    return bool(ea and eb and _timed(_sympy_equal, ea, eb))


def _wraps(s):
    """True when the bracket opening s closes at its very end: '(1,2)' yes, '(1)+(2)' no."""
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k < len(s) - 1:
            return False
    return depth == 0


def _strip_lhs(s):
    """'x=3' -> '3', 'x\\in[2,5)' -> '[2,5)': a lone variable on the left names the answer."""
    return re.sub(r"^(?:[a-zA-Z]|\\[a-z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in)\s*(?=\S)", "", s)


def _structure(s):
    """(kind, open+close brackets, items) for compound answers, else None. "1 \\pm \\sqrt2" is the set of its
    two values (expanded by _expand_pm when compared)."""
    m = re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s)
    if m:   # rows split by \\ (the released references have "\" only), entries by &
        rows = [r for r in re.split(r"\\\\|\\(?![a-zA-Z{}])", m.group(1)) if r]
        cells = [r.split("&") for r in rows]
        return "matrix", f"{len(cells)}x{len(cells[0]) if cells else 0}", [e for r in cells for e in r]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", "", _split_top(s[2:-2])
    if "\\cup" in s:
        return "set", "", s.split("\\cup")
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and _wraps(s) and len(_split_top(s[1:-1])) >= 2:
        return "seq", s[0] + s[-1], _split_top(s[1:-1])
    parts = _split_top(s, ",;")
    return ("set", "", parts) if len(parts) >= 2 or "\\pm" in s else None


def _expand_pm(items):
    out = []
    for it in items:
        out += [it.replace("\\pm", "+", 1), it.replace("\\pm", "-", 1)] if it.count("\\pm") == 1 else [it]
    return out


def _equiv_norm(a, b):
    if FAST_PATH and a.lower() == b.lower():   # text answers ("Navin", "(C)") ignore case
        return True
    sa, sb = _structure(a), _structure(b)
    if sa is None and sb is None:
        return _scalar_equiv(a, b)
    if sa is None or sb is None:
        return False
    (ka, ba, ia), (kb, bb, ib) = sa, sb
    if ka != kb or ba != bb:
        return False
    ia, ib = [_strip_lhs(x) for x in ia], [_strip_lhs(x) for x in ib]
    if ka == "set":                     # unordered: match every item once
        ia, ib = _expand_pm(ia), _expand_pm(ib)
        if len(ia) != len(ib):
            return False
        left = list(ib)
        for x in ia:
            j = next((j for j, y in enumerate(left) if _equiv_norm(x, y)), None)
            if j is None:
                return False
            left.pop(j)
        return True
    return len(ia) == len(ib) and all(_equiv_norm(x, y) for x, y in zip(ia, ib))


def is_equiv(pred, ref):
    """True when the answer `pred` equals the reference `ref` (strings or numbers)."""
    if pred is None or ref is None or str(pred).strip() == "":
        return False
    a, b = _normalize(pred), _normalize(ref)
    if _equiv_norm(a, b):
        return True
    # "10,080" is a number with a thousands separator or a list of two; the released references dropped
    # every space, so "45,135" may be the list. Try the number reading second.
    a2, b2 = (re.sub(r"^([-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)$", lambda m: m.group(1).replace(",", ""), x)
              for x in (a, b))
    return (a2, b2) != (a, b) and _equiv_norm(a2, b2)

# ------------------------------------------------------------------------------------------ datasets

DATASETS = {"gsm8k": ["GSM8K_test_post.jsonl"], "svamp": ["SVAMP_test_post.jsonl"],
            "mathematics": ["mathematics_test_post.jsonl"], "simuleq": ["simuleq_test_post.jsonl"],
            "minival": ["minival_test_post.jsonl"], "math": [f"MATH_{k}_test_post.jsonl" for k in range(1, 6)],
            **{f"math_{k}": [f"MATH_{k}_test_post.jsonl"] for k in range(1, 6)}}   # MATH by level
PAPER = {  # METHOD.md §6, accuracy % (greedy, one sample)
    "MathCoder-L-7B": {"gsm8k": 64.2, "math": 23.3, "svamp": 71.5, "mathematics": 46.9, "simuleq": 47.5},
    "MathCoder-CL-7B": {"gsm8k": 67.8, "math": 30.2, "svamp": 70.7, "mathematics": 55.8, "simuleq": 49.6},
    "MathCoder-L-13B": {"gsm8k": 72.6, "math": 29.9, "svamp": 76.9, "mathematics": 54.7, "simuleq": 62.3},
    "MathCoder-CL-13B": {"gsm8k": 74.1, "math": 35.9, "svamp": 78.0, "mathematics": 62.5, "simuleq": 60.7},
    "MathCoder-CL-34B": {"gsm8k": 81.7, "math": 45.2, "svamp": 82.5, "mathematics": 75.9, "simuleq": 65.8},
    "MathCoder-L-70B": {"gsm8k": 83.9, "math": 45.1, "svamp": 84.9, "mathematics": 74.4, "simuleq": 77.0}}


def _read_jsonl(path):
    """Records of a JSONL file; a bad line is an error naming file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return out


@functools.lru_cache(maxsize=None)
def _math_levels(data_dir):
    """MATH id ("test/algebra/1.json") -> difficulty level 1-5."""
    return _read_jsonl(os.path.join(data_dir, "MATH_subject_level.jsonl"))[0]


def _user_text(rec):
    return "".join(c["content"] for m in rec.get("messages", []) if m["role"] == "user" for c in m["content"])


def load_dataset(name, data_dir=DATA_DIR, subject=None, level=None):
    """A benchmark in the official schema -> [{"id", "question", "answer", "solution"} + MATH's "subject",
    "level"]. name: one of DATASETS, any case."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    out = []
    for fname in DATASETS[key]:
        path = os.path.join(data_dir, fname)
        for i, rec in enumerate(_read_jsonl(path)):
            gt = rec.get("ground_truth")
            if not isinstance(gt, dict) or "answer" not in gt:
                raise ValueError(f"{path}:{i + 1}: field ground_truth.answer missing")
            item = {"id": str(rec.get("id", f"{key}/{i}")), "question": _user_text(rec),
                    "answer": gt["answer"], "solution": gt.get("solution", "")}
            if item["id"].startswith("test/"):       # MATH ids look like test/algebra/1.json
                item["subject"], item["level"] = item["id"].split("/")[1], _math_levels(data_dir).get(item["id"])
            out.append(item)
    if subject:
        out = [p for p in out if p.get("subject") == subject]
    if level:
        out = [p for p in out if p.get("level") == int(level)]
    return out


def grade(solution, reference, dataset=None):
    """(extracted answer, correct?) for one solution, following each data set's protocol."""
    dataset = (dataset or "").lower()
    pred, ref = extract_answer(solution, dataset), str(reference)
    if dataset == "mathematics":   # references may be lists such as "[3, 5]"
        ref = ref[1:-1] if ref.startswith("[") and ref.endswith("]") else ref
        if pred and pred.startswith("[") and pred.endswith("]"):
            pred = pred[1:-1]
    if dataset == "gsm8k" and pred and "\\" not in pred:
        pred = re.sub(r"[a-zA-Z]", "", pred)            # answers are numbers: the authors drop letters
    return pred, is_equiv(pred, ref)

# ------------------------------------------------------------------------------------------- scoring

def _record_parts(rec, where):
    """(solution text, reference, id) from our results or the authors' released format (debug_result)."""
    if "debug_result" in rec:   # authors: text/code/execution parts after the system and user messages
        sol = "\n".join(str(d.get("content", "")) for d in rec["debug_result"]
                        if d.get("role") not in ("system", "user"))
        ref = rec.get("ground_truth", {}).get("answer")
    else:
        sol, ref = rec.get("solution"), rec.get("reference", rec.get("ground_truth", {}).get("answer"))
    if sol is None or ref is None:
        raise ValueError(f"{where}: needs solution+reference (ours) or debug_result+ground_truth.answer")
    return sol, ref, rec.get("id")


def _summary(dataset, oks):
    correct = sum(map(bool, oks))
    return {"dataset": dataset, "n": len(oks), "correct": correct, "accuracy": correct / len(oks) if oks else 0.0}


def math_table(rows):
    """Markdown subject x level accuracy table for MATH rows [(subject, level, correct)]."""
    cells = {}
    for subj, lvl, ok in rows:
        for k in [(subj, lvl), (subj, "all"), ("all", lvl), ("all", "all")]:
            c = cells.setdefault(k, [0, 0])
            c[0], c[1] = c[0] + ok, c[1] + 1
    cols = [1, 2, 3, 4, 5, "all"]
    lines = ["| subject | " + " | ".join(f"L{c}" if c != "all" else "all" for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for subj in sorted({k[0] for k in cells} - {"all"}) + ["all"]:
        vals = [f"{100 * cells[(subj, c)][0] / cells[(subj, c)][1]:.1f}" if (subj, c) in cells else "-"
                for c in cols]
        lines.append(f"| {subj} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def score(path, dataset=None, out=None, data_dir=DATA_DIR):
    """Re-grade every record of a results file; returns the summary dict."""
    recs = _read_jsonl(path)
    if dataset is None:   # guess from the file name (authors: SVAMP_test_result-...jsonl)
        base = os.path.basename(path).lower()
        dataset = next((d for d in DATASETS if base.startswith(d)), None)
    graded, math_rows = [], []
    for n, rec in enumerate(recs, 1):
        sol, ref, pid = _record_parts(rec, f"{path}:{n}")
        pred, ok = grade(sol, ref, dataset)
        graded.append({**rec, "pred": pred, "reference": ref, "correct": ok})
        if pid and str(pid).startswith("test/"):
            math_rows.append((pid.split("/")[1], _math_levels(data_dir).get(pid), ok))
    summary = _summary(dataset, [g["correct"] for g in graded])
    print(f"{path}: {summary['correct']}/{summary['n']} correct, accuracy {100 * summary['accuracy']:.2f}%")
    if math_rows:
        print(math_table(math_rows))
    if out:
        atomic_write(out, "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in graded))
    return summary

# ------------------------------------------------------------------------------- generation (run)

def atomic_write(path, text):
    """Write a file so that a crash leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def done_keys(path, key="id"):
    """The `key` of every record already in a results JSONL (resuming). A torn last line (the run died
    mid-write) is cut off."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    keep = data[:data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return {json.loads(line)[key] for line in keep.decode("utf-8").splitlines() if line.strip()}


def run_loop(problems, out_dir, solve_fn, dataset, chunk=64, model_name="this run"):
    """Solve every problem not yet in out_dir/results.jsonl, appending one record per problem as it
    finishes (one write + flush + fsync of a whole line), then write summary.json and summary.md.
    solve_fn(questions, on_result) -> list of dicts with "solution" and "messages"; on_result(i, result)
    may be called as each finishes. Tests pass a fake solve_fn; `run` passes infer.solve."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.jsonl")
    done = done_keys(path)
    todo = [p for p in problems if p["id"] not in done]
    print(f"[eval] {dataset}: {len(done)} done before, {len(todo)} to solve", file=sys.stderr)
    t0 = time.time()
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            written = set()

            def on_result(i, res):
                if i in written:
                    return
                p = batch[i]
                pred, ok = grade(res["solution"], p["answer"], dataset)
                rec = {"id": p["id"], "question": p["question"], "solution": res["solution"],
                       "messages": res.get("messages"), "pred": pred, "reference": p["answer"], "correct": ok}
                rec.update({k: p[k] for k in ("subject", "level") if k in p})
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                written.add(i)
            results = solve_fn([p["question"] for p in batch], on_result)
            for i, res in enumerate(results):   # solvers that do not stream
                on_result(i, res)
            n_new = start + len(batch)
            rate = n_new / max(time.time() - t0, 1e-9)
            print(f"[eval] {len(done) + n_new}/{len(problems)}  {rate:.2f} problems/s  "
                  f"ETA {(len(todo) - n_new) / max(rate, 1e-9) / 60:.1f} min", file=sys.stderr)
    ids = {p["id"] for p in problems}
    recs = [r for r in _read_jsonl(path) if r["id"] in ids]
    summary = _summary(dataset, [r["correct"] for r in recs])
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    lines = [f"| model | {dataset} accuracy % |", "|---|---|",
             f"| {model_name} (n={len(recs)}) | {100 * summary['accuracy']:.1f} |"]
    lines += [f"| {m} (paper) | {v.get(dataset.lower(), '-')} |" for m, v in PAPER.items()]
    math_rows = [(r["subject"], r.get("level"), r["correct"]) for r in recs if r.get("subject")]
    if math_rows:
        lines += ["", math_table(math_rows)]
    atomic_write(os.path.join(out_dir, "summary.md"), "\n".join(lines) + "\n")
    print(f"[eval] {dataset}: {summary['correct']}/{len(recs)} = {100 * summary['accuracy']:.2f}%", file=sys.stderr)
    return summary


def run(args):
    import torch
    import infer                     # imported only when generating: scoring needs no model code
    from model import Transformer
    from sandbox import SandboxPool
    from tokenizer import Tokenizer
    problems = load_dataset(args.dataset, args.data_dir, args.subject, args.level)[:args.limit or None]
    tok = Tokenizer.from_checkpoint(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = Transformer.from_pretrained(args.model, device=device).eval()
    cfg = infer.GenConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, max_rounds=args.max_rounds)

    with SandboxPool(args.batch_size) as pool:    # one pool for the whole run: workers start once

        def solve_fn(questions, on_result):
            return infer.solve(model, tok, questions, cfg=cfg, pool=pool, on_result=on_result)
        return run_loop(problems, args.out, solve_fn, args.dataset, chunk=4 * args.batch_size,
                        model_name=os.path.basename(os.path.normpath(args.model)))


# ------------------------------------------------------------------------------------------- report

def report(paths, out=None, dataset=None, data_dir=DATA_DIR):
    """A page to browse a run (html_views.report_page): RUN_DIR/report.html from its results.jsonl
    and summary.json, or one page for result files, ours or the authors' released format
    (debug_result). Records without a verdict are graded here as `score` does; a file named
    *-correct / *-wrong (as in data/official_outs/) also gives the official verdict. Returns the
    page's path."""
    import lce_data                  # lazy: it imports torch, which scoring does not need
    run_dir = paths[0] if len(paths) == 1 and os.path.isdir(paths[0]) else None
    files = [os.path.join(run_dir, "results.jsonl")] if run_dir else list(paths)
    summary = None
    if run_dir and os.path.isfile(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    stem = re.sub(r"(-correct|-wrong)?\.jsonl$", "", os.path.basename(files[0]))
    out = out or (os.path.join(run_dir, "report.html") if run_dir else stem + ".html")
    dataset = dataset or (summary or {}).get("dataset") or next(
        (w for w in re.split(r"[_.-]", stem.lower()) if w in DATASETS), None)
    rows = []
    for path in files:
        official = {"correct": True, "wrong": False}.get(path[:-len(".jsonl")].rsplit("-", 1)[-1])
        for n, rec in enumerate(_read_jsonl(path), 1):
            sol, ref, pid = _record_parts(rec, f"{path}:{n}")
            if "correct" not in rec:            # the authors' files: graded here
                pred, ok = grade(sol, ref, dataset)
                rec = {**rec, "pred": pred, "correct": ok}
            msgs = rec.get("messages") or []
            if "debug_result" in rec:
                try:
                    msgs = lce_data.normalize_record(rec)["messages"]
                except lce_data.DataError:      # e.g. cut off after an execution: shown as is
                    msgs = [{"role": "assistant", "content": [
                        {"type": d["role"], "content": str(d.get("content"))}
                        for d in rec["debug_result"] if d.get("role") in lce_data.BLOCKS]}]
            blocks = [(b["type"], b["content"]) for m in msgs if m["role"] == "assistant"
                      for b in m["content"]] or lce_data.parse_assistant(sol) or [("text", sol)]
            verdicts = {"strict (ours)": bool(rec["correct"])}
            verdicts.update({k[len("correct_"):]: v for k, v in rec.items()
                             if k.startswith("correct_") and isinstance(v, bool)})
            if official is not None:
                verdicts["official (file name)"] = official
            question = rec.get("question") or _user_text(rec) or _user_text({"messages": msgs})
            row = {"id": pid if pid is not None else f"{os.path.basename(path)}:{n}",
                   "question": question,
                   "blocks": blocks, "answers": {"extracted (ours)": rec.get("pred")},
                   "reference": ref, "verdicts": verdicts}
            row["answers"].update({f"extracted ({k[len('pred_'):]})": v for k, v in rec.items()
                                   if k.startswith("pred_")})
            if "model_answer" in rec:                  # the authors' files: their extraction
                row["answers"]["extracted (authors' file)"] = rec["model_answer"]
            if rec.get("subject") or str(pid).startswith("test/"):      # MATH
                row["subject"] = rec.get("subject") or str(pid).split("/")[1]
                row["level"] = rec.get("level") or _math_levels(data_dir).get(pid)
            rows.append(row)
    paper = [(m, v[dataset], m.lower() in stem.lower()) for m, v in PAPER.items() if dataset in v]
    page = html_views.report_page(f"{run_dir or stem}: {dataset}", rows, summary, paper)
    atomic_write(out, page)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("score", help="re-grade a results file (ours or the authors' debug_result format)")
    sp.add_argument("results")
    sp.add_argument("--dataset", help="gsm8k/math/svamp/mathematics/simuleq/minival (default: from file name)")
    sp.add_argument("--out", help="write the re-graded records here (JSONL)")
    sp.add_argument("--data-dir", default=DATA_DIR)
    hp = sub.add_parser("report", help="an HTML page: accuracy, MATH heat map, every problem")
    hp.add_argument("paths", nargs="+", help="a run directory (results.jsonl), or result files: "
                    "ours or the authors', e.g. data/official_outs/MathCoder-CL-34b_GSM8K-*.jsonl")
    hp.add_argument("--out", help="default: RUN_DIR/report.html, or NAME.html here for files")
    hp.add_argument("--dataset", help="grading protocol of records without a verdict (default: "
                    "from summary.json or the file name)")
    hp.add_argument("--data-dir", default=DATA_DIR)
    rp = sub.add_parser("run", help="generate with a checkpoint and grade (resumable)")
    rp.add_argument("--model", required=True, help="checkpoint directory (HF layout + tokenizer.model)")
    rp.add_argument("--dataset", required=True)
    rp.add_argument("--out", required=True, help="output directory: results.jsonl, summary.json/.md")
    rp.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    rp.add_argument("--batch-size", type=int, default=16)
    rp.add_argument("--max-new-tokens", type=int, default=512, help="per block (METHOD.md §4)")
    rp.add_argument("--max-rounds", type=int, default=16)
    rp.add_argument("--subject", help="MATH only: e.g. algebra")
    rp.add_argument("--level", type=int, help="MATH only: 1-5")
    rp.add_argument("--device", help="default: cuda when available, else cpu")
    rp.add_argument("--data-dir", default=DATA_DIR)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "score":
            score(args.results, args.dataset, args.out, args.data_dir)
        elif args.cmd == "report":
            print(report(args.paths, args.out, args.dataset, args.data_dir))
        else:
            run(args)
    except (ValueError, OSError) as e:   # bad input: one clear line naming the file (and line), no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
