"""Fixtures for fault tests: the command line run as a user runs it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """run_stream.py's main in this process (fast: for errors met before any video is read);
    returns (exit code, stdout, stderr)."""
    import run_stream

    def run(*args: str) -> tuple[int, str, str]:
        # main installs its stop handlers for the run; a Ctrl-C (or a later test's signal) must not reach them
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = run_stream.main([str(a) for a in args])
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def run_process() -> Callable[..., subprocess.CompletedProcess]:
    """run_stream.py as a separate process, exactly as a user starts it (log lines included)."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run
