"""
The authors' grader, rewritten: the rule behind the paper's numbers ("paper protocol").

Their src/evaluate.py graded each solution with two functions of their src/utils.py, kept here
under their names so that the two files read side by side:
  find_math_answer(text): lower-case; what follows the last " is "; the first \\boxed{...} (their
    greedy regex, to the last "}"); after the last "=" and "\\approx"; LaTeX decoration and units
    stripped;
  is_equal(a, b): equal as strings (spaces removed), as evaluated tuples, as SymPy expressions
    (latex2sympy), or, for numbers, within 1e-2.
grader.py picks the text they read (their `completion`) and applies their GSM8K rule; it reports
this verdict beside its own stricter one. Their quirks are kept on purpose (they move the numbers);
each is named where it happens. Deviations:
  * latex2sympy (not a dependency here) is replaced by latex_sympy.to_sympy, with latex2sympy's
    thousands separators ("3,500") and skipped spacing ("2600\\,") added; LaTeX it reads and ours
    does not (or the other way round) can flip a verdict;
  * their tuple evaluation prints each element with Python's eval of SymPy's string; here an
    integer element prints as an int and any other as a float of SymPy's value;
  * answers over MAX_ANSWER_CHARS are compared as strings only (they would reach latex2sympy).
Released verdicts not reproduced, for that reason (5 of 4,347; the other differences come from
grader.py's reconstruction of their `completion`):
  * latex2sympy compares its expression trees as built: "-312*u" is not "-312u" for it (3 released
    Mathematics verdicts wrong) while "52*f" is "52f"; ours compares evaluated expressions;
  * their 1e-2 check evaluates SymPy's string with Python's eval inside is_equal, where `b` is a
    local holding the reference: an answer read as the symbol b then equals any number ("(b)"
    against -1 and 45.0: 2 released Mathematics verdicts correct). A SimulEq run's "b" against
    77.4 is wrong, so the rule is not certain and not reproduced here.
"""
import re

import sympy

from plumbing.latex_sympy import MAX_ANSWER_CHARS, timed, to_sympy

# Their strip_units list, in their order. A missing comma in their source fuses 'kb/h' and 'slices',
# and the empty unit '' removes every '^2' and '^3' from an answer ("x^2" -> "x").
UNITS = ("cookies", "screws", "square", "degree", "pints", "mb/h", "mb/s", "kb/hslices", "oranges",
         "persecond", "ies/hour", "eephants/hour", "liters", "sq.ft.", "inches", "hours", "feet",
         "minutes", "seconds", "cents", "mph", "meters", "yearsod", "rams", "centimeters",
         "kiorams", "years", "weeks", "miesperhour", "miles", "units", "km", "mm", "ms", "am",
         "mbperhour", "mg", "kg", "", "cm", "€", "ml", "pm", "gb", "")


def _strip_units(s):
    for unit in UNITS:
        s = s.replace(unit + "^3", "").replace(unit + "^2", "").replace(unit, "")
        s = s.replace("{}^3", "").replace("{}^2", "").replace("{}", "")
    for unit in ("m", "p", "g", "l", "s", "ft"):
        s = s.replace(f"{{{unit}}}^3", "").replace(f"{{{unit}}}^2", "").replace(f"{{{unit}}}", "")
    return s.replace("ft^3", "").replace("ft^2", "")


def _fix_sqrt(s):
    """'\\sqrt2' -> '\\sqrt{2}': one character after \\sqrt gets braces."""
    first, *rest = s.split("\\sqrt")
    return first + "".join("\\sqrt{" + p[0] + "}" + p[1:] if p and p[0] != "{" else "\\sqrt" + p
                           for p in rest)


def _fix_fracs(s):
    """'\\frac12' -> '\\frac{1}{2}', '\\frac1{2}' -> '\\frac{1}{2}'; s unchanged when a \\frac has
    fewer than 2 characters after it."""
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


def _strip_string(s):
    """LaTeX decoration off; '=' and '\\approx' cut when there is exactly one of them."""
    for a, b in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                 ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
                 ("$", "")):
        s = s.replace(a, b)
    s = s.split("\\text{ ")[0]   # units; never seen: find_math_answer removed \text before
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")   # (a bare % stays)
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
    if s.count("=") == 1:
        s = s.split("=")[1]
    if s.count("\\approx") == 1:
        s = s.split("\\approx")[1]
    if "sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:                          # (fractions are fixed only next to a root)
        s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?[1-9]\d*|0)/(-?[1-9]\d*|0)", s)   # "3/4" written as int/int
    return f"\\frac{{{m[1]}}}{{{m[2]}}}" if m else s


def find_math_answer(text):
    """The answer their grader reads in `text` (the solution's last block, or a reference)."""
    s = str(text).lower().split(" is ")[-1].replace("{}", "")
    start = s.find("oxed{")
    end = s.rfind("}")
    answer = s[start + 5:end] if 0 <= start and start + 5 <= end else s
    if "}" in answer and ("{" not in answer or answer.find("}") < answer.find("{")):
        answer = answer.split("}")[0]   # a "}" before any "{": the box closed there
    answer = answer.split("=")[-1].split("\\approx")[-1]
    for a, b in (("answer:", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"),
                 ("\n", ""), ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix")):
        answer = answer.replace(a, b)
    answer = answer.split("\\)")[0].split("\\]")[0].split("\\(")[-1].split("\\[")[-1]
    answer = answer.replace("..</s>", "")
    return _strip_units(_strip_string(answer))


# LaTeX spacing, which latex2sympy's grammar skips: "2600\\," is 2600 (released GSM8K verdicts)
_SPACING = re.compile(r"\\[,:;!]"
                      r"|\\(?:q?quad|thinspace|medspace|thickspace|negthinspace)(?![a-zA-Z])")


def _latex2sympy(s):
    """latex2sympy's stand-in: our reader, plus its thousands separators and skipped spacing."""
    return timed(to_sympy, re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", _SPACING.sub("", s)))


def _eval_tuple(s):
    """'(a,b,...)' or '[a,b,...]' with every element replaced by its numeric value ('infty', 'a',
    '-a' kept); the string unchanged when an element is not a number."""
    items = s[1:-1].split(",")
    if len(items) < 2 or s[0] + s[-1] not in ("()", "[]"):
        return s
    out = []
    for item in items:
        if "infty" in item or item in ("a", "-a"):
            out.append(item)
            continue
        expr = _latex2sympy(item)
        try:               # as their eval(str(latex2sympy(item))) prints it
            is_int = expr[0].is_Integer and "." not in item
            out.append(str(int(expr[0])) if is_int else str(float(expr[0])))
        except (TypeError, ValueError, OverflowError):   # not a number (or past 4300 digits)
            return s
    return s[0] + ",".join(out) + s[-1]


def is_equal(a, b):
    """Their verdict on two answers of find_math_answer."""
    a = str(a).lower().replace(" ", "")
    b = str(b).lower().replace(" ", "")
    if not a or not b:
        return False
    if a == b or max(len(a), len(b)) > MAX_ANSWER_CHARS:   # (a deviation: no SymPy on long text)
        return a == b
    a = _eval_tuple(a)
    b = _eval_tuple(b)
    if a == b:
        return True
    expr_a = _latex2sympy(a)
    expr_b = _latex2sympy(b) if expr_a else None
    if not expr_a or not expr_b:
        return False
    if expr_a[0] == expr_b[0]:
        return True
    if expr_a[0].free_symbols or expr_b[0].free_symbols:   # their numeric checks fail on symbols
        return False
    return bool(timed(lambda: bool(abs(sympy.N(expr_a[0] - expr_b[0], 30)) < 1e-2)))
