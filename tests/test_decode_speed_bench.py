"""benchmarks/decode_speed.py on a short generated clip: the report's schema, and that the shipped way of
decoding (common.qp.export_qp) reads the same QP maps every time (not timings)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from benchmarks import decode_speed
from pipeline.demo import make_demo_clip

pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="QP maps need H.264 (libx264)")


def test_report_of_a_generated_clip(tmp_path: Path) -> None:
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=24)
    out, png = tmp_path / "decode.json", tmp_path / "decode.png"
    assert decode_speed.main(["--clips", str(clip), "--repeats", "3", "--json", str(out), "--plot", str(png)]) == 0
    row = json.loads(out.read_text())["clips"]["clip.mp4"]
    assert row["frames"] == 24
    assert row["frame_threads"]["ratio_to_frame_threads"] == 1.0
    for way in decode_speed.WAYS:
        assert row[way]["fps"] > 0 and row[way]["ms_per_frame"] == pytest.approx(1000 / row[way]["fps"], rel=1e-2)
    shipped = row["slice_threads_qp"]
    assert shipped["frames_differing"] == 0 and shipped["frames_without_map"] == 0
    assert row["frame_threads_qp"]["frames_without_map"] == 0
    assert png.stat().st_size > 0


def test_no_clip_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert decode_speed.main(["--clips", str(tmp_path / "none.mp4")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
