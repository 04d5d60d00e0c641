"""Fault tests: the output folder as users get it wrong: two runs on one folder, --overwrite on a folder
that also holds their own files, and the demo's generated clip (kept inside --out)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
from background_run import ROOT, Run, check_records
from pipeline.files import is_temporary

QUICK = ("-q", "--set", "enhance.method=bicubic", "--set", "runtime.max_frames=6")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def settled_files(folder: Path) -> set[str]:
    """The files of a run going on, but the temporary file of a write in progress (renamed a moment later)."""
    return {name for name in files(folder) if not is_temporary(Path(name))}


def test_a_second_run_on_a_held_folder_is_refused_naming_the_holder(long_face_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = Run(long_face_clip, out, "--set", "enhance.device=cpu")
    first.wait_for(lambda: first.faces_on_disk() >= 1, "the first run's first faces")
    before = settled_files(out)
    for overwrite in ((), ("--overwrite",)):
        second = run_cli("--source", str(long_face_clip), "--out", str(out), *QUICK, *overwrite)
        assert second.returncode == 2
        error = one_error_line(second.stderr)
        assert f"is in use by another run (pid {first.proc.pid})" in error and str(out) in error
    assert before <= settled_files(out), "the second run deleted nothing"
    assert first.proc.poll() is None, "and the first one goes on"
    first.stop(signal.SIGINT)
    assert first.proc.returncode == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faces_written"] == len(check_records(out)), "one run's output, not a mix"


def test_overwrite_keeps_the_users_files_and_the_demo_stays_inside_out(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli("--source", "demo", "--out", str(out), *QUICK).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "nothing is written beside --out"
    assert (out / "input/demo.mp4").is_file()
    mine = {"notes.txt": "my notes", "tracks/README.txt": "my readme", "input/cam2.mp4": "my clip"}
    for name, text in mine.items():
        (out / name).write_text(text)

    res = run_cli("--source", "demo", "--out", str(out), *QUICK, "--set", "enhance.output_size=96")
    assert res.returncode == 2 and "already holds a run" in one_error_line(res.stderr)
    res = run_cli("--source", "demo", "--out", str(out), *QUICK, "--set", "enhance.output_size=96", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert all((out / name).read_text() == text for name, text in mine.items())
    faces = check_records(out)
    assert faces and all(f["output_size"] == 96 for f in faces)
    images = {f for f in files(out) if f.startswith("tracks/") and f.endswith(".png")}
    assert images == {f[k] for f in faces for k in ("image", "lr_image", "bicubic_image")}, "no old image is left"
    assert all(cv2.imread(str(out / f["image"])).shape == (96, 96, 3) for f in faces), "replaced, not mixed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_holding_only_the_users_index_html_keeps_it(tmp_path: Path, long_face_clip: Path) -> None:
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("<html>my own site</html>")
    for overwrite in ((), ("--overwrite",)):
        res = run_cli("--source", str(long_face_clip), "--out", str(out), *QUICK, *overwrite)
        assert res.returncode == 2
        error = one_error_line(res.stderr)
        assert f"{out / 'index.html'} was not written by this program" in error
    assert (out / "index.html").read_text() == "<html>my own site</html>"
    assert files(out) == {"index.html"}, "nothing was written"
