"""Tests for plumbing/notebook.py: the display of the authors' IPython kernel, checked on their released runs

Expected strings are copied from the released solutions (data/official_outs/, cited by file, record
and cell) or written by hand from IPython's documented behaviour (IPython.lib.pretty, ultratb's
Context mode); none is plumbing/notebook.py's own output. The values' display: tests/test_pretty.py; all
released cells at once: tests/test_replay.py.
"""
import os
import re

import pytest

from plumbing import notebook
from plumbing import replay
from plumbing.notebook import TIMEOUT
from sandbox import EMPTY, Sandbox

OUTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                    "official_outs")
RULE = "-" * 75


def released(name, record):
    """The (code, execution block) pairs of one released solution."""
    return dict(replay.released_cells(os.path.join(OUTS, name)))[record]


# ---------------------------------------------------------------------------------- the kernel
@pytest.fixture(scope="module")
def shared():
    with Sandbox(timeout=2) as sb:
        yield sb


@pytest.fixture
def sb(shared):
    shared.reset()
    return shared


def test_released_tracebacks_reproduced(sb):
    # the example: a NameError in the third cell, context chosen by statements, blank lines
    # hidden (MathCoder-CL-13b_mathematics-wrong.jsonl, record 320, cell 3)
    cells = released("MathCoder-CL-13b_mathematics-wrong.jsonl", 320)
    outs = [sb.run(code) for code, _ in cells[:3]]
    assert outs[:2] == [cells[0][1], cells[1][1]]
    assert outs[2] == notebook.ANSI.sub("", cells[2][1]) == (
        f"{RULE} NameError{' ' * 33}Traceback (most recent call last) Cell In[3], line 7\n"
        "      4 y = symbols('y')\n      6 # Express g in terms of y and r\n"
        "----> 7 g = (-y + 6 + r * g) / 8\n      9 # Create the equation 3y - 5 = g\n"
        "     10 equation = Eq(3*y - 5, g)\n NameError: name 'g' is not defined")
    # a SyntaxError: no rule, no frames, a caret under the column (13b_mathematics-correct 271, 1)
    sb.reset()
    code, theirs = released("MathCoder-CL-13b_mathematics-correct.jsonl", 271)[0]
    assert sb.run(code) == theirs == \
        "Cell In[1], line 42\n    tens_digit = -\n                  ^\nSyntaxError: invalid syntax"


def test_traceback_layout(sb):
    # a function's frame, and recursion collapsed after the first two repeats (stack_data)
    frame = (" Cell In[1], line 2, in f(n)\n      1 def f(n):\n"
             "----> 2     return f(n - 1) if n else 1 / 0\n")
    assert sb.run("def f(n):\n    return f(n - 1) if n else 1 / 0\nf(5)") == (
        f"{RULE} ZeroDivisionError{' ' * 25}Traceback (most recent call last) Cell In[1], line 3\n"
        "      1 def f(n):\n      2     return f(n - 1) if n else 1 / 0\n----> 3 f(5)\n"
        + frame + frame + "     [... skipping similar frames: f at line 2 (3 times)]\n" + frame
        + " ZeroDivisionError: division by zero")
    # a chained exception: the first one with 1 line of context around it, then the message
    assert sb.run("try:\n    {}['a']\nexcept KeyError:\n    undefined") == (
        f"{RULE} KeyError{' ' * 34}Traceback (most recent call last) Cell In[2], line 2\n"
        "      1 try:\n----> 2     {}['a']\n      3 except KeyError:\n KeyError: 'a' \n"
        "During handling of the above exception, another exception occurred:\n"
        f" NameError{' ' * 33}Traceback (most recent call last) Cell In[2], line 4\n"
        "      2     {}['a']\n      3 except KeyError:\n----> 4     undefined\n"
        " NameError: name 'undefined' is not defined")
    # the arrow fills 7 columns; a library frame is `File PATH:LINE, in FUNC(ARGS)`, HOME as ~
    assert sb.run("x = 1\n" * 9 + "1/0").endswith(
        "      8 x = 1\n      9 x = 1\n---> 10 1/0\n ZeroDivisionError: division by zero")
    out = sb.run("import sys\nsys.path.insert(0, '.')\nwith open('lib.py', 'w') as f:\n"
                 "    f.write('def g(x):\\n    y = x\\n    return 1 / (x - y)\\n')\n"
                 "import lib\nlib.g(1)")
    assert out.endswith("----> 6 lib.g(1)\n File ~/lib.py:3, in g(x)\n      1 def g(x):\n"
                        "      2     y = x\n----> 3     return 1 / (x - y)\n"
                        " ZeroDivisionError: division by zero")


def test_cell_rules(sb):
    assert sb.run("x = 5;") == EMPTY
    assert sb.run("x;  # the last token is ';'") == EMPTY and sb.run("x  # shown") == "5"
    assert sb.run("print(1); x") == "1\n5"
    assert sb.run("  \n") == EMPTY                         # a blank cell is not counted
    # statements run one by one: the print runs before the next statement fails to compile
    assert sb.run("print('ran')\nreturn 1") == \
        "ran\n  Cell In[5], line 2\n    return 1\n    ^\nSyntaxError: 'return' outside function"
    # leading blank lines and the first line's indentation are removed, so this is line 2
    assert "Cell In[6], line 2\n      1 y = 1\n----> 2 y / 0\n" in sb.run("\n\n  y = 1\n  y / 0")
    assert sb.run("import sys\nsys.exit(3)") == \
        "An exception has occurred, use %tb to see the full traceback.\n SystemExit: 3"
    assert sb.run("import numpy as np\n[np.float64(1.5), np.int64(2)]") == "[1.5, 2]"  # numpy 1.x
    strptime = "from datetime import datetime\ndatetime.strptime('13:05', '%H:%M').minute"
    assert sb.run(strptime) == "5"
    warning = r"/tmp/ipykernel/\d+\.py:2: UserWarning: careful\n  warnings\.warn\('careful'\)"
    assert re.fullmatch(warning, sb.run("import warnings\nwarnings.warn('careful')"))
    sb.reset()
    assert "Cell In[1], line 1\n----> 1 1 / 0" in sb.run("1 / 0")  # counting starts again
    assert sb.run("while True:\n    pass") == TIMEOUT
