"""CUDA correctness (issue 13): the GPU paths give what the CPU paths give. Every test here skips on a
machine without CUDA (CI, the 2-core development box); run them on a GPU with `pytest -q tests/test_cuda.py`.

What they hold the GPU to:
- fp32: the model's output on CUDA equals the CPU's within 1e-4 (both the fast path, which turns cuDNN's TF32
  off when no `amp` is asked for, and the one used by training, `reference_upscale`);
- bf16 / fp16 autocast (`enhance.amp`): within PSNR_AMP dB of the fp32 output;
- `device: auto` puts the enhancer's model and the detector on the GPU;
- MTCNN on CUDA finds the faces it finds on the CPU (boxes within a pixel, landmarks within two).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from models import load_model
from models.arasfsr import reference_upscale
from models.metrics import psnr
from pipeline.detect import MTCNNDetector
from pipeline.enhance import Enhancer, EnhancerConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

WEIGHTS = Path(__file__).resolve().parents[1] / "models/weights/arasfsr_paper.safetensors"
FULL = WEIGHTS.with_name("arasfsr_paper_full.safetensors")  # the paper-size model, trained on CUDA
#: Autocast output against fp32, dB over the [0, 1] range (bf16 keeps 8 bits of mantissa).
PSNR_AMP = {"bf16": 40.0, "fp16": 45.0}


def faces(sizes=(16, 24, 40)) -> list[np.ndarray]:
    """The astronaut's face, RGB, shrunk to each size (antialiased)."""
    face = skdata.astronaut()[30:230, 130:330]
    return [cv2.resize(face, (s, s), interpolation=cv2.INTER_AREA) for s in sizes]


def as_batch(images: list[np.ndarray], device) -> list[torch.Tensor]:
    return [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in images]


@pytest.fixture(scope="module", params=[WEIGHTS, FULL], ids=["default", "full"])
def models(request):
    return load_model(request.param, "cpu"), load_model(request.param, "cuda")


def test_max_queries_is_the_devices(models):
    cpu, gpu = models
    assert (cpu.max_queries, gpu.max_queries) == (4096, 2**17)


@pytest.mark.parametrize("size", [(112, 112), (160, 160)])
def test_fp32_cuda_equals_cpu(models, size):
    cpu, gpu = models
    images = faces()
    want = cpu.upscale(as_batch(images, "cpu"), size)
    got = gpu.upscale(as_batch(images, "cuda"), size).cpu()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4


def test_fp32_cuda_equals_cpu_on_the_training_path(models, monkeypatch):
    cpu, gpu = models
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # training may use TF32; this compares fp32
    image = as_batch(faces((24,)), "cpu")[0][None]
    with torch.no_grad():
        want = reference_upscale(cpu, image, (128, 128))
        got = reference_upscale(gpu, image.cuda(), (128, 128)).cpu()
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_stays_close_to_fp32(models, amp):
    _, gpu = models
    lr = as_batch(faces(), "cuda")
    full = gpu.upscale(lr, (128, 128))
    low = gpu.upscale(lr, (128, 128), amp=amp)
    assert torch.isfinite(low).all()
    assert psnr(low.cpu().numpy(), full.cpu().numpy(), data_range=1.0) >= PSNR_AMP[amp]


def test_auto_device_puts_the_enhancer_and_the_detector_on_the_gpu():
    enhancer = Enhancer(EnhancerConfig(method="arasfsr", weights=str(WEIGHTS), device="auto", runtime="auto"))
    assert enhancer.model.device.type == "cuda"
    assert MTCNNDetector(device="auto").device.type == "cuda"


def test_mtcnn_on_cuda_finds_the_faces_it_finds_on_the_cpu():
    image = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    frames = [image, cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)]
    cpu = MTCNNDetector(device="cpu").detect(frames)
    gpu = MTCNNDetector(device="cuda").detect(frames)
    for want, got in zip(cpu, gpu):
        assert len(want) == len(got) >= 1
        for a, b in zip(sorted(want, key=lambda d: d.box[0]), sorted(got, key=lambda d: d.box[0])):
            assert np.abs(np.subtract(a.box, b.box)).max() <= 1.0
            assert np.abs(np.subtract(a.landmarks, b.landmarks)).max() <= 2.0
            assert abs(a.score - b.score) <= 1e-2  # cuDNN's TF32 convolutions (the detector's default)
