"""Tests for plumbing/normalisation.py: each named rule does what its example says, and the canonical
string keeps the value a labelled or chained answer names (what grader.is_equiv compares)."""
import pytest

from plumbing.normalisation import RULES, apply_rule, named_value, normal_form, strip_lhs


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["name"])
def test_normalisation_rule_does_what_its_example_says(rule):
    example, want = rule["example"]
    assert apply_rule(rule, example) == want


def test_a_rule_runs_only_where_it_is_needed():
    degrees = next(rule for rule in RULES if rule["name"] == "degrees")
    assert apply_rule(degrees, "30^{\\circ}") == "30"
    assert apply_rule(degrees, "x^{2}") == "x^{2}"
    assert len({rule["name"] for rule in RULES}) == len(RULES)     # each rule named once


NORMAL_FORMS = [
    ("\\text{Cost of a taco} = \\$0.90", "0.90"),       # a \text{label} =, a dollar sign
    ("\\left( \\dfrac{1}{2}, 3 \\right)", "(\\frac{1}{2},3)"),
    ("30^\\circ", "30"), ("25\\%", "25"), ("10\\text{ cm}^2", "10"), ("x = 10 cm", "10"),
    ("\\text{Navin}", "Navin"), ("\\textbf{(C)}", "C"), ("4210_{7}", "4210_7"),
    ("\\pi r^2", "\\pi r^2"),                            # the space after a command stays
    ("x = 2 + 3 = 5", "5"), ("(a, b) = (4, 1)", "(4,1)"), ("Number of rooms: 64", "64"),
    ("1 \\text{ or } 2", "1,2"),
    ("x = 3 \\quad x = -3", "3,x=-3"),                   # a list: its items are read one by one
]


@pytest.mark.parametrize("answer,want", NORMAL_FORMS)
def test_normal_form(answer, want):
    assert normal_form(answer) == want


def test_an_equation_keeps_its_left_side_when_asked():
    assert normal_form("y = 2x + 3", drop_label=False) == "y=2x+3"
    assert normal_form("y = 2x + 3") == "2x+3"


NAMED = [
    ("x = 3", "3"), ("(a,b)=(4,1)", "(4,1)"), ("g(x)=2", "2"), ("|PQ|=2", "2"),
    ("S_1:S_2=3:8", "3:8"), ("x = 2+3 = 5", "5"), ("x\\in[2,5)", "[2,5)"),
    ("r = \\frac13 \\approx 0.33", "\\frac13"), ("x \\approx 0.33", "0.33"),
    ("\\pi \\approx 3.14", "\\pi"), ("\\pi\\approx 3.14", "\\pi"),   # a constant, not a name
    ("\\theta \\approx 0.52", "0.52"),
    ("2 + 3 = 5", "5"),                                  # a computation, not an equation
    ("x - 2y + 3 = 0", "x - 2y + 3 = 0"),                # not a name on the left: whole
    ("x^2 = 4", "x^2 = 4"),
    ("x=1, x=2", "1, x=2"),                              # a list: only a lone first label goes
    ("12", "12"),
]


@pytest.mark.parametrize("answer,want", NAMED)
def test_named_value(answer, want):
    assert named_value(answer) == want


def test_strip_lhs():
    assert strip_lhs("x=3") == "3" and strip_lhs("x\\in[2,5)") == "[2,5)"
    assert strip_lhs("2x=6") == "2x=6"                   # not a lone variable


def test_a_scale_word_multiplies_unlike_a_unit():
    """"million" after a number is a factor, not a unit word to drop."""
    assert normal_form("1.5 million") == "1.5\\times10^{6}"
    assert normal_form("\\$1.5\\text{ million}") == "1.5\\times10^{6}"
    assert normal_form("2 \\text{ thousand dollars}") == "2\\times10^{3}"
    assert normal_form("3 billion") == "3\\times10^{9}"
    assert normal_form("5 thousandths") == "5"          # a unit word: dropped as before
