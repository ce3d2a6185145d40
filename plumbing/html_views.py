"""
See the method: self-contained HTML pages and SVG plots of MathCoder's data and runs.

Plain HTML, inline SVG and a little JavaScript in one file: no network fetch (no CDN), works
offline, standard library only. Of the project it imports only storage.py (files written whole),
so every other module may use it:

    python lce_data.py show FILE --index 0 --html conv.html   # the loss mask, token by token
    python eval.py report RUN_DIR                 # RUN_DIR/report.html: every problem, each block
    python -m plumbing.html_views loss OUT/log.jsonl  # OUT/loss.svg: loss and learning rate a step
    python -m plumbing.tiny_report out/tiny       # out/tiny/report.html (tiny_run.py writes it too)

Every piece of model or data text goes through esc(): solutions contain '<', '&', '</script>'. The
scripts read only the page's own elements (no data inside <script>), so text cannot become code.
"""
import argparse
import html
import math
import os
import re
import sys

from plumbing.storage import atomic_write, read_jsonl

# the background of each part of a conversation (token view) and of each solution block
BLOCK_COLOURS = {"system": "#e6e0f3", "user": "#d9ebfb", "text": "#dcf2dc", "code": "#fdebc8",
                 "execution": "#e4e7ea", "assistant": "#ffffff", "bos": "#ffffff"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; margin: 0 auto; max-width: 1200px;
       padding: 12px 20px 40px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 26px 0 8px; }
.note { color: #555; max-width: 900px; }
table { border-collapse: collapse; margin: 6px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { display: inline-block; height: 11px; background: #4c78a8; vertical-align: middle; }
.bar.paper { background: #b9b9b9; } tr.me td { font-weight: 600; }
pre, code, .mono { font: 13px/1.35 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; }
.blk { border-radius: 4px; padding: 4px 8px; margin: 4px 0; border-left: 4px solid; }
.blk .lab { font: 11px system-ui, sans-serif; color: #666; text-transform: uppercase; }
.blk.text { background: #eef8ee; border-color: #9fd49f; white-space: pre-wrap; }
.blk.code { background: #fdebc8; border-color: #e0a030; }
.blk.execution { background: #e4e7ea; border-color: #8a949c; }
.blk.error { background: #fbe1e1; border-color: #d62728; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.vd { margin-right: 8px; white-space: nowrap; } .vd small { color: #555; }
.disagree { background: #ffe8a8; padding: 0 4px; border-radius: 3px; font-size: 12px; }
details.problem { border: 1px solid #ddd; border-radius: 6px; margin: 6px 0; padding: 4px 10px; }
details.problem > summary { cursor: pointer; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.side > div { min-width: 0; }
.tokens { font: 14px/1.9 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap;
          overflow-wrap: anywhere; }
.t { color: #8a8a8a; border-right: 1px solid #fff; }
.t.loss { color: #000; box-shadow: inset 0 -3px 0 #d62728; }
.t.sp { font-size: 11px; outline: 1px solid #999; white-space: nowrap; }
.t:hover { outline: 2px solid #333; }
.key { display: inline-block; padding: 0 8px; border-radius: 3px; }
.controls { position: sticky; top: 0; background: #fff; padding: 6px 0;
            border-bottom: 1px solid #ddd; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
"""


def esc(x) -> str:
    """Text -> HTML-safe text (also inside attribute values)."""
    return html.escape(str(x), quote=True)


def page(title, body, script="") -> str:
    """One complete HTML document: inline style, the body, an optional inline script at the end."""
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            + (f"<script>\n{script}\n</script>\n" if script else "") + "</body>\n</html>\n")


def pct(x) -> str:
    return f"{100 * x:.1f}%"


def bar(fraction, cls="") -> str:
    """A horizontal bar, 160 px for 100%."""
    width = 160 * max(0.0, min(1.0, fraction))
    return f'<span class="bar {cls}" style="width:{width:.1f}px"></span>'


# -------------------------------------------------------------------------------------------------
# Line charts in SVG, by hand: axes with values, one <polyline> per series, one point per (x, y)
def _num(v) -> str:
    """A tick label: whole numbers plainly, others in 3 significant digits (float() reads both)."""
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 and abs(v) < 1e7 else f"{v:.3g}"


def nice_ticks(lo, hi, n=5) -> list[float]:
    """About n round values (1, 2 or 5 times a power of ten apart) from <= lo to >= hi."""
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def log_ticks(lo, hi) -> list[float]:
    """1, 2 and 5 times powers of ten from <= lo to >= hi (powers of ten only past 3 decades)."""
    mults = (1,) if math.log10(hi / lo) > 3 else (1, 2, 5)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    seq = [m * 10.0 ** e for e in decades for m in mults]
    start = max(v for v in seq if v <= lo * (1 + 1e-9))
    end = min(v for v in seq if v >= hi * (1 - 1e-9))
    return [v for v in seq if start <= v <= end]


def line_chart(series, x_label, y_label, right=None, log_y=False, title="", width=760,
               height=320, standalone=False) -> str:
    """An SVG line chart. series: [(name, [(x, y), ...]), ...] on the left axis (log scale when
    log_y and every y > 0); right: (name, [(x, y), ...], axis label) on a linear right-hand axis,
    dashed. Each series is one <polyline> with one point per (x, y). standalone: a .svg file."""
    right = right if right and right[1] else None
    points = [p for _, pts in series for p in pts] + (right[1] if right else [])
    if not points:
        return '<svg class="chart" width="90" height="30"><text x="5" y="20">no data</text></svg>'
    left_ys = [y for _, pts in series for _, y in pts] or [0, 1]
    log_y = log_y and min(left_ys) > 0            # loss curves flatten: a log scale shows the tail
    # the plot area, inside margins for the tick labels, the axis labels and the title
    plot_left = 72
    plot_right = width - (78 if right else 24)
    plot_top = 34
    plot_bottom = height - 48
    x_min = min(x for x, _ in points)
    x_max = max(max(x for x, _ in points), x_min + 1)

    def sx(x):
        return plot_left + (x - x_min) / (x_max - x_min) * (plot_right - plot_left)

    def axis(ys, log):
        """(ticks, value -> pixel y) for an axis that spans ys."""
        ticks = log_ticks(min(ys), max(ys)) if log else nice_ticks(min(0, min(ys)), max(ys))
        scale = math.log10 if log else float
        low = scale(ticks[0])
        high = max(scale(ticks[-1]), low + 1e-12)

        def pixel_y(v):
            return plot_top + (high - scale(v)) / (high - low) * (plot_bottom - plot_top)
        return ticks, pixel_y

    out = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"'
           + (' xmlns="http://www.w3.org/2000/svg"' if standalone else "") + ">"]
    if standalone:                  # a page's stylesheet does not reach a .svg file
        out.append("<style>text { font: 12px sans-serif; fill: #333; }</style>")
    out.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>')
    if title:
        out.append(f'<text x="{plot_left}" y="18" style="font-weight:600">{esc(title)}</text>')
    ticks, sy = axis(left_ys, log_y)
    for v in ticks:
        out.append(f'<g class="tick-y{" log" if log_y else ""}"><line x1="{plot_left - 5}" '
                   f'y1="{sy(v):.2f}" x2="{plot_right}" y2="{sy(v):.2f}" stroke="#e5e5e5"/>'
                   f'<text x="{plot_left - 8}" y="{sy(v) + 4:.2f}" text-anchor="end">{_num(v)}'
                   "</text></g>")
    for v in nice_ticks(x_min, x_max, 8):
        if x_min <= v <= x_max:
            out.append(f'<g class="tick-x"><line x1="{sx(v):.2f}" y1="{plot_bottom}" '
                       f'x2="{sx(v):.2f}" y2="{plot_bottom + 5}" stroke="#555"/>'
                       f'<text x="{sx(v):.2f}" y="{plot_bottom + 18}" text-anchor="middle">'
                       f"{_num(v)}</text></g>")
    out.append(f'<line x1="{plot_left}" y1="{plot_top}" x2="{plot_left}" y2="{plot_bottom}" '
               f'stroke="#555"/><line x1="{plot_left}" y1="{plot_bottom}" x2="{plot_right}" '
               f'y2="{plot_bottom}" stroke="#555"/>')
    out.append(f'<text x="{(plot_left + plot_right) / 2:.0f}" y="{height - 8}" '
               f'text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text transform="translate(16 {(plot_top + plot_bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{esc(y_label)}{" (log scale)" if log_y else ""}</text>')
    legend = []
    for k, (name, pts) in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        xy = " ".join(f"{sx(x):.2f},{sy(y):.2f}" for x, y in pts)
        out.append(f'<polyline class="series" data-name="{esc(name)}" fill="none" '
                   f'stroke="{colour}" stroke-width="1.6" points="{xy}"/>')
        legend.append((name, colour, "none"))
    if right:
        name, pts, label = right
        ticks, sy_right = axis([y for _, y in pts], False)
        for v in ticks:
            out.append(f'<g class="tick-r"><line x1="{plot_right}" y1="{sy_right(v):.2f}" '
                       f'x2="{plot_right + 5}" y2="{sy_right(v):.2f}" stroke="#555"/>'
                       f'<text x="{plot_right + 8}" y="{sy_right(v) + 4:.2f}">{_num(v)}</text></g>')
        out.append(f'<line x1="{plot_right}" y1="{plot_top}" x2="{plot_right}" y2="{plot_bottom}" '
                   'stroke="#555"/>')
        out.append(f'<text transform="translate({width - 10} {(plot_top + plot_bottom) / 2:.0f}) '
                   f'rotate(90)" text-anchor="middle">{esc(label)}</text>')
        xy = " ".join(f"{sx(x):.2f},{sy_right(y):.2f}" for x, y in pts)
        out.append(f'<polyline class="series right" data-name="{esc(name)}" fill="none" '
                   f'stroke="#999" stroke-width="1.3" stroke-dasharray="5 3" points="{xy}"/>')
        legend.append((name, "#999", "5 3"))
    for k, (name, colour, dash) in enumerate(legend):      # top right, inside the plot
        x = plot_right - 10
        y = plot_top + 12 + 16 * k
        out.append(f'<line x1="{x - 24}" y1="{y - 4}" x2="{x - 4}" y2="{y - 4}" '
                   f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>'
                   f'<text x="{x - 30}" y="{y}" text-anchor="end">{esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def loss_svg(log, standalone=True) -> str:
    """train.py's log.jsonl records -> the loss (left axis) and learning rate (right) per step."""
    loss = [(r["step"], r["loss"]) for r in log]
    lr = [(r["step"], r["lr"]) for r in log if "lr" in r]
    return line_chart([("loss", loss)], "optimizer step", "loss per loss-carrying token (nats)",
                      right=("learning rate", lr, "learning rate"), log_y=True,
                      title=f"training loss and learning rate, {len(log)} steps",
                      standalone=standalone)


def write_loss_svg(log_path, svg_path):
    """OUT/log.jsonl -> OUT/loss.svg (train.py calls it at every checkpoint and at the end)."""
    log = read_jsonl(log_path)
    for k, r in enumerate(log, 1):
        for field in ("step", "loss"):
            if not isinstance(r.get(field), (int, float)):
                raise ValueError(f"{log_path}:{k}: field {field}: missing or not a number")
    atomic_write(svg_path, loss_svg(log))


# -------------------------------------------------------------------------------------------------
# The loss mask made visible: one LCE conversation, token by token
def token_blocks(ids, special) -> list[str]:
    """The part of the conversation each token is in, read from the ids alone (not the labels):
    'system' / 'user' for those messages, 'text' / 'code' / 'execution' for the assistant's
    blocks (opening token and <|endofblock|> included), 'assistant' for its <|assistant|> and
    <|endofmessage|>, 'bos' before the first message. special: {"<|text|>": id, ...}."""
    name = {token_id: token for token, token_id in special.items()}
    role = None                    # the message the token is in
    block = None                   # the assistant's block the token is in
    out = []
    for token_id in ids:
        token = name.get(token_id, "")
        if token in ("<|system|>", "<|user|>", "<|assistant|>"):
            role = token[2:-2]
            block = None
        elif token in ("<|text|>", "<|code|>", "<|execution|>"):
            block = token[2:-2]
        if role is None:
            out.append("bos")
        else:
            out.append(role if role != "assistant" else block or "assistant")
        if token == "<|endofblock|>":
            block = None
    return out


def _shown(piece) -> str:
    """How a SentencePiece piece reads: '▁' is a space, <0x0A> / <0x09> a newline / tab."""
    return piece.replace("\u2581", " ").replace("<0x0A>", "\u21b5\n").replace("<0x09>", "\u21e5\t")


def tokens_page(title, ids, labels, pieces, special, ignore=-100) -> str:
    """One conversation token by token. The background says which part a token is in
    (token_blocks); a token whose label is not `ignore` (lce_data.IGNORE: this module sits below
    lce_data) carries loss: black, underlined in red, the others grey. Hovering shows position, id
    and piece. labels: lce_data.encode_example's."""
    if not len(ids) == len(labels) == len(pieces):
        raise ValueError("ids, labels and pieces must have the same length")
    blocks = token_blocks(ids, special)
    counts = {}                    # part -> [tokens, loss tokens]
    spans = []
    for k, (token_id, label, piece, part) in enumerate(zip(ids, labels, pieces, blocks)):
        loss = label != ignore
        count = counts.setdefault(part, [0, 0])
        count[0] += 1
        count[1] += loss
        classes = f"t b-{part}" + (" loss" if loss else "") + (" sp" if piece in special else "")
        hover = f"#{k}  id {token_id}  {piece!r}  {part}  " + ("loss" if loss else "no loss")
        spans.append(f'<span class="{classes}" style="background:{BLOCK_COLOURS[part]}" '
                     f'title="{esc(hover)}">{esc(_shown(piece))}</span>')
    n_loss = sum(n for _, n in counts.values())
    rows = "".join(f'<tr><td><span class="key" style="background:{BLOCK_COLOURS[part]}">{part}'
                   f'</span></td><td class="num">{n}</td><td class="num">{n_loss_part}</td></tr>'
                   for part, (n, n_loss_part) in counts.items())
    body = (f"<h1>{esc(title)}</h1>\n<p class=\"note\">Paper &sect;2.3: the loss is on what the "
            "model must learn to write: the assistant's text and code blocks and its final "
            "&lt;|endofmessage|&gt;. The prompt and the execution output (the interpreter wrote "
            "it) carry none. <b>Black, underlined in red: carries loss</b>; grey: no loss. Hover "
            "a token for its position, id and piece.</p>\n"
            f'<p id="counts"><b>{len(ids)}</b> tokens, <b>{n_loss}</b> carry loss '
            f"({pct(n_loss / max(len(ids), 1))})</p>\n<table><tr><th>part</th><th>tokens</th>"
            f"<th>loss tokens</th></tr>{rows}</table>\n"
            f'<div class="tokens">{"".join(spans)}</div>')
    return page(title, body)


# -------------------------------------------------------------------------------------------------
# A run, problem by problem (eval.py report builds the rows from our results or the authors')
ERROR_RE = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b|Error: ",
                      re.M)


def blocks_html(blocks) -> str:
    """A solution block by block: text as text, code in a monospace box, execution output as
    output (a traceback or error in red)."""
    out = []
    for kind, content in blocks:
        if kind == "text":
            out.append(f'<div class="blk text">{esc(content)}</div>')
            continue
        error = kind == "execution" and ERROR_RE.search(content)
        label = "execution: error" if error else kind
        shown = esc(content) if content else "<i>(empty)</i>"
        out.append(f'<div class="blk {esc(kind)}{" error" if error else ""}"><div class="lab">'
                   f"{esc(label)}</div><pre>{shown}</pre></div>")
    return "\n".join(out) or '<p class="bad">no solution</p>'


def _cut(text, n):
    return text if len(text) <= n else text[:n] + "..."


def verdict_html(ok, name="") -> str:
    mark = '<span class="ok">&#10003;</span>' if ok else '<span class="bad">&#10007;</span>'
    name = name or ("right" if ok else "wrong")
    return f'<span class="vd">{mark} <small>{esc(name)}</small></span>'


def math_heatmap(rows) -> str:
    """MATH subject x level accuracy as a coloured table. rows: [(subject, level, correct)]."""
    cells = {}
    for subject, level, ok in rows:
        for key in [(subject, level), (subject, "all"), ("all", level), ("all", "all")]:
            count = cells.setdefault(key, [0, 0])        # [right, n]
            count[0] += bool(ok)
            count[1] += 1
    levels = sorted({k[1] for k in cells} - {"all"}, key=str) + ["all"]
    head = "".join(f"<th>{'level ' + esc(v) if v != 'all' else 'all'}</th>" for v in levels)
    lines = [f'<table class="heat"><tr><th>subject</th>{head}</tr>']
    for subject in sorted({k[0] for k in cells} - {"all"}) + ["all"]:
        tds = []
        for level in levels:
            if (subject, level) not in cells:
                tds.append("<td></td>")
                continue
            right, n = cells[(subject, level)]
            hue = 120 * right / n                     # red (0%) through yellow to green (100%)
            tds.append(f'<td class="num" style="background:hsl({hue:.0f},65%,78%)">'
                       f"{pct(right / n)}<br><small>{right}/{n}</small></td>")
        lines.append(f"<tr><th>{esc(subject)}</th>{''.join(tds)}</tr>")
    return "\n".join(lines) + "</table>"


REPORT_JS = """
const probs = Array.from(document.querySelectorAll('details.problem'));
const texts = probs.map(p => p.textContent.toLowerCase());
const box = document.getElementById('q'), pick = document.getElementById('verdict');
const radios = Array.from(document.querySelectorAll('input[name=f]'));
function apply() {
  const q = box.value.trim().toLowerCase();
  const f = radios.find(r => r.checked).value;
  const v = pick ? pick.value : '0';
  let shown = 0;
  probs.forEach((p, i) => {
    const ok = p.dataset['v' + v] === '1';
    const keep = (f === 'all' || (f === 'right' && ok) || (f === 'wrong' && !ok) ||
                  (f === 'disagree' && p.dataset.agree === '0')) && (!q || texts[i].includes(q));
    p.hidden = !keep;
    shown += keep;
  });
  document.getElementById('shown').textContent = shown;
  history.replaceState(null, '', '#' + new URLSearchParams({f: f, q: q, v: v}));
}
// the view lives in the address (#f=wrong&q=ducks), so it can be bookmarked or shared
const h = new URLSearchParams(location.hash.slice(1));
box.value = h.get('q') || '';
radios.forEach(r => { r.checked = r.value === (h.get('f') || 'all'); });
if (!radios.some(r => r.checked)) radios[0].checked = true;
if (pick && h.get('v')) pick.value = h.get('v');
box.addEventListener('input', apply);
[pick, ...radios].forEach(e => e && e.addEventListener('change', apply));
apply();
"""


def report_page(title, rows, summary=None, paper=(), note="") -> str:
    """A run's page. rows: one dict per problem: id, question, blocks [(type, content)], answers
    {label: answer}, reference, verdicts {label: bool} (the first is the headline), and for MATH
    subject and level. summary: the run's summary.json, shown as it is. paper: [(model, accuracy
    %, is this run's model)]."""
    names = list(rows[0]["verdicts"]) if rows else []
    n = len(rows)
    parts = [f"<h1>{esc(title)}</h1>"] + ([f'<p class="note">{esc(note)}</p>'] if note else [])
    # this run's accuracy under each verdict, then the paper's numbers for the same benchmark
    table = ["<table><tr><th>model</th><th>verdict</th><th colspan=2>accuracy</th>"
             "<th>right / n</th></tr>"]
    for name in names:
        right = sum(bool(r["verdicts"].get(name)) for r in rows)
        table.append(f'<tr class="me"><td>this run</td><td>{esc(name)}</td>'
                     f"<td>{bar(right / max(n, 1))}</td><td class=num>{pct(right / max(n, 1))}"
                     f"</td><td class=num>{right} / {n}</td></tr>")
    for model, acc, mine in paper:
        table.append(f'<tr{" class=me" if mine else ""}><td>{esc(model)}</td><td>paper</td>'
                     f'<td>{bar(acc / 100, "paper")}</td><td class=num>{acc:.1f}%</td>'
                     "<td></td></tr>")
    parts.append("<h2>Accuracy</h2>" + "".join(table) + "</table>")
    if summary:
        flat = {}
        for key, value in summary.items():      # one level of nesting: "key.subkey"
            for subkey, item in (value.items() if isinstance(value, dict) else [(None, value)]):
                flat[f"{key}.{subkey}" if subkey else key] = item
        parts.append("<details><summary>summary.json</summary><table>" + "".join(
            f"<tr><td>{esc(k)}</td><td class=num>{esc(v)}</td></tr>" for k, v in flat.items())
            + "</table></details>")
    math_rows = [(r["subject"], r.get("level"), r["verdicts"][names[0]])
                 for r in rows if r.get("subject")]
    if math_rows:
        parts.append(f"<h2>MATH: accuracy by subject and level ({esc(names[0])})</h2>"
                     + math_heatmap(math_rows))
    # filter by verdict, search by id or text (REPORT_JS)
    pick = "" if len(names) < 2 else 'verdict <select id="verdict">' + "".join(
        f'<option value="{k}">{esc(v)}</option>' for k, v in enumerate(names)) + "</select> "
    filters = ["all", "right", "wrong"] + ["disagree"] * (len(names) > 1)
    radios = "".join(f'<label><input type="radio" name="f" value="{f}">{f}</label> '
                     for f in filters)
    parts.append(f'<h2>Problems (<span id="shown">{n}</span> of {n} shown)</h2>\n'
                 f'<div class="controls">{pick}{radios} <input id="q" type="search" size="40" '
                 'placeholder="search id or text"></div>')
    for r in rows:
        verdicts = [bool(r["verdicts"].get(name)) for name in names]
        data = " ".join(f'data-v{k}="{int(v)}"' for k, v in enumerate(verdicts))
        marks = "".join(verdict_html(v, name) for name, v in zip(names, verdicts))
        if len(set(verdicts)) > 1:
            marks += '<span class="disagree">verdicts disagree</span> '
        where = f" &middot; {esc(r['subject'])}, level {esc(r.get('level'))}" \
            if r.get("subject") else ""
        question = str(r.get("question", ""))
        short = _cut(question, 160)
        full = f"<p><b>Question.</b> {esc(question)}</p>\n" if short != question else ""
        answer = next(iter(r.get("answers", {}).values()), None)
        brief = (f" &middot; <code>{esc(_cut(str(answer), 40))}</code> for "
                 f"<code>{esc(_cut(str(r.get('reference')), 40))}</code>")
        answers = "".join(f"<tr><td>{esc(k)}</td><td><code>{esc(v)}</code></td></tr>"
                          for k, v in r.get("answers", {}).items())
        parts.append(
            f'<details class="problem" {data} data-agree="{int(len(set(verdicts)) < 2)}"'
            f'{" open" if n <= 30 else ""}><summary>{marks}<b class="mono">{esc(r["id"])}</b>'
            f"{where} &middot; {esc(short)}{brief}</summary>\n{full}"
            f"{blocks_html(r.get('blocks', []))}\n<table>{answers}<tr><td>reference</td>"
            f"<td><code>{esc(r.get('reference'))}</code></td></tr></table></details>")
    return page(title, "\n".join(parts), REPORT_JS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="cmd", required=True)
    loss = commands.add_parser("loss", help="loss.svg of a train.py log.jsonl (also mid-run)")
    loss.add_argument("log", help="OUT/log.jsonl")
    loss.add_argument("--out", help="the .svg to write (default: loss.svg beside the log)")
    args = parser.parse_args(argv)
    try:
        folder = os.path.dirname(os.path.abspath(args.log))
        target = args.out or os.path.join(folder, "loss.svg")
        write_loss_svg(args.log, target)
        print(target)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
