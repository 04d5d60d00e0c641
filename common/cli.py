"""How every command-line entry point reports user errors: one `error: ...` line on stderr and
EXIT_USER_ERROR, never a traceback (a traceback means a bug).

    def main(argv=None) -> int:
        args = parse(argv)                   # argparse reports its own usage errors (exit 2)
        return cli.run(lambda: work(args))   # UserError / OSError -> one line, exit 2
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from common.errors import UserError
from common.redact import mask_secrets

EXIT_USER_ERROR = 2  # as argparse's usage errors: the command was given something it cannot use
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


def error_line(exc: BaseException) -> str:
    # Masked here too: an error raised far from the source (e.g. an OSError naming its file) may quote a URL.
    return "error: " + mask_secrets(" ".join(str(exc).split("\n")).strip())


_interrupted = threading.Event()


def interrupt() -> None:
    """Abort the command as Ctrl-C does (from a signal handler): raise KeyboardInterrupt, and remember that
    the user asked for it. Native code may turn the KeyboardInterrupt into another exception on its way
    out (safetensors' loader, interrupted while the model loads, raises a ValueError about a torch
    storage); `run` still reports that as the interruption it is, not as a bug."""
    _interrupted.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for a few statements that must not be cut in two (a lock file created but
    its holder not yet recorded, so nothing would remove it): a signal that comes meanwhile is only noted, and
    raised again when the block ends, where the command's own handler (or Python's Ctrl-C) then acts on it.

    Python runs signal handlers in the main thread only, so only its statements can be cut; elsewhere this
    holds nothing back.

    >>> with signals_deferred():
    ...     pass  # e.g. create a file and record that we hold it
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: came.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in came:
            signal.raise_signal(s)


def run(work: Callable[[], int | None]) -> int:
    """Run a command's body; returns its exit code (0 when it returns None)."""
    _interrupted.clear()  # a new command
    try:
        return work() or 0
    except KeyboardInterrupt:
        return _report_interrupted()
    except Exception as exc:
        if _interrupted.is_set():  # whatever it became on the way out, the user stopped the command
            return _report_interrupted()
        # OSError: a disk or device problem met outside the code that knows the file's role (full disk,
        # permissions); the message names the file.
        if isinstance(exc, (UserError, OSError)):
            print(error_line(exc), file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def _report_interrupted() -> int:
    print("error: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
