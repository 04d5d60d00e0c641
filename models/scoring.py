"""The evaluation protocol (paper sec. 4.1), shared by training's validation and evaluate.py.

The LR image is made from the prepared ground truth (GT) directly (models.data.make_lr: antialiased
bicubic, or nearest neighbour + JPEG for nn-jpeg); the HR reference is the GT resized with
antialiased bicubic; the SR image is rounded to 8 bits; PSNR and SSIM on Y (models/metrics.py),
optionally only on the pixels that come from the face photo (`region="photo"`).

Example:
    >>> pairs = EvalPairs.make(faces, lr=16, hr=128, degrade="nn-jpeg")  # doctest: +SKIP
    >>> score(model_upscaler(model), pairs)  # doctest: +SKIP
    {'psnr': 27.1, 'ssim': 0.81, 'n': 48}
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.enhance import bicubic

from .data import NN_JPEG_QUALITY, FaceSet, make_lr, resize, resize_mask
from .metrics import y_metrics

REGIONS = ("photo", "full")
Upscaler = Callable[[np.ndarray, int], np.ndarray]  # N x h x w x 3 uint8, side -> N x side x side x 3 uint8


@dataclass
class EvalPairs:
    """LR inputs (N x lr x lr x 3 uint8), HR references and their masks (None: score every pixel)."""

    lr: np.ndarray
    gt: list[np.ndarray]
    masks: list[np.ndarray | None]
    hr: int

    @classmethod
    def make(cls, faces: FaceSet, lr: int, hr: int, degrade: str = "bicubic",
             jpeg_quality: int = NN_JPEG_QUALITY, region: str = "photo") -> EvalPairs:
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        return cls(lr=np.stack([make_lr(img, lr, degrade, jpeg_quality) for img in faces.images]),
                   gt=[resize(img, hr, "bicubic") for img in faces.images],
                   masks=[resize_mask(m, hr) if region == "photo" else None for m in faces.masks], hr=hr)


def model_upscaler(model) -> Upscaler:
    """`model.upscale` on uint8 images, rounded back to uint8 (what a user of the SR image gets)."""
    return lambda lr, hr: model.upscale_uint8(lr, (hr, hr))


def bicubic_upscaler(lr: np.ndarray, hr: int) -> np.ndarray:
    """The Bicubic row: the product's own bicubic (pipeline.enhance), not a second one."""
    return np.stack([bicubic(img, hr) for img in lr])


def score(upscale: Upscaler, pairs: EvalPairs, batch: int = 16,
          progress: Callable[[int], None] | None = None) -> dict:
    """{"psnr", "ssim", "n"}: means over the faces; PSNR over the finite values (None if none is:
    every SR image equal to its reference)."""
    scores = []
    for s in range(0, len(pairs.lr), batch):
        sr = upscale(pairs.lr[s:s + batch], pairs.hr)
        scores += [y_metrics(a, pairs.gt[s + k], pairs.masks[s + k]) for k, a in enumerate(sr)]
        if progress:
            progress(len(sr))
    psnrs = [p for p, _ in scores if math.isfinite(p)]
    return {"psnr": float(np.mean(psnrs)) if psnrs else None, "ssim": float(np.mean([s for _, s in scores])),
            "n": len(scores)}
