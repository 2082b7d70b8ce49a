"""What the CLI tests share: run `reasonrl` in-process or as a subprocess, check a one-line error, snapshot a folder.

Imported by the test modules as `cli_helpers` (pytest puts tests/ on sys.path).
"""

import logging
import os
import subprocess
import sys

from reasonrl.cli import main


def snapshot(folder):
    """Every file under `folder` with its bytes and modification time."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_one_line_error(code, err, command, phrases):
    assert "Traceback" not in err, err[-3000:]
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"reasonrl {command}: error: "), err[-3000:]
    assert sum("error:" in line for line in lines) == 1, err[-3000:]
    message = lines[-1]
    print(message)  # shown by pytest -rP
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    return message


def run_main(capsys, argv):
    """main(argv) in-process: (exit code, stderr)."""
    # datasets and transformers log through a handler bound to the sys.stderr of their import, which in a test run
    # may be an earlier test's closed capture; point it at this call's stderr, as a real run's is at the real one
    import datasets.utils.logging
    import transformers.utils.logging

    datasets.utils.logging.get_logger(), transformers.utils.logging.get_logger()  # their handlers exist
    handlers = [handler for name in ("datasets", "transformers") for handler in logging.getLogger(name).handlers
                if type(handler) is logging.StreamHandler]
    previous = [sys.__stderr__ if handler.stream is sys.stderr else handler.stream for handler in handlers]
    for handler in handlers:
        handler.stream = sys.stderr
    try:
        code = main([str(arg) for arg in argv])
    finally:
        for handler, stream in zip(handlers, previous):
            handler.stream = stream
    return code, capsys.readouterr().err


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "reasonrl", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


