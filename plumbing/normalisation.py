"""
Normalisation: the canonical string that grader.is_equiv compares, an answer's LaTeX decoration
that never changes its value taken off and the value a labelled or chained answer names kept
(docs/method.md §5). It serves grader.py (step 2 of its docstring).

    normal_form("\\text{Cost of a taco} = \\$0.90")  -> "0.90"
    normal_form("x = 2 + 3 = 5")                      -> "5"
    normal_form("(a, b) = (4, 1)")                    -> "(4,1)"
    normal_form("y = 2x + 3", drop_label=False)        -> "y=2x+3"

normal_form replaces plain strings first (_DECORATION: \\dfrac is \\frac, \\left( is (, $ and % go),
then runs RULES, a table of named regex rules in the order they run, each with an example that
tests/test_normalisation.py checks. The few steps that are not one regex sit between them, where
their order needs them: \\mathrm{} and \\text{} unwrapped (a unit in \\text{} after a number goes),
spaces collapsed, the label dropped (named_value) and only then unit words ("x = 10 cm" -> "10"),
spaces removed last (except after a command: "\\pi r").
"""
import re

from plumbing.answer_forms import split_top
from plumbing.latex_sympy import braced

# ------------------------------------------------------------------------------ the rules, in order

# LaTeX decoration that never changes a value, replaced as plain text first
_DECORATION = [("\n", " "), ("\\!", ""), ("\\sqrt{}", "\\sqrt"), ("{,}", ","), ("∞", "\\infty"),
               ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("\\left", ""),
               ("\\right", ""), ("\\displaystyle", ""), ("\\bigl", ""), ("\\bigr", ""),
               ("bmatrix", "pmatrix"), ("\\mbox{", "\\text{"), ("\\$", ""), ("$", ""),
               ("\\%", ""), ("%", ""), ("\\,", " "), ("\\;", " "), ("\\:", " "), ("\\ ", " "),
               ("~", " ")]


def _rule(name, needs, pattern, replacement, example, want):
    """One rewriting rule of normal_form: it runs only when one of `needs` occurs in the answer
    (a substring test, so most answers skip most rules); (example, want) documents it and is
    checked by tests/test_normalisation.py."""
    return {"name": name, "needs": needs, "regex": re.compile(pattern), "to": replacement,
            "example": (example, want)}


def apply_rule(rule, s):
    """s rewritten by one rule of RULES (unchanged when none of its `needs` occurs in s)."""
    for needed in rule["needs"]:
        if needed in s:
            return rule["regex"].sub(rule["to"], s)
    return s


_DEGREES = _rule("degrees", ("circ", "°"), r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "",
                 "30^{\\circ}", "30")
_POWER_OF_TEN = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
# a scale word is a factor, not a unit: "1.5 \\text{ million}" is 1.5 x 10^6 ("\\text{" reopened
# for the words after it)
_SCALE_WORDS = _rule("scale words after a number", ("thousand", "million", "billion", "trillion"),
                     r"(\d)\s*(\\text\s*\{\s*)?(thousand|million|billion|trillion)s?\b",
                     lambda m: (f"{m[1]}\\times10^{{{_POWER_OF_TEN[m[3]]}}}"
                                + ("\\text{" if m[2] else "")),
                     "1.5 million", "1.5\\times10^{6}")
_TEXT_LABEL = _rule("a \\text{label} =", ("\\text",), r"^\\text\s*\{[^{}]*\}\s*=\s*", "",
                    "\\text{Cost of a taco} = 0.90", "0.90")
_AND_OR = _rule("and / or between solutions", ("and", "or"),
                r"\\text\s*\{\s*(and|or)\s*\}|\s+and\s+", ", ", "1\\text{ or }2", "1, 2")
_QUAD_ENDS = _rule("\\quad at either end", ("quad",),
                   r"^(?:\s*\\q?quad(?![a-zA-Z]))+\s*|(?:\s*\\q?quad(?![a-zA-Z]))+\s*$", "",
                   "\\quad 5 \\qquad", "5")
_QUAD = _rule("\\quad between solutions", ("quad",), r"(?:\s*\\q?quad(?![a-zA-Z]))+\s*", ", ",
              "x = 3 \\quad x = -3", "x = 3, x = -3")
_LOST_SPACE = _rule("a '\\ ' space that lost its blank", ("\\",), r"\\(?=[\d+\-(])", " ",
                    "2,\\1", "2, 1")
_NAME_COLON = _rule("label: before a value", (":",), r"^[A-Za-z][A-Za-z ]*:\s*(?=[-+\d.])", "",
                    "Number of rooms: 64", "64")
_UNIT_WORDS = _rule("unit words after a number", (" ",),
                    r"^([-+]?[\d.,/]+)(?:\s+(?!pi\b)[a-zA-Z]{2,}\.?(?:\^\{?\d\}?)?)+$", r"\1",
                    "10 square feet", "10")
_SUBSCRIPT = _rule("braces around a subscript", ("_{",), r"_\{(\w+)\}", r"_\1",
                   "4210_{7}", "4210_7")
# spaces go, except after a command ("\pi r"), marked by \0 first
_COMMAND_SPACE = _rule("the space after a command", (" ",), r"(\\[a-zA-Z]+) +(?=[a-zA-Z])",
                       "\\1\0", "\\pi r", "\\pi\0r")
RULES = [_SCALE_WORDS, _DEGREES, _TEXT_LABEL, _AND_OR, _QUAD_ENDS, _QUAD, _LOST_SPACE, _NAME_COLON,
         _UNIT_WORDS, _SUBSCRIPT, _COMMAND_SPACE]   # (all of them: tests check each example)
_TEXT_UNIT = re.compile(r"\\text\{[^{}]*\}(\^\{?\d\}?)?")
_DIGIT = re.compile(r"\d")


def normal_form(s, drop_label=True):
    """The canonical string for answer s: decoration off, then RULES and the steps between them, in
    this order. drop_label=False keeps an equation's left side ("y = 2x + 3")."""
    s = str(s).strip()
    for a, b in _DECORATION:
        s = s.replace(a, b)
    s = apply_rule(_DEGREES, apply_rule(_SCALE_WORDS, s))
    for cmd in ("\\mathrm", "\\mathbf", "\\boldsymbol", "\\textbf"):
        s = _unwrap(s, cmd)
    s = apply_rule(_TEXT_LABEL, s)
    s = apply_rule(_AND_OR, s)
    # \text{...}: units after a number are dropped ("10\text{ cm}^2"), a text-only answer is kept
    if "\\text" in s:
        s = re.sub(r"\\text\s*\{", "\\\\text{", s)
        bare = _TEXT_UNIT.sub("", s).strip()
        s = bare if _DIGIT.search(bare) and "\\text{" not in bare else _unwrap(s, "\\text")
    s = apply_rule(_QUAD, apply_rule(_QUAD_ENDS, s))
    if "matrix" not in s:
        s = apply_rule(_LOST_SPACE, s)
    s = " ".join(s.split()).rstrip(".").strip()
    s = apply_rule(_NAME_COLON, s)
    if drop_label:
        s = named_value(s)                                        # "x = 3" -> "3"
    if "=" not in s:
        s = apply_rule(_UNIT_WORDS, s)
    s = apply_rule(_SUBSCRIPT, s)
    s = apply_rule(_COMMAND_SPACE, s).replace(" ", "").replace("\0", " ")
    if len(s) == 3 and s[0] == "(" and s[2] == ")" and s[1].isascii() and s[1].isalpha():
        s = s[1]                                                  # (C) -> C
    return s

# ----------------------------------------------------- the value a labelled or chained answer names

_NAME = r"(?:[A-Za-z]+|\\[a-zA-Z]+)(?:_\{?\w+\}?)?'*"      # x, AC, \theta, S_1, a_{10}, f'
_ARGUMENT = rf"(?:{_NAME}|[-+]?\d+)"
# What may stand before "=" as the answer's name, not part of it (spaces removed):
_LABEL = re.compile("|".join([
    _NAME,                                                 # x, AC, \theta
    rf"\({_NAME}(?:,{_NAME})+\)",                          # a tuple of names: (a,b)
    rf"{_NAME}\({_ARGUMENT}(?:,{_ARGUMENT})*\)",           # a function of the variable: g(x), f(3)
    rf"\|{_NAME}\|",                                       # an absolute value or length: |PQ|
    rf"{_NAME}(?::{_NAME})+",                              # a ratio of names: S_1:S_2
    r"\\overline\{[A-Z]+\}", r"m?\\angle[A-Z]+"]))         # \overline{AB}, \angle ABC


_CONSTANTS = ("\\pi", "\\infty")   # values, not names: "\\pi \\approx 3.14" names \\pi
_ARITHMETIC = re.compile(r"(?:[\d\s.+\-*/()^{}]|\\(?:frac|sqrt|cdot|times|div))+")


def _chain(s):
    """s split at the '=' and '\\approx' outside brackets: [(separator, member), ...], the first
    separator ''. '<=' and '>=' are relations, not chains."""
    members = [["", ""]]
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and s.startswith("\\approx", i):
            members.append(["approx", ""])
            i += len("\\approx")
            continue
        if depth == 0 and c == "=" and s[i - 1:i] not in ("<", ">", "!"):
            members.append(["=", ""])
        else:
            members[-1][1] += c
        i += 1
    return [(sep, member.strip()) for sep, member in members]


def named_value(s):
    """The value an answer names, in a chain the last member: 'x = 3' -> '3', '(a,b)=(4,1)' ->
    '(4,1)', 'g(x)=2' -> '2', 'S_1:S_2=3:8' -> '3:8', 'x = 2+3 = 5' -> '5', 'x\\in[2,5)' ->
    '[2,5)'. An '\\approx' member is not the answer, the one before it is ('r = \\frac13 \\approx
    0.33' -> '\\frac13'), unless that one is a name ('x \\approx 0.33' -> '0.33'; \\pi is a value:
    '\\pi \\approx 3.14' -> '\\pi'). An equation whose left side is not a name stays whole
    ('x - 2y + 3 = 0'); a list loses only a lone first label ('x=1, x=2' -> '1, x=2':
    grader.is_equiv reads each item on its own)."""
    if "=" not in s and "\\approx" not in s and "\\in" not in s:
        return s
    if len(split_top(s, ",;")) > 1:   # "x = 8,000": a thousands separator or a list
        return strip_lhs(s)
    s = re.sub(r"^(?:[a-zA-Z]|\\[a-z]+)(?:_\{?\w+\}?)?\s*\\in\s*(?=\S)", "", s)
    members = _chain(s)
    while len(members) > 2 and members[-1][0] == "approx":
        members.pop()
    if len(members) == 1:
        return s
    first = members[0][1]
    named = first == "" or _LABEL.fullmatch(first.replace(" ", "")) is not None
    if members[1][0] == "=" and _ARITHMETIC.fullmatch(first):
        named = True                                   # "2 + 3 = 5": a computation, not an equation
    if len(members) == 2 and members[1][0] == "approx":
        return members[1][1] if named and first not in _CONSTANTS else first
    return members[-1][1] if named or len(members) > 2 else s


def strip_lhs(s):
    """'x=3' -> '3', 'x\\in[2,5)' -> '[2,5)': a lone variable on the left names the answer."""
    return re.sub(r"^(?:[a-zA-Z]|\\[a-z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in)\s*(?=\S)", "", s)

# ------------------------------------------------------------------------------------------ helpers

def _unwrap(s, cmd):
    """\\cmd{X} -> X for every occurrence (nested braces handled)."""
    while True:
        i = s.find(cmd + "{")
        if i < 0:
            return s
        inner, end = braced(s, i + len(cmd))
        if inner is None:
            return s
        s = s[:i] + inner + s[end:]
