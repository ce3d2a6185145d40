"""Tests for sandbox.py (and the plumbing/worker.py and plumbing/isolation.py it runs on):
notebook-like output, state, and every limit (each followed by a working call), in every isolation
mode this machine offers; the namespace boundary; the fork server; a checkout in a mode-700
directory; what the code cannot reach (the answers it is graded against, other files,
capabilities, the parent); what cannot leak from one problem to the next; a forged reply on the
worker's socket; stale work directories.

Expected strings are written by hand from what CPython prints (tracebacks, reprs). Process checks
read /proc directly, never through plumbing/isolation.py's helpers: from this process where pids
are the machine's, from a cell where they are the sandbox's own (namespace mode has its own PID
namespace).
Timeouts are 1 s; the file takes 30-60 s on 2 busy cores with three modes. Nothing asserts on speed.
"""
import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid

import pytest

import sandbox
from plumbing import isolation
from plumbing.notebook import TIMEOUT
from sandbox import EMPTY, RESTART_NOTE, Sandbox, SandboxPool

ROOT = os.geteuid() == 0
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WHY_NOT = sandbox.isolation_modes()  # mode -> None, or why this machine cannot offer it
MODES = [pytest.param(m, id=m, marks=pytest.mark.skipif(bool(why), reason=f"no {m} here: {why}"))
         for m, why in WHY_NOT.items()]
needs_namespaces = pytest.mark.skipif(bool(WHY_NOT["namespaces"]),
                                      reason=f"namespaces unavailable: {WHY_NOT['namespaces']}")


@pytest.fixture(scope="module", params=MODES)
def shared(request):
    with Sandbox(timeout=1, isolation=request.param) as sb:
        yield sb


@pytest.fixture
def sb(shared):
    shared.reset()
    return shared


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def alive(pid):
    """True if pid exists and is not a zombie, as this process sees it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def alive_in(sb, pid):
    """True if pid exists and is not a zombie, as the sandbox sees it (its own PID namespace)."""
    return sb.run(f"def _alive(pid):\n    try:\n        with open(f'/proc/{{pid}}/stat') as f:\n"
                  f"            return f.read().rsplit(')', 1)[1].split()[0] not in 'ZX'\n"
                  f"    except FileNotFoundError:\n        return False\n_alive({pid})") == "True"


def pids_of_uid(uid):
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in "ZX":
                found.append(int(name))
        except (OSError, KeyError):
            pass
    return found


def worker_pid(sb):
    return int(sb.run("import os\nos.getpid()"))


def shell(sb, command):
    """Run a shell command in the sandbox, below Python's audit hook; its exit code and output."""
    return sb.run(f"import subprocess\nr = subprocess.run({command!r}, shell=True, text=True,"
                  f" capture_output=True)\nprint(r.returncode, r.stdout + r.stderr)")


def assert_fresh_session_works(sb):
    """After a restart: the note comes first, old variables are gone, and new code runs."""
    out = sb.run("print('ok'); 6 * 7")
    assert out == f"{RESTART_NOTE}\nok\n42"
    assert sb.run("1 + 1") == "2"  # the note is shown once only


# ------------------------------------------------------------------------------ notebook behaviour
def test_state_persists_and_last_expression_is_shown(sb):
    assert sb.run("x = 6 * 7") == EMPTY
    assert sb.run("print(x)\nx + 1") == "42\n43"
    assert sb.run("def f(n):\n    return n * x\nf(2)") == "84"
    assert sb.run("x;") == EMPTY               # a trailing semicolon hides the value, as in IPython
    assert sb.run("None") == EMPTY
    assert sb.run("print()") == EMPTY          # whitespace-only output is stripped (the authors')
    assert sb.run("'a' + 'b'") == "'ab'"        # repr, not str
    assert sb.run("import sys\nprint('to stderr', file=sys.stderr)") == "to stderr"
    assert sb.run("for i in range(3):\n    print(i)") == "0\n1\n2"
    assert (sb.run("import fractions\nfractions.Fraction(1, 3) + fractions.Fraction(1, 6)")
            == "Fraction(1, 2)")


def test_math_libraries(sb):
    pytest.importorskip("sympy")
    assert sb.run("import sympy as sp\nx = sp.symbols('x')\nsp.solve(x**2 - 4, x)") == "[-2, 2]"
    assert sb.run("sp.Rational(1, 3) + sp.Rational(1, 6)") == "1/2"
    pytest.importorskip("numpy")
    assert sb.run("import numpy as np\nint(np.arange(5).sum())") == "10"
    assert sb.run("import statistics, math, itertools\nstatistics.mean([1, 2, 3, 6])") == "3"


def test_traceback_is_clean(sb):
    sb.run("def inv(a):\n    return 1 / a")
    out = sb.run("y = 3\ninv(0)")  # IPython's layout (tests/test_notebook.py checks it in detail)
    assert out.startswith("-" * 75 + " ZeroDivisionError ")
    assert out.endswith("\n ZeroDivisionError: division by zero")
    assert "Cell In[2], line 2\n      1 y = 3\n----> 2 inv(0)" in out
    assert "Cell In[1], line 2, in inv(a)\n      1 def inv(a):\n----> 2     return 1 / a" in out
    assert "sandbox.py" not in out and "notebook.py" not in out and "\x1b" not in out
    assert sb.run("y") == "3"  # an exception does not lose state
    out = sb.run("x = (")
    assert out.startswith("Cell In[4], line 1\n    x = (\n        ^\nSyntaxError: ")
    assert sb.run("undefined_name").endswith("NameError: name 'undefined_name' is not defined")


def test_exit_calls(sb):
    sb.run("keep = 1")
    assert sb.run("import sys\nsys.exit()").endswith("SystemExit")
    assert sb.run("sys.exit(3)").endswith("SystemExit: 3")
    assert sb.run("raise KeyboardInterrupt").endswith("KeyboardInterrupt:")  # IPython: "Name: msg"
    assert sb.run("keep") == "1"  # the session survives all three
    out = sb.run("import os\nprint('bye')\nos._exit(1)")
    assert "exited (exit code 1)" in out and "restarted" in out
    assert_fresh_session_works(sb)


def test_input_sees_eof_and_environment_is_scrubbed(mode):
    os.environ["SANDBOX_TEST_SECRET"] = "hunter2"
    try:
        with Sandbox(timeout=1, preload=(), isolation=mode) as sb:
            assert sb.run("input()").endswith("EOFError: EOF when reading a line")
            assert sb.run("import os\n'SANDBOX_TEST_SECRET' in os.environ") == "False"
            assert sb.run("os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR']") == "True"
    finally:
        del os.environ["SANDBOX_TEST_SECRET"]


# -------------------------------------------------------------------------------------------- time
def test_infinite_loop_is_interrupted_and_state_kept(sb):
    sb.run("n = 0")
    assert sb.run("while True:\n    n += 1") == TIMEOUT  # what the authors' client showed
    assert sb.run("n > 0") == "True"  # soft interrupt: same session, no restart note


def test_loop_that_catches_the_timeout_is_killed(sb):
    sb.run("z = 1")
    old = worker_pid(sb)
    out = sb.run("import time\nwhile True:\n    try:\n        time.sleep(0.01)\n"
                 "    except BaseException:\n        pass")
    assert out.startswith("TimeoutError: execution exceeded the time limit of 1 s")
    assert "restarted" in out
    assert_fresh_session_works(sb)
    assert not alive_in(sb, old)  # killed, not left spinning


def test_ignored_signals_do_not_help(sb):
    old = worker_pid(sb)
    code = ("import signal\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    assert "time limit" in sb.run(code)
    assert_fresh_session_works(sb)
    assert not alive_in(sb, old)


# --------------------------------------------------------------------------------- the fork server
TEMPLATE = ("import os\nppid = os.getppid()\n"  # the worker's parent: pid, start time, command line
            "stat = open(f'/proc/{ppid}/stat').read().rsplit(')', 1)[1].split()\n"
            "(ppid, stat[19], b'--template' in open(f'/proc/{ppid}/cmdline', 'rb').read())")


def test_killed_worker_comes_back_from_the_template(sb):
    sb.run("x = 1")
    template = sb.run(TEMPLATE)
    assert template.endswith(", True)")  # the worker is a child of the template
    old = worker_pid(sb)
    out = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert out == ("the Python process was killed by SIGKILL; the session was restarted and all "
                   "variables are lost.")
    out = sb.run("x")
    assert out.startswith(RESTART_NOTE + "\n")
    assert out.endswith("NameError: name 'x' is not defined")
    assert worker_pid(sb) != old and not alive_in(sb, old)
    assert sb.run(TEMPLATE) == template  # forked by the same process: no interpreter started anew


def test_each_worker_draws_fresh_random_numbers():
    # A fork copies the template's random state: without a reseed, every restarted worker would
    # draw the same numbers (numpy.random preloaded here to check its reseed too).
    pytest.importorskip("numpy")
    with Sandbox(timeout=5, preload=("random", "numpy.random")) as sb:
        draws = []
        for _ in range(2):
            draws.append(sb.run("import random, numpy\n(random.random(), numpy.random.random())"))
            assert "restarted" in sb.run("import os\nos._exit(0)")
        first, second = (d.removeprefix(RESTART_NOTE + "\n") for d in draws)
        assert first.startswith("(0.") and second.startswith("(0.")
        assert first.split(", ")[0] != second.split(", ")[0]  # random
        assert first.split(", ")[1] != second.split(", ")[1]  # numpy.random


def template_pids(workdir):
    """Pids (this machine's) of the template of the Sandbox working in `workdir`: of the processes
    with its command line in /proc (the template, its worker: a fork of it, and bwrap's, if any),
    those whose parent has another one."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if (b"--template" in args and os.path.basename(args[0]) != b"bwrap"
                and any(workdir.encode() in arg for arg in args)):
            found[int(name)] = ppid
    return [pid for pid, ppid in found.items() if ppid not in found]


def test_a_dead_template_is_replaced(mode):
    with Sandbox(timeout=2, preload=(), isolation=mode) as sb:
        workdir = sb.run("import os\nos.getcwd()").strip("'")
        [template] = template_pids(workdir)
        os.kill(template, signal.SIGKILL)
        assert "restarted" in sb.run("import os\nos._exit(3)")  # the worker may outlive it: end it
        assert_fresh_session_works(sb)  # from a new template
        assert not alive(template) and not os.path.exists(workdir)
        assert len(template_pids(sb.run("import os\nos.getcwd()").strip("'"))) == 1


# ------------------------------------------------------------------------------- memory, processes
def test_memory_bomb(sb):
    sb.run("keep = 'still here'")
    limits = sb.run("print(open('/proc/self/limits').read())")
    assert f"Max address space         {1024 * 2**20}" in limits  # the default memory_mb
    # bytes(n) is calloc'd: untouched pages cost nothing, so without RLIMIT_AS 1.5 GiB would succeed
    assert sb.run("x = bytes(1536 * 2**20)").endswith("MemoryError:")
    assert sb.run("x = bytes(64 * 2**20)\nlen(x)") == str(64 * 2**20)  # the limit, not a failure
    assert sb.run("keep") == "'still here'"


def test_growing_memory_bomb(mode):
    with Sandbox(timeout=5, memory_mb=256, preload=(), isolation=mode) as sb:
        sb.run("keep = 1")
        out = sb.run("x = [bytearray(10**7) for _ in range(10**6)]")
        assert out.endswith("MemoryError:")
        assert sb.run("keep") == "1"


def test_fork_bomb(sb):
    sb.run("print(1)")
    if sb.uid is None and sb.isolation != "namespaces":
        pytest.skip("no process limit in mode 'none' (the kernel counts processes per uid, never "
                    "root's): a fork bomb would hit this machine")
    out = sb.run("import os\nwhile True:\n    os.fork()")
    assert "BlockingIOError" in out or "time limit" in out or out == TIMEOUT
    out = sb.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                 "        pass")
    assert "time limit" in out or out == TIMEOUT
    assert sb.run("2 + 2").endswith("4")
    if sb.uid is None:  # namespaces without root: the sandbox's PID namespace holds bwrap's init,
        procs = "import os\nlen([p for p in os.listdir('/proc') if p.isdigit()])"
        assert sb.run(procs) == "3"  # the template and the worker, nothing else
        return
    deadline = time.time() + 5
    while len(pids_of_uid(sb.uid)) > 1 and time.time() < deadline:
        time.sleep(0.05)
    assert len(pids_of_uid(sb.uid)) == 1  # only the worker itself is left


def test_thread_bomb(sb):
    out = sb.run("import threading, time\nts = []\nwhile True:\n"
                 "    t = threading.Thread(target=time.sleep, args=(60,))\n    t.start()\n"
                 "    ts.append(t)")
    assert "can't start new thread" in out or "time limit" in out
    assert sb.run("3 * 3").endswith("9")
    old = worker_pid(sb)
    sb.reset()  # threads still sleeping: reset restarts the worker (and says nothing about it)
    assert sb.run("import threading\nthreading.active_count()") == "1"
    assert worker_pid(sb) != old and not alive_in(sb, old)


def test_background_children_are_killed_after_the_call(sb):
    out = sb.run("import os, subprocess\n"
                 "a = subprocess.Popen(['sleep', '60'])\n"
                 "b = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
                 # an orphan in a session of its own: its parent (sh) exits at once
                 "c = int(subprocess.run('setsid sleep 60 >/dev/null 2>&1 & echo $!', shell=True,"
                 " capture_output=True, text=True).stdout)\n"
                 "c_ppid = int(open(f'/proc/{c}/stat').read().rsplit(')', 1)[1].split()[1])\n"
                 "print(a.pid, b.pid, c, c_ppid == os.getpid())")
    *pids, adopted = out.split()
    assert adopted == "True"  # the worker is a subreaper: the orphan came to it, not to init
    deadline = time.time() + 5
    while any(alive_in(sb, p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive_in(sb, p) for p in pids)
    assert sb.run("a.pid > 0") == "True"  # the session itself is untouched


# ----------------------------------------------------------------------------------- output, files
def test_huge_print_is_truncated_in_the_worker(mode):
    with Sandbox(timeout=5, max_output=1000, preload=(), isolation=mode) as sb:
        out = sb.run("print('HEAD' + 'x' * 10**8 + 'TAIL')")
        total = 4 + 10**8 + 4 + 1  # with print's newline
        assert out.startswith("HEADxxx") and out.endswith("xxxTAIL")
        assert f"[... {total - 1000} characters cut ...]" in out
        assert len(out) < 1100
        assert sb.run("1 + 1") == "2"  # no restart: a 100 MB reply would have been refused


def test_many_small_prints_are_truncated(sb):
    out = sb.run("for i in range(100000):\n    print(i)")
    assert out.startswith("0\n1\n2\n") and out.endswith("99998\n99999")
    printed = 10 * 2 + 90 * 3 + 900 * 4 + 9000 * 5 + 90000 * 6  # digits + newline, by length
    assert f"\n[... {printed - 2000} characters cut ...]\n" in out  # max_output=2000 by default
    head, tail = out.split(f"\n[... {printed - 2000} characters cut ...]\n")
    assert len(head) == 1000 and len(tail) == 1000 - 1  # half each; the final newline stripped


def test_files_inside_the_work_directory_only(sb):
    assert sb.run("open('note.txt', 'w').write('hi')\nopen('note.txt').read()") == "'hi'"
    name = f"sandbox-test-{uuid.uuid4().hex}"
    for target in (f"/tmp/{name}", os.path.join(HERE, name), f"../{name}"):
        out = sb.run(f"open({target!r}, 'w').write('x')")
        assert "PermissionError" in out, target
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(os.path.join(HERE, name))
    if sb.uid is not None or sb.isolation == "namespaces":  # below Python too
        for where in (HERE, REPO):  # (the sandbox's root holds REPO: the worker's own files)
            out = shell(sb, f"echo x > {where}/{name}")
            assert out.startswith("2 ") and ("Read-only file system" in out
                                            or "Directory nonexistent" in out), out
            assert not os.path.exists(os.path.join(where, name))
    sb.reset()
    assert sb.run("import os\nos.listdir('.')") == "[]"  # reset clears the work directory


def test_file_size_limit(mode):
    with Sandbox(timeout=2, max_file_mb=1, preload=(), isolation=mode) as sb:
        out = sb.run("f = open('big', 'wb')\nf.write(b'x' * (2 * 1024 * 1024))\nf.flush()")
        assert "File too large" in out
        assert sb.run("1 + 1") == "2"


def test_network_is_refused(mode):
    with Sandbox(timeout=2, preload=("socket",), isolation=mode) as sb:
        out = sb.run("import socket\nsocket.socket().connect(('127.0.0.1', 9))")
        assert "PermissionError" in out and "network" in out


def test_a_listener_of_the_parent_cannot_be_reached_from_below_python(sb):
    """A program the cell starts has no audit hook; it reaches no port of this machine's."""
    if sb.isolation == "none":
        pytest.skip("'none' shares the network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = sb.run(f"import socket, subprocess, sys\nprint(subprocess.run([sys.executable, '-c',"
                     f" 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)'],"
                     f" capture_output=True).returncode)")
        assert out == "1"  # the connection failed
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # and nothing came
            listener.accept()


# ------------------------------------------------------------------------------ the parent is safe
def test_worker_cannot_kill_the_parent(sb):
    out = sb.run(f"import os\nos.kill({os.getpid()}, 9)")  # this process, the Sandbox's owner
    assert "PermissionError" in out or "ProcessLookupError" in out  # (namespaces: no such pid)
    assert "PermissionError" in sb.run("os.kill(os.getppid(), 9)")  # the template
    assert "PermissionError" in sb.run("os.kill(-1, 0)")  # -1: every process we may signal
    assert sb.run("os.kill(os.getpid(), 0)\nos.kill(0, 0)\nos.killpg(0, 0)") == EMPTY  # our own
    assert sb.run("1 + 1") == "2"


def test_worker_cannot_kill_the_parent_even_bypassing_python(sb):
    sb.run("1")
    if sb.uid is None:
        pytest.skip("only a uid of its own (the parent runs as root) stops a shell `kill` of the "
                    "template; mode 'none' stops nothing below Python")
    out = shell(sb, f"kill -9 {os.getpid()}")  # this process
    gone = sb.isolation == "namespaces"  # another PID namespace: this pid does not exist there
    assert out.startswith("1 ")
    assert ("No such process" if gone else "Operation not permitted") in out
    template = "$(cut -d' ' -f4 /proc/$PPID/stat)"  # the shell's grandparent
    out = shell(sb, f"kill -9 {template}")
    assert out.startswith("1 ") and "Operation not permitted" in out
    assert sb.run("import os\nos.getuid() == os.getgid() != 0") == "True"


@needs_namespaces
def test_namespace_boundary(tmp_path):
    """What bwrap adds below the audit hook, checked from a shell, against the same commands run
    here, outside, where they succeed (so each check can fail)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    name = f"sandbox-test-{uuid.uuid4().hex}"
    connect = (f"{sys.executable} -c 'import socket; socket.create_connection("
               f"(\"127.0.0.1\", {port}), timeout=5); print(\"connected\")'")

    def outside(command):
        r = subprocess.run(command, shell=True, text=True, capture_output=True, timeout=60)
        return f"{r.returncode} {r.stdout + r.stderr}"

    with listener, Sandbox(timeout=10, preload=(), isolation="namespaces") as sb:
        for run, inside in ((lambda command: shell(sb, command), True), (outside, False)):
            out = run(f"test -e /proc/{os.getpid()} && echo seen")
            assert ("seen" in out) != inside
            out = run(f"kill -0 {os.getpid()}")
            assert out.startswith("1 ") == inside and ("No such process" in out) == inside
            out = run(connect)
            assert ("connected" in out) != inside and ("ConnectionRefusedError" in out) == inside
            for target in (f"/tmp/{name}", f"{tmp_path}/{name}"):
                out = run(f"echo x > {target}")
                assert out.startswith("2 ") == inside
                assert os.path.exists(target) != inside
                if not inside:
                    os.unlink(target)
        assert shell(sb, "echo x > written && cat written") == "0 x"  # the work directory: writable
        procs = "import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
        assert sb.run(procs) == f"[1, 2, {worker_pid(sb)}]"  # bwrap's init, template, worker


@pytest.mark.skipif(not ROOT, reason="the issue's scenario is root's: a dropped uid cannot enter a "
                                     "mode-700 directory")
def test_private_checkout_as_root(tmp_path):
    """The repository and its venv inside a mode-700 directory (as in /root), the parent running as
    root: sympy and numpy work in the sandbox in every mode, including what they import lazily."""
    outputs = run_in_private_checkout(tmp_path, REPO, [m for m, why in WHY_NOT.items() if not why])
    expected = ["[-2, 2]", "9", "[[-2, 1], [3/2, -1/2]]", "[0.8, 1.4]", "-2.0"]
    assert outputs == {m: expected for m, why in WHY_NOT.items() if not why}


def run_in_private_checkout(tmp_path, source, modes):
    """Copy `source`'s modules into tmp_path/private (mode 700) with a venv beside them, run one
    cell per math check there in a Sandbox of each mode; {mode: outputs}. "default": Sandbox()."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    repo = private / "repo"
    repo.mkdir()
    for folder in ("", "plumbing"):  # the modules, and those one folder down
        os.makedirs(repo / folder, exist_ok=True)
        for name in os.listdir(os.path.join(source, folder)):
            if name.endswith(".py"):
                shutil.copy(os.path.join(source, folder, name), repo / folder)
    venv = private / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Instead of installing numpy and sympy again (minutes), the venv's site-packages is a symlink
    # to this interpreter's: every module path the sandbox sees still goes through the mode-700
    # directory (Python does not resolve the link), which is what made lazy imports fail.
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.rmdir()
    site.symlink_to(sysconfig.get_paths()["purelib"])
    cells = ["import sympy as sp\nx = sp.symbols('x')\nsp.solve(x**2 - 4, x)",
             "sp.integrate(x**2, (x, 0, 3))",
             "sp.Matrix([[1, 2], [3, 4]]).inv().tolist()",
             "import numpy as np\nnp.linalg.solve([[2, 1], [1, 3]], [3, 5]).round(6).tolist()",
             "round(float(np.linalg.det([[1, 2], [3, 4]])), 6)"]
    script = ("import json, sys, sandbox\nboxes = {m: sandbox.Sandbox(timeout=60, **({} if m == "
              "'default' else {'isolation': m})) for m in sys.argv[2:]}\n"
              "print(json.dumps({m: [sb.run(c) for c in json.loads(sys.argv[1])] "
              "for m, sb in boxes.items()}))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", script, json.dumps(cells), *modes],
                       cwd=repo, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ------------------------------------------------------------------- what the code cannot reach
GUARDED = [pytest.param(m, id=m, marks=pytest.mark.skipif(bool(why), reason=f"no {m} here: {why}"))
           for m, why in WHY_NOT.items() if m != "none"]  # "none" reads all you can, by design


@pytest.fixture(params=GUARDED)
def guarded(request):
    return request.param


def test_reference_answers_and_private_files_cannot_be_read(guarded, tmp_path):
    """The graded answers (data/eval), /etc/shadow and a file in a mode-700 directory: readable
    here, so each check can fail; from the sandbox neither Python nor a shell opens them."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "secret.txt").write_text("hunter2\n")
    (private / "secret.txt").chmod(0o644)
    reference = os.path.join(REPO, "data", "eval", "GSM8K_test_post.jsonl")
    targets = [reference, "/etc/shadow", str(private / "secret.txt")]
    for path in targets:
        with open(path, "rb") as f:
            assert f.read(1)  # this process can
    with Sandbox(timeout=5, preload=(), isolation=guarded) as sb:
        for path in targets:
            out = sb.run(f"open({path!r}, 'rb').read(1)")
            assert "FileNotFoundError" in out or "PermissionError" in out, (path, out)
            out = shell(sb, f"head -c 1 {path}")
            assert not out.startswith("0 "), (path, out)
        # What is left of the project: the worker's own files only; no home directories.
        assert sb.run(f"import os\nsorted(os.listdir({REPO!r}))") == str(checkout_as_seen())
        down = sorted(f.split("/")[1] for f in isolation.WORKER_FILES if "/" in f)
        assert sb.run(f"sorted(os.listdir({REPO + '/plumbing'!r}))") == str(down)
        assert sb.run("os.path.exists('/home'), os.path.exists('/etc')") == "(False, False)"


def checkout_as_seen():
    """What the sandbox may see of the checkout: the worker's files, and the top folder of a
    virtual environment made inside it (as the README's quick start makes .venv), which the
    interpreter needs."""
    seen = {name.split("/")[0] for name in isolation.WORKER_FILES}  # plumbing/notebook.py: plumbing
    prefix = os.path.relpath(os.path.realpath(sys.prefix), os.path.realpath(REPO))
    if not prefix.startswith(os.pardir):
        seen.add(prefix.split(os.sep)[0])
    return sorted(seen)


def test_a_checkout_inside_a_visible_directory_stays_hidden(guarded, monkeypatch):
    """A checkout in a directory the sandbox must see (as in /usr/src/app): made here by showing
    the checkout's parent as if it were a system directory. The parent shows, the checkout holds
    only the worker's files."""
    parent = os.path.dirname(REPO)
    if isolation._under(tempfile.gettempdir(), parent):  # a clone in /tmp: the sandboxes' folders
        pytest.skip(f"the checkout's parent {parent} holds the sandboxes' work directories")
    monkeypatch.setattr(isolation, "SYSTEM_DIRS", isolation.SYSTEM_DIRS + (parent,))
    reference = os.path.join(REPO, "data", "eval", "GSM8K_test_post.jsonl")
    with Sandbox(timeout=5, preload=(), isolation=guarded) as sb:
        assert sb.run(f"import os\nprint(sorted(os.listdir({parent!r})))") == str(
            sorted(os.listdir(parent)))  # the parent is there, as it is here
        assert sb.run(f"sorted(os.listdir({REPO!r}))") == str(checkout_as_seen())
        assert "FileNotFoundError" in sb.run(f"open({reference!r})")
        assert shell(sb, f"echo x > {REPO}/written").startswith("2 ")  # read-only


def test_host_dir_reaches_the_work_directory(mode):
    with Sandbox(timeout=5, preload=(), isolation=mode) as sb:
        sb.run("open('from_code.txt', 'w').write('hi')")
        with open(os.path.join(sb.host_dir(), "from_code.txt")) as f:
            assert f.read() == "hi"
        with open(os.path.join(sb.host_dir(), "for_code.txt"), "w") as f:
            f.write("there")
        assert sb.run("open('for_code.txt').read()") == "'there'"


def test_worker_holds_no_capabilities(guarded):
    with Sandbox(timeout=5, preload=(), isolation=guarded) as sb:
        status = sb.run("print(open('/proc/self/status').read())")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[name], 16) == 0, (name, fields[name])
    assert fields["NoNewPrivs"].strip() == "1"


def test_work_directory_is_a_capped_tmpfs(guarded):
    with Sandbox(timeout=5, max_file_mb=16, disk_mb=1, preload=(), isolation=guarded) as sb:
        out = sb.run("f = open('big', 'wb')\nf.write(b'x' * (2 * 1024 * 1024))\nf.flush()")
        assert "No space left on device" in out
        assert sb.run("import os\nos.remove('big')\nopen('small', 'w').write('ok')") == "2"


@pytest.mark.skipif(not ROOT, reason="mode 'none' as root only")
def test_none_as_root_cannot_touch_the_parent(tmp_path):
    """As root, mode "none" is refused; were it not, its code must not signal or trace this
    process nor write its files (a run's results.jsonl)."""
    results = tmp_path / "results.jsonl"
    results.write_text("{}\n")
    try:
        sb = Sandbox(timeout=5, preload=(), isolation="none")
    except RuntimeError as e:
        assert "'none' is not available here" in str(e) and "root" in str(e)
        return
    with sb:
        libc = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        assert sb.run(libc + f"libc.kill({os.getpid()}, 0)") == "-1"
        assert sb.run(libc + f"libc.ptrace(16, {os.getpid()}, 0, 0)") == "-1"  # PTRACE_ATTACH
        out = shell(sb, f"echo forged > {results}")
        assert not out.startswith("0 ")
    assert results.read_text() == "{}\n"


@pytest.mark.skipif(bool(WHY_NOT["uid"]), reason=f"no uid here: {WHY_NOT['uid']}")
def test_uid_mode_leaves_nothing_in_tmp_or_dev_shm():
    name = f"sandbox-test-{uuid.uuid4().hex}"
    places = ["/tmp", "/dev/shm", "/var/tmp"]
    with Sandbox(timeout=5, preload=(), isolation="uid") as sb:
        for place in places:
            shell(sb, f"echo x > {place}/{name}")
        uid = sb.uid
    for place in places:
        assert not os.path.exists(f"{place}/{name}")
        assert [e.name for e in os.scandir(place) if e.stat(follow_symlinks=False).st_uid == uid
                ] == []


def test_stale_work_directories_are_swept(tmp_path, monkeypatch):
    """A parent killed with -9 leaves its work directory; the next Sandbox removes those whose
    owner (the pid in the name) is gone, and nothing else."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no process has now
    stale = tmp_path / f"sandbox-{dead.pid}-x1y2z3"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "out.txt").write_text("left over")
    (stale / "sub").chmod(0o500)  # as the code may have left it
    live = tmp_path / f"sandbox-{os.getpid()}-livexyz"  # ours: alive
    live.mkdir()
    other = tmp_path / "sandbox-otherformat"
    other.mkdir()
    with Sandbox(timeout=5, preload=()) as sb:
        assert sb.run("1 + 1") == "2"
        assert not stale.exists() and live.exists() and other.exists()


# ---------------------------------------------------------------------- problems do not leak
def test_nothing_survives_reset(sb):
    """Module patches, environment, sys.path, recursion limit, random seed, decimal precision,
    numpy's print options, a running thread and the work directory's mode: none of them reach the
    next problem. Each is read before, changed (and read again: the change took), then read
    after reset()."""
    pytest.importorskip("numpy")
    pytest.importorskip("sympy")
    state = ("import decimal, math, os, random, sys, numpy as np, sympy as sp\n"
             "x = sp.Symbol('x')\n"
             "(str(sp.simplify(2 * x / 2)), float(np.sqrt(16.0)), math.pi,"
             " os.environ.get('LEAK'), sys.path[-1], sys.getrecursionlimit(),"
             " decimal.getcontext().prec, np.get_printoptions()['precision'],"
             " oct(os.stat('.').st_mode & 0o777))")
    before = sb.run(state)
    patch = ("sp.simplify = lambda e: 'patched'\nnp.sqrt = lambda v: -1.0\nmath.pi = 3\n"
             "os.environ['LEAK'] = '1'\nsys.path.append('/leak')\nsys.setrecursionlimit(4321)\n"
             "decimal.getcontext().prec = 5\nnp.set_printoptions(precision=2)\n"
             "random.seed(0)\ntry:\n    os.chmod('.', 0o500)\nexcept PermissionError:\n"
             "    pass\n")
    changed = sb.run(patch + state.split("\n", 2)[2])
    assert changed != before and "'patched'" in changed and "4321" in changed
    sb.run("import _thread, time\nleak = []\ndef spin():\n    while True:\n"
           "        leak.append(1)\n        time.sleep(0.01)\n_thread.start_new_thread(spin, ())")
    sb.reset()
    assert sb.run(state) == before
    seeded = random.Random(0).random()  # what random.seed(0) would draw first
    assert sb.run("import random\nrandom.random()") != repr(seeded)
    assert sb.run("import os, time\ntime.sleep(0.05)\n"
                  "('leak' in globals(), len(os.listdir('/proc/self/task')))") == "(False, 1)"
    assert sb.run("open('f.txt', 'w').write('ok')\nopen('f.txt').read()") == "'ok'"


def test_a_tree_deeper_than_path_max_does_not_survive_reset(sb):
    """Directories nested past PATH_MAX (made one level at a time, by fd) cannot be reached by
    path from the work directory; all of it goes all the same."""
    sb.run("import os\nfd = os.open('.', os.O_RDONLY)\nfor _ in range(30):\n"
           "    os.mkdir('d' * 200, dir_fd=fd)\n"
           "    fd = os.open('d' * 200, os.O_RDONLY, dir_fd=fd)\n"
           "os.close(os.open('secret', os.O_CREAT | os.O_WRONLY, dir_fd=fd))")
    sb.reset()
    assert sb.run("import os\nos.listdir('.')") == "[]"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="clone's syscall number: x86_64")
def test_siblings_left_as_zombies_do_not_reach_the_next_problem(sb):
    """clone(CLONE_PARENT) makes children of the template, not of the worker; exited and not
    reaped, they would count against the uid's process limit in every later problem."""
    assert sb.run("import ctypes, os\nfor _ in range(40):\n"
                  "    if ctypes.CDLL(None).syscall(56, 0x8000 | 17, 0, 0, 0, 0) == 0:\n"
                  "        os._exit(0)") == EMPTY  # 56: clone; CLONE_PARENT | SIGCHLD
    sb.reset()
    assert sb.run("import subprocess\nsubprocess.run(['true']).returncode") == "0"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="clone's syscall number: x86_64")
def test_a_sibling_made_by_clone_parent_does_not_outlive_its_cell(sb):
    if sb.isolation == "none":
        pytest.skip("only a uid of its own lets the worker reach what is not its child")
    pid = int(sb.run("import ctypes, time\n"
                     "pid = ctypes.CDLL(None).syscall(56, 0x8000 | 17, 0, 0, 0, 0)\n"
                     "if pid == 0:\n    while True:\n        time.sleep(0.1)\npid"))
    assert pid > 0
    deadline = time.time() + 5
    while alive_in(sb, pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive_in(sb, pid)


def test_system_v_ipc_is_refused(sb):
    """Shared memory, message queues and semaphores of System V outlive their process (the next
    problem could read them) and hold memory that RLIMIT_AS does not count; as does a memfd."""
    out = sb.run("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "made = [libc.shmget(0x5EC, 4096, 0o1666), libc.msgget(0x5EC, 0o1666),"
                 " libc.semget(0x5EC, 1, 0o1666)]\n"
                 "try:\n    os.memfd_create('m')\nexcept PermissionError:\n    made.append(-1)\n"
                 "made, ctypes.get_errno()")
    assert out == "([-1, -1, -1, -1], 1)"  # EPERM


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="add_key's syscall number: x86_64")
def test_the_kernel_keyring_is_refused(sb):
    """The uid's keyring outlives its processes: a key one problem added, the next would read."""
    out = sb.run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "key = libc.syscall(248, b'user', b'leak', b'x', 1, ctypes.c_int(-4))\n"
                 "key, ctypes.get_errno()")
    assert out == "(-1, 1)"  # add_key to the user keyring: EPERM


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="mq_open's syscall number: x86_64")
def test_posix_message_queues_are_refused(sb):
    """A POSIX message queue lives in the IPC namespace, which all of a Sandbox's workers share:
    one that a problem left, the next would read."""
    out = sb.run("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "queue = libc.syscall(240, b'leak', os.O_CREAT | os.O_RDWR, 0o666, None)\n"
                 "queue, ctypes.get_errno()")
    assert out == "(-1, 1)"  # mq_open: EPERM



@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers: x86_64")
def test_a_user_namespace_is_refused_and_processes_still_start(sb):
    """In a user namespace of its own the code would hold every capability (it could then make a
    mount namespace, say): unshare and clone with CLONE_NEWUSER are refused (EPERM), clone3 is
    refused with ENOSYS, and libc still starts threads, forks and programs (through clone)."""
    out = sb.run("import ctypes, os, subprocess, threading\n"
                 "libc = ctypes.CDLL(None, use_errno=True)\n"
                 "r = [libc.unshare(0x10000000), ctypes.get_errno()]\n"
                 "r += [libc.unshare(0x20000), ctypes.get_errno()]\n"            # CLONE_NEWNS
                 "r += [libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno()]\n"
                 "r += [libc.syscall(435, (ctypes.c_uint64 * 11)(), 88), ctypes.get_errno()]\n"
                 "r += [subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout]\n"
                 "t = threading.Thread(target=lambda: r.append('thread'))\nt.start()\nt.join()\n"
                 "pid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
                 "r.append(os.waitpid(pid, 0)[1] >> 8)\nr")
    assert out == "[-1, 1, -1, 1, -1, 1, -1, 38, 'hi\\n', 'thread', 7]"

def test_a_thread_left_running_ends_the_worker(sb):
    sb.run("import _thread, time\nleak = []\ndef spin():\n    while True:\n"
           "        leak.append(1)\n        time.sleep(0.01)\n_thread.start_new_thread(spin, ())")
    out = sb.run("import os\n('leak' in globals(), len(os.listdir('/proc/self/task')))")
    assert out == f"{RESTART_NOTE}\n(False, 1)"
    # A thread that ends within its cell costs nothing.
    sb.run("import threading\nkeep = 1\nt = threading.Thread(target=sum, args=([1, 2],))\n"
           "t.start()\nt.join()")
    assert sb.run("keep") == "1"


def test_a_process_forked_through_ctypes_does_not_outlive_its_cell(sb):
    sb.run("keep = 1")
    out = sb.run("import ctypes, time\npid = ctypes.CDLL(None).fork()\nif pid == 0:\n"
                 "    while True:\n        time.sleep(0.1)\npid")
    pid = int(out)
    assert pid > 0
    deadline = time.time() + 5
    while alive_in(sb, pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive_in(sb, pid)
    assert sb.run("keep") == "1"  # the session itself goes on


FIND_SOCKET = ("import json, os, sys, time\n"
               "fd = next(int(n) for n in os.listdir('/proc/self/fd')"
               " if os.readlink(f'/proc/self/fd/{n}').startswith('socket:'))\n")


def test_a_forged_reply_does_not_desynchronise(sb):
    # A line written onto the worker's socket, before the cell's real reply.
    out = sb.run(FIND_SOCKET + "os.write(fd, b'{\"output\": \"FORGED\"}\\n')\n"
                 "time.sleep(0.2)\nprint('real')")
    assert "FORGED" not in out and "restarted" in out
    assert sb.run("print('first')") == f"{RESTART_NOTE}\nfirst"
    assert sb.run("print('second')") == "second"
    # The same with the id the parent is waiting for (read from the worker's own frames): the
    # cell may choose its own output, as print does; the real reply that follows is stray.
    forge = (FIND_SOCKET + "f = sys._getframe()\n"
             "while not isinstance(f.f_locals.get('request'), dict):\n    f = f.f_back\n"
             "reply = {'id': f.f_locals['request'].get('id'), 'output': 'FORGED', 'clean': True}\n"
             "os.write(fd, json.dumps(reply).encode() + b'\\n')\ntime.sleep(0.2)\nprint('real')")
    sb.run(forge)
    time.sleep(0.3)
    assert sb.run("print('third')").endswith("third")
    assert sb.run("print('fourth')") == "fourth"
    sb.run(forge)
    sb.reset()  # does not raise, and the next problem starts clean
    assert sb.run("print('fifth')") == "fifth"


def test_a_forged_reply_is_valid_text(sb):
    """A reply the cell wrote itself, with the awaited id, may say what it likes, but as text the
    caller can encode: JSON's escapes can carry a lone surrogate, which no UTF-8 holds (and on
    which a tokenizer raises)."""
    out = sb.run(FIND_SOCKET + "f = sys._getframe()\n"
                 "while not isinstance(f.f_locals.get('request'), dict):\n    f = f.f_back\n"
                 "reply = {'id': f.f_locals['request'].get('id'), 'output': 'a \\ud800 b'}\n"
                 "os.write(fd, json.dumps(reply).encode() + b'\\n')\ntime.sleep(0.2)")
    assert out == "a ? b"
    out.encode("utf-8")


def test_a_line_nested_too_deep_is_a_malformed_reply(sb):
    """JSON nested deeper than the recursion limit: the parent's decoder raises RecursionError,
    which must end as a malformed reply, not in the caller."""
    out = sb.run(FIND_SOCKET + "os.write(fd, b'[' * 5000 + b'\\n')\ntime.sleep(0.2)")
    assert "malformed reply" in out
    assert sb.run("print('next')") == f"{RESTART_NOTE}\nnext"


def test_pool_acquire_does_not_raise_for_the_last_problem():
    with SandboxPool(1, timeout=2, preload=()) as pool:
        sb = pool.acquire()
        sb.run(FIND_SOCKET + "os.write(fd, b'{\"output\": \"FORGED\"}\\n')\n"
               "time.sleep(0.2)\nprint('real')")
        time.sleep(0.3)
        pool.release(sb)
        sb = pool.acquire()  # the stray reply is the last problem's, not this one's
        assert sb.run("print('mine')") == "mine"
        pool.release(sb)


# ---------------------------------------------------------------------------------- reset and pool
def test_reset_gives_a_fresh_worker(sb):
    sb.run("secret = 1\nimport builtins\nbuiltins.pow = None\nbuiltins.extra = 1")
    pid = sb.run("import os\nos.getpid()")
    template = sb.run(TEMPLATE)
    sb.reset()
    assert sb.run("'secret' in dir()") == "False"
    assert sb.run("pow(2, 10)") == "1024"  # patched builtins are restored ...
    assert sb.run("extra").endswith("NameError: name 'extra' is not defined")  # ... added ones gone
    assert "Cell In[4], line 1" in sb.run("1 / 0")  # its cells count from 1 again
    assert sb.run("import os\nos.getpid()") != pid  # a new worker ...
    assert sb.run(TEMPLATE) == template  # ... forked by the same template


def test_reset_after_a_kill_needs_no_note(sb):
    sb.run("import os\nos._exit(0)")
    sb.reset()
    assert sb.run("1 + 1") == "2"


def test_pool_runs_concurrent_problems():
    with SandboxPool(3, timeout=2, preload=()) as pool:
        def solve(i):
            sb = pool.acquire()
            try:
                fresh = sb.run("'v' in dir()")
                sb.run(f"v = {i}")
                out = sb.run("import time\ntime.sleep(0.05)\nprint(v * v)")
                return fresh, out
            finally:
                pool.release(sb)

        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            results = list(ex.map(solve, range(12)))
        assert results == [("False", str(i * i)) for i in range(12)]
        with Sandbox(preload=()) as stray, pytest.raises(ValueError):
            pool.release(stray)
        sb = pool.acquire()
        pool.release(sb)
        with pytest.raises(ValueError):
            pool.release(sb)  # twice


def test_close_kills_the_worker(mode):
    sb = Sandbox(timeout=1, preload=(), isolation=mode)
    pid = worker_pid(sb)  # the machine's pid, except in namespace mode
    workdir = sb.run("os.getcwd()").strip("'")
    assert os.path.isdir(workdir)
    sb.close()
    assert not os.path.exists(workdir)
    if sb.uid is not None:
        assert pids_of_uid(sb.uid) == []
    elif mode != "namespaces":
        assert not alive(pid)
    with pytest.raises(RuntimeError):
        sb.run("1")
    with pytest.raises(RuntimeError):
        sb.reset()  # would otherwise start a worker that nothing ever stops


def test_isolation_modes_and_fallback():
    with pytest.raises(ValueError):
        Sandbox(isolation="jail")
    # Without bwrap on PATH the default falls back (root: to "uid"), says so once, and asking for
    # namespaces explicitly fails with the reason.
    script = ("import sandbox\nprint(sandbox.default_isolation())\ntry:\n"
              "    sandbox.Sandbox(isolation='namespaces', preload=())\nexcept RuntimeError as e:\n"
              "    print(e)\nwith sandbox.Sandbox(preload=()) as sb:\n"
              "    print(sb.isolation, sb.run('1+1'))")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PATH="/nowhere"), timeout=120)
    fallback = "uid" if ROOT else "none"
    why = "bwrap not found (install the package bubblewrap)"
    assert r.stdout == (f"{fallback}\n"
                        f"sandbox: isolation 'namespaces' is not available here: {why}\n"
                        f"{fallback} 2\n")
    assert r.stderr == f"sandbox: isolation '{fallback}' (no namespaces: {why})\n"


def test_cli():
    script = os.path.join(REPO, "sandbox.py")
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--timeout" in r.stdout and "--isolation" in r.stdout
    r = subprocess.run([sys.executable, script, "-c", "x = 20\nx + 22"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "42\n"
    fallback = "uid" if ROOT else "none"  # (root: "none" is refused)
    r = subprocess.run([sys.executable, script, "--isolation", fallback],
                       input="a = 2\n\na ** 10\n", capture_output=True, text=True, timeout=60)
    assert "1024" in r.stdout and f"sandbox: isolation '{fallback}'" in r.stderr
