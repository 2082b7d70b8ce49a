"""The sandbox against hostile programs: each ends with a stated outcome and the host is left as it was.

Every case runs in this machine's isolation (`isolation()`: "namespaces" where the OS permits) and in
"process" isolation (rlimits, the audit hook and process-group kills only). After each case the `host`
fixture checks that the sentinel file, the project's README and the decoy folder are unchanged, that no
sandbox process and no sandbox temporary directory is left, that this process holds no extra file
descriptors and sees the same mounts. docs/RELIABILITY.md shows the same table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reasonrl.sandbox import NAMESPACE_WORKDIR, Outcome, _classify, isolation, run_many, run_python

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
SRC = PROJECT / "src"
ROOT = os.geteuid() == 0
MODES = sorted({isolation(), "process"})
SECRET = "hf_FAKE_SECRET_do_not_leak_1234"

FINISHED, TIMED_OUT, OOM, KILLED, REFUSED = (
    Outcome.FINISHED, Outcome.TIMED_OUT, Outcome.OUT_OF_MEMORY, Outcome.KILLED, Outcome.REFUSED
)


@dataclass
class Case:
    """A hostile program, the options it runs with and what must happen, per isolation mode.

    `expect` maps a mode ("namespaces", "process", or "process-user" for process isolation without root)
    to (outcome, exit_code); "*" is the default. `output` holds strings that stdout+stderr must contain.
    """

    name: str
    code: str
    expect: dict[str, tuple[Outcome, int | None]]
    options: dict[str, Any] = field(default_factory=dict)
    output: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("namespaces", "process")
    slow: bool = False
    """Runs into a time limit or burns CPU for seconds: marked slow (still run by `make test`)."""

    def expected(self, mode: str) -> tuple[Outcome, int | None]:
        keys = ["process-user", "process"] if mode == "process" and not ROOT else [mode]
        return next(self.expect[key] for key in [*keys, "*"] if key in self.expect)


def both(outcome: Outcome, exit_code: int | None) -> dict[str, tuple[Outcome, int | None]]:
    return {"*": (outcome, exit_code)}


def network() -> dict[str, tuple[Outcome, int | None]]:
    """Namespaces: the OS says no (an OSError, exit 1); process isolation: the audit hook refuses."""
    return {"namespaces": (FINISHED, 1), "process": (REFUSED, 1)}


CASES = [
    # --- time
    Case("infinite loop", "while True:\n    pass", both(TIMED_OUT, None), {"timeout": 1, "cpu_seconds": 30},
         slow=True),
    Case("sleeps forever", "import time\ntime.sleep(10**6)", both(TIMED_OUT, None), {"timeout": 1}, slow=True),
    Case("CPU limit before the wall limit", "while True:\n    pass",
         both(TIMED_OUT, -signal.SIGXCPU), {"timeout": 20, "cpu_seconds": 1}, slow=True),
    Case("ignores SIGXCPU", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass",
         both(KILLED, -signal.SIGKILL), {"timeout": 20, "cpu_seconds": 1}, slow=True),
    Case("four threads spinning", textwrap.dedent("""\
        import threading
        def spin():
            while True:
                pass
        for _ in range(4):
            threading.Thread(target=spin, daemon=True).start()
        spin()"""), both(TIMED_OUT, -signal.SIGXCPU), {"timeout": 20, "cpu_seconds": 1}, slow=True),
    # --- processes
    Case("fork bomb", textwrap.dedent("""\
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)"""), both(TIMED_OUT, None), {"timeout": 2, "max_processes": 8}, slow=True),
    Case("fork bomb is capped", textwrap.dedent("""\
        import os, time
        children = 0
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children += 1
        print(children)"""), both(FINISHED, 0), {"timeout": 10, "max_processes": 8}),
    Case("daemon escapes the process group", textwrap.dedent("""\
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        print("parent done")"""), {"*": (FINISHED, 0), "process-user": (REFUSED, 1)}, {"timeout": 10}),
    Case("orphan keeps writing after exit", textwrap.dedent("""\
        import os
        if os.fork() == 0:
            while True:
                print("still here", flush=True)
        print("parent done")"""), {"*": (FINISHED, 0), "process-user": (REFUSED, 1)}, {"timeout": 10}),
    Case("thread bomb", textwrap.dedent("""\
        import threading, time
        while True:
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()"""),
         both(FINISHED, 1), {"timeout": 10}, ("can't start new thread",)),
    # --- memory
    Case("memory hog at once", "x = bytearray(4 * 1024**3)", both(OOM, 1), {"memory_mb": 256}),
    Case("memory hog step by step", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))",
         both(OOM, 1), {"memory_mb": 256}),
    Case("zip bomb in memory", textwrap.dedent("""\
        import zlib
        packer = zlib.compressobj(9)
        zeros = bytes(2**20)
        bomb = b"".join(packer.compress(zeros) for _ in range(160)) + packer.flush()
        print(len(bomb), "compressed bytes")
        zlib.decompress(bomb)"""), both(OOM, 1), {"memory_mb": 128, "timeout": 20}, ("compressed bytes",),
         slow=True),
    Case("deep recursion past the C stack", textwrap.dedent("""\
        import sys
        sys.setrecursionlimit(10**7)
        class Node:
            def __repr__(self):
                return repr(Node())  # through C each time: the C stack overflows
        repr(Node())"""), both(KILLED, -signal.SIGSEGV), {"timeout": 20}),
    Case("deep recursion", "def down(n):\n    return down(n + 1)\ndown(0)", both(FINISHED, 1), {},
         ("RecursionError",)),
    # --- disk
    Case("one huge file", "open('big', 'wb').write(bytes(64 * 1024**2))", both(FINISHED, 1), {"file_mb": 4},
         ("File too large",)),
    Case("zip bomb to disk", textwrap.dedent("""\
        import zipfile
        with zipfile.ZipFile("bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            with archive.open("zeros", "w") as member:
                for _ in range(64):
                    member.write(bytes(2**20))
        zipfile.ZipFile("bomb.zip").extractall("out")"""), both(FINISHED, 1), {"file_mb": 8, "timeout": 20},
         ("File too large",), slow=True),
    Case("many files fill the disk", textwrap.dedent("""\
        i = 0
        while True:
            with open(f"f{i}", "wb") as f:
                f.write(bytes(2**20))
            i += 1"""), both(FINISHED, 1), {"disk_mb": 8}, ("No space left on device",), ("namespaces",)),
    # --- output and input
    Case("endless stdout", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", both(TIMED_OUT, None),
         {"timeout": 1, "max_output_bytes": 1000}, slow=True),
    Case("10 MB of stdout then exit", "print('y' * 10_000_000)", both(FINISHED, 0), {"max_output_bytes": 1000}),
    Case("5 MB of stderr", "import sys\nsys.stderr.write('e' * 5_000_000)", both(FINISHED, 0),
         {"max_output_bytes": 1000}),
    Case("stdin flood, never read", "print('ignored')", both(FINISHED, 0), {"stdin": b"z" * (20 * 2**20)},
         ("ignored",)),
    Case("stdin flood, read", "import sys\nprint(len(sys.stdin.buffer.read()))", both(FINISHED, 0),
         {"stdin": b"z" * (20 * 2**20)}, (str(20 * 2**20),)),
    Case("input() with no stdin", "input()", both(FINISHED, 1), {}, ("EOFError",)),
    Case("re-reads a small stdin", "import sys\nsys.stdin.readline()\nsys.stdin.buffer.seek(0)", both(FINISHED, 1),
         {"stdin": "marker\n"}, ("not seekable",)),  # a pipe: what was read is gone
    # --- the project's files and secrets
    Case("reads the project's README", f"print(open({str(README)!r}).read())", both(REFUSED, 1)),
    Case("lists the project", f"import os\nprint(os.listdir({str(PROJECT)!r}))", both(REFUSED, 1)),
    Case("imports the project", f"import sys\nsys.path.insert(0, {str(SRC)!r})\nimport reasonrl", both(FINISHED, 1),
         {}, ("ModuleNotFoundError",)),
    Case("reads through /proc/self/root", f"print(open('/proc/self/root' + {str(README)!r}).read())",
         both(REFUSED, 1)),
    Case("reads through a symlink", f"import os\nos.symlink({str(README)!r}, 'link')\nprint(open('link').read())",
         both(REFUSED, 1)),
    Case("reads /etc/passwd", "print(open('/etc/passwd').read())", both(REFUSED, 1)),
    Case("prints its environment", "import os\nprint(dict(os.environ))", both(FINISHED, 0), {}, ("PATH",)),
    Case("reads the parent's environment", "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())",
         both(REFUSED, 1)),
    Case("a second audit hook does not lift the first",
         f"import sys\nsys.addaudithook(lambda *args: None)\nprint(open({str(README)!r}).read())", both(REFUSED, 1)),
    # --- writing outside its directory
    Case("appends to the project's README", f"open({str(README)!r}, 'a').write('owned')", both(REFUSED, 1)),
    Case("deletes a file outside", "import os\nos.remove(DECOY_FILE)", both(REFUSED, 1)),
    Case("renames a file outside", "import os\nos.rename(DECOY_FILE, 'mine')", both(REFUSED, 1)),
    Case("removes a folder outside", "import shutil\nshutil.rmtree(DECOY)", both(REFUSED, 1)),
    Case("writes through a directory descriptor", textwrap.dedent("""\
        import os
        folder = os.open(os.path.dirname(DECOY_FILE), os.O_RDONLY)
        os.open("keep.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=folder)"""), both(REFUSED, 1)),
    Case("overwrites a file in the host's /tmp", "open(SENTINEL, 'w').write('owned')",
         {"namespaces": (FINISHED, 1), "process": (REFUSED, 1)}),
    Case("writes to /dev/shm", "open('/dev/shm/reasonrl-owned', 'w').write('x')", both(REFUSED, 1)),
    Case("shared memory that would outlive it",
         "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=2**20)",
         both(REFUSED, 1)),
    # --- network
    Case("connects out", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
         network(), {}),
    Case("serves on localhost", "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()",
         {"namespaces": (FINISHED, 0), "process": (REFUSED, 1)}),  # namespaces: a loopback of its own
    Case("resolves a name", "import socket\nprint(socket.gethostbyname('example.com'))", network(), {}),
    # --- other processes, native code, programs
    Case("kills its parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", both(REFUSED, 1)),
    Case("kills every process it can", "import os, signal\nos.kill(-1, signal.SIGKILL)", both(REFUSED, 1)),
    Case("kills its process group", "import os, signal\nos.killpg(0, signal.SIGKILL)", both(REFUSED, 1)),
    Case("ctypes", "import ctypes, os\nctypes.CDLL(None).kill(os.getppid(), 9)", both(REFUSED, 1)),
    Case("a subinterpreter", "import _xxsubinterpreters as interpreters\ninterpreters.create()", both(REFUSED, 1)),
    Case("runs a shell", "import os\nos.system('cat /etc/passwd')", both(REFUSED, 1)),
    Case("runs a program", "import subprocess\nsubprocess.run(['ls', '/'])", both(REFUSED, 1)),
    Case("raises its own limits", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
         both(FINISHED, 1), {}, ("ValueError",)),
    # --- endings
    Case("sys.exit(3)", "import sys\nsys.exit(3)", both(FINISHED, 3)),
    Case("os._exit(5)", "import os\nos._exit(5)", both(FINISHED, 5)),
    Case("SIGTERM to itself", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", both(KILLED, -signal.SIGTERM)),
    Case("abort", "import os\nos.abort()", both(KILLED, -signal.SIGABRT)),
    Case("alarm clock", "import signal, time\nsignal.alarm(1)\ntime.sleep(30)", both(KILLED, -signal.SIGALRM),
         {"timeout": 10}, slow=True),
]


def _sandbox_processes(grace: float = 2.0) -> list[int]:
    """Processes running the sandbox's child script (any role) that are still alive after `grace` seconds:
    a process killed at the end of a run may take a moment to be reaped."""
    end = time.monotonic() + grace
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and b"sandbox_child.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
        if not found or time.monotonic() > end:
            return found
        time.sleep(0.05)


def _sandbox_tempdirs() -> set[str]:
    return {path.name for path in Path(os.environ.get("TMPDIR", "/tmp")).glob("reasonrl-sandbox-*")}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Set up what a program must not touch; afterwards check it was not touched."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("untouched")
    decoy = PROJECT / f".sandbox-decoy-{uuid.uuid4().hex[:8]}"
    decoy.mkdir()
    (decoy / "keep.txt").write_text("keep me")
    readme_digest, tempdirs = _digest(README), _sandbox_tempdirs()
    fds = sorted(os.listdir("/proc/self/fd"))
    mounts = Path("/proc/self/mountinfo").read_text()
    values = {"SENTINEL": str(sentinel), "DECOY": str(decoy), "DECOY_FILE": str(decoy / "keep.txt")}
    try:
        yield values
        assert sentinel.read_text() == "untouched"
        assert (decoy / "keep.txt").read_text() == "keep me"
        assert _digest(README) == readme_digest
        assert not Path("/dev/shm/reasonrl-owned").exists()
        assert _sandbox_processes() == []
        assert _sandbox_tempdirs() == tempdirs
        assert sorted(os.listdir("/proc/self/fd")) == fds
        assert Path("/proc/self/mountinfo").read_text() == mounts  # the child's mounts stayed in its namespace
        assert os.environ["HF_TOKEN"] == SECRET
    finally:
        shutil.rmtree(decoy, ignore_errors=True)


def _program(case: Case, values: dict[str, str]) -> str:
    """The case's code with the fixture's paths bound to the names it uses."""
    header = "".join(f"{name} = {value!r}\n" for name, value in values.items() if name in case.code)
    return header + case.code


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else []) for case in CASES]
)
def test_hostile_program(case, mode, host):
    if mode not in case.modes:
        pytest.skip(f"{case.name}: not contained in {mode} isolation (see docs/RELIABILITY.md)")
    options = {"timeout": 5, **case.options}
    result = run_python(_program(case, host), isolation=mode, **options)
    outcome, exit_code = case.expected(mode)
    report = f"{result.outcome.value} {result.exit_code} {result.detail!r} {result.stderr[-400:]!r}"
    assert (result.outcome, result.exit_code) == (outcome, exit_code), report
    assert result.wall_seconds < options["timeout"] + 3  # never left running past its limit (+ kill and drain)
    for text in case.output:
        assert text in result.stdout + result.stderr, report
    assert SECRET not in result.stdout + result.stderr
    cap = options.get("max_output_bytes", 65_536)
    assert len(result.stdout.encode()) <= cap and len(result.stderr.encode()) <= cap
    if outcome is REFUSED:
        assert result.refusals and "reasonrl sandbox refused" in result.stderr
    if case.name == "fork bomb is capped":
        assert int(result.stdout) < case.options["max_processes"]  # the first failed fork ended the loop
    if case.name in ("endless stdout", "10 MB of stdout then exit"):
        assert result.stdout_truncated and len(result.stdout) == 1000 and set(result.stdout) <= {"x", "y", "\n"}
    if case.name == "5 MB of stderr":
        assert result.stderr_truncated and result.stderr == "e" * 1000 and not result.stdout_truncated


@pytest.mark.parametrize("mode", MODES)
def test_network_errors_name_the_cause(mode, host):
    """Under namespaces a connection fails in the OS; in process isolation the hook refuses it first."""
    result = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", isolation=mode)
    if mode == "namespaces":
        assert "Network is unreachable" in result.stderr
    else:
        assert result.refusals and result.refusals[0].startswith("socket.")


@pytest.mark.parametrize("mode", MODES)
def test_environment_is_emptied(mode, host):
    result = run_python("import json, os\nprint(json.dumps(dict(os.environ)))", isolation=mode)
    env = json.loads(result.stdout)
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert env["HOME"] == env["TMPDIR"] == (NAMESPACE_WORKDIR if mode == "namespaces" else env["HOME"])
    assert SECRET not in result.stdout


@pytest.mark.parametrize("mode", MODES)
def test_working_directory_is_private_writable_and_deleted(mode, host):
    code = "import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd(), sorted(os.listdir('.')))"
    first = run_python(code, isolation=mode)
    second = run_python("import os\nprint(sorted(os.listdir('.')))", isolation=mode)
    assert first.passed and first.stdout.split(" ", 1)[1] == "['main.py', 'note.txt']\n"
    assert second.stdout == "['main.py']\n"  # nothing carried over from the first run
    if mode == "process":
        assert not Path(first.stdout.split()[0]).exists()


def test_caught_refusals_are_listed_but_do_not_end_the_run(host):
    code = f"try:\n    open({str(README)!r})\nexcept PermissionError as error:\n    print('caught')\n"
    result = run_python(code)
    assert (result.outcome, result.exit_code, result.stdout) == (FINISHED, 0, "caught\n")
    assert result.refusals == (f"reading {str(README)!r} (outside the working directory and the standard library)",)


def test_a_traceback_shows_the_program_not_the_sandbox(host):
    result = run_python("def f():\n    raise ValueError('boom')\nf()")
    assert result.stderr.splitlines()[0] == "Traceback (most recent call last):"
    assert 'File "main.py", line 3, in <module>' in result.stderr and "sandbox_child" not in result.stderr
    assert result.stderr.endswith("ValueError: boom\n")


def test_stdlib_imports_work_after_dropping_privileges(host):
    code = "import json, decimal, fractions, itertools, collections, heapq, re, math, statistics, hashlib\n" \
           "print(json.dumps({'x': str(decimal.Decimal('1.1') + 1)}), 'é'.encode('idna'))"
    result = run_python(code)
    assert result.passed, result.stderr
    assert result.stdout == '{"x": "2.1"} b\'xn--9ca\'\n'


def test_run_many_keeps_order_and_runs_each_once(host):
    codes = [f"print({i} * {i})" for i in range(6)] + ["while True: pass"]
    results = run_many(codes, max_workers=3, timeout=1, cpu_seconds=30)
    assert [r.stdout for r in results[:6]] == [f"{i * i}\n" for i in range(6)]
    assert results[6].outcome is TIMED_OUT


def test_bad_arguments_are_one_line_value_errors():
    with pytest.raises(ValueError, match=r"isolation='docker' is not a mode; choose one of: namespaces, process"):
        run_python("pass", isolation="docker")
    with pytest.raises(ValueError, match=r"memory_mb=8 is too small; it must be at least 16"):
        run_python("pass", memory_mb=8)
    with pytest.raises(ValueError, match=r"disk_mb=0 is too small"):
        run_python("pass", disk_mb=0)
    with pytest.raises(ValueError, match=r"max_workers must be >= 1"):
        run_many(["pass", "pass"], max_workers=0)


def test_classify_reads_the_supervisors_status():
    assert _classify(False, 0, "exit 0\n", "", 5) == (FINISHED, 0, "exit code 0")
    assert _classify(False, 0, "signal 11\n", "", 5)[:2] == (KILLED, -11)
    assert _classify(False, 0, "signal 24\n", "", 5)[:2] == (TIMED_OUT, -24)
    assert _classify(True, -9, "", "", 5)[:2] == (TIMED_OUT, None)
    assert _classify(False, 0, "exit 1\n", "uncaught MemoryError\n", 5)[:2] == (OOM, 1)
    assert _classify(False, 0, "exit 1\n", "refused x\nuncaught refusal\n", 5)[:2] == (REFUSED, 1)
    # A program that caught its MemoryError and exited 0 finished; notes only label a failing run.
    assert _classify(False, 0, "exit 0\n", "uncaught MemoryError\n", 5)[:2] == (FINISHED, 0)
    setup = _classify(False, 70, "setup-failed OSError: unshare: Operation not permitted\n", "", 5)
    assert setup == (Outcome.ERROR, None, "setup-failed OSError: unshare: Operation not permitted")
    assert _classify(False, 1, "", "", 5)[0] is Outcome.ERROR  # no status at all: the sandbox broke


_NOBODY_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from reasonrl.sandbox import isolation, run_python
programs = {
    "read README": "print(open(%(readme)r).read())",
    "socket": "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)",
    "fork": "import os\\nif os.fork() == 0:\\n    os._exit(0)\\nprint('forked')",
    "memory": "x = bytearray(2 * 1024**3)",
    "loop": "while True: pass",
    "environment": "import os; print(sorted(os.environ))",
    "kill parent": "import os; os.kill(os.getppid(), 9)",
    "write outside": "open('/var/tmp/reasonrl-owned', 'w').write('x')",
}
report = {"isolation": isolation()}
for mode in ("namespaces", "process"):
    for name, code in programs.items():
        result = run_python(code % {"readme": sys.argv[2]}, timeout=2, isolation=mode, memory_mb=256)
        report[f"{mode} {name}"] = [result.outcome.value, result.exit_code, result.stdout]
print(json.dumps(report))
"""


@pytest.mark.skipif(not ROOT or not os.access("/usr/bin/python3", os.X_OK), reason="needs root to become nobody")
def test_unprivileged_caller_gets_user_namespaces_or_process_isolation(host):
    """The non-root paths, run by a system Python as `nobody`: user namespaces, and plain process isolation."""
    completed = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", _NOBODY_SCRIPT, str(SRC), str(README)],
        user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=120, cwd="/", check=False,
        env={"PATH": "/usr/bin:/bin", "HF_TOKEN": SECRET},
    )
    if completed.returncode != 0 and "ModuleNotFoundError" in completed.stderr:
        pytest.skip("the system Python cannot import reasonrl.sandbox here")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    userns = report["isolation"] == "namespaces"
    expected = {
        "process read README": ["refused", 1, ""],
        "process socket": ["refused", 1, ""],
        "process fork": ["refused", 1, ""],  # no uid of its own: RLIMIT_NPROC cannot be applied, so no fork
        "process memory": ["out_of_memory", 1, ""],
        "process loop": ["timed_out", None, ""],
        "process environment": ["finished", 0, "['HOME', 'LANG', 'PATH', 'TMPDIR']\n"],
        "process kill parent": ["refused", 1, ""],
        "process write outside": ["refused", 1, ""],
    }
    if userns:
        expected |= {
            "namespaces read README": ["refused", 1, ""],
            "namespaces socket": ["finished", 1, ""],  # "Network is unreachable"
            "namespaces fork": ["finished", 0, "forked\n"],
            "namespaces memory": ["out_of_memory", 1, ""],
            "namespaces loop": ["timed_out", None, ""],
            "namespaces environment": ["finished", 0, "['HOME', 'LANG', 'PATH', 'TMPDIR']\n"],
            "namespaces kill parent": ["refused", 1, ""],
            "namespaces write outside": ["refused", 1, ""],
        }
    assert {key: report[key] for key in expected} == expected
    assert not Path("/var/tmp/reasonrl-owned").exists()
    assert sys.executable  # this process survived the "kill parent" programs
