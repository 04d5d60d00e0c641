"""ONNX Runtime as the enhancer's CPU runtime (models/onnx_runtime.py, enhance.runtime): the same output as
torch's `upscale`, the exported graphs cached and re-exported when the cache is bad, and the config's errors."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_model, load_model, onnx_runtime
from models.arasfsr import NonFiniteOutput
from pipeline.config import load_config
from pipeline.enhance import Enhancer, EnhancerConfig
from pipeline.errors import ConfigError
from pipeline.records import AlignedFace, Detection

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {name: ROOT / f"models/weights/{name}.safetensors" for name in ("arasfsr_paper", "arasfsr_lm")}

pytestmark = pytest.mark.skipif(not onnx_runtime.available(),
                                reason=f"onnxruntime, onnx or onnxscript is not installed ({onnx_runtime.INSTALL})")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The graphs of both shipped weights, exported once for the module, laid out as the default cache
    (XDG_CACHE_HOME/facesr/onnx) so that the enhancer finds them too."""
    return tmp_path_factory.mktemp("xdg") / "facesr" / "onnx"


@pytest.fixture(scope="module")
def models(cache) -> dict[str, tuple[torch.nn.Module, onnx_runtime.OnnxRuntime]]:
    out = {}
    for name, path in WEIGHTS.items():
        model = load_model(path, "cpu")
        out[name] = model, onnx_runtime.OnnxRuntime(model, threads=1, cache_dir=cache)
    return out


def crops(*sides: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, side, side + 3 * (i % 2), generator=generator) for i, side in enumerate(sides)]


def upscale(model, runtime, lr, size, **kwargs) -> torch.Tensor:
    model.runtime = runtime
    try:
        return model.upscale(lr, size, **kwargs)
    finally:
        model.runtime = None


@pytest.mark.parametrize("name", list(WEIGHTS))
@pytest.mark.parametrize("out", [112, 160])
def test_onnxruntime_equals_torch_for_mixed_crop_sizes(models, name, out):
    model, runtime = models[name]
    lr = crops(14, 20, 28, 20)  # three size groups, one with two images, in one call
    expected = model.upscale(lr, (out, out))
    got = upscale(model, runtime, lr, (out, out))
    assert got.shape == expected.shape == (4, 3, out, out)
    assert (got - expected).abs().max().item() <= 1e-4


def test_a_second_load_uses_the_cache(models, cache):
    model, _ = models["arasfsr_lm"]
    files = sorted(cache.glob("*.onnx"))
    assert len(files) == 4  # encoder and render graph of each weights
    mtimes = [f.stat().st_mtime_ns for f in files]
    exports = onnx_runtime.OnnxRuntime.exports
    runtime = onnx_runtime.OnnxRuntime(model, cache_dir=cache)
    assert onnx_runtime.OnnxRuntime.exports == exports
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    lr = crops(20, 28)
    assert (upscale(model, runtime, lr, (112, 112)) - model.upscale(lr, (112, 112))).abs().max().item() <= 1e-4


def test_a_corrupt_or_foreign_cache_file_is_exported_again(models, cache, tmp_path, caplog):
    model, _ = models["arasfsr_lm"]
    key = onnx_runtime.cache_key(model)
    shutil.copytree(cache, tmp_path, dirs_exist_ok=True)
    encoder, render = tmp_path / f"{key}.encoder.onnx", tmp_path / f"{key}.render.onnx"
    render.write_bytes(render.read_bytes()[:1000])  # truncated: not a graph
    # the other weights' encoder: loads and runs (its output has this one's shape), and differs from this model
    shutil.copy(tmp_path / f"{onnx_runtime.cache_key(models['arasfsr_paper'][0])}.encoder.onnx", encoder)
    exports = onnx_runtime.OnnxRuntime.exports
    with caplog.at_level(logging.WARNING, logger="models.onnx_runtime"):
        runtime = onnx_runtime.OnnxRuntime(model, cache_dir=tmp_path)
    assert onnx_runtime.OnnxRuntime.exports == exports + 2
    assert "is unreadable" in caplog.text and "does not match the model" in caplog.text
    lr = crops(14, 28)
    assert (upscale(model, runtime, lr, (112, 112)) - model.upscale(lr, (112, 112))).abs().max().item() <= 1e-4
    exports = onnx_runtime.OnnxRuntime.exports
    onnx_runtime.OnnxRuntime(model, cache_dir=tmp_path)  # the files were replaced by good ones
    assert onnx_runtime.OnnxRuntime.exports == exports


def test_a_model_without_skip_and_modulation(tmp_path):
    """LIIF's configuration: the render graph has no `up` and no `g` input."""
    torch.manual_seed(0)
    model = build_model({"encoder": {"name": "edsr", "n_resblocks": 1, "n_feats": 8}, "decoder": {"hidden": 16},
                         "local_frequency": {"enabled": False}, "global_coordinate": {"enabled": False},
                         "skip": False}).eval()
    runtime = onnx_runtime.OnnxRuntime(model, threads=1, cache_dir=tmp_path)
    lr = crops(9, 16)
    assert (upscale(model, runtime, lr, (40, 40)) - model.upscale(lr, (40, 40))).abs().max().item() <= 1e-4


def test_amp_is_ignored_and_changed_weights_detach_the_runtime(models):
    model, runtime = models["arasfsr_lm"]
    lr = crops(20)
    plain = upscale(model, runtime, lr, (112, 112))
    assert torch.equal(upscale(model, runtime, lr, (112, 112), amp="fp16"), plain)  # CPU-only: no autocast
    model.runtime = runtime
    model.load_state_dict(model.state_dict())
    assert model.runtime is None  # its graphs would hold the old weights


def test_non_finite_output_still_raises_and_falls_back_to_bicubic(models, cache, monkeypatch, caplog):
    model, runtime = models["arasfsr_lm"]
    render = runtime.render

    def nan_for_the_first_image(*args):
        rgb = render(*args)
        rgb[0] = float("nan")
        return rgb

    monkeypatch.setattr(runtime, "render", nan_for_the_first_image)
    model.runtime = runtime
    try:
        with pytest.raises(NonFiniteOutput) as info:
            model.upscale_uint8([np.full((20, 20, 3), 128, np.uint8)] * 2, (112, 112))
    finally:
        model.runtime = None
    assert info.value.finite.tolist() == [False, True]

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache.parents[1]))
    enh = Enhancer(EnhancerConfig(weights=str(WEIGHTS["arasfsr_lm"]), runtime="onnxruntime", device="cpu"))
    monkeypatch.setattr(enh.model.runtime, "render", nan_for_the_first_image)
    with caplog.at_level(logging.WARNING):
        out = enh([aligned(20, 0), aligned(20, 1)])
    assert [o.method for o in out] == ["bicubic", "arasfsr"] and enh.fallbacks == 1


def aligned(side: int, frame_index: int) -> AlignedFace:
    rng = np.random.default_rng(frame_index)
    crop = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    det = Detection(np.array([0, 0, 40.0, 40.0]), 0.99, np.zeros((5, 2)))
    return AlignedFace(1, frame_index, crop, np.eye(2, 3), side, 0.5, det)


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_the_enhancer_on_onnxruntime_writes_the_same_faces_as_on_torch(models, cache, monkeypatch, caplog, name):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache.parents[1]))  # the module's exports: no new one
    exports = onnx_runtime.OnnxRuntime.exports
    faces = [aligned(side, i) for i, side in enumerate((14, 20, 28, 160))]
    common = dict(weights=str(WEIGHTS[name]), device="cpu", batch_size=4)
    torch_out = Enhancer(EnhancerConfig(runtime="torch", **common))(faces)
    with caplog.at_level(logging.INFO, logger="pipeline.enhance"):
        enh = Enhancer(EnhancerConfig(runtime="onnxruntime", amp="bf16", **common))
    assert enh.runtime == "onnxruntime" and onnx_runtime.OnnxRuntime.exports == exports
    assert "enhance.amp bf16 has no effect" in caplog.text
    for a, b in zip(torch_out, enh(faces)):
        assert a.method == b.method and np.abs(a.sr.astype(int) - b.sr.astype(int)).max() <= 1
    assert Enhancer(EnhancerConfig(runtime="auto", **common)).runtime == "onnxruntime"  # on the CPU


def test_onnxruntime_missing(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    common = dict(weights=str(WEIGHTS["arasfsr_lm"]), device="cpu")
    with pytest.raises(ConfigError) as info:
        Enhancer(EnhancerConfig(runtime="onnxruntime", **common))
    assert str(info.value) == ("enhance.runtime onnxruntime is not installed: pip install onnxruntime onnx "
                               "onnxscript (or make install)")
    enh = Enhancer(EnhancerConfig(runtime="auto", **common))
    assert enh.runtime == "torch" and enh.model.runtime is None


def test_a_runtime_that_does_not_exist_is_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["enhance.runtime=tensorrt"])
    assert str(info.value) == "enhance.runtime must be one of auto, torch, onnxruntime, got 'tensorrt'"
