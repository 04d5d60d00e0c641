"""benchmarks/cpu_runtimes.py: its fixed-shape graph equals `upscale`, runtimes that are not installed are skipped
with a message, and the report's schema (never its timings)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import cpu_runtimes
from models import build_model

TINY = {"encoder": {"name": "edsr", "n_resblocks": 1, "n_feats": 8}, "decoder": {"hidden": 16, "layers": 2},
        "local_frequency": {"enabled": True, "latent": 4, "token": 2, "width": 4}}


@pytest.mark.parametrize("decoder", [{"hidden": 16, "layers": 3}, {"hidden": 16, "layers": 3, "render": 8}])
def test_fixed_shape_graph_equals_upscale(decoder: dict) -> None:
    torch.manual_seed(0)
    model = build_model(TINY | {"decoder": decoder}).eval()
    model.max_queries = 100  # several query chunks, the last one partial
    lr = torch.rand(3, 3, 10, 10)
    graph = cpu_runtimes.FixedShapeUpscale(model, batch=3, lr_px=10, out_px=21)
    with torch.inference_mode():
        out = graph(lr)
    assert out.shape == (3, 3, 21, 21)
    torch.testing.assert_close(out, model.upscale(lr, (21, 21)), atol=1e-5, rtol=0)


def test_report_and_missing_runtimes(tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY))  # YAML is a superset of JSON
    real = cpu_runtimes.installed
    monkeypatch.setattr(cpu_runtimes, "installed", lambda m: False if m in ("onnxruntime", "openvino") else real(m))
    out = tmp_path / "rt.json"
    argv = ["--weights", f"config:{config}", "--batch", "2", "--lr", "10", "--out", "16", "--repeats", "2",
            "--threads", "1", "--runtimes", "eager", "channels_last", "fixed_graph", "onnxruntime", "openvino", "--json", str(out)]
    assert cpu_runtimes.main(argv) == 0
    report = json.loads(out.read_text())
    row, = report["weights"]
    assert set(row["runtimes"]) == {"eager", "channels_last", "fixed_graph"}
    assert set(row["skipped"]) == {"onnxruntime", "openvino"}
    assert "onnxruntime is not installed" in caplog.text and "openvino is not installed" in caplog.text
    assert row["fixed_graph_max_abs_diff"] <= 1e-5
    for r in row["runtimes"].values():
        assert r["equal"] and r["max_abs_diff_vs_eager"] <= 1e-4
        assert r["calls"] == 2 and r["faces_per_s"] > 0 and r["speedup_vs_eager"] > 0
    assert row["runtimes"]["eager"]["speedup_vs_eager"] == 1.0
    assert "skipped: onnxruntime is not installed" in capsys.readouterr().out
