"""notebook.py: what the authors' Jupyter kernel showed after a cell ran, by hand (no IPython).

MathCoder's execution blocks are what an IPython 8 kernel sent back (docs/method.md §4; the
authors' src/inference.py, Python 3.9, 2023): the cell's stdout/stderr, then the text/plain display
of its last expression, or IPython's traceback with its parts joined by one space. The model was
evaluated reading that text, so sandbox.py shows the same. This file mirrors, in its own small code:

  * the cell      IPython's run_cell: leading blank lines and indentation removed, statements run
                  one by one, the last one's value shown unless the cell ends with ";", `Cell In[k]`
                  counting the problem's cells from 1 (a blank cell does not count);
  * pretty()      IPython.lib.pretty, the printer behind text/plain: sets sorted, containers
                  wrapped at 79 columns, collections shown as calls, numpy's and sympy's objects
                  by their repr;
  * tracebacks    IPython.core.ultratb in "Context" mode, with the context lines stack_data picks
                  (2 statements before and after, blank lines hidden), chained exceptions and
                  collapsed recursion; a SyntaxError in ultratb's short layout.

    k, ns = Kernel(), {"__name__": "__main__"}
    k.run("x = [1, 2]", ns)  # -> ""  (what follows the cell's own printed output)
    k.run("{3, 1, 2}", ns)   # -> "{1, 2, 3}"
    k.run("x[5]", ns)  # -> "-----...----- IndexError     Traceback (most recent call last) Cell
                       #     In[3], line 1\n----> 1 x[5]\n IndexError: list index out of range"

Where this differs from the authors' kernel (replay.py counts the differences on their released runs):
  * versions: Python 3.9 and SymPy ~1.12 there; newer ones word some errors differently (REWORDED)
    and have other library paths and line numbers; numpy is asked for its 1.x print layout;
  * colour: their regex missed the 256-colour codes of ultratb's highlighted source lines, which
    stay in most released tracebacks; here there is no colour at all;
  * a timed-out cell shows their message (TIMEOUT) and the session goes on (sandbox.py); their
    kernel was never interrupted, so every later cell of that problem timed out too;
  * not mirrored: magics, `!shell`, `x?`, `display()`, the `_`/`Out` history, the "To exit" warning
    after SystemExit, IPython's own frame above a SyntaxError raised while running, and the printers
    for regex patterns, super and SimpleNamespace (shown by repr); a cell's file is
    /tmp/ipykernel/HASH.py (ipykernel: /tmp/ipykernel_PID/HASH.py, seen in warnings) so runs repeat.

Only the standard library is imported: the sandbox's worker loads this file before it drops its
privileges.
"""
import ast, collections, inspect, io, linecache, os, re, sys, textwrap, tokenize, types, zlib

WIDTH = 79              # IPython's PlainTextFormatter.max_width
MAX_SEQ_LENGTH = 1000   # items shown of a container before ", ..."
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
    last = next((t for t in reversed(tokens) if t.type not in skip), None)
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
        for key in [key for key in _sources if key[0] in self.cells]:
            del _sources[key]
        self.count, self.cells = 1, {}

    def run(self, code, ns):
        """Run one cell in namespace `ns`; return what the kernel sent after the cell's own output:
        the text/plain display of the last expression, a traceback, or "" (IPython's run_cell)."""
        if not code.strip():
            return ""  # a blank cell runs nothing and does not move the counter
        _numpy_as_1x()
        cell = transform_cell(code)
        name = f"/tmp/ipykernel/{zlib.crc32(code.encode('utf-8', 'replace'))}.py"
        self.cells[name], self.count = self.count, self.count + 1
        linecache.cache[name] = (len(cell), None, [line + "\n" for line in cell.splitlines()], name)
        try:
            nodes = ast.parse(cell, name).body
        except (SyntaxError, OverflowError, ValueError, TypeError, MemoryError) as e:
            return self.format_exception_only(e)
        value = None
        for i, node in enumerate(nodes):  # one statement at a time, as IPython's run_ast_nodes
            shown = i == len(nodes) - 1 and isinstance(node, ast.Expr)
            try:  # a statement that parses but does not compile ('return' outside a function)
                code_obj = compile(ast.Expression(node.value) if shown else ast.Module([node], []),
                                   name, "eval" if shown else "exec")  # fails after those before
            except Exception as e:
                return self.format_exception_only(e)
            try:
                value = eval(code_obj, ns) if shown else exec(code_obj, ns)
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
            for t in _walk_tb(e.__traceback__):
                code = t.tb_frame.f_code
                if _is_ours(code):
                    continue
                line = linecache.getline(code.co_filename, t.tb_lineno, t.tb_frame.f_globals)
                parts.append(f"  {self._link(code.co_filename, t.tb_lineno)}"
                             + ("\n" if code.co_name == "<module>" else f" in {code.co_name}\n")
                             + (f"    {line.strip()}\n" if line.strip() else ""))
            head = ["Traceback (most recent call last):\n"] if parts else []
            return " ".join(head + parts + [self.format_exception_only(e)])
        chain, context = [], 5  # 5 lines of context for the exception raised, 3 for its chain
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
        tbs = [t for t in _walk_tb(e.__traceback__) if not _is_ours(t.tb_frame.f_code)]
        records = _collapse_repeats(tbs)
        hidden = 0
        for i, rec in enumerate(records):
            if isinstance(rec, types.TracebackType) and i != len(records) - 1 \
                    and _hides(rec.tb_frame):
                hidden += 1
                continue
            if hidden:
                parts.append(f"    [... skipping hidden {hidden} frame]\n")
                hidden = 0
            parts.append(self._frame(rec, context) if isinstance(rec, types.TracebackType)
                         else f"    [... skipping similar frames: {rec}]\n")
        if hidden:
            parts.append(f"    [... skipping hidden {hidden} frame]\n")
        parts.append(f"{name}: {_safe_str(e)}")
        notes = getattr(e, "__notes__", [])
        notes = [repr(notes)] if isinstance(notes, (str, bytes)) else notes
        return parts + [_safe_str(note) for note in notes]

    def _frame(self, tb, context):
        """ultratb's format_record: `Cell In[k], line n` or `File PATH:n`, `, in FUNC(ARGS)` in a
        function, then the context lines numbered in 7 columns, `---->` marking the current one."""
        code, lineno = tb.tb_frame.f_code, tb.tb_lineno
        head = self._link(code.co_filename, lineno)
        func = _qualname(code)
        if func != "<module>":
            try:
                info = inspect.getargvalues(tb.tb_frame)
                head += ", in " + func + inspect.formatargvalues(*info, formatvalue=lambda v: "")
            except KeyError:  # an argument deleted inside the function
                head += f", in {func}(***failed resolving arguments***)"
        out = [head + "\n"]
        shown = [] if lineno is None else _context_lines(
            code.co_filename, tb.tb_frame.f_globals, lineno,
            before=context - 1 - (context - 1) // 2, after=(context - 1) // 2)
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
    """Frames of this file and of the sandbox around the cell (IPython drops its own run_code)."""
    return os.path.dirname(code.co_filename) == os.path.dirname(__file__) and \
        os.path.basename(code.co_filename) in ("notebook.py", "sandbox.py")


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


def _collapse_repeats(tbs):
    """stack_data's collapse_repeated: where a (code, line) pair occurs over 3 times (recursion),
    keep its first, second and last occurrence; each run of the others becomes a description."""
    keys = [(t.tb_frame.f_code, t.tb_lineno) for t in tbs]
    counts = collections.Counter(keys)
    keep = [counts[k] <= 3 for k in keys]
    i = 0
    while i < len(keys):  # each maximal run of frames whose keys are all common
        j = i
        while j < len(keys) and counts[keys[j]] > 3:
            j += 1
        run = keys[i:j]
        for k in set(run):
            first = run.index(k)
            keep[i + first] = True
            if k in run[first + 1:]:
                keep[i + run.index(k, first + 1)] = True
            keep[i + len(run) - 1 - run[::-1].index(k)] = True
        i = max(j, i + 1)
    out, skipped = [], []
    for t, key, kept in zip(tbs, keys, keep):
        if not kept:
            skipped.append(key)
            continue
        if skipped:
            out.append(_describe(skipped))
            skipped = []
        out.append(t)
    if skipped:
        out.append(_describe(skipped))
    return out


def _describe(keys):
    counts = sorted(collections.Counter(keys).items(), key=lambda kc: (-kc[1], kc[0][0].co_name))
    return ", ".join(f"{_qualname(code)} at line {line} ({n} times)" for (code, line), n in counts)


# ---------------------------------------------------------------------------------- context lines
_sources = {}  # (filename, text) -> (lines, tree or None, pieces): library files are parsed once


def _context_lines(filename, module_globals, lineno, before, after):
    """stack_data's FrameInfo.lines as ultratb uses them: the source "piece" (a statement, or the
    comments between two statements) holding `lineno`, `before` pieces before it and `after` after,
    all inside the innermost function, class or module around it; blank lines between pieces hidden,
    a piece other than the current one cut to 6 lines; the common indentation removed.
    Yields (line number, text), or (None, None) where lines were cut."""
    raw = linecache.getlines(filename, module_globals)
    text = "".join(raw)
    if (filename, text) not in _sources:
        lines = [line.rstrip("\r\n") for line in raw]
        try:
            tree = ast.parse(text, filename)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            tree = None
        pieces = _pieces(tree, lines) if tree else [range(i, i + 1) for i in range(1, len(raw) + 1)]
        _sources[(filename, text)] = (lines, tree, pieces)
    lines, tree, pieces = _sources[(filename, text)]
    if tree is not None:
        start, end = _span(_scope_at(tree, lineno), len(lines))
        pieces = [p for p in pieces if start <= p.start and p.stop <= end + 1]
    current = [p for p in pieces if lineno in p]
    if len(current) != 1:
        return []
    pos = pieces.index(current[0])
    shown = []
    for piece in pieces[max(0, pos - before):pos + 1 + after]:
        numbers = list(piece)
        if piece != current[0] and len(numbers) > 6:  # stack_data's max_lines_per_piece
            numbers = numbers[:3] + [None] + numbers[-2:]
        shown += numbers
    real = [lines[n - 1] for n in shown if n is not None]
    if not real:
        return []
    indent = len(real[0]) - len(textwrap.dedent("\n".join(real)).splitlines()[0])
    return [(n, None if n is None else lines[n - 1][indent:]) for n in shown]


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
                s, e = _span(stmt, len(lines))
                firsts.setdefault((s, e + 1), stmt)
            for (s, e), stmt in sorted(firsts.items(), key=lambda item: item[0]):
                for inner_start, inner_end in split(stmt, s, e):
                    if start < inner_start:
                        yield start, inner_start
                    if inner_start < inner_end:
                        yield inner_start, inner_end
                    start = inner_end
        yield start, end

    merged = []
    for s, e in split(tree, 1, len(lines) + 1):
        if e <= s:
            continue
        if merged and s < merged[-1][1]:  # two statements on one line, separated by ";"
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))

    def blank(i):
        try:
            return not lines[i - 1].strip()
        except IndexError:
            return False
    out = []
    for s, e in merged:
        while blank(s):
            s += 1
        while blank(e - 1):
            e -= 1
        if s < e:
            out.append(range(s, e))
    return out


def _scope_at(tree, lineno):
    """The innermost function, class or module that holds the deepest statement spanning `lineno`
    (the scope stack_data draws context from; a `def` line itself belongs to the outer scope)."""
    node, scope = tree, tree
    while True:
        inner = next((c for c in ast.iter_child_nodes(node) if isinstance(c, _BLOCKS)
                      and _span(c, 0)[0] <= lineno <= _span(c, 0)[1]), None)
        if inner is None:
            return scope
        if isinstance(node, _SCOPES):
            scope = node
        node = inner


# ---------------------------------------------------------------------------------- pretty printing
def pretty(obj, max_width=WIDTH):
    """obj as IPython's text/plain display shows it (IPython.lib.pretty, PlainTextFormatter's
    settings): Wadler-style groups that break, outermost first, when a line would pass 79 columns.
    """
    p = _Printer(max_width)
    p.pretty(obj)
    p.flush()
    return "".join(p.out)


class _Group:
    def __init__(self, depth):
        self.depth, self.breakables, self.want_break = depth, collections.deque(), False


class _Text:
    def __init__(self):
        self.parts, self.width = [], 0

    def output(self, p, width):
        p.out.extend(self.parts)
        return width + self.width


class _Breakable:
    def __init__(self, sep, p):
        self.sep, self.width, self.p = sep, len(sep), p
        self.indentation, self.group = p.indentation, p.groups[-1]
        self.group.breakables.append(self)

    def output(self, p, width):
        self.group.breakables.popleft()
        if self.group.want_break:
            p.out.append("\n" + " " * self.indentation)
            return self.indentation
        if not self.group.breakables:
            p.unqueue(self.group)
        p.out.append(self.sep)
        return width + self.width


class _Printer:
    """IPython's PrettyPrinter: text waits in a buffer with its breakables until the line would
    pass max_width; then the shallowest group with pending breakables (the last opened) breaks."""

    def __init__(self, max_width):
        self.max_width, self.out, self.buffer = max_width, [], collections.deque()
        self.output_width = self.buffer_width = self.indentation = 0
        root = _Group(0)
        self.groups, self.queue, self.stack = [root], [[root]], []

    # the queue of groups that may still break, by depth (IPython's GroupQueue)
    def enqueue(self, group):
        while len(self.queue) <= group.depth:
            self.queue.append([])
        self.queue[group.depth].append(group)

    def dequeue(self):
        for level in self.queue:
            for i, group in enumerate(reversed(level)):
                if group.breakables:
                    del level[i]  # i counts from the end but deletes from the start: as IPython
                    group.want_break = True
                    return group
            for group in level:
                group.want_break = True
            level.clear()
        return None

    def unqueue(self, group):
        level = self.queue[group.depth]
        if group in level:
            level.remove(group)

    def break_group(self, group):
        while group.breakables:
            item = self.buffer.popleft()
            self.output_width = item.output(self, self.output_width)
            self.buffer_width -= item.width
        while self.buffer and isinstance(self.buffer[0], _Text):
            item = self.buffer.popleft()
            self.output_width = item.output(self, self.output_width)
            self.buffer_width -= item.width

    def break_outer_groups(self):
        while self.max_width < self.output_width + self.buffer_width:
            group = self.dequeue()
            if group is None:
                return
            self.break_group(group)

    # the printer's primitives
    def text(self, s):
        if not self.buffer:
            self.out.append(s)
            self.output_width += len(s)
            return
        if not isinstance(self.buffer[-1], _Text):
            self.buffer.append(_Text())
        self.buffer[-1].parts.append(s)
        self.buffer[-1].width += len(s)
        self.buffer_width += len(s)
        self.break_outer_groups()

    def newline(self):
        self.flush()
        self.out.append("\n" + " " * self.indentation)
        self.output_width, self.buffer_width = self.indentation, 0

    def breakable(self, sep=" "):
        if self.groups[-1].want_break:
            return self.newline()
        self.buffer.append(_Breakable(sep, self))
        self.buffer_width += len(sep)
        self.break_outer_groups()

    def break_(self):
        group = self.dequeue()
        if group is not None:
            self.break_group(group)
        self.newline()

    def begin_group(self, indent=0, open=""):
        if open:
            self.text(open)
        group = _Group(self.groups[-1].depth + 1)
        self.groups.append(group)
        self.enqueue(group)
        self.indentation += indent

    def end_group(self, dedent=0, close=""):
        self.indentation -= dedent
        group = self.groups.pop()
        if not group.breakables:
            self.unqueue(group)
        if close:
            self.text(close)

    def flush(self):
        for item in self.buffer:
            self.output_width += item.output(self, self.output_width)  # (sic: IPython's sum)
        self.buffer.clear()
        self.buffer_width = 0

    def items(self, seq):
        """enumerate(seq), cut after MAX_SEQ_LENGTH items with ", ..."."""
        for i, x in enumerate(seq):
            if i >= MAX_SEQ_LENGTH:
                self.text(",")
                self.breakable()
                self.text("...")
                return
            yield i, x

    # choosing the printer for an object (RepresentationPrinter.pretty)
    def pretty(self, obj):
        cycle = id(obj) in self.stack
        self.stack.append(id(obj))
        self.begin_group()
        try:
            if obj is None or obj is True or obj is False or obj is Ellipsis \
                    or obj is NotImplemented:
                return _print_repr(obj, self, cycle)
            cls = _getattr(obj, "__class__", None) or type(obj)
            for base in _mro(cls):
                printer = _PRINTERS.get(base)
                if printer is None:
                    printer = _PRINTERS_BY_NAME.get((_getattr(base, "__module__", None),
                                                     _getattr(base, "__name__", None)))
                if printer is not None:
                    return printer(obj, self, cycle)
                if "_repr_pretty_" in base.__dict__ and callable(base._repr_pretty_):
                    return base._repr_pretty_(obj, self, cycle)
                if base is not object and callable(base.__dict__.get("__repr__")):
                    return _print_repr(obj, self, cycle)
            return _print_default(obj, self, cycle)
        finally:
            self.end_group()
            self.stack.pop()


def _getattr(obj, name, default):
    try:
        return getattr(obj, name, default)
    except Exception:
        return default


def _mro(cls):
    mro = getattr(cls, "__mro__", None)
    return mro if mro is not None else (cls,)


class _Call:
    """Shown as `name(arg, ..., key=value)`, wrapped like a container (IPython's CallExpression)."""

    def __init__(self, name, *args, **kwargs):
        self.name, self.args, self.kwargs = name, args, kwargs

    def _repr_pretty_(self, p, cycle):
        prefix = self.name + "("
        p.begin_group(len(prefix), prefix)
        items = [(None, a) for a in self.args] + list(self.kwargs.items())
        for i, (key, value) in enumerate(items):
            if i:
                p.text(",")
                p.breakable()
            if key is None:
                p.pretty(value)
            else:
                p.begin_group(len(key) + 1, key + "=")
                p.pretty(value)
                p.end_group(len(key) + 1)
        p.end_group(len(prefix), ")")


class _Raw:
    """Shown as its text, unquoted (IPython's RawText)."""

    def __init__(self, text):
        self.text = text

    def _repr_pretty_(self, p, cycle):
        p.text(self.text)


def _print_repr(obj, p, cycle):
    """repr(obj), its lines kept apart by hard breaks at the current indentation."""
    p.begin_group()
    for i, line in enumerate(repr(obj).splitlines()):
        if i:
            p.break_()
        p.text(line)
    p.end_group()


def _print_default(obj, p, cycle):
    """An object with object's own repr: `<module.Class at 0x...>`."""
    cls = _getattr(obj, "__class__", None) or type(obj)
    if _getattr(cls, "__repr__", None) is not object.__repr__:
        return _print_repr(obj, p, cycle)
    p.begin_group(1, "<")
    p.pretty(cls)
    p.text(f" at 0x{id(obj):x}")
    if cycle:
        p.text(" ...")
    p.end_group(1, ">")


def _sequence(start, end):
    def printer(obj, p, cycle):
        if cycle:
            return p.text(start + "..." + end)
        p.begin_group(len(start), start)
        for i, x in p.items(obj):
            if i:
                p.text(",")
                p.breakable()
            p.pretty(x)
        if len(obj) == 1 and isinstance(obj, tuple):
            p.text(",")
        p.end_group(len(start), end)
    return printer


def _set(start, end):
    def printer(obj, p, cycle):
        if cycle:
            return p.text(start + "..." + end)
        if len(obj) == 0:
            return p.text(type(obj).__name__ + "()")
        p.begin_group(len(start), start)
        items = obj if len(obj) >= MAX_SEQ_LENGTH else _sorted(obj)
        for i, x in p.items(items):
            if i:
                p.text(",")
                p.breakable()
            p.pretty(x)
        p.end_group(len(start), end)
    return printer


def _sorted(items):
    """Sorted if the items compare, else sorted by str, else as they come."""
    items = list(items)
    for key in (None, str):
        try:
            return sorted(items, key=key)
        except Exception:
            pass
    return items


def _dict(start, end):
    def printer(obj, p, cycle):
        if cycle:
            return p.text("{...}")
        p.begin_group(len(start), start)
        for i, key in p.items(obj.keys()):
            if i:
                p.text(",")
                p.breakable()
            p.pretty(key)
            p.text(": ")
            p.pretty(obj[key])
        p.end_group(len(start), end)
    return printer


def _print_type(obj, p, cycle):
    """A class as `name` (builtins) or `module.qualname`, unless its metaclass has its own repr."""
    if next((m for m in _mro(type(obj)) if "__repr__" in vars(m)), None) is not type:
        return _print_repr(obj, p, cycle)
    mod = _getattr(obj, "__module__", None)
    name = _getattr(obj, "__qualname__", None)
    if not isinstance(name, str):
        name = obj.__name__ if isinstance(obj.__name__, str) else "<unknown type>"
    p.text(name if mod in (None, "__builtin__", "builtins", "exceptions") else f"{mod}.{name}")


def _print_function(obj, p, cycle):
    """`<function module.name(signature)>`."""
    name = _getattr(obj, "__qualname__", obj.__name__)
    if obj.__module__ and obj.__module__ not in ("__builtin__", "builtins", "exceptions"):
        name = f"{obj.__module__}.{name}"
    try:
        name += str(inspect.signature(obj))
    except ValueError:
        pass
    p.text(f"<function {name}>")


def _print_exception(obj, p, cycle):
    cls = obj.__class__
    name = getattr(cls, "__qualname__", cls.__name__)
    if cls.__module__ not in ("exceptions", "builtins"):
        name = f"{cls.__module__}.{name}"
    p.pretty(_Call(name, *getattr(obj, "args", ())))


def _ctor(make):
    """A printer that shows obj as a constructor call, with make(obj) -> (args, kwargs)."""
    def printer(obj, p, cycle):
        name = obj.__class__.__name__
        if cycle:
            return p.pretty(_Call(name, _Raw("...")))
        args, kwargs = make(obj)
        p.pretty(_Call(name, *args, **kwargs))
    return printer


_PRINTERS = {
    int: _print_repr, float: _print_repr, str: _print_repr, bytes: _print_repr, range: _print_repr,
    slice: _print_repr, types.MethodType: _print_repr, types.FunctionType: _print_function,
    tuple: _sequence("(", ")"), list: _sequence("[", "]"), dict: _dict("{", "}"),
    set: _set("{", "}"), frozenset: _set("frozenset({", "})"),
    types.MappingProxyType: _dict("mappingproxy({", "})"), type(os.environ): _dict("environ{", "}"),
    type: _print_type, types.BuiltinFunctionType: _print_function, BaseException: _print_exception,
}
_PRINTERS_BY_NAME = {  # IPython's deferred printers, matched by (module, class name)
    ("datetime", "datetime"): _print_repr,
    ("datetime", "timedelta"): _print_repr,
    ("collections", "defaultdict"): _ctor(lambda d: ((d.default_factory, dict(d)), {})),
    ("collections", "OrderedDict"): _ctor(lambda d: (([*d.items()],) if d else (), {})),
    ("collections", "deque"): _ctor(lambda d: (([*d],), {} if d.maxlen is None
                                                else {"maxlen": d.maxlen})),
    ("collections", "Counter"): _ctor(lambda d: ((dict(d.most_common()),) if d else (), {})),
    ("collections", "UserList"): _ctor(lambda d: ((d.data,), {})),
}
