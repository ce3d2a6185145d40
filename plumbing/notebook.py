"""notebook.py: what the authors' Jupyter kernel showed after a cell ran, by hand (no IPython).

MathCoder's execution blocks are what an IPython 8 kernel sent back (docs/method.md §4; the
authors' src/inference.py, Python 3.9, 2023): the cell's stdout/stderr, then the text/plain display
of its last expression, or IPython's traceback with its parts joined by one space. The model was
evaluated reading that text, so sandbox.py shows the same. This file mirrors, in its own small code:

  * the cell      IPython's run_cell: leading blank lines and indentation removed, statements run
                  one by one, the last one's value shown (pretty.py: IPython's text/plain printer)
                  unless the cell ends with ";", `Cell In[k]` counting the problem's cells from 1
                  (a blank cell does not count);
  * tracebacks    IPython.core.ultratb in "Context" mode, with the context lines stack_data picks
                  (2 statements before and after, blank lines hidden), chained exceptions and
                  collapsed recursion; a SyntaxError in ultratb's short layout.

    kernel = Kernel()
    namespace = {"__name__": "__main__"}
    kernel.run("x = [1, 2]", namespace)  # -> ""  (what follows the cell's own printed output)
    kernel.run("{3, 1, 2}", namespace)   # -> "{1, 2, 3}"
    kernel.run("x[5]", namespace)  # -> "-----...----- IndexError     Traceback (most recent call
                                   #     last) Cell In[3], line 1\n----> 1 x[5]\n IndexError: ..."

Where this differs from the authors' kernel (replay.py counts the differences on their released
runs):
  * versions: Python 3.9 and SymPy ~1.12 there; newer ones word some errors differently and have
    other library paths and line numbers; numpy is asked for its 1.x print layout;
  * colour: their regex missed the 256-colour codes of ultratb's highlighted source lines, which
    stay in most released tracebacks; here there is no colour at all;
  * a timed-out cell shows their message (TIMEOUT) and the session goes on (sandbox.py); their
    kernel was never interrupted, so every later cell of that problem timed out too;
  * not mirrored: magics, `!shell`, `x?`, `display()`, the `_`/`Out` history, the "To exit" warning
    after SystemExit, IPython's own frame above a SyntaxError raised while running, and the printers
    for regex patterns, super and SimpleNamespace (shown by repr); a cell's file is
    /tmp/ipykernel/HASH.py (ipykernel: /tmp/ipykernel_PID/HASH.py, seen in warnings) so runs repeat.

Only the standard library and pretty.py are imported: the sandbox's worker loads this file before
it drops its privileges.
"""
import ast, collections, inspect, io, linecache, os, re, sys, textwrap, tokenize, types, zlib

from plumbing.pretty import pretty

RULE = "-" * 75         # ultratb's rule: min(75, terminal width)
# What the authors' run_code() returned on jupyter_client's TimeoutError (src/inference.py).
TIMEOUT = f"{RULE} Timeout waiting for reply{' ' * 32}Traceback (most recent call last)"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # every colour code, the 256-colour ones included
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)
_BLOCKS = (ast.stmt, ast.excepthandler) + ((ast.match_case,) if hasattr(ast, "match_case") else ())


# ---------------------------------------------------------------------------------- the cell
def transform_cell(code):
    """IPython's cleanup transforms (inputtransformer2): a trailing newline added, leading blank
    lines dropped, and the first line's indentation removed from every line that starts with it."""
    lines = (code if code.endswith("\n") else code + "\n").splitlines(keepends=True)
    while lines and (not lines[0] or lines[0].isspace()):
        lines.pop(0)
    indent = re.match(r"[ \t]+", lines[0]).group(0) if lines and lines[0][:1] in " \t" else ""
    return "".join(line[len(indent):] if line.startswith(indent) else line for line in lines)


def _ends_with_semicolon(cell):
    """IPython's DisplayHook.quiet(): the last token that is not a comment or a newline is ';'."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(cell).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    last = next((token for token in reversed(tokens) if token.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


class Kernel:
    """What an IPython kernel keeps besides the user's namespace: its execution counter and the
    cells it compiled (their source lines feed tracebacks and warnings through linecache)."""

    def __init__(self):
        self.count = 1       # execution_count: the next cell is In[1]
        self.cells = {}      # cell file name (from its code, as ipykernel) -> k of its latest run

    def reset(self):
        """A new problem: counting starts again at In[1]; the cells' sources are forgotten."""
        for name in self.cells:
            linecache.cache.pop(name, None)
        for key in [key for key in _parsed if key[0] in self.cells]:
            del _parsed[key]
        self.count = 1
        self.cells = {}

    def run(self, code, namespace):
        """Run one cell in `namespace`; return what the kernel sent after the cell's own output:
        the text/plain display of the last expression, a traceback, or "" (IPython's run_cell)."""
        if not code.strip():
            return ""  # a blank cell runs nothing and does not move the counter
        _numpy_as_1x()
        cell = transform_cell(code)
        name = f"/tmp/ipykernel/{zlib.crc32(code.encode('utf-8', 'replace'))}.py"
        self.cells[name] = self.count
        self.count += 1
        linecache.cache[name] = (len(cell), None, [line + "\n" for line in cell.splitlines()], name)
        try:
            nodes = ast.parse(cell, name).body
        except (SyntaxError, OverflowError, ValueError, TypeError, MemoryError) as e:
            return self.format_exception_only(e)
        value = None
        for i, node in enumerate(nodes):  # one statement at a time, as IPython's run_ast_nodes
            shown = i == len(nodes) - 1 and isinstance(node, ast.Expr)
            tree = ast.Expression(node.value) if shown else ast.Module([node], [])
            try:  # a statement that parses but does not compile ('return' outside a function)
                compiled = compile(tree, name, "eval" if shown else "exec")  # after those before
            except Exception as e:
                return self.format_exception_only(e)
            try:
                value = eval(compiled, namespace) if shown else exec(compiled, namespace)
            except SystemExit as e:  # IPython shows exit() and sys.exit() without a traceback
                return ("An exception has occurred, use %tb to see the full traceback.\n "
                        + self.format_exception_only(e))
            except BaseException as e:
                return self.format_traceback(e)
        if value is None or _ends_with_semicolon(cell):
            return ""
        try:
            return pretty(value)
        except Exception as e:  # a __repr__ that fails: IPython shows the error instead
            return self.format_traceback(e)

    # ------------------------------------------------------------------------------ tracebacks
    def _link(self, filename, lineno):
        """ultratb's _format_filename: "Cell In[k], line n" for a cell, "File PATH:n" for a file."""
        if filename in self.cells:
            where = f"Cell In[{self.cells[filename]}]"
            return where if lineno is None else f"{where}, line {lineno}"
        home = os.path.expanduser("~")  # IPython's compress_user
        if home not in ("", "/") and filename.startswith(home):
            filename = "~" + filename[len(home):]
        return f"File {filename}" if lineno is None else f"File {filename}:{lineno}"

    def format_exception_only(self, e):
        """ultratb's ListTB._format_exception_only: a SyntaxError as `Cell In[k], line n`, the
        stripped line, a caret under the error's column, then `SyntaxError: msg`; any other error
        in one line."""
        out = ""
        if isinstance(e, SyntaxError):
            lineno = e.lineno or None
            out += f"  {self._link(e.filename or '<string>', lineno)}\n"
            line = (linecache.getline(e.filename or "<string>", lineno) if lineno else "") or e.text
            if line is not None:
                indent = len(line) - len(line.lstrip())
                out += f"    {line.strip()}\n"
                if e.offset is not None:
                    under = line[indent:e.offset - 1]
                    out += "    " + "".join(c if c.isspace() else " " for c in under) + "^\n"
        try:
            msg = e.msg  # ultratb prefers .msg, which SyntaxError and a few others have
        except Exception:
            msg = _safe_str(e)
        out += f"{type(e).__name__}: {msg}\n" if msg else f"{type(e).__name__}\n"
        return out + "".join(f"{note}\n" for note in getattr(e, "__notes__", []))

    def format_traceback(self, e):
        """ultratb's VerboseTB in Context mode, the parts joined with one space (the authors'
        script): the rule, then for each exception of the chain (innermost cause first) its header,
        its frames and its final line. A SyntaxError raised while running: the short layout."""
        if isinstance(e, SyntaxError):  # ultratb's ListTB (IPython's own run_code frame not shown)
            parts = []
            for tb in _walk_tb(e.__traceback__):
                code = tb.tb_frame.f_code
                if _is_ours(code):
                    continue
                line = linecache.getline(code.co_filename, tb.tb_lineno, tb.tb_frame.f_globals)
                parts.append(f"  {self._link(code.co_filename, tb.tb_lineno)}"
                             + ("\n" if code.co_name == "<module>" else f" in {code.co_name}\n")
                             + (f"    {line.strip()}\n" if line.strip() else ""))
            head = ["Traceback (most recent call last):\n"] if parts else []
            return " ".join(head + parts + [self.format_exception_only(e)])
        chain = []
        context = 5  # lines of context for the exception raised; 3 for those in its chain
        seen = set()
        while e is not None:
            chain.append(self._one_exception(e, context))
            context = 3
            cause = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
            if cause is None or id(cause) in seen:
                break
            seen.add(id(cause))
            chain.append([
                "\nThe above exception was the direct cause of the following exception:\n"
                if e.__cause__ else
                "\nDuring handling of the above exception, another exception occurred:\n"])
            e = cause
        return " ".join([RULE] + [part for parts in reversed(chain) for part in parts])

    def _one_exception(self, e, context):
        """format_exception_as_a_whole: header, frames (repeats collapsed, hidden ones skipped), the
        `Name: message` line and any notes."""
        name = type(e).__name__
        parts = [name + "Traceback (most recent call last)".rjust(75 - len(name))]
        frames = [tb for tb in _walk_tb(e.__traceback__) if not _is_ours(tb.tb_frame.f_code)]
        records = _collapse_repeats(frames)  # a frame, or the description of frames left out
        hidden = 0
        for i, record in enumerate(records):
            is_frame = isinstance(record, types.TracebackType)
            if is_frame and i != len(records) - 1 and _hides(record.tb_frame):
                hidden += 1
                continue
            if hidden:
                parts.append(f"    [... skipping hidden {hidden} frame]\n")
                hidden = 0
            parts.append(self._frame(record, context) if is_frame
                         else f"    [... skipping similar frames: {record}]\n")
        if hidden:
            parts.append(f"    [... skipping hidden {hidden} frame]\n")
        parts.append(f"{name}: {_safe_str(e)}")
        notes = getattr(e, "__notes__", [])
        notes = [repr(notes)] if isinstance(notes, (str, bytes)) else notes
        return parts + [_safe_str(note) for note in notes]

    def _frame(self, tb, context):
        """ultratb's format_record: `Cell In[k], line n` or `File PATH:n`, `, in FUNC(ARGS)` in a
        function, then the context lines numbered in 7 columns, `---->` marking the current one."""
        code = tb.tb_frame.f_code
        lineno = tb.tb_lineno
        head = self._link(code.co_filename, lineno)
        func = _qualname(code)
        if func != "<module>":
            try:
                info = inspect.getargvalues(tb.tb_frame)
                args = inspect.formatargvalues(*info, formatvalue=lambda value: "")
                head += f", in {func}{args}"
            except KeyError:  # an argument deleted inside the function
                head += f", in {func}(***failed resolving arguments***)"
        out = [head + "\n"]
        after = (context - 1) // 2  # pieces after the current one; the rest of context before
        shown = []
        if lineno is not None:
            shown = _context_lines(code.co_filename, tb.tb_frame.f_globals, lineno,
                                   before=context - 1 - after, after=after)
        for number, text in shown:
            if number is None:
                out.append("   (...)\n")
            elif number == lineno:  # IPython's make_arrow: "---->" filling the 7 columns
                pad = 7 - len(str(number))
                arrow = "-" * (pad - 2) + "> " if pad >= 2 else ">" if pad == 1 else ""
                out.append(f"{arrow}{number} {text}\n")
            else:
                out.append(f"{number:>7} {text}\n")
        return "".join(out)


def _numpy_as_1x():
    """numpy 2 shows np.float64(1.5) where the authors' numpy 1.x showed 1.5: its 1.25 layout."""
    np = sys.modules.get("numpy")
    if np is not None and not np.__version__.startswith("1."):
        np.set_printoptions(legacy="1.25")


def _safe_str(obj):
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__} object>"


def _is_ours(code):
    """Frames of this file, the printer and the sandbox around the cell: sandbox.py, its worker and
    its audit hook (IPython drops its own run_code)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = ("notebook.py", "pretty.py", "worker.py", "isolation.py",
            os.path.join(os.pardir, "sandbox.py"))
    return os.path.abspath(code.co_filename) in {os.path.normpath(os.path.join(here, name))
                                                 for name in ours}


def _walk_tb(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _hides(frame):
    try:
        return bool(frame.f_locals.get("__tracebackhide__", 0))
    except Exception:
        return False


def _qualname(code):
    """The function's name as the `executing` package gives it (a comprehension: its bare name)."""
    if code.co_name.startswith("<") and code.co_name != "<lambda>":
        return code.co_name
    return getattr(code, "co_qualname", code.co_name)


def _collapse_repeats(frames):
    """stack_data's collapse_repeated: where a (code, line) pair occurs over 3 times (recursion),
    keep its first, second and last occurrence; each run of the others becomes a description."""
    keys = [(tb.tb_frame.f_code, tb.tb_lineno) for tb in frames]
    counts = collections.Counter(keys)
    keep = [counts[key] <= 3 for key in keys]
    i = 0
    while i < len(keys):  # each maximal run of frames whose keys are all common
        j = i
        while j < len(keys) and counts[keys[j]] > 3:
            j += 1
        run = keys[i:j]
        for key in set(run):
            first = run.index(key)
            keep[i + first] = True
            if key in run[first + 1:]:
                keep[i + run.index(key, first + 1)] = True
            keep[i + len(run) - 1 - run[::-1].index(key)] = True
        i = max(j, i + 1)
    out = []
    skipped = []
    for tb, key, kept in zip(frames, keys, keep):
        if not kept:
            skipped.append(key)
            continue
        if skipped:
            out.append(_describe(skipped))
            skipped = []
        out.append(tb)
    if skipped:
        out.append(_describe(skipped))
    return out


def _describe(keys):
    counts = sorted(collections.Counter(keys).items(),
                    key=lambda key_count: (-key_count[1], key_count[0][0].co_name))
    return ", ".join(f"{_qualname(code)} at line {line} ({n} times)" for (code, line), n in counts)


# ---------------------------------------------------------------------------------- context lines
_parsed = {}  # (filename, text) -> (lines, tree or None, pieces): library files are parsed once


def _context_lines(filename, module_globals, lineno, before, after):
    """stack_data's FrameInfo.lines as ultratb uses them: the source "piece" (a statement, or the
    comments between two statements) holding `lineno`, `before` pieces before it and `after` after,
    all inside the innermost function, class or module around it; blank lines between pieces hidden,
    a piece other than the current one cut to 6 lines; the common indentation removed.
    A list of (line number, text), with (None, None) where lines were cut."""
    raw = linecache.getlines(filename, module_globals)
    text = "".join(raw)
    if (filename, text) not in _parsed:
        lines = [line.rstrip("\r\n") for line in raw]
        try:
            tree = ast.parse(text, filename)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            tree = None
        if tree is None:  # each line a piece of its own
            pieces = [range(number, number + 1) for number in range(1, len(raw) + 1)]
        else:
            pieces = _pieces(tree, lines)
        _parsed[(filename, text)] = (lines, tree, pieces)
    lines, tree, pieces = _parsed[(filename, text)]
    if tree is not None:
        first, last = _span(_scope_at(tree, lineno), len(lines))
        pieces = [piece for piece in pieces if first <= piece.start and piece.stop <= last + 1]
    current = [piece for piece in pieces if lineno in piece]
    if len(current) != 1:
        return []
    pos = pieces.index(current[0])
    shown = []
    for piece in pieces[max(0, pos - before):pos + 1 + after]:
        numbers = list(piece)
        if piece != current[0] and len(numbers) > 6:  # stack_data's max_lines_per_piece
            numbers = numbers[:3] + [None] + numbers[-2:]
        shown += numbers
    real = [lines[number - 1] for number in shown if number is not None]
    if not real:
        return []
    indent = len(real[0]) - len(textwrap.dedent("\n".join(real)).splitlines()[0])
    return [(number, None if number is None else lines[number - 1][indent:]) for number in shown]


def _span(node, n_lines):
    """asttokens' line range of a statement (decorators included), inclusive; a module: all."""
    if isinstance(node, ast.Module):
        return 1, n_lines + 1
    if hasattr(ast, "match_case") and isinstance(node, ast.match_case):
        return node.pattern.lineno, node.body[-1].end_lineno
    first = node.decorator_list[0] if getattr(node, "decorator_list", None) else node
    return first.lineno, node.end_lineno


def _pieces(tree, lines):
    """stack_data's Source.pieces: the line ranges of the module's statements, recursively (a
    compound statement's header is one piece, each statement of its body another), the lines between
    statements (comments) pieces of their own; trimmed of blank lines at both ends, empty ones
    dropped."""
    def split(node, start, end):
        for _, body in ast.iter_fields(node):
            if not (isinstance(body, list) and body and isinstance(body[0], _BLOCKS)):
                continue
            firsts = {}  # statements on one line range (`a = 1; b = 2`): the first stands for all
            for stmt in body:
                first, last = _span(stmt, len(lines))
                firsts.setdefault((first, last + 1), stmt)
            for (stmt_start, stmt_end), stmt in sorted(firsts.items(), key=lambda item: item[0]):
                for inner_start, inner_end in split(stmt, stmt_start, stmt_end):
                    if start < inner_start:
                        yield start, inner_start
                    if inner_start < inner_end:
                        yield inner_start, inner_end
                    start = inner_end
        yield start, end

    merged = []  # [start, end) line ranges
    for start, end in split(tree, 1, len(lines) + 1):
        if end <= start:
            continue
        if merged and start < merged[-1][1]:  # two statements on one line, separated by ";"
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))

    def blank(number):
        try:
            return not lines[number - 1].strip()
        except IndexError:
            return False
    out = []
    for start, end in merged:
        while blank(start):
            start += 1
        while blank(end - 1):
            end -= 1
        if start < end:
            out.append(range(start, end))
    return out


def _scope_at(tree, lineno):
    """The innermost function, class or module that holds the deepest statement spanning `lineno`
    (the scope stack_data draws context from; a `def` line itself belongs to the outer scope)."""
    node = tree
    scope = tree
    while True:
        inner = next((child for child in ast.iter_child_nodes(node) if isinstance(child, _BLOCKS)
                      and _span(child, 0)[0] <= lineno <= _span(child, 0)[1]), None)
        if inner is None:
            return scope
        if isinstance(node, _SCOPES):
            scope = node
        node = inner
