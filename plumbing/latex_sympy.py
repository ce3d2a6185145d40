"""
Answers as SymPy expressions: a small LaTeX -> SymPy reader, and the time limit every SymPy call
runs under. Both graders read answers with it: ours (grader.py) and the authors' rule
(authors_grader.py), where it stands in for latex2sympy.

    to_sympy("2\\frac{1}{2}")  -> (5/2, None)       a mixed number; exact, no decimals written
    to_sympy("0.25x")          -> (x/4, 2)          decimals become fractions; 2 places written

LaTeX (fractions, roots, powers, \\pi, functions) becomes a Python-like string, each token is
checked against a short list (no Python reaches SymPy's parser unchecked), and SymPy builds the
expression unevaluated; it is then evaluated bottom-up so that a power too large to compute is
refused before it starts.

SymPy can take minutes on an innocent answer ((x+y+z+1)^{60} expanded) and a few answers would never
finish, so every call goes through `timed`: at most TIME_LIMIT seconds each, and inside
`deadline(seconds)` (one grade() call) at most that many seconds in all.
"""
import contextlib
import functools
import re
import signal
import string
import threading
import time
import warnings

import sympy

TIME_LIMIT = 2.0           # seconds for one SymPy parse or comparison
# longer answers are never read, only compared as strings (the longest reference has 78 characters)
MAX_ANSWER_CHARS = 1000


def braced(s, i):
    """s[i] == '{': (the text inside the matching brace, index after it), nested braces allowed;
    (None, len(s)) when it never closes."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return None, len(s)

# ----------------------------------------------------------------------- time limit for SymPy calls

class GradeTimeout(Exception):
    """The grade() call running on this thread spent all its time."""


_deadline = threading.local()   # .at: when the grade() call running on this thread must be done


@contextlib.contextmanager
def deadline(seconds):
    """Every timed() call inside the block shares `seconds`; once they are spent, GradeTimeout."""
    _deadline.at = time.monotonic() + seconds
    _deadline.seconds = seconds
    try:
        yield
    finally:
        _deadline.at = None


def _time_left():
    """Seconds for the next SymPy call: TIME_LIMIT, cut to what the deadline leaves."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return TIME_LIMIT
    left = at - time.monotonic()
    if left <= 0:
        raise GradeTimeout(f"grading took longer than {_deadline.seconds} s")
    return min(TIME_LIMIT, left)


def timed(fn, *args):
    """fn(*args), or None when it raises or runs past its time; past the deadline it raises
    GradeTimeout instead. On the main thread a SIGALRM timer interrupts SymPy's Python code;
    elsewhere (threads, Windows) fn runs in a daemon worker thread that we stop waiting for
    (abandoned, not killed). Huge integer powers run in C where no signal reaches them, so
    _rebuild refuses those before evaluating."""
    limit = _time_left()
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            raise TimeoutError
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        try:   # the outer try also catches an alarm that fires just as fn returns
            try:
                signal.setitimer(signal.ITIMER_REAL, limit)
                out = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler)
        except Exception:          # TimeoutError, SymPy errors, RecursionError
            out = None
    else:
        result = [None]

        def work():
            try:
                result[0] = fn(*args)
            except Exception:
                pass
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(limit)
        out = result[0]
    _time_left()                   # the deadline passed during this call: say so
    return out

# ------------------------------------------------------------------------------- LaTeX -> SymPy

_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos",
          "arctan"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "mu", "phi", "omega", "sigma", "rho", "tau"}
_NAMES = {"pi", "oo"} | _FUNCS | _GREEK
_ALIAS = {"infty": "oo", "cdot": "*", "times": "*", "div": "/"}   # LaTeX with a Python spelling
_TEX_NAMES = _NAMES | set(_ALIAS)
_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|([A-Za-z]+)|(\*\*|[-+*/(),]))")


def _arg(s, i):
    """One LaTeX argument at s[i]: a braced group or a single character/command."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("missing argument")
    if s[i] == "{":
        inner, end = braced(s, i)
        if inner is None:
            raise ValueError("unbalanced braces")
        return inner, end
    m = re.match(r"\\[a-zA-Z]+|.", s[i:])
    return m.group(0), i + len(m.group(0))


def _tex(s):
    """LaTeX math -> a Python-like expression string (fractions, roots, powers, constants)."""
    out = []
    i = 0
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
            degree = None
            if i < len(s) and s[i] == "[":                    # \sqrt[3]{8}
                close = s.index("]", i)
                degree = s[i + 1:close]
                i = close + 1
            arg, i = _arg(s, i)
            out.append(f"sqrt({_tex(arg)})" if degree is None
                       else f"(({_tex(arg)})**(1/({_tex(degree)})))")
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


def _function_powers(tokens):
    """'\\sin^2 x' means (sin x)^2: tokens f ** n ARG (n a number, maybe in parentheses; ARG one
    token or a parenthesised group) become ( f ( ARG ) ) ** n."""
    out = []
    k = 0
    while k < len(tokens):
        kind, text = tokens[k]
        exponent = None
        if kind == "f" and text != "sqrt" and tokens[k + 1:k + 2] == [("o", "**")]:
            if tokens[k + 2:k + 3] and tokens[k + 2][0] == "n":
                exponent, at = [tokens[k + 2]], k + 3
            elif ([t[1] for t in tokens[k + 2:k + 5:2]] == ["(", ")"]
                  and tokens[k + 3][0] == "n"):
                exponent, at = tokens[k + 2:k + 5], k + 5
        if exponent is not None and at >= len(tokens):
            raise ValueError("function without argument")
        if exponent is None:
            out.append(tokens[k])
            k += 1
            continue
        end = at + 1                                  # ARG: one token, or up to its ")"
        if tokens[at] == ("o", "("):
            depth = 0
            for end in range(at, len(tokens) + 1):
                if end == len(tokens):
                    raise ValueError("unbalanced parentheses")
                depth += {"(": 1, ")": -1}.get(tokens[end][1], 0)
                if depth == 0:
                    break
            end += 1
        out += [("o", "("), tokens[k], ("o", "("), *tokens[at:end], ("o", ")"), ("o", ")"),
                ("o", "**"), *exponent]
        k = end
    return out


def _py(s):
    """Tokenise, check each token, add implicit multiplication; decimals become exact fractions.
    Returns (python string, fewest decimal places written or None)."""
    tokens = []          # (kind, text): n number, v variable, f function, o operator
    places = None
    pos = 0
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
                decimals = len(num.split(".")[1])
                places = decimals if places is None else min(places, decimals)
                if decimals:
                    num = f"({int(num.replace('.', '') or 0)}/1{'0' * decimals})"
                else:
                    num = num.rstrip(".")
            tokens.append(("n", num))
        elif name:
            if name in _NAMES or len(name) == 1:
                tokens.append(("f" if name in _FUNCS else "v", name))
            elif len(name) <= 2:                      # "xy" -> x*y
                tokens += [("v", c) for c in name]
            else:
                raise ValueError(f"unknown word {name!r}")
        else:
            tokens.append(("o", op))
    tokens = _function_powers(tokens)
    out = []
    for k, (kind, text) in enumerate(tokens):
        if out and (kind in "nvf" or text == "("):
            previous_kind, previous_text = tokens[k - 1]
            if previous_kind in "nv" or previous_text == ")":
                out.append("*")
        out.append(text)
        if kind == "f" and (k + 1 == len(tokens) or tokens[k + 1][1] != "("):   # "sin x" -> sin(x)
            if k + 1 == len(tokens):
                raise ValueError("function without argument")
            out.append("(")
            tokens[k + 1] = (tokens[k + 1][0], tokens[k + 1][1] + ")")
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
def to_sympy(s):
    """Answer string (normalised LaTeX) -> (SymPy expression, fewest decimal places written, or
    None); raises when it is not math we read. Call it through timed(), which turns errors and
    timeouts into None."""
    python, places = _py(_tex(s))
    with warnings.catch_warnings():   # SymPy's deprecation chatter on odd input (then rejected)
        warnings.simplefilter("ignore")
        expr = sympy.parse_expr(python, local_dict=dict(_LOCALS),
                                global_dict={"__builtins__": {}, **_SYMPY_NS}, evaluate=False)
        return _rebuild(expr), places
