"""Run untrusted Python (model-written code) in a local, resource-limited sandbox.

    >>> from reasonrl.sandbox import run_python
    >>> result = run_python("print(sum(range(10)))", timeout=5)
    >>> result.outcome, result.exit_code, result.stdout
    (<Outcome.FINISHED: 'finished'>, 0, '45\\n')

Each call starts a fresh isolated interpreter (`python -I -S -B`, an emptied environment) running
`sandbox_child.py`, which sets the program up and runs it (see that module for the process roles). What is
enforced, and by whom:

- by the kernel: CPU seconds, address space (memory), file size, open files and (with a uid or user
  namespace of its own) processes, as rlimits; a per-run uid when reasonrl runs as root, which cannot signal
  the parent or write files it does not own; in "namespaces" isolation also no network (a new network
  namespace has no usable interface), no view of the host's processes (pid namespace, whose end kills every
  process the program left), and a private size-limited tmpfs as the working directory and HOME;
- by the parent: the wall-time limit (the whole process group is killed), output capped while it is read,
  the temporary directory deleted;
- by an audit hook in the child (a tripwire, not a wall): reads outside the working directory and the
  standard library, writes outside the working directory, starting programs, ctypes, signalling other
  processes, and, in "process" isolation, sockets.

`isolation()` says which mode this machine permits: "namespaces" (root, or unprivileged user namespaces) or
"process" (rlimits, the audit hook and process-group kills only). docs/RELIABILITY.md has the table of
hostile programs and what happens to each.
"""

from __future__ import annotations

import enum
import functools
import itertools
import marshal
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD_SCRIPT = str(Path(__file__).with_name("sandbox_child.py"))
NAMESPACE_WORKDIR = "/tmp"
"""The working directory in "namespaces" isolation: a private tmpfs mounted over /tmp in the child only."""
ISOLATION_MODES = ("namespaces", "process")
_FIRST_RUN_UID = 1_000_000_000
_run_numbers = itertools.count()


class Outcome(str, enum.Enum):
    """How a sandboxed run ended."""

    FINISHED = "finished"
    """The program ended by itself; `exit_code` says how (0: success, 1: an uncaught exception, ...)."""
    TIMED_OUT = "timed_out"
    """It passed the wall-time limit (killed) or its CPU-time limit (SIGXCPU)."""
    OUT_OF_MEMORY = "out_of_memory"
    """It ended with an uncaught MemoryError: its address-space limit was reached."""
    KILLED = "killed"
    """It died of a signal (a segfault, SIGKILL, abort, ...); `exit_code` is minus the signal number."""
    REFUSED = "refused"
    """It ended with an uncaught refusal of the sandbox (reading project files, a socket, ctypes, ...)."""
    ERROR = "error"
    """The sandbox itself failed (it could not start or set up the program); not the program's fault."""


@dataclass(frozen=True)
class SandboxResult:
    """What one run did. `stdout` and `stderr` hold at most `max_output_bytes` each (decoded as UTF-8)."""

    outcome: Outcome
    exit_code: int | None
    """The exit status, minus the signal number if a signal ended it, None if the sandbox killed it."""
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_seconds: float
    refusals: tuple[str, ...] = ()
    """What the audit hook refused, in order (also when the program caught the refusal)."""
    detail: str = ""
    """One line on the outcome: the signal, the limit reached, or the sandbox's own error."""

    @property
    def passed(self) -> bool:
        """True when the program finished by itself with exit code 0."""
        return self.outcome is Outcome.FINISHED and self.exit_code == 0


@functools.cache
def isolation() -> str:
    """The strongest isolation this machine permits, found once by running a tiny program in namespaces.

    "namespaces" needs root or unprivileged user namespaces (and util-linux-free Linux mount and unshare
    calls); otherwise "process".
    """
    probe = run_python("print('ok')", timeout=10, isolation="namespaces")
    return "namespaces" if probe.passed and probe.stdout == "ok\n" else "process"


def run_python(
    code: str,
    *,
    stdin: str | bytes = "",
    timeout: float = 10.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    max_output_bytes: int = 65_536,
    max_processes: int = 16,
    file_mb: int = 16,
    disk_mb: int = 64,
    max_open_files: int = 64,
    nice: int = 10,
    isolation: str | None = None,
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and return how it ended. Never raises for the program.

    - `timeout`: wall-clock seconds before the whole run is killed; `cpu_seconds` (default: `timeout`
      rounded up) is its CPU time, counted per process over all its threads;
    - `memory_mb`: address space per process (so up to `max_processes` x `memory_mb` in total);
    - `file_mb`: the largest file it may write; `disk_mb`: all its files together (namespaces only);
    - `max_output_bytes`: kept of stdout and of stderr each; the rest is read and dropped;
    - `nice`: added to the child's scheduling niceness, so that sandboxes yield the CPU to training;
    - `isolation`: "namespaces", "process", or None for the best this machine permits (`isolation()`).
    Bad arguments raise ValueError.
    """
    mode = _isolation_mode(isolation)
    limits = {"timeout": (timeout, 0.001), "memory_mb": (memory_mb, 16), "max_output_bytes": (max_output_bytes, 0),
              "max_processes": (max_processes, 1), "file_mb": (file_mb, 0), "disk_mb": (disk_mb, 1),
              "max_open_files": (max_open_files, 16), "cpu_seconds": (cpu_seconds or 1, 1)}
    for name, (value, least) in limits.items():
        if not value >= least:
            raise ValueError(f"run_python: {name}={value!r} is too small; it must be at least {least}")
    root = os.geteuid() == 0
    run_uid = _run_uid() if root else None
    workdir = NAMESPACE_WORKDIR if mode == "namespaces" else tempfile.mkdtemp(prefix="reasonrl-sandbox-")
    start = time.monotonic()
    try:
        if mode == "process" and run_uid is not None:
            os.chown(workdir, run_uid, run_uid)
        config = {
            "isolation": mode,
            "workdir": workdir,
            "run_uid": run_uid,
            "cpu_seconds": cpu_seconds or max(1, math.ceil(timeout)),
            "memory_mb": memory_mb,
            "file_mb": file_mb,
            "disk_mb": disk_mb,
            "max_processes": max_processes,
            "max_open_files": max_open_files,
            "nice": nice,
            # Without a network namespace, sockets are refused by the audit hook; without a uid or user
            # namespace of its own, RLIMIT_NPROC would count the trainer's processes too, so fork is refused.
            "refuse_sockets": mode == "process",
            "refuse_fork": mode == "process" and not root,
        }
        source = code.encode() if isinstance(code, str) else code
        data = stdin.encode() if isinstance(stdin, str) else stdin
        return _spawn_and_collect(config, source, data, timeout, max_output_bytes, start)
    except OSError as error:  # the sandbox could not be started: not the program's fault
        return SandboxResult(Outcome.ERROR, None, "", "", False, False, time.monotonic() - start,
                             detail=f"sandbox failed to start: {error}")
    finally:
        if mode == "process":
            if run_uid is not None:
                _kill_uid(run_uid)
            shutil.rmtree(workdir, onerror=_make_removable)


def run_many(codes: Sequence[str], *, max_workers: int | None = None, **options: Any) -> list[SandboxResult]:
    """`run_python` on each of `codes` (same options), `max_workers` at a time; results in input order.

    The default, half the CPUs (at least 1, at most 4), leaves the rest to training; each child is also
    niced.
    """
    if max_workers is None:
        max_workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1 (got {max_workers})")
    if len(codes) <= 1 or max_workers == 1:
        return [run_python(code, **options) for code in codes]
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reasonrl-sandbox") as pool:
        return list(pool.map(functools.partial(_run_one, options), codes))


def _run_one(options: dict[str, Any], code: str) -> SandboxResult:
    return run_python(code, **options)


def _isolation_mode(requested: str | None) -> str:
    if requested is None:
        return isolation()
    if requested not in ISOLATION_MODES:
        raise ValueError(f"isolation={requested!r} is not a mode; choose one of: {', '.join(ISOLATION_MODES)}")
    return requested


def _run_uid() -> int:
    """A uid no other live run uses: this process's pid and a counter, far above any real account."""
    return _FIRST_RUN_UID + (os.getpid() % 100_000) * 1000 + next(_run_numbers) % 1000


def _spawn_and_collect(
    config: dict[str, Any], code: bytes, stdin: bytes, timeout: float, cap: int, start: float
) -> SandboxResult:
    status_read, status_write = os.pipe()
    notes_read, notes_write = os.pipe()
    try:
        with tempfile.TemporaryFile() as code_file, _stdin_source(stdin) as stdin_source:
            code_file.write(code)
            code_file.seek(0)
            config = {**config, "code_fd": code_file.fileno(), "status_fd": status_write, "notes_fd": notes_write}
            env = {"PATH": "/usr/bin:/bin", "HOME": config["workdir"], "TMPDIR": config["workdir"], "LANG": "C.UTF-8"}
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", CHILD_SCRIPT, marshal.dumps(config).hex()],
                stdin=stdin_source,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=config["workdir"] if config["isolation"] == "process" else "/",
                pass_fds=(code_file.fileno(), status_write, notes_write),
                start_new_session=True,  # its own process group, killed as a whole
            )
    except BaseException:
        os.close(status_read)
        os.close(notes_read)
        raise
    finally:
        os.close(status_write)
        os.close(notes_write)
    stdout, stderr, status, notes = _Capture(cap), _Capture(cap), _Capture(4096), _Capture(8192)
    streams = {process.stdout.fileno(): stdout, process.stderr.fileno(): stderr, status_read: status,
               notes_read: notes}
    try:
        timed_out = _collect(process, streams, deadline=start + timeout)
    finally:
        _kill_group(process.pid)
        process.wait()
        _wait_until_gone(process.pid)
        process.stdout.close()
        process.stderr.close()
        os.close(status_read)
        os.close(notes_read)
    wall_seconds = time.monotonic() - start
    outcome, exit_code, detail = _classify(timed_out, process.returncode, status.text(), notes.text(), timeout)
    refusals = tuple(line.removeprefix("refused ") for line in notes.text().splitlines()
                     if line.startswith("refused "))
    return SandboxResult(outcome, exit_code, stdout.text(), stderr.text(), stdout.truncated, stderr.truncated,
                         wall_seconds, refusals, detail)


def _stdin_source(data: bytes) -> Any:
    """What the child reads as stdin, never something that can block the parent: up to one page (always
    within a pipe's capacity) through a pipe, so that once read it is gone; more through an unlinked file."""
    if len(data) <= 4096:
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
        return open(read_end, "rb", buffering=0)
    file = tempfile.TemporaryFile()  # returned open: the caller's with-statement closes it
    file.write(data)
    file.seek(0)
    return file


class _Capture:
    """The first `cap` bytes of a stream; the rest is counted and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap, self.data, self.total = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _collect(process: subprocess.Popen, streams: dict[int, _Capture], deadline: float) -> bool:
    """Read every pipe until all are closed; True if the deadline passed first.

    Once the launcher has exited, whatever it left behind is killed and the pipes get at most one more
    second to drain (a process that escaped the group could otherwise hold them open).
    """
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    launcher_done = False
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                return not launcher_done
            if not launcher_done and process.poll() is not None:
                launcher_done = True
                _kill_group(process.pid)
                deadline = min(deadline, now + 1.0)
            for key, _ in selector.select(timeout=min(deadline - now, 0.05)):
                try:
                    chunk = os.read(key.fd, 65_536)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)
        return False
    finally:
        selector.close()


def _classify(timed_out: bool, returncode: int | None, status: str, notes: str, timeout: float
              ) -> tuple[Outcome, int | None, str]:
    """The outcome, exit code and detail from what the parent saw, the supervisor's status and the notes."""
    if "setup-failed" in status:
        return Outcome.ERROR, None, status[status.index("setup-failed"):].splitlines()[0]
    if timed_out:
        return Outcome.TIMED_OUT, None, f"killed after the {timeout:g} s wall-time limit"
    ending = next((line.split() for line in status.splitlines() if line.startswith(("exit ", "signal "))), None)
    if ending is None:
        return Outcome.ERROR, None, f"the sandbox's supervisor ended without a status (exit {returncode})"
    kind, number = ending[0], int(ending[1])
    if kind == "signal":
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if number == signal.SIGXCPU:
            return Outcome.TIMED_OUT, -number, "reached its CPU-time limit (SIGXCPU)"
        return Outcome.KILLED, -number, f"killed by {name}"
    if number != 0 and "uncaught MemoryError" in notes:
        return Outcome.OUT_OF_MEMORY, number, "MemoryError: reached its memory limit"
    if number != 0 and "uncaught refusal" in notes:
        return Outcome.REFUSED, number, "ended by a refused operation"
    return Outcome.FINISHED, number, f"exit code {number}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_until_gone(pgid: int, seconds: float = 2.0) -> None:
    """Wait (bounded) until no process of the killed group is still alive, so that none outlives the call.

    A killed process whose parent died stays a zombie until init reaps it, which some inits do late; a
    zombie runs nothing, so only live members are waited for.
    """
    end = time.monotonic() + seconds
    while _live_members(pgid) and time.monotonic() < end:
        time.sleep(0.005)


def _live_members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False  # the common case: every process has been reaped
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):  # state, ppid, pgrp
                return True
    return False


def _kill_uid(uid: int) -> None:
    """Kill every process of a run's uid, including any that left the process group (process isolation)."""
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if kill is not None:  # as that uid, `kill -1` reaches exactly that uid's processes
        subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], env={}, cwd="/",
                       timeout=30, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _make_removable(function: Any, path: str, exc_info: Any) -> None:
    """rmtree's error handler: a program may leave directories without write permission; allow and retry."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=_make_removable)
        else:
            os.unlink(path)
    except OSError:
        pass
