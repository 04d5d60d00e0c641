"""Fuse stage: on a noisy camera, each face averaged with the same face in its track's previous frames.

A camera's noise is new in every frame, a face is not: the mean of n crops of one face, registered onto
each other, keeps the face and has 1/sqrt(n) of the noise. The model, which sharpens noise into false
detail, can then be given more of its strength (`pipeline.enhance.strength_for` reads the noise left in the
fused face). On the identity benchmark's noisy camera (noise 8 + JPEG 50), dlib's accuracy with the default
weights: 8 frames of a still scene, perfectly registered, at 16 px +2.3 points over bicubic of one frame for SR
of one frame, +8.1 for SR of their mean (the upper bound); with this stage on a track of a person moving a
little (`benchmarks/identity.py --track-frames 8`) 78.7 % -> 84.8 % at 24 px, 63.3 % -> 64.0 % at 16 px
(models/weights/README.md, "Fusing a track's frames"). Only noisy cameras: on a clean one the mean would add
the registration's blur and nothing else.

Every crop of a track has the aligner's canonical framing at its own native size, so an earlier crop
is resized to the new one's size and then shifted onto it (`register`: ECC, translation, sub-pixel; the
landmarks' jitter at 16 px is a fraction of a pixel to a pixel). Earlier crops that do not match the new
one after that (correlation below `min_correlation`: a turned head, a passer-by) are left out, and within a
crop the pixels that differ from the new one by more than the camera's noise explains (a mouth that moved, a
blink) count little (`merge_weights`), so they keep the new frame's pixels rather than a ghost of both.
The kept crops are the unfused ones: each frame's noise stays independent of the others'. The noise left in
the fused crop (`AlignedFace.fused_noise`, what the enhancer's strength rule reads) is the camera's over the
square root of the looks at the noise the mean really had (`independence`: an H.264 inter frame that copied a
still face's block, noise and all, is no new look).

Example:
    >>> fuse = TemporalFusion(FuseConfig(frames=8))
    >>> faces = fuse(aligned)              # doctest: +SKIP   (each face's crop: the mean of up to 8 frames)
    >>> faces[0].fused                     # doctest: +SKIP
    8
    >>> fuse.end_tracks([7])               # doctest: +SKIP   (track 7 ended: its crops are let go)
"""
from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from common.config import setting, validate
from pipeline.records import AlignedFace


@dataclass
class FuseConfig:
    # Frames averaged into a face, its own included (1: off). 8 frames: a third of a second at 25 fps.
    frames: int = setting(8, lo=1, hi=64)
    # Only faces of cameras at least this noisy (sigma, common.noise) are fused; the enhancer gives faces
    # full strength below 1.5 (pipeline.enhance.NOISE_FULL), so fusing them would gain nothing.
    min_noise: float = setting(1.5, lo=0.0)
    # An earlier crop joins the mean only if it correlates with the new one at least this well once registered.
    min_correlation: float = setting(0.9, gt=0.0, hi=1.0)
    # Earlier crops more than this many frames before the new one are not used (the face may have changed).
    max_gap: int = setting(25, lo=1)

    def __post_init__(self) -> None:
        validate(self)


ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
MAX_SHIFT = 0.15  # of the crop's side: an earlier crop further off than this is another view, not jitter
#: merge_weights: a pixel counts half where its smoothed difference is MERGE_TOLERANCE x the camera's noise sigma.
#: The smoothed difference of two frames of a still face is ~0.4-0.8 sigma (noise, sub-pixel registration), a
#: moved mouth tens of grey levels.
MERGE_TOLERANCE = 3.0


def luma(crop: np.ndarray) -> np.ndarray:
    """Float BT.601 luma of a BGR crop (0-255)."""
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)


def _smooth(gray: np.ndarray) -> np.ndarray:
    """Float luma smoothed a little, so the noise does not steer the registration and the correlation."""
    return cv2.GaussianBlur(gray, (0, 0), 0.8)


def _gray(crop: np.ndarray) -> np.ndarray:
    """`_smooth` luma of a BGR crop."""
    return _smooth(luma(crop))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equal-size float images (1: equal up to brightness and contrast)."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def register(reference: np.ndarray, moving: np.ndarray,
             ref_gray: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """`moving` (a crop of the same canonical framing, any size) resized to `reference`'s size and shifted
    onto it; returns it with its correlation to `reference` (smoothed luma), or None when the shift does
    not converge or is implausibly large (more than MAX_SHIFT of the side). `ref_gray`: `reference`'s
    smoothed luma when the caller has it (one reference, many crops to register onto it).

    The shift is found on a resized copy (ECC, translation); the crop returned is then sampled from
    `moving` once, resize and shift in one bicubic warp: each resampling of a 16-24 px face blurs it."""
    h, w = reference.shape[:2]
    if moving.shape[0] > 1.25 * h:  # much larger: area-average first (sampling it would alias)
        moving = cv2.resize(moving, (w, h), interpolation=cv2.INTER_AREA)
    sy, sx = h / moving.shape[0], w / moving.shape[1]
    resized = moving if (sy, sx) == (1.0, 1.0) else cv2.resize(moving, (w, h), interpolation=cv2.INTER_CUBIC)
    ref = _gray(reference) if ref_gray is None else ref_gray
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(ref, _gray(resized), warp, cv2.MOTION_TRANSLATION, ECC_CRITERIA, None, 1)
    except cv2.error:  # did not converge (e.g. a flat crop)
        return None
    tx, ty = float(warp[0, 2]), float(warp[1, 2])
    if max(abs(tx), abs(ty)) > MAX_SHIFT * max(h, w):
        return None
    # reference pixel x <- resized pixel x + t <- moving pixel (x + t + 0.5) / s - 0.5 (pixel centres, as cv2.resize)
    sample = np.float32([[1 / sx, 0, (tx + 0.5) / sx - 0.5], [0, 1 / sy, (ty + 0.5) / sy - 0.5]])
    out = cv2.warpAffine(moving, sample, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    # ECC minimises the squared difference, so a part of the face that changed (a mouth opening) can pull it off;
    # keep the aligner's framing instead when that matches the bulk of the face better (median: robust to the part)
    shifted, unshifted = _gray(out), _gray(resized)
    if np.median(np.abs(unshifted - ref)) < np.median(np.abs(shifted - ref)):
        out, shifted = resized, unshifted
    return out, correlation(ref, shifted)


def merge_weights(difference: np.ndarray, noise: float) -> np.ndarray:
    """Per pixel, how much a registered earlier crop may count in the mean, from its luma `difference` to the
    new crop: ~1 where the camera's `noise` explains it, ~0 where the face itself changed (a mouth that moved, a
    blink), so those parts keep the new frame's pixels instead of a ghost of both. The difference is smoothed
    first (3 x 3-ish Gaussian): noise averages out there, a change of the face does not."""
    diff = cv2.GaussianBlur(np.abs(difference), (0, 0), 1.0)
    scale = MERGE_TOLERANCE * max(noise, 1.0)
    return 1.0 / (1.0 + (diff / scale) ** 4)


def independence(difference: np.ndarray, noise: float) -> float:
    """How new a look at the noise a registered earlier crop is, from its luma `difference` to the new crop:
    1 when its noise is independent of the new crop's (an uncompressed, JPEG or intra-coded frame), towards 0
    when it is the same noise (an H.264 inter frame copies a still block from its reference, noise and all).
    The difference spreads by sqrt(2) x the camera's noise when independent (robust spread: MAD, so edges and
    a moved mouth weigh little)."""
    spread = 1.4826 * float(np.median(np.abs(difference - np.median(difference))))
    return min(1.0, (spread / (np.sqrt(2.0) * max(noise, 1e-6))) ** 2)


def fuse_crops(reference: np.ndarray, earlier: Sequence[np.ndarray], min_correlation: float,
               noise: float) -> tuple[np.ndarray, int, float]:
    """The weighted mean of `reference` and those `earlier` crops that register onto it with at least
    `min_correlation` (each pixel weighted by `merge_weights`); returns (uint8 crop of reference's size,
    number of crops in the mean, the noise sigma left in it). The noise left counts each crop by its mean
    weight and its `independence`: averaging copies of the same noise removes none of it."""
    total = reference.astype(np.float32)
    weight = np.ones(reference.shape[:2], np.float32)
    ref_luma = luma(reference)
    ref_gray = _smooth(ref_luma)  # register's view of the reference, the same for every earlier crop
    n, looks = 1, 1.0
    for crop in earlier:
        reg = register(reference, crop, ref_gray)
        if reg is not None and reg[1] >= min_correlation:
            difference = luma(reg[0]) - ref_luma  # one per crop: the weights and the independence both read it
            w = merge_weights(difference, noise)
            total += w[..., None] * reg[0]
            weight += w
            n += 1
            looks += float(w.mean()) * independence(difference, noise)
    if n == 1:
        return reference, 1, noise
    return np.clip(np.rint(total / weight[..., None]), 0, 255).astype(np.uint8), n, noise / looks ** 0.5


class TemporalFusion:
    """Pipeline stage (between align and select): list[AlignedFace] -> the same faces, those of noisy
    cameras with their crop fused with their track's previous crops (`AlignedFace.fused` says how many).
    Keeps at most `frames - 1` crops per live track; `end_tracks` lets an ended track's go."""

    def __init__(self, config: FuseConfig | None = None) -> None:
        self.config = config or FuseConfig()
        self._kept: dict[int, deque[tuple[int, np.ndarray]]] = {}

    def __call__(self, faces: Sequence[AlignedFace]) -> list[AlignedFace]:
        return [self.fuse(face) for face in faces]

    def fuse(self, face: AlignedFace) -> AlignedFace:
        cfg = self.config
        if cfg.frames <= 1:
            return face
        kept = self._kept.setdefault(face.track_id, deque(maxlen=cfg.frames - 1))
        out = face
        if face.noise is not None and face.noise >= cfg.min_noise:
            earlier = [crop for index, crop in kept if 0 < face.frame_index - index <= cfg.max_gap]
            if earlier:
                crop, n, left = fuse_crops(face.crop, earlier, cfg.min_correlation, face.noise)
                if n > 1:
                    out = dataclasses.replace(face, crop=crop, fused=n, fused_noise=left)
        kept.append((face.frame_index, face.crop))
        return out

    def end_tracks(self, track_ids: Iterable[int]) -> None:
        for track_id in track_ids:
            self._kept.pop(track_id, None)

    @property
    def tracks(self) -> int:
        """Tracks whose crops are kept (for tests: ended tracks must not pile up)."""
        return len(self._kept)
