"""benchmarks/pipeline_speed.py on a short generated clip: the report's schema and consistency (not timings)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import pipeline_speed
from pipeline.demo import make_demo_clip

FRAMES = 4  # one detector call per preset with detect.every=4: the test stays quick


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_clip(tmp_path_factory.mktemp("clip") / "demo.mp4", n_frames=20)


def test_report_per_preset_and_clip(clip: Path, tmp_path: Path, capsys, caplog) -> None:
    out = tmp_path / "speed.json"
    missing = tmp_path / "absent.mp4"
    argv = ["--presets", "cpu-fast", str(pipeline_speed.ROOT / "configs/cctv.yaml"), "--clips", str(missing),
            str(clip), "--frames", str(FRAMES), "--set", "enhance.method=bicubic", "--set", "detect.every=4", "--set", "detect.min_face_size=40", "--json", str(out)]
    assert pipeline_speed.main(argv) == 0
    assert f"skipped clip {missing}: not found" in caplog.text
    report = json.loads(out.read_text())
    assert report["frames_limit"] == FRAMES
    assert [(r["clip"], r["preset"]) for r in report["runs"]] == [("demo.mp4", "cpu-fast"), ("demo.mp4", "cctv")]
    for run in report["runs"]:
        assert run["decode_only"]["frames"] == run["end_to_end"]["frames"] == FRAMES
        assert run["decode_only"]["fps"] > 0 and run["end_to_end"]["fps"] > 0
        assert run["end_to_end_over_decode"] == pytest.approx(run["end_to_end"]["fps"] / run["decode_only"]["fps"],
                                                              rel=1e-3)
        assert {"detect", "track", "align", "select"} <= set(run["stage_seconds"])
        assert run["stage_seconds"] == {name: s["seconds"] for name, s in run["stages"].items()}
        working = {k: v for k, v in run["stage_seconds"].items() if k != "wait_for_frames"}
        assert run["slowest_stage"] == max(working, key=working.get)
        assert run["enhance_method"] == "bicubic"
    assert f"| demo.mp4 | cctv | {FRAMES} |" in capsys.readouterr().out


def test_slowest_stage_leaves_out_waits() -> None:
    stages = {"wait_for_frames": {"seconds": 9.0}, "detect": {"seconds": 2.0}, "enhance": {"seconds": 3.0}}
    assert pipeline_speed.slowest_stage(stages) == "enhance"


def test_no_clip_and_bad_preset_are_one_line_errors(clip: Path, tmp_path: Path, capsys) -> None:
    assert pipeline_speed.main(["--presets", "cctv", "--clips", str(tmp_path / "none.mp4")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: no clip to run on: {tmp_path / 'none.mp4'} not found"
    assert pipeline_speed.main(["--presets", "nosuch", "--clips", str(clip)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: preset ")
