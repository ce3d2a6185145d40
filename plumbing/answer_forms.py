"""
The forms an answer takes beyond one value, read as mathematics (docs/method.md §5). It serves
grader.is_equiv (steps 4 and 5 of grader.py's docstring), which compares the items one by one:

    structure("(1, 2)")             -> ("seq", "()", ["1", "2"])   a tuple or interval: in order
    structure("\\{3, 1\\}")         -> ("set", "", ["3", "1"])     a set: in any order
    structure("1 \\pm \\sqrt2")     -> ("set", "", ["1 \\pm \\sqrt2"])   two values (expand_pm)
    relations_equal("5 \\geq y", "y \\leq 5")   -> True   the same relation
    relations_equal("-1 < t < 4", "(-1, 4)")    -> True   the set of reals it describes

Matrices compare entry by entry, lists of solutions ("1, 2") as sets. Relations and intervals
become SymPy through plumbing/latex_sympy.py; callers run relations_equal under its `timed`.
"""
import re

import sympy

from plumbing.latex_sympy import to_sympy

# --------------------------------------------------------------------------------------- structures

def split_top(s, seps=","):
    """Split on separators that sit outside every bracket: '(1,2),3' -> ['(1,2)', '3']."""
    parts = []
    current = ""
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            current += s[i:i + 2]
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and c in seps:
            parts.append(current.strip())
            current = ""
        else:
            current += c
        i += 1
    parts.append(current.strip())
    return [p for p in parts if p]


def wraps(s):
    """True when the bracket opening s closes at its very end: '(1,2)' yes, '(1)+(2)' no."""
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k < len(s) - 1:
            return False
    return depth == 0


def structure(s):
    """(kind, open+close brackets, items) for compound answers, else None. "1 \\pm \\sqrt2" is the
    set of its two values (expanded by expand_pm when compared)."""
    m = re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s)
    if m:   # rows split by \\ (the released references have "\" only), entries by &
        rows = [r for r in re.split(r"\\\\|\\(?![a-zA-Z{}])", m.group(1)) if r]
        cells = [r.split("&") for r in rows]
        shape = f"{len(cells)}x{len(cells[0]) if cells else 0}"
        return "matrix", shape, [e for r in cells for e in r]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", "", split_top(s[2:-2])
    if "\\cup" in s:
        return "set", "", s.split("\\cup")
    if (len(s) > 2 and s[0] in "([" and s[-1] in ")]" and wraps(s)
            and len(split_top(s[1:-1])) >= 2):
        return "seq", s[0] + s[-1], split_top(s[1:-1])
    parts = split_top(s, ",;")
    return ("set", "", parts) if len(parts) >= 2 or "\\pm" in s else None


def expand_pm(items):
    """Each item holding one \\pm as its two values: ["1 \\pm 2"] -> ["1 + 2", "1 - 2"]."""
    out = []
    for item in items:
        if item.count("\\pm") == 1:
            out += [item.replace("\\pm", "+", 1), item.replace("\\pm", "-", 1)]
        else:
            out.append(item)
    return out

# ---------------------------------------------------------------------------------------- relations

RELATION = re.compile(
    r"<=|>=|!=|\\(?:leqslant|geqslant|leq|geq|neq|le|ge|lt|gt|ne)(?![a-zA-Z])|[<>=≤≥≠]")
_OPERATOR = {"<": "<", "\\lt": "<", ">": ">", "\\gt": ">", "=": "=", "<=": "<=", "\\le": "<=",
             "\\leq": "<=", "\\leqslant": "<=", "≤": "<=", ">=": ">=", "\\ge": ">=",
             "\\geq": ">=", "\\geqslant": ">=", "≥": ">=", "!=": "!=", "\\ne": "!=",
             "\\neq": "!=", "≠": "!="}
_SYMPY_RELATION = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge, "!=": sympy.Ne}


def _relation(s):
    """'-1<t\\le4' -> ([-1, t, 4] as SymPy, ['<', '<=']); None when s holds no relation. Raises
    when a member is not math we read (callers run under timed)."""
    pieces = re.split(f"({RELATION.pattern})", s)
    if len(pieces) < 3:
        return None
    return [to_sympy(m)[0] for m in pieces[::2]], [_OPERATOR[op] for op in pieces[1::2]]


def _one_side(relation):
    """A single relation moved to one side: 'a > b' -> (b - a, '<'), 'a = b' -> (a - b, '=')."""
    (left, right), (op,) = relation
    if op in (">", ">="):
        return right - left, op.replace(">", "<")
    return left - right, op


def _same_relation(relation_a, relation_b):
    """The same relation once everything is on one side, up to a positive factor (a negative one
    flips an inequality: '-2x < 6' is 'x > -3'), an equation up to a nonzero factor
    ('y = \\frac12 x + \\frac32' is 'x - 2y + 3 = 0'). Without unknowns: the same two sides."""
    (difference_a, op_a), (difference_b, op_b) = map(_one_side, (relation_a, relation_b))
    if op_a != op_b:
        return False                                     # x <= 5 is not x < 5
    if not difference_a.free_symbols or not difference_b.free_symbols:   # 2^{10} > 10^3
        sides_a, sides_b = relation_a[0], relation_b[0]
        orders = [sides_b[::-1]] if relation_a[1] != relation_b[1] else [sides_b]
        if op_a in ("=", "!="):                          # either way round
            orders = [sides_b, sides_b[::-1]]
        return any(all(sympy.simplify(x - y) == 0 for x, y in zip(sides_a, order))
                   for order in orders)
    ratio = sympy.cancel(difference_a / difference_b)
    if ratio.free_symbols:
        ratio = sympy.simplify(ratio)
    if ratio.free_symbols or not ratio.is_finite:
        return False
    return bool(ratio.is_positive) if op_a in ("<", "<=") else ratio != 0


def _real_set(s, relation):
    """The set of reals an answer describes, or None: a one-variable inequality or chain ('t \\ge
    2', '-1 < t < 4', 'x \\ne 2') by solving it; an interval or a union of them ('[2, \\infty)',
    '(-\\infty, 0) \\cup (1, \\infty)') as written. Equations are not sets here."""
    if relation:
        members, ops = relation
        unknowns = set().union(*(m.free_symbols for m in members))
        if "=" in ops or len(unknowns) != 1:
            return None
        unknown = unknowns.pop()
        out = sympy.S.Reals
        for left, op, right in zip(members, ops, members[1:]):
            out = out & sympy.solveset(_SYMPY_RELATION[op](left, right), unknown, sympy.S.Reals)
        return out
    out = sympy.S.EmptySet
    for piece in s.split("\\cup"):
        ends = split_top(piece[1:-1]) if len(piece) > 2 and wraps(piece) else []
        if piece[:1] not in "([" or piece[-1:] not in ")]" or len(ends) != 2:
            return None
        low, high = (to_sympy(e)[0] for e in ends)
        if not (low.is_extended_real and high.is_extended_real):
            return None
        out = out | sympy.Interval(low, high, piece[0] == "(", piece[-1] == ")")
    return out


def relations_equal(a, b):
    """a or b holds a relation: the same relation (_same_relation), or the same set of reals
    (_real_set: '-1 < t < 4' is '(-1, 4)', 't \\ge 2' is '[2, \\infty)'). Call it through timed:
    a member that is not math we read raises."""
    relation_a, relation_b = _relation(a), _relation(b)
    if relation_a and relation_b and len(relation_a[1]) == len(relation_b[1]) == 1:
        if _same_relation(relation_a, relation_b):
            return True
    set_a = _real_set(a, relation_a)
    set_b = _real_set(b, relation_b) if set_a is not None else None
    if set_a is None or set_b is None:
        return False
    if set_a.is_empty is not False:   # "f(2)<f(1)<f(4)" read as 2f < f < 4f: no set of reals
        return False
    return set_a == set_b or bool((set_a - set_b).is_empty and (set_b - set_a).is_empty)
