"""The shipped weights: they load from the repository alone and beat bicubic on a real face."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import load_model, read_metadata
from models.data import make_lr
from models.metrics import y_metrics
from pipeline.align import align_face
from pipeline.detect import MTCNNDetector

ROOT = Path(__file__).resolve().parents[1]
CCTV = ROOT / "models/weights/arasfsr_cctv.safetensors"
PAPER = ROOT / "models/weights/arasfsr_paper.safetensors"
LM = ROOT / "models/weights/arasfsr_lm.safetensors"  # ARASFSR-LM, trained like PAPER
FULL = ROOT / "models/weights/arasfsr_paper_full.safetensors"  # PAPER's recipe at the paper's size, on an H100
PAPER_MIN_GAIN = 1.0  # dB; measured at step 6000: +1.79 at 16 px, +2.79 at 32 px


@pytest.fixture(scope="module")
def astronaut_face():
    """The astronaut's face aligned by the pipeline's own detector and aligner, at 128 px (ground truth)."""
    from skimage import data

    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    det = MTCNNDetector().detect([frame])[0][0]
    crop = align_face(frame, det, track_id=1, frame_index=0, min_size=128, max_size=128).crop
    return np.ascontiguousarray(crop[..., ::-1])  # RGB


@pytest.mark.parametrize("path", [CCTV, PAPER, LM, FULL], ids=["cctv", "paper", "lm", "full"])
def test_weights_load_and_carry_their_config(path):
    meta = read_metadata(path)
    assert meta["config"]["encoder"]["name"] == "edsr" and meta["metadata"]["step"] > 0
    assert path.stat().st_size < 10 * 1024 * 1024  # "a few MB"


def sr_gain(path: Path, lr: np.ndarray, gt: np.ndarray) -> float:
    """Y-PSNR of the model's output minus that of bicubic interpolation, both to the ground truth's size."""
    model = load_model(path, device="cpu")
    size = gt.shape[0]
    bicubic = cv2.resize(lr, (size, size), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    sr = (model.upscale(x, (size, size))[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return y_metrics(sr, gt)[0] - y_metrics(bicubic, gt)[0]


def cctv_lr(gt: np.ndarray, side: int) -> np.ndarray:
    """A CCTV-like LR face: nearest-neighbour down-sampling and JPEG (the paper's NN-JPEG degradation)."""
    lr = cv2.resize(gt, (side, side), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".jpg", lr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize("lr_side", [16, 24, 32])
def test_cctv_weights_beat_bicubic_on_a_degraded_astronaut(astronaut_face, lr_side):
    gain = sr_gain(CCTV, cctv_lr(astronaut_face, lr_side), astronaut_face)
    assert gain > 0.5, f"ARASFSR gains only {gain:.2f} dB over bicubic at {lr_side} -> 128"


@pytest.mark.parametrize("path", [PAPER, LM, FULL], ids=["paper", "lm", "full"])
@pytest.mark.parametrize("lr_side", [16, 32])
def test_paper_weights_beat_bicubic_on_a_bicubic_astronaut(astronaut_face, lr_side, path):
    """The paper protocol's degradation: antialiased bicubic down-sampling of the ground truth."""
    gain = sr_gain(path, make_lr(astronaut_face, lr_side, "bicubic"), astronaut_face)
    assert gain > PAPER_MIN_GAIN, f"ARASFSR-paper gains only {gain:.2f} dB over bicubic at {lr_side} -> 128"
