"""What the speed benchmarks (sr_speed, pipeline_speed, cpu_runtimes, multicam) share: their output options, how
they write JSON and figures, get matplotlib and report errors."""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from common import cli
from common.errors import UserError


def add_output_args(ap: argparse.ArgumentParser, plot: str | None = None) -> None:
    """--note, --json and, when `plot` (its help) is given, --plot."""
    ap.add_argument("--note", default=None, help="free text stored in the JSON (e.g. the machine's load)")
    ap.add_argument("--json", type=Path, help="write the report here")
    if plot:
        ap.add_argument("--plot", type=Path, help=plot)


def write_json(report: dict, path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))


def pyplot():
    """matplotlib's pyplot, headless; a missing matplotlib is a user error (it is not a dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install matplotlib)") from None
    return plt


def save_figure(fig, path: Path) -> None:
    """Write a pyplot figure as a PNG (its folder made) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def run_benchmark(work: Callable[[], object], logger: logging.Logger) -> int:
    """Run a benchmark's body as a CLI: `logger`'s progress at INFO, other libraries' chatter at WARNING
    (the ONNX exporters log every step at INFO), user errors as one line (common.cli.run)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    return cli.run(lambda: work() and None)
