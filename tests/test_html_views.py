"""html_views.py and the pages made with it: each page is well-formed HTML with one entry per
problem / token / step, the loss-mask view shows encode_example's labels on a real released
solution, the SVG curves read back (through their own tick labels) as the logged values, hostile
text is escaped, and no page references anything outside itself."""
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

import eval as E
from plumbing import html_views as H
import lce_data as D
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "samples", "official_outputs_sample.jsonl")
OFFICIAL = os.path.join(ROOT, "data", "official_outs")
LLAMA = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "llama2-tokenizer.model")
HOSTILE = '</script><script>alert(1)</script> <img src=x onerror=alert(2)> a&amp;b "q" \'s\''
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def find(self, tag=None, cls=None):
        """Every element below this one with that tag and/or class, in document order."""
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes()):
                    out.append(c)
                out += c.find(tag, cls)
        return out


class Tree(HTMLParser):
    """A strict tree builder: every element must be closed, in order (html.parser alone accepts
    anything)."""
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):          # <line ... />
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(text, standalone_svg=False):
    """Parse a page strictly and check that it references nothing outside itself."""
    tree = Tree()
    tree.feed(text)
    tree.close()
    assert tree.cur is tree.root, f"<{tree.cur.tag}> never closed"
    for node in tree.root.find():
        for key in ("href", "src", "action", "xlink:href", "poster", "data"):
            value = node.attrs.get(key)
            assert value is None or not re.match(r"^\s*([a-z][a-z0-9+.-]*:|//)", value, re.I), \
                f"<{node.tag} {key}={value!r}> leaves the page"
    allowed = ['xmlns="http://www.w3.org/2000/svg"'] if standalone_svg else []
    rest = text
    for a in allowed:
        rest = rest.replace(a, "", 1)
    assert "://" not in rest and "@import" not in rest and "url(" not in rest
    assert not re.search(r"\b(fetch|XMLHttpRequest|import)\s*\(", rest)
    return tree.root


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(LLAMA)


# -------------------------------------------------------------------------------- the loss mask
def test_token_page_shows_encode_example_labels_on_a_released_solution(tok, tmp_path):
    """`lce_data.py show` on a released solution (the authors' debug_result format, Llama-2
    tokenizer): one span per token, marked exactly where encode_example puts a label, and those are
    exactly the assistant's text and code blocks and its final <|endofmessage|> (paper §2.3)."""
    record = D.read_jsonl_records(SAMPLE)[2]
    kinds = [b["type"] for b in record["messages"][-1]["content"]]
    assert "code" in kinds and "execution" in kinds
    out = tmp_path / "show.html"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "lce_data.py"), "show", SAMPLE,
                        "--tokenizer", LLAMA, "--index", "2", "--html", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    root = parse(out.read_text())
    spans = root.find("span", "t")
    ids, labels = D.encode_example(record, tok, 2048)
    assert len(spans) == len(ids) > 300
    assert [int(re.search(r"id (\d+)", s.attrs["title"]).group(1)) for s in spans] == ids
    marked = ["loss" in s.classes() for s in spans]
    assert marked == [lab != D.IGNORE for lab in labels]
    # the block of each token, as the page colours it, against the paper's rule
    parts = [next(c[2:] for c in s.classes() if c.startswith("b-")) for s in spans]
    eom = tok.special["<|endofmessage|>"]
    rule = [part in ("text", "code") or (part == "assistant" and i == eom)
            for part, i in zip(parts, ids)]
    assert marked == rule
    assert parts.count("execution") >= 3 and parts.count("system") and parts.count("user")
    # the text the tokens spell is the conversation
    shown = "".join(s.text() for s in spans).replace("\u21b5", "").replace("\u21e5", "")
    assert D.serialize(record).replace(" ", "") in shown.replace(" ", "").replace("<s>", "")
    counts = root.find("p")[1].text()
    assert f"{len(ids)} tokens, {sum(marked)} carry loss" in counts


def test_token_page_ablation_and_hostile_text(tok):
    record = D.make_record(HOSTILE, [("text", HOSTILE), ("code", "print(1 < 2 & 3)"),
                                     ("execution", HOSTILE), ("text", "\\boxed{1}")])
    ids, labels = D.encode_example(record, tok, 4096, train_on_execution=True)
    pieces = [tok.id_to_special.get(i) or tok.sentencepiece.id_to_piece(i) for i in ids]
    text = H.tokens_page(HOSTILE, ids, labels, pieces, tok.special)
    assert "<script>alert" not in text and "<img" not in text
    spans = parse(text).find("span", "t")
    parts = [next(c[2:] for c in s.classes() if c.startswith("b-")) for s in spans]
    # with loss on execution (the ablation), the execution tokens are marked too
    assert all("loss" in s.classes() for s, part in zip(spans, parts) if part == "execution")
    assert ["loss" in s.classes() for s in spans] == [lab != D.IGNORE for lab in labels]


def test_show_bad_index_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "lce_data.py"), "show", SAMPLE,
                        "--index", "40", "--html", str(tmp_path / "x.html")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert p.stderr.startswith("error: ") and "--index 40" in p.stderr
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------------- the curves
def _axis(root, cls):
    """(pixel -> value) read from an axis's tick marks and their printed labels."""
    ticks = [(float(g.find("line")[0].attrs["y1" if cls != "tick-x" else "x1"]),
              float(g.find("text")[0].text())) for g in root.find("g", cls)]
    log = any("log" in g.classes() for g in root.find("g", cls))
    (p0, v0), (p1, v1) = ticks[0], ticks[-1]
    f, inv = (math.log10, lambda u: 10 ** u) if log else (float, float)
    return lambda px: inv(f(v0) + (px - p0) * (f(v1) - f(v0)) / (p1 - p0))


def _points(polyline):
    return [tuple(map(float, xy.split(","))) for xy in polyline.attrs["points"].split()]


def test_loss_svg_has_a_point_per_step_that_reads_back_as_the_log(tmp_path):
    log = [{"step": s, "loss": 6.0 * math.exp(-s / 9) + 0.3 + (0.8 if s == 17 else 0),
            "lr": 1e-3 * min(1, s / 5) * (0.5 + 0.5 * math.cos(math.pi * s / 40))}
           for s in range(1, 38)]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in log))
    p = subprocess.run([sys.executable, "-m", "plumbing.html_views", "loss", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    root = parse((tmp_path / "loss.svg").read_text(), standalone_svg=True)
    loss_line, lr_line = root.find("polyline")
    assert "right" in lr_line.classes()
    loss_pts, lr_pts = _points(loss_line), _points(lr_line)
    assert len(loss_pts) == len(lr_pts) == 37                     # one per logged step
    x_val, y_val, r_val = _axis(root, "tick-x"), _axis(root, "tick-y"), _axis(root, "tick-r")
    assert [x_val(x) for x, _ in loss_pts] == pytest.approx([r["step"] for r in log], abs=1e-2)
    losses = [y_val(y) for _, y in loss_pts]
    assert losses == pytest.approx([r["loss"] for r in log], rel=1e-3)
    assert max(losses) == pytest.approx(max(r["loss"] for r in log), rel=1e-3)
    assert min(losses) == pytest.approx(min(r["loss"] for r in log), rel=1e-3)
    assert [r_val(y) for _, y in lr_pts] == pytest.approx([r["lr"] for r in log], abs=1e-7)
    texts = [t.text() for t in root.find("text")]
    assert "optimizer step" in texts and "learning rate" in texts
    assert any(t.startswith("loss per loss-carrying token") for t in texts)


def test_loss_svg_bad_log_is_one_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2}\n')
    p = subprocess.run([sys.executable, "-m", "plumbing.html_views", "loss", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == f"error: {path}:2: field loss: missing or " \
                                                     "not a number"


# ------------------------------------------------------------------------------ a run's report
def test_report_of_the_authors_released_outputs(tmp_path):
    """The released sample (40 SVAMP solutions, debug_result format): one entry per problem, the
    verdicts hand-counted in test_eval (32 right), every code and execution block shown."""
    out = E.report([SAMPLE], out=str(tmp_path / "r.html"), dataset="svamp")
    root = parse(open(out).read())
    probs = root.find("details", "problem")
    raw = [json.loads(line) for line in open(SAMPLE)]
    assert len(probs) == len(raw) == 40
    assert sum(p.attrs["data-v0"] == "1" for p in probs) == 32
    for p, rec in zip(probs, raw):
        for kind in ("code", "execution"):
            assert len(p.find("div", kind)) == sum(d["role"] == kind for d in rec["debug_result"])
        assert rec["debug_result"][1]["content"].strip() in p.text()
    assert "71.5%" in root.text()          # the paper's SVAMP numbers beside ours (L-7B: 71.5)


def test_report_cli_on_an_official_run_split_by_verdict(tmp_path):
    """eval.py report on both halves of a released run: the file names give the official verdict
    beside our strict one, and the page counts them as the files do."""
    files = [os.path.join(OFFICIAL, f"MathCoder-CL-7b_SVAMP-{v}.jsonl") for v in ("correct",
                                                                                  "wrong")]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "report", *files],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "MathCoder-CL-7b_SVAMP.html"
    root = parse((tmp_path / "MathCoder-CL-7b_SVAMP.html").read_text())
    probs = root.find("details", "problem")
    n_right = sum(1 for _ in open(files[0]))
    n_wrong = sum(1 for _ in open(files[1]))
    assert len(probs) == n_right + n_wrong == 1000
    names = [o.text() for o in root.find("option")]
    assert names == ["strict (ours)", "paper protocol", "official (file name)"]
    assert sum(p.attrs["data-v2"] == "1" for p in probs) == n_right
    # both our verdicts agree with the official one on most (test_eval checks the figures)
    for k in ("0", "1"):
        assert sum(p.attrs["data-v" + k] == p.attrs["data-v2"] for p in probs) >= 950
    row = next(r for r in root.find("tr", "me") if "MathCoder-CL-7B" in r.text())
    assert "70.7%" in row.text()


def test_every_field_of_a_problem_is_escaped():
    row = {"id": HOSTILE, "question": HOSTILE,
           "blocks": [(HOSTILE, HOSTILE), ("execution", HOSTILE)],
           "answers": {HOSTILE: HOSTILE}, "reference": HOSTILE, "verdicts": {HOSTILE: True},
           "subject": HOSTILE, "level": HOSTILE}
    text = H.report_page(HOSTILE, [row], {HOSTILE: HOSTILE}, [(HOSTILE, 50.0, True)])
    assert "<script>alert" not in text and "<img" not in text
    root = parse(text)
    assert root.text().count(HOSTILE) >= 10


def _our_record(i, subject, level, ok, **extra):
    question = f"Problem {i}: {HOSTILE}"
    blocks = [{"type": "text", "content": f"Text {i} {HOSTILE}"},
              {"type": "code", "content": f"x = {i}\nprint(x < 2 and '</pre>')"},
              {"type": "execution", "content": "Traceback (most recent call last):\nNameError"},
              {"type": "text", "content": f"\\boxed{{{i}}}"}]
    return {"id": f"test/{subject}/{i}.json", "question": question,
            "solution": "".join(f"<|{b['type']}|>{b['content']}<|endofblock|>" for b in blocks),
            "messages": [{"role": "user", "content": [{"type": "text", "content": question}]},
                         {"role": "assistant", "content": blocks}],
            "pred": str(i), "reference": HOSTILE, "correct": ok, "subject": subject,
            "level": level, **extra}


def test_report_of_our_run_dir_math_heatmap_second_verdict_and_escaping(tmp_path):
    recs = [_our_record(0, "algebra", 5, True, correct_authors=True, pred_authors="0.0"),
            _our_record(1, "algebra", 5, False, correct_authors=True),
            _our_record(2, "algebra", 5, True, correct_authors=True),
            _our_record(3, "geometry", 1, False, correct_authors=False)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "summary.json").write_text(json.dumps({"dataset": "MATH", "n": 4, "correct": 2}))
    out = E.report([str(tmp_path)])
    assert out == str(tmp_path / "report.html")
    text = open(out).read()
    assert "<script>alert" not in text and "<img" not in text and "</pre>'" not in text
    root = parse(text)
    probs = root.find("details", "problem")
    assert len(probs) == 4
    assert [p.attrs["data-v0"] for p in probs] == ["1", "0", "1", "0"]      # strict (ours)
    assert [p.attrs["data-v1"] for p in probs] == ["1", "1", "1", "0"]      # the second verdict
    assert [p.attrs["data-agree"] for p in probs] == ["1", "0", "1", "1"]
    for p, r in zip(probs, recs):
        assert HOSTILE in p.text() and r["id"] in p.text()           # escaped, then read back
        assert len(p.find("div", "error")) == 1                      # the traceback shows red
    answers = [[td.text() for td in tr.find("td")] for tr in probs[0].find("tr")]
    assert answers == [["extracted (ours)", "0"], ["extracted (paper protocol)", "0.0"],
                       ["reference", HOSTILE]]
    heat = root.find("table", "heat")[0]
    cells = {tr.find("th")[0].text(): [td.text() for td in tr.find("td")]
             for tr in heat.find("tr")[1:]}
    # columns: level 1, level 5, all; algebra 2 of 3 right at level 5, geometry 0 of 1 at level 1
    assert cells["algebra"] == ["", "66.7%2/3", "66.7%2/3"]
    assert cells["geometry"] == ["0.0%0/1", "", "0.0%0/1"]
    assert cells["all"] == ["0.0%0/1", "66.7%2/3", "50.0%2/4"]
