"""isolation.py: what keeps the model's code away from everything but its own sandbox.

Serves sandbox.py. The code MathCoder writes is hostile by assumption: nothing it does may reach
the answers it is graded against, another problem, the parent or another run. Sandbox(isolation=...)
picks one of three modes; sandbox.default_isolation() is the strongest this machine offers:

  "namespaces"  The template and its worker run inside bubblewrap (`bwrap`, package bubblewrap),
      one per Sandbox, in a root of their own: read-only, it holds only root_mounts(): the system's
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
  "uid"  (root on Linux) The template enters mount, IPC and network namespaces of its own (only
      a loopback, down: no port of the machine is reached) and chroots into the same kind of
      root (enter_private_root: the same root_mounts(), /dev's harmless nodes, the machine's
      /proc, the work directory on a tmpfs); the worker drops to an unprivileged uid/gid of its
      own (UID_BASE + a slot, no account needed) with no capability: it cannot signal other
      processes, read the project, nor write outside its work directory (so it leaves nothing in
      /tmp or /dev/shm). It sees all processes (their command lines too).
  "none"  The worker runs as you, with the limits of sandbox.py and the audit hook below, nothing
      more. Refused as root: root's code could signal, trace or overwrite anything, the run's own
      results included.

In every mode the worker holds no capability and sets no_new_privs (no setuid program gives it
more), a seccomp filter refuses System V IPC, POSIX message queues, the kernel keyring and
memfd_create (refuse_syscalls: objects that outlive a problem, memory that RLIMIT_AS does not
count) and new user namespaces (inside one the code would hold every capability), and a Python
audit hook (sys.addaudithook, _guard) refuses, through Python's own APIs, writes outside the work
directory, signals to other processes and sockets: a guard rail against accidents, which ctypes,
a shell or code that goes looking gets around. Not isolated: what "none" can read (everything
you can); in "uid" the machine's process list; the kernel's attack surface (the filter refuses
only those calls); CPU share. For hostile code at scale also put the whole program in a VM. Linux
is the tested platform (/proc, rlimits, setuid, capabilities, mounts); macOS offers only "none".

Top to bottom: what a sandbox's root holds (root_mounts) and how it is made (bwrap_argv for
"namespaces", enter_private_root for "uid"); which modes this machine offers (why_unavailable);
the worker's privileges (drop_privileges, the audit hook _guard); finding and killing processes,
emptying directories; uids, and work directories left behind.
"""
import contextlib, ctypes, dataclasses, importlib.util, itertools, os, pwd, re, shutil, signal
import subprocess, sys, sysconfig, tempfile, threading

MODES = ("namespaces", "uid", "none")  # isolation, strongest first
UID_BASE = 1_000_000_000  # worker uids: UID_BASE + (parent pid % 2**22) * 256 + slot, below 2**31
WORKER_FILES = ("sandbox.py", "plumbing/__init__.py",  # what the template imports from the checkout
                "plumbing/isolation.py", "plumbing/worker.py", "plumbing/notebook.py",
                "plumbing/pretty.py")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # sh, libc, ...
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # WORKER_FILES are there
# mount(2) and unshare(2) flags (linux/mount.h, linux/sched.h)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x8000000, 0x40000000
UNSHARE = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET  # uid mode: mounts, IPC, network of its own


# ---------------------------------------------------------------------------------- the root
def _under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def root_mounts(preload=()):
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
    for private in (CHECKOUT, os.getcwd()):  # e.g. a checkout in /usr/src/app: its data stays out
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
        show(os.path.join(CHECKOUT, name))
    return mounts


def bwrap_argv(workdir, disk_mb, preload=()):
    """bubblewrap around a template: a root of its own holding root_mounts(), read-only; `workdir`
    a writable tmpfs of `disk_mb` MiB; a fresh (read-only) /dev and /proc; new PID, network, IPC
    and UTS namespaces; it dies with the parent."""
    argv, made, hidden = ["bwrap"], {}, []  # made: path -> True if bound, False if on a tmpfs

    def dirs_above(target):  # made by us, 0755: bwrap would make them 0700, closed to the worker
        parts = target.split("/")
        for above in ("/".join(parts[:depth]) for depth in range(2, len(parts))):
            tops = [path for path in made if _under(above, path)]
            if above not in made and not (tops and made[max(tops, key=len)]):  # on a tmpfs
                argv.extend(["--perms", "0755", "--dir", above])
                made[above] = False

    for kind, source, target in root_mounts(preload):
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


def enter_private_root(cfg):
    """uid mode (root): what bwrap does in namespaces mode, by hand. Mount, IPC and network
    namespaces of our own (the network: a loopback that is down); a new root (a tmpfs on the
    host's empty work directory) that holds only cfg["mounts"] (root_mounts(), read-only), /dev's
    harmless nodes, the machine's /proc and the work directory on a tmpfs of disk_mb; then chroot
    into it. Every worker forked from here lives in that root."""
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

    if libc.unshare(UNSHARE):
        raise OSError(ctypes.get_errno(), "sandbox: unshare(CLONE_NEWNS | NEWIPC | NEWNET)")
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


# ---------------------------------------------------------------------------------- which modes
_why_not = {}  # isolation mode -> None where this machine offers it, else why not
_announced = set()  # the modes this process has said it uses


def why_unavailable():
    """{mode: None where this machine offers it, else why not}; probed once per process."""
    if not _why_not:
        why = None if shutil.which("bwrap") else "bwrap not found (install the package bubblewrap)"
        if why is None:
            workdir = os.path.join(tempfile.gettempdir(), "sandbox-probe")  # (made in its root)
            probe = subprocess.run([*bwrap_argv(workdir, 1), "--", sys.executable, "-S", "-c", ""],
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode:
                last_line = (probe.stderr.strip() or "failed").splitlines()[-1]
                why = f"bwrap cannot run here: {last_line}"
        root = sys.platform == "linux" and os.geteuid() == 0
        uid = None if root else "needs root on Linux"
        if root:  # enter_private_root needs namespaces (a container may not allow them)
            probe = subprocess.run([sys.executable, "-S", "-c", "import ctypes, sys; "
                                    f"sys.exit(ctypes.CDLL(None).unshare({UNSHARE}))"],
                                   capture_output=True, timeout=60)
            uid = "no mount, IPC or network namespace (unshare)" if probe.returncode else None
        none = ("runs the model's code as root, which nothing would stop from signalling, tracing "
                "or overwriting anything, the run's own results included" if root else None)
        _why_not.update(namespaces=why, uid=uid, none=none)
    return _why_not


def announce(mode):
    """Say once per process, on stderr, what isolation sandboxes get (and why not more)."""
    if mode not in _announced:
        _announced.add(mode)
        why = why_unavailable()["namespaces"]
        note = f" (no namespaces: {why})" if why else ""
        print(f"sandbox: isolation {mode!r}{note}", file=sys.stderr)


# ---------------------------------------------------------------------------------- privileges
def drop_privileges(uid):
    """Become `uid` (and gid) if given, then hold no capability at all (effective, permitted,
    inheritable, ambient) and set no_new_privs: no setuid program or file capability gives any
    back. Reading is not one it needs: what it may read is what its root holds (root_mounts)."""
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
    refuse_syscalls(libc)


# Per machine: its seccomp architecture, the numbers (asm/unistd_64.h, asm-generic/unistd.h) of
# System V IPC's calls (shm*, sem*, msg*), POSIX message queues' (mq_*), the kernel keyring's
# (add_key, request_key, keyctl) and memfd_create; then clone, clone3 and unshare.
_REFUSED = {"x86_64": (0xC000003E, (*range(29, 32), *range(64, 72), 220, *range(240, 246),
                                    *range(248, 251), 319), (56, 435, 272)),
            "aarch64": (0xC00000B7, (*range(180, 198), *range(217, 220), 279), (220, 435, 97))}
CLONE_NEWUSER = 0x10000000


def refuse_syscalls(libc):
    """A seccomp filter (for good, inherited by all it starts): every call of System V IPC (shared
    memory, semaphores, message queues), of POSIX message queues, of the kernel keyring and
    memfd_create fail with EPERM, and so does every call of another ABI (32-bit, x32) that could
    reach them by other numbers. Their objects outlive the process that made them (in the IPC
    namespace all of a Sandbox's workers share, or the uid's keyring): left by one problem, the
    next could read them. IPC objects and a memfd hold memory that RLIMIT_AS does not count.
    A new user namespace (clone or unshare with CLONE_NEWUSER) is refused too: inside one the code
    would hold every capability, and reach much more of the kernel. clone3 keeps its flags where
    a filter cannot read them: it fails with ENOSYS, on which libc falls back to clone.
    Other machines than _REFUSED's: no filter."""
    arch, numbers, (clone, clone3, unshare) = _REFUSED.get(os.uname().machine, (0, (), (0,) * 3))
    if not arch:
        return
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|..|K, BPF_RET
    allow, eperm, enosys = 0x7FFF0000, 0x00050001, 0x00050026  # SECCOMP_RET_ALLOW, _ERRNO | errno
    # (op, k, the label to jump to when true; else the next), seccomp_data: nr at 0, arch at 4,
    # args[0] at 16 (its low 32 bits: the flags)
    code = [(ld, 4, None), (jeq, arch, "nr"), (ret, eperm, None),  # another ABI: nothing
            "nr", (ld, 0, None), (jge, 0x40000000, "eperm"),    # x32: bit 30 set
            *[(jeq, number, "eperm") for number in numbers],
            (jeq, clone3, "enosys"), (jeq, clone, "flags"), (jeq, unshare, "flags"),
            (ret, allow, None),
            "flags", (ld, 16, None), (jset, CLONE_NEWUSER, "eperm"), (ret, allow, None),
            "enosys", (ret, enosys, None), "eperm", (ret, eperm, None)]
    at, steps = {}, []
    for step in code:  # a label names the position of the step after it
        if isinstance(step, str):
            at[step] = len(steps)
        else:
            steps.append(step)
    # a jump skips (at[label] - i - 1) steps when true (jt), none when false (jf)
    program = [(op, at[label] - i - 1 if label else 0, 0, k)
               for i, (op, k, label) in enumerate(steps)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(program))(*program)
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    if libc.prctl(22, 2, ctypes.byref(Program(len(program), filters)), 0, 0):
        raise OSError(ctypes.get_errno(), "sandbox: could not install the seccomp filter")


@dataclasses.dataclass
class _GuardState:
    """What the audit hook knows (one worker per process, so module-level)."""
    dir: str = ""          # the work directory, the only place Python-level writes may go
    trusted: bool = False  # the worker's own clean-up runs (trusted()): the hook stands aside


_guarded = _GuardState()


_PATH_EVENTS = {  # audit event -> which of its arguments are paths written to
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (1,),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _guard(event, args):
    """Audit hook: a guard rail on Python-level file writes, signals and sockets."""
    if _guarded.trusted:
        return
    paths = [args[i] for i in _PATH_EVENTS.get(event, ())]
    if event == "open" and args[2] & _WRITE_FLAGS:  # open() for reading is not checked
        paths = [args[0]]
    for path in paths:  # an int is an open fd
        if isinstance(path, int):
            real = _guarded.dir
        else:
            real = os.path.realpath(os.fsdecode(os.fspath(path)))
        if os.path.commonpath([real, _guarded.dir]) != _guarded.dir and real != os.devnull:
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


def install_guard(workdir):
    """From now on, for good (an audit hook cannot be removed), _guard checks this process."""
    _guarded.dir = workdir
    sys.addaudithook(_guard)


@contextlib.contextmanager
def trusted():
    """The worker's own clean-up (killing what a cell left): the guard stands aside meanwhile."""
    _guarded.trusted = True
    try:
        yield
    finally:
        _guarded.trusted = False


# ---------------------------------------------------------------------------------- processes
def procs(uid=None, pgrp=None, ppid=None):
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


def kill_all(spare, **which):
    """SIGKILL every process procs(**which) finds but pid `spare`, again and again until none is
    left (they may fork meanwhile)."""
    for _ in range(200):
        pids = set(procs(**which)) - {spare}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):  # already gone
                os.kill(pid, signal.SIGKILL)


def clear(top):
    """Empty directory `top` (kept) whatever code left in it: directories made read-only or
    unlistable are opened up first (where we own them), symlinks are removed, never followed.
    It works one level below `top` at a time, by fd: a directory's entries are moved up into
    `top`, then it goes. So no path grows long (a tree nested past PATH_MAX, made a level at a
    time, goes too) and there is no recursion. Best effort: what cannot go stays."""
    with contextlib.suppress(OSError):
        os.chmod(top, 0o700)  # a work directory the code chmod-ed
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    moved = itertools.count()  # names for what moves up (one in use: replaced, or tried again)
    try:
        progress = True
        while progress:  # each pass removes something, or it ends
            progress, entries = False, []
            with contextlib.suppress(OSError):  # a listing that fails: what is there stays
                entries = list(os.scandir(fd))
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        os.chmod(entry.name, 0o700, dir_fd=fd)
                        sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                      dir_fd=fd)
                        try:
                            for inner in list(os.scandir(sub)):
                                with contextlib.suppress(OSError):
                                    os.rename(inner.name, f".moved-{next(moved)}",
                                              src_dir_fd=sub, dst_dir_fd=fd)
                        finally:
                            os.close(sub)
                        os.rmdir(entry.name, dir_fd=fd)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                    progress = True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- what is left
_uid_lock = threading.Lock()
_uids_in_use = set()
_uid_slots = itertools.count()


def alloc_uid():
    """A uid that no account, no process and no other live sandbox uses."""
    with _uid_lock:
        for _ in range(256):
            uid = UID_BASE + (os.getpid() % (1 << 22)) * 256 + next(_uid_slots) % 256
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)
                continue  # a real account: never (the sweep on restart would kill its processes)
            if uid not in _uids_in_use and not procs(uid=uid):
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError("sandbox: no free uid (more than 256 live sandboxes in one process?)")


def free_uid(uid):
    with _uid_lock:
        _uids_in_use.discard(uid)


def sweep_stale_dirs():
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
                clear(entry.path)
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
            except (PermissionError, OverflowError):
                continue
