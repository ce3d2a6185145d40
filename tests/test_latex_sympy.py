"""Tests for plumbing/latex_sympy.py: LaTeX read as SymPy (against values worked out by hand), the decimal
places it reports, what it refuses to read, and the time limits every SymPy call runs under."""
import threading
import time

import pytest
import sympy

from plumbing import latex_sympy as L

x, y, r = sympy.symbols("x y r")

READ = [   # (LaTeX, value, fewest decimal places written)
    ("\\frac{3}{4}", sympy.Rational(3, 4), None),
    ("2\\frac{1}{2}", sympy.Rational(5, 2), None),        # a mixed number, not 2 * 1/2
    ("0.25x", x / 4, 2),                                  # decimals are exact fractions
    ("1.5+0.125", sympy.Rational(13, 8), 1),              # the fewer places of the two
    ("\\sqrt[3]{8}", 2, None),
    ("2\\sqrt2", 2 * sympy.sqrt(2), None),
    ("\\pi r^2", sympy.pi * r ** 2, None),
    ("\\pir", sympy.pi * r, None),                        # the released references lost a space
    ("\\sin x", sympy.sin(x), None),
    ("xy", x * y, None),                                  # two letters: a product
    ("2 \\times 10^{3}", 2000, None),
    ("3i", 3 * sympy.I, None),
    ("-\\infty", -sympy.oo, None),
    ("\\sin^2 x", sympy.sin(x) ** 2, None),                 # a function's power: (sin x)^2
    ("\\cot^{2}\\theta+1", sympy.cot(sympy.Symbol("theta")) ** 2 + 1, None),
    ("2\\cos^2(3x)y", 2 * sympy.cos(3 * x) ** 2 * y, None),
]


@pytest.mark.parametrize("tex,value,places", READ)
def test_to_sympy_reads_latex(tex, value, places):
    expr, got_places = L.to_sympy(tex)
    assert (expr == value or sympy.simplify(expr - value) == 0) and got_places == places


@pytest.mark.parametrize("tex", ["import os", "__import__('os')", "\\unknown", "\\frac{1}{",
                                 "\\sin", "2^{100000}", "\\sin^2", "\\cos^2(x"])
def test_to_sympy_refuses(tex):
    # no Python word reaches SymPy's parser; a power too big to compute is refused before it runs
    with pytest.raises(ValueError):
        L.to_sympy(tex)
    assert L.timed(L.to_sympy, tex) is None            # through timed: no verdict, no exception


def test_timed_stops_a_call_at_the_time_limit(monkeypatch):
    monkeypatch.setattr(L, "TIME_LIMIT", 0.2)
    start = time.monotonic()
    assert L.timed(time.sleep, 30) is None
    assert time.monotonic() - start < 10
    # off the main thread (no SIGALRM): the call is abandoned in a worker thread
    out = []
    worker = threading.Thread(target=lambda: out.append(L.timed(time.sleep, 5)))
    worker.start()
    worker.join(60)
    assert out == [None]


def test_deadline_is_shared_by_the_calls_inside_it():
    with pytest.raises(L.GradeTimeout, match="longer than 0.3 s"):
        with L.deadline(0.3):
            assert L.timed(lambda: 7) == 7
            L.timed(time.sleep, 30)                     # stopped at 0.3 s, not TIME_LIMIT
    assert L.timed(lambda: 7) == 7                      # the deadline ends with its block
