"""Face data for training and evaluating ARASFSR (paper sec. 4.2): the prepared face set,
resampling, degradations and the LR-HR pair sampler.

A prepared set (written by `python prepare.py`) is a folder of aligned faces in the
pipeline's canonical framing (pipeline/align.py) at one size S x S (JPEG), plus `manifest.csv`
(one row per face: file, source, split, sharpness, landmarks, transform, ...). Faces whose photo
does not cover the whole canonical frame are completed with replicated border pixels, as the
pipeline does at frame edges; the `transform` and `src_h`/`src_w` columns give back the
"photo mask" (True where a pixel comes from the photo), so that the loss and the metrics can
ignore the replicated border.

Pairs follow sec. 4.2: per batch an LR level L and an HR level H are sampled; the HR target is
the ground truth resampled to H x H and the LR input the ground truth degraded to L x L
(bicubic with antialiasing, area, or nearest neighbour, optionally with blur, noise and JPEG).
Query pixels are sampled from the HR target with their coordinates and the scale ratio L / H.

Example:
    >>> import numpy as np
    >>> gt = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    >>> make_lr(gt, 16, "nn-jpeg").shape
    (16, 16, 3)
    >>> cfg = PairConfig(lr=(16, 32), hr=(64, 96), queries=100, batch_size=2)
    >>> faces = FaceSet(images=np.stack([gt, gt]), masks=np.ones((2, 128, 128), bool), names=["a", "b"])
    >>> batch = PairSampler(faces, cfg, seed=0).batch(step=0)
    >>> batch["coord"].shape, batch["rgb"].shape
    (torch.Size([2, 100, 2]), torch.Size([2, 100, 3]))
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from common.errors import ConfigError, UserError

from . import camera, identity
from .arasfsr import make_coord

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = ["file", "source", "split", "sharpness", "score", "native", "landmarks", "transform",
                   "src_h", "src_w"]
KERNELS = ("bicubic", "area", "nearest")
EVAL_DEGRADATIONS = ("bicubic", "nn-jpeg")
NN_JPEG_QUALITY = 75  # the JPEG quality of the CelebAHQ-NN-JPEG-style evaluation (paper gives none)


class DataError(UserError, ValueError):
    """A prepared data folder that is missing or unusable."""


# --- preparation helpers --------------------------------------------------------------------


def split_for(name: str, val_fraction: float = 0.05) -> str:
    """Deterministic train/val split from a hash of the file name.

    >>> split_for("1_0_0_20161219140623097.jpg.chip.jpg")
    'train'
    """
    h = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:4], "big") / 2**32
    return "val" if h < val_fraction else "train"


def photo_mask(transform: np.ndarray, src_hw: tuple[int, int], size: int, erode: int = 1) -> np.ndarray:
    """size x size bool mask of the canonical pixels that come from the photo (not replicated border)."""
    ones = np.full(src_hw, 255, np.uint8)
    warped = cv2.warpAffine(ones, np.asarray(transform, np.float64), (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = (warped == 255).astype(np.uint8)
    if erode:
        mask = cv2.erode(mask, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
    return mask.astype(bool)


def write_manifest(root: str | Path, rows: list[dict]) -> Path:
    """Write manifest.csv (columns MANIFEST_FIELDS; landmarks and transform as JSON lists)."""
    path = Path(root) / MANIFEST
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in row.items()})
    return path


def write_prepared(root: str | Path, images: list[np.ndarray], splits: list[str], quality: int = 95) -> Path:
    """Write already-aligned RGB faces as a prepared set (whole frame = photo); for tests and imports.

    >>> import tempfile
    >>> faces = [np.zeros((32, 32, 3), np.uint8)] * 2
    >>> _ = write_prepared(tempfile.mkdtemp(), faces, ["train", "val"])
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, split) in enumerate(zip(images, splits)):
        name = f"face_{i:05d}.jpg"
        cv2.imwrite(str(root / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        rows.append({"file": name, "source": name, "split": split, "sharpness": "", "score": "", "native": "",
                     "landmarks": [], "transform": [1, 0, 0, 0, 1, 0], "src_h": img.shape[0], "src_w": img.shape[1]})
    return write_manifest(root, rows)


def repack(src: str | Path, dst: str | Path, quality: int = 95) -> int:
    """Copy a prepared set with its faces re-encoded as WebP at `quality`: to carry it to a GPU machine,
    whose calls take 64 MiB in all (UTKFace's 8,934 faces: 52 MB of JPEG -> 34.5 MB at 95, 44.6 dB from the
    JPEGs, far above what any model reaches at 16 px). Returns the number of faces.

    >>> import tempfile
    >>> src = write_prepared(tempfile.mkdtemp(), [np.zeros((32, 32, 3), np.uint8)], ["val"]).parent
    >>> repack(src, tempfile.mkdtemp())
    1
    """
    rows, dst = read_manifest(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for row in rows:
        bgr = cv2.imread(str(Path(src) / row["file"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"cannot read {Path(src) / row['file']} listed in the manifest")
        row["file"] = str(Path(row["file"]).with_suffix(".webp"))
        if not cv2.imwrite(str(dst / row["file"]), bgr, [cv2.IMWRITE_WEBP_QUALITY, quality]):
            raise DataError(f"cannot write {dst / row['file']}")
    for row in rows:  # write_manifest takes them as lists
        row["landmarks"], row["transform"] = json.loads(row["landmarks"] or "[]"), json.loads(row["transform"])
    write_manifest(dst, rows)
    return len(rows)


def read_manifest(root: str | Path) -> list[dict]:
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise DataError(f"data folder {root} does not exist (prepare it with: python prepare.py)")
    if not path.is_file():
        raise DataError(f"{path} not found: {root} is not a prepared face set (run: python prepare.py)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = set(MANIFEST_FIELDS) - set(rows[0] if rows else MANIFEST_FIELDS)
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    return rows


# --- the prepared face set ------------------------------------------------------------------


@dataclass
class FaceSet:
    """Prepared ground-truth faces held in memory: images N x S x S x 3 uint8 RGB, photo masks N x S x S."""

    images: np.ndarray
    masks: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @classmethod
    def load(cls, root: str | Path, split: str | None = "train", limit: int | None = None) -> "FaceSet":
        """Decode the faces of one split ("train", "val", or None for all) of a prepared folder."""
        rows = [r for r in read_manifest(root) if split is None or r["split"] == split]
        rows = rows[:limit] if limit else rows
        if not rows:
            raise DataError(f"{Path(root) / MANIFEST} has no faces in split {split!r}")
        images, masks = [], []
        for row in rows:
            bgr = cv2.imread(str(Path(root) / row["file"]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(f"cannot read {Path(root) / row['file']} listed in the manifest")
            if images and bgr.shape != images[0].shape:
                raise DataError(f"{row['file']} is {bgr.shape[:2]}, the others {images[0].shape[:2]}")
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            transform = np.array(json.loads(row["transform"]), np.float64).reshape(2, 3)
            masks.append(photo_mask(transform, (int(row["src_h"]), int(row["src_w"])), bgr.shape[0]))
        log.info("loaded %d %s faces of %d px from %s", len(images), split or "all", images[0].shape[0], root)
        return cls(np.stack(images), np.stack(masks), [r["file"] for r in rows])


# --- resampling and degradations ------------------------------------------------------------


def resize(img: np.ndarray, size: int | tuple[int, int], kernel: str = "bicubic") -> np.ndarray:
    """Resample an H x W x 3 uint8 image to `size` (side, or (h, w)).

    "bicubic": bicubic with antialiasing when shrinking (PIL / MATLAB imresize style, a = -0.5);
    "area": pixel-area averaging (cv2.INTER_AREA); "nearest": nearest neighbour, no antialiasing."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if img.shape[:2] == (h, w):
        return img.copy()
    if kernel == "bicubic":
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        t = F.interpolate(t.contiguous(memory_format=torch.channels_last), size=(h, w), mode="bicubic",
                          antialias=True, align_corners=False)
        return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy())
    if kernel == "area":
        interp = cv2.INTER_AREA if h <= img.shape[0] else cv2.INTER_CUBIC
        return cv2.resize(img, (w, h), interpolation=interp)
    if kernel == "nearest":
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
    raise ValueError(f"unknown resampling kernel {kernel!r}; valid: {', '.join(KERNELS)}")


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a photo mask; a pixel stays True only where it is (almost) entirely photo."""
    if mask.shape == (size, size):
        return mask
    interp = cv2.INTER_AREA if size < mask.shape[0] else cv2.INTER_NEAREST
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=interp) > 0.999


def jpeg(img_rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress and decode an RGB image (in BGR order, as a camera's encoder sees colour)."""
    return cv2.cvtColor(camera.jpeg(cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), quality), cv2.COLOR_BGR2RGB)


def make_lr(gt: np.ndarray, size: int, degrade: str = "bicubic", jpeg_quality: int = NN_JPEG_QUALITY) -> np.ndarray:
    """The deterministic evaluation LR image: "bicubic" (antialiased) or "nn-jpeg" (nearest + JPEG)."""
    if degrade == "bicubic":
        return resize(gt, size, "bicubic")
    if degrade == "nn-jpeg":
        return jpeg(resize(gt, size, "nearest"), jpeg_quality)
    raise ValueError(f"unknown degradation {degrade!r}; valid: {', '.join(EVAL_DEGRADATIONS)}")


@dataclass
class Degradation:
    """Random LR degradation: [Gaussian blur] -> down-sampling kernel -> [noise] -> [JPEG].

    kernels: probability of each down-sampling kernel (bicubic, area, nearest).
    blur / noise / jpeg: probability of each step; *_sigma / jpeg_quality: uniform ranges
    (blur sigma in LR pixels, noise sigma on the 0-255 scale)."""

    kernels: dict = field(default_factory=lambda: {"bicubic": 1.0})
    blur: float = 0.0
    blur_sigma: tuple = (0.3, 1.5)
    noise: float = 0.0
    noise_sigma: tuple = (1.0, 10.0)
    jpeg: float = 0.0
    jpeg_quality: tuple = (30, 95)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kernels) - set(KERNELS))
        if unknown or not self.kernels or min(self.kernels.values()) < 0 or sum(self.kernels.values()) <= 0:
            raise ConfigError(f"must map {', '.join(KERNELS)} to probabilities, got {self.kernels!r}", key="kernels")
        for name in ("blur", "noise", "jpeg"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"must be a probability in [0, 1], got {getattr(self, name)!r}", key=name)

    def __call__(self, gt: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        img = gt
        if rng.random() < self.blur:
            sigma = rng.uniform(*self.blur_sigma) * gt.shape[0] / size  # in GT pixels
            img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        names = list(self.kernels)
        p = np.array([self.kernels[k] for k in names], np.float64)
        img = resize(img, size, names[rng.choice(len(names), p=p / p.sum())])
        if rng.random() < self.noise:
            noisy = img + rng.normal(0.0, rng.uniform(*self.noise_sigma), img.shape)
            img = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
        if rng.random() < self.jpeg:
            img = jpeg(img, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
        return img

    def sample(self, gt: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        """(LR, None): the HR target is the whole ground truth resampled (see `hr_target`)."""
        return self(gt, size, rng), None


@dataclass
class FrameDegradation:
    """What the pipeline really feeds the model: the face in a camera frame, then the aligner's crop.

    Per sample: the ground-truth face (canonical framing, S x S) is placed in a small frame at the
    camera's scale (its canonical side = the LR size L), rolled by up to `roll` degrees, at a
    random sub-pixel and JPEG/H.264 block-grid phase, through a Gaussian optics + pixel blur of
    `pixel_sigma` + psf (frame px); with probability 1 - `clean` the camera then adds noise and
    compresses the frame (JPEG or H.264, models/camera.py); finally the landmarks, jittered like a
    detector's on a small face (s.d. `landmark_jitter` x the eye distance), drive the pipeline's own
    aligner (pipeline.align.align_face) to cut the L x L crop. A share `aligned` of the samples
    is the paper's protocol instead (the aligned face shrunk with antialiased bicubic): it keeps the
    model sharp on clean, well-resolved faces. Returns the crop and the 2 x 3 transform ground-truth px -> crop px, so
    the HR target is the very same (jittered) canonical window.
    """

    aligned: float = 0.25
    clean: float = 0.35
    pixel_sigma: float = 0.35
    psf_sigma: tuple = (0.0, 0.7)
    roll: float = 15.0
    landmark_jitter: tuple = (0.0, 0.06)
    noise: float = 0.5
    noise_sigma: tuple = (1.0, 10.0)
    h264: float = 0.5
    jpeg_quality: tuple = (25, 90)
    h264_crf: tuple = (20, 40)

    def __post_init__(self) -> None:
        for name in ("aligned", "clean", "noise", "h264"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"must be a probability in [0, 1], got {getattr(self, name)!r}", key=name)

    def sample(self, gt: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        if rng.random() < self.aligned:
            return resize(gt, size, "bicubic"), None
        from pipeline.align import TEMPLATE, align_face  # the aligner's own warp, not a copy
        from pipeline.records import Detection

        s = size / gt.shape[0]  # frame px per ground-truth px
        theta = np.deg2rad(rng.uniform(-self.roll, self.roll))
        side = int(np.ceil(size * 1.6)) + 8
        centre = np.array([side / 2, side / 2]) + rng.uniform(0, 8, 2)  # sub-pixel and 8x8 block phase
        rot = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        to_frame = np.hstack([rot, (centre - rot @ np.full(2, (gt.shape[0] - 1) / 2))[:, None]])
        sigma = max(float(np.hypot(self.pixel_sigma, rng.uniform(*self.psf_sigma))), 0.05) / s  # in GT px
        frame = cv2.warpAffine(cv2.GaussianBlur(gt, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE), to_frame,
                               (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if rng.random() >= self.clean:
            noise = rng.uniform(*self.noise_sigma) if rng.random() < self.noise else 0.0
            if rng.random() < self.h264:
                cam = camera.CameraModel(noise, h264_crf=int(rng.integers(self.h264_crf[0], self.h264_crf[1] + 1)))
            else:
                cam = camera.CameraModel(noise, jpeg_quality=int(rng.integers(self.jpeg_quality[0],
                                                                             self.jpeg_quality[1] + 1)))
            frame = cam(frame, rng)
        landmarks = TEMPLATE.for_size(gt.shape[0]) @ to_frame[:, :2].T + to_frame[:, 2]
        eye = float(np.linalg.norm(landmarks[1] - landmarks[0]))
        landmarks = landmarks + rng.normal(0.0, rng.uniform(*self.landmark_jitter) * eye, landmarks.shape)
        face = align_face(frame, Detection(np.zeros(4), 1.0, landmarks), 0, 0, min_size=size, max_size=size)
        lr = cv2.cvtColor(face.crop, cv2.COLOR_BGR2RGB)
        to_lr = face.transform @ np.vstack([to_frame, [0, 0, 1]])
        return lr, to_lr


def scale_pixels(k: float) -> np.ndarray:
    """The 2 x 3 map of pixel centres when an image is resized by k: p -> (p + 0.5) k - 0.5."""
    return np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5]])


def hr_target(gt: np.ndarray, mask: np.ndarray, hr_size: int, lr_size: int,
              to_lr: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The HR target and its photo mask: the ground truth resampled to hr_size, or, given the
    ground truth -> LR crop transform, the LR crop's own window rendered at hr_size."""
    if to_lr is None:
        return resize(gt, hr_size, "bicubic"), resize_mask(mask, hr_size)
    m = scale_pixels(hr_size / lr_size) @ np.vstack([to_lr, [0, 0, 1]])  # gt px -> crop px -> HR px (as pipeline.align)
    hr = cv2.warpAffine(gt, m, (hr_size, hr_size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(mask.astype(np.uint8), m, (hr_size, hr_size), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return hr, inside.astype(bool)


# --- LR-HR pairs ----------------------------------------------------------------------------


@dataclass
class PairConfig:
    """lr / hr: inclusive ranges of the LR level L and HR level H sampled per batch (sec. 4.2);
    queries: HR pixels sampled per image; photo_only: sample them inside the photo mask only."""

    lr: tuple = (64, 64)
    hr: tuple = (64, 128)
    queries: int = 2304
    batch_size: int = 16
    flip: bool = True
    photo_only: bool = True
    gray: float = 0.0  # chance of a grayscale sample (night / IR cameras): LR and HR alike
    degradation: Degradation | FrameDegradation = field(default_factory=Degradation)

    def __post_init__(self) -> None:
        for name in ("lr", "hr"):
            value = list(getattr(self, name))
            if len(value) != 2 or not 8 <= value[0] <= value[1]:
                raise ConfigError(f"must be a range [lo, hi] with 8 <= lo <= hi, got {value}", key=name)
        if self.hr[1] < self.lr[0]:
            raise ConfigError(f"{list(self.hr)} is below lr {list(self.lr)}", key="hr")
        for name in ("queries", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)!r}", key=name)
        if not 0.0 <= self.gray <= 1.0:
            raise ConfigError(f"must be a probability in [0, 1], got {self.gray!r}", key="gray")


def query_pixels(hr: np.ndarray, mask: np.ndarray | None, n: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sample n pixels of an H x W x 3 target (inside `mask` when given): (flat indices, RGB in [0, 1])."""
    pool = np.flatnonzero(mask) if mask is not None else None
    if pool is None or pool.size == 0:
        pool = np.arange(hr.shape[0] * hr.shape[1])
    idx = rng.choice(pool, n, replace=pool.size < n)
    return idx, hr.reshape(-1, 3)[idx].astype(np.float32) / 255.0


class PairSampler:
    """LR-HR training batches; batch `step` depends only on (seed, step), so a resumed run sees
    exactly the batches an uninterrupted one would."""

    def __init__(self, faces: FaceSet, cfg: PairConfig, seed: int = 0, chips: np.ndarray | None = None,
                 identity_faces: int = 0, identity_grid: int = 100):
        """chips, identity_faces, identity_grid: with chip transforms (models.identity.chip_transforms),
        the first `identity_faces` faces of a batch also get their dlib chip rendered as queries."""
        self.faces, self.cfg, self.seed = faces, cfg, seed
        self.chips, self.identity_faces, self.identity_grid = chips, identity_faces if chips is not None else 0, identity_grid
        if cfg.hr[1] > faces.size:
            log.warning("HR targets up to %d px are up-sampled from %d px ground truth; prepare the data at "
                        "--size %d to avoid it", cfg.hr[1], faces.size, cfg.hr[1])

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """{"lr": B x 3 x L x L, "coord": B x Q x 2, "ratio": B x Q x 2, "rgb": B x Q x 3} (float, [0, 1])."""
        cfg, rng = self.cfg, np.random.default_rng([self.seed, step])
        lr_size = int(rng.integers(cfg.lr[0], cfg.lr[1] + 1))
        hr_size = int(rng.integers(max(cfg.hr[0], lr_size), cfg.hr[1] + 1))
        coord_table = make_coord(hr_size, hr_size)
        lrs, coords, rgbs, ids = [], [], [], []
        for b, i in enumerate(rng.choice(len(self.faces), cfg.batch_size, replace=len(self.faces) < cfg.batch_size)):
            gt, mask = self.faces.images[i], self.faces.masks[i]
            chip = self.chips[i] if b < self.identity_faces else None
            if cfg.flip and rng.random() < 0.5:
                gt, mask = gt[:, ::-1], mask[:, ::-1]
                chip = identity.flip_chip(chip, self.faces.size) if chip is not None else None
            if cfg.gray and rng.random() < cfg.gray:
                gt = cv2.cvtColor(cv2.cvtColor(np.ascontiguousarray(gt), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            gt, mask = np.ascontiguousarray(gt), np.ascontiguousarray(mask)
            lr, to_lr = cfg.degradation.sample(gt, lr_size, rng)
            hr, hr_mask = hr_target(gt, mask, hr_size, lr_size, to_lr)
            idx, rgb = query_pixels(hr, hr_mask if cfg.photo_only else None, cfg.queries, rng)
            lrs.append(lr)
            coords.append(coord_table[torch.from_numpy(idx)])
            rgbs.append(torch.from_numpy(rgb))
            if chip is not None:
                ids.append(self._identity_sample(gt, chip, to_lr, lr_size))
        lr = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).float().div_(255.0)
        coord = torch.stack(coords)
        ratio = torch.tensor([lr_size / hr_size] * 2).expand_as(coord).contiguous()
        batch = {"lr": lr.contiguous(), "coord": coord, "ratio": ratio, "rgb": torch.stack(rgbs)}
        if ids:
            id_coord, id_ratio, id_hr = zip(*ids)
            batch["id_coord"] = torch.from_numpy(np.stack(id_coord))
            batch["id_ratio"] = torch.from_numpy(np.stack(id_ratio))[:, None].expand_as(batch["id_coord"]).contiguous()
            batch["id_hr"] = torch.from_numpy(np.stack(id_hr)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return batch

    def _identity_sample(self, gt: np.ndarray, chip: np.ndarray, to_lr: np.ndarray | None, lr_size: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chip's query coordinates in the LR image, their scale ratio, and the ground truth's chip."""
        if to_lr is None:  # the LR is the whole face shrunk
            to_lr = scale_pixels(lr_size / gt.shape[0])
        coord, ratio = identity.chip_queries(chip, to_lr, lr_size, self.identity_grid)
        return coord, ratio, identity.gt_chip(gt, chip)


class PairStream(IterableDataset):
    """Batches for steps [start, stop) for a DataLoader(batch_size=None, num_workers=any).

    With W workers, worker k makes steps start + k, start + k + W, ...: the DataLoader takes one batch from each
    worker in turn, so the batches arrive in step order and equal those of one process (each is a function of
    its step alone), which keeps --resume exact whatever the worker count.
    """

    def __init__(self, sampler: PairSampler, start: int, stop: int):
        super().__init__()
        self.sampler, self.start, self.stop = sampler, start, stop

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        first, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        for step in range(self.start + first, self.stop, stride):
            yield self.sampler.batch(step)
