"""
Grade MathCoder solutions: pull out the final answer, decide whether it equals the reference, and
run or re-score the paper's five benchmarks (docs/method.md §5-6). Every solution gets two verdicts:

strict (the headline): exact SymPy equivalence, stricter than the authors' 1e-2 tolerance (which
calls 0.333 equal to 1/3 and 100.004 equal to 100):
  1. extract_answer: the last \\boxed{...} (nested braces), else "the answer is ...", else GSM8K's
     "#### x";
  2. normalise both strings (LaTeX decoration, units, degrees, percent, dollars, thousands
     separators, "x =", a "\\text{label} =" or "label:" before the value);
  3. plain string / number equality (fast path, no SymPy);
  4. structure: tuples and intervals in order, sets and lists of solutions in any order, matrices by
     entry;
  5. each scalar: a small LaTeX -> SymPy translation, then exact comparison. A decimal counts as
     equal to an exact value only when it is that value correctly rounded to the places written AND
     carries about four significant figures (0.3333333 == 1/3, 0.333 != 1/3). Every SymPy call runs
     under a time limit.
paper protocol: the authors' grader (their src/evaluate.py and src/utils.py) rewritten, the one
behind the paper's numbers; see the section "the authors' grader" for what it does and where it
deviates.

No answer can crash or stall grading: grade() returns a verdict within about GRADE_TIME_LIMIT
whatever the strings (answers over MAX_ANSWER_CHARS are compared as plain strings; every SymPy call
is timed); a failure inside grading is a wrong verdict, and the result line says why (grade_error).

Each data set's protocol, in both (checked against the released verdicts in data/official_outs/):
  * SimulEq: the reference holds the first unknown of two or more; the answer is the first \\boxed{}
    of the solution's last block that has one, taken whole ("\\boxed{65, 40}" against 65 is wrong);
  * GSM8K: letters are dropped from a plain answer, after its left-hand side ("x = 160" -> 160);
  * Mathematics: references may be lists "[3, 5]"; strict compares their items (a "[...]" answer
    too).
  * GSM8K, SVAMP, MATH, minival: the last \\boxed{} (strict), the first box of the last block
    holding one (paper protocol, as the authors' extraction did).

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
from storage import atomic_write, done_keys, merge_parts, part_path

TIME_LIMIT = 2.0          # seconds for one SymPy parse or comparison
GRADE_TIME_LIMIT = 10.0   # seconds for one grade() call, all its SymPy calls together
# longer answers are compared as plain strings (the longest reference has 78)
MAX_ANSWER_CHARS = 1000
REL_TOL = 1e-4            # a rounded decimal must be this close (relatively) to count as equal
FAST_PATH = True          # string / plain-number equality before SymPy (False only to benchmark)
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "eval")  # from any cwd

# --------------------------------------------------------------------------------------- extraction

def _braced(s, i):
    """s[i] == '{': return (the text inside the matching brace, index after it); nested braces
    allowed."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return None, len(s)


_BARE_BOX = re.compile(r"[^\s$]*")
_NON_SPACE = re.compile(r"\S")


def _box_spans(text):
    """Where the contents of every \\boxed{...} / \\fbox{...} (or "\\boxed 5") lie, as (start, end),
    in order; empty ones ("put it in \\boxed{}") left out. Every brace is paired in one pass, so a
    megabyte of nested or unclosed boxes costs one pass, not one per box."""
    partner, open_at = {}, []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            open_at.append(m.start())
        elif open_at:
            partner[open_at.pop()] = m.start()
    spans = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            span = (i + 1, partner[i]) if i in partner else None
        else:                                            # "\boxed 5" form
            span = (i, _BARE_BOX.match(text, i).end())
        if span and _NON_SPACE.search(text, *span):
            spans.append(span)
    return spans


def _box(text, span):
    return text[span[0]:span[1]].strip()


_BLOCK_MARK = re.compile(
    r"<\|(?:text|code|execution|endofblock|endofmessage|system|user|assistant)\|>")


def _first_box_of_last_boxed_block(text):
    """The first \\boxed{} of the last LCE block that has one, or None."""
    for block in reversed(_BLOCK_MARK.split(text)):
        spans = _box_spans(block)
        if spans:
            return _box(block, spans[0])
    return None


def extract_answer(text, dataset=None):
    """The final answer a solution gives, or None: the last \\boxed{}. SimulEq (dataset='simuleq'):
    the first \\boxed{} of the last block that has one, whole (docs/method.md §5)."""
    if text is None:
        return None
    text = str(text)
    spans = _box_spans(text)
    if dataset and dataset.lower() == "simuleq" and spans:
        # SimulEq asks for two or more unknowns; its reference holds the first. The authors graded
        # the solution's last text block (their `completion`) by its first box, taken whole:
        # "\boxed{65, 40}" against 65 is wrong, and so is a later block's "\boxed{16} ... \boxed{7}"
        # against 7.
        return _first_box_of_last_boxed_block(text)
    # the last box: "\boxed{x+11} or \boxed{11+x}" restates one answer (references cut so too)
    if spans:
        return _box(text, spans[-1])
    m = re.findall(r"answer is[:\s]*(.+?)(?:\.?\s*$|\.\s|\n)", text, re.I | re.S)
    if m:
        return m[-1].strip().strip("$").strip()
    m = re.findall(r"####\s*([^\n]+)", text)                # GSM8K reference solutions
    return m[-1].strip() if m else None

# ------------------------------------------------------------------------------------ normalisation

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
    """A canonical string for an answer: the LaTeX decoration that never changes its value
    removed."""
    s = str(s).strip()
    for a, b in [("\n", " "), ("\\!", ""), ("\\sqrt{}", "\\sqrt"), ("{,}", ","), ("∞", "\\infty"),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
                 ("\\left", ""), ("\\right", ""), ("\\displaystyle", ""), ("\\bigl", ""),
                 ("\\bigr", ""), ("bmatrix", "pmatrix"), ("\\mbox{", "\\text{"), ("\\$", ""),
                 ("$", ""), ("\\%", ""), ("%", ""), ("\\,", " "), ("\\;", " "), ("\\:", " "),
                 ("\\ ", " "), ("\\quad", " "), ("~", " ")]:
        s = s.replace(a, b)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "", s)   # degrees: 30^\circ, 30^{\circ}, 30°
    for cmd in ("\\mathrm", "\\mathbf", "\\boldsymbol", "\\textbf"):
        s = _unwrap(s, cmd)
    # "\text{Cost of a taco} = 0.90": a label
    s = re.sub(r"^\\text\s*\{[^{}]*\}\s*=\s*", "", s)
    s = re.sub(r"\\text\s*\{\s*(and|or)\s*\}|\s+and\s+", ", ", s)
    # \text{...}: units after a number are dropped ("10\text{ cm}^2"), a text-only answer is kept
    if re.search(r"\\text\s*\{", s):
        s = re.sub(r"\\text\s*\{", "\\\\text{", s)
        bare = re.sub(r"\\text\{[^{}]*\}(\^\{?\d\}?)?", "", s).strip()
        s = bare if re.search(r"\d", bare) and "\\text{" not in bare else _unwrap(s, "\\text")
    if "matrix" not in s:   # a "\ " space that lost its blank in the released references ("2,\1")
        s = re.sub(r"\\(?=[\d+\-(])", " ", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = re.sub(r"^[A-Za-z][A-Za-z ]*:\s*(?=[-+\d.])", "", s)      # "Number of rooms: 64": a label
    s = _strip_lhs(s.split("\\approx")[-1].strip())             # "x = 3" -> "3"
    if "=" not in s:   # "10 inches", "18 dollars" -> number
        s = re.sub(r"^([-+]?[\d.,/]+)(?:\s+(?!pi\b)[a-zA-Z]{2,}\.?(?:\^\{?\d\}?)?)+$", r"\1", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)                          # 4210_{7} -> 4210_7
    # keep "\pi r"
    s = re.sub(r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\0", s).replace(" ", "").replace("\0", " ")
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

class GradeTimeout(Exception):
    pass


_deadline = threading.local()   # .at: when the grade() call running on this thread must be done


def _time_left():
    """Seconds left for this SymPy call: TIME_LIMIT, cut to what the running grade() call has left;
    GradeTimeout once that is spent."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return TIME_LIMIT
    if time.monotonic() >= at:
        raise GradeTimeout(f"grading took longer than {GRADE_TIME_LIMIT} s")
    return min(TIME_LIMIT, at - time.monotonic())


def _timed(fn, *args):
    """fn(*args), or None when it raises or runs past TIME_LIMIT; past the running grade() call's
    deadline it raises GradeTimeout instead. On the main thread a SIGALRM timer interrupts SymPy's
    Python code; elsewhere (threads, Windows) fn runs in a daemon worker thread that we stop waiting
    for (abandoned, not killed). Huge integer powers run in C where no signal reaches them, so
    _rebuild refuses those before evaluating."""
    limit = _time_left()
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            raise TimeoutError
        old = signal.signal(signal.SIGALRM, on_alarm)
        try:   # the outer try also catches an alarm that fires just as fn returns
            try:
                signal.setitimer(signal.ITIMER_REAL, limit)
                out = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        except Exception:          # TimeoutError, SymPy errors, RecursionError
            out = None
    else:
        box = [None]

        def work():
            try:
                box[0] = fn(*args)
            except Exception:
                pass
        t = threading.Thread(target=work, daemon=True)
        t.start()
        t.join(limit)
        out = box[0]
    _time_left()                   # the grade() call's time ran out during this one: say so
    return out

# --------------------------------------------------------------------------- LaTeX -> SymPy (small)

_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos",
          "arctan"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "mu", "phi", "omega", "sigma", "rho", "tau"}
_NAMES = {"pi", "oo"} | _FUNCS | _GREEK
# LaTeX commands with a Python spelling
_ALIAS = {"infty": "oo", "cdot": "*", "times": "*", "div": "/"}
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
                name = next((name[:k] for k in range(len(name) - 1, 1, -1)
                             if name[:k] in _TEX_NAMES), None)
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
        # "sin x", "\sqrt2" -> f(x)
        if kind == "f" and (k + 1 == len(toks) or toks[k + 1][1] != "("):
            if k + 1 == len(toks):
                raise ValueError("function without argument")
            out.append("(")
            toks[k + 1] = (toks[k + 1][0], toks[k + 1][1] + ")")
    return "".join(out), places


_SYMPY_NS = {"Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational,
             "Symbol": sympy.Symbol, "Add": sympy.Add, "Mul": sympy.Mul, "Pow": sympy.Pow}
_LOCALS = {**{c: sympy.Symbol(c) for c in string.ascii_letters},
           **{g: sympy.Symbol(g) for g in _GREEK},
           "i": sympy.I, "I": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "sqrt": sympy.sqrt,
           "log": sympy.log, "ln": sympy.log, "exp": sympy.exp, "sin": sympy.sin, "cos": sympy.cos,
           "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
           "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan}


def _rebuild(e):
    """Evaluate an unevaluated SymPy tree bottom-up, refusing numeric powers too big to compute
    (they would run inside C integer code, where the SIGALRM time limit cannot interrupt them)."""
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
    """Normalised answer string -> (SymPy expression, decimal places); raises when it is not math we
    read (callers go through _timed, which turns errors and timeouts into None)."""
    py, places = _py(_tex(s))
    # SymPy's deprecation chatter on odd input (which we then reject)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expr = sympy.parse_expr(py, local_dict=dict(_LOCALS),
                                global_dict={"__builtins__": {}, **_SYMPY_NS}, evaluate=False)
        return _rebuild(expr), places


# ----------------------------------------------------------------------------------------- equality

def _close(diff, scale, places_a, places_b):
    """Decimal rule: |diff| within half a unit of the last place written (by the less precise side,
    when both are decimals) AND within REL_TOL of the size. places None = an exact value."""
    places = min((p for p in (places_a, places_b) if p is not None), default=None)
    if diff == 0:
        return True
    if places is None:                       # two exact forms that simplify() could not reconcile
        return diff <= 1e-12 * max(1.0, scale)
    return diff <= 0.5 * 10.0 ** -places * (1 + 1e-9) and diff <= REL_TOL * scale


def _fast_number(s):
    """'3', '-0.25', '7/2', '\\frac{7}{2}' -> (Fraction, decimal places or None); else None. No
    SymPy."""
    m = re.fullmatch(r"([-+]?)\\frac\{(\d+)\}\{(\d+)\}|([-+]?\d+)/(\d+)", s)
    if m:
        num, den = (int(m[1] + m[2]), int(m[3])) if m[2] else (int(m[4]), int(m[5]))
        return (Fraction(num, den), None) if den else None
    if _NUM.fullmatch(s):
        places = len(s.split(".")[1]) if "." in s and s.split(".")[1] else None
        return Fraction(s.rstrip(".")), places
    return None


def _sympy_equal(a, b):
    (ea, pa), (eb, pb) = a, b
    if ea == eb:
        return True
    if any(x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) for x in (ea, eb)):
        return False
    if ea.free_symbols or eb.free_symbols:        # expressions: exact algebra only
        return sympy.expand(ea - eb) == 0 or sympy.simplify(ea - eb) == 0
    # numbers: evaluate to 30 digits instead of simplify() (much faster; exact forms agree to
    # ~1e-30) (SymPy Floats, not Python floats: 2^2005 must not overflow to inf and then "equal"
    # everything)
    diff = abs(sympy.N(ea - eb, 30))
    return bool(_close(diff, max(abs(sympy.N(ea, 30)), abs(sympy.N(eb, 30))), pa, pb))


def _scalar_equiv(a, b):
    fa, fb = (_fast_number(a), _fast_number(b)) if FAST_PATH else (None, None)
    if fa and fb:
        scale = max(abs(fa[0]), abs(fb[0]))
        if scale > 10 ** 300:                         # beyond floats: equal only when exactly equal
            return fa[0] == fb[0]
        return _close(float(abs(fa[0] - fb[0])), float(scale), fa[1], fb[1])
    # equations: lhs - rhs equal up to a constant factor
    if a.count("=") == 1 and b.count("=") == 1:
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
    """(kind, open+close brackets, items) for compound answers, else None. "1 \\pm \\sqrt2" is the
    set of its two values (expanded by _expand_pm when compared)."""
    m = re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s)
    if m:   # rows split by \\ (the released references have "\" only), entries by &
        rows = [r for r in re.split(r"\\\\|\\(?![a-zA-Z{}])", m.group(1)) if r]
        cells = [r.split("&") for r in rows]
        shape = f"{len(cells)}x{len(cells[0]) if cells else 0}"
        return "matrix", shape, [e for r in cells for e in r]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", "", _split_top(s[2:-2])
    if "\\cup" in s:
        return "set", "", s.split("\\cup")
    if (len(s) > 2 and s[0] in "([" and s[-1] in ")]" and _wraps(s)
            and len(_split_top(s[1:-1])) >= 2):
        return "seq", s[0] + s[-1], _split_top(s[1:-1])
    parts = _split_top(s, ",;")
    return ("set", "", parts) if len(parts) >= 2 or "\\pm" in s else None


def _expand_pm(items):
    out = []
    for it in items:
        if it.count("\\pm") == 1:
            out += [it.replace("\\pm", "+", 1), it.replace("\\pm", "-", 1)]
        else:
            out.append(it)
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
    if max(len(str(pred)), len(str(ref))) > MAX_ANSWER_CHARS:   # no answer is that long: no SymPy
        return str(pred).strip() == str(ref).strip()
    a, b = _normalize(pred), _normalize(ref)
    if _equiv_norm(a, b):
        return True
    # "10,080" is a number with a thousands separator or a list of two; the released references
    # dropped every space, so "45,135" may be the list. Try the number reading second.
    a2, b2 = (re.sub(r"^([-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)$",
                     lambda m: m.group(1).replace(",", ""), x) for x in (a, b))
    return (a2, b2) != (a, b) and _equiv_norm(a2, b2)

# ---------------------------------------------------------------- the authors' grader, side by side
# The paper's numbers were graded by the authors' src/evaluate.py with src/utils.py
# (find_math_answer, is_equal). Rewritten here so that a user sees their verdict ("paper protocol")
# beside the strict one. Their quirks are kept on purpose (they move the numbers); each is named
# where it happens. Deviations:
#   * latex2sympy (not a dependency here) is replaced by this file's LaTeX -> SymPy reader
#     (_to_sympy), with latex2sympy's thousands separators ("3,500") added; LaTeX it reads and ours
#     does not (or the other way round) can flip a verdict;
#   * their tuple evaluation prints each element with Python's eval of SymPy's string; here an
#     integer element prints as an int and any other as a float of SymPy's value;
#   * answers over MAX_ANSWER_CHARS are compared as strings only (they would reach latex2sympy).

# their strip_units list, in their order. A missing comma in their source fuses 'kb/h' and 'slices',
# and the empty unit '' removes every '^2' and '^3' from an answer ("x^2" -> "x").
_AUTHORS_UNITS = ("cookies", "screws", "square", "degree", "pints", "mb/h", "mb/s", "kb/hslices",
                  "oranges", "persecond", "ies/hour", "eephants/hour", "liters", "sq.ft.",
                  "inches", "hours", "feet", "minutes", "seconds", "cents", "mph", "meters",
                  "yearsod", "rams", "centimeters", "kiorams", "years", "weeks", "miesperhour",
                  "miles", "units", "km", "mm", "ms", "am", "mbperhour", "mg", "kg", "", "cm", "€",
                  "ml", "pm", "gb", "")


def _authors_units(s):
    for unit in _AUTHORS_UNITS:
        s = s.replace(unit + "^3", "").replace(unit + "^2", "").replace(unit, "")
        s = s.replace("{}^3", "").replace("{}^2", "").replace("{}", "")
    for unit in ("m", "p", "g", "l", "s", "ft"):
        s = s.replace(f"{{{unit}}}^3", "").replace(f"{{{unit}}}^2", "").replace(f"{{{unit}}}", "")
    return s.replace("ft^3", "").replace("ft^2", "")


def _authors_fix_sqrt(s):
    """'\\sqrt2' -> '\\sqrt{2}': one character after \\sqrt gets braces."""
    first, *rest = s.split("\\sqrt")
    return first + "".join("\\sqrt{" + p[0] + "}" + p[1:] if p and p[0] != "{" else "\\sqrt" + p
                           for p in rest)


def _authors_fix_fracs(s):
    """'\\frac12' -> '\\frac{1}{2}', '\\frac1{2}' -> '\\frac{1}{2}'; unchanged if a \\frac lacks 2
    chars."""
    first, *rest = s.split("\\frac")
    for p in rest:
        if p[:1] == "{":
            first += "\\frac" + p
        elif len(p) < 2:
            return s
        elif p[1] != "{":
            first += "\\frac{" + p[0] + "}{" + p[1] + "}" + p[2:]
        else:
            first += "\\frac{" + p[0] + "}" + p[1:]
    return first


def _authors_strip(s):
    """Their _strip_string: LaTeX decoration off, '=' and '\\approx' (when there is exactly one)
    cut."""
    for a, b in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                 ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
                 ("$", "")):
        s = s.replace(a, b)
    # units; never seen: find_math_answer removed \text before
    s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")   # (a bare % stays)
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
    if s.count("=") == 1:
        s = s.split("=")[1]
    if s.count("\\approx") == 1:
        s = s.split("\\approx")[1]
    if "sqrt" in s:
        s = _authors_fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:                          # (fractions are fixed only next to a root)
        s = _authors_fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?[1-9]\d*|0)/(-?[1-9]\d*|0)", s)   # "3/4" written as int/int
    return f"\\frac{{{m[1]}}}{{{m[2]}}}" if m else s


def authors_answer(text):
    """Their find_math_answer: lower-case; what follows the last ' is '; from the first 'oxed{' to
    the last '}' (their greedy regex), cut at a '}' that comes before any '{'; after the last '='
    and '\\approx'; LaTeX decoration and units stripped."""
    s = str(text).lower().split(" is ")[-1].replace("{}", "")
    start, end = s.find("oxed{"), s.rfind("}")
    ans = s[start + 5:end] if 0 <= start and start + 5 <= end else s
    if "}" in ans and ("{" not in ans or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    for a, b in (("answer:", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"),
                 ("\n", ""), ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix")):
        ans = ans.replace(a, b)
    ans = ans.split("\\)")[0].split("\\]")[0].split("\\(")[-1].split("\\[")[-1]
    ans = ans.replace("..</s>", "")
    return _authors_units(_authors_strip(ans))


def _authors_sympy(s):
    """latex2sympy's stand-in: our reader, plus its thousands separators."""
    return _timed(_to_sympy, re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s))


def _authors_tuple(s):
    """Their eval_tuple: '(a,b,...)' or '[a,b,...]' with every element replaced by its numeric value
    ('infty', 'a', '-a' kept); the string unchanged when an element is not a number."""
    items = s[1:-1].split(",")
    if len(items) < 2 or s[0] + s[-1] not in ("()", "[]"):
        return s
    out = []
    for item in items:
        if "infty" in item or item in ("a", "-a"):
            out.append(item)
            continue
        e = _authors_sympy(item)
        try:               # as their eval(str(latex2sympy(item))) prints it
            out.append(str(int(e[0])) if e[0].is_Integer and "." not in item else str(float(e[0])))
        except (TypeError, ValueError, OverflowError):   # not a number (or past 4300 digits)
            return s
    return s[0] + ",".join(out) + s[-1]


def authors_equal(a, b):
    """Their is_equal: equal after lower-casing and removing spaces; or after evaluating tuples; or
    equal as SymPy expressions; or, for numbers, |a - b| < 1e-2."""
    a, b = str(a).lower().replace(" ", ""), str(b).lower().replace(" ", "")
    if not a or not b:
        return False
    # (a deviation: no SymPy on very long text)
    if a == b or max(len(a), len(b)) > MAX_ANSWER_CHARS:
        return a == b
    a, b = _authors_tuple(a), _authors_tuple(b)
    if a == b:
        return True
    ea = _authors_sympy(a)
    eb = _authors_sympy(b) if ea else None
    if not ea or not eb:
        return False
    if ea[0] == eb[0]:
        return True
    if ea[0].free_symbols or eb[0].free_symbols:   # their numeric checks fail on symbols
        return False
    return bool(_timed(lambda: bool(abs(sympy.N(ea[0] - eb[0], 30)) < 1e-2)))


def _grade_authors(solution, reference, dataset):
    # Their `completion`: the released verdicts were computed on an answer that an extraction step,
    # not in their public code, had pulled out of the solution; the first \\boxed{} of the last
    # block that has one reproduces it (else the last block, which is what their public script's
    # `completion` holds).
    completion = _first_box_of_last_boxed_block(str(solution))
    if completion is None:
        blocks = [b for b in _BLOCK_MARK.split(str(solution)) if b.strip()]
        completion = blocks[-1] if blocks else ""
    pred = authors_answer(completion)
    if dataset == "gsm8k":
        pred = re.sub(r"[a-zA-Z]", "", pred)   # their GSM8K rule: letters dropped
    return pred, authors_equal(authors_answer(str(reference)), pred)

# ----------------------------------------------------------------------------------------- datasets

DATASETS = {"gsm8k": ["GSM8K_test_post.jsonl"], "svamp": ["SVAMP_test_post.jsonl"],
            "mathematics": ["mathematics_test_post.jsonl"], "simuleq": ["simuleq_test_post.jsonl"],
            "minival": ["minival_test_post.jsonl"],
            "math": [f"MATH_{k}_test_post.jsonl" for k in range(1, 6)],
            **{f"math_{k}": [f"MATH_{k}_test_post.jsonl"] for k in range(1, 6)}}   # MATH by level
_COLUMNS = ("gsm8k", "math", "svamp", "mathematics", "simuleq")
PAPER = {m: dict(zip(_COLUMNS, accuracy)) for m, accuracy in [   # docs/method.md §6, accuracy %
    ("MathCoder-L-7B", (64.2, 23.3, 71.5, 46.9, 47.5)),            # (greedy, one sample)
    ("MathCoder-CL-7B", (67.8, 30.2, 70.7, 55.8, 49.6)),
    ("MathCoder-L-13B", (72.6, 29.9, 76.9, 54.7, 62.3)),
    ("MathCoder-CL-13B", (74.1, 35.9, 78.0, 62.5, 60.7)),
    ("MathCoder-CL-34B", (81.7, 45.2, 82.5, 75.9, 65.8)),
    ("MathCoder-L-70B", (83.9, 45.1, 84.9, 74.4, 77.0))]}


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


def _message_text(rec, role):
    """The text of a record's `role` messages (messages schema), or None when it has none."""
    texts = [c["content"] for m in rec.get("messages", []) if m["role"] == role
             for c in m["content"]]
    return "".join(texts) if texts else None


def load_dataset(name, data_dir=DATA_DIR, subject=None, level=None):
    """A benchmark in the official schema -> [{"id", "question", "system", "answer", "solution"} +
    MATH's "subject", "level"]. "system" is the record's own system text (the paper's prompt,
    docs/method.md §4; None when the record has none). name: one of DATASETS, any case."""
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
            item = {"id": str(rec.get("id", f"{key}/{i}")),
                    "question": _message_text(rec, "user") or "",
                    "system": _message_text(rec, "system"), "answer": gt["answer"],
                    "solution": gt.get("solution", "")}
            if item["id"].startswith("test/"):       # MATH ids look like test/algebra/1.json
                item["subject"] = item["id"].split("/")[1]
                item["level"] = _math_levels(data_dir).get(item["id"])
            out.append(item)
    if subject:
        out = [p for p in out if p.get("subject") == subject]
    if level:
        out = [p for p in out if p.get("level") == int(level)]
    return out


def grade(solution, reference, dataset=None, protocol="strict"):
    """(extracted answer, correct?) for one solution, following each data set's protocol.
    protocol="strict": this file's exact equivalence (the headline); "authors": the authors' grader,
    the one behind the paper's numbers (their 1e-2 tolerance, their extraction). Never raises on
    what a model wrote and returns within about GRADE_TIME_LIMIT: a failure or a timeout is a wrong
    answer."""
    pred, ok, _ = _grade_checked(solution, reference, dataset, protocol)
    return pred, ok


def _grade_checked(solution, reference, dataset, protocol):
    """(pred, correct, None), or (None, False, why) when grading failed or ran out of time."""
    if protocol not in ("strict", "authors"):
        raise ValueError(f"protocol must be 'strict' or 'authors', not {protocol!r}")
    dataset = (dataset or "").lower()
    _deadline.at = time.monotonic() + GRADE_TIME_LIMIT
    try:
        if protocol == "authors":
            return (*_grade_authors(solution, reference, dataset), None)
        return (*_grade_strict(solution, reference, dataset), None)
    except Exception as e:   # RecursionError, MemoryError, GradeTimeout, a bug: never the whole run
        return None, False, f"{type(e).__name__}: {e}"[:300]
    finally:
        _deadline.at = None


def _grade_strict(solution, reference, dataset):
    pred, ref = extract_answer(solution, dataset), str(reference)
    if dataset == "mathematics":   # references may be lists such as "[3, 5]"
        ref = ref[1:-1] if ref.startswith("[") and ref.endswith("]") else ref
        if pred and pred.startswith("[") and pred.endswith("]"):
            pred = pred[1:-1]
    if dataset == "gsm8k" and pred and "\\" not in pred:
        # answers are numbers: the authors drop letters; a left-hand side goes first ("x = 160")
        pred = re.sub(r"[a-zA-Z]", "", _strip_lhs(pred.strip()))
    return pred, is_equiv(pred, ref)

# ------------------------------------------------------------------------------------------ scoring

def verdicts(solution, reference, dataset=None):
    """Both verdicts for one solution, as a result line stores them: pred / correct (strict, the
    headline) and pred_authors / correct_authors (the authors' grader, behind the paper's
    numbers)."""
    pred, ok, error = _grade_checked(solution, reference, dataset, "strict")
    pred_a, ok_a, error_a = _grade_checked(solution, reference, dataset, "authors")
    out = {"pred": pred, "correct": ok, "pred_authors": pred_a, "correct_authors": ok_a}
    errors = [f"{name}: {e}" for name, e in (("strict", error), ("paper protocol", error_a)) if e]
    if errors:   # graded wrong because grading itself failed: say why
        out["grade_error"] = "; ".join(errors)
    return out


def _record_parts(rec, where):
    """(solution as an LCE string, reference, id) from our results or the authors' output format:
    `debug_result`, items keyed "role" (their released runs, which append the extracted answer as
    one more item, equal to `completion`: dropped) or keyed "type" (their public inference
    script)."""
    if "debug_result" in rec:
        items = rec["debug_result"]
        if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
            raise ValueError(f"{where}: field debug_result: expected a list of objects")
        blocks = [(it.get("type") or it.get("role"), str(it.get("content", ""))) for it in items]
        blocks = [(kind, text) for kind, text in blocks if kind not in ("system", "user")]
        if blocks and "type" not in items[-1] and blocks[-1][1] == rec.get("completion"):
            blocks = blocks[:-1]
        sol = "".join(f"<|{kind}|>{text}<|endofblock|>" for kind, text in blocks)
        ref = (rec.get("ground_truth") or {}).get("answer")
    else:
        sol = rec.get("solution")
        ref = rec.get("reference", (rec.get("ground_truth") or {}).get("answer"))
    if sol is None or ref is None:
        raise ValueError(f"{where}: needs solution+reference (ours) or "
                         "debug_result+ground_truth.answer")
    return sol, ref, rec.get("id")


def _summary(dataset, recs):
    """Accuracy of graded records under both protocols."""
    n = len(recs)
    correct = sum(bool(r["correct"]) for r in recs)
    correct_authors = sum(bool(r["correct_authors"]) for r in recs)
    return {"dataset": dataset, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
            "correct_authors": correct_authors,
            "accuracy_authors": correct_authors / n if n else 0.0}


def _summary_line(s):
    return (f"strict {s['correct']}/{s['n']} = {100 * s['accuracy']:.2f}%, "
            f"paper protocol {s['correct_authors']}/{s['n']} = {100 * s['accuracy_authors']:.2f}%")


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
        vals = [f"{100 * cells[(subj, c)][0] / cells[(subj, c)][1]:.1f}"
                if (subj, c) in cells else "-" for c in cols]
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
        graded.append({**rec, "reference": ref, **verdicts(sol, ref, dataset)})
        if pid and str(pid).startswith("test/"):
            level = _math_levels(data_dir).get(pid)
            math_rows.append((pid.split("/")[1], level, graded[-1]["correct"]))
    summary = _summary(dataset, graded)
    print(f"{path}: {_summary_line(summary)}")
    if math_rows:
        print("strict accuracy by subject and level:\n" + math_table(math_rows))
    if out:
        atomic_write(out, "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in graded))
    return summary

# ------------------------------------------------------------------------------- generation (run)

def run_loop(problems, out_dir, solve_fn, dataset, model_name="this run", info=None, replica=0,
             n_replicas=1, wait=None):
    """Solve every problem not yet in out_dir/results.jsonl, appending one record per problem as it
    finishes (one write + flush + fsync of a whole line), then write summary.json and summary.md.
    solve_fn(questions, on_result) -> list of dicts with "solution" and "messages"; on_result(i,
    result) may be called as each finishes. solve_fn is called once, with all the problems left:
    one continuous batch. Tests pass a fake solve_fn; `run` passes infer.solve.
    Data parallelism (n_replicas > 1, `wait` a barrier of the replicas): replica k solves every
    n-th problem left and appends to its own part file; after the last one is done, replica 0
    merges the parts into results.jsonl and writes the summary (the others return None).
    info: more facts about the run for summary.json (e.g. the sandbox's isolation mode)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.jsonl")
    done = done_keys(path)
    todo = [p for p in problems if p["id"] not in done][replica::n_replicas]
    if wait:
        wait()   # every replica has read the files before any writes to them
    print(f"[eval] {dataset}: {len(done)} done before, {len(todo)} to solve"
          + (f" (replica {replica} of {n_replicas})" if n_replicas > 1 else ""), file=sys.stderr)
    t0 = time.time()
    written = set()
    with open(path if n_replicas == 1 else part_path(path, replica), "a", encoding="utf-8") as f:

        def on_result(i, res):
            if i in written:
                return
            p = todo[i]
            rec = {"id": p["id"], "question": p["question"], "solution": res["solution"],
                   "messages": res.get("messages"), "reference": p["answer"],
                   **verdicts(res["solution"], p["answer"], dataset)}
            rec.update({k: p[k] for k in ("subject", "level") if k in p})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written.add(i)
            rate = len(written) / max(time.time() - t0, 1e-9)
            print(f"[eval] {len(written)}/{len(todo)}  {rate:.2f} problems/s  "
                  f"ETA {(len(todo) - len(written)) / rate / 60:.1f} min", file=sys.stderr)
        results = solve_fn([p["question"] for p in todo], on_result)
        for i, res in enumerate(results):   # solvers that do not stream
            on_result(i, res)
    if wait:
        wait()   # every replica is done
    if replica != 0:
        return None
    merge_parts(path, "id", [p["id"] for p in problems])
    ids = {p["id"] for p in problems}
    recs = [r for r in _read_jsonl(path) if r["id"] in ids]
    for r in recs:   # lines written before the authors' verdict was recorded get it now
        if "correct_authors" not in r:
            r.update(verdicts(r["solution"], r["reference"], dataset))
    summary = {**_summary(dataset, recs), **(info or {})}
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    # the paper's numbers were graded by the authors' protocol: they sit in that column
    lines = [f"{dataset} accuracy %: strict (exact equivalence) and paper protocol "
             "(the authors' grader)", "",
             "| model | strict | paper protocol |", "|---|---|---|",
             f"| {model_name} (n={len(recs)}) | {100 * summary['accuracy']:.1f} | "
             f"{100 * summary['accuracy_authors']:.1f} |"]
    lines += [f"| {m} (paper) | - | {v.get(dataset.lower(), '-')} |" for m, v in PAPER.items()]
    math_rows = [(r["subject"], r.get("level"), r["correct"]) for r in recs if r.get("subject")]
    if math_rows:
        lines += ["", "strict accuracy by subject and level:", "", math_table(math_rows)]
    atomic_write(os.path.join(out_dir, "summary.md"), "\n".join(lines) + "\n")
    print(f"[eval] {dataset}: {_summary_line(summary)}", file=sys.stderr)
    return summary


def run(args):
    import infer                     # imported only when generating: scoring needs no model code
    from model import Transformer
    from parallel import follow, init_ranks
    from sandbox import SandboxPool, default_isolation
    from tokenizer import Tokenizer
    cfg = infer.config_from_args(args)   # the generation flags (infer.add_generation_args)
    problems = load_dataset(args.dataset, args.data_dir, args.subject, args.level)
    problems = problems[:args.limit or None]
    tok = Tokenizer.from_checkpoint(args.model)
    ranks = init_ranks(args.tp)   # under torchrun: W / tp replicas share out the problems
    model = Transformer.from_pretrained(args.model, args.device or ranks.device,
                                        tp_group=ranks.tp_group).eval()
    if not ranks.leader:             # another shard of a tensor-parallel replica
        return follow(model, ranks.tp_group)
    # the prompt's system text: --system, else each record's own (the paper's, docs/method.md §4)
    system_of = {p["question"]: p["system"] for p in problems}

    def system(question):
        if args.system is not None:
            return args.system
        return system_of[question] if system_of[question] is not None else infer.DEFAULT_SYSTEM

    # one pool for the whole run (workers start once); under TP each model call is announced
    with SandboxPool(cfg.batch_size) as pool, ranks.lockstep(model) as model:

        def solve_fn(questions, on_result):
            return infer.solve(model, tok, questions, [system(q) for q in questions], cfg=cfg,
                               pool=pool, on_result=on_result)
        return run_loop(problems, args.out, solve_fn, args.dataset,
                        model_name=os.path.basename(os.path.normpath(args.model)),
                        info={"sandbox_isolation": default_isolation()},
                        replica=ranks.replica, n_replicas=ranks.n_replicas, wait=ranks.wait_for_all)


# ------------------------------------------------------------------------------------------- report

REPORT_VERDICTS = {"correct": "strict (ours)", "correct_authors": "paper protocol"}
REPORT_ANSWERS = {"pred": "extracted (ours)", "pred_authors": "extracted (paper protocol)",
                  "model_answer": "extracted (authors' file)", "grade_error": "grading failed"}


def report(paths, out=None, dataset=None, data_dir=DATA_DIR):
    """A page to browse a run (html_views.report_page): RUN_DIR/report.html from its results.jsonl
    and summary.json, or one page for result files, ours or the authors' released format
    (debug_result). Records without verdicts are graded here as `score` does (strict and paper
    protocol); a file named *-correct / *-wrong (as in data/official_outs/) also gives the official
    verdict. Returns the page's path."""
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
            sol, ref, pid = _record_parts(rec, f"{path}:{n}")     # sol: an LCE string, both formats
            if "correct" not in rec:            # the authors' files: graded here, both protocols
                rec = {**rec, **verdicts(sol, ref, dataset)}
            turn = [(b["type"], b["content"]) for m in rec.get("messages") or []
                    if m["role"] == "assistant" for b in m["content"]]
            row = {"id": pid if pid is not None else f"{os.path.basename(path)}:{n}",
                   "question": rec.get("question") or _message_text(rec, "user") or "",
                   "blocks": turn or lce_data.parse_assistant(sol) or [("text", sol)],
                   "answers": {label: rec[k] for k, label in REPORT_ANSWERS.items() if k in rec},
                   "reference": ref,
                   "verdicts": {label: bool(rec[k]) for k, label in REPORT_VERDICTS.items()
                                if k in rec}}
            if official is not None:
                row["verdicts"]["official (file name)"] = official
            if rec.get("subject") or str(pid).startswith("test/"):      # MATH
                row["subject"] = rec.get("subject") or str(pid).split("/")[1]
                row["level"] = rec.get("level") or _math_levels(data_dir).get(pid)
            rows.append(row)
    paper = [(m, v[dataset], m.lower() in stem.lower()) for m, v in PAPER.items() if dataset in v]
    page = html_views.report_page(f"{run_dir or stem}: {dataset}", rows, summary, paper)
    atomic_write(out, page)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("score", help="re-grade a results file (ours or the authors' "
                        "debug_result format)")
    sp.add_argument("results")
    sp.add_argument("--dataset", help="gsm8k/math/svamp/mathematics/simuleq/minival "
                    "(default: from file name)")
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
    rp.add_argument("--model", required=True,
                    help="checkpoint directory (HF layout + tokenizer.model)")
    rp.add_argument("--dataset", required=True)
    rp.add_argument("--out", required=True,
                    help="output directory: results.jsonl, summary.json/.md")
    rp.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    rp.add_argument("--subject", help="MATH only: e.g. algebra")
    rp.add_argument("--level", type=int, help="MATH only: 1-5")
    rp.add_argument("--system", help="system text of every prompt (default: each record's own)")
    rp.add_argument("--device", help="default: cuda (this rank's GPU) when available, else cpu")
    rp.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per model replica "
                    "(torchrun --nproc_per_node=W: W / tp replicas share out the problems)")
    rp.add_argument("--data-dir", default=DATA_DIR)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:   # infer imports torch: only `run` needs it
        import infer
        infer.add_generation_args(rp)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "score":
            score(args.results, args.dataset, args.out, args.data_dir)
        elif args.cmd == "report":
            print(report(args.paths, args.out, args.dataset, args.data_dir))
        else:
            run(args)
    # bad input: one clear line naming the file (and line), no traceback
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
