"""sandbox.py: a stateful Python session for the code MathCoder writes mid-solution.

The authors' src/inference.py (docs/method.md §4) runs each problem's code blocks in one Jupyter
kernel: variables persist from block to block, and what the cell shows (stdout/stderr, then
IPython's display of the last expression or its traceback, or "<empty_execution>") goes back into
the model's context; plumbing/notebook.py reproduces that display by hand. Here, without Jupyter:
one worker process per Sandbox, spoken to over a socket with one JSON object per line.

    with Sandbox(timeout=6) as sb:
        sb.run("x = 6 * 7")       # -> "<empty_execution>"
        sb.run("print(x); x + 1") # -> "42\\n43"
        sb.reset()                # a new problem: a fresh worker, nothing of the last one left

A fork server makes fresh workers cheap: each Sandbox starts a template (this file, run with
--template) that imports the preload (numpy, sympy, ...) once and forks workers: one per problem
(reset() kills the worker and forks a new one, so patched modules, os.environ, sys.path, seeds,
threads, ... never reach the next problem), and a new one whenever a worker dies or misbehaves.
The template runs no model code.

Limits (all configurable):
  time      soft: at `timeout` s a TimeoutError is raised inside the cell, which then shows the
            authors' timeout message (notebook.TIMEOUT), and the session goes on (their kernel
            ran on; see notebook.py). hard: code that catches it, ignores signals or sits in C
            code is killed GRACE s later with every process it started; the next call runs in a
            fresh worker and its output starts with a note that earlier variables are lost.
  memory    RLIMIT_AS (address space): MemoryError inside the cell, or the worker dies and
            restarts.
  processes RLIMIT_NPROC, threads included. The kernel counts it per uid and never for root, so it
            holds only where the worker has a uid or a user namespace of its own (see below).
            After every cell the worker's children (all its descendants come to it: it is a
            subreaper) are killed, and threads still running (counted in /proc/self/task) end
            the worker: the next cell runs in a fresh one, after the restart note.
  output    head and tail kept, "[... N characters cut ...]" between; cut in the worker, so
            printing 100 MB never reaches the parent.
  files     RLIMIT_FSIZE per file ("File too large"); the work directory is a tmpfs of `disk_mb`
            (namespaces, uid), emptied for every new worker.
  protocol  every request carries an id that its reply must repeat, alone on its line; a reply
            that does not (a line the cell's code wrote onto the worker's socket), or anything
            waiting on the socket before a request, replaces the worker.

Isolation, Sandbox(isolation=...); default_isolation() is the strongest this machine offers:
  "namespaces"  The template and its worker run inside bubblewrap (`bwrap`, package bubblewrap),
      one per Sandbox, in a root of their own: read-only, it holds only _mounts(): the system's
      programs and libraries (/usr, /bin, /lib*), the interpreter (its executable, standard
      library, site-packages: the venv's and the base's), the preload's modules and the files
      the worker runs (WORKER_FILES); a checkout or working directory inside those is hidden.
      Nothing else: no project data, checkpoints, runs, home directories or /etc (a directory
      above a bound one, like /root for /root/.pyenv/..., holds only that). Writable: only the work
      directory, a tmpfs of disk_mb MiB. Fresh /dev and /proc, no network (only loopback), their
      own PID, IPC and UTS namespaces (the parent, other sandboxes and all other processes are
      invisible, so cannot be signalled); killed with the parent. As root the template keeps
      only CAP_SETUID, CAP_SETGID and CAP_KILL, and the worker drops to a uid of its own with no
      capability at all. Without root, bwrap makes a user namespace and the worker keeps your
      uid: it could then kill its own template, which costs only its own Sandbox a cold start.
  "uid"  (root on Linux) The template enters a mount namespace of its own and chroots into the
      same kind of root (_enter_private_root: the same _mounts(), /dev's harmless nodes, the
      machine's /proc, the work directory on a tmpfs); the worker drops to an unprivileged
      uid/gid of its own (UID_BASE + a slot, no account needed) with no capability: it cannot
      signal other processes, read the project, nor write outside its work directory (so it
      leaves nothing in /tmp or /dev/shm). It sees all processes (their command lines too) and
      has the network.
  "none"  The worker runs as you, with the limits above and the audit hook below, nothing more.
      Refused as root: root's code could signal, trace or overwrite anything, the run's own
      results included.
  In every mode the worker holds no capability and sets no_new_privs (no setuid program gives it
  more), and a Python audit hook (sys.addaudithook) refuses, through Python's own APIs, writes
  outside the work directory, signals to other processes and sockets: a guard rail against
  accidents, which ctypes, a shell or code that goes looking gets around. Not isolated: what
  "none" can read (everything you can); in "uid" the machine's process list and the network;
  the kernel's attack surface (no seccomp filter); CPU share. For hostile code at scale also put
  the whole program in a VM. Linux is the tested platform (/proc, rlimits, setuid, capabilities,
  mounts); macOS offers only "none".
"""
import argparse, builtins, contextlib, ctypes, dataclasses, importlib.util, inspect, io, itertools
import json, os, pwd, queue, re, resource, select, shutil, signal, socket, subprocess, sys
import sysconfig, tempfile, threading, time, traceback, weakref

EMPTY = "<empty_execution>"  # what the training data shows for a cell with no output
# Imported once per Sandbox by its template, which then forks: no module that starts threads.
DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools",
                   "collections", "statistics", "random", "re", "string", "datetime", "calendar",
                   "heapq", "bisect", "operator", "numbers", "typing", "copy", "json", "time",
                   "array", "dataclasses", "enum", "textwrap", "pprint", "unicodedata", "struct",
                   "csv", "numpy", "sympy",
                   "_strptime")  # what datetime.strptime imports on first use
MODES = ("namespaces", "uid", "none")  # isolation, strongest first
UID_BASE = 1_000_000_000  # worker uids: UID_BASE + (parent pid % 2**22) * 256 + slot, below 2**31
GRACE = 1.0               # seconds from the soft TimeoutError to the hard kill
STARTUP_TIMEOUT = 60.0    # seconds a new template may take to import the preload and fork a worker
RESTART_NOTE = ("[The Python session was restarted: variables and imports from earlier cells "
                "are lost.]")
WORKER_FILES = ("sandbox.py", "plumbing/__init__.py", "plumbing/notebook.py",  # what the template
                "plumbing/pretty.py")                                      # imports from here
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # sh, libc, ...


# ---------------------------------------------------------------------------------- wire protocol
def _send(fd, obj):
    data = (json.dumps(obj) + "\n").encode()  # one JSON object per line (newlines are escaped)
    while data:
        data = data[os.write(fd, data):]


def _recv(fd, deadline=None, limit=1 << 30):
    """One message from fd; "eof" if the writer died, "timeout" past the deadline, "bad" if
    malformed. One request or reply at a time is in flight: a read never runs into the next one."""
    buf = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not buf.endswith(b"\n"):
        if deadline is not None and not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            return "timeout"
        try:
            chunk = os.read(fd, 1 << 16)
        except ConnectionResetError:  # a socket whose peer died
            chunk = b""
        if not chunk:
            return "eof"
        buf += chunk
        if len(buf) > limit:
            return "bad"
    try:
        return json.loads(buf)  # two lines in one read ("forged\nreal\n") are not JSON: "bad"
    except ValueError:
        return "bad"


def _pending(fd):
    """True if something waits to be read on fd (between a reply and the next request: nobody's)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# ---------------------------------------------------------------------------------- processes
def _procs(uid=None, pgrp=None, ppid=None):
    """Live (non-zombie) pids whose real uid is `uid`, or in process group `pgrp`, or children of
    `ppid`. Without /proc (macOS): none."""
    found = []
    names = os.listdir("/proc") if os.path.isdir("/proc") else []
    for name in filter(str.isdigit, names):
        try:
            with open(f"/proc/{name}/stat") as f:
                state, parent, group = f.read().rsplit(")", 1)[1].split()[:3]
            with open(f"/proc/{name}/status") as f:
                real_uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, ValueError, StopIteration):  # it exited meanwhile
            continue
        if state not in "ZX" and (int(group) == pgrp or int(parent) == ppid or real_uid == uid):
            found.append(int(name))
    return found


def _kill_all(spare, **which):
    """SIGKILL every process _procs(**which) finds but pid `spare`, again and again until none is
    left (they may fork meanwhile)."""
    for _ in range(200):
        pids = set(_procs(**which)) - {spare}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):  # already gone
                os.kill(pid, signal.SIGKILL)


def _clear(top):
    """Empty directory `top` (kept) whatever code left in it: directories made read-only or
    unlistable are opened up first (where we own them), symlinks are removed, never followed.
    Iterative (no recursion limit); best effort: what cannot go stays."""
    with contextlib.suppress(OSError):
        os.chmod(top, 0o700)  # a work directory the code chmod-ed
    stack, subdirs = [top], []
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    os.chmod(entry.path, 0o700)
                    stack.append(entry.path)
                    subdirs.append(entry.path)
                else:
                    os.unlink(entry.path)
    for path in reversed(subdirs):  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(path)


# ---------------------------------------------------------------------------------- the worker
@dataclasses.dataclass
class _WorkerState:
    """What the worker process knows about itself (one worker per process, so module-level)."""
    pid: int = 0            # the worker's own pid: a process forked by a cell must never answer
    dir: str = ""           # the work directory, the only place Python-level writes may go
    uid: "int | None" = None  # the uid it dropped to (None: it runs as the caller)
    timeout: float = 0.0    # seconds per cell
    kernel: object = None   # its notebook.Kernel: what a cell shows, and the Cell In[k] counter
    in_cell: bool = False   # the user's code runs: the time limit may interrupt it
    timed_out: bool = False  # the running cell hit the time limit
    trusted: bool = False   # this file's own clean-up runs: the audit hook stands aside


_worker = _WorkerState()
notebook = None  # notebook.py, imported by the template (_template) before it forks workers
_PATH_EVENTS = {  # audit event -> which of its arguments are paths written to
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (1,),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _guard(event, args):
    """Audit hook: a guard rail on Python-level file writes, signals and sockets."""
    if _worker.trusted:
        return
    paths = [args[i] for i in _PATH_EVENTS.get(event, ())]
    if event == "open" and args[2] & _WRITE_FLAGS:  # open() for reading is not checked
        paths = [args[0]]
    for path in paths:  # an int is an open fd
        if isinstance(path, int):
            real = _worker.dir
        else:
            real = os.path.realpath(os.fsdecode(os.fspath(path)))
        if os.path.commonpath([real, _worker.dir]) != _worker.dir and real != os.devnull:
            raise PermissionError("sandbox: writing outside the working directory is not "
                                  f"allowed: {path!r}")
    if event in ("os.kill", "os.killpg"):  # the target as a group; 0 = our own, -1 = everything
        pid = args[0]
        if event == "os.killpg" or pid in (0, -1):
            group = pid
        else:
            group = -pid if pid < 0 else os.getpgid(pid)
        if group not in (0, os.getpgrp()):
            raise PermissionError("sandbox: signals may go only to the sandbox's own processes")
    elif event in ("socket.connect", "socket.bind", "socket.sendto"):
        raise PermissionError("sandbox: network access is disabled")


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


def _on_alarm(signum, frame):
    # Raise only inside the user's code, never in this file's machinery (_Capture.write under a
    # print): the timer fires again 50 ms later.
    if _worker.in_cell and frame is not None and frame.f_code.co_filename != __file__:
        _worker.in_cell = False
        _worker.timed_out = True
        raise TimeoutError(f"the cell exceeded the time limit of {_worker.timeout:g} s")


def _has_children():
    """Reap finished children; True if a live one is left. Every process the cell started, at any
    depth, is a child or comes to us once its parent dies (we are a subreaper): one syscall."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _threads_left():
    """True if threads other than ours still run after a cell (counted by the kernel: those of
    _thread.start_new_thread and C libraries too). One that was joined may take a moment to go."""
    for _ in range(100):
        if len(os.listdir("/proc/self/task")) == 1:
            return False
        time.sleep(0.001)
    return True


def _kill_children():
    """Kill every process the cell started and left (with its own uid: even setsid() ones)."""
    _worker.trusted = True
    try:
        if _worker.uid:
            os.kill(-1, signal.SIGKILL)  # -1: every process this uid may signal, the sandbox's own
        else:  # our process group and our children (orphans come to us: we are a subreaper)
            _kill_all(os.getpid(), pgrp=os.getpgrp(), ppid=os.getpid())
        while True:
            os.waitpid(-1, 0)  # reap
    except ChildProcessError:
        pass
    finally:
        _worker.trusted = False


def _run_cell(code, namespace, limit):
    """Run one cell as the authors' IPython kernel did (notebook.py); return what it showed."""
    out = _Capture(limit)
    sys.stdout = sys.stderr = out
    # RLIMIT_CPU: a backstop should the parent be gone and nobody enforce the time limit
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    cpu_limit = int(used + _worker.timeout + GRACE) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _on_alarm)  # again each cell: an earlier one may have replaced it
    signal.setitimer(signal.ITIMER_REAL, _worker.timeout, 0.05)  # re-fires, in case one is missed
    _worker.timed_out = False
    _worker.in_cell = True
    try:
        out.write(_worker.kernel.run(code, namespace))  # the value or traceback, after the prints
    except BaseException as e:  # raised in notebook.py's machinery itself (e.g. by the time limit)
        _worker.in_cell = False
        out.write(_worker.kernel.format_traceback(e))
    finally:
        _worker.in_cell = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != _worker.pid:  # a process forked by the cell: it must not answer
            os._exit(0)
        sys.stdout = sys.__stdout__
        sys.stderr = sys.__stderr__
    if _has_children():  # however they were started (ctypes' fork included)
        _kill_children()
    if _worker.timed_out:  # the authors' client gave up after 6 s and showed only this
        return notebook.TIMEOUT
    shown = notebook.ANSI.sub("", out.text()).encode("utf-8", "replace").decode()
    return shown.strip() or EMPTY  # the authors' .strip()


def _drop_privileges(uid):
    """Become `uid` (and gid) if given, then hold no capability at all (effective, permitted,
    inheritable, ambient) and set no_new_privs: no setuid program or file capability gives any
    back. Reading is not one it needs: what it may read is what its root holds (_mounts)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # from root to a uid: the kernel clears permitted, effective and ambient
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if (libc.capset(header, (ctypes.c_uint32 * 6)())  # all zero: inheritable goes too
            or libc.prctl(47, 4, 0, 0, 0)     # PR_CAP_AMBIENT_CLEAR_ALL
            or libc.prctl(38, 1, 0, 0, 0)):   # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "sandbox: could not drop the worker's capabilities")


def _worker_main(cfg, conn):
    """In a fresh fork of the template: session, limits, uid, guard; then one cell per request on
    the socket `conn`, until the parent closes it."""
    os.setsid()  # its own process group: one killpg stops it and what it started
    os.set_inheritable(conn, False)  # programs the cell runs must not hold the parent's socket
    _worker.kernel = notebook.Kernel()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # input() sees EOF (fd 0 was the template's control socket), and stray
    os.dup2(null, 1)  # output (os.write(1), children) goes nowhere
    _worker.pid = os.getpid()
    _worker.dir = cfg["dir"]
    _worker.timeout = cfg["timeout"]
    mib = 1 << 20
    limits = [(resource.RLIMIT_AS, cfg["memory_mb"] * mib), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mib)]
    if cfg["uid"] is not None or cfg["isolation"] == "namespaces":  # a uid or a user namespace of
        limits.append((resource.RLIMIT_NPROC, cfg["max_procs"]))     # its own: it counts its own
    for which, value in limits:
        with contextlib.suppress(ValueError, OSError):  # e.g. above what this system allows
            resource.setrlimit(which, (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large files: OSError instead of death
    with contextlib.suppress(AttributeError):  # PR_SET_CHILD_SUBREAPER (Linux): the cell's orphans
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # come to the worker, which kills and reaps them
    if sys.platform == "linux":
        _drop_privileges(cfg["uid"])
        _worker.uid = cfg["uid"]  # only once dropped: kill(-1) in _kill_children never runs as root
    _clear(_worker.dir)  # what the last problem's worker left there, its chmod included
    os.chdir(_worker.dir)
    if "numpy.random" in sys.modules:  # a fork shares the template's seed (random reseeds itself)
        sys.modules["numpy.random"].seed()
    sys.addaudithook(_guard)
    os.dup2(null, 2)  # only now: a worker that fails to start shows why on the parent's stderr
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    _send(conn, {"uid": _worker.uid})  # hello
    while True:
        request = _recv(conn)
        if not (isinstance(request, dict) and request.get("op") == "run"):
            os._exit(0)  # the parent is gone (or the socket carries what no parent sends)
        output = _run_cell(request["code"], namespace, cfg["max_output"])
        # Threads still running could write into later cells: only a fresh worker stops them.
        _send(conn, {"id": request["id"], "output": output, "restart": _threads_left()})


# ---------------------------------------------------------------------------------- the template
def _template(cfg):
    """The fork server. Imports the preload once, then serves the parent on its control socket
    (fd 0): b"fork" with a socket attached starts a worker on it, b"kill" stops the worker and
    answers with its exit code; end-of-file (the parent is gone) stops the worker and the template.
    """
    if cfg["isolation"] == "namespaces" and os.getpid() != 2:  # 1: bwrap's init; see _stop_worker
        raise SystemExit("sandbox: the template is not in a PID namespace of its own")
    if cfg["isolation"] == "uid":
        _enter_private_root(cfg)  # first: the imports below then prove that the root holds them
    for module in cfg["preload"]:
        with contextlib.suppress(Exception):
            __import__(module)
    global notebook
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run with -P: not on the path
    from plumbing import notebook  # what a cell shows (the authors' IPython display), preloaded
    del sys.path[0]
    control = socket.socket(fileno=0)
    pid = None
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(control, 64, 1)
        except OSError:
            request = b""
        if request == b"fork":
            pid = os.fork()
            if pid == 0:
                try:
                    _worker_main(cfg, fds[0])  # returns only by raising
                except BaseException:
                    traceback.print_exc()  # fd 2 is still the parent's stderr
                os._exit(1)
            os.close(fds[0])
            continue
        exit_code = _stop_worker(pid, cfg) if pid else None  # b"kill", or b"": the parent is gone
        pid = None
        if not request:
            os._exit(0)
        control.send(json.dumps(exit_code).encode())


# mount(2) and unshare(2) flags (linux/mount.h, linux/sched.h)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
CLONE_NEWNS = 0x20000


def _enter_private_root(cfg):
    """uid mode (root): what bwrap does in namespaces mode, by hand. A mount namespace of our own,
    whose new root (a tmpfs on the host's empty work directory) holds only cfg["mounts"]
    (_mounts(), read-only), /dev's harmless nodes, the machine's /proc and the work directory on a
    tmpfs of disk_mb; then chroot into it. Every worker forked from here lives in that root."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]

    def mount(source, target, fstype, flags, data=None):
        if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                      flags, data and data.encode()):
            raise OSError(ctypes.get_errno(), f"sandbox: mount {source} on {target}")

    def bind(source, target, flags=MS_NOSUID | MS_NODEV):  # read-only bind of a file or dir
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount(source, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)

    if libc.unshare(CLONE_NEWNS):
        raise OSError(ctypes.get_errno(), "sandbox: unshare(CLONE_NEWNS)")
    os.umask(0o022)  # the directories made above the binds: traversable by the worker
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount goes back to the host
    root, hidden = cfg["dir"], []
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for kind, source, target in cfg["mounts"]:
        if kind == "ro":
            bind(source, root + target)
        elif kind == "symlink":
            os.symlink(source, root + target)
        else:  # "hide": read-only once what goes inside is mounted
            os.makedirs(root + target, exist_ok=True)
            mount("tmpfs", root + target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            hidden.append(root + target)
    for target in hidden:
        mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/dev")
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for node in ("null", "zero", "full", "random", "urandom"):
        bind("/dev/" + node, f"{root}/dev/{node}", MS_NOSUID)
    bind("/proc", root + "/proc")
    os.makedirs(root + cfg["dir"])
    mount("tmpfs", root + cfg["dir"], "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={cfg['disk_mb']}m,mode=0777")
    os.chroot(root)
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _stop_worker(pid, cfg):
    """Kill worker `pid` and every process it started; reap it. Its exit code (negative: the signal
    that killed it)."""
    if cfg["isolation"] == "namespaces":  # our PID namespace holds bwrap's init, us, and what the
        os.kill(-1, signal.SIGKILL)        # worker started: -1 = all but init and us (setsid too)
    else:
        with contextlib.suppress(OSError):  # frozen, it starts no new children while we kill them
            os.kill(pid, signal.SIGSTOP)
        _kill_all(pid, uid=cfg["uid"], pgrp=pid, ppid=pid)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # its group, itself included
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ---------------------------------------------------------------------------------- the parent side
_uid_lock = threading.Lock()
_uids_in_use = set()
_uid_slots = itertools.count()
_why_not = {}           # isolation mode -> None where this machine offers it, else why not
_modes_announced = set()


def _under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def _mounts(preload=()):
    """What a sandbox's root holds besides /dev, /proc and the work directory, in mount order, as
    (kind, source, target): "ro" binds `source` read-only at `target` (the same path), "symlink"
    makes `target` a link to `source`, "hide" puts an empty tmpfs over `target`. The system's
    programs and libraries; then the checkout and the current directory hidden where those hold
    them; then the interpreter: each link of its executable, libpython, its standard library and
    site-packages (the venv's and the base's, from sys.prefix and sys.base_prefix), the preload's
    modules wherever they are; last the files the worker runs (WORKER_FILES). Bound one by one,
    so a checkout or venv in a mode-700 directory (/root) still imports: the directories above a
    bind are made 0755 in the sandbox's own root."""
    mounts, seen = [], {}  # seen: path -> True where bound, False where hidden

    def visible(path):
        tops = [top for top in seen if _under(path, top)]
        return bool(tops) and seen[max(tops, key=len)]  # the deepest mount decides

    def show(path):
        path = os.path.abspath(path)
        if os.path.exists(path) and not visible(path):
            mounts.append(("ro", path, path))
            seen[path] = True

    for top in SYSTEM_DIRS:
        if os.path.islink(top):
            mounts.append(("symlink", os.readlink(top), top))
        else:
            show(top)
    here = os.path.dirname(os.path.abspath(__file__))
    for private in (here, os.getcwd()):  # e.g. a checkout in /usr/src/app: its data stays out
        if visible(private):
            mounts.append(("hide", None, private))
            seen[private] = False
    python = [os.path.join(sys.prefix, "pyvenv.cfg")]  # how the interpreter knows it is a venv's
    executable = sys.executable
    for _ in range(40):  # /work/venv/bin/python -> python3 -> /root/.pyenv/.../python3.11
        python.append(os.path.dirname(executable))
        if not os.path.islink(executable):
            break
        executable = os.path.join(os.path.dirname(executable), os.readlink(executable))
    libdir, libpython = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and libpython:
        python.append(os.path.join(libdir, libpython))
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    python += [path for path in sys.path  # the standard library, lib-dynload, site-packages
               if path and any(_under(os.path.abspath(path), prefix) for prefix in prefixes)]
    paths = sysconfig.get_paths()
    python += [paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    for module in preload:
        with contextlib.suppress(Exception):  # not installed: the template skips it too
            spec = importlib.util.find_spec(module.split(".")[0])
            python += spec.submodule_search_locations or [spec.origin]
    python += [os.path.realpath(path) for path in python]  # where links in them point
    for path in sorted(set(map(os.path.abspath, python)), key=lambda p: (len(p), p)):  # a dir
        show(path)  # before (not) what it holds
    for name in WORKER_FILES:
        show(os.path.join(here, name))
    return mounts


def _bwrap_argv(workdir, disk_mb, preload=()):
    """bubblewrap around a template: a root of its own holding _mounts(), read-only; `workdir` a
    writable tmpfs of `disk_mb` MiB; a fresh (read-only) /dev and /proc; new PID, network, IPC
    and UTS namespaces; it dies with the parent."""
    argv, made, hidden = ["bwrap"], {}, []  # made: path -> True if bound, False if on a tmpfs

    def dirs_above(target):  # made by us, 0755: bwrap would make them 0700, closed to the worker
        parts = target.split("/")
        for above in ("/".join(parts[:depth]) for depth in range(2, len(parts))):
            tops = [path for path in made if _under(above, path)]
            if above not in made and not (tops and made[max(tops, key=len)]):  # on a tmpfs
                argv.extend(["--perms", "0755", "--dir", above])
                made[above] = False

    for kind, source, target in _mounts(preload):
        if kind == "ro":
            dirs_above(target)
            argv += ["--ro-bind", source, target]
            made[target] = True
        elif kind == "symlink":
            argv += ["--symlink", source, target]
        else:  # "hide": read-only once all is mounted
            argv += ["--perms", "0755", "--tmpfs", target]
            made[target] = False
            hidden.append(target)
    for target in hidden:
        argv += ["--remount-ro", target]
    dirs_above(workdir)
    argv += ["--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc",
             "--perms", "0777", "--size", str(disk_mb << 20), "--tmpfs", workdir,
             "--remount-ro", "/", "--unshare-pid", "--unshare-net", "--unshare-ipc",
             "--unshare-uts", "--die-with-parent"]
    if os.geteuid() != 0:
        return argv + ["--unshare-user"]  # the way in without root: one uid inside, yours
    # Root: no user namespace, so that the worker can take a uid of its own; of root's capabilities
    # the template keeps what that takes: set uids, signal them. Reading is not one.
    caps = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")
    return argv + ["--cap-drop", "ALL"] + [arg for cap in caps for arg in ("--cap-add", cap)]


def isolation_modes():
    """{mode: None where this machine offers it, else why not}; probed once per process."""
    if not _why_not:
        why = None if shutil.which("bwrap") else "bwrap not found (install the package bubblewrap)"
        if why is None:
            workdir = os.path.join(tempfile.gettempdir(), "sandbox-probe")  # (made in its root)
            probe = subprocess.run([*_bwrap_argv(workdir, 1), "--", sys.executable, "-S", "-c",
                                    ""], capture_output=True, text=True, timeout=60)
            if probe.returncode:
                last_line = (probe.stderr.strip() or "failed").splitlines()[-1]
                why = f"bwrap cannot run here: {last_line}"
        root = sys.platform == "linux" and os.geteuid() == 0
        uid = None if root else "needs root on Linux"
        if root:  # _enter_private_root needs a mount namespace (a container may not allow one)
            probe = subprocess.run([sys.executable, "-S", "-c", "import ctypes, sys; "
                                    f"sys.exit(ctypes.CDLL(None).unshare({CLONE_NEWNS}))"],
                                   capture_output=True, timeout=60)
            uid = "no mount namespace (unshare failed)" if probe.returncode else None
        none = ("runs the model's code as root, which nothing would stop from signalling, tracing "
                "or overwriting anything, the run's own results included" if root else None)
        _why_not.update(namespaces=why, uid=uid, none=none)
    return _why_not


def default_isolation():
    """The strongest isolation this machine offers, the one a Sandbox gets by default."""
    for mode, why in isolation_modes().items():
        if why is None:
            return mode
    raise RuntimeError("sandbox: no isolation mode works here: " + "; ".join(
        f"{mode}: {why}" for mode, why in isolation_modes().items()))


def _sweep_stale_dirs():
    """Remove the work directories of Sandboxes whose owner died without closing them (kill -9):
    ours, named sandbox-PID-..., whose PID is gone."""
    top = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(top):
            found = re.fullmatch(r"sandbox-(\d+)-\w+", entry.name)
            if not (found and entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.geteuid()):
                continue
            try:
                os.kill(int(found[1]), 0)
                continue  # alive (or a process of another user's: PermissionError below)
            except ProcessLookupError:
                _clear(entry.path)
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
            except (PermissionError, OverflowError):
                continue


def _alloc_uid():
    """A uid that no account, no process and no other live sandbox uses."""
    with _uid_lock:
        for _ in range(256):
            uid = UID_BASE + (os.getpid() % (1 << 22)) * 256 + next(_uid_slots) % 256
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)
                continue  # a real account: never (the sweep on restart would kill its processes)
            if uid not in _uids_in_use and not _procs(uid=uid):
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError("sandbox: no free uid (more than 256 live sandboxes in one process?)")


def _kill_worker(server):
    """Have the template kill the worker and all it started. The worker's exit code (negative: the
    signal that killed it) or None; OSError or ValueError if the template does not answer."""
    server["control"].settimeout(10)
    server["control"].send(b"kill")
    exit_code = json.loads(server["control"].recv(64))
    server.pop("worker").close()
    return exit_code


def _stop_server(server):
    """Stop the worker (through the template), then the template; remove the work directory.
    Idempotent; does nothing in a forked copy of the parent."""
    if "template" not in server or server["owner"] != os.getpid():
        return
    with contextlib.suppress(OSError, ValueError, KeyError):
        _kill_worker(server)
    server.pop("control").close()  # the template exits at end-of-file
    if "worker" in server:
        server.pop("worker").close()
    template = server.pop("template")
    try:
        template.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(template.pid, signal.SIGKILL)  # before wait(): the group id cannot be reused yet
        template.wait()
    with _uid_lock:
        _uids_in_use.discard(server["uid"])
    _clear(server["dir"])  # (empty here but in mode "none": the others' is a tmpfs of their own)
    with contextlib.suppress(OSError):
        os.rmdir(server["dir"])


class Sandbox:
    """One stateful Python session (a worker process), usable as a context manager. Thread-safe."""

    def __init__(self, timeout=6.0, memory_mb=1024, max_procs=16, max_output=2000, max_file_mb=16,
                 disk_mb=64, preload=DEFAULT_PRELOAD, isolation=None):
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
        # The template and worker as the parent holds them: template (its Popen), control (socket
        # to the template), worker (socket to the worker), ready (it said hello), dir, uid, owner.
        # Apart from self, so that the finalizer (close(), also at exit) can stop them.
        self._server = {}
        self._note = ""  # shown before the next cell's output: the session was restarted
        self._ids = itertools.count(1)  # request ids: a reply must carry its request's
        self._finalizer = weakref.finalize(self, _stop_server, self._server)
        _sweep_stale_dirs()
        self._start()

    def _start(self):
        """Start the template and ask it for a worker, without waiting: it imports its modules
        while the caller does other work."""
        uid = _alloc_uid() if os.geteuid() == 0 and self.isolation != "none" else None
        # Named for its owner's pid: _sweep_stale_dirs removes it should we die without close().
        # Namespaces and uid: only the mount point of the worker's own tmpfs (empty here).
        workdir = os.path.realpath(tempfile.mkdtemp(prefix=f"sandbox-{os.getpid()}-"))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
               "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        flags = ["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]  # no user site, script dir
        mounts = _mounts(self.cfg["preload"]) if self.isolation == "uid" else []
        argv = [sys.executable, *flags, os.path.abspath(__file__), "--template",
                json.dumps(dict(self.cfg, dir=workdir, uid=uid, mounts=mounts))]
        if self.isolation == "namespaces":
            argv = [*_bwrap_argv(workdir, self.cfg["disk_mb"], self.cfg["preload"]), "--", *argv]
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:  # nothing of the parent's environment goes in; own process group for killpg
            template = subprocess.Popen(argv, stdin=theirs, stdout=subprocess.DEVNULL, env=env,
                                        cwd=workdir, start_new_session=True)
        self._server.update(template=template, control=control, uid=uid, dir=workdir,
                            owner=os.getpid())
        if self.isolation not in _modes_announced:  # say once per process what sandboxes get
            _modes_announced.add(self.isolation)
            why = isolation_modes()["namespaces"]
            note = f" (no namespaces: {why})" if why else ""
            print(f"sandbox: isolation {self.isolation!r}{note}", file=sys.stderr)
        self._fork()

    def _fork(self):
        """Ask the template for a fresh worker, talking on a new socket."""
        ours, theirs = socket.socketpair()
        with theirs:
            socket.send_fds(self._server["control"], [b"fork"], [theirs.fileno()])
        self._server.update(worker=ours, ready=False)

    def _restart(self):
        """Kill the worker and all it started, fork a fresh one; the old one's exit code
        (negative: killed by that signal) or None."""
        try:
            exit_code = _kill_worker(self._server)
            self._fork()
            return exit_code
        except (OSError, ValueError, KeyError):  # the template died or hangs: the next call
            # starts a new one
            _stop_server(self._server)
            return None

    def _wait_ready(self):
        """Start the template if the last start failed; wait for the worker's hello."""
        if not self._finalizer.alive:
            raise RuntimeError("sandbox: used after close()")
        if "template" not in self._server:  # the last start failed: try again
            self._start()
        server = self._server
        if not server["ready"]:  # the first call to a new worker waits for its hello
            hello = _recv(server["worker"].fileno(), time.monotonic() + STARTUP_TIMEOUT, 1 << 16)
            if not isinstance(hello, dict):
                _stop_server(server)
                raise RuntimeError(f"sandbox: worker failed to start ({hello}); "
                                   f"try `{sys.executable} {__file__} -c 1+1`")
            server["ready"] = True
            self.uid = hello["uid"]
        return server

    def _call(self, request, budget):
        """Send one request (with a new id); return (reply, None), or (None, why) after replacing
        a misbehaving worker."""
        server = self._wait_ready()
        request = dict(request, id=next(self._ids))
        try:
            _send(server["worker"].fileno(), request)
            reply = _recv(server["worker"].fileno(), time.monotonic() + budget,
                          65536 + 8 * self.cfg["max_output"])
        except ConnectionError:  # BrokenPipeError, ConnectionResetError: the worker died
            reply = "eof"
        if (isinstance(reply, dict) and reply.get("id") == request["id"]
                and isinstance(reply.get("output"), str)):
            if reply.get("restart"):  # threads still running: only a fresh worker stops them
                self._restart()
                self._note = RESTART_NOTE
            return reply, None
        exit_code = self._restart()
        self._note = RESTART_NOTE
        if reply == "timeout":
            why = (f"TimeoutError: execution exceeded the time limit of {self.cfg['timeout']:g} s "
                   f"and was stopped")
        elif reply == "eof" and exit_code is not None and exit_code < 0:
            why = f"the Python process was killed by {signal.Signals(-exit_code).name}"
        elif reply == "eof":  # (exit_code None: its template died too)
            why = "the Python process exited"
            if exit_code is not None:
                why += f" (exit code {exit_code})"
        else:  # not JSON, not one line, or not the reply to this request (the code wrote it)
            why = "the Python process sent a malformed reply"
        return None, f"{why}; the session was restarted and all variables are lost."

    def run(self, code: str) -> str:
        """Run one cell; return what a notebook would show ("<empty_execution>" when nothing)."""
        if not isinstance(code, str):
            raise TypeError(f"Sandbox.run: code must be a str, got {type(code).__name__}")
        with self._lock:
            server = self._server
            if "worker" in server and server["ready"] and _pending(server["worker"].fileno()):
                self._restart()  # reply: the code wrote onto the socket; it cannot be trusted
                self._note = RESTART_NOTE
            note = self._note
            self._note = ""
            reply, problem = self._call({"op": "run", "code": code}, self.cfg["timeout"] + GRACE)
            out = problem or reply["output"]
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
                    self._restart()
                except Exception:  # the next run() starts a new template
                    _stop_server(self._server)

    def host_dir(self):
        """The work directory as this process reaches it, to hand the running code a file or see
        what it wrote: the directory itself in "none"; in the others, the tmpfs seen through
        /proc/PID/root of a process in the sandbox's root (the template's, or bwrap's init's)."""
        with self._lock:
            server = self._wait_ready()  # then the template's root is in place
        if self.isolation == "none":
            return server["dir"]
        inside = server["template"].pid  # uid: the template itself; namespaces: bwrap, outside
        if self.isolation == "namespaces":
            inside = _procs(ppid=inside)[0]  # its child, the sandbox's init
        return f"/proc/{inside}/root{server['dir']}"

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
        _template(json.loads(sys.argv[2]))
    else:
        main()
