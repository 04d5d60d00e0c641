"""benchmarks/multicam.py on a short generated clip, one camera, files only: the report's schema and that its
figures are consistent with each other (not timings)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import multicam
from pipeline.demo import make_demo_clip

FRAMES = 20


def test_quick_report_one_camera_from_files(tmp_path: Path, capsys) -> None:
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=FRAMES)
    out, png = tmp_path / "multicam.json", tmp_path / "multicam.png"
    argv = ["--quick", "--clip", str(clip), "--set", "enhance.method=bicubic", "--set", "detect.min_face_size=24",
            "--note", "test", "--json", str(out), "--plot", str(png)]
    assert multicam.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "multicam" and report["note"] == "test" and report["clip"] == "clip.mp4"
    assert report["frames_per_camera"] == FRAMES and report["overrides"][0] == "enhance.method=bicubic"
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch_threads"] >= 1
    assert [(r["cameras"], r["source"]) for r in report["runs"]] == [(1, "file")]
    run = report["runs"][0]
    for name in multicam.ARMS:
        arm = run[name]
        assert arm["processes"] == 1
        assert arm["startup_s"] > 0 and arm["window_s"] > 0
        assert 0 < arm["frames_processed"] < FRAMES  # the frames before the window opened are left out
        assert arm["faces_written"] > 0
        assert arm["faces_per_s"] == pytest.approx(arm["faces_written"] / arm["window_s"], rel=1e-2)
        assert 0 < arm["cpu_s"] and arm["faces_per_cpu_s"] == pytest.approx(arm["faces_written"] / arm["cpu_s"],
                                                                             rel=1e-2)
        assert arm["camera_fps"] == [pytest.approx(arm["frames_processed"] / arm["window_s"], rel=1e-2)]
        assert arm["frames_dropped"] == 0  # a file waits: nothing is dropped
        assert arm["peak_rss_mb"] == pytest.approx(sum(arm["peak_rss_mb_each"])) and arm["peak_rss_mb"] > 100
        assert {"detect", "track", "align", "select", "enhance", "sink"} <= set(arm["stage_seconds"])
    one, sep = run["one_process"], run["separate"]
    assert run["ratios"] == {"faces_per_s": pytest.approx(one["faces_per_s"] / sep["faces_per_s"], rel=1e-3),
                             "faces_per_cpu_s": pytest.approx(one["faces_per_cpu_s"] / sep["faces_per_cpu_s"], rel=1e-3),
                             "peak_rss_mb": pytest.approx(one["peak_rss_mb"] / sep["peak_rss_mb"], rel=1e-3)}
    assert png.stat().st_size > 0
    assert "| 1 | file |" in capsys.readouterr().out


def test_missing_clip_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert multicam.main(["--quick", "--clip", str(tmp_path / "none.mp4")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --clip {tmp_path / 'none.mp4'}: no such file"
