"""How every command-line entry point reports user errors: one `error: ...` line on stderr and
EXIT_USER_ERROR, never a traceback (a traceback means a bug).

    def main(argv=None) -> int:
        args = parse(argv)                   # argparse reports its own usage errors (exit 2)
        return cli.run(lambda: work(args))   # UserError / OSError -> one line, exit 2
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from common.errors import UserError
from common.redact import mask_secrets

EXIT_USER_ERROR = 2  # as argparse's usage errors: the command was given something it cannot use
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


def error_line(exc: BaseException) -> str:
    # Masked here too: an error raised far from the source (e.g. an OSError naming its file) may quote a URL.
    return "error: " + mask_secrets(" ".join(str(exc).split("\n")).strip())


def run(work: Callable[[], int | None]) -> int:
    """Run a command's body; returns its exit code (0 when it returns None)."""
    try:
        return work() or 0
    # OSError: a disk or device problem met outside the code that knows the file's role (full disk,
    # permissions); the message names the file.
    except (UserError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
