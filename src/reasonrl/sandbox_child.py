"""The child side of `reasonrl.sandbox`: run as `python -I -S -B sandbox_child.py CONFIG_JSON`.

Standard library only, and never imported by reasonrl: it is executed as a fresh interpreter so that no
parent state (tokens, models, open files) is inherited. Three roles, one per process:

- launcher (the process the parent spawned): in "namespaces" isolation it enters new mount, pid, network and
  IPC namespaces (and a user namespace when not root), mounts a private size-limited tmpfs on /tmp (the
  working directory) and read-only empty ones over the other world-writable places, then forks the supervisor
  and waits for it. In "process" isolation it is the supervisor itself.
- supervisor: forks the user process, reaps every child, and writes the user process's end (`exit N` or
  `signal N`) to the status pipe, which only it holds. In namespaces it is pid 1, so its exit kills every
  process the program left behind.
- user process: drops privileges (a per-run uid when root; all capabilities in a user namespace; no new
  privileges), applies the resource limits, installs the audit hook, and runs the code as `__main__`.

The user process may write notes (refusals, an uncaught MemoryError) to a second pipe; they only label the
outcome. The exit status, which decides whether a program passed, comes from the supervisor.
"""

import builtins
import marshal
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 1, 2, 4, 1 << 14, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Writable by every user on common Linux layouts; hidden behind empty read-only mounts in namespaces.
SHARED_WRITABLE = ("/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")

EXEC_EVENTS = {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen"}
WRITE_EVENTS = {
    "os.chmod", "os.chown", "os.chflags", "os.lchflags", "os.link", "os.mkdir", "os.remove", "os.rename",
    "os.rmdir", "os.symlink", "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree",
}
# Modules that reach around the hook: a process without it, another interpreter without it, shared memory
# that outlives the run.
REFUSED_IMPORTS = {"_posixsubprocess", "_posixshmem", "_xxsubinterpreters", "_xxinterpchannels", "_interpreters"}
READABLE_DEVICES = {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxRefused(PermissionError):
    """An operation the sandbox does not allow; the message names it."""


def main() -> None:
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    with os.fdopen(config["code_fd"], "rb") as code_file:
        code = code_file.read()
    if config["isolation"] == "namespaces":
        _setup_or_exit(config, _enter_namespaces, config)
        supervisor = os.fork()  # the first child in the new pid namespace: its pid 1
        if supervisor:
            os.waitpid(supervisor, 0)
            os._exit(0)
    child = os.fork()
    if child:
        _supervise(config, child)  # never returns
    _setup_or_exit(config, _prepare_user_process, config, code)
    _run(code, config["notes_fd"])
    # Returning (or SystemExit propagating) lets the interpreter exit as Python always does: threads joined,
    # atexit handlers run, streams flushed.


def _setup_or_exit(config: dict, step, *args) -> None:
    """Run a set-up step; if it fails, report it on the status pipe (an infrastructure failure) and exit."""
    try:
        step(*args)
    except BaseException as error:  # noqa: BLE001  # any failure here is ours, not the program's
        os.write(config["status_fd"], f"setup-failed {type(error).__name__}: {error}\n".encode())
        os._exit(70)


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _enter_namespaces(config: dict) -> None:
    libc = _libc()
    root = os.geteuid() == 0
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | (0 if root else CLONE_NEWUSER)
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(flags), "unshare")
    if not root:  # become root of the new user namespace (host uid unchanged) to be allowed to mount
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
    # Private first: without it the mounts below would propagate to the host's mount namespace.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    owner = f",uid={config['run_uid']},gid={config['run_uid']}" if config["run_uid"] is not None else ""
    options = f"size={config['disk_mb']}m,mode=0700{owner}".encode()
    _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, options), "mount /tmp")
    for path in SHARED_WRITABLE:
        if os.path.isdir(path) and not os.path.islink(path):
            flags = MS_RDONLY | MS_NOSUID | MS_NODEV
            _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, b"size=4k,mode=0755"), f"mount {path}")


def _supervise(config: dict, child: int) -> None:
    """Reap every child until the user process ends, report how it ended on the status pipe, exit."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        report = f"signal {os.WTERMSIG(status)}\n"
    else:
        report = f"exit {os.waitstatus_to_exitcode(status)}\n"
    os.write(config["status_fd"], report.encode())
    os._exit(0)


def _prepare_user_process(config: dict, code: bytes) -> None:
    workdir = config["workdir"]
    stdlib_fds = _open_stdlib_dirs()
    _drop_privileges(config)
    os.chdir(workdir)
    _keep_stdlib_importable(stdlib_fds)
    with open("main.py", "wb") as main_file:  # so that tracebacks show the program's lines
        main_file.write(code)
    _set_limits(config)
    os.nice(config["nice"])
    sys.dont_write_bytecode = True
    sys.argv = ["main.py"]
    _install_guard(config, config["notes_fd"], workdir)
    os.close(config["status_fd"])  # the exit status is the supervisor's to report, never the program's


def _run(code: bytes, notes_fd: int) -> None:
    """Execute `code` as the `__main__` module, as `python main.py` would.

    An uncaught exception is printed without this file's frames and exits with 1; an uncaught MemoryError or
    refusal is also noted. SystemExit propagates, so the interpreter exits as Python always does (threads
    joined, atexit handlers run, streams flushed).
    """
    import types

    module = types.ModuleType("__main__")
    module.__file__ = "main.py"
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    try:
        exec(compile(code, "main.py", "exec"), module.__dict__)  # noqa: S102  # the sandboxed program itself
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001  # reported as Python would, then exit 1
        if isinstance(error, MemoryError):
            _note(notes_fd, "uncaught MemoryError")
        elif isinstance(error, SandboxRefused):
            _note(notes_fd, "uncaught refusal")
        import traceback

        report = traceback.TracebackException.from_exception(error, lookup_lines=False)
        report.stack = traceback.StackSummary.from_list(
            [frame for frame in report.stack if frame.filename != __file__]
        )
        sys.stderr.write("".join(report.format()))
        sys.exit(1)


def _open_stdlib_dirs() -> dict[str, int]:
    """Descriptors of the standard library directories, opened while they are still reachable."""
    fds = {}
    for entry in sys.path:
        if os.path.isdir(entry):
            fds[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY)
    return fds


def _drop_privileges(config: dict) -> None:
    libc = _libc()
    if config["run_uid"] is not None:  # root: become a uid nobody else uses; this clears all capabilities
        os.setgroups([])
        os.setgid(config["run_uid"])
        os.setuid(config["run_uid"])
    elif config["isolation"] == "namespaces":  # root of a user namespace: drop its capabilities
        import ctypes

        header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()
        _check(libc.capset(header, data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _keep_stdlib_importable(stdlib_fds: dict[str, int]) -> None:
    """Point imports at /proc/self/fd/N when the uid we dropped to cannot reach the standard library.

    A Python installed under a private home (pyenv or conda in /root, mode 0700) is unreachable by path
    for another uid, but a directory descriptor opened before the drop still reads it.
    """
    moved = {
        entry: f"/proc/self/fd/{fd}" for entry, fd in stdlib_fds.items() if not os.access(entry, os.R_OK | os.X_OK)
    }
    if not moved:
        for fd in stdlib_fds.values():
            os.close(fd)
        return
    sys.path[:] = [moved.get(entry, entry) for entry in sys.path]
    for module in list(sys.modules.values()):  # packages already imported look up submodules in __path__
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            for index, directory in enumerate(path):
                for entry, replacement in moved.items():
                    if directory == entry or directory.startswith(entry + os.sep):
                        path[index] = replacement + directory[len(entry):]
    sys.path_importer_cache.clear()


def _set_limits(config: dict) -> None:
    mib = 1024 * 1024
    limits = [
        (resource.RLIMIT_CPU, config["cpu_seconds"], config["cpu_seconds"] + 1),  # soft: SIGXCPU; hard: SIGKILL
        (resource.RLIMIT_AS, config["memory_mb"] * mib, config["memory_mb"] * mib),
        (resource.RLIMIT_FSIZE, config["file_mb"] * mib, config["file_mb"] * mib),
        (resource.RLIMIT_NOFILE, config["max_open_files"], config["max_open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if not config["refuse_fork"]:  # counted per uid: only meaningful for a uid (or user namespace) of our own
        limits.append((resource.RLIMIT_NPROC, config["max_processes"], config["max_processes"]))
    for kind, soft, hard in limits:
        resource.setrlimit(kind, (soft, hard))


def _note(notes_fd: int, text: str) -> None:
    try:
        os.write(notes_fd, (text.replace("\n", " ")[:300] + "\n").encode())
    except OSError:
        pass


def _install_guard(config: dict, notes_fd: int, workdir: str) -> None:
    """An audit hook that refuses what the OS limits do not already stop (see docs/RELIABILITY.md).

    It is a tripwire in the interpreter, not a wall: code that reaches native calls could step around it,
    which is why ctypes, new processes and subinterpreters are refused outright.
    """
    realpath, fsdecode, getpid = os.path.realpath, os.fsdecode, os.getpid
    workdir = realpath(workdir)
    # The standard library (where imports look) and this file (which tracebacks quote).
    readable_roots = tuple(
        os.readlink(entry) if entry.startswith("/proc/self/fd/") else realpath(entry) for entry in sys.path
    ) + (realpath(__file__),)
    refuse_sockets, refuse_fork = config["refuse_sockets"], config["refuse_fork"]
    refusals = [0]

    def inside(path, roots) -> bool:
        resolved = realpath(fsdecode(path))
        if any(part in ("site-packages", "dist-packages") for part in resolved.split(os.sep)):
            return resolved == workdir or resolved.startswith(workdir + os.sep)
        return any(resolved == root or resolved.startswith(root + os.sep) for root in roots)

    def refuse(what: str) -> None:
        refusals[0] += 1
        if refusals[0] <= 20:
            _note(notes_fd, f"refused {what}")
        raise SandboxRefused(f"reasonrl sandbox refused {what}")

    def readable(path) -> bool:
        return realpath(fsdecode(path)) in READABLE_DEVICES or inside(path, (workdir, *readable_roots))

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            if writing and realpath(fsdecode(path)) != "/dev/null" and not inside(path, (workdir,)):
                refuse(f"writing {fsdecode(path)!r} (only the working directory is writable)")
            if not writing and not readable(path):
                refuse(f"reading {fsdecode(path)!r} (outside the working directory and the standard library)")
            if not writing and os.path.isdir(path) and not inside(path, (workdir,)):
                # A directory descriptor would let later calls (dir_fd=...) reach paths this hook never sees.
                refuse(f"opening the directory {fsdecode(path)!r} (outside the working directory)")
        elif event in ("os.listdir", "os.scandir"):
            if args[0] is not None and not isinstance(args[0], int) and not readable(args[0]):
                refuse(f"listing {fsdecode(args[0])!r}")
        elif event in WRITE_EVENTS:
            paths = args[:2] if event in ("os.rename", "os.link") else args[:1]
            if event == "os.symlink":
                paths = args[1:2]  # the link is created at dst; what it points to is checked when opened
            for path in paths:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path, (workdir,)):
                    refuse(f"{event} on {fsdecode(path)!r} (only the working directory is writable)")
        elif event.startswith("ctypes."):
            refuse("ctypes (native calls would bypass the sandbox's checks)")
        elif event in EXEC_EVENTS:
            refuse(f"{event} (starting other programs)")
        elif event == "import" and args[0] in REFUSED_IMPORTS:
            refuse(f"importing {args[0]}")
        elif event.startswith("cpython.PyInterpreterState_New"):
            refuse("a subinterpreter")
        elif event in ("os.kill", "os.killpg"):
            if event == "os.killpg" or args[0] != getpid():
                refuse(f"{event}{args} (only the program's own pid may be signalled)")
        elif event in ("os.fork", "os.forkpty") and refuse_fork:
            refuse(f"{event} (no process limit can be enforced without namespaces or root)")
        elif event.startswith("socket.") and refuse_sockets:
            refuse(f"{event} (no network)")

    sys.addaudithook(hook)


if __name__ == "__main__":
    main()
