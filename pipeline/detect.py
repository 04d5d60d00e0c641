"""Face detection: the MTCNN cascade (Zhang et al., "Joint Face Detection and Alignment Using
Multitask Cascaded Convolutional Networks", IEEE SPL 2016).

P-Net slides over an image pyramid and proposes candidate windows, R-Net rejects most of them
and refines the rest, O-Net gives the final boxes, scores and five landmarks. Non-maximum
suppression (NMS) merges overlapping windows after each stage, and every window is squared
before it is cropped for the next stage.

The weights are the ones shipped in the facenet-pytorch wheel (`facenet_pytorch/data/*.pt`).
The wheel is located on disk but never imported (it imports torchvision). The steps follow the
stock `facenet_pytorch.MTCNN` (same pyramid, area resampling when shrinking, box regression, NMS
variants), so results match it on frames no larger than `max_side` whose faces are all larger
than O-Net's 48 px window. One deliberate difference: where an image is enlarged (a pyramid level
above scale 1, or an R-Net / O-Net crop smaller than 24 / 48 px, i.e. a small face), it is
resampled bilinearly; the stock "area" kernel repeats pixels into blocks there, and small JPEG
faces are then missed (benchmarks/detect_small.py). Frames are batched through the pyramid
(all frames of one size together); crops for R-Net and O-Net are resampled for all windows at
once from a summed-area table (and the frames' pixels, for the enlarged ones), as are the
shrunk pyramid levels. `detect_around` runs the same cascade only on regions around where faces
are expected (a tracker's predictions; detect.roi), and `profile` says where the time went.

Example:
    >>> import numpy as np
    >>> detector = MTCNNDetector(device="cpu")
    >>> detector.detect([np.zeros((120, 160, 3), np.uint8)])  # BGR frames in, one list per frame
    [[]]
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import setting, validate
from models.checkpoint import resolve_device

from .errors import ConfigError, PipelineError
from .records import Detection

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"
MAX_FRAMES_PER_BATCH = 16  # frames pushed through the pyramid together (bounds memory)
MAX_CROPS_PER_BATCH = 512  # R-Net / O-Net windows per forward pass (bounds memory)
STAGES = ("pnet", "rnet", "onet", "other")
ROI_FACE = 48  # px: an expected face's side in its region-of-interest crop (O-Net's window)
ROI_PAD = 1.0  # a region of interest: the expected box grown by this many box sides on each side


@dataclass
class DetectProfile:
    """Where a detector's time went, summed over its detect() calls (see MTCNNDetector.profile).

    seconds: per stage: "pnet" (pyramid resampling, P-Net, its NMS), "rnet" and "onet" (crops,
        network, NMS), "other" (input conversion, resizing, summed-area tables, results).
    pnet_pixels: pixels P-Net ran on (all pyramid levels of all frames); rnet_windows /
        onet_windows: crops those networks scored. Work counts, independent of the machine's load.
    """

    frames: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    pnet_pixels: int = 0
    rnet_windows: int = 0
    onet_windows: int = 0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class DetectorConfig:
    """MTCNN settings; the defaults are facenet-pytorch's.

    min_face_size: smallest face searched for, in pixels of the (possibly down-scaled) image.
        Below 12 (P-Net's window) the pyramid starts above scale 1: the frame is enlarged
        (bilinear) and detection time grows roughly as 1 / min_face_size^2.
    thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
    factor: scale step between pyramid levels.
    max_side: frames whose longer side exceeds this are down-scaled to it before detection;
        boxes and landmarks are mapped back to frame pixels. None: never down-scale.
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    """

    min_face_size: int = setting(20, lo=1)
    thresholds: tuple = setting((0.6, 0.7, 0.7), lo=0.0, hi=1.0)
    factor: float = setting(0.709, gt=0.0, lt=1.0)
    max_side: int | None = setting(1280, lo=12)
    device: str = "auto"

    def __post_init__(self) -> None:
        validate(self)
        if len(self.thresholds) != 3:
            raise ConfigError(f"must be 3 numbers in [0, 1], got {list(self.thresholds)!r}", key="thresholds")


# --- the three networks (layer names match the shipped state dicts) --------------------------


def _flatten_like_caffe(x: Tensor) -> Tensor:
    """Flatten N x C x H x W in (W, H, C) order, the order the converted dense weights expect."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal network: fully convolutional; each output cell scores a 12 x 12 window, stride 2.

    Returns (box offsets N x 4 x h x w, face probability N x h x w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


class RNet(nn.Module):
    """Refinement network on 24 x 24 crops. Returns (box offsets N x 4, face probability N)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_like_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Output network on 48 x 48 crops.

    Returns (box offsets N x 4, landmarks N x 10 as 5 x then 5 y in [0, 1], face probability N)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_like_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


def weights_dir() -> Path:
    """The `data/` folder of the installed facenet-pytorch wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / f"{name}.pt").is_file() for name in ("pnet", "rnet", "onet")):
            return folder
    raise PipelineError(
        "MTCNN weights not found (pnet.pt, rnet.pt, onet.pt from the facenet-pytorch wheel); "
        f"install them with: {INSTALL_HINT}"
    )


def _load(net: nn.Module, path: Path, device: torch.device) -> nn.Module:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # a corrupt or foreign file: tell the user how to repair it
        raise PipelineError(f"cannot load MTCNN weights {path}: {exc}; reinstall with: {INSTALL_HINT}") from exc
    return net.to(device).eval()


# --- cascade building blocks ----------------------------------------------------------------


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which P-Net's 12 px window covers faces from min_face_size up to the image."""
    scale = 12.0 / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def pyramid_level(rgb: Tensor, table: Tensor, size: tuple[int, int]) -> Tensor:
    """One pyramid level of B x H x W x C uint8 images (`table`: their summed-area table) as
    B x C x h x w float, channels-last in memory like the frames (P-Net's convolutions measured
    about 1.5x faster so than on contiguous N x C x H x W).

    Shrinking: area averaging, the reference's kernel (F.interpolate(mode="area")), computed from
    the summed-area table: a few gathers instead of adaptive average pooling over the whole frame,
    which took about a sixth of the detector's time on a 1280 x 720 frame. Enlarging (levels above scale 1, for faces
    below P-Net's 12 px window, and the one-pixel stretch at scale 1): bilinear, where "area" would
    repeat pixels."""
    height, width = rgb.shape[1:3]
    if size[0] <= height and size[1] <= width:
        zero = torch.zeros(1, dtype=torch.long, device=rgb.device)
        y_lo, y_hi = (b[0] for b in _area_bins(zero, zero + height, size[0]))
        x_lo, x_hi = (b[0] for b in _area_bins(zero, zero + width, size[1]))
        rows = table.index_select(1, y_hi) - table.index_select(1, y_lo)  # B x h x (W+1) x C
        total = rows.index_select(2, x_hi) - rows.index_select(2, x_lo)  # B x h x w x C
        area = (y_hi - y_lo)[:, None] * (x_hi - x_lo)[None, :]
        return (total.float() / area[..., None].float()).permute(0, 3, 1, 2)
    images = rgb.permute(0, 3, 1, 2).float()
    level = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return level.contiguous(memory_format=torch.channels_last)


def _overlaps(boxes: np.ndarray, others: np.ndarray, pad: float, mode: str) -> np.ndarray:
    """Overlap matrix len(boxes) x len(others): IoU, or intersection over the smaller area."""
    a, b = boxes[:, None, :], others[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + pad, 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + pad, 0.0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + pad) * (a[..., 3] - a[..., 1] + pad)
    area_b = (b[..., 2] - b[..., 0] + pad) * (b[..., 3] - b[..., 1] + pad)
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: NaN, never "overlapping"
        if mode == "min":
            return inter / np.minimum(area_a, area_b)
        return inter / (area_a + area_b - inter)


def _overlapping_pairs(
    boxes: np.ndarray, groups: np.ndarray, threshold: float, mode: str, block: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (p, q) of boxes in the same group whose overlap exceeds threshold.

    Boxes are swept in order of (group, x1), so each block is compared only with the boxes
    that start before its right edge: near-linear for the sparse overlaps of a real image."""
    pad = 1.0 if mode == "min" else 0.0
    x1, x2 = boxes[:, 0].astype(np.float64), boxes[:, 2].astype(np.float64)
    span = float(max(x1.max(), x2.max()) - min(x1.min(), x2.min())) + 2.0 + pad
    start = groups * span + (x1 - x1.min())  # sort key: group, then left edge
    end = groups * span + (x2 - x1.min()) + pad
    by_x = np.argsort(start, kind="stable")
    start_sorted = start[by_x]
    firsts, seconds = [], []
    for s in range(0, len(by_x), block):
        rows = by_x[s : s + block]
        stop = int(np.searchsorted(start_sorted, end[rows].max(), side="left"))
        cols = by_x[s:stop]
        hit = _overlaps(boxes[rows], boxes[cols], pad, mode).astype(np.float64) > threshold
        hit &= groups[rows][:, None] == groups[cols][None, :]
        hit &= np.arange(s, s + len(rows))[:, None] < np.arange(s, stop)[None, :]  # each pair once
        r, c = np.nonzero(hit)
        firsts.append(rows[r])
        seconds.append(cols[c])
    return np.concatenate(firsts), np.concatenate(seconds)


def nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    threshold: float,
    mode: Literal["union", "min"] = "union",
) -> Tensor:
    """Greedy non-maximum suppression, independently within each group (= image).

    Overlap is IoU ("union") or intersection over the smaller area ("min", the paper's last
    stage, with areas counted inclusively in pixels as in the reference implementation).
    A box is dropped when it overlaps a kept, higher-scoring box by more than threshold.
    Returns the kept indices, best score first.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    b = boxes.detach().cpu().float().numpy()  # float32 like the reference, for identical ties
    g = groups.detach().cpu().numpy()
    order = np.argsort(-scores.detach().cpu().numpy(), kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    p, q = _overlapping_pairs(b, g, threshold, mode)
    better, worse = np.where(rank[p] < rank[q], p, q), np.where(rank[p] < rank[q], q, p)
    # neighbours[ptr[r]:ptr[r + 1]]: the lower-ranked boxes overlapping the box of rank r
    by_rank = np.argsort(rank[better], kind="stable")
    neighbours = worse[by_rank]
    ptr = np.searchsorted(rank[better][by_rank], np.arange(n + 1)).tolist()
    suppressed = np.zeros(n, bool)
    keep = []
    for r, i in enumerate(order.tolist()):
        if not suppressed[i]:
            keep.append(i)
            if ptr[r + 1] > ptr[r]:
                suppressed[neighbours[ptr[r] : ptr[r + 1]]] = True
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


def regress(boxes: Tensor, offsets: Tensor, inclusive: bool) -> Tensor:
    """Apply the networks' box regression (offsets in units of box width/height).

    `inclusive` counts sizes as x2 - x1 + 1 (R-Net, O-Net) rather than x2 - x1 (P-Net)."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + (1.0 if inclusive else 0.0)
    return boxes + offsets * size.repeat(1, 2)


def square(boxes: Tensor) -> Tensor:
    """Grow each box to a square around the same centre (side = the longer side)."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(1, keepdim=True).values
    top_left = boxes[:, 0:2] + 0.5 * size - 0.5 * side
    return torch.cat([top_left, top_left + side], 1)


def crop_windows(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Integer crop windows [x0, x1) x [y0, y1) for boxes, clipped to the image (the reference's
    1-based "pad" convention: a crop starts one pixel before the truncated box corner).

    Returns (windows N x 4 int64 as x0, y0, x1, y1; mask of non-empty windows)."""
    b = boxes.trunc().long()
    x0 = b[:, 0].clamp(min=1) - 1
    y0 = b[:, 1].clamp(min=1) - 1
    x1 = b[:, 2].clamp(max=width)
    y1 = b[:, 3].clamp(max=height)
    windows = torch.stack([x0, y0, x1, y1], 1)
    return windows, (x1 > x0) & (y1 > y0)


def summed_area_table(images: Tensor) -> Tensor:
    """B x H x W x C uint8 -> B x (H+1) x (W+1) x C integer table (exact sums of any rectangle;
    int32 when it cannot overflow, which halves the memory traffic of the crops)."""
    _, height, width, _ = images.shape
    dtype = torch.int32 if 255 * height * width < 2**31 else torch.int64
    table = images.to(dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
    return F.pad(table, (0, 0, 1, 0, 1, 0))


def resample_windows(
    table: Tensor, image_index: Tensor, windows: Tensor, size: int, images: Tensor | None = None
) -> Tensor:
    """Resample every window to size x size: N x C x size x size float in [0, 255].

    Each axis is resampled on its own. Shrinking (window side >= size): output pixel i averages
    input rows [floor(i*L/size), ceil((i+1)*L/size)), exactly what F.interpolate(crop, size,
    mode="area") does per crop, from the summed-area table `table`. Enlarging (side < size: a
    face smaller than R-Net's 24 px or O-Net's 48 px window): bilinear between pixel centres,
    edges clamped, like F.interpolate(mode="bilinear", align_corners=False); "area" would repeat
    pixels into blocks, which the networks never saw in training. `images` (B x H x W x C, the
    frames of the table) supplies the pixels for that; None: they are recovered from the table.
    """
    lengths = windows[:, 2:4] - windows[:, 0:2]
    down, up = (lengths >= size).all(1), (lengths < size).all(1)
    if bool(down.all()):
        return _area_windows(table, image_index, windows, size).permute(0, 3, 1, 2)  # channels-last: faster convs
    if images is None:
        images = table.diff(dim=1).diff(dim=2)
    out = torch.empty(len(windows), size, size, table.shape[3], device=windows.device)
    if bool(down.any()):
        out[down] = _area_windows(table, image_index[down], windows[down], size)
    if bool(up.any()):
        out[up] = _bilinear_windows(images, image_index[up], windows[up], size)
    for k in torch.nonzero(~(down | up)).flatten().tolist():  # one side of each kind: rare (clipped at a border)
        x0, y0, x1, y1 = windows[k].tolist()
        crop = images[image_index[k], y0:y1, x0:x1].permute(2, 0, 1)[None].float()
        crop = _resize_axis(crop, size, y1 - y0 < size, dim=2)
        out[k] = _resize_axis(crop, size, x1 - x0 < size, dim=3)[0].permute(1, 2, 0)
    return out.permute(0, 3, 1, 2)


def _resize_axis(crop: Tensor, size: int, enlarge: bool, dim: int) -> Tensor:
    target = (size, crop.shape[3]) if dim == 2 else (crop.shape[2], size)
    if enlarge:
        return F.interpolate(crop, size=target, mode="bilinear", align_corners=False)
    return F.interpolate(crop, size=target, mode="area")


def _area_bins(start: Tensor, end: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Rows (or columns) [lo, hi) that each of `size` outputs averages over [start, end): N x size
    each, the bins of adaptive average pooling (F.interpolate(mode="area"))."""
    i = torch.arange(size, device=start.device)
    length = (end - start)[:, None]
    return start[:, None] + (i * length) // size, start[:, None] + ((i + 1) * length + size - 1) // size


def _area_windows(table: Tensor, image_index: Tensor, windows: Tensor, size: int) -> Tensor:
    """Area-resample (box average) every window: N x size x size x C, exact (integer sums)."""
    batch, rows, cols, channels = table.shape
    x_lo, x_hi = _area_bins(windows[:, 0], windows[:, 2], size)
    y_lo, y_hi = _area_bins(windows[:, 1], windows[:, 3], size)
    flat = table.reshape(batch * rows * cols, channels)
    base = image_index[:, None, None] * rows

    def corner(ys: Tensor, xs: Tensor) -> Tensor:  # N x size x size x C
        index = ((base + ys[:, :, None]) * cols + xs[:, None, :]).flatten()
        return flat.index_select(0, index).view(len(windows), size, size, channels)

    total = corner(y_hi, x_hi) - corner(y_lo, x_hi) - corner(y_hi, x_lo) + corner(y_lo, x_lo)
    area = (y_hi - y_lo)[:, :, None] * (x_hi - x_lo)[:, None, :]
    return total.float() / area[..., None].float()


def _bilinear_windows(images: Tensor, image_index: Tensor, windows: Tensor, size: int) -> Tensor:
    """Bilinear resampling of every window (pixel centres, edges clamped): N x size x size x C."""
    batch, rows, cols, channels = images.shape
    i = torch.arange(size, device=windows.device, dtype=torch.float32)

    def taps(start: Tensor, end: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s, e = start[:, None], end[:, None]
        src = ((i + 0.5) * (e - s).float() / size - 0.5).clamp(min=0)  # window coordinates
        p = src.long()  # floor (src >= 0)
        frac = src - p
        p0 = (s + p).clamp(max=e - 1)
        return p0, (p0 + 1).clamp(max=e - 1), frac

    x0, x1, fx = taps(windows[:, 0], windows[:, 2])
    y0, y1, fy = taps(windows[:, 1], windows[:, 3])
    flat = images.reshape(batch * rows * cols, channels)
    base = image_index[:, None, None] * rows
    row0, row1 = (base + y0[:, :, None]) * cols, (base + y1[:, :, None]) * cols  # N x size x 1
    x0, x1 = x0[:, None, :], x1[:, None, :]  # N x 1 x size

    def pixel(row: Tensor, xs: Tensor) -> Tensor:  # N x size x size x C
        return flat.index_select(0, (row + xs).flatten()).view(len(windows), size, size, channels).float()

    fx, fy = fx[:, None, :, None], fy[:, :, None, None]
    top = pixel(row0, x0).lerp_(pixel(row0, x1), fx)
    bottom = pixel(row1, x0).lerp_(pixel(row1, x1), fx)
    return top.lerp_(bottom, fy)


def _normalize(pixels: Tensor) -> Tensor:
    return (pixels - 127.5) * 0.0078125


def _detections(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray) -> list[Detection]:
    return [Detection(box=b, score=float(p), landmarks=m) for b, p, m in zip(boxes, scores, points)]


def _once(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[Detection]:
    """The faces of several searches of one frame (per search: boxes, scores, landmarks in frame pixels), a face
    found by two overlapping searches kept once (NMS, intersection over the smaller box), best first."""
    if not parts:
        return []
    boxes, scores, points = (np.concatenate(p) for p in zip(*parts))
    keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(len(scores), dtype=torch.long), 0.7,
               mode="min").numpy()
    return _detections(boxes[keep], scores[keep], points[keep])


def _in_chunks(fn: Callable[[slice], tuple[Tensor, ...]], n: int, chunk: int) -> tuple[Tensor, ...]:
    outs = [fn(slice(s, s + chunk)) for s in range(0, max(n, 1), chunk)]  # n == 0: one empty call
    return tuple(torch.cat(parts) for parts in zip(*outs))


def roi_windows(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Square crop windows (x0, y0, side), N x 3 int, around expected face boxes (N x 4 xyxy) in a
    height x width frame: centred on the box, side (1 + 2 * ROI_PAD) x the box's longer side (a face
    that moved up to ROI_PAD sides since it was tracked is still whole inside), moved inside the
    frame rather than cut by its edge, and no larger than the frame's shorter side."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    side = np.clip(np.round(longer * (1 + 2 * ROI_PAD)), 1, min(height, width)).astype(int)
    x0 = np.round((boxes[:, 0] + boxes[:, 2] - side) / 2).astype(int)
    y0 = np.round((boxes[:, 1] + boxes[:, 3] - side) / 2).astype(int)
    return np.stack([np.clip(x0, 0, width - side), np.clip(y0, 0, height - side), side], 1)


# --- the detector ---------------------------------------------------------------------------


class MTCNNDetector:
    """MTCNN face detector over batches of BGR uint8 frames.

    Example:
        >>> import numpy as np
        >>> detector = MTCNNDetector(device="cpu", min_face_size=40)
        >>> [faces] = detector.detect([np.zeros((240, 320, 3), np.uint8)])
        >>> faces  # Detection(box xyxy, score, landmarks 5 x 2) per face, best first
        []
    """

    def __init__(self, config: DetectorConfig | None = None, **overrides: object) -> None:
        config = config or DetectorConfig()
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DetectorConfig)})
        if unknown:
            raise ConfigError(f"unknown detector setting(s): {', '.join(unknown)}")
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.device = resolve_device(self.config.device, "detect.device")
        folder = weights_dir()
        self.pnet = _load(PNet(), folder / "pnet.pt", self.device)
        self.rnet = _load(RNet(), folder / "rnet.pt", self.device)
        self.onet = _load(ONet(), folder / "onet.pt", self.device)
        self._warned: set[str] = set()
        self.profile = DetectProfile()
        log.debug("MTCNN on %s, %s", self.device, self.config)

    def reconfigured(self, config: DetectorConfig) -> MTCNNDetector:
        """A detector with other settings (thresholds, minimum face, ...) sharing this one's networks: the
        cameras of a run share one copy of the weights whatever their detection settings."""
        if resolve_device(config.device, "detect.device") != self.device:
            raise ConfigError("detect.device must be the same for every camera of a run")
        other = copy.copy(self)
        other.config, other._warned, other.profile = config, set(), DetectProfile()
        return other

    @torch.inference_mode()
    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detect faces in each frame (H x W x 3 uint8 BGR; grayscale and BGRA are converted).

        Returns one list per frame of Detections, highest score first; boxes (xyxy) and
        landmarks (left eye, right eye, nose, mouth left, mouth right; x, y) in frame pixels.
        """
        with self._profiling(len(frames)):
            images = [self._as_bgr(frame, k) for k, frame in enumerate(frames)]
            sizes = [self.detection_size(*image.shape[:2]) for image in images]
            found = self._cascade_each([self._resize(image, size) for image, size in zip(images, sizes)],
                                       self.config.min_face_size)
            results: list[list[Detection]] = []
            for image, size, (boxes, scores, points) in zip(images, sizes, found):
                scale = np.array([image.shape[1] / size[1], image.shape[0] / size[0]], np.float32)
                results.append(_detections(boxes * np.tile(scale, 2), scores, points * scale))
            log.debug("detected %d faces in %d frames", sum(map(len, results)), len(images))
        return results

    @torch.inference_mode()
    def detect_around(self, frame: np.ndarray, boxes: np.ndarray) -> list[Detection]:
        """Faces near where they are expected (N x 4 xyxy boxes, e.g. a tracker's predictions) in
        one frame, at a small part of a full detection's cost (detect.roi).

        Each region (`roi_windows`) is scaled so its expected face is ROI_FACE px, and all regions
        go through the cascade as one batch, searching faces from half to the whole region's size.
        A face centred farther than one box side from the expected centre is dropped (it is cut
        by the region's edge; a full detection finds it), and a face found in two overlapping
        regions is kept once. Returns Detections in frame pixels, highest score first."""
        with self._profiling(1):
            image = self._as_bgr(frame, 0)
            windows = roi_windows(boxes, *image.shape[:2])
            if not len(windows):
                return []
            side = round(ROI_FACE * (1 + 2 * ROI_PAD))
            found = self._cascade_each([self._resize(image[y : y + n, x : x + n], (side, side)) for x, y, n in windows],
                                       ROI_FACE / 2)
            expected = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            kept = []
            for (x, y, n), box, (crop_boxes, scores, points) in zip(windows, expected, found):
                scale, origin = np.float32(n / side), np.array([x, y], np.float32)
                crop_boxes, points = crop_boxes * scale + np.tile(origin, 2), points * scale + origin
                reach = np.max(box[2:] - box[:2])
                near = np.all(np.abs((crop_boxes[:, :2] + crop_boxes[:, 2:]) / 2 - (box[:2] + box[2:]) / 2) <= reach, 1)
                kept.append((crop_boxes[near], scores[near], points[near]))
            return _once(kept)

    @torch.inference_mode()
    def detect_regions(self, frame: np.ndarray, regions: np.ndarray) -> list[Detection]:
        """Faces inside parts of one frame (M x 4 int xyxy in frame pixels that do not overlap, e.g.
        pipeline.motion's merged regions), found as a full detection of the frame would find them (the same
        scale and smallest face), at the cost of the parts' pixels. A face cut by a part's edge may be
        missed (the caller pads the parts). Returns Detections in frame pixels, highest score first."""
        with self._profiling(1):
            image = self._as_bgr(frame, 0)
            height, width = image.shape[:2]
            size = self.detection_size(height, width)
            scale = np.array([width / size[1], height / size[0]], np.float32)
            image = self._resize(image, size)
            grid = np.asarray(regions, dtype=float).reshape(-1, 4) / np.tile(scale, 2)  # on the detection's grid
            x0y0 = np.clip(np.floor(grid[:, :2]), 0, None).astype(int)
            x1y1 = np.minimum(np.ceil(grid[:, 2:]), [size[1], size[0]]).astype(int)
            inside = (x1y1 > x0y0).all(1)  # a part on the frame's edge may round to nothing
            x0y0, x1y1 = x0y0[inside], x1y1[inside]
            found = self._cascade_each([image[y0:y1, x0:x1] for (x0, y0), (x1, y1) in zip(x0y0, x1y1)],
                                       self.config.min_face_size)
            return _once([((boxes + np.tile(origin, 2)) * np.tile(scale, 2), scores, (points + origin) * scale)
                          for origin, (boxes, scores, points) in zip(x0y0.astype(np.float32), found)])

    @contextmanager
    def _profiling(self, frames: int) -> Iterator[None]:
        """Adds a call's seconds to the profile: its stages' own (see _timed), the rest as "other"."""
        start = time.perf_counter()
        networks = sum(self.profile.seconds[stage] for stage in STAGES[:3])
        yield
        elapsed = time.perf_counter() - start
        self.profile.frames += frames
        self.profile.seconds["other"] += elapsed - (sum(self.profile.seconds[s] for s in STAGES[:3]) - networks)

    # -- input handling --

    def _as_bgr(self, frame: np.ndarray, k: int) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            kind = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
            raise PipelineError(f"frame {k}: expected an H x W x 3 uint8 BGR image, got {kind}")
        if frame.size == 0:
            raise PipelineError(f"frame {k}: empty image (shape {frame.shape})")
        if frame.ndim == 3 and frame.shape[2] == 3:
            return frame
        if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
            self._warn_once("gray", "grayscale frames are converted to BGR for detection")
            return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
        if frame.ndim == 3 and frame.shape[2] == 4:
            self._warn_once("bgra", "BGRA frames: the alpha channel is ignored for detection")
            return np.ascontiguousarray(frame[:, :, :3])
        raise PipelineError(f"frame {k}: expected an H x W x 3 uint8 BGR image, got shape {frame.shape}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def detection_size(self, height: int, width: int) -> tuple[int, int]:
        """The size (H, W) an H x W frame is detected at: shrunk to detect.max_side."""
        max_side = self.config.max_side
        if max_side is None or max(height, width) <= max_side:
            return height, width
        s = max_side / max(height, width)
        return max(1, round(height * s)), max(1, round(width * s))

    @staticmethod
    def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Area averaging when shrinking; bilinear when enlarging (a small face's region)."""
        if image.shape[:2] == size:
            return image
        shrink = size[0] <= image.shape[0] and size[1] <= image.shape[1]
        return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    # -- the cascade on one batch of equal-size frames --

    def _cascade(self, batch_bgr: np.ndarray, min_face: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """B x H x W x 3 uint8 BGR -> per frame (boxes N x 4, scores N, landmarks N x 5 x 2), for
        faces from min_face px up to the frame's size."""
        rgb = torch.from_numpy(batch_bgr).to(self.device).flip(-1)  # B x H x W x 3, RGB
        table = summed_area_table(rgb)
        boxes, index = self._timed("pnet", self._propose, rgb, table, min_face)
        if len(boxes):
            boxes, index = self._timed("rnet", self._refine, table, rgb, boxes, index)
        if len(boxes):
            boxes, scores, index, points = self._timed("onet", self._output, table, rgb, boxes, index)
        else:
            scores, points = boxes.new_zeros(0), boxes.new_zeros(0, 5, 2)
        boxes, scores, points = (t.float().cpu().numpy() for t in (boxes, scores, points))
        index = index.cpu().numpy()
        return [(boxes[index == b], scores[index == b], points[index == b]) for b in range(len(batch_bgr))]

    def _cascade_each(self, images: Sequence[np.ndarray], min_face: float) -> list[tuple[np.ndarray, ...]]:
        """The cascade on each of `images` (H x W x 3 uint8 BGR, any sizes), those of one size in batches of at
        most MAX_FRAMES_PER_BATCH: per image (boxes N x 4, scores N, landmarks N x 5 x 2) in its pixels."""
        found: list[tuple[np.ndarray, ...]] = [()] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(image.shape, []).append(k)
        for members in groups.values():
            for s in range(0, len(members), MAX_FRAMES_PER_BATCH):
                chunk = members[s : s + MAX_FRAMES_PER_BATCH]
                for k, result in zip(chunk, self._cascade(np.stack([images[k] for k in chunk]), min_face)):
                    found[k] = result
        return found

    def _timed(self, stage: str, fn: Callable, *args: object):
        t0 = time.perf_counter()
        out = fn(*args)
        self.profile.seconds[stage] += time.perf_counter() - t0
        return out

    def _propose(self, rgb: Tensor, table: Tensor, min_face: float) -> tuple[Tensor, Tensor]:
        """Stage 1: P-Net over the pyramid; NMS per level, then across levels; squared boxes.

        One P-Net call per level: packing all levels into one canvas (gaps between them, so that
        no window spans two) was measured 2.7x slower on the CPU (BENCHMARKS.md, "Detection cost")."""
        _, height, width, _ = rgb.shape
        threshold = self.config.thresholds[0]
        found: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for scale in pyramid_scales(height, width, min_face, self.config.factor):
            level = pyramid_level(rgb, table, (int(height * scale + 1), int(width * scale + 1)))
            self.profile.pnet_pixels += level.shape[0] * level.shape[2] * level.shape[3]
            offsets, prob = self.pnet(_normalize(level))
            index, row, col = torch.nonzero(prob >= threshold, as_tuple=True)
            if index.numel() == 0:
                continue
            cell = torch.stack([col, row], 1).float()
            boxes = torch.cat([((2 * cell + 1) / scale).floor(), ((2 * cell + 12) / scale).floor()], 1)
            scores = prob[index, row, col]
            keep = nms(boxes, scores, index, 0.5)
            found.append((boxes[keep], scores[keep], offsets[index, :, row, col][keep], index[keep]))
        if not found:
            return torch.zeros(0, 4, device=rgb.device), torch.zeros(0, dtype=torch.long, device=rgb.device)
        boxes, scores, offsets, index = (torch.cat(parts) for parts in zip(*found))
        keep = nms(boxes, scores, index, 0.7)
        return square(regress(boxes[keep], offsets[keep], inclusive=False)), index[keep]

    def _crops(self, table: Tensor, boxes: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Drop boxes entirely outside their image; return (boxes, index, crop windows)."""
        windows, valid = crop_windows(boxes, table.shape[1] - 1, table.shape[2] - 1)
        return boxes[valid], index[valid], windows[valid]

    def _refine(self, table: Tensor, rgb: Tensor, boxes: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 2: R-Net on 24 x 24 crops; threshold, NMS, regression, squared boxes."""
        boxes, index, windows = self._crops(table, boxes, index)
        self.profile.rnet_windows += len(boxes)
        offsets, prob = _in_chunks(
            lambda s: self.rnet(_normalize(resample_windows(table, index[s], windows[s], 24, rgb))),
            len(boxes), MAX_CROPS_PER_BATCH,
        )
        passed = prob > self.config.thresholds[1]
        boxes, prob, offsets, index = boxes[passed], prob[passed], offsets[passed], index[passed]
        keep = nms(boxes, prob, index, 0.7)
        return square(regress(boxes[keep], offsets[keep], inclusive=True)), index[keep]

    def _output(
        self, table: Tensor, rgb: Tensor, boxes: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stage 3: O-Net on 48 x 48 crops; threshold, landmarks, regression, NMS ("min")."""
        boxes, index, windows = self._crops(table, boxes, index)
        self.profile.onet_windows += len(boxes)
        offsets, marks, prob = _in_chunks(
            lambda s: self.onet(_normalize(resample_windows(table, index[s], windows[s], 48, rgb))),
            len(boxes), MAX_CROPS_PER_BATCH,
        )
        passed = prob > self.config.thresholds[2]
        boxes, prob, offsets, marks, index = boxes[passed], prob[passed], offsets[passed], marks[passed], index[passed]
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        points = marks.view(len(marks), 2, 5).transpose(1, 2) * size[:, None, :] + boxes[:, None, 0:2] - 1
        boxes = regress(boxes, offsets, inclusive=True)
        keep = nms(boxes, prob, index, 0.7, mode="min")
        return boxes[keep], prob[keep], index[keep], points[keep]
