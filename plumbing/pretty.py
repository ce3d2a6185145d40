"""pretty.py: IPython's text/plain display of a value (IPython.lib.pretty), by hand.

What the model read after a cell whose last line is an expression is this display, not repr():
sets sorted, containers wrapped at 79 columns with their items aligned, collections shown as
constructor calls, a class or function by its qualified name. notebook.py shows a cell's value
through pretty(); the released solutions check it (tests/test_pretty.py, replay.py).

    pretty({3, 1, 2})                   # -> "{1, 2, 3}"
    pretty(Counter("abb"))              # -> "Counter({'b': 2, 'a': 1})"
    pretty(["x" * 40, "y" * 40])        # -> "['xxx...x',\\n 'yyy...y']"

The algorithm is IPython's (after Wadler's "prettier printer"): text is written into nested groups;
a group may break its "breakables" (the spaces after commas) into newlines. Text waits in a buffer
with its breakables until the line would pass the width; then the outermost group with pending
breakables breaks, and the buffer is written out. Objects of other libraries (numpy, sympy) are
shown by their repr, as IPython did for them. Only the standard library is imported.
"""
import collections, inspect, os, types

WIDTH = 79              # IPython's PlainTextFormatter.max_width
MAX_SEQ_LENGTH = 1000   # items shown of a container before ", ..."


def pretty(obj, max_width=WIDTH):
    """obj as IPython's text/plain display shows it (PlainTextFormatter's settings)."""
    printer = _Printer(max_width)
    printer.pretty(obj)
    printer.flush()
    return "".join(printer.out)


# ---------------------------------------------------------------------------------- the printer
class _Group:
    """A run of text whose breakables break together, `depth` groups deep."""

    def __init__(self, depth):
        self.depth = depth
        self.breakables = collections.deque()  # those still in the buffer
        self.want_break = False


class _Text:
    """Text waiting in the buffer."""

    def __init__(self):
        self.parts = []
        self.width = 0

    def output(self, printer, width):
        printer.out.extend(self.parts)
        return width + self.width


class _Breakable:
    """A separator waiting in the buffer: `sep` if its group stays on one line, else a newline."""

    def __init__(self, sep, printer):
        self.sep = sep
        self.width = len(sep)
        self.indentation = printer.indentation
        self.group = printer.groups[-1]
        self.group.breakables.append(self)

    def output(self, printer, width):
        self.group.breakables.popleft()
        if self.group.want_break:
            printer.out.append("\n" + " " * self.indentation)
            return self.indentation
        if not self.group.breakables:
            printer.unqueue(self.group)
        printer.out.append(self.sep)
        return width + self.width


class _Printer:
    """IPython's RepresentationPrinter: text waits in a buffer with its breakables until the line
    would pass max_width; then the shallowest group with pending breakables (the last opened)
    breaks."""

    def __init__(self, max_width):
        self.max_width = max_width
        self.out = []                      # what is written for good
        self.buffer = collections.deque()  # _Text and _Breakable, not yet placed
        self.output_width = 0              # columns written on the current line
        self.buffer_width = 0
        self.indentation = 0
        root = _Group(0)
        self.groups = [root]               # the groups open now, innermost last
        self.queue = [[root]]              # groups that may still break, by depth
        self.stack = []                    # ids of the objects being printed: cycles

    # the queue of groups that may still break (IPython's GroupQueue)
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
            self._output_first()
        while self.buffer and isinstance(self.buffer[0], _Text):
            self._output_first()

    def _output_first(self):
        item = self.buffer.popleft()
        self.output_width = item.output(self, self.output_width)
        self.buffer_width -= item.width

    def break_outer_groups(self):
        while self.max_width < self.output_width + self.buffer_width:
            group = self.dequeue()
            if group is None:
                return
            self.break_group(group)

    # the primitives printers call
    def text(self, text):
        if not self.buffer:
            self.out.append(text)
            self.output_width += len(text)
            return
        if not isinstance(self.buffer[-1], _Text):
            self.buffer.append(_Text())
        self.buffer[-1].parts.append(text)
        self.buffer[-1].width += len(text)
        self.buffer_width += len(text)
        self.break_outer_groups()

    def newline(self):
        self.flush()
        self.out.append("\n" + " " * self.indentation)
        self.output_width = self.indentation
        self.buffer_width = 0

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

    def comma_separated(self, items, show=None):
        """show(item) (default: pretty) for each item, with "," and a breakable between; after
        MAX_SEQ_LENGTH items, "..." (IPython's _enumerate)."""
        for i, item in enumerate(items):
            if i:
                self.text(",")
                self.breakable()
            if i >= MAX_SEQ_LENGTH:
                self.text("...")
                return
            (show or self.pretty)(item)

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
                show = _PRINTERS.get(base)
                if show is None:
                    show = _PRINTERS_BY_NAME.get((_getattr(base, "__module__", None),
                                                  _getattr(base, "__name__", None)))
                if show is not None:
                    return show(obj, self, cycle)
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


# ---------------------------------------------------------------------------------- the printers
# Each shows obj on `printer`; `cycle`: obj is already being printed further out.
class _Call:
    """Shown as `name(arg, ..., key=value)`, wrapped like a container (IPython's CallExpression)."""

    def __init__(self, name, *args, **kwargs):
        self.name = name
        self.args = args
        self.kwargs = kwargs

    def _repr_pretty_(self, printer, cycle):
        prefix = self.name + "("
        printer.begin_group(len(prefix), prefix)
        items = [(None, arg) for arg in self.args] + list(self.kwargs.items())
        for i, (key, value) in enumerate(items):
            if i:
                printer.text(",")
                printer.breakable()
            if key is None:
                printer.pretty(value)
            else:
                printer.begin_group(len(key) + 1, key + "=")
                printer.pretty(value)
                printer.end_group(len(key) + 1)
        printer.end_group(len(prefix), ")")


class _Raw:
    """Shown as its text, unquoted (IPython's RawText)."""

    def __init__(self, text):
        self.text = text

    def _repr_pretty_(self, printer, cycle):
        printer.text(self.text)


def _print_repr(obj, printer, cycle):
    """repr(obj), its lines kept apart by hard breaks at the current indentation."""
    printer.begin_group()
    for i, line in enumerate(repr(obj).splitlines()):
        if i:
            printer.break_()
        printer.text(line)
    printer.end_group()


def _print_default(obj, printer, cycle):
    """An object with object's own repr: `<module.Class at 0x...>`."""
    cls = _getattr(obj, "__class__", None) or type(obj)
    if _getattr(cls, "__repr__", None) is not object.__repr__:
        return _print_repr(obj, printer, cycle)
    printer.begin_group(1, "<")
    printer.pretty(cls)
    printer.text(f" at 0x{id(obj):x}")
    if cycle:
        printer.text(" ...")
    printer.end_group(1, ">")


def _sequence(start, end):
    def print_sequence(obj, printer, cycle):
        if cycle:
            return printer.text(start + "..." + end)
        printer.begin_group(len(start), start)
        printer.comma_separated(obj)
        if len(obj) == 1 and isinstance(obj, tuple):
            printer.text(",")
        printer.end_group(len(start), end)
    return print_sequence


def _set(start, end):
    def print_set(obj, printer, cycle):
        if cycle:
            return printer.text(start + "..." + end)
        if len(obj) == 0:
            return printer.text(type(obj).__name__ + "()")
        printer.begin_group(len(start), start)
        printer.comma_separated(obj if len(obj) >= MAX_SEQ_LENGTH else _sorted(obj))
        printer.end_group(len(start), end)
    return print_set


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
    def print_dict(obj, printer, cycle):
        if cycle:
            return printer.text("{...}")

        def show_item(key):
            printer.pretty(key)
            printer.text(": ")
            printer.pretty(obj[key])
        printer.begin_group(len(start), start)
        printer.comma_separated(obj.keys(), show_item)
        printer.end_group(len(start), end)
    return print_dict


def _print_type(obj, printer, cycle):
    """A class as `name` (builtins) or `module.qualname`, unless its metaclass has its own repr."""
    if next((meta for meta in _mro(type(obj)) if "__repr__" in vars(meta)), None) is not type:
        return _print_repr(obj, printer, cycle)
    module = _getattr(obj, "__module__", None)
    name = _getattr(obj, "__qualname__", None)
    if not isinstance(name, str):
        name = obj.__name__ if isinstance(obj.__name__, str) else "<unknown type>"
    if module in (None, "__builtin__", "builtins", "exceptions"):
        return printer.text(name)
    printer.text(f"{module}.{name}")


def _print_function(obj, printer, cycle):
    """`<function module.name(signature)>`."""
    name = _getattr(obj, "__qualname__", obj.__name__)
    if obj.__module__ and obj.__module__ not in ("__builtin__", "builtins", "exceptions"):
        name = f"{obj.__module__}.{name}"
    try:
        name += str(inspect.signature(obj))
    except ValueError:
        pass
    printer.text(f"<function {name}>")


def _print_exception(obj, printer, cycle):
    cls = obj.__class__
    name = getattr(cls, "__qualname__", cls.__name__)
    if cls.__module__ not in ("exceptions", "builtins"):
        name = f"{cls.__module__}.{name}"
    printer.pretty(_Call(name, *getattr(obj, "args", ())))


def _as_call(make):
    """A printer that shows obj as a constructor call, with make(obj) -> (args, kwargs)."""
    def print_call(obj, printer, cycle):
        name = obj.__class__.__name__
        if cycle:
            return printer.pretty(_Call(name, _Raw("...")))
        args, kwargs = make(obj)
        printer.pretty(_Call(name, *args, **kwargs))
    return print_call


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
    ("collections", "defaultdict"): _as_call(lambda obj: ((obj.default_factory, dict(obj)), {})),
    ("collections", "OrderedDict"): _as_call(lambda obj: (([*obj.items()],) if obj else (), {})),
    ("collections", "deque"): _as_call(lambda obj: (([*obj],), {} if obj.maxlen is None
                                                   else {"maxlen": obj.maxlen})),
    ("collections", "Counter"):
        _as_call(lambda obj: ((dict(obj.most_common()),) if obj else (), {})),
    ("collections", "UserList"): _as_call(lambda obj: ((obj.data,), {})),
}
