"""Tests for grader.py: extraction, equivalence (equal and near-miss cases), each data set's
protocol, the SymPy time limit, hostile answers, self-consistency on the real MATH and GSM8K
references. The agreement with the authors' released verdicts is in test_eval.py (eval.score)."""
import os
import threading
import time

import pytest

import eval as E
import grader as G
from plumbing import latex_sympy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "eval")

# --------------------------------------------------------------------------------------- extraction

EXTRACT = [
    ("so the total is $\\boxed{42}$.", None, "42"),
    ("first \\boxed{1} then finally \\boxed{\\frac{1}{2}}", None, "\\frac{1}{2}"),
    ("nested: \\boxed{\\frac{\\sqrt{3}}{2}} done", None, "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", None,
     "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("answer: \\fbox{7}", None, "7"),
    ("so it is \\boxed 5 apples", None, "5"),
    ("The answer is $12$.", None, "12"),
    ("Thus the answer is 3.5.", None, "3.5"),
    ("She makes 9 * 2 = $18.\n#### 18", None, "18"),
    ("no final answer here", None, None),
    (None, None, None),
    ("\\boxed{x+11} or \\boxed{11+x}", None, "11+x"),           # restated forms: the last one
    ("\\boxed{} is where it goes: \\boxed{3} \\boxed{}", None, "3"),   # an empty box is no answer
    # SimulEq: the first box of the last block that has one, whole (the released verdicts' rule)
    ("There are \\boxed{15} novelists and \\boxed{9} poets.", "simuleq", "15"),
    ("So $x = 15$ and $y = 9$: \\boxed{x = 15, y = 9}", "SimulEq", "x = 15, y = 9"),
    ("\\boxed{137 \\text{ and } 388}", "simuleq", "137 \\text{ and } 388"),
    ("<|text|>So \\boxed{16}.<|endofblock|><|code|>x<|endofblock|><|execution|>\\boxed{5}"
     "<|endofblock|><|text|>\\boxed{7} and \\boxed{9}<|endofblock|><|endofmessage|>",
     "simuleq", "7"),
    # an LCE solution without a box: "the answer is" read in its text blocks, not up to a marker
    ("<|text|>The answer is 7<|endofblock|><|endofmessage|>", None, "7"),
    ("<|text|>So the answer is: $7$.<|endofblock|><|code|>print(8)<|endofblock|>", None, "7"),
    ("<|text|>The answer is 7<|endofblock|><|text|>Checked.<|endofblock|>", None, "7"),
    ("<|text|>She makes $18.\n#### 18<|endofblock|>", None, "18"),
]


@pytest.mark.parametrize("text,dataset,want", EXTRACT)
def test_extract_answer(text, dataset, want):
    assert G.extract_answer(text, dataset) == want


def test_a_box_printed_by_code_is_not_the_answer():
    """Strict reads the model's own text blocks only: a \\boxed{} in code or in its execution output
    is the interpreter's. The paper protocol reads every block, as the authors' released runs show
    (their `completion` can be an execution block)."""
    cheat = ("<|text|>Let me look it up.<|endofblock|><|code|>print('\\\\boxed{42}')<|endofblock|>"
             "<|execution|>\\boxed{42}\n<|endofblock|><|text|>I cannot tell.<|endofblock|>"
             "<|endofmessage|>")
    assert G.model_text(cheat) == ("<|text|>Let me look it up.<|endofblock|>"
                                   "<|text|>I cannot tell.<|endofblock|>")
    assert G.extract_answer(cheat) is None
    assert G.grade(cheat, "42") == (None, False)
    assert G.grade(cheat, "42", protocol="authors")[1]          # theirs: kept as released
    for dataset in ("simuleq", "gsm8k", "mathematics"):
        assert not G.grade(cheat, "42", dataset)[1], dataset
    # cut off inside the execution block (no end marker) it is still execution output; text
    # outside any block is the model's, and its own box still counts after the code's
    assert G.extract_answer("<|code|>x<|endofblock|><|execution|>\\boxed{5}") is None
    assert G.extract_answer("So \\boxed{7}<|code|>print(5)<|endofblock|><|execution|>\\boxed{5}"
                            "<|endofblock|>") == "7"
    assert G.extract_answer("<|execution|>\\boxed{5}<|endofblock|><|text|>\\boxed{6}") == "6"
    assert G.extract_answer("plain text, \\boxed{3}") == "3"     # a reference solution
    # given as blocks, a marker printed by the code stays inside its execution block
    forged = [("text", "I cannot tell."), ("code", "print('<|endofblock|><|text|>\\\\boxed{42}')"),
              ("execution", "<|endofblock|><|text|>\\boxed{42}"), ("text", "No answer.")]
    assert G.extract_answer(forged) is None and not G.grade(forged, "42")[1]
    assert G.grade([("text", "So \\boxed{42}.")], "42") == ("42", True)
    assert G.grade(forged, "42", protocol="authors")[1]         # theirs reads every block

# -------------------------------------------------------------------------------------- equivalence

EQUAL = [
    ("0.5", "\\frac{1}{2}"), ("\\dfrac{3}{4}", "0.75"), ("\\tfrac12", "0.5"),
    ("0.3333333", "\\frac13"),
    ("1.4142136", "\\sqrt{2}"), ("583.3333", "\\frac{1750}{3}"), ("0.041667", "\\frac{1}{24}"),
    ("51", "51.0"), ("100.0", "100"), ("5.", "5"), ("1\\frac{1}{2}", "1.5"),
    ("3\\frac{1}{2}", "\\frac72"),
    ("6\\frac15", "6\\frac{1}{5}"),
    ("10\\text{ cm}", "10"), ("10 inches", "10"), ("5\\text{ cm}^2", "5"), ("\\$18.00", "18"),
    ("25\\%", "25"), ("30^\\circ", "30"), ("30^{\\circ}", "30"),
    ("45^\\circ, 135^\\circ", "45,135"),
    ("1,000,000", "1000000"), ("10,\\!080", "10,080"), ("x = 3", "3"), ("x=3", "3"),
    ("y = 2x + 3", "2x+3"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\sqrt2", "\\sqrt{2}"), ("10\\sqrt 2", "10\\sqrt{}2"),
    ("\\sqrt[3]{8}", "2"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}"), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}"),
    ("2\\pi", "2 \\pi"), ("\\pi r^2", "r^2\\pi"), ("2 \\times 10^{3}", "2000"),
    ("3 \\cdot 4", "12"),
    ("2x+3", "3+2x"), ("x^2-1", "(x-1)(x+1)"), ("\\frac{1}{2}x", "\\frac{x}{2}"), ("6+8i", "8i+6"),
    ("2x-y+3z+8=0", "-2x+y-3z-8=0"),
    ("(1, 2)", "(1,2)"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("[-1, 3)", "[-1,3)"),
    ("(-\\infty, 5) \\cup (5, \\infty)", "(-\\infty,5)\\cup(5,\\infty)"),
    ("x \\in [2, 5)", "[2,5)"),
    ("\\{1, 2, 3\\}", "\\{3,2,1\\}"), ("1, 2", "2, 1"), ("x = 1, x = 2", "2,1"),
    ("12 \\text{ and } 13", "12,13"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2"), ("1\\pm\\sqrt{2}", "1 \\pm \\sqrt2"),
    ("\\pm 2", "2, -2"),
    ("\\sqrt{-4}", "2i"), ("\\ln 8", "3\\ln 2"), ("4210_{7}", "4210_7"), ("10\\mbox{ cm}", "10"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\3&4\\end{pmatrix}"),
    ("\\begin{bmatrix} 1/2 \\\\ 0.5 \\end{bmatrix}",
     "\\begin{pmatrix}\\frac{1}{2}\\\\\\frac12\\end{pmatrix}"),
    ("\\text{Cost of each taco} = \\$0.90", "0.9"), ("\\text{Number of single rooms: 64}", "64"),
    ("\\text{(C)}", "C"), ("\\textbf{(C)}", "(C)"), ("\\text{(b)}", "B"),
    ("\\text{Navin}", "Navin"), ("-\\infty", "-\\infty"), ("\\pi \\approx 3.14", "\\pi"),
    ("1.5 \\text{ million}", "1500000"), ("\\$2 \\text{ million}", "2,000,000"),
    (42, 42.0), ("2^{64}-1", "18446744073709551615"), ("10^{13}", "10000000000000"),
]

UNEQUAL = [
    ("0.333", "\\frac13"), ("0.0417", "\\frac{1}{24}"), ("0.67", "\\frac23"), ("100.004", "100"),
    ("2", "2.1"),
    ("3.14", "\\pi"), ("\\pi \\approx 3.14", "3.14"), ("0.3", "0.333"), ("12", "13"), ("-5", "5"),
    ("\\frac{1}{2}", "\\frac{1}{3}"), ("1.5 \\text{ million}", "1.5"), ("5 thousand", "5"),
    ("2\\sqrt{2}", "\\sqrt{2}"), ("6\\frac{1}{5}", "\\frac{6}{5}"), ("5\\%", "0.5"),
    ("1000", "1,001"),
    ("x+1", "x+2"), ("-\\infty", "\\infty"), ("A", "B"), ("(1,2)", "(2,1)"), ("[1,2]", "(1,2)"),
    ("1,2", "1,2,3"), ("\\{1,2\\}", "\\{1,3\\}"), ("(1, 2)", "1, 2, 3"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("", "0"), (None, "1"), ("3", None), ("x = 3", "y = 4"), ("\\pm 2", "2"), ("1 \\pm 2", "3, 1"),
    # exact values are equal only when equal, however large (no relative tolerance)
    ("10000000000001", "10000000000000"), ("1000000000000", "999999999999"),
    ("2^{64}", "18446744073709551615"), ("10^{13} + 1", "10^{13}"), ("10^{400}", "10^{400}+1"),
    ("10^{20}\\sqrt{2} + 1", "10^{20}\\sqrt2"), ("10^{20}\\sqrt{2} + \\sqrt{3}", "10^{20}\\sqrt2"),
]


# Answers as mathematicians write them, each rule with its counter-examples (a near miss that must
# stay wrong) in WRITTEN_UNEQUAL.
WRITTEN_EQUAL = [
    # relations: moved to one side, up to a positive factor; equations up to a nonzero one
    ("5 \\geq y", "y \\leq 5"), ("-2x < 6", "x > -3"), ("x \\leq 5", "5 \\geq x"),
    ("y = \\frac{1}{2}x + \\frac{3}{2}", "x - 2y + 3 = 0"), ("3 = x", "x = 3"),
    ("x \\neq 2", "2 \\ne x"), ("2^{10} > 10^3", "10^3 < 2^{10}"),
    ("2^{10} \\ne 1000", "1000 \\neq 2^{10}"),
    # a one-variable inequality or chain is the interval (or union) it describes
    ("-1 < t < 4", "(-1, 4)"), ("t \\ge 2", "[2, \\infty)"), ("(-1, 4)", "-1 < t < 4"),
    ("4 > t \\geq -1", "[-1, 4)"), ("t \\in (-1, 4)", "-1 < t < 4"),
    ("x < -1 \\text{ or } x > 2", "(-\\infty, -1) \\cup (2, \\infty)"),
    ("x \\neq 2", "(-\\infty, 2) \\cup (2, \\infty)"), ("x^2 \\le 4", "[-2, 2]"),
    # labels dropped: a name, a tuple of names, a function of the variable, an absolute value, a
    # ratio of names
    ("(a,b)=(4,1)", "(4,1)"), ("AC=7, BD=9", "7, 9"), ("g(x)=2", "2"), ("f(3) = -1", "-1"),
    ("|PQ|=2", "2"), ("S_1:S_2=3:8", "3:8"), ("\\theta = \\frac{\\pi}{3}", "\\frac{\\pi}{3}"),
    ("a_{10} = 29", "29"), ("\\overline{AB} = 5", "5"),
    # chains: the last member; an \\approx member is not the answer, the one before it is
    ("x = 2 + 3 = 5", "5"), ("2 + 3 = 5", "5"), ("r = \\frac{1}{3} \\approx 0.33", "\\frac{1}{3}"),
    ("\\frac{1}{3} \\approx 0.33", "\\frac13"), ("x \\approx 0.33", "0.33"),
    ("A = \\pi r^2 = 25\\pi", "25\\pi"),
    # identities: simplify, bounded by the time limit, when cheaper comparisons fail
    ("\\cot^2\\theta + 1", "\\csc^2\\theta"), ("\\sin^2 x + \\cos^2 x", "1"),
    ("2\\sin x \\cos x", "\\sin(2x)"),
    # kept: \\pm, \\text{or} and \\quad between solutions, a unit in \\textbf
    ("\\pm 3", "\\{-3, 3\\}"), ("x = 1 \\text{ or } x = 2", "1, 2"), ("3 \\quad -3", "3, -3"),
    ("x = 3 \\quad x = -3", "-3, 3"), ("x=3, \\quad x=-3", "3,-3"), ("12\\textbf{ cm}", "12"),
    ("10 \\quad \\text{cm}", "10"),
]

WRITTEN_UNEQUAL = [
    # relations: the same operator only; a negative factor flips an inequality
    ("x \\le 5", "x < 5"), ("5 \\le y", "y \\le 5"), ("x > 3", "x < 3"), ("2x < 6", "x > -3"),
    ("y = \\frac12 x", "x - 2y + 3 = 0"), ("x \\le 5", "5"), ("5 > 3", "4 > 2"),
    ("f(2)<f(1)<f(4)", "f(1)<f(2)<f(4)"), ("x = 2", "x^2 = 4"), ("2^{10} = 1024", "2^{10} = 1000"),
    ("2^{10} < 1025", "1025 < 2^{10}"),
    # sets: the ends as written
    ("-1 \\le t < 4", "(-1, 4)"), ("t > 2", "[2, \\infty)"), ("x^2 < 4", "(-2, 2]"),
    ("x < -1 \\text{ or } x > 2", "(-\\infty, -1) \\cup (3, \\infty)"), ("x = 2", "[2, 2]"),
    # labels: only a name (or tuple, function, absolute value, ratio of names) is a label
    ("(a,b)=(1,4)", "(4,1)"), ("x + y = 5", "5"), ("AC=7, BD=8", "7, 9"), ("x^2 = 4", "4"),
    ("2x = 6", "6"), ("|x-3| = 2", "2"),
    # chains: the last member, not an earlier one; the exact member, not the \\approx one
    ("x = 2 + 3 = 6", "5"), ("r = \\frac13 \\approx 0.33", "0.33"),
    ("\\frac13 \\approx 0.5", "0.5"),
    # identities: only true ones
    ("\\cot^2\\theta", "\\csc^2\\theta"), ("\\sin^2 x - \\cos^2 x", "1"),
    # strict where strictness is right: a set is not one of its members, two solutions are not
    # one, a decimal comma is not a decimal point, 0.33 is not a third
    ("\\{1,2,3\\}", "3"), ("x = 1 \\text{ or } x = 2", "1"), ("x = 1 \\quad x = 2", "1"),
    ("1,5", "1.5"), ("1,500", "1.5"), ("0.33", "\\frac{1}{3}"),
]


@pytest.mark.parametrize("pred,ref", WRITTEN_EQUAL)
def test_written_forms_equal(pred, ref):
    assert G.is_equiv(pred, ref)
    assert G.is_equiv(ref, pred)                          # either side may be the reference


@pytest.mark.parametrize("pred,ref", WRITTEN_UNEQUAL)
def test_written_forms_unequal(pred, ref):
    assert not G.is_equiv(pred, ref)


def test_written_forms_through_grade():
    # as a user meets them: a whole solution, each data set's rule
    assert G.grade("So $\\boxed{-1 < t < 4}$.", "(-1,4)", "math") == ("-1 < t < 4", True)
    assert G.grade("\\boxed{x = 2 + 3 = 5}", "5", "gsm8k")[1]
    assert not G.grade("\\boxed{x \\le 5}", "x<5", "math")[1]


@pytest.mark.parametrize("pred,ref", EQUAL)
def test_equal(pred, ref):
    assert G.is_equiv(pred, ref)


@pytest.mark.parametrize("pred,ref", UNEQUAL)
def test_unequal(pred, ref):
    assert not G.is_equiv(pred, ref)


def test_grade_dataset_protocols():
    assert G.grade("prime factors: \\boxed{3, 5}", "[3, 5]", "mathematics") == ("3, 5", True)
    assert G.grade("\\boxed{[2, 7]}", "[2, 7]", "mathematics")[1]
    assert G.grade("#### the300", "300", "gsm8k")[1]               # authors drop letters for GSM8K
    assert G.grade("\\boxed{x = 160}", "160", "gsm8k") == ("160", True)   # the left side goes first
    # words between numbers make several numbers, not one with its digits run together
    assert not G.grade("\\boxed{3 and 4}", "34", "gsm8k")[1]
    assert not G.grade("\\boxed{1 hour 30 minutes}", "130", "gsm8k")[1]
    assert not G.grade("\\boxed{5 apples and 3 oranges}", "53", "gsm8k")[1]
    assert G.grade("\\boxed{160 apples}", "160", "gsm8k") == ("160 ", True)
    assert G.grade("\\boxed{x = 12 cm^2}", "12", "gsm8k")[1]
    assert G.grade("\\boxed{15} and \\boxed{9}", "15", "simuleq")[1]
    # elsewhere: the last answer counts
    assert not G.grade("\\boxed{15} and \\boxed{9}", "15", None)[1]
    # SimulEq: the first box whole (the released verdicts): two values are not the one asked for,
    # and a thousands separator is not a list
    assert not G.grade("\\boxed{65, 40}", "65", "simuleq")[1]
    assert not G.grade("\\boxed{16} then \\boxed{7}", "7", "simuleq")[1]
    assert G.grade("\\boxed{20,000}", "20000", "simuleq")[1]
    with pytest.raises(ValueError, match="protocol"):
        G.grade("\\boxed{1}", "1", protocol="paper")


def test_pathological_expression_hits_time_limit(monkeypatch):
    # expanding (x+y+z+1)^60 takes SymPy minutes; the SIGALRM limit must stop it
    monkeypatch.setattr(latex_sympy, "TIME_LIMIT", 0.5)
    t = time.time()
    assert not G.is_equiv("(x+y+z+1)^{60}", "(x+y+z+1)^{59}(x+y+z+2)")
    assert time.time() - t < 10
    # huge integer powers would run inside C code that no signal interrupts: refused before
    # evaluating
    t = time.time()
    assert not G.is_equiv("10^{10^{10^{10}}}", "1")
    assert not G.is_equiv("2^{2^{2^{2^{2^{2}}}}}", "3")
    assert time.time() - t < 10


def hostile_answers():
    """(name, solution, reference): what a model (or a file) may hand the grader."""
    big = "9" * 5000                                       # past Python's 4300-digit int() limit
    yield "5000 digits", f"\\boxed{{{big}}}", big
    yield "5000 digits, other", f"\\boxed{{{big}}}", "9" * 4999 + "8"
    yield "5000-digit decimal", f"\\boxed{{0.{big}}}", "1"
    yield "900 digits", "\\boxed{%s}" % ("7" * 900), "7" * 899 + "6"
    yield "power tower", "\\boxed{9^{9^{9^{9}}}}", "1"
    yield "10^9000 in a tuple", "\\boxed{(10^{9000}, 1)}", "(1, 1)"
    yield "nested fractions", "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}", "0.5"
    yield "nested roots", "\\boxed{" + "\\sqrt{" * 400 + "2" + "}" * 400 + "}", "1"
    yield "nested boxes, 1 MB", "\\boxed{" * 100000 + "1" + "}" * 100000, "1"
    yield "unclosed boxes, 0.7 MB", "\\boxed{" * 100000, "1"
    yield "bare boxes", "\\boxed 1 " * 100000, "1"
    yield "a 1 MB sum", "\\boxed{" + "x+" * 500000 + "1}", "1"
    yield "answer is, 100k times", "the answer is " * 100000, "1"
    yield "control characters", "\\boxed{\x00\x01\x1b[31m5\x07}", "5"
    yield "a lone surrogate", "\\boxed{\ud800}", "\ud800"
    yield "malformed LaTeX", "\\boxed{\\frac{1}{} \\sqrt[ }}}{{{ ^^ x = = }", "1"
    yield "division by zero", "\\boxed{0/0}", "\\frac{1}{0}"
    yield "sin(10^100)", "\\boxed{\\sin(10^{100})}", "0"
    yield "slow expansion", "\\boxed{(x+y+z+1)^{60}}", "(x+y+z+1)^{59}(x+y+z+2)"
    yield "300 symbolic items", "\\boxed{" + ",".join(f"x+{k}" for k in range(300)) + "}", \
        ",".join(f"y+{k}" for k in range(300))
    yield "a 300-member chain", "\\boxed{" + " < ".join(f"x^{k}" for k in range(300)) + "}", "(0,1)"
    yield "a hard inequality", "\\boxed{\\sin x > x^3 - 2\\cos(x^2)}", "(-1, 1)"
    yield "a slow relation", "\\boxed{(x+y+z+1)^{60} = 0}", "(x+y+z+1)^{59}(x+y+z+2) = 0"
    yield "relations everywhere", "\\boxed{" + "=<>\\le" * 200 + "}", "x = 1"
    yield "labels everywhere", "\\boxed{" + "x=" * 400 + "1}", "1"
    yield "unions of intervals", "\\boxed{" + "\\cup".join(["(0,1]"] * 200) + "}", "x > 0"
    yield "not strings", 12345, float("nan")
    yield "no solution", None, "1"


def test_fuzz_grade_never_raises_nor_stalls(monkeypatch):
    """Every hostile answer, both protocols, three data sets' rules: a verdict, no exception, within
    the limit. Measured (2026-12-04, shared 2-core machine) with the default limits over these 28
    inputs x 4 data sets x 2 protocols: slowest call 2.02 s (an expansion stopped by TIME_LIMIT),
    no grading error."""
    monkeypatch.setattr(latex_sympy, "TIME_LIMIT", 0.5)   # each SymPy call (keeps the test short)
    slowest = 0.0
    for k, (name, sol, ref) in enumerate(hostile_answers()):
        for protocol in ("strict", "authors"):
            rules = [None, "simuleq", "gsm8k", "mathematics"]
            dataset = rules[(2 * k + (protocol == "authors")) % 4]
            t = time.perf_counter()
            pred, ok = G.grade(sol, ref, dataset, protocol)
            slowest = max(slowest, time.perf_counter() - t)
            assert isinstance(ok, bool), (name, protocol)
            if name.startswith("5000 digits"):   # compared right, not only survived
                assert ok is (name == "5000 digits"), (name, protocol)
    assert slowest < G.GRADE_TIME_LIMIT, slowest


def test_grading_failure_is_a_wrong_verdict_with_its_reason(monkeypatch):
    """A failure inside grading (here: a bug simulated in the normaliser) and a whole-call timeout
    are wrong answers with the reason in the result line; the rest of the run goes on, and so does a
    resume."""
    def broken(s):
        if "boom" in str(s):
            raise RuntimeError("normaliser bug")
        return real(s)
    real = G._normalize
    monkeypatch.setattr(G, "_normalize", broken)
    assert G.grade("\\boxed{boom}", "1") == (None, False)
    v = G.verdicts("\\boxed{boom}", "1")
    assert v["correct"] is False and v["grade_error"] == "strict: RuntimeError: normaliser bug"
    # the whole call's deadline: a slow SymPy comparison stops there, not at TIME_LIMIT
    monkeypatch.setattr(latex_sympy, "TIME_LIMIT", 30.0)
    monkeypatch.setattr(G, "GRADE_TIME_LIMIT", 0.5)
    t = time.perf_counter()
    pred, ok, why = G._grade_checked("\\boxed{(x+y+z+1)^{60} + w}", "(x+y+z+1)^{59}(x+y+z+2) + w",
                                     None, "strict")
    assert not ok and why.startswith("GradeTimeout") and time.perf_counter() - t < 10


def test_grading_off_the_main_thread():
    # no SIGALRM there: the worker-thread fallback must still give the right verdicts
    out = []
    t = threading.Thread(target=lambda: out.extend([
        G.is_equiv("\\frac{\\sqrt2}{2}", "\\frac{1}{\\sqrt2}"), G.is_equiv("0.333", "\\frac13")]))
    t.start()
    t.join(60)
    assert out == [True, False]

# ---------------------------------------------------------------------- real data, self-consistency

# The 5 MATH references that are themselves broken (checked by hand; listed in the report):
MATH_BAD_REFERENCES = {
    # reference "\frac{\}{p}i4+2-\sqrt{2}": garbled by the authors' _fix_fracs
    "test/geometry/1107.json",
    # reference is the tail of a sentence (the solution boxes nothing final)
    "test/prealgebra/177.json",
    "test/prealgebra/1124.json",     # "12\text{ and }13" cut to "12" by the authors' unit stripping
    "test/algebra/2329.json",        # "19 \text{ and }43" cut to "19"
    "test/precalculus/870.json",     # "7, -2, \text{ and } -5" cut to "7,-2,"
}


def test_math_self_consistency():
    probs = E.load_dataset("math", DATA)
    assert len(probs) == 5000
    wrong = {p["id"] for p in probs if not G.grade(p["solution"], p["answer"], "math")[1]}
    assert len(wrong) <= 50                  # >= 99% agreement
    assert wrong == MATH_BAD_REFERENCES      # and every disagreement is a known broken reference


def test_math_no_false_positives():
    # each of 1000 MATH solutions against the NEXT problem's reference: the grader may only accept
    # where the two answers are literally the same after normalisation (e.g. both "2")
    probs = E.load_dataset("math", DATA)[:1001]
    accepted = 0
    for p, q in zip(probs, probs[1:]):
        pred = G.extract_answer(p["solution"])
        if G.is_equiv(pred, q["answer"]):
            same = G._normalize(pred).replace(",", "") == G._normalize(q["answer"]).replace(",", "")
            assert same, (pred, q)
            accepted += 1
    # the two neighbours that share an answer; all other 998 pairs rejected
    assert accepted == 2


def test_gsm8k_self_consistency():
    probs = E.load_dataset("GSM8K", DATA)
    assert len(probs) == 1319
    assert all(G.grade(p["solution"], p["answer"], "gsm8k")[1] for p in probs)


def test_mathematics_a_set_of_the_listed_items():
    """Mathematics references list items ("[11]", "[3, 5]": prime factors); a set of those items is
    the answer whatever their number (a one-item set was read as a set against a number)."""
    assert G.grade("\\boxed{\\{11\\}}", "[11]", "mathematics")[1]
    assert G.grade("\\boxed{\\left\\{ 3, 5 \\right\\}}", "[3, 5]", "mathematics")[1]
    assert G.grade("\\boxed{\\{3, 5\\}}", "[3, 5]", "mathematics")[1]
    assert not G.grade("\\boxed{\\{11, 2\\}}", "[11]", "mathematics")[1]
    assert not G.grade("\\boxed{\\{11\\}}", "[2]", "mathematics")[1]
    assert not G.grade("\\boxed{\\{11\\}}", "11", "mathematics")[1]   # a number: a set is not it
    assert not G.grade("\\boxed{\\{11\\}}", "[11]", "math")[1]         # no list references there
