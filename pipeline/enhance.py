"""Enhance stage: aligned LR crops of any size -> one fixed output size (ARASFSR or bicubic).

Crops of equal size are batched together through the model (the implicit function handles any
input size, but a batch needs one). Crops at least as large as the output are shrunk by `bicubic`
(antialiased): there is nothing to super-resolve.

Example:
    >>> enh = Enhancer(EnhancerConfig(method="bicubic", output_size=112))
    >>> [f.sr.shape for f in enh(faces)]  # doctest: +SKIP
    [(112, 112, 3), (112, 112, 3)]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common.config import setting, validate
from models.arasfsr import NonFiniteOutput
from models.data import resize
from pipeline.errors import ConfigError
from pipeline.records import AlignedFace, EnhancedFace

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("arasfsr", "bicubic")
RUNTIMES = ("auto", "torch", "onnxruntime")


@dataclass
class EnhancerConfig:
    method: str = setting("arasfsr", choices=METHODS)
    weights: str = "models/weights/arasfsr_paper.safetensors"  # best for a recognizer: models/weights/README.md
    output_size: int = setting(112, lo=8, hi=1024)
    device: str = "auto"
    batch_size: int = setting(32, lo=1)
    max_queries: int | None = setting(None, lo=1)  # None: the device's (4096 on a CPU, 2^17 on CUDA)
    amp: str | None = setting(None, choices=("bf16", "fp16"))
    threads: int = setting(0, lo=0, hi=256)  # CPU threads of the enhance thread (0: torch's default)
    # Where the model runs: onnxruntime is 2-4x torch's faces/s on a CPU (BENCHMARKS.md, "CPU runtimes");
    # auto = onnxruntime when the device is the CPU and the package is installed, else torch.
    runtime: str = setting("auto", choices=RUNTIMES)
    # The share of the model's detail added over bicubic: 1 the model's output, 0 bicubic (no model run).
    strength: float = setting(1.0, lo=0.0, hi=1.0)
    # Lower the strength on faces from heavily quantised H.264 blocks (`strength_for`), where the model's
    # sharpening of codec artefacts costs a recognizer accuracy (models/weights/README.md, "Strength by
    # compression").
    compression_aware: bool = True
    # Lower it on noisy cameras too (`strength_for`; the camera's noise is measured on the stream by the source,
    # common.noise), where the model sharpens the noise into false detail (models/weights/README.md,
    # "Strength by noise").
    noise_aware: bool = True

    def __post_init__(self) -> None:
        validate(self)


#: strength_for: full strength up to QP_FULL, falling linearly to LOW_STRENGTH at QP_LOW and above. Chosen on
#: the identity benchmark's tuning pairs (seed 1) and checked on its reported pairs (seed 0): CRF 30 blocks
#: (QP 30-34) did best at 0.5-0.75, CRF 36 blocks (QP 36-40) at 0-0.25 (models/weights/README.md, "Strength
#: by compression").
QP_FULL, QP_LOW, LOW_STRENGTH = 28.0, 37.0, 0.25
#: The same for the camera's noise sigma (common.noise, luma 0-255, after compression): the shared clips read
#: 0.4-0.5, the benchmark's noise 8 + JPEG 50 cameras 3-7, where a share of 0.25 did best on the tuning pairs,
#: and milder noise (1.5-3) cost the full model 1-1.5 points (models/weights/README.md, "Strength by noise").
NOISE_FULL, NOISE_LOW = 1.5, 3.0


def _share(value: float | None, full: float, low: float) -> float:
    """1 up to `full`, falling linearly to LOW_STRENGTH at `low` and above; 1 for an unknown value."""
    if value is None:
        return 1.0
    coarse = min(1.0, max(0.0, (value - full) / (low - full)))
    return 1.0 - coarse * (1.0 - LOW_STRENGTH)


def strength_for(qp: float | None = None, noise: float | None = None, strength: float = 1.0,
                 compression_aware: bool = True, noise_aware: bool = True) -> float:
    """The share of the model's detail to add over bicubic for a face whose blocks were quantised at `qp`
    (None: unknown, e.g. not H.264) by a camera whose noise sigma is `noise` (None: unknown, e.g. a
    photo): `strength`, lowered on coarse quantisers when `compression_aware` and on noisy cameras when
    `noise_aware`; with both, the lower share (either damage alone makes the model's detail false).

    Example:
        >>> strength_for(), strength_for(26), strength_for(32.5), strength_for(40), strength_for(40, strength=0.5)
        (1.0, 1.0, 0.625, 0.25, 0.125)
        >>> strength_for(noise=0.5), strength_for(noise=5.0), strength_for(26, 2.25), strength_for(35.5, 2.25)
        (1.0, 0.25, 0.625, 0.375)
    """
    share = min(_share(qp, QP_FULL, QP_LOW) if compression_aware else 1.0,
                _share(noise, NOISE_FULL, NOISE_LOW) if noise_aware else 1.0)
    return strength * share


def bicubic(crop: np.ndarray, size: int) -> np.ndarray:
    """The project's one bicubic baseline, uint8 in and out: the evaluation protocol's antialiased
    bicubic (`models.data.resize`), so the product, the report and evaluate.py's Bicubic row agree."""
    return resize(crop, size, "bicubic")


def blend(base: np.ndarray, detail: np.ndarray, strength: float) -> np.ndarray:
    """`base` + strength x (`detail` - `base`), uint8: the model's output (`detail`) with only a share of
    what it adds over bicubic (`base`)."""
    mixed = base.astype(np.float32) + np.float32(strength) * (detail.astype(np.float32) - base)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class Enhancer:
    """Pipeline stage: list[AlignedFace] -> list[EnhancedFace] (same order), each at output_size.

    A face whose model output is not finite (NaN/Inf, e.g. an fp16 overflow under `amp`) is written
    with bicubic instead, its record saying so (method "bicubic"), and counted in `fallbacks`: one
    bad batch must not end a live run, and a black face must never be written as if it were SR."""

    def __init__(self, config: EnhancerConfig | None = None, models: dict | None = None) -> None:
        """`models`: loaded models by weights file, shared by the enhancers that pass the same dict (the
        cameras of a run: one copy of each model in memory)."""
        self.config = config or EnhancerConfig()
        self.model = None
        self.fallbacks = 0  # faces written with bicubic because the model's output was not finite
        if self.config.method == "arasfsr" and self.config.strength > 0:  # strength 0 is bicubic
            path = Path(self.config.weights)
            if not path.is_absolute() and not path.exists():
                path = ROOT / path  # relative to the project, so the CLI works from any directory
            models = {} if models is None else models
            if path.resolve() not in models:
                models[path.resolve()] = self._load(path)
            self.model = models[path.resolve()]

    def _load(self, path: Path):
        from models import CheckpointError, load_model, resolve_device

        try:
            model = load_model(path, device=resolve_device(self.config.device, "enhance.device"))
        except CheckpointError as exc:
            raise ConfigError(f"enhance.weights: {exc}") from None
        except (RuntimeError, AssertionError) as exc:  # e.g. device "cuda" on a machine without one
            raise ConfigError(f"enhance.device {self.config.device!r}: {exc}") from None
        model.max_queries = self.config.max_queries
        runtime = self._attach_runtime(model)
        log.info("ARASFSR %s on %s (%s)", path.name, model.device, runtime)
        return model

    def _attach_runtime(self, model) -> str:
        """Runs `model` where `enhance.runtime` says (`model.runtime`); returns the runtime's name."""
        from models import onnx_runtime

        runtime, on_cpu = self.config.runtime, model.device.type == "cpu"
        if runtime == "auto":
            runtime = "onnxruntime" if on_cpu and onnx_runtime.available() else "torch"
        elif runtime == "onnxruntime" and not on_cpu:
            raise ConfigError(f"onnxruntime runs on the CPU only, but the model is on {model.device}: "
                              "set enhance.device cpu or enhance.runtime torch", key="enhance.runtime")
        elif runtime == "onnxruntime" and not onnx_runtime.available():
            raise ConfigError(f"onnxruntime is not installed: {onnx_runtime.INSTALL}", key="enhance.runtime")
        if runtime == "onnxruntime":
            if self.config.amp:
                log.info("enhance.amp %s has no effect: ONNX Runtime runs fp32 on the CPU", self.config.amp)
            model.runtime = onnx_runtime.OnnxRuntime(model, threads=self.config.threads)
        return runtime

    @property
    def runtime(self) -> str | None:
        """Where the model runs: "torch" or "onnxruntime" (None: no model)."""
        if self.model is None:
            return None
        return "torch" if self.model.runtime is None else "onnxruntime"

    @property
    def name(self) -> str:
        """The method faces get: "arasfsr", or "bicubic" (method bicubic, or strength 0)."""
        return "bicubic" if self.model is None else "arasfsr"

    def fell_back(self, face: EnhancedFace) -> bool:
        """Whether `face` (this enhancer's output) was meant for the model but written with bicubic
        because the model's output was not finite."""
        return face.method != self.name

    def uses_model(self, face: AlignedFace) -> bool:
        """Whether `face` goes through the model (the costly part); a crop at least as large as the
        output, or any crop with method bicubic, is only resampled."""
        h, w = face.crop.shape[:2]
        size = self.config.output_size
        return self.model is not None and not (h >= size and w >= size)

    def strength(self, face: AlignedFace) -> float:
        """The share of the model's detail `face` gets (see `strength_for`; the noise left in its crop, which
        is less than the camera's when the crop is the mean of several frames: pipeline.fuse)."""
        return strength_for(face.qp, face.crop_noise, self.config.strength, self.config.compression_aware,
                            self.config.noise_aware)

    def __call__(self, faces: Sequence[AlignedFace]) -> list[EnhancedFace]:
        size = self.config.output_size
        out: list[np.ndarray | None] = [None] * len(faces)
        method = [self.name] * len(faces)
        strength: list[float | None] = [None] * len(faces)
        indices = []
        for i, face in enumerate(faces):
            if self.uses_model(face):
                indices.append(i)
            else:
                out[i] = bicubic(face.crop, size)
        # Faces of any crop size share one batch: the model encodes each size group and decodes them together.
        for start in range(0, len(indices), self.config.batch_size):
            chunk = indices[start:start + self.config.batch_size]
            for i, sr in zip(chunk, self._upscale([faces[i].crop for i in chunk])):
                if sr is None:
                    sr, method[i] = bicubic(faces[i].crop, size), "bicubic"
                    self._fell_back(faces[i])
                else:
                    strength[i] = self.strength(faces[i])
                    if strength[i] < 1.0:
                        sr = blend(bicubic(faces[i].crop, size), sr, strength[i])
                out[i] = sr
        return [EnhancedFace(face=f, sr=sr, scale=size / max(f.crop.shape[:2]), method=m, strength=a)
                for f, sr, m, a in zip(faces, out, method, strength)]

    def _upscale(self, crops: list[np.ndarray]) -> list[np.ndarray | None]:
        """BGR uint8 crops of any sizes -> S x S x 3 BGR uint8 each through the model (None where the
        model's output is not finite)."""
        size = self.config.output_size
        try:
            sr = self.model.upscale_uint8([crop[..., ::-1] for crop in crops], (size, size), amp=self.config.amp)  # RGB
            finite = [True] * len(crops)
        except NonFiniteOutput as exc:
            sr, finite = exc.images, exc.finite.tolist()
        return [np.ascontiguousarray(img[..., ::-1]) if ok else None for img, ok in zip(sr, finite)]

    def _fell_back(self, face: AlignedFace) -> None:
        self.fallbacks += 1
        if self.fallbacks == 1 or self.fallbacks % 100 == 0:  # the first, then a reminder: never a flood
            log.warning("model output not finite (NaN/Inf) for track %d frame %d: written with bicubic "
                        "(%d face(s) so far; counted in summary.json)", face.track_id, face.frame_index,
                        self.fallbacks)
