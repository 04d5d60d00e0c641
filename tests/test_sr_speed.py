"""benchmarks/sr_speed.py: the report's schema and sane values on a tiny model (never its timings)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import sr_speed

TINY = """\
encoder: {name: edsr, n_resblocks: 1, n_feats: 8}
decoder: {hidden: 16, layers: 2}
local_frequency: {enabled: true, latent: 4, token: 2, width: 4}
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_report_schema_and_values(tiny_config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed.json"
    argv = ["--weights", f"config:{tiny_config}", "--lr", "12", "--out", "16", "--batch", "1", "3",
            "--repeats", "2", "--threads", "1", "--json", str(out)]
    assert sr_speed.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "sr_speed" and report["threads"] == 1 and report["repeats"] == 2
    assert [(c["lr"], c["out"], c["batch"], c["device"]) for c in report["cells"]] == [
        (12, 16, 1, "cpu"), (12, 16, 3, "cpu")]  # no CUDA cell unless CUDA is there
    for cell in report["cells"]:
        assert cell["weights"] == "tiny (random)"
        assert set(cell["methods"]) == {"fast", "reference", "bicubic", "bicubic_device"}
        for stats in cell["methods"].values():
            assert stats["calls"] == 2
            assert 0 < stats["p50_ms"] <= stats["p99_ms"]
            assert stats["faces_per_s"] == pytest.approx(1000 * cell["batch"] / stats["p50_ms"], rel=1e-3)
            assert stats["rss_peak_mb"] > 10  # a Python process with torch loaded
        fast, ref, bic = (cell["methods"][m]["faces_per_s"] for m in ("fast", "reference", "bicubic"))
        assert cell["ratios"]["fast_over_reference"] == pytest.approx(fast / ref, rel=1e-3)
        assert cell["ratios"]["fast_over_bicubic"] == pytest.approx(fast / bic, rel=1e-3)
    table = capsys.readouterr().out
    assert table.count("| tiny (random) | cpu | 12 -> 16 |") == 2


def test_quick_is_the_documented_subset(tiny_config: Path) -> None:
    args = sr_speed.parse_args(["--quick", "--weights", f"config:{tiny_config}"])
    assert (args.lr, args.out, args.batch, args.device) == ([28], [112], [1, 8], ["cpu"])
    assert args.weights == [f"config:{tiny_config}"]
    assert len(sr_speed.parse_args(["--quick"]).weights) == 2  # the full decoder and ARASFSR-LM


def test_methods_subset_and_plot(tiny_config: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "speed.json", tmp_path / "speed.png"
    argv = ["--weights", f"config:{tiny_config}", "--lr", "12", "--out", "16", "--batch", "2", "--repeats", "1",
            "--methods", "fast", "bicubic", "bicubic_device", "--max-queries", "7", "--json", str(out),
            "--plot", str(png)]
    assert sr_speed.main(argv) == 0
    report = json.loads(out.read_text())
    cell, = report["cells"]
    assert report["max_queries"] == 7
    assert set(cell["methods"]) == {"fast", "bicubic", "bicubic_device"}
    assert set(cell["ratios"]) == {"fast_over_bicubic", "fast_over_bicubic_device"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert sr_speed.main(["--weights", str(tmp_path / "missing.safetensors"), "--lr", "12", "--out", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "missing.safetensors" in err[-1]
    with pytest.raises(SystemExit) as exc:
        sr_speed.parse_args(["--lr", "4"])
    assert exc.value.code == 2


def test_runtime_column(tiny_config: Path, tmp_path: Path, capsys) -> None:
    from models.onnx_runtime import available

    if not available():
        pytest.skip("onnxruntime, onnx or onnxscript is not installed")
    out = tmp_path / "speed.json"
    argv = ["--weights", f"config:{tiny_config}", "--lr", "12", "--out", "16", "--batch", "2", "--repeats", "1",
            "--methods", "fast", "--runtime", "torch", "onnxruntime", "--device", "cpu", "--json", str(out)]
    assert sr_speed.main(argv) == 0
    [cell] = json.loads(out.read_text())["cells"]
    assert set(cell["methods"]) == {"fast", "fast_onnxruntime"}
    torch_rate, ort_rate = (cell["methods"][m]["faces_per_s"] for m in ("fast", "fast_onnxruntime"))
    assert cell["ratios"] == {"onnxruntime_over_torch": pytest.approx(ort_rate / torch_rate, rel=1e-3)}
    assert "onnxruntime / torch" in capsys.readouterr().out
