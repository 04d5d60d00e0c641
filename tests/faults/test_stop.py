"""Fault tests: stopping `run_stream.py` as an operator does (SIGINT / SIGTERM mid-run, twice, during
start-up), and what it leaves on disk."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from background_run import Run, check_records

from common import cli

STOP_BOUND_S = 15.0  # generous: the stop takes about a second; CI machines are slow and shared
CPU = ("--set", "enhance.device=cpu", "--set", "detect.device=cpu")  # the slow enhancer that builds a backlog


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_request_ends_the_run_within_seconds(long_face_clip: Path, tmp_path: Path, sig: signal.Signals) -> None:
    run = Run(long_face_clip, tmp_path / "run", *CPU)
    run.wait_for(lambda: run.faces_on_disk() >= 2, "the first faces")
    seconds = run.stop(sig)
    out, stderr = run.out, run.stderr
    assert run.proc.returncode == 0, stderr
    assert seconds < STOP_BOUND_S, f"{sig.name} took {seconds:.1f} s"
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    faces = check_records(out)
    assert summary["interrupted"] is True and summary["faces_written"] == len(faces)
    assert summary["frames_processed"] < summary["frames_expected"], "the reading stopped"
    # ARASFSR on a CPU is far slower than detection: the queued backlog was skipped, and counted
    assert summary["faces_skipped_at_stop"] > 0
    assert f"{summary['faces_skipped_at_stop']} skipped at stop" in run.stdout, "the end-of-run line says so too"
    assert (out / "index.html").is_file() and not (out / ".lock").exists()
    ends = {r["track_id"] for r in map(json.loads, (out / "tracks.jsonl").read_text().splitlines())
            if r["type"] == "track_end"}
    assert ends == {f["track_id"] for f in faces}, "every track with faces is ended"


def test_a_second_sigint_exits_at_once_with_valid_records(long_face_clip: Path, tmp_path: Path) -> None:
    run = Run(long_face_clip, tmp_path / "run", *CPU)
    run.wait_for(lambda: run.faces_on_disk() >= 2, "the first faces")
    seconds = run.stop(signal.SIGINT, signal.SIGINT)
    stderr = run.stderr
    assert run.proc.returncode == 130, stderr
    assert seconds < 5, f"the second SIGINT took {seconds:.1f} s"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "SIGINT again" in errors[0] and "Traceback" not in stderr, stderr
    assert len(check_records(run.out)) >= 2
    assert not (run.out / "summary.json").exists()


def test_sigint_during_start_up_is_one_line_and_exit_130(tmp_path: Path) -> None:
    run = Run("demo", tmp_path / "run")  # start-up: the folder is held, then the clip is made and the models load
    run.wait_for(lambda: (run.out / ".lock").exists(), "the output folder to be held")
    run.stop(signal.SIGINT)
    assert run.proc.returncode == 130, run.stderr
    assert run.stderr.strip() == "error: interrupted"
    assert not (run.out / ".lock").exists() and not (run.out / "tracks.jsonl").exists()


def test_an_interrupt_that_native_code_turns_into_another_error_is_still_one_line_and_130(capsys) -> None:
    """What the start-up test above met once in CI: SIGINT while safetensors loaded the model came out of
    the loader as a ValueError (a traceback, exit 1)."""
    def loading_the_model():
        try:
            cli.interrupt()  # what the start-up signal handler does
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    assert cli.run(loading_the_model) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "error: interrupted"

    def a_bug():  # the next command: a bug is a bug again, not an interruption
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        cli.run(a_bug)
