"""Tests for plumbing/pretty.py: IPython's text/plain display, checked on the authors' released runs

Expected strings are copied from the released solutions (data/official_outs/, cited by file, record
and cell) or written by hand from IPython's documented behaviour (IPython.lib.pretty); none is
plumbing/pretty.py's own output.
"""
import collections
import fractions
import os
import re

from plumbing import replay
from plumbing.pretty import pretty

OUTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                    "official_outs")


def released(name, record):
    """The (code, execution block) pairs of one released solution."""
    return dict(replay.released_cells(os.path.join(OUTS, name)))[record]


# ---------------------------------------------------------------------------------- pretty printing
def test_pretty_wraps_as_the_released_values():
    big = 5819246517942386488580978292888254411475965139839991069664442371733843591835878219055104
    cases = [  # (value, (file, record, cell) whose released block shows it)
        ({"2/3": (80, 120), "3/5": (72, 120), "27/8": (405, 120), "0.4": (48, 120),
          "-6": (-720, 120)}, ("MathCoder-CL-13b_mathematics-correct.jsonl", 45, 2)),
        ([fractions.Fraction(*f) for f in [(2, 3), (-3, 10), (-2, 7), (-69605, 1), (-1, 2),
                                            (-1, 1)]],
         ("MathCoder-CL-13b_mathematics-correct.jsonl", 279, 1)),
        ((10500001, 1.25, 12.5, 5.8192465179423865e+87, big),
         ("MathCoder-CL-13b_mathematics-wrong.jsonl", 64, 1)),
        ((list(range(36, -1, -1)), list(range(0, 145, 4))),
         ("MathCoder-CL-7b_simuleq-wrong.jsonl", 214, 4)),
        ([-1, 0, 0.24, 4, 7, 607], ("MathCoder-CL-13b_mathematics-correct.jsonl", 16, 2)),
    ]
    for value, (name, record, cell) in cases:
        assert pretty(value) == released(name, record)[cell - 1][1]


class Plain:
    pass


class TwoLines:
    def __repr__(self):
        return "first\nsecond"


def f(x, y=2):
    return x


def test_pretty_follows_ipython_rules():
    assert pretty({3, 1, 2}) == "{1, 2, 3}"                      # sets sorted
    assert pretty({"b", 1}) == "{1, 'b'}"                         # by str if they do not compare
    assert pretty(frozenset({2, 1})) == "frozenset({1, 2})"
    assert pretty(set()) == "set()" and pretty(frozenset()) == "frozenset()"
    assert pretty({"b": 1, "a": 2}) == "{'b': 1, 'a': 2}"         # dicts keep their order
    assert pretty((1,)) == "(1,)" and pretty([]) == "[]"
    assert pretty(["x" * 40, "y" * 40]) == f"['{'x' * 40}',\n '{'y' * 40}']"  # 79 columns at most
    assert pretty(list(range(1001))).endswith(",\n 999,\n ...]")  # 1000 items, then "..."
    loop = [1]
    loop.append(loop)
    assert pretty(loop) == "[1, [...]]"
    assert pretty(collections.Counter("abb")) == "Counter({'b': 2, 'a': 1})"
    assert pretty(collections.defaultdict(list, {1: [2]})) == "defaultdict(list, {1: [2]})"
    assert pretty(collections.OrderedDict([("a", 1)])) == "OrderedDict([('a', 1)])"
    assert pretty(collections.deque([1, 2], maxlen=3)) == "deque([1, 2], maxlen=3)"
    assert pretty(int) == "int" and pretty(Plain) == f"{__name__}.Plain"
    assert pretty(f) == f"<function {__name__}.f(x, y=2)>"
    assert pretty(ValueError("bad", 2)) == "ValueError('bad', 2)"
    assert re.fullmatch(rf"<{__name__}\.Plain at 0x[0-9a-f]+>", pretty(Plain()))
    assert pretty([TwoLines()]) == "[first\n second]"  # a multi-line repr keeps the indentation
