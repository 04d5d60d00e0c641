"""The shipped weights: they load from the repository alone and beat bicubic on a real face."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import load_model, read_metadata
from models.metrics import y_metrics
from pipeline.align import align_face
from pipeline.detect import MTCNNDetector

ROOT = Path(__file__).resolve().parents[1]
CCTV = ROOT / "models/weights/arasfsr_cctv.safetensors"


@pytest.fixture(scope="module")
def astronaut_face():
    """The astronaut's face aligned by the pipeline's own detector and aligner, at 128 px (ground truth)."""
    from skimage import data

    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    det = MTCNNDetector().detect([frame])[0][0]
    crop = align_face(frame, det, track_id=1, frame_index=0, min_size=128, max_size=128).crop
    return np.ascontiguousarray(crop[..., ::-1])  # RGB


def test_cctv_weights_load_and_carry_their_config():
    meta = read_metadata(CCTV)
    assert meta["config"]["encoder"]["name"] == "edsr" and meta["metadata"]["step"] > 0
    assert CCTV.stat().st_size < 10 * 1024 * 1024  # "a few MB"


def cctv_lr(gt: np.ndarray, side: int) -> np.ndarray:
    """A CCTV-like LR face: nearest-neighbour down-sampling and JPEG (the paper's NN-JPEG degradation)."""
    lr = cv2.resize(gt, (side, side), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".jpg", lr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize("lr_side", [16, 24, 32])
def test_cctv_weights_beat_bicubic_on_a_degraded_astronaut(astronaut_face, lr_side):
    model = load_model(CCTV, device="cpu")
    gt = astronaut_face
    lr = cctv_lr(gt, lr_side)
    bicubic = cv2.resize(lr, (128, 128), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    sr = (model.upscale(x, (128, 128))[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    gain = y_metrics(sr, gt)[0] - y_metrics(bicubic, gt)[0]
    assert gain > 0.5, f"ARASFSR gains only {gain:.2f} dB over bicubic at {lr_side} -> 128"
