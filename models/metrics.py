"""Image quality metrics of the paper (sec. 4.1): PSNR and SSIM on the Y channel of YCbCr.

Conventions (the usual SR ones, MATLAB's `rgb2ycbcr`):
- Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 * 255 with RGB in [0, 1], i.e. Y in [16, 235]
  on a 0-255 scale (BT.601, studio swing);
- PSNR = 10 log10(255^2 / MSE) on Y, no border shave; identical images give +inf (not capped);
- SSIM (Wang et al. 2004): 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255,
  computed on the 'valid' part of the image (the window fully inside), like MATLAB's ssim_index
  and skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False).

An optional boolean `mask` (H x W) restricts both metrics to some pixels (for SSIM: to the
window centres inside the mask).

Example:
    >>> import numpy as np
    >>> a = np.full((32, 32, 3), 100, np.uint8)
    >>> round(psnr(rgb_to_y(a), rgb_to_y(a) + 1.0), 2)
    48.13
    >>> ssim(rgb_to_y(a), rgb_to_y(a))
    1.0
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 taps: int(3.5 * 1.5 + 0.5), as skimage and MATLAB
K1, K2 = 0.01, 0.03


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB (uint8 in [0, 255] or float in [0, 1]) -> Y (float64, [16, 235] scale of 255)."""
    x = np.asarray(rgb, dtype=np.float64)
    if np.issubdtype(np.asarray(rgb).dtype, np.integer):
        x = x / 255.0
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {x.shape}")
    return 16.0 + x @ np.array([65.481, 128.553, 24.966])


def _check_pair(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if mask is not None and mask.shape != a.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the images {a.shape[:2]}")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, mask: np.ndarray | None = None) -> float:
    """PSNR in dB between two single-channel images (e.g. Y); +inf when they are identical."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check_pair(a, b, mask)
    diff = (a - b) ** 2
    mse = float(diff[mask].mean() if mask is not None else diff.mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_valid(x: np.ndarray) -> np.ndarray:
    """11 x 11 Gaussian (sigma 1.5) weighted mean of every window fully inside x ('valid')."""
    k = cv2.getGaussianKernel(2 * SSIM_RADIUS + 1, SSIM_SIGMA, cv2.CV_64F)
    full = cv2.sepFilter2D(x, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)
    r = SSIM_RADIUS
    return full[r:-r, r:-r]


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-window SSIM of two single-channel images, (H - 10) x (W - 10) (window centres)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check_pair(a, b, None)
    if min(a.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {a.shape}")
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_a, mu_b = _gaussian_valid(a), _gaussian_valid(b)
    var_a = _gaussian_valid(a * a) - mu_a**2
    var_b = _gaussian_valid(b * b) - mu_b**2
    cov = _gaussian_valid(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, mask: np.ndarray | None = None) -> float:
    """Mean SSIM of two single-channel images (over the window centres inside `mask` if given)."""
    _check_pair(np.asarray(a), np.asarray(b), mask)
    values = ssim_map(a, b, data_range)
    if mask is not None:
        r = SSIM_RADIUS
        inside = mask[r:-r, r:-r]
        if not inside.any():
            raise ValueError("SSIM mask has no window centre at least 5 px inside the image")
        values = values[inside]
    return float(values.mean())


def y_metrics(sr_rgb: np.ndarray, hr_rgb: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(PSNR, SSIM) on Y of two RGB images (uint8, or float in [0, 1])."""
    ys, yh = rgb_to_y(sr_rgb), rgb_to_y(hr_rgb)
    return psnr(ys, yh, mask=mask), ssim(ys, yh, mask=mask)
