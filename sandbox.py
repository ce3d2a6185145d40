"""sandbox.py: a stateful Python session for the code MathCoder writes mid-solution (METHOD.md §4).

The authors ran each problem's code blocks in one Jupyter kernel: variables persist from block to
block, and what the cell showed (stdout/stderr, then IPython's display of the last expression or its
traceback, or "<empty_execution>") goes back into the model's context. notebook.py reproduces that
display by hand; here it runs in one worker process per Sandbox (this very file, run with
--worker), spoken to over pipes with one JSON object per line, reused across problems (reset()
clears it in place, which is cheap).

    with Sandbox(timeout=6) as sb:
        sb.run("x = 6 * 7")       # -> "<empty_execution>"
        sb.run("print(x); x + 1") # -> "42\\n43"

Limits (all configurable):
  time      soft: at `timeout` s a TimeoutError is raised inside the cell, which then shows the
            authors' timeout message (notebook.TIMEOUT), and the session goes on (their kernel
            ran on; see notebook.py). hard: code that catches it, ignores signals or sits in C
            code is killed GRACE s later, with its process group and every process of its uid;
            the next call runs in a fresh worker and its output starts with a note that earlier
            variables are lost.
  memory    RLIMIT_AS (address space): MemoryError inside the cell, or the worker dies and is restarted.
  processes RLIMIT_NPROC, per uid (threads included): needs the worker's own uid (root, below).
  output    head and tail kept, "[... N characters cut ...]" between; cut in the worker, so printing
            100 MB never reaches the parent.
  files     RLIMIT_FSIZE per file ("File too large"). Processes the cell left running die when it ends.

Isolation, and its limits (this is NOT a security boundary):
  * As root (containers, CI) the worker drops to its own unprivileged uid/gid (UID_BASE + a slot, no account
    needed): it cannot signal the parent or other sandboxes, nor write where that uid may not (the repo,
    home), and RLIMIT_NPROC stops fork/thread bombs. Modules imported after the drop must be readable by
    that uid (a Python under /root, e.g. pyenv, is not), so common ones are imported before it
    (DEFAULT_PRELOAD; extend it if needed). Without root none of this exists: the worker runs as you.
  * A Python audit hook (sys.addaudithook) refuses, through Python's own APIs, writes outside the work
    directory (even to /tmp), signals to processes outside the sandbox, and sockets: a guard rail against
    accidents, which ctypes, a shell (`os.system`) or code that goes looking gets around.
  * Reads, disk use inside the work directory, CPU share and the kernel's attack surface are not limited.
    For untrusted code at scale, run the whole program in a container or VM with no network, a read-only
    root, a tmpfs work directory and a seccomp profile (docker --network none --read-only --pids-limit,
    gVisor, or nsjail/bubblewrap around the worker).
Linux is the tested platform (it uses /proc, rlimits, setuid); macOS works with fewer guarantees.
"""
import argparse, builtins, contextlib, io, itertools, json, os, pwd, queue, re, resource
import select, shutil, signal, subprocess, sys, tempfile, threading, time, types, warnings, weakref

EMPTY = "<empty_execution>"  # what the training data shows for a cell with no output
DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections",
                   "statistics", "random", "re", "string", "datetime", "calendar", "heapq", "bisect",
                   "operator", "numbers", "typing", "copy", "json", "time", "array", "dataclasses", "enum",
                   "textwrap", "pprint", "unicodedata", "struct", "csv", "numpy", "sympy",
                   "_strptime")  # ~0.5 s; _strptime: what datetime.strptime imports on first use
UID_BASE = 1_000_000_000  # worker uids: UID_BASE + (parent pid % 2**22) * 256 + slot, below 2**31
GRACE = 1.0               # seconds from the soft TimeoutError to the hard kill
STARTUP_TIMEOUT = 60.0    # seconds a new worker may take to import DEFAULT_PRELOAD and say hello
RESTART_NOTE = "[The Python session was restarted: variables and imports from earlier cells are lost.]"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour codes: stripped, as the authors did (METHOD.md §4)


# ---------------------------------------------------------------------------------- wire protocol
def _send(fd, obj):
    data = (json.dumps(obj) + "\n").encode()  # one JSON object per line (json.dumps escapes newlines)
    while data:
        data = data[os.write(fd, data):]


def _recv(fd, deadline=None, limit=1 << 30):
    """One message from fd; "eof" if the writer died, "timeout" past the deadline, "bad" if malformed.
    Exactly one request or reply is ever in flight, so a read never runs into the next message."""
    buf, poller = b"", select.poll()
    poller.register(fd, select.POLLIN)
    while not buf.endswith(b"\n"):
        if deadline is not None and not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            return "timeout"
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return "eof"
        buf += chunk
        if len(buf) > limit:
            return "bad"
    try:
        return json.loads(buf)
    except ValueError:
        return "bad"


def _procs(uid=None, pgrp=None, ppid=None):
    """Live (non-zombie) pids whose real uid is `uid`, or in process group `pgrp`, or children of `ppid`."""
    found = []
    names = os.listdir("/proc") if os.path.isdir("/proc") else []  # no /proc (macOS): nothing found
    for name in filter(str.isdigit, names):
        try:
            with open(f"/proc/{name}/stat") as f:
                state, pp, pg = f.read().rsplit(")", 1)[1].split()[:3]
            with open(f"/proc/{name}/status") as f:
                real_uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            if state not in "ZX" and (int(pg) == pgrp or int(pp) == ppid or real_uid == uid):
                found.append(int(name))
        except (OSError, ValueError, StopIteration):  # it exited meanwhile
            pass
    return found


def _kill_all(find):
    """SIGKILL every pid that find() returns, and again, until none is left (they may fork meanwhile)."""
    for _ in range(200):
        pids = find()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):  # already gone
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------- the worker
_S = types.SimpleNamespace(in_cell=False, trusted=False, spawned=False, pid=0, dir="", uid=None, timeout=0.0)
_S.timed_out, _S.kernel = False, None  # the cell hit the time limit; its notebook.Kernel
notebook = None  # notebook.py (what the authors' kernel showed): imported by the worker, in _worker
_SPAWN = {"os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.exec", "subprocess.Popen", "pty.spawn"}
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (1,),
                "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _guard(event, args):
    """Audit hook: a guard rail on Python-level file writes, signals and sockets (not a security boundary)."""
    if _S.trusted:
        return
    paths = [args[i] for i in _PATH_EVENTS.get(event, ())]
    if event == "open" and args[2] & _WRITE_FLAGS:  # open() for reading is not checked
        paths = [args[0]]
    for p in paths:
        real = _S.dir if isinstance(p, int) else os.path.realpath(os.fsdecode(os.fspath(p)))  # int: an open fd
        if os.path.commonpath([real, _S.dir]) != _S.dir and real != os.devnull:
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {p!r}")
    if event in _SPAWN:
        _S.spawned = True
    elif event in ("os.kill", "os.killpg"):  # the target as a process group; 0 = our own, -1 = everything
        pid = args[0]
        group = pid if event == "os.killpg" else os.getpgid(pid) if pid > 0 else -pid if pid < -1 else pid
        if group not in (0, os.getpgrp()):
            raise PermissionError("sandbox: signals may only be sent to the sandbox's own processes")
    elif event in ("socket.connect", "socket.bind", "socket.sendto"):
        raise PermissionError("sandbox: network access is disabled")


class _Capture(io.TextIOBase):
    """Stands in for stdout and stderr during a cell; keeps the first and the last `limit` characters."""

    def __init__(self, limit):
        self.limit, self.total, self.head, self.tail, self.tail_n = limit, 0, "", [], 0

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        n = len(s)
        self.total += n
        if len(self.head) < self.limit:
            self.head += s[:self.limit - len(self.head)]
        if n >= self.limit:  # the last `limit` characters are all in s
            self.tail, self.tail_n = [s[-self.limit:]], self.limit
        elif n:
            self.tail.append(s)
            self.tail_n += n
            if self.tail_n > 2 * self.limit:  # trim now and then: memory stays O(limit) however much is printed
                self.tail, self.tail_n = ["".join(self.tail)[-self.limit:]], self.limit
        return n

    def text(self):
        if self.total <= self.limit:
            return self.head
        keep = self.limit // 2
        tail = "".join(self.tail)[keep - self.limit:]
        return f"{self.head[:keep]}\n[... {self.total - self.limit} characters cut ...]\n{tail}"


def _on_alarm(signum, frame):
    # Raise only inside the user's code, never in this file's machinery (e.g. while formatting its output).
    if _S.in_cell and frame is not None and frame.f_code.co_filename != __file__:
        _S.in_cell, _S.timed_out = False, True
        raise TimeoutError(f"the cell exceeded the time limit of {_S.timeout:g} s")


def _kill_children():
    """Kill every process the cell started and left behind (with its own uid: even setsid() ones)."""
    _S.trusted = True
    try:
        if _S.uid:
            os.kill(-1, signal.SIGKILL)  # -1 = every process this uid may signal: only the sandbox's own
        else:  # no uid of its own: our process group and our children (orphans come to us, a subreaper)
            _kill_all(lambda: set(_procs(pgrp=os.getpgrp(), ppid=os.getpid())) - {os.getpid()})
        while True:
            os.waitpid(-1, 0)  # reap
    except ChildProcessError:
        pass
    finally:
        _S.trusted = False


def _run_cell(code, ns, limit):
    """Run one cell as the authors' IPython kernel did (notebook.py); return what it showed."""
    out = _Capture(limit)
    sys.stdout = sys.stderr = out
    _S.spawned = False
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # RLIMIT_CPU: a backstop if the parent is gone
    resource.setrlimit(resource.RLIMIT_CPU, (int(used + _S.timeout + GRACE) + 2, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _on_alarm)  # again each cell: an earlier one may have replaced it
    signal.setitimer(signal.ITIMER_REAL, _S.timeout, 0.05)  # re-fires until cancelled, in case one is missed
    _S.in_cell, _S.timed_out = True, False
    try:
        out.write(_S.kernel.run(code, ns))  # the value or traceback, after the cell's own output
    except BaseException as e:  # raised in notebook.py's machinery itself (e.g. by the time limit)
        _S.in_cell = False
        out.write(_S.kernel.format_traceback(e))
    finally:
        _S.in_cell = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != _S.pid:  # a process forked by the cell: it must never answer the parent
            os._exit(0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if _S.spawned:
        _kill_children()
    if _S.timed_out:  # the authors' client gave up after 6 s and showed only this
        return notebook.TIMEOUT
    return _ANSI.sub("", out.text()).encode("utf-8", "replace").decode().strip() or EMPTY  # authors: .strip()


def _reset(ns, fresh_builtins):
    ns.clear()
    ns.update(__name__="__main__", __builtins__=builtins)
    builtins.__dict__.clear()  # patched builtins restored, added ones gone (same dict: frames hold it)
    builtins.__dict__.update(fresh_builtins)
    _S.kernel.reset()  # Cell In[1] again, and its cells' source lines forgotten
    _kill_children()
    _S.trusted = True  # removing a symlink that points outside would look like a write out there
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
    global notebook
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run with -P: not on the path
    import notebook  # before the privileges are dropped, like the preloaded modules
    del sys.path[0]
    _S.kernel = notebook.Kernel()
    proto_in, proto_out = os.dup(0), os.dup(1)  # the protocol pipes move off fds 0 and 1 ...
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # ... so input() sees EOF, and stray output (os.write(1), children) cannot corrupt them
    os.dup2(null, 1)
    _S.pid, _S.dir, _S.timeout = os.getpid(), cfg["dir"], cfg["timeout"]
    os.chdir(_S.dir)
    for mod in cfg["preload"]:  # imported while still privileged (the drop below may hide the stdlib)
        with contextlib.suppress(Exception):
            __import__(mod)
    mb = 1 << 20
    limits = [(resource.RLIMIT_AS, cfg["memory_mb"] * mb), (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mb),
              (resource.RLIMIT_CORE, 0)]
    if cfg["uid"] is not None:  # per-uid process count: only meaningful once the worker has a uid of its own
        limits.append((resource.RLIMIT_NPROC, cfg["max_procs"]))
    for what, n in limits:
        with contextlib.suppress(ValueError, OSError):  # e.g. above what this system allows
            resource.setrlimit(what, (n, n))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large files: OSError instead of death
    with contextlib.suppress(Exception):  # PR_SET_CHILD_SUBREAPER (Linux): orphaned grandchildren are
        import ctypes                        # re-parented to the worker, which kills and reaps them
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    if cfg["uid"] is not None:
        with contextlib.suppress(OSError):
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
            _S.uid = cfg["uid"]  # set only once dropped: _kill_children's kill(-1) must never run as root/you
    sys.addaudithook(_guard)
    os.dup2(null, 2)  # only now: a worker that fails to start shows its traceback on the parent's stderr
    fresh_builtins = dict(builtins.__dict__)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    stdlib_ok = os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK)  # as the (new) real uid
    _send(proto_out, {"uid": _S.uid, "stdlib_readable": stdlib_ok})
    while True:
        msg = _recv(proto_in)
        if not isinstance(msg, dict):
            os._exit(0)  # the parent is gone
        if msg["op"] == "run":
            _send(proto_out, {"output": _run_cell(msg["code"], ns, cfg["max_output"])})
        else:
            _send(proto_out, {"clean": _reset(ns, fresh_builtins)})


# ---------------------------------------------------------------------------------- the parent side
_uid_lock, _uids_used, _uid_slots = threading.Lock(), set(), itertools.count()


def _alloc_uid():
    """A uid that no account, no process and no other live sandbox uses; fresh at every worker start."""
    with _uid_lock:
        for _ in range(256):
            uid = UID_BASE + (os.getpid() % (1 << 22)) * 256 + next(_uid_slots) % 256
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)
                continue  # a real account: never use (the uid sweep on restart would kill its processes)
            if uid not in _uids_used and not _procs(uid=uid):
                _uids_used.add(uid)
                return uid
    raise RuntimeError("sandbox: no free sandbox uid (more than 256 live sandboxes in one process?)")


def _stop_worker(w):
    """Kill the worker's process group and every process of its uid; remove its directory. Idempotent."""
    if "proc" not in w or w["owner"] != os.getpid():  # not running, or we are a forked copy of the parent
        return None
    proc = w.pop("proc")
    proc.send_signal(signal.SIGSTOP)  # frozen, it starts no new children while we kill the ones it has
    _kill_all(lambda: set(_procs(uid=w["uid"], ppid=proc.pid)) - {proc.pid})  # setsid() ones too
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # before wait(): the group id cannot have been reused yet
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
        self.cfg = dict(timeout=float(timeout), memory_mb=int(memory_mb), max_procs=int(max_procs),
                        max_output=int(max_output), max_file_mb=int(max_file_mb))
        for name, v in self.cfg.items():
            if not v > 0:
                raise ValueError(f"Sandbox: {name} must be > 0, got {v!r}")
        self.cfg["preload"] = list(preload)  # the worker's whole configuration, with `dir` and `uid` below
        self.uid = None  # the uid the worker runs as, once it said hello (None: same user as the parent)
        self._lock, self._w, self._note = threading.Lock(), {}, ""
        self._fin = weakref.finalize(self, _stop_worker, self._w)  # close(); also runs at interpreter exit
        self._start()

    def _start(self):
        """Start a worker without waiting for it: it imports its modules while the caller does other work."""
        uid = _alloc_uid() if os.geteuid() == 0 else None
        d = os.path.realpath(tempfile.mkdtemp(prefix="sandbox-"))
        if uid is not None:
            os.chown(d, uid, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8",  # nothing of
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "MALLOC_ARENA_MAX": "2",   # the parent's
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        flags = ["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]  # no user site, no script dir on path
        cfg = json.dumps(dict(self.cfg, dir=d, uid=uid))
        proc = subprocess.Popen([sys.executable, *flags, os.path.abspath(__file__), "--worker", cfg],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=d,
                                start_new_session=True)  # own process group: one killpg stops everything
        self._w.update(proc=proc, uid=uid, dir=d, ready=False, owner=os.getpid())

    def _call(self, msg, budget):
        """Send one request; return (reply, None), or (None, why) after replacing a misbehaving worker."""
        if not self._fin.alive:
            raise RuntimeError("sandbox: used after close()")
        if "proc" not in self._w:  # the last start failed: try again
            self._start()
        w = self._w
        if not w["ready"]:  # the first call to a new worker waits for its hello
            hello = _recv(w["proc"].stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT, 1 << 16)
            if not isinstance(hello, dict):
                rc = _stop_worker(w)
                raise RuntimeError(f"sandbox: worker failed to start ({hello}, exit code {rc}); "
                                   f"try `{sys.executable} {__file__} -c 1+1`")
            w["ready"], self.uid = True, hello["uid"]
            if not hello["stdlib_readable"]:  # shown once per process: Python's default warning filter
                warnings.warn(f"sandbox: the standard library ({os.path.dirname(os.__file__)}) is not readable "
                              f"by the sandbox's uid: its code can import only the standard modules in `preload`")
        try:
            _send(w["proc"].stdin.fileno(), msg)
            reply = _recv(w["proc"].stdout.fileno(), time.monotonic() + budget, 65536 + 8 * self.cfg["max_output"])
        except BrokenPipeError:
            reply = "eof"
        if isinstance(reply, dict):
            return reply, None
        rc = _stop_worker(w)
        self._note = RESTART_NOTE
        self._start()  # the fresh worker imports its modules while the model writes its next block
        if reply == "timeout":
            why = f"TimeoutError: execution exceeded the time limit of {self.cfg['timeout']:g} s and was stopped"
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
            note, self._note = self._note, ""
            reply, problem = self._call({"op": "run", "code": code}, self.cfg["timeout"] + GRACE)
            out = problem or reply["output"]
            return f"{note}\n{out}" if note else out

    def reset(self):
        """Fresh state for a new problem: globals, builtins, files and children cleared in place."""
        with self._lock:
            reply, _ = self._call({"op": "reset"}, 10.0)  # a dead worker is replaced by _call itself
            if reply is not None and not reply["clean"]:  # threads left running: only a new process stops them
                _stop_worker(self._w)
                self._start()
            self._note = ""

    def close(self):
        with self._lock:
            self._fin()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SandboxPool:
    """`size` sandboxes for concurrent problems. acquire() blocks until one is free and resets it."""

    def __init__(self, size, **limits):
        self._all = [Sandbox(**limits) for _ in range(size)]  # workers start in parallel
        self._free, self._out = queue.SimpleQueue(), set()  # thread-safe: set.add/remove are atomic
        for sb in self._all:
            self._free.put(sb)

    def acquire(self, timeout=None) -> Sandbox:
        sb = self._free.get(timeout=timeout)
        try:
            sb.reset()
        except BaseException:
            self._free.put(sb)
            raise
        self._out.add(sb)
        return sb

    def release(self, sandbox):
        try:
            self._out.remove(sandbox)
        except KeyError:
            raise ValueError("sandbox: release() of a sandbox not acquired from this pool") from None
        self._free.put(sandbox)

    def close(self):
        for sb in self._all:
            sb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _replay(a):
    """--replay: notebook.replay() on the files, its table on stdout, progress on stderr."""
    import notebook as nb  # the parent's own copy (the module global is the worker's)
    try:
        with SandboxPool(a.workers, timeout=a.timeout, memory_mb=a.memory_mb, max_procs=a.max_procs,
                         max_output=a.max_output, max_file_mb=a.max_file_mb) as pool:
            stats, diffs = nb.replay(a.replay, pool, a.workers, lambda m: print(m, file=sys.stderr))
    except OSError as e:
        sys.exit(f"error: {e.filename}: {e.strerror}")
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(nb.summary_table(stats, diffs))


def main():
    ap = argparse.ArgumentParser(description="Run Python cells in a MathCoder sandbox. Without -c: a small "
                                 "REPL (a cell ends at an empty line; Ctrl-D quits).")
    ap.add_argument("-c", dest="code", help="run CODE as one cell, print what it shows, exit")
    ap.add_argument("--timeout", type=float, default=6.0, help="seconds per cell (default 6)")
    ap.add_argument("--memory-mb", type=int, default=1024, help="address-space limit (default 1024)")
    ap.add_argument("--max-procs", type=int, default=16, help="processes+threads, as root (default 16)")
    ap.add_argument("--max-output", type=int, default=2000, help="characters kept per cell (default 2000)")
    ap.add_argument("--max-file-mb", type=int, default=16, help="largest file the code may write (default 16)")
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="run the code blocks of the "
                    "authors' released solutions (data/official_outs/*.jsonl), compare the outputs")
    ap.add_argument("--workers", type=int, default=4, help="with --replay: sandboxes at once")
    a = ap.parse_args()
    if a.replay:
        return _replay(a)
    with Sandbox(a.timeout, a.memory_mb, a.max_procs, a.max_output, a.max_file_mb) as sb:
        if a.code is not None:
            return print(sb.run(a.code))
        cell, eof = [], False
        while not eof:
            try:
                line = input("... " if cell else ">>> ")
            except EOFError:
                line, eof = "", True
            if line:
                cell.append(line)
            elif cell:
                print(sb.run("\n".join(cell)))
                cell = []


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":  # internal: the worker side of a Sandbox
        _worker(json.loads(sys.argv[2]))
    else:
        main()
