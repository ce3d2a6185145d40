"""sandbox.py: a stateful Python session for the code MathCoder writes mid-solution (METHOD.md §4).

The authors ran each problem's code blocks in one Jupyter kernel: variables persist from block to block,
and the text a notebook cell shows (stdout/stderr, the repr of the last expression, a traceback without
colour codes, or "<empty_execution>") is what goes back into the model's context. This file does the
same without Jupyter: one worker process per Sandbox (this very file, run with --worker), spoken to over
pipes with length-prefixed JSON, reused across problems (reset() clears it in place, which is cheap).

    with Sandbox(timeout=6) as sb:
        sb.run("x = 6 * 7")       # -> "<empty_execution>"
        sb.run("print(x); x + 1") # -> "42\\n43"

Limits (all configurable):
  time      soft: at `timeout` s a TimeoutError is raised inside the cell (the session survives, as with
            Jupyter's interrupt). hard: code that catches it, ignores signals or sits in C code is killed
            GRACE s later, with its whole process group and every process of its uid; the next call runs
            in a fresh worker and its output starts with a note that earlier variables are lost.
  memory    RLIMIT_AS (address space): MemoryError inside the cell, or the worker dies and is restarted.
  processes RLIMIT_NPROC, counted per uid (threads included): needs the worker's own uid (root, below).
  output    head and tail kept, "[... N characters cut ...]" between; bounded inside the worker too, so
            printing 100 MB never reaches the parent.
  files     RLIMIT_FSIZE per file (writes fail with "File too large").
  children  processes the cell started and left running are killed when the cell ends.

What is isolated, and what is not (this is NOT a security boundary):
  * When the parent runs as root (containers, CI) the worker drops to its own unprivileged uid/gid
    (UID_BASE + a per-process slot, no account needed): it cannot signal the parent or other sandboxes,
    cannot write anywhere that uid may not (the repo, home), and RLIMIT_NPROC stops fork/thread bombs.
    Python modules not imported before the drop must be readable by that uid: a Python installed under
    /root (pyenv) is not, so common modules are pre-imported (DEFAULT_PRELOAD; extend it if needed).
  * Without root none of that OS-level separation exists: the worker runs as you, with no process limit.
  * A Python audit hook (sys.addaudithook) refuses, through Python's own APIs, writes outside the work
    directory (even to world-writable /tmp), signals to processes outside the sandbox, and sockets. It is
    a guard rail against accidents: ctypes, a shell (`os.system`) or code that goes looking gets around it.
  * Reads are not restricted (anything the uid can read), nor disk usage inside the work directory, nor
    CPU share, nor kernel attack surface. For untrusted code at scale, run the whole program inside a
    container or VM with no network, a read-only root, a tmpfs work directory and a seccomp profile
    (e.g. docker --network none --read-only --pids-limit, gVisor, or nsjail/bubblewrap around the worker).
Linux is the tested platform (it uses /proc, rlimits, setuid); macOS works with fewer guarantees.
"""
import argparse, ast, builtins, io, json, linecache, os, pwd, queue, re, resource, select, shutil, signal
import struct, subprocess, sys, tempfile, threading, time, traceback, types, warnings, weakref

EMPTY = "<empty_execution>"  # what the training data shows for a cell with no output
DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections",
                   "statistics", "random", "re", "string", "datetime", "calendar", "heapq", "bisect",
                   "operator", "numbers", "typing", "copy", "json", "time", "array", "dataclasses", "enum",
                   "textwrap", "pprint", "unicodedata", "struct", "csv", "numpy", "sympy")  # ~0.5 s
UID_BASE = 1_000_000_000  # worker uids: UID_BASE + (parent pid % 2**22) * 256 + slot, below 2**31
GRACE = 1.0               # seconds from the soft TimeoutError to the hard kill
STARTUP_TIMEOUT = 60.0    # seconds a new worker may take to import DEFAULT_PRELOAD and say hello
RESTART_NOTE = "[The Python session was restarted: variables and imports from earlier cells are lost.]"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


# ---------------------------------------------------------------------------------- wire protocol
def _pack(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _recv(fd, deadline=None, limit=1 << 30):
    """One message from fd; "eof" if the writer died, "timeout" past the deadline, "bad" if malformed."""
    buf, need, poller = b"", 4, select.poll()
    poller.register(fd, select.POLLIN)
    while len(buf) < need:
        left = None if deadline is None else (deadline - time.monotonic()) * 1000
        if left is not None and (left <= 0 or not poller.poll(left)):
            return "timeout"
        chunk = os.read(fd, need - len(buf))
        if not chunk:
            return "eof"
        buf += chunk
        if need == 4 and len(buf) == 4:
            need += struct.unpack(">I", buf)[0]
            if need > limit:
                return "bad"
    try:
        return json.loads(buf[4:])
    except ValueError:
        return "bad"


def _kill(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _procs(uid=None, pgrp=None, ppid=None):
    """Live (non-zombie) pids whose real uid is `uid`, or in process group `pgrp`, or children of `ppid`."""
    found = []
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:  # no /proc (macOS): nothing found
        return found
    for name in names:
        try:
            with open(f"/proc/{name}/stat") as f:
                state, pp, pg = f.read().rsplit(")", 1)[1].split()[:3]
            if state in "ZX":
                continue
            if int(pg) == pgrp or int(pp) == ppid:
                found.append(int(name))
            elif uid is not None:
                with open(f"/proc/{name}/status") as f:
                    if next(int(l.split()[1]) for l in f if l.startswith("Uid:")) == uid:
                        found.append(int(name))
        except (OSError, ValueError, StopIteration):
            pass
    return found


# ---------------------------------------------------------------------------------- the worker
_S = types.SimpleNamespace(in_cell=False, trusted=False, spawned=False, pid=0, dir="", own_uid=False)
_SPAWN = {"os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.exec", "subprocess.Popen", "pty.spawn"}
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (1,),
                "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _check_path(p):
    if isinstance(p, int):
        return
    real = os.path.realpath(os.fsdecode(os.fspath(p)))
    if real != _S.dir and not real.startswith(_S.dir + os.sep) and real != os.devnull:
        raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {p!r}")


def _guard(event, args):
    """Audit hook: a guard rail on Python-level file writes, signals and sockets (not a security boundary)."""
    if _S.trusted:
        return
    if event == "open" and args[2] & _WRITE_FLAGS:
        _check_path(args[0])
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            _check_path(args[i])
    elif event in _SPAWN:
        _S.spawned = True
    elif event in ("os.kill", "os.killpg"):
        pid, me = args[0], os.getpgrp()
        group = pid if event == "os.killpg" else me if pid == 0 else -pid if pid < -1 else None
        if pid > 0 and event == "os.kill":
            group = os.getpgid(pid)
        if group != me:
            raise PermissionError("sandbox: signals may only be sent to the sandbox's own processes")
    elif event in ("socket.connect", "socket.bind", "socket.sendto"):
        raise PermissionError("sandbox: network access is disabled")


class _Capture(io.TextIOBase):
    """Stands in for stdout and stderr during a cell; keeps the first and last `limit` characters."""

    def __init__(self, limit):
        self.limit, self.total, self.head, self.tail, self.tail_n = limit, 0, "", [], 0

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        n = len(s)
        self.total += n
        if len(self.head) < self.limit:
            take = self.limit - len(self.head)
            self.head, s = self.head + s[:take], s[take:]
        if len(s) >= self.limit:  # the last `limit` characters are all in s
            self.tail, self.tail_n = [s[-self.limit:]], self.limit
        elif s:
            self.tail.append(s)
            self.tail_n += len(s)
            if self.tail_n > 2 * self.limit:  # trim now and then: memory stays O(limit) however much is printed
                self.tail = ["".join(self.tail)[-self.limit:]]
                self.tail_n = len(self.tail[0])
        return n

    def text(self):
        whole = self.head + "".join(self.tail)  # everything, or at least head + the last `limit` characters
        if self.total <= self.limit:
            return whole
        keep = self.limit // 2
        return f"{whole[:keep]}\n[... {self.total - self.limit} characters cut ...]\n{whole[-(self.limit - keep):]}"


def _format_exc(e):
    """The traceback as Python prints it, minus this file's frames (and ast.py's, for syntax errors)."""
    te = traceback.TracebackException.from_exception(e)
    todo, seen = [te], set()
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        t.stack = traceback.StackSummary.from_list(
            [f for f in t.stack if f.filename not in (__file__, ast.__file__)])
        todo += [t.__cause__, t.__context__]
    return "".join(te.format())


def _on_alarm(signum, frame):
    # Raise only inside the user's code, never in this file's machinery (e.g. while formatting its output).
    if _S.in_cell and frame is not None and frame.f_code.co_filename != __file__:
        _S.in_cell = False
        raise TimeoutError(f"the cell exceeded the time limit of {_S.timeout:g} s")


def _kill_children():
    """Kill every process the cell started and left behind (with its own uid: even setsid() ones)."""
    _S.trusted = True
    try:
        if _S.own_uid and os.getuid() == _S.own_uid != 0:
            os.kill(-1, signal.SIGKILL)  # -1 = every process this uid may signal: only the sandbox's own
        else:  # no uid of its own: our process group and our children (orphans come to us, a subreaper)
            for _ in range(100):
                pids = set(_procs(pgrp=os.getpgrp(), ppid=os.getpid())) - {os.getpid()}
                _kill(pids)
                if not pids:
                    break
        while True:
            os.waitpid(-1, 0)  # reap
    except ChildProcessError:
        pass
    finally:
        _S.trusted = False


def _run_cell(code, ns, n, limit):
    """Run one cell like a notebook: exec all statements, show the repr of a final expression."""
    name = f"<cell-{n}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # source lines in tracebacks
    out = _Capture(limit)
    sys.stdout = sys.stderr = out
    _S.spawned = False
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # RLIMIT_CPU: a backstop if the parent is gone
    resource.setrlimit(resource.RLIMIT_CPU, (int(used + _S.timeout + GRACE) + 2, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, _S.timeout, 0.05)  # re-fires until cancelled, in case one is missed
    _S.in_cell = True
    try:
        tree = ast.parse(code, name)
        last = None  # IPython shows the last statement's value if it is an expression not ending in ";"
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec"), ns)
        if last is not None:
            value = eval(compile(last, name, "eval"), ns)
            if value is not None:
                out.write(repr(value) + "\n")
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the session goes on
        _S.in_cell = False
        out.write(_format_exc(e))
    finally:
        _S.in_cell = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != _S.pid:  # a process forked by the cell: it must never answer the parent
            os._exit(0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if _S.spawned:
        _kill_children()
    return out.text()


def _reset(ns, fresh_builtins):
    ns.clear()
    ns.update(__name__="__main__", __builtins__=builtins)
    for k in [k for k in builtins.__dict__ if k not in fresh_builtins]:
        del builtins.__dict__[k]
    builtins.__dict__.update(fresh_builtins)
    for k in [k for k in linecache.cache if k.startswith("<cell-")]:
        del linecache.cache[k]
    _kill_children()
    _S.trusted = True
    try:
        os.chdir(_S.dir)
        for entry in os.scandir(_S.dir):  # files written for the last problem go too
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        return threading.active_count() == 1  # threads left running: only a restart can stop them
    except OSError:
        return False
    finally:
        _S.trusted = False


def _worker(cfg):
    proto_in, proto_out = os.dup(0), os.dup(1)  # the protocol pipes move off fds 0 and 1 ...
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # ... so input() sees EOF, and stray output (os.write(1), children) cannot corrupt them
    os.dup2(null, 1)
    _S.pid, _S.dir, _S.timeout = os.getpid(), cfg["dir"], cfg["timeout"]
    os.chdir(_S.dir)
    for mod in cfg["preload"]:  # imported while still privileged (the drop below may hide the stdlib)
        try:
            __import__(mod)
        except Exception:
            pass
    mb = 1 << 20
    limits = [(resource.RLIMIT_AS, cfg["memory_mb"] * mb), (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mb),
              (resource.RLIMIT_CORE, 0)]
    uid = cfg["uid"]
    if uid is not None:  # per-uid process count: only meaningful once the worker has a uid of its own
        limits.append((resource.RLIMIT_NPROC, cfg["max_procs"]))
    for what, n in limits:
        try:
            resource.setrlimit(what, (n, n))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large files: OSError instead of death
    try:  # PR_SET_CHILD_SUBREAPER: orphaned grandchildren are re-parented to the worker, which reaps them
        import ctypes
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    except Exception:
        pass
    if uid is not None:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            _S.own_uid = uid
        except OSError:
            uid = None
    sys.addaudithook(_guard)
    os.dup2(null, 2)
    fresh_builtins = dict(builtins.__dict__)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    n = 0
    stdlib_ok = os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK)  # as the (new) real uid
    _write_all(proto_out, _pack({"uid": uid, "stdlib_readable": stdlib_ok}))
    while True:
        msg = _recv(proto_in)
        if not isinstance(msg, dict):
            os._exit(0)  # the parent is gone
        if msg["op"] == "run":
            n += 1
            text = _run_cell(msg["code"], ns, n, cfg["max_output"])
            text = _ANSI.sub("", text).encode("utf-8", "replace").decode().strip()  # authors: .strip()
            reply = {"output": text or EMPTY}
        else:
            n = 0
            reply = {"clean": _reset(ns, fresh_builtins)}
        _write_all(proto_out, _pack(reply))


# ---------------------------------------------------------------------------------- the parent side
_uid_lock, _uids_used, _uid_next, _warned = threading.Lock(), set(), [0], []


def _alloc_uid():
    """A uid that no account, no process and no other live sandbox uses; fresh at every worker start."""
    with _uid_lock:
        for _ in range(256):
            uid = UID_BASE + (os.getpid() % (1 << 22)) * 256 + _uid_next[0] % 256
            _uid_next[0] += 1
            try:
                pwd.getpwuid(uid)
                continue  # a real account: never use (the uid sweep on restart would kill its processes)
            except KeyError:
                pass
            if uid not in _uids_used and not _procs(uid=uid):
                _uids_used.add(uid)
                return uid
    raise RuntimeError("sandbox: no free sandbox uid (more than 256 live sandboxes in one process?)")


def _stop_worker(w):
    """Kill the worker's process group and every process of its uid; remove its directory. Idempotent."""
    if "proc" not in w or w["owner"] != os.getpid():  # not running, or we are a forked copy of the parent
        return None
    proc = w.pop("proc")
    _kill([proc.pid], signal.SIGSTOP)  # freeze the worker (no new children), kill its children, its group
    for _ in range(200):  # the worker's children (setsid() ones too), and every process of its own uid
        pids = set(_procs(uid=w["uid"], ppid=proc.pid)) - {proc.pid}
        if not pids:
            break
        _kill(pids)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # before wait(): the group id cannot have been reused yet
    except OSError:
        pass
    try:
        rc = proc.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
    proc.stdin.close()
    proc.stdout.close()
    with _uid_lock:
        _uids_used.discard(w["uid"])
    shutil.rmtree(w["dir"], ignore_errors=True)
    return rc


class Sandbox:
    """One stateful Python session (a worker process), usable as a context manager. Thread-safe."""

    def __init__(self, timeout=6.0, memory_mb=1024, max_procs=16, max_output=2000, max_file_mb=16,
                 preload=DEFAULT_PRELOAD):
        # timeout=6: the authors' client.execute(..., timeout=6) in src/inference.py
        for name, v in dict(timeout=timeout, memory_mb=memory_mb, max_procs=max_procs, max_output=max_output,
                            max_file_mb=max_file_mb).items():
            if not v > 0:
                raise ValueError(f"Sandbox: {name} must be > 0, got {v!r}")
        self.timeout, self.memory_mb, self.max_procs = float(timeout), int(memory_mb), int(max_procs)
        self.max_output, self.max_file_mb, self.preload = int(max_output), int(max_file_mb), list(preload)
        self.uid = None  # the uid the worker runs as, once it said hello (None: same user as the parent)
        self._lock, self._w, self._note, self._closed = threading.Lock(), {}, "", False
        self._fin = weakref.finalize(self, _stop_worker, self._w)  # also runs at interpreter exit
        self._start()

    def _start(self):
        uid = _alloc_uid() if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        d = os.path.realpath(tempfile.mkdtemp(prefix="sandbox-"))
        if uid is not None:
            os.chown(d, uid, uid)
        cfg = dict(dir=d, uid=uid, timeout=self.timeout, memory_mb=self.memory_mb, max_procs=self.max_procs,
                   max_output=self.max_output, max_file_mb=self.max_file_mb, preload=self.preload)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MALLOC_ARENA_MAX": "2"}  # scrubbed: nothing of the parent's
        flags = ["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]  # no user site, no script dir on path
        proc = subprocess.Popen([sys.executable, *flags, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=d,
                                start_new_session=True)  # own process group: one killpg stops everything
        self._w.update(proc=proc, uid=uid, dir=d, ready=False, owner=os.getpid())

    def _call(self, msg, budget):
        """Send one request; return (reply, None) or (None, message) after killing a misbehaving worker."""
        w = self._w
        if not w["ready"]:
            hello = _recv(w["proc"].stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT, 1 << 16)
            if not isinstance(hello, dict):
                rc = _stop_worker(w)
                raise RuntimeError(f"sandbox: worker failed to start ({hello}, exit code {rc}); "
                                   f"try `{sys.executable} {__file__} -c 1+1`")
            w["ready"], self.uid = True, hello["uid"]
            if not hello["stdlib_readable"] and not _warned:
                _warned.append(True)
                warnings.warn(f"sandbox: the standard library ({os.path.dirname(os.__file__)}) is not readable "
                              f"by the sandbox's uid: its code can import only the standard modules in `preload`")
        try:
            _write_all(w["proc"].stdin.fileno(), _pack(msg))
            reply = _recv(w["proc"].stdout.fileno(), time.monotonic() + budget, 65536 + 8 * self.max_output)
        except BrokenPipeError:
            reply = "eof"
        if isinstance(reply, dict):
            return reply, None
        rc = _stop_worker(w)
        self._note = RESTART_NOTE
        self._start()  # the fresh worker imports its modules while the model writes its next block
        if reply == "timeout":
            why = f"TimeoutError: execution exceeded the time limit of {self.timeout:g} s and was stopped"
        elif reply == "eof" and rc is not None and rc < 0:
            why = f"the Python process was killed by {signal.Signals(-rc).name}"
        elif reply == "eof":
            why = f"the Python process exited (exit code {rc})"
        else:
            why = "the Python process sent a malformed reply"
        return None, f"{why}; the session was restarted and all variables are lost."

    def run(self, code: str) -> str:
        """Run one cell; return what a notebook would show ("<empty_execution>" when nothing)."""
        if not isinstance(code, str):
            raise TypeError(f"Sandbox.run: code must be a str, got {type(code).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("sandbox: run() after close()")
            note, self._note = self._note, ""
            if "proc" not in self._w:
                self._start()
            reply, problem = self._call({"op": "run", "code": code}, self.timeout + GRACE)
            out = problem or reply["output"]
            return f"{note}\n{out}" if note else out

    def reset(self):
        """Fresh state for a new problem: globals, builtins, files and children cleared in place."""
        with self._lock:
            if "proc" in self._w:
                reply, _ = self._call({"op": "reset"}, 10.0)  # a dead worker is replaced by _call itself
                if reply is not None and not reply["clean"]:
                    _stop_worker(self._w)  # threads left running: only a fresh process stops them
            if "proc" not in self._w:
                self._start()
            self._note = ""

    def close(self):
        with self._lock:
            self._closed = True
            self._fin()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SandboxPool:
    """`size` sandboxes for concurrent problems. acquire() blocks until one is free and resets it."""

    def __init__(self, size, **limits):
        self._all = [Sandbox(**limits) for _ in range(size)]  # workers start in parallel
        self._free, self._out, self._lock = queue.SimpleQueue(), set(), threading.Lock()
        for sb in self._all:
            self._free.put(sb)

    def acquire(self, timeout=None) -> Sandbox:
        sb = self._free.get(timeout=timeout)
        try:
            sb.reset()
        except BaseException:
            self._free.put(sb)
            raise
        with self._lock:
            self._out.add(id(sb))
        return sb

    def release(self, sandbox):
        with self._lock:
            if id(sandbox) not in self._out:
                raise ValueError("sandbox: release() of a sandbox not acquired from this pool")
            self._out.discard(id(sandbox))
        self._free.put(sandbox)

    def close(self):
        for sb in self._all:
            sb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main():
    ap = argparse.ArgumentParser(description="Run Python cells in a MathCoder sandbox. Without -c: a small "
                                 "REPL (a cell ends at an empty line; Ctrl-D quits).")
    ap.add_argument("-c", dest="code", help="run CODE as one cell, print what it shows, exit")
    ap.add_argument("--timeout", type=float, default=6.0, help="seconds per cell (default 6)")
    ap.add_argument("--memory-mb", type=int, default=1024, help="address-space limit (default 1024)")
    ap.add_argument("--max-procs", type=int, default=16, help="processes+threads, as root (default 16)")
    ap.add_argument("--max-output", type=int, default=2000, help="characters kept per cell (default 2000)")
    ap.add_argument("--max-file-mb", type=int, default=16, help="largest file the code may write (default 16)")
    a = ap.parse_args()
    with Sandbox(a.timeout, a.memory_mb, a.max_procs, a.max_output, a.max_file_mb) as sb:
        if a.code is not None:
            print(sb.run(a.code))
            return
        lines = []
        while True:
            try:
                line = input("... " if lines else ">>> ")
            except EOFError:
                line = None
            if line:
                lines.append(line)
            elif lines:
                print(sb.run("\n".join(lines)))
                lines = []
            if line is None:
                break


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":  # internal: the worker side of a Sandbox
        _worker(json.loads(sys.argv[2]))
    else:
        main()
