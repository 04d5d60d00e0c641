"""Checks shared by the fault tests (a module, not conftest.py: tests/ has a conftest of its own)."""
from __future__ import annotations


def assert_one_error_line(err: str, *needles: str) -> str:
    """`err` (a run's stderr, log lines included) ends in one `error: ...` line naming every needle,
    and holds no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]
