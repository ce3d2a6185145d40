"""Tests for plumbing/authors_grader.py: the authors' grader (their src/utils.py), rewritten, and beside the
strict one in grader.grade."""
import pytest

from plumbing import authors_grader as A
import grader as G


# The authors' grader, by hand from their src/utils.py: lower-case, after the last " is ", the first
# box (greedy to the last "}"), after the last "=", decoration and units off, then equal as strings,
# as evaluated tuples, as SymPy expressions, or within 1e-2.
AUTHORS_ANSWER = [
    ("The answer is \\boxed{\\dfrac{1}{2}}.", "\\frac{1}{2}"),
    # after the last " is ", then after "="
    ("So x = 5 is right: \\boxed{X = 7}", "7"),
    ("\\boxed{5 \\text{ cm}}", "5"),                           # \text gone, then their unit 'cm'
    ("\\boxed{10 \\text{ dollars}}", "10{dollars}"),            # 'dollars' is not in their list
    ("\\boxed{x^2}", "x"),                                       # their empty unit eats every ^2
    ("\\boxed{\\$1,000}", "1,000"),
    ("\\boxed{\\sqrt2/2}", "\\sqrt{2}/2"),
    ("\\boxed{3/4}", "\\frac{3}{4}"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("no box here", "noboxhere"),
]


@pytest.mark.parametrize("text,want", AUTHORS_ANSWER)
def test_authors_answer(text, want):
    assert A.find_math_answer(text) == want


def test_authors_equal():
    for a, b in [("0.333", "\\frac{1}{3}"), ("100.004", "100"), ("3,500", "3500"),
                 ("(\\frac{1}{2},2)", "(0.5,2)"), ("\\frac{1}{2}", "0.5"), ("X+1", "x+1"),
                 ("2\\sqrt{2}", "2.83")]:
        assert A.is_equal(a, b), (a, b)
        assert A.is_equal(b, a), (b, a)
    for a, b in [("0.3", "\\frac{1}{3}"), ("2x", "x+x+0.001"), ("", "0"), ("65,40", "65"),
                 ("(1,2)", "(2,1)"), ("(1,2)", "(1.0,2)")]:
        assert not A.is_equal(a, b), (a, b)
    # the two protocols side by side: tolerance and unit list differ
    assert G.grade("\\boxed{0.333}", "\\frac13", protocol="authors")[1]
    assert not G.grade("\\boxed{0.333}", "\\frac13")[1]
    assert G.grade("\\boxed{10 \\text{ dollars}}", "10")[1]
    assert not G.grade("\\boxed{10 \\text{ dollars}}", "10", protocol="authors")[1]
    assert G.grade("\\boxed{x = 160}", "160", "gsm8k", protocol="authors") == ("160", True)
    # their `completion`: the first box of the last block that has one (else the last block)
    sol = "<|text|>\\boxed{9}<|endofblock|><|text|>So \\boxed{65} and \\boxed{40}.<|endofblock|>"
    assert G.grade(sol, "65", "simuleq", protocol="authors") == ("65", True)
    assert G.grade("<|code|>x<|endofblock|><|execution|>42<|endofblock|>", "42",
                   protocol="authors")[1]


def test_latex_spacing_is_skipped_as_latex2sympy_does():
    """latex2sympy's grammar skips LaTeX spacing (\\, \\: \\; \\! \\quad \\qquad): their grader read
    "\\boxed{2600 \\, \\text{g}}" as 2600 (released GSM8K verdict: correct)."""
    assert A.find_math_answer("\\boxed{2600 \\, \\text{g}}") == "2600\\,"   # their extraction
    for spaced in ("2600\\,", "2600\\;", "2\\!600", "2600\\quad", "2600\\qquad", "2600\\:"):
        assert A.is_equal("2600", spaced), spaced
    assert not A.is_equal("2600", "2601\\,")
    assert not A.is_equal("2600", "\\quadrant")                          # not a spacing command
    assert G.grade("So \\boxed{2600 \\, \\text{g}}.", "2600", "gsm8k", protocol="authors")[1]


def test_a_solution_cut_off_after_its_code_is_graded_on_its_last_block():
    """A solution that ends in a code or execution block (it ran out of turns) was graded by the
    authors on that last block, their script's `completion`, not on a box of an earlier block: the
    released GSM8K and SVAMP verdicts of such solutions are all wrong."""
    cut = ("<|text|>So \\boxed{34}.<|endofblock|><|text|>Let me check.<|endofblock|>"
           "<|code|>total<|endofblock|><|execution|>64<|endofblock|>")
    assert G.grade(cut, "34", "gsm8k", protocol="authors") == ("64", False)
    assert G.grade(cut, "64", "gsm8k", protocol="authors") == ("64", True)
    assert G.grade(cut[:-len("<|execution|>64<|endofblock|>")], "34", protocol="authors")[0] \
        == "total"
    # a solution that ends in its own text keeps the first box of its last boxed block
    assert G.grade(cut + "<|text|>Done.<|endofblock|>", "34", protocol="authors") == ("34", True)
