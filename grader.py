"""
How a MathCoder solution is graded: pull out the final answer, decide whether it equals the
reference (docs/method.md §5). Every solution gets two verdicts:

strict (the headline): exact SymPy equivalence, stricter than the authors' 1e-2 tolerance (which
calls 0.333 equal to 1/3 and 100.004 equal to 100), reading answers as mathematicians write them:
  1. extract_answer: in the model's own text blocks (a box printed by its code is not its answer),
     the last \\boxed{...} (nested braces), else "the answer is ...", else GSM8K's "#### x";
  2. normalise both strings (LaTeX decoration, units, degrees, percent, dollars, thousands
     separators, a "\\text{label} =" or "label:" before the value) and keep the value a labelled
     or chained answer names: "x = 3", "(a,b) = (4,1)", "g(x) = 2", "|PQ| = 2", "S_1:S_2 = 3:8",
     "x = 2 + 3 = 5" (the last member), "r = \\frac13 \\approx 0.33" (not the \\approx one); a
     table of named rules, each with its example, in plumbing/normalisation.py;
  3. plain string / number equality (fast path, no SymPy);
  4. structure: tuples and intervals in order, sets and lists of solutions in any order ("\\pm",
     "\\text{or}", "\\quad" between solutions), matrices by entry (plumbing/answer_forms.py);
  5. relations: the same relation once moved to one side, up to a positive factor ("5 \\geq y" is
     "y \\leq 5", "-2x < 6" is "x > -3"), an equation up to a nonzero factor; a one-variable
     inequality or chain is the set it describes ("-1 < t < 4" is "(-1, 4)"); "x \\le 5" is not
     "x < 5" (plumbing/answer_forms.py);
  6. each scalar: LaTeX -> SymPy (plumbing/latex_sympy.py), then exact comparison, expressions
     through expand, then simplify (trigonometric identities: "\\cot^2\\theta + 1" is
     "\\csc^2\\theta") bounded by the time limit. A decimal counts as equal to an exact value
     only when it is that value correctly rounded to the places written AND carries about four
     significant figures (0.3333333 == 1/3, 0.333 != 1/3). Every SymPy call runs under a time limit.
Strict where strictness is right: a set is not one of its members, "x = 1 or x = 2" is not 1, a
decimal comma is not a decimal point ("1,5" is a list, "1,500" a thousands group).
paper protocol: the authors' grader (their src/evaluate.py and src/utils.py), the one behind the
paper's numbers, rewritten in plumbing/authors_grader.py; `_grade_authors` below picks the text
it reads.

No answer can crash or stall grading: grade() returns a verdict within about GRADE_TIME_LIMIT
whatever the strings (answers over MAX_ANSWER_CHARS are compared as plain strings; every SymPy call
is timed); a failure inside grading is a wrong verdict, and the result line says why (grade_error).

Each data set's protocol, in both (checked against the released verdicts in data/official_outs/):
  * SimulEq: the reference holds the first unknown of two or more; the answer is the first \\boxed{}
    of the solution's last block that has one, taken whole ("\\boxed{65, 40}" against 65 is wrong);
  * GSM8K: letters are dropped from a plain answer, after its left-hand side ("x = 160" -> 160);
  * Mathematics: references may be lists "[3, 5]"; strict compares their items (a "[...]" answer
    too, and against a list a set "\\{...\\}" of one item or more).
  * GSM8K, SVAMP, MATH, minival: the last \\boxed{} (strict), the first box of the last block
    holding one (paper protocol, as the authors' extraction did).
"""
import re
from fractions import Fraction

import sympy

from plumbing import authors_grader
from plumbing.answer_forms import RELATION, expand_pm, relations_equal, structure
from plumbing.latex_sympy import MAX_ANSWER_CHARS, deadline, timed, to_sympy
from plumbing.normalisation import named_value, normal_form, strip_lhs
from tokenizer import SPECIAL_RE

GRADE_TIME_LIMIT = 10.0   # seconds for one grade() call, all its SymPy calls together
REL_TOL = 1e-4            # a rounded decimal must be this close (relatively) to count as equal
FAST_PATH = True          # string / plain-number equality before SymPy (False only to benchmark)

# --------------------------------------------------------------------------------------- extraction

_BARE_BOX = re.compile(r"[^\s$]*")
_NON_SPACE = re.compile(r"\S")


def _box_spans(text):
    """Where the contents of every \\boxed{...} / \\fbox{...} (or "\\boxed 5") lie, as (start, end),
    in order; empty ones ("put it in \\boxed{}") left out. Every brace is paired in one pass, so a
    megabyte of nested or unclosed boxes costs one pass, not one per box."""
    partner = {}
    open_at = []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            open_at.append(m.start())
        elif open_at:
            partner[open_at.pop()] = m.start()
    spans = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            span = (i + 1, partner[i]) if i in partner else None
        else:                                            # "\boxed 5" form
            span = (i, _BARE_BOX.match(text, i).end())
        if span and _NON_SPACE.search(text, *span):
            spans.append(span)
    return spans


def _box(text, span):
    return text[span[0]:span[1]].strip()


def _first_box_of_last_boxed_block(text):
    """The first \\boxed{} of the last LCE block that has one, or None."""
    for block in reversed(SPECIAL_RE.split(text)[::2]):   # every other piece is a marker
        spans = _box_spans(block)
        if spans:
            return _box(block, spans[0])
    return None


def model_text(solution):
    """The solution with its code and execution blocks cut out: what the model wrote in its own
    words, block by block. A \\boxed{} that the code printed is the interpreter's, not the model's
    answer (a solution whose last words are "I cannot tell" is not right because its code printed
    a box). Read as lce_data.blocks_of reads ids: text outside any block is the model's; a block cut
    off at a limit keeps its type. `solution` may also be the blocks themselves, [(type, content),
    ...] (lce_data.blocks_of, or a record's messages), where no look-alike marker that the code
    printed can pass for a real one."""
    if isinstance(solution, (list, tuple)):
        return "".join(f"<|text|>{content}<|endofblock|>" for kind, content in solution
                       if kind == "text")
    if "<|" not in solution:                         # plain text: a reference solution
        return solution
    kept = []
    kind = "text"
    for piece in SPECIAL_RE.split(solution):
        if piece.startswith("<|") and SPECIAL_RE.fullmatch(piece):
            opens = piece in ("<|text|>", "<|code|>", "<|execution|>")
            kind = piece[2:-2] if opens else "text"
        elif kind == "text" and piece:
            kept.append(f"<|text|>{piece}<|endofblock|>")
    return "".join(kept)


def extract_answer(text, dataset=None):
    """The final answer a solution gives in its own text blocks (model_text), or None: the last
    \\boxed{}. SimulEq (dataset='simuleq'): the first \\boxed{} of the last block that has one,
    whole."""
    if text is None:
        return None
    text = model_text(text if isinstance(text, (list, tuple)) else str(text))
    spans = _box_spans(text)
    if dataset and dataset.lower() == "simuleq" and spans:
        # SimulEq asks for two or more unknowns; its reference holds the first. The authors graded
        # the solution's last text block (their `completion`) by its first box, taken whole:
        # "\boxed{65, 40}" against 65 is wrong, and so is a later block's "\boxed{16} ... \boxed{7}"
        # against 7.
        return _first_box_of_last_boxed_block(text)
    # the last box: "\boxed{x+11} or \boxed{11+x}" restates one answer (references cut so too)
    if spans:
        return _box(text, spans[-1])
    text = SPECIAL_RE.sub("\n", text)          # the block markers end a sentence, not part of it
    m = re.findall(r"answer is[:\s]*(.+?)(?:\.?\s*$|\.\s|\n)", text, re.I | re.S)
    if m:
        return m[-1].strip().strip("$").strip()
    m = re.findall(r"####\s*([^\n]+)", text)                # GSM8K reference solutions
    return m[-1].strip() if m else None

# ----------------------------------------------------------------------------------------- is_equiv

def _normalize(s):
    """A canonical string for an answer: the LaTeX decoration that never changes its value
    removed, and the value a labelled or chained answer names (plumbing/normalisation.py: a table
    of named rules, each with its example)."""
    return normal_form(s, drop_label=True)


_THOUSANDS = re.compile(r"^([-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)$")   # 10,080 or 1,000.5


def is_equiv(pred, ref):
    """True when the answer `pred` equals the reference `ref` (strings or numbers)."""
    if pred is None or ref is None or str(pred).strip() == "":
        return False
    if max(len(str(pred)), len(str(ref))) > MAX_ANSWER_CHARS:   # no answer is that long: no SymPy
        return str(pred).strip() == str(ref).strip()
    if FAST_PATH and str(pred).strip() == str(ref).strip():      # the same text: nothing to read
        return True
    a = _normalize(pred)
    b = _normalize(ref)
    if _equiv_norm(a, b):
        return True
    # "10,080" is a number with a thousands separator or a list of two; the released references
    # dropped every space, so "45,135" may be the list. Try the number reading second.
    a_number = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), a)
    b_number = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), b)
    if (a_number, b_number) != (a, b) and _equiv_norm(a_number, b_number):
        return True
    # an equation read whole, its left side kept: "y = \frac12 x + \frac32" is "x - 2y + 3 = 0"
    a_whole = normal_form(pred, drop_label=False)
    b_whole = normal_form(ref, drop_label=False)
    return ((a_whole, b_whole) != (a, b) and "=" in a_whole and "=" in b_whole
            and _equiv_norm(a_whole, b_whole))


def _equiv_norm(a, b):
    """Two normalised answers: equal as text, as structures item by item (plumbing/answer_forms.py:
    tuples in order, sets in any order), as relations or sets of reals, or as single values."""
    if FAST_PATH and a.lower() == b.lower():   # text answers ("Navin", "(C)") ignore case
        return True
    structure_a = structure(a)
    structure_b = structure(b)
    relation = RELATION.search(a) or RELATION.search(b)
    if structure_a is None and structure_b is None:
        return bool(timed(relations_equal, a, b)) if relation else _scalar_equiv(a, b)
    if structure_a is None or structure_b is None:
        # "-1 < t < 4" and "(-1, 4)": a relation and the interval it describes
        plain = a if structure_a is None else b
        return bool(RELATION.search(plain) and timed(relations_equal, a, b))
    kind_a, brackets_a, items_a = structure_a
    kind_b, brackets_b, items_b = structure_b
    if (kind_a, brackets_a) != (kind_b, brackets_b):
        return False
    items_a = [named_value(x) for x in items_a]
    items_b = [named_value(x) for x in items_b]
    if kind_a != "set":                 # in order
        return len(items_a) == len(items_b) and all(map(_equiv_norm, items_a, items_b))
    items_a = expand_pm(items_a)        # a set: any order, every item matched once
    unmatched = expand_pm(items_b)
    if len(items_a) != len(unmatched):
        return False
    for x in items_a:
        j = next((j for j, y in enumerate(unmatched) if _equiv_norm(x, y)), None)
        if j is None:
            return False
        unmatched.pop(j)
    return True

# ------------------------------------------------------------------------------- one value, exactly

def _scalar_equiv(a, b):
    """Two single values: plain numbers compared as fractions without SymPy (the fast path), else
    both read into SymPy (plumbing/latex_sympy.py) and compared by _sympy_equal, each call timed."""
    number_a = _fast_number(a) if FAST_PATH else None
    number_b = _fast_number(b) if FAST_PATH else None
    if number_a and number_b:
        if number_a[1] is None and number_b[1] is None:   # two exact numbers: equal when equal
            return number_a[0] == number_b[0]
        scale = max(abs(number_a[0]), abs(number_b[0]))
        if scale > 10 ** 300:                         # beyond floats: equal only when exactly equal
            return number_a[0] == number_b[0]
        return _close(float(abs(number_a[0] - number_b[0])), float(scale), number_a[1], number_b[1])
    expr_a = timed(to_sympy, a)
    expr_b = timed(to_sympy, b) if expr_a else None
    return bool(expr_a and expr_b and timed(_sympy_equal, expr_a, expr_b))


_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def _close(diff, scale, places_a, places_b):
    """Decimal rule: |diff| within half a unit of the last place written (by the less precise side,
    when both are decimals) AND within REL_TOL of the size. places None = an exact value."""
    places = min((p for p in (places_a, places_b) if p is not None), default=None)
    if diff == 0:
        return True
    if places is None:   # two irrational exact forms at 30 digits: equal ones differ by ~1e-160
        return diff <= 1e-25 * max(1.0, scale)
    return diff <= 0.5 * 10.0 ** -places * (1 + 1e-9) and diff <= REL_TOL * scale


def _fast_number(s):
    """'3', '-0.25', '7/2', '\\frac{7}{2}' -> (Fraction, decimal places or None); else None. No
    SymPy."""
    m = re.fullmatch(r"([-+]?)\\frac\{(\d+)\}\{(\d+)\}|([-+]?\d+)/(\d+)", s)
    if m:
        if m[2]:
            numerator = int(m[1] + m[2])
            denominator = int(m[3])
        else:
            numerator = int(m[4])
            denominator = int(m[5])
        return (Fraction(numerator, denominator), None) if denominator else None
    if _NUM.fullmatch(s):
        places = len(s.split(".")[1]) if "." in s and s.split(".")[1] else None
        return Fraction(s.rstrip(".")), places
    return None


def _sympy_equal(a, b):
    """a, b: (expression, decimal places) from to_sympy."""
    (expr_a, places_a), (expr_b, places_b) = a, b
    if expr_a == expr_b:
        return True
    if any(x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) for x in (expr_a, expr_b)):
        return False
    if expr_a.free_symbols or expr_b.free_symbols:        # expressions: exact algebra only
        difference = expr_a - expr_b
        return sympy.expand(difference) == 0 or sympy.simplify(difference) == 0
    difference = expr_a - expr_b
    if places_a is None and places_b is None and difference.is_Rational:
        return difference == 0       # exact arithmetic decided: 2^64 is not 2^64 - 1
    # numbers: evaluate to 30 digits instead of simplify() (much faster; exact forms agree to
    # ~1e-30), as SymPy Floats: 2^2005 must not overflow to inf and then "equal" everything
    diff = abs(sympy.N(difference, 30))
    scale = max(abs(sympy.N(expr_a, 30)), abs(sympy.N(expr_b, 30)))
    return bool(_close(diff, scale, places_a, places_b))

# ------------------------------------------------------------------- each data set's protocol, both

def _grade_strict(solution, reference, dataset):
    pred = extract_answer(solution, dataset)
    ref = str(reference)
    if dataset == "mathematics":   # references may be lists such as "[3, 5]"
        listed = ref.startswith("[") and ref.endswith("]")
        ref = ref[1:-1] if listed else ref
        if pred and pred.startswith("[") and pred.endswith("]"):
            pred = pred[1:-1]
        elif pred and listed:      # a set of the items, one or more: "\{11\}" against "[11]"
            pred = re.sub(r"^(?:\\left)?\\\{(.*?)(?:\\right)?\\\}$", r"\1", pred, flags=re.S)
    if dataset == "gsm8k" and pred and "\\" not in pred:
        # answers are numbers: the authors drop letters; a left-hand side goes first ("x = 160").
        # Words between numbers ("3 and 4", "1 hour 30 minutes") stay: several numbers, not 34
        pred = strip_lhs(pred.strip())
        if not re.search(r"\d[^a-zA-Z\d]*[a-zA-Z][^\d]*\d", pred):
            pred = re.sub(r"[a-zA-Z]", "", pred)
    return pred, is_equiv(pred, ref)


def _grade_authors(solution, reference, dataset):
    # Their `completion`: the released verdicts were computed on an answer that an extraction step,
    # not in their public code, had pulled out of the solution; the first \boxed{} of the last
    # block that has one reproduces it (else the last block, which is what their public script's
    # `completion` holds). A known deviation, since the step is not public: our answer differs
    # from the one read in their `completion` for 139 of the 4,347 released solutions (their step
    # kept one value of several, dropped a \text{} label, joined or took the last of several
    # boxes, with no rule that fits them all), and 25 verdicts differ for it.
    # Every block is read, code and execution output too, as their released runs show: of 4,347
    # released solutions, 2 (both in MathCoder-CL-13b_simuleq-wrong, none in a -correct file) hold
    # a box only in code or execution output, and the `completion` of one of them is the text of
    # its last execution block. Reading text blocks only would change none of the 4,347 verdicts,
    # so nothing in the released runs says they ignored such a box: kept.
    # A solution that ends in a code or execution block (it ran out of turns) was graded on that
    # block, their script's `completion`, not on an earlier box: 13 of the 15 released solutions
    # that do and have a box earlier (all 15 in -wrong files) hold that block as `completion`.
    if isinstance(solution, (list, tuple)):            # blocks: as the LCE string
        solution = "".join(f"<|{kind}|>{content}<|endofblock|>" for kind, content in solution)
    pieces = SPECIAL_RE.split(str(solution))           # text, marker, text, ...
    blocks = [(pieces[k - 1] if k else "<|text|>", pieces[k]) for k in range(0, len(pieces), 2)
              if pieces[k].strip()]
    cut_off = bool(blocks) and blocks[-1][0] in ("<|code|>", "<|execution|>")
    completion = None if cut_off else _first_box_of_last_boxed_block(str(solution))
    if completion is None:
        completion = blocks[-1][1] if blocks else ""
    pred = authors_grader.find_math_answer(completion)
    if dataset == "gsm8k":
        pred = re.sub(r"[a-zA-Z]", "", pred)   # their GSM8K rule: letters dropped
    return pred, authors_grader.is_equal(authors_grader.find_math_answer(str(reference)), pred)


def grade(solution, reference, dataset=None, protocol="strict"):
    """(extracted answer, correct?) for one solution, following each data set's protocol.
    protocol="strict": this file's exact equivalence (the headline); "authors": the authors' grader,
    the one behind the paper's numbers (their 1e-2 tolerance, their extraction). Never raises on
    what a model wrote and returns within about GRADE_TIME_LIMIT: a failure or a timeout is a wrong
    answer."""
    pred, correct, _ = _grade_checked(solution, reference, dataset, protocol)
    return pred, correct


def _grade_checked(solution, reference, dataset, protocol):
    """(pred, correct, None), or (None, False, why) when grading failed or ran out of time."""
    if protocol not in ("strict", "authors"):
        raise ValueError(f"protocol must be 'strict' or 'authors', not {protocol!r}")
    grade_one = _grade_authors if protocol == "authors" else _grade_strict
    try:
        with deadline(GRADE_TIME_LIMIT):
            return (*grade_one(solution, reference, (dataset or "").lower()), None)
    except Exception as e:   # RecursionError, MemoryError, GradeTimeout, a bug: never the whole run
        return None, False, f"{type(e).__name__}: {e}"[:300]


def verdicts(solution, reference, dataset=None):
    """Both verdicts for one solution, as a result line stores them: pred / correct (strict, the
    headline) and pred_authors / correct_authors (the authors' grader, behind the paper's numbers);
    grade_error says why, when grading itself failed."""
    pred, correct, error = _grade_checked(solution, reference, dataset, "strict")
    pred_authors, correct_authors, error_authors = _grade_checked(solution, reference, dataset,
                                                                  "authors")
    out = {"pred": pred, "correct": correct, "pred_authors": pred_authors,
           "correct_authors": correct_authors}
    failures = {"strict": error, "paper protocol": error_authors}
    errors = [f"{name}: {why}" for name, why in failures.items() if why]
    if errors:
        out["grade_error"] = "; ".join(errors)
    return out
