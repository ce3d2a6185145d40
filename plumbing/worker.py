"""worker.py: the processes behind a Sandbox, and how the parent talks to them.

Serves sandbox.py. Each Sandbox starts a template (sandbox.py run with --template: template()
below), a fork server that imports the preload (numpy, sympy, ...) once, in the sandbox's
isolation (plumbing/isolation.py), and forks workers: one per problem (reset() kills the worker and
forks a new one, so patched modules, os.environ, sys.path, seeds, threads, ... never reach the next
problem), and a new one whenever a worker dies or misbehaves. The template runs no model code. A
worker (_worker_main) sets its limits, drops its privileges, then runs sandbox.run_cell for each
request in one namespace: the problem's session.

The parent speaks to the template on a control socket (b"fork" with a socket attached, b"kill",
end-of-file) and to the worker on that socket, one JSON object per line (send, recv). Every request
carries an id that its reply must repeat, alone on its line; a reply that does not (a line the
cell's code wrote onto the worker's socket), or anything waiting on the socket before a request
(pending), makes sandbox.py replace the worker.

Top to bottom: the wire protocol; the parent's side (start_template, fork, wait_hello, call, kill,
restart, stop); the template; the worker, and what it does after each cell (the processes and
threads the cell left).
"""
import builtins, contextlib, ctypes, json, os, resource, select, signal, socket, subprocess, sys
import tempfile, time, traceback

from plumbing import isolation, notebook

# Imported once per Sandbox by its template, which then forks: no module that starts threads.
DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools",
                   "collections", "statistics", "random", "re", "string", "datetime", "calendar",
                   "heapq", "bisect", "operator", "numbers", "typing", "copy", "json", "time",
                   "array", "dataclasses", "enum", "textwrap", "pprint", "unicodedata", "struct",
                   "csv", "numpy", "sympy",
                   "_strptime")  # what datetime.strptime imports on first use
STARTUP_TIMEOUT = 60.0  # seconds a new template may take to import the preload and fork a worker


# ---------------------------------------------------------------------------------- wire protocol
def send(fd, obj):
    data = (json.dumps(obj) + "\n").encode()  # one JSON object per line (newlines are escaped)
    while data:
        data = data[os.write(fd, data):]


def recv(fd, deadline=None, limit=1 << 30):
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
    except (ValueError, RecursionError):  # (RecursionError: nested deeper than the stack allows)
        return "bad"


def pending(fd):
    """True if something waits to be read on fd (between a reply and the next request: nobody's)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# ---------------------------------------------------------------------------------- the parent side
def start_template(script, cfg):
    """Start `script` --template (sandbox.py) in cfg["isolation"], without waiting: it imports its
    modules while the caller does other work. The server as the parent holds it: template (its
    Popen), control (socket to the template), uid (the worker's, or None), dir (the work
    directory), owner (this pid); fork() adds worker (socket to the worker) and ready (it said
    hello)."""
    isolation.sweep_stale_dirs()  # those of Sandboxes whose owner died without close()
    # Named for its owner's pid: sweep_stale_dirs removes it should we die without close().
    # Namespaces and uid: only the mount point of the worker's own tmpfs (empty here).
    workdir = os.path.realpath(tempfile.mkdtemp(prefix=f"sandbox-{os.getpid()}-"))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    mounts = isolation.root_mounts(cfg["preload"]) if cfg["isolation"] == "uid" else []
    argv = [sys.executable, "-s", script, "--template",  # -s: no user site-packages
            json.dumps(dict(cfg, dir=workdir, mounts=mounts))]
    if cfg["isolation"] == "namespaces":
        argv = [*isolation.bwrap_argv(workdir, cfg["disk_mb"], cfg["preload"]), "--", *argv]
    control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:  # nothing of the parent's environment goes in; own process group for killpg
        template = subprocess.Popen(argv, stdin=theirs, stdout=subprocess.DEVNULL, env=env,
                                    cwd=workdir, start_new_session=True)
    return dict(template=template, control=control, uid=cfg["uid"], dir=workdir,
                owner=os.getpid(), script=script, isolation=cfg["isolation"])


def fork(server):
    """Ask the template for a fresh worker, talking on a new socket."""
    ours, theirs = socket.socketpair()
    with theirs:
        socket.send_fds(server["control"], [b"fork"], [theirs.fileno()])
    server.update(worker=ours, ready=False)


def wait_hello(server):
    """Wait for a new worker's hello; its uid (None: the caller's). The server is stopped and
    RuntimeError raised if it does not come."""
    hello = recv(server["worker"].fileno(), time.monotonic() + STARTUP_TIMEOUT, 1 << 16)
    if not isinstance(hello, dict):
        stop(server)
        raise RuntimeError(f"sandbox: worker failed to start ({hello}); "
                           f"try `{sys.executable} {server['script']} -c 1+1`")
    server["ready"] = True
    return hello["uid"]


def call(server, request, budget, limit):
    """Send `request` to the worker; its reply if it came within `budget` s and answers this
    request (its id, an output), else "timeout", "eof" (the worker died) or "bad"."""
    try:
        send(server["worker"].fileno(), request)
        reply = recv(server["worker"].fileno(), time.monotonic() + budget, limit)
    except ConnectionError:  # BrokenPipeError, ConnectionResetError: the worker died
        return "eof"
    if isinstance(reply, dict) and reply.get("id") == request["id"] and isinstance(
            reply.get("output"), str):  # the cell may have written it: text that encodes
        output = reply["output"].encode("utf-8", "replace").decode()  # (no lone surrogate)
        return dict(reply, output=output, restart=bool(reply.get("restart")))
    return "bad" if isinstance(reply, dict) else reply  # (a line the cell's code wrote)


def why_replaced(reply, exit_code, timeout):
    """What a cell shows whose worker call() got no reply from, and restart() replaced."""
    if reply == "timeout":
        why = f"TimeoutError: execution exceeded the time limit of {timeout:g} s and was stopped"
    elif reply == "eof" and exit_code is not None and exit_code < 0:
        why = f"the Python process was killed by {signal.Signals(-exit_code).name}"
    elif reply == "eof":  # (exit_code None: its template died too)
        why = "the Python process exited"
        if exit_code is not None:
            why += f" (exit code {exit_code})"
    else:  # not JSON, not one line, or not the reply to this request (the code wrote it)
        why = "the Python process sent a malformed reply"
    return f"{why}; the session was restarted and all variables are lost."


def kill(server):
    """Have the template kill the worker and all it started. The worker's exit code (negative: the
    signal that killed it) or None; OSError or ValueError if the template does not answer."""
    server["control"].settimeout(10)
    server["control"].send(b"kill")
    exit_code = json.loads(server["control"].recv(64))
    server.pop("worker").close()
    return exit_code


def restart(server):
    """Kill the worker and all it started, fork a fresh one; the old one's exit code (negative:
    killed by that signal) or None."""
    try:
        exit_code = kill(server)
        fork(server)
        return exit_code
    except (OSError, ValueError, KeyError):  # the template died or hangs: the next call starts a
        stop(server)                          # new one
        return None


def host_dir(server):
    """The work directory as this process reaches it: the directory itself in "none"; in the
    others, the tmpfs seen through /proc/PID/root of a process in the sandbox's root (the
    template's, or bwrap's init's)."""
    if server["isolation"] == "none":
        return server["dir"]
    inside = server["template"].pid  # uid: the template itself; namespaces: bwrap, outside
    if server["isolation"] == "namespaces":
        inside = isolation.procs(ppid=inside)[0]  # its child, the sandbox's init
    return f"/proc/{inside}/root{server['dir']}"


def stop(server):
    """Stop the worker (through the template), then the template; remove the work directory.
    Idempotent; does nothing in a forked copy of the parent."""
    if "template" not in server or server["owner"] != os.getpid():
        return
    with contextlib.suppress(OSError, ValueError, KeyError):
        kill(server)
    server.pop("control").close()  # the template exits at end-of-file
    if "worker" in server:
        server.pop("worker").close()
    template = server.pop("template")
    try:
        template.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(template.pid, signal.SIGKILL)  # before wait(): the group id cannot be reused yet
        template.wait()
    isolation.free_uid(server["uid"])
    isolation.clear(server["dir"])  # (empty here but in mode "none": the others' is a tmpfs)
    with contextlib.suppress(OSError):
        os.rmdir(server["dir"])


# ---------------------------------------------------------------------------------- the template
def template(cfg, run_cell):
    """The fork server. Imports the preload once, then serves the parent on its control socket
    (fd 0): b"fork" with a socket attached starts a worker on it, b"kill" stops the worker and
    answers with its exit code; end-of-file (the parent is gone) stops the worker and the template.
    """
    if cfg["isolation"] == "namespaces" and os.getpid() != 2:  # 1: bwrap's init; see _stop_worker
        raise SystemExit("sandbox: the template is not in a PID namespace of its own")
    if cfg["isolation"] == "uid":
        isolation.enter_private_root(cfg)  # first: the imports below then prove the root has them
    for module in cfg["preload"]:
        with contextlib.suppress(Exception):
            __import__(module)
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
                    _worker_main(cfg, fds[0], run_cell)  # returns only by raising
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


def _stop_worker(pid, cfg):
    """Kill worker `pid` and every process it started; reap it, and every other child of ours: a
    cell can make one (clone(CLONE_PARENT)), and a zombie left unreaped would count against the
    uid's process limit in every later problem. The worker's exit code (negative: the signal that
    killed it)."""
    if cfg["isolation"] == "namespaces":  # our PID namespace holds bwrap's init, us, and what the
        os.kill(-1, signal.SIGKILL)        # worker started: -1 = all but init and us (setsid too)
    else:
        with contextlib.suppress(OSError):  # frozen, it starts no new children while we kill them
            os.kill(pid, signal.SIGSTOP)
        isolation.kill_all(pid, uid=cfg["uid"], pgrp=pid, ppid=pid)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # its group, itself included
    status = 0
    with contextlib.suppress(ChildProcessError):
        while True:  # all our children are being killed: wait for each
            child, wait_status = os.waitpid(-1, 0)
            status = wait_status if child == pid else status
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------------------------- the worker
def _worker_main(cfg, conn, run_cell):
    """In a fresh fork of the template: session, limits, uid, guard; then one cell per request on
    the socket `conn`, all in one namespace, until the parent closes it."""
    os.setsid()  # its own process group: one killpg stops it and what it started
    os.set_inheritable(conn, False)  # programs the cell runs must not hold the parent's socket
    kernel = notebook.Kernel()  # what a cell shows, and its Cell In[k] counter
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # input() sees EOF (fd 0 was the template's control socket), and stray
    os.dup2(null, 1)  # output (os.write(1), children) goes nowhere
    for which, value in cfg["rlimits"]:  # memory, files, processes: sandbox._rlimits
        with contextlib.suppress(ValueError, OSError):  # e.g. above what this system allows
            resource.setrlimit(which, (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large files: OSError instead of death
    with contextlib.suppress(AttributeError):  # PR_SET_CHILD_SUBREAPER (Linux): the cell's orphans
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # come to the worker, which kills and reaps them
    uid = None
    if sys.platform == "linux":
        isolation.drop_privileges(cfg["uid"])
        uid = cfg["uid"]  # only once dropped: kill(-1) in _kill_children never runs as root
    isolation.clear(cfg["dir"])  # what the last problem's worker left there, its chmod included
    os.chdir(cfg["dir"])
    if "numpy.random" in sys.modules:  # a fork shares the template's seed (random reseeds itself)
        sys.modules["numpy.random"].seed()
    isolation.install_guard(cfg["dir"])
    os.dup2(null, 2)  # only now: a worker that fails to start shows why on the parent's stderr
    namespace = {"__name__": "__main__", "__builtins__": builtins}  # the session's state
    send(conn, {"uid": uid})  # hello
    while True:
        request = recv(conn)
        if not (isinstance(request, dict) and request.get("op") == "run"):
            os._exit(0)  # the parent is gone (or the socket carries what no parent sends)
        output = run_cell(request["code"], namespace, kernel, cfg)
        # However they were started (ctypes' fork included). With a uid of its own, always: what
        # clone(CLONE_PARENT) made is the template's child, not ours, but has our uid.
        if uid is not None or _has_children():
            _kill_children(uid)
        # Threads still running could write into later cells: only a fresh worker stops them.
        send(conn, {"id": request["id"], "output": output, "restart": _threads_left()})


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


def _kill_children(uid):
    """Kill every process the cell started and left (with its own uid: even setsid() ones)."""
    with isolation.trusted(), contextlib.suppress(ChildProcessError, ProcessLookupError):
        if uid:
            os.kill(-1, signal.SIGKILL)  # -1: every process this uid may signal, the sandbox's own
        else:  # our process group and our children (orphans come to us: we are a subreaper)
            isolation.kill_all(os.getpid(), pgrp=os.getpgrp(), ppid=os.getpid())
        while True:
            os.waitpid(-1, 0)  # reap


def _threads_left():
    """True if threads other than ours still run after a cell (counted by the kernel: those of
    _thread.start_new_thread and C libraries too). One that was joined may take a moment to go."""
    for _ in range(100):
        if len(os.listdir("/proc/self/task")) == 1:
            return False
        time.sleep(0.001)
    return True
