"""HTML report from a run folder written by DiskSink (+ identities.jsonl, summary.json)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.records import AlignedFace, Detection, EnhancedFace, TrackEnd
from pipeline.report import write_report
from pipeline.sinks import DiskSink

S = 48


def face(track_id: int, frame_index: int, quality: float | None, method: str = "arasfsr") -> EnhancedFace:
    rng = np.random.default_rng(frame_index)
    det = Detection(np.array([1.0, 2, 20, 24]), 0.95, np.ones((5, 2)))
    aligned = AlignedFace(track_id, frame_index, rng.integers(0, 255, (16, 16, 3), np.uint8),
                          np.eye(2, 3), 16, quality, det, pts_time=frame_index / 25)
    return EnhancedFace(aligned, rng.integers(0, 255, (S, S, 3), np.uint8), 3.0, method)


class _Srcs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    with DiskSink(tmp_path, S) as sink:
        for f in range(12):
            sink.write(face(3, f, quality=0.9 if f == 5 else 0.1))
        sink.write(face(11, 40, quality=None, method="<b>bicubic</b>"))
        sink.write(face(12, 41, quality=0.5))
        sink.end_track(TrackEnd(12, frame_index=50, first_frame=38, last_frame=41, faces_seen=4, reason="lost"))
        sink.write_summary({"frames_decoded": 50, "faces": 14, "fps": {"detect": 12.5},
                            "config": {"enhance": {"output_size": S}}})
    with open(tmp_path / "tracks.jsonl", "a") as f:
        f.write('{"track_id": 99, "frame_ind')  # a line torn by a crash
    events = [{"track_id": 3, "identity": "alice", "score": 0.31, "votes": 3, "frames": 4, "final": False},
              {"track_id": 3, "identity": "bob", "score": 0.28, "votes": 8, "frames": 12, "final": True},
              {"track_id": 11, "identity": "<script>alert(1)</script>", "score": 0.2, "votes": 1,
               "frames": 1}]
    (tmp_path / "identities.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return tmp_path


def test_report_content(run_dir: Path) -> None:
    page = write_report(run_dir, strip=4).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for tid in (3, 11, 12):
        assert f'id="track-{tid}"' in page and f"Track {tid}" in page
    assert "track-99" not in page
    assert "bob" in page and "alice" not in page  # the last event per track wins
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bicubic&lt;/b&gt;" in page
    assert "frames_decoded" in page and "detect: 12.5" in page
    assert "<details><summary>show</summary><pre>{\n  &quot;enhance&quot;" in page
    assert "0.00s - 0.44s" in page and "faces 12" in page
    assert "image-rendering:pixelated" in page
    assert "best face: frame 5" in page  # track 3's highest quality
    assert "tracked frames 38-41, 4 detections (lost)" in page  # track 12's end; 3 and 11 have none yet
    assert page.count("tracked frames") == 1
    assert not list(run_dir.glob(".*.tmp"))


def test_report_images_exist(run_dir: Path) -> None:
    parser = _Srcs()
    parser.feed(write_report(run_dir, strip=4).read_text())
    srcs = [img["src"] for img in parser.imgs]
    assert all((run_dir / s).is_file() for s in srcs), srcs
    assert "tracks/3/5_lr.png" in srcs and "tracks/3/5_bicubic.png" in srcs and "tracks/3/5.png" in srcs
    lr = next(img for img in parser.imgs if img["src"] == "tracks/3/5_lr.png")
    assert lr["class"] == "lr" and lr["width"] == lr["height"] == str(S)  # LR shown at output size
    strip3 = [s for s in srcs if re.fullmatch(r"tracks/3/\d+\.png", s)]
    # the best face (frame 5), then a strip of 4 spread over frames 0..11
    assert strip3 == [f"tracks/3/{f}.png" for f in (5, 0, 4, 7, 11)]


def test_report_without_comparison_or_identities(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S, save_comparison=False) as sink:
        sink.write(face(1, 0, 0.5))
    page = write_report(tmp_path).read_text()
    assert "Track 1" in page and "LR 16 px (nearest): n/a" in page and "class=\"ident" not in page


def test_report_empty_and_missing(tmp_path: Path) -> None:
    with DiskSink(tmp_path / "run", S):
        pass
    assert "No faces in this run" in write_report(tmp_path / "run").read_text()
    with pytest.raises(PipelineError, match="no tracks.jsonl"):
        write_report(tmp_path / "nothing")


def test_report_reads_the_run_folder_without_the_recognition_stage() -> None:
    code = "import sys, pipeline.report; print('pipeline.recognition' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize("crop", [16, 75])  # enlarged, and shrunk (where cv2's plain cubic would alias)
def test_report_bicubic_image_is_the_enhancers_bicubic(tmp_path: Path, crop: int) -> None:
    import cv2

    from pipeline.enhance import Enhancer, EnhancerConfig

    rng = np.random.default_rng(crop)
    det = Detection(np.array([1.0, 2, 20, 24]), 0.95, np.ones((5, 2)))
    aligned = AlignedFace(1, 0, rng.integers(0, 255, (crop, crop, 3), np.uint8), np.eye(2, 3), crop, 0.5, det)
    [enhanced] = Enhancer(EnhancerConfig(method="bicubic", output_size=S))([aligned])
    with DiskSink(tmp_path, S) as sink:
        rec = sink.write(enhanced)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / rec["bicubic_image"])), enhanced.sr)
