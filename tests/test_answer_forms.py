"""Tests for plumbing/answer_forms.py: compound answers split into their items, and relations
compared as relations or as the sets of reals they describe. (grader.is_equiv on whole answers:
tests/test_grader.py.)"""
import pytest

from plumbing.answer_forms import expand_pm, relations_equal, split_top, structure, wraps


def test_split_top_splits_outside_brackets_only():
    assert split_top("(1,2),3") == ["(1,2)", "3"]
    assert split_top("\\{1,2\\}, [3, 4)") == ["\\{1,2\\}", "[3, 4)"]
    assert split_top("1; 2, 3", ",;") == ["1", "2", "3"]
    assert split_top("f(x, y)") == ["f(x, y)"]


def test_wraps():
    assert wraps("(1,2)") and wraps("[0,(1)]")
    assert not wraps("(1)+(2)") and not wraps("(1")


STRUCTURES = [
    ("(1,2)", ("seq", "()", ["1", "2"])),                          # a tuple: in order
    ("[-1,3)", ("seq", "[)", ["-1", "3"])),                        # an interval: its brackets count
    ("\\{3,1\\}", ("set", "", ["3", "1"])),                        # a set: in any order
    ("1, 2", ("set", "", ["1", "2"])),                             # a list of solutions
    ("(0,1]\\cup(2,3)", ("set", "", ["(0,1]", "(2,3)"])),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", ("matrix", "2x2", ["1", "2", "3", "4"])),
    ("1\\pm\\sqrt2", ("set", "", ["1\\pm\\sqrt2"])),               # two values: expand_pm
    ("(5)", None), ("\\frac{1}{2}", None), ("x+1", None),
]


@pytest.mark.parametrize("answer,want", STRUCTURES)
def test_structure(answer, want):
    assert structure(answer) == want


def test_expand_pm():
    assert expand_pm(["1\\pm\\sqrt2", "3"]) == ["1+\\sqrt2", "1-\\sqrt2", "3"]
    assert expand_pm(["\\pm1\\pm2"]) == ["\\pm1\\pm2"]   # two signs: not read as values


@pytest.mark.parametrize("a,b", [
    ("5\\geq y", "y\\leq5"), ("-2x<6", "x>-3"), ("y=\\frac12x+\\frac32", "x-2y+3=0"),
    ("-1<t<4", "(-1,4)"), ("t\\ge2", "[2,\\infty)"), ("x\\neq2", "(-\\infty,2)\\cup(2,\\infty)")])
def test_relations_equal(a, b):
    assert relations_equal(a, b) and relations_equal(b, a)


@pytest.mark.parametrize("a,b", [
    ("x\\le5", "x<5"), ("2x<6", "x>-3"), ("-1\\le t<4", "(-1,4)"), ("x=2", "[2,2]"),
    ("f(2)<f(1)<f(4)", "f(1)<f(2)<f(4)")])
def test_relations_unequal(a, b):
    assert not relations_equal(a, b)
