"""Face alignment: 5-point similarity transform to a canonical square frame, cut at native size.

Canonical frame
---------------
The canonical frame is the ArcFace 112 x 112 window (insightface reference points) embedded in a
larger square with a 14 px margin on every side (140 x 140): the ArcFace window is the central
0.8 of the canonical frame. Why:

* ArcFace's crop is tight (it clips the forehead and sometimes the chin); with the margin the
  frame covers hair line to chin, which the SR model needs to render a whole face;
* the result matches the FFHQ / CelebA-HQ alignment that ARASFSR is trained on (eye distance
  1/4 of the side, eyes at 0.47, mouth at 0.76 of the height), so the model's global-coordinate
  prior sees faces where it expects them;
* the ArcFace crop stays an exact, fixed sub-window of any SR output (`recognizer_window`).

Unit template (x, y in [0, 1]; [0, 1] spans the whole crop, pixel edges included), i.e.
(arcface_point + 0.5 + 14) / 140:

    left eye     (0.377104, 0.472831)     right eye   (0.628799, 0.471439)
    nose         (0.503751, 0.615976)
    mouth left   (0.400352, 0.763325)     mouth right (0.608785, 0.762172)

Pixel convention: OpenCV puts pixel centres at integer coordinates, so the unit point u maps to
pixel u * n - 0.5 in an n x n image (`CanonicalTemplate.for_size`). This keeps crops of different
sizes exactly aligned with each other (a plain u * n would shift by up to half a pixel, which is
6 % of an 8 px crop).

Native resolution
-----------------
The LR crop side n is the face's canonical side measured in frame pixels (1 / scale of the
frame -> unit transform), rounded, so the warp neither up- nor down-samples the face: the SR
model gets exactly the detail the camera recorded. n is clamped to [min_size, max_size]
(the SR model needs n >= 8). Interpolation is bilinear because the scale is ~1 (INTER_AREA only
matters when shrinking; when `max_size` forces a shrink, the crop is warped at native size and
then reduced with INTER_AREA). Borders are BORDER_REPLICATE: for faces at the frame edge a black
border would be a hard edge that the SR model sharpens into artefacts; replicated pixels are smooth.

Example:
    >>> import numpy as np
    >>> from pipeline.records import Detection
    >>> img = np.zeros((240, 320, 3), np.uint8)
    >>> lm = TEMPLATE.points * 60 + [100, 50]           # a face whose canonical side is 60 px
    >>> det = Detection(np.array([110.0, 70, 150, 110]), 0.99, lm)
    >>> face = align_face(img, det, track_id=1, frame_index=0)
    >>> face.crop.shape, face.crop_size
    ((60, 60, 3), 60)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError
from pipeline.records import AlignedFace, Detection, Frame, TrackState, TrackUpdate

log = logging.getLogger(__name__)

# insightface's ArcFace 112 x 112 reference points (OpenCV pixel coordinates).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])
ARCFACE_SIZE = 112
ARCFACE_MARGIN = 14  # px of 112-scale on each side: the ArcFace window is the central 0.8
CANONICAL_SIDE = ARCFACE_SIZE + 2 * ARCFACE_MARGIN  # 140

MIN_LANDMARK_SPREAD = 0.5  # px RMS around the centroid; below that the 5 points carry no geometry


class UnalignableFaceError(ValueError):
    """The landmarks do not define a usable similarity transform (degenerate, non-finite)."""


@dataclass(frozen=True)
class CanonicalTemplate:
    """Five landmark positions in the unit square (see the module docstring)."""

    points: np.ndarray  # 5 x 2, unit coordinates

    def for_size(self, n: int) -> np.ndarray:
        """The template in OpenCV pixel coordinates of an n x n image.

        >>> TEMPLATE.for_size(140)[0].round(4)
        array([52.2946, 65.6963])
        """
        return self.points * n - 0.5


TEMPLATE = CanonicalTemplate((ARCFACE_112 + 0.5 + ARCFACE_MARGIN) / CANONICAL_SIDE)

# Recognizer input windows inside the canonical unit frame: name -> (side px, unit x0/y0, unit side).
RECOGNIZER_WINDOWS = {
    "arcface112": (ARCFACE_SIZE, ARCFACE_MARGIN / CANONICAL_SIDE, ARCFACE_SIZE / CANONICAL_SIDE),
}


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise UnalignableFaceError(f"expected 5 x 2 landmarks, got shape {lm.shape}")
    if not np.all(np.isfinite(lm)):
        raise UnalignableFaceError("landmarks contain NaN or inf")
    spread = float(np.sqrt(((lm - lm.mean(0)) ** 2).sum(1).mean()))
    if spread < MIN_LANDMARK_SPREAD:
        raise UnalignableFaceError(f"landmarks are degenerate (spread {spread:.3g} px)")
    return lm


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Closed-form least-squares similarity src -> dst (Umeyama 1991, no reflection), 2 x 3."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    # For a 2D similarity [a -b; b a]: a = sum(s.d) / |s|^2, b = sum(s x d) / |s|^2.
    norm = (s ** 2).sum()
    if norm < 1e-12:
        raise UnalignableFaceError("landmarks are degenerate (all at one point)")
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    m = np.array([[a, -b], [b, a]])
    return np.hstack([m, (md - m @ ms)[:, None]])


def _fit_unit(landmarks: np.ndarray, template: CanonicalTemplate) -> np.ndarray:
    """Similarity frame px -> unit template coordinates, 2 x 3."""
    lm = _check_landmarks(landmarks)
    # Fit against the template at ~the face's own scale so LMedS' residuals are in ~pixels.
    approx = max(float(np.linalg.norm(lm[1] - lm[0])) / 0.25, 1.0)
    dst = template.points * approx
    # LMedS rejects a grossly wrong landmark (occluded mouth corner...); the final fit is a
    # float64 least squares on its inliers (OpenCV's own refinement runs in float32).
    m, inliers = cv2.estimateAffinePartial2D(lm, dst, method=cv2.LMEDS)
    keep = inliers.ravel().astype(bool) if m is not None and inliers is not None else None
    if keep is None or keep.sum() < 3:
        log.debug("align: LMedS failed or kept < 3 points; least squares on all 5")
        keep = np.ones(5, bool)
    m = _least_squares_similarity(lm[keep], dst[keep]) / approx
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:, :2])) < 1e-12:
        raise UnalignableFaceError("landmarks give a singular transform")
    return m


def _unit_to_pixels(m_unit: np.ndarray, n: int) -> np.ndarray:
    """Compose a frame -> unit transform with unit -> n x n pixel coordinates (u * n - 0.5)."""
    m = m_unit * n
    m[:, 2] -= 0.5
    return m


def transform_scale(m: np.ndarray) -> float:
    """Isotropic scale of a 2 x 3 similarity."""
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def estimate_transform(landmarks: np.ndarray, size: int,
                       template: CanonicalTemplate = TEMPLATE) -> np.ndarray:
    """2 x 3 similarity mapping frame pixels to the pixels of a size x size canonical crop.

    Raises UnalignableFaceError (a ValueError) for degenerate or non-finite landmarks.

    >>> m = estimate_transform(TEMPLATE.for_size(50), 50)   # already canonical: identity
    >>> bool(np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-6))
    True
    """
    return _unit_to_pixels(_fit_unit(landmarks, template), int(size))


def native_size(landmarks: np.ndarray, template: CanonicalTemplate = TEMPLATE) -> float:
    """The face's canonical side in frame pixels (the crop side at which the warp scale is 1)."""
    return 1.0 / transform_scale(_fit_unit(landmarks, template))


def align_face(frame: np.ndarray | Frame, detection: Detection, track_id: int, frame_index: int,
               pts_time: float | None = None, min_size: int = 8,
               max_size: int | None = None) -> AlignedFace:
    """Cut the canonical crop of one detected face at its native resolution.

    `frame` is an H x W x 3 image or a Frame (then its pts_time is used when none is given, its
    source_file, decoded_at and noise are kept, and the face's QP is read from its QP map).
    The crop side is round(native size) clamped to [min_size, max_size]; the returned
    `transform` maps frame pixels to crop pixels. Raises UnalignableFaceError (ValueError).
    """
    source_file = decoded_at = qp = noise = None
    if isinstance(frame, Frame):
        pts_time = frame.pts_time if pts_time is None else pts_time
        source_file, decoded_at, noise = frame.source_file, frame.decoded_at, frame.noise
        qp = frame.qp.at(detection.box) if frame.qp is not None else None
        frame = frame.image
    if min_size < 1 or (max_size is not None and max_size < min_size):
        raise ValueError(f"bad crop size limits: min_size={min_size}, max_size={max_size}")
    m_unit = _fit_unit(detection.landmarks, TEMPLATE)
    native = max(1, int(round(1.0 / transform_scale(m_unit))))
    n = max(native, min_size)
    if max_size is not None:
        n = min(n, max_size)
    m = _unit_to_pixels(m_unit, n)
    if n < native:
        # Shrinking: warp at native size, then area-average (bilinear warp would alias).
        big = cv2.warpAffine(frame, _unit_to_pixels(m_unit, native), (native, native),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crop = cv2.resize(big, (n, n), interpolation=cv2.INTER_AREA)
    else:
        crop = cv2.warpAffine(frame, m, (n, n), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    return AlignedFace(track_id=track_id, frame_index=frame_index, crop=crop, transform=m,
                       crop_size=n, quality=face_quality(crop, detection), detection=detection,
                       pts_time=pts_time, source_file=source_file, decoded_at=decoded_at, qp=qp,
                       noise=noise)


def recognizer_window(output_size: int, recognizer: str = "arcface112") -> np.ndarray:
    """2 x 3 affine mapping pixels of an output_size x output_size canonical (SR) image to the
    recognizer's input crop (ArcFace: 112 x 112 with the insightface reference points).

    Use: cv2.warpAffine(sr, recognizer_window(sr.shape[0]), (112, 112)); see `to_recognizer`.

    >>> m = recognizer_window(160)
    >>> bool(np.abs(TEMPLATE.for_size(160) @ m[:, :2].T + m[:, 2] - ARCFACE_112).max() < 1e-9)
    True
    """
    if recognizer not in RECOGNIZER_WINDOWS:
        raise ConfigError(f"unknown recognizer {recognizer!r}; known: {sorted(RECOGNIZER_WINDOWS)}")
    side, x0, w = RECOGNIZER_WINDOWS[recognizer]
    # pixel x -> unit (x + 0.5) / S -> window unit (u - x0) / w -> window pixel * side - 0.5
    a = side / (w * output_size)
    b = 0.5 * a - x0 * side / w - 0.5
    return np.array([[a, 0.0, b], [0.0, a, b]])


def to_recognizer(sr: np.ndarray, recognizer: str = "arcface112") -> np.ndarray:
    """Cut the recognizer's input crop out of a square canonical (SR) image.

    Same geometry as `recognizer_window`, done as resize-to-full-canonical + slice so that
    shrinking can use INTER_AREA (warpAffine cannot)."""
    recognizer_window(sr.shape[0], recognizer)  # validates the name
    side, x0, w = RECOGNIZER_WINDOWS[recognizer]
    full = int(round(side / w))  # 140 for arcface112 (window sizes are whole pixels)
    off = int(round(x0 * full))
    interp = cv2.INTER_AREA if full < sr.shape[0] else cv2.INTER_LINEAR
    big = cv2.resize(sr, (full, full), interpolation=interp)
    return big[off:off + side, off:off + side].copy()


# --- quality ---------------------------------------------------------------------------------

SHARPNESS_REF = 50.0  # Laplacian variance giving sharpness 0.5 (~the "sharp" cut on UTKFace)
SIZE_REF = 64  # crop side (px) at which size stops limiting quality (~16 px between the eyes)


def laplacian_variance(image: np.ndarray, window: int) -> float:
    """The project's one sharpness measure: variance of the Laplacian of the grayscale image's
    central window x window pixels (all of a side shorter than `window`). BGR or gray, uint8."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    h, w = gray.shape
    y0, x0 = max(0, (h - window) // 2), max(0, (w - window) // 2)
    return float(cv2.Laplacian(gray[y0:y0 + window, x0:x0 + window], cv2.CV_64F).var())


def sharpness(crop: np.ndarray) -> float:
    """laplacian_variance on the central 0.8 (the ArcFace window, i.e. the face rather than
    replicated border), mapped to [0, 1) by v / (v + SHARPNESS_REF). Noise also counts as
    sharpness: compare faces from one camera (one track), not across cameras."""
    if crop.size == 0:
        return 0.0
    n = crop.shape[0]
    k = int(round(n * ARCFACE_MARGIN / CANONICAL_SIDE))
    v = laplacian_variance(crop, n - 2 * k if n - 2 * k >= 3 else n)
    return v / (v + SHARPNESS_REF)


def frontalness(landmarks: np.ndarray) -> float:
    """1 for a frontal face, -> 0 when turned (yaw) or strongly tilted (pitch); roll is free
    (alignment removes it). Measured in the eye-axis frame:

    yaw   = |nose offset from the eyes/mouth midline| / half the eye distance (0 frontal,
            ~1 when the nose reaches an eye, i.e. a profile);
    pitch = nose height between the eye line (0) and the mouth line (1); ~0.5 when frontal.
    frontalness = max(0, 1 - yaw) * max(0, 1 - |pitch - 0.5| / 0.5).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        return 0.0
    le, re, nose, ml, mr = lm
    eye_vec = re - le
    d = float(np.linalg.norm(eye_vec))
    if d < 1e-6:
        return 0.0
    u = eye_vec / d
    v = np.array([-u[1], u[0]])  # downwards in image coordinates
    eye_mid, mouth_mid = (le + re) / 2, (ml + mr) / 2
    mid = (eye_mid + mouth_mid) / 2
    yaw = abs(float((nose - mid) @ u)) / (d / 2)
    em = float((mouth_mid - eye_mid) @ v)
    if em <= 1e-6:  # mouth not below the eyes: upside down or garbage
        return 0.0
    pitch = float((nose - eye_mid) @ v) / em
    return max(0.0, 1.0 - yaw) * max(0.0, 1.0 - abs(pitch - 0.5) / 0.5)


def face_quality(crop: np.ndarray, detection: Detection) -> float:
    """Quality in [0, 1] for choosing the best faces of a track:
    sharpness(crop) x min(1, crop side / SIZE_REF) x frontalness(detection.landmarks).

    >>> rng = np.random.default_rng(0)
    >>> crop = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    >>> det = Detection(np.zeros(4), 0.99, TEMPLATE.for_size(64))
    >>> 0.9 < face_quality(crop, det) <= 1.0
    True
    """
    if crop.size == 0:
        return 0.0
    size = min(1.0, min(crop.shape[:2]) / SIZE_REF)
    return float(sharpness(crop) * size * frontalness(detection.landmarks))


# --- stage -----------------------------------------------------------------------------------


class Aligner:
    """Pipeline stage: Frame + the tracker's updates -> AlignedFace list.

    Only updates with a detection (landmarks) on this frame and a state in `states` are aligned;
    unalignable faces are skipped with a debug log.
    """

    def __init__(self, min_size: int = 8, max_size: int | None = None,
                 states: Sequence[TrackState] = (TrackState.CONFIRMED,)) -> None:
        if min_size < 1 or (max_size is not None and max_size < min_size):
            raise ConfigError(f"align: bad crop size limits min_size={min_size}, max_size={max_size}")
        self.min_size, self.max_size, self.states = min_size, max_size, tuple(states)

    def __call__(self, frame: Frame, updates: Sequence[TrackUpdate]) -> list[AlignedFace]:
        out = []
        for u in updates:
            if u.detection is None or u.state not in self.states:
                continue
            try:
                out.append(align_face(frame, u.detection, u.track_id, frame.index,
                                      min_size=self.min_size, max_size=self.max_size))
            except UnalignableFaceError as e:
                log.debug("align: track %d frame %d skipped: %s", u.track_id, frame.index, e)
        return out
