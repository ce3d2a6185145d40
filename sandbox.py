"""sandbox.py: a stateful Python session for the code MathCoder writes mid-solution.

The idea is run_cell, first below. As in the authors' Jupyter kernel (src/inference.py,
docs/method.md §4), a problem's code blocks run one after another in one namespace, so variables
persist; what a cell prints (stdout, stderr) is captured, then comes what IPython showed: its last
expression's value or its traceback (plumbing/notebook.py writes that display by hand), or
"<empty_execution>" when nothing. That text goes back into the model's context.

    with Sandbox(timeout=6) as sb:
        sb.run("x = 6 * 7")       # -> "<empty_execution>"
        sb.run("print(x); x + 1") # -> "42\\n43"
        sb.reset()                # a new problem: a fresh worker, nothing of the last one left

The code is the model's, hostile by assumption: it runs in a worker process forked per problem
from a template that imported numpy and sympy once (plumbing/worker.py), isolated from the
project, the parent and other problems (plumbing/isolation.py), within limits (LIMITS):
  time      at `timeout` s a TimeoutError inside the cell, which shows the authors' timeout message
            (notebook.TIMEOUT); the session goes on. Code that survives it (catches it, ignores
            signals, sits in C) is killed GRACE s later with every process it started, and the
            next call starts in a fresh worker, after RESTART_NOTE.
  memory    RLIMIT_AS: MemoryError inside the cell, or the worker dies and restarts. Per
            process: a cell that forks can hold up to max_procs times memory_mb (no cgroup).
  output    head and tail kept, "[... N characters cut ...]" between, cut in the worker.
  processes RLIMIT_NPROC, threads included, where the worker has a uid or a user namespace of its
            own (the kernel counts per uid). After each cell the processes it left are killed;
            threads still running end the worker (RESTART_NOTE again).
  files     RLIMIT_FSIZE per file; the work directory is a tmpfs of `disk_mb` (namespaces, uid).
Isolation, Sandbox(isolation=...): "namespaces" (bubblewrap), "uid" (root) or "none" (refused as
root); default_isolation() is the strongest here. plumbing/isolation.py says what each isolates.
"""
import argparse, dataclasses, inspect, io, itertools, json, os, queue, resource, signal, sys
import threading, weakref

from plumbing import isolation, notebook, worker

EMPTY = "<empty_execution>"  # what the training data shows for a cell with no output
MODES = isolation.MODES   # "namespaces", "uid", "none": strongest first
GRACE = 1.0               # seconds from the soft TimeoutError to the hard kill
RESTART_NOTE = ("[The Python session was restarted: variables and imports from earlier cells "
                "are lost.]")


# ---------------------------------------------------------------------------------- the idea
def run_cell(code, namespace, kernel, cfg):
    """Run one cell as the authors' IPython kernel did; return what it showed. `namespace` is the
    session: the same dict for every cell of a problem. `kernel` (notebook.Kernel) runs the cell's
    statements in it and shows the last one's value or the traceback. The worker
    (plumbing/worker.py) calls this for every request, within the limits below."""
    out = _Capture(cfg["max_output"])  # stdout and stderr, as the cell writes them
    sys.stdout = sys.stderr = out
    _start_clock(cfg["timeout"])
    try:
        out.write(kernel.run(code, namespace))  # after what it printed: its value or traceback
    except BaseException as e:  # raised in notebook.py's machinery itself (e.g. by the time limit)
        _cell.in_cell = False
        out.write(kernel.format_traceback(e))
    finally:
        _stop_clock()
        if os.getpid() != _cell.pid:  # a process forked by the cell: it must not answer
            os._exit(0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if _cell.timed_out:  # the authors' client gave up after 6 s and showed only this
        return notebook.TIMEOUT
    shown = notebook.ANSI.sub("", out.text()).encode("utf-8", "replace").decode()
    return shown.strip() or EMPTY  # the authors' .strip()


# ---------------------------------------------------------------------------------- its limits
@dataclasses.dataclass
class _CellState:  # the running cell, as the time limit sees it (one per worker: module-level)
    pid: int = 0             # the worker's own pid: a process forked by a cell must never answer
    timeout: float = 0.0     # seconds per cell
    in_cell: bool = False    # the user's code runs: the time limit may interrupt it
    timed_out: bool = False  # the running cell hit the time limit


_cell = _CellState()
_MACHINERY = (__file__, isolation.__file__)  # this file's code, and the audit hook's


def _start_clock(timeout):
    """The time limit: SIGALRM at `timeout` s raises TimeoutError inside the cell's code (the
    parent kills the worker GRACE s later if that did not end it); RLIMIT_CPU, a backstop should
    the parent be gone and nobody enforce the time limit."""
    cpu = int(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) + timeout + GRACE) + 2  # seconds
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _on_alarm)  # again each cell: an earlier one may have replaced it
    signal.setitimer(signal.ITIMER_REAL, timeout, 0.05)  # re-fires, in case one is missed
    _cell.pid, _cell.timeout, _cell.timed_out = os.getpid(), timeout, False
    _cell.in_cell = True


def _on_alarm(signum, frame):
    # Raise only inside the user's code, never in this machinery (_Capture.write under a print,
    # the audit hook): the timer fires again 50 ms later.
    if _cell.in_cell and frame is not None and frame.f_code.co_filename not in _MACHINERY:
        _cell.in_cell = False
        _cell.timed_out = True
        raise TimeoutError(f"the cell exceeded the time limit of {_cell.timeout:g} s")


def _stop_clock():
    _cell.in_cell = False
    signal.setitimer(signal.ITIMER_REAL, 0)


def _rlimits(cfg, uid):
    """Memory, core dumps, file size and processes: limits the kernel enforces, which the worker
    sets on itself as it starts. Processes only where it has a uid or user namespace of its own."""
    mib = 1 << 20
    limits = [(resource.RLIMIT_AS, cfg["memory_mb"] * mib), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mib)]
    if uid is not None or cfg["isolation"] == "namespaces":
        limits.append((resource.RLIMIT_NPROC, cfg["max_procs"]))
    return limits


class _Capture(io.TextIOBase):
    """Stands in for stdout and stderr during a cell; keeps the first and the last `limit`
    characters, so memory stays O(limit) whatever the cell prints."""

    def __init__(self, limit):
        self.limit = limit
        self.total = 0     # characters written
        self.head = ""     # the first `limit` of them
        self.tail = []     # pieces holding (at least) the last `limit` of them
        self.tail_len = 0

    def writable(self):
        return True

    def write(self, text):
        text = str(text)
        self.total += len(text)
        if len(self.head) < self.limit:
            self.head += text[:self.limit - len(self.head)]
        if len(text) >= self.limit:  # the last `limit` characters are all in text
            self.tail = [text[-self.limit:]]
            self.tail_len = self.limit
        elif text:
            self.tail.append(text)
            self.tail_len += len(text)
            if self.tail_len > 2 * self.limit:  # trim now and then
                self.tail = ["".join(self.tail)[-self.limit:]]
                self.tail_len = self.limit
        return len(text)

    def text(self):
        if self.total <= self.limit:
            return self.head
        keep = self.limit // 2
        tail = "".join(self.tail)[keep - self.limit:]
        return f"{self.head[:keep]}\n[... {self.total - self.limit} characters cut ...]\n{tail}"


# ---------------------------------------------------------------------------------- the API
isolation_modes = isolation.why_unavailable  # {mode: None where offered here, else why not}


def default_isolation():
    """The strongest isolation this machine offers, the one a Sandbox gets by default."""
    for mode, why in isolation_modes().items():
        if why is None:
            return mode
    raise RuntimeError("sandbox: no isolation mode works here: " + "; ".join(
        f"{mode}: {why}" for mode, why in isolation_modes().items()))


class Sandbox:
    """One stateful Python session (a worker process), usable as a context manager. Thread-safe."""

    def __init__(self, timeout=6.0, memory_mb=1024, max_procs=16, max_output=2000, max_file_mb=16,
                 disk_mb=64, preload=worker.DEFAULT_PRELOAD, isolation=None):
        # timeout=6: the authors' client.execute(..., timeout=6) in src/inference.py
        self.cfg = dict(timeout=float(timeout), memory_mb=int(memory_mb), max_procs=int(max_procs),
                        max_output=int(max_output), max_file_mb=int(max_file_mb),
                        disk_mb=int(disk_mb))
        for name, value in self.cfg.items():
            if not value > 0:
                raise ValueError(f"Sandbox: {name} must be > 0, got {value!r}")
        self.isolation = isolation or default_isolation()  # "namespaces", "uid" or "none"
        if self.isolation not in MODES:
            raise ValueError(f"Sandbox: isolation must be one of {MODES}, got {isolation!r}")
        if isolation_modes()[self.isolation]:
            raise RuntimeError(f"sandbox: isolation {self.isolation!r} is not available here: "
                               f"{isolation_modes()[self.isolation]}")
        self.cfg.update(preload=list(preload), isolation=self.isolation)  # `dir`, `uid`: _start
        self.uid = None  # the worker's uid once it said hello (None: the caller's)
        self._lock = threading.Lock()
        # The template and worker (worker.start_template), apart from self so that the finalizer
        self._server = {}  # (close(), also at exit) can stop them
        self._note = ""  # shown before the next cell's output: the session was restarted
        self._ids = itertools.count(1)  # request ids: a reply must carry its request's
        self._finalizer = weakref.finalize(self, worker.stop, self._server)
        self._start()

    def _start(self):
        """Start the template and its first worker, without waiting (it imports meanwhile)."""
        uid = isolation.alloc_uid() if os.geteuid() == 0 and self.isolation != "none" else None
        cfg = dict(self.cfg, uid=uid, rlimits=_rlimits(self.cfg, uid))
        self._server.update(worker.start_template(os.path.abspath(__file__), cfg))
        isolation.announce(self.isolation)  # once per process, on stderr
        worker.fork(self._server)

    def _wait_ready(self):
        """Start the template if the last start failed; wait for the worker's hello."""
        if not self._finalizer.alive:
            raise RuntimeError("sandbox: used after close()")
        if "template" not in self._server:  # the last start failed: try again
            self._start()
        if not self._server["ready"]:  # the first call to a new worker waits for its hello
            self.uid = worker.wait_hello(self._server)
        return self._server

    def run(self, code: str) -> str:
        """Run one cell; return what a notebook would show ("<empty_execution>" when nothing)."""
        if not isinstance(code, str):
            raise TypeError(f"Sandbox.run: code must be a str, got {type(code).__name__}")
        with self._lock:
            server = self._server
            if "worker" in server and server["ready"] and worker.pending(server["worker"].fileno()):
                worker.restart(server)  # a reply before the request: the code wrote it
                self._note = RESTART_NOTE
            note, self._note = self._note, ""
            server = self._wait_ready()
            request = {"op": "run", "code": code, "id": next(self._ids)}  # a reply repeats its id
            reply = worker.call(server, request, self.cfg["timeout"] + GRACE,
                                65536 + 8 * self.cfg["max_output"])
            if isinstance(reply, dict):
                out = reply["output"]
                if reply["restart"]:  # threads still running: only a fresh worker stops them
                    worker.restart(server)
                    self._note = RESTART_NOTE
            else:  # it timed out, died or sent what it should not: replaced
                out = worker.why_replaced(reply, worker.restart(server), self.cfg["timeout"])
                self._note = RESTART_NOTE
            return f"{note}\n{out}" if note else out

    def reset(self):
        """Fresh state for a new problem: the worker and all it started are killed and a new one
        is forked from the template (nothing of the last problem survives). Never raises for what
        the last problem's code did: a template that fails is replaced at the next run()."""
        with self._lock:
            if not self._finalizer.alive:
                raise RuntimeError("sandbox: used after close()")
            self._note = ""
            if "template" in self._server:
                try:
                    worker.restart(self._server)
                except Exception:  # the next run() starts a new template
                    worker.stop(self._server)

    def host_dir(self):
        """The work directory as this process reaches it, to hand the running code a file or see
        what it wrote (in "namespaces" and "uid": through /proc/PID/root). What is there is the
        code's: an absolute symlink it made resolves against THIS process's root, so open its
        files without following links (os.O_NOFOLLOW) before trusting what they hold."""
        with self._lock:
            return worker.host_dir(self._wait_ready())  # (then the template's root is in place)

    def close(self):
        with self._lock:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SandboxPool:
    """`size` sandboxes for concurrent problems. acquire() waits until one is free and resets it
    (a fresh worker); what the last problem's code did shows, if at all, in the next run()."""

    def __init__(self, size, **limits):
        self._all = [Sandbox(**limits) for _ in range(size)]  # templates start in parallel
        self._free = queue.SimpleQueue()
        self._lent = set()  # thread-safe: set.add and set.remove are atomic
        for sandbox in self._all:
            self._free.put(sandbox)

    def acquire(self, timeout=None) -> Sandbox:
        sandbox = self._free.get(timeout=timeout)
        try:
            sandbox.reset()
        except BaseException:
            self._free.put(sandbox)
            raise
        self._lent.add(sandbox)
        return sandbox

    def release(self, sandbox):
        try:
            self._lent.remove(sandbox)
        except KeyError:
            raise ValueError("sandbox: release() of a sandbox not from this pool") from None
        self._free.put(sandbox)

    def close(self):
        for sandbox in self._all:
            sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


LIMITS = {"timeout": "seconds per cell", "memory_mb": "address space in MiB",  # Sandbox(...)'s
          "max_procs": "processes + threads", "max_output": "characters kept per cell",
          "max_file_mb": "largest file the code may write, in MiB",
          "disk_mb": "size of the work directory (a tmpfs: namespaces, uid) in MiB"}


def main():
    ap = argparse.ArgumentParser(description="Run Python cells in a MathCoder sandbox. Without -c: "
                                 "a small REPL (a cell ends at an empty line; Ctrl-D quits). "
                                 "replay.py runs the authors' released solutions through it.")
    ap.add_argument("-c", dest="code", help="run CODE as one cell, print what it shows, exit")
    for name, what in LIMITS.items():  # the defaults are Sandbox's own
        default = inspect.signature(Sandbox).parameters[name].default
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                        help=f"{what} (default {default:g})")
    ap.add_argument("--isolation", choices=MODES,
                    help="default: the strongest available (namespaces, uid as root, none)")
    args = ap.parse_args()
    limits = {name: getattr(args, name) for name in LIMITS}
    with Sandbox(**limits, isolation=args.isolation) as sb:
        if args.code is not None:
            return print(sb.run(args.code))
        cell = []
        while True:
            try:
                line = input("... " if cell else ">>> ")
            except EOFError:
                break
            if line:
                cell.append(line)
            elif cell:
                print(sb.run("\n".join(cell)))
                cell = []
        if cell:  # Ctrl-D ends the last cell too
            print(sb.run("\n".join(cell)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--template":  # internal: a Sandbox's fork server
        del sys.path[0]  # this file's folder, the checkout: its imports are done, the cells' not
        worker.template(json.loads(sys.argv[2]), run_cell)
    else:
        main()
