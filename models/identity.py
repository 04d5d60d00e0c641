"""Identity loss: the super-resolved face should have the recognizer's descriptor of the real face.

The pixel loss (eq. 13) rewards the mean of the plausible faces; a recognizer needs the features
that tell one person from another. Training adds

    L = L_delta + lambda * || phi(chip(I_SR)) - phi(chip(I_HR)) ||^2

where phi is dlib's 128-D face descriptor (models/dlib_resnet.py, dlib's own weights in torch) and
chip() is dlib's 150 x 150 face chip as the identity benchmark cuts it from an enhanced face
(pipeline.recognition.DlibEmbedder, realign="canonical"). Being an implicit function, the model
renders the chip directly: it is queried at the chip's pixel grid mapped into the face (a
`grid` x `grid` grid, bilinearly resized to 150 when smaller, to save decoder time on a CPU).
The teacher descriptor is the same network on the ground truth's chip.

The chips' geometry (one affine per training face, from dlib's landmarks on the ground truth) is
measured once per data folder and cached there (`chips.npy`).

Example:
    >>> loss = IdentityLoss()  # doctest: +SKIP
    >>> loss(sr_chips, hr_chips)  # (N, 3, 150, 150) RGB in [0, 1]  # doctest: +SKIP
    tensor(0.21)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .dlib_resnet import INPUT_SIZE, DlibResNet

CHIPS_FILE = "chips.npy"


class IdentityLoss(nn.Module):
    """Mean squared Euclidean distance between dlib descriptors of SR and HR chips (frozen network)."""

    def __init__(self, net: DlibResNet | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else DlibResNet.load()
        self.net.eval().requires_grad_(False)

    def descriptors(self, chips: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) RGB in [0, 1] -> (N, 128); chips not 150 px are resized bilinearly."""
        if chips.shape[-1] != INPUT_SIZE:
            chips = F.interpolate(chips, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return self.net(chips.clamp(0.0, 1.0) * 255.0)

    def forward(self, sr_chips: torch.Tensor, hr_chips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.descriptors(hr_chips)
        return (self.descriptors(sr_chips) - target).pow(2).sum(dim=1).mean()


def chip_transforms(images: np.ndarray, root: Path | str | None = None, names: list[str] | None = None) -> np.ndarray:
    """(N, 2, 3) affines from dlib chip pixels to each face's pixels, for N x S x S x 3 RGB faces in
    the canonical frame; read from / written to `root/chips.npy` when `root` is given (keyed by names and pixels)."""
    cache = Path(root) / CHIPS_FILE if root is not None else None
    if cache is not None and cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        if saved.shape == (len(images), 2, 3) and _key(images, names) == _read_key(cache):
            return saved
    from pipeline.recognition import DlibEmbedder

    embedder = DlibEmbedder(realign="canonical")
    out = np.stack([embedder.chip_transform(np.ascontiguousarray(img[:, :, ::-1]))
                    for img in tqdm(images, desc="chip geometry", unit="face", mininterval=5.0)])
    if cache is not None:
        np.save(cache, out.astype(np.float64))
        cache.with_suffix(".key").write_text(_key(images, names))
    return out


def _key(images: np.ndarray, names: list[str] | None) -> str:
    """The faces' names and pixels: a folder prepared again (another size, other crops) is measured again."""
    digest = hashlib.sha1("\n".join(names or []).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def _read_key(cache: Path) -> str:
    key = cache.with_suffix(".key")
    return key.read_text().strip() if key.is_file() else ""


def flip_chip(chip_to_face: np.ndarray, size: int) -> np.ndarray:
    """The chip transform of the mirrored face: the mirrored chip of the face (same landmarks)."""
    mirror_face = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mirror_chip = np.array([[-1.0, 0.0, INPUT_SIZE - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return (mirror_face @ np.vstack([chip_to_face, [0, 0, 1]]) @ mirror_chip)[:2]


def chip_queries(chip_to_face: np.ndarray, face_to_lr: np.ndarray, lr_size: int, grid: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Query coordinates ((grid*grid) x 2, (y, x) in [-1, 1] of the LR image) and the scale ratio
    (2,) of a `grid` x `grid` rendering of the chip, given face px -> LR px (pixel centres)."""
    step = INPUT_SIZE / grid
    c = (np.arange(grid) + 0.5) * step - 0.5  # chip pixel centres of the coarser grid
    u, v = np.meshgrid(c, c, indexing="xy")
    chip = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    to_lr = np.vstack([face_to_lr, [0, 0, 1]]) @ np.vstack([chip_to_face, [0, 0, 1]])
    x, y = (to_lr @ chip)[:2]
    coord = np.stack([-1 + (2 * y + 1) / lr_size, -1 + (2 * x + 1) / lr_size], axis=1)
    spacing = step * np.sqrt(abs(np.linalg.det(to_lr[:2, :2])))  # LR px per rendered px (eq. 3's h / H)
    return coord.astype(np.float32), np.array([spacing, spacing], np.float32)


def gt_chip(gt: np.ndarray, chip_to_face: np.ndarray) -> np.ndarray:
    """The ground truth's 150 x 150 chip (bilinear, as dlib cuts it)."""
    return cv2.warpAffine(gt, chip_to_face, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


RECOGNIZER_FILE = "dlib_resnet.safetensors"


def pack_for_identity(root: Path | str) -> None:
    """Make a prepared folder self-contained for identity training where dlib is not installed (a GPU
    lease): its train faces' chip geometry (`chips.npy`) and dlib's network in fp16 (`dlib_resnet.safetensors`,
    11 MB; name it in `identity.recognizer`)."""
    from .data import FaceSet

    root = Path(root)
    faces = FaceSet.load(root, "train")
    chip_transforms(faces.images, root, faces.names)
    if not (root / RECOGNIZER_FILE).is_file():
        DlibResNet.from_dat().save(root / RECOGNIZER_FILE)
