"""Identity benchmark: does super-resolution help a face recognizer on small, camera-degraded faces?

    python benchmarks/identity.py --quick --weights bicubic models/weights/arasfsr_cctv.safetensors \
        --json out/identity_quick.json --markdown out/identity_quick.md --plot out/identity_quick.png
    python benchmarks/identity.py                              # the full grid, 300 pairs, every shipped model
    python benchmarks/identity.py --cells clean@16,jpeg50@16 --pairs 100 --detect min_face_size=8

Protocol
--------
Data: `../shared/data/identity/lfw_dev/` (LFW people, `<person>/<photo>.jpg`, 250 x 250), `--data`.

Pairs (`make_pairs`, seeded, from the sorted listing): half same-person pairs, one per person: two
different photos of a person with >= 2 photos (gallery photo A, probe photo B); half different-person
pairs: the probe photo of a same-person pair against a gallery photo of another person X (drawn from
everyone, one-photo people included). Each probe photo is thus used by one same and at most one
different pair; this halves the probe work (the expensive part), and a lost probe costs both pairs.
Photos in which dlib's HOG detector finds no face are excluded (checked while sampling; counted).

Gallery (reference path, full resolution): `DlibEmbedder.align_photo` (dlib HOG box, upsample 1,
5 landmarks, `get_face_chip` 150 px) and dlib's ResNet descriptor. Each photo is embedded once.

Probe, per cell (camera model, face width W): the whole probe photo shrunk with
`models.data.resize(..., "bicubic")` (antialiased) so that dlib's HOG box of the full photo is W px
wide (`shrink_to_face_width`); the camera model (`models.camera.CameraModel`) on the BGR frame, its
noise seeded per (photo, cell); the project's MTCNNDetector (the pipeline's default detect settings
with min_face_size=12; `--detect key=value` overrides); the detection overlapping the shrunk dlib box
most, IoU > 0.3 (else the probe is "lost by detection", as are faces `align_face` cannot align);
`pipeline.align.align_face` at native size (min_size 8). The frame carries what the pipeline's source
would give the enhancer with it: the QP map of an H.264 camera, and the camera's noise sigma as the source
measures it on a stream (`common.noise`, here on 8 frames of the still scene, each with its own noise and
compression; `camera_noise`). `--track-frames K` (default 1) makes the probe the last frame of a track of
K frames in which the person moves a little (`track_motion`: a random walk of 0.3 px per frame), each frame
with its own noise and compression, detected and aligned on its own, and the pipeline's fuse stage
(`pipeline.fuse`: on cameras measured noisy, the mean of the track's registered crops) on them; the probe's
own frame is the same as with K = 1. All of that is done once per
(probe photo, cell) and shared by every method. Then per method (row): `pipeline.enhance.Enhancer`
to `--output-size` (160) with bicubic or ARASFSR (one row per weights file), and the descriptor of
the enhanced face by `DlibEmbedder(realign="canonical")`: dlib's 5 landmarks seeded with a fixed box
in the canonical frame (no HOG detection: deterministic, and the same framing for every method),
`get_face_chip`, ResNet.

Scores per (method, cell): Euclidean distance probe - gallery descriptor; `auc` (same vs different,
ranked by distance) and `accuracy` (same person iff distance <= 0.6, dlib's threshold) over the pairs
whose probe was detected; `accuracy_all` counts lost probes as errors; `delta_accuracy` and
`delta_auc`: the method minus bicubic in points (x 100). accuracy / auc are fractions in [0, 1].

Outputs: the markdown table on stdout; `--json`, `--markdown`, `--plot` (accuracy vs face width,
one panel per camera model). User errors print one `error: ...` line and exit 2 (common.cli).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import cli  # noqa: E402
from common.noise import TemporalNoise  # noqa: E402
from models.camera import CameraModel  # noqa: E402
from models.data import resize  # noqa: E402
from pipeline.errors import ConfigError, PipelineError, SinkError, SourceError  # noqa: E402
from pipeline.files import is_image_file  # noqa: E402
from pipeline.records import Frame  # noqa: E402
from trackers.sort import iou_matrix  # noqa: E402

log = logging.getLogger("benchmarks.identity")

DATA = ROOT.parent / "shared/data/identity/lfw_dev"
WEIGHTS_DIR = ROOT / "models/weights"
FULL_CELLS = ("clean@12", "clean@16", "clean@24", "jpeg30@16", "jpeg50@16", "jpeg70@16",
              "noise8+jpeg50@16", "noise8+jpeg50@24", "h264crf30@16", "h264crf30@24",
              "h264crf36@16", "h264crf36@24")
QUICK_CELLS = ("clean@16", "noise8+jpeg50@16", "h264crf30@24")
QUICK_PAIRS = 100
DEFAULT_PAIRS = 300
PROBE_DETECT = ("min_face_size=12",)  # on top of the pipeline's default detect settings
IOU_FOUND = 0.3
ALIGN_MIN_SIZE = 8
THRESHOLD = 0.6  # dlib's published same-person distance
BOOTSTRAP_DRAWS = 2000  # resamples of the pairs for the 95 % intervals of the differences to bicubic
NOISE_FRAMES = 8  # frames of the still scene the camera's noise is measured on (a third of a second at 25 fps)
TRACK_STEP = 0.3  # px per frame (at the probe's scale) a person standing in front of the camera moves (--track-frames)
GALLERY_PATH = "DlibEmbedder.align_photo (HOG box upsample 1, 5 landmarks, get_face_chip 150) + ResNet"
PROBE_PATH = ("DlibEmbedder(realign='canonical'): 5 landmarks seeded with the fixed box "
              "{box} of the enhanced canonical face, get_face_chip 150, ResNet")


# --- pairs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Photos as paths relative to the data folder (`<person>/<file>`)."""

    gallery: str
    probe: str
    same: bool

    @property
    def gallery_person(self) -> str:
        return self.gallery.split("/")[0]

    @property
    def probe_person(self) -> str:
        return self.probe.split("/")[0]


def list_people(root: Path | str) -> dict[str, list[str]]:
    """{person: sorted photo paths relative to root}, people sorted, people without photos left out."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"identity data not found: {root} (LFW people, one folder per person; --data)")
    people = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(f"{person.name}/{f.name}" for f in person.iterdir()
                        if is_image_file(f))
        if photos:
            people[person.name] = photos
    if not people:
        raise SourceError(f"identity data folder {root} has no <person>/*.jpg photos")
    return people


def make_pairs(people: dict[str, list[str]], n: int, seed: int = 0,
               usable: Callable[[str], bool] | None = None) -> list[Pair]:
    """`n` pairs: ceil(n/2) same-person, then floor(n/2) different-person (see the module docstring).

    Deterministic: the same `people`, `n`, `seed` (and `usable`) give the same pairs. `usable(photo)`
    says whether a photo may be used (dlib finds a face); it is called lazily, only for the photos
    the draw reaches. Raises ConfigError when there are not enough people for `n` pairs.
    """
    if n < 2:
        raise ConfigError(f"--pairs must be >= 2, got {n}")
    usable = usable or (lambda photo: True)
    rng = np.random.default_rng(seed)
    n_same, n_diff = (n + 1) // 2, n // 2
    names = sorted(people)
    multi = [p for p in names if len(people[p]) >= 2]
    same: list[Pair] = []
    for person in rng.permutation(multi):
        photos = people[str(person)]
        picked = []
        for i in rng.permutation(len(photos)):
            if usable(photos[i]):
                picked.append(photos[i])
                if len(picked) == 2:
                    break
        if len(picked) == 2:
            same.append(Pair(gallery=picked[0], probe=picked[1], same=True))
            if len(same) == n_same:
                break
    if len(same) < n_same:
        raise ConfigError(f"only {len(same)} same-person pairs can be made from the data, "
                          f"{n_same} needed for --pairs {n}")
    different: list[Pair] = []
    for pair in same[:n_diff]:
        for _ in range(1000):
            other = names[int(rng.integers(len(names)))]
            if other == pair.probe_person:
                continue
            photos = people[other]
            photo = next((photos[i] for i in rng.permutation(len(photos)) if usable(photos[i])), None)
            if photo is not None:
                different.append(Pair(gallery=photo, probe=pair.probe, same=False))
                break
        else:
            raise ConfigError("cannot find usable photos for the different-person pairs")
    return same + different


# --- probes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One column of the grid: a camera model at a face width (px)."""

    camera: CameraModel
    width: int

    @property
    def name(self) -> str:
        return f"{self.camera.name}@{self.width}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        """'<camera>@<width>', e.g. 'noise8+jpeg50@16'."""
        cam, sep, width = str(text).strip().rpartition("@")
        if not sep or not cam or not width.strip().isdigit() or int(width) < 4:
            raise ConfigError(f"bad cell {text!r}: expected <camera>@<face width px >= 4>, e.g. jpeg50@16")
        try:
            return cls(CameraModel.parse(cam), int(width))
        except ValueError as exc:
            raise ConfigError(f"bad cell {text!r}: {exc}") from None


def parse_cells(spec: str | Sequence[str]) -> list[Cell]:
    """'clean@16,jpeg50@16' (or a list of such strings) -> cells, duplicates removed, order kept."""
    items = [spec] if isinstance(spec, str) else list(spec)
    cells: list[Cell] = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                cell = Cell.parse(part)
                if cell not in cells:
                    cells.append(cell)
    if not cells:
        raise ConfigError("--cells is empty")
    return cells


def shrink_to_face_width(photo: np.ndarray, box: Sequence[float],
                         width: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink the whole photo (models.data.resize, antialiased bicubic) so that the face box
    (x0, y0, x1, y1; width x1 - x0) becomes `width` px wide.

    Returns (small photo, the box in its pixels). The scale per axis is the rounded size's, so the
    box follows the pixels exactly."""
    box = np.asarray(box, np.float64)
    s = width / float(box[2] - box[0])
    h, w = max(1, round(photo.shape[0] * s)), max(1, round(photo.shape[1] * s))
    small = resize(photo, (h, w), "bicubic")
    sx, sy = w / photo.shape[1], h / photo.shape[0]
    return small, box * [sx, sy, sx, sy]


@dataclass
class Probe:
    """One probe photo in one cell, up to the aligned LR crop (None when lost by detection)."""

    photo: str
    cell: str
    frame_shape: tuple[int, int]
    face: object | None  # pipeline.records.AlignedFace; None: lost by detection (or not alignable)
    iou: float
    score: float | None

    @property
    def lost(self) -> bool:
        return self.face is None

    @property
    def crop(self) -> np.ndarray | None:
        return None if self.face is None else self.face.crop


def probe_rng(photo: str, cell: str, seed: int) -> np.random.Generator:
    """The camera model's random generator for one (photo, cell): independent of run order."""
    return np.random.default_rng([seed, zlib.crc32(f"{photo}|{cell}".encode())])


def camera_noise(scene: np.ndarray, first: np.ndarray, camera, rng: np.random.Generator,
                 frames: int = NOISE_FRAMES) -> float | None:
    """The noise sigma (common.noise) the pipeline's source would measure on `frames` frames of a camera
    filming the still `scene`: `first` (the probe's frame), then frames - 1 more through `camera`."""
    meter = TemporalNoise()
    meter.update(first)
    for _ in range(frames - 1):
        meter.update(camera(scene, rng))
    return meter.value


def _detect_and_align(frame: Frame, expected: np.ndarray, detector, index: int, align_min_size: int):
    """MTCNN -> the detection overlapping `expected` most (IoU > 0.3) -> align_face; returns
    (AlignedFace or None, IoU, detection score or None)."""
    from pipeline.align import UnalignableFaceError, align_face

    faces = detector.detect([frame.image])[0]
    overlaps = iou_matrix(np.array([f.box for f in faces]).reshape(-1, 4), expected[None]).ravel().tolist()
    best = int(np.argmax(overlaps)) if overlaps else -1
    if best < 0 or overlaps[best] <= IOU_FOUND:
        return None, max(overlaps, default=0.0), None
    det = faces[best]
    try:
        face = align_face(frame, det, track_id=0, frame_index=index, min_size=align_min_size)
    except UnalignableFaceError as exc:
        log.debug("frame %d: detected but not alignable: %s", index, exc)
        face = None
    return face, overlaps[best], float(det.score)


def track_motion(rng: np.random.Generator, frames: int, step: float = TRACK_STEP) -> np.ndarray:
    """frames x 2 offsets (px at the probe's scale) of a person standing in front of the camera: a random
    walk of `step` px per frame (normal, per axis), the last frame at (0, 0)."""
    walk = np.cumsum(rng.normal(0.0, step, (frames, 2)), axis=0)
    return walk - walk[-1]


def make_probe(photo_bgr: np.ndarray, box: Sequence[float], cell: Cell, detector, *, name: str = "",
               seed: int = 0, align_min_size: int = ALIGN_MIN_SIZE, track_frames: int = 1,
               fuse=None) -> Probe:
    """Shrink -> camera model -> MTCNN -> best-overlapping detection (IoU > 0.3) -> align_face.

    `track_frames` > 1: the probe's frame is the last of a track of that many frames (the person moving a
    little, `track_motion`; each frame with its own noise and compression, detected and aligned on its own)
    and goes through the fuse stage (`fuse`: a pipeline.fuse.FuseConfig; None: its defaults) with the track's
    earlier faces. The probe's own frame is the one of track_frames 1 (same seed): the two protocols differ
    only in the earlier frames."""
    from pipeline.fuse import TemporalFusion

    small, expected = shrink_to_face_width(photo_bgr, box, cell.width)
    rng = probe_rng(name, cell.name, seed)
    image, blocks = cell.camera.degrade(small, rng)
    # The QP map as a stream's decoder gives it, and the camera's noise as the source measures it on a stream:
    # here on NOISE_FRAMES frames of the still scene, each with the camera's own noise and compression.
    noise = camera_noise(small, image, cell.camera, rng)
    fusion = TemporalFusion(fuse) if track_frames > 1 else None
    if fusion is not None:
        track_rng = probe_rng(name, f"{cell.name}|track", seed)
        s = cell.width / float(box[2] - box[0])  # full-resolution pixels per probe pixel: 1 / s
        for k, (dx, dy) in enumerate(track_motion(track_rng, track_frames)[:-1]):
            moved = cv2.warpAffine(photo_bgr, np.float32([[1, 0, dx / s], [0, 1, dy / s]]),
                                   photo_bgr.shape[1::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            earlier, blocks_k = cell.camera.degrade(shrink_to_face_width(moved, box, cell.width)[0], track_rng)
            frame_k = Frame(index=k, pts_time=None, image=earlier, qp=blocks_k, noise=noise)
            face_k = _detect_and_align(frame_k, expected + [dx, dy, dx, dy], detector, k, align_min_size)[0]
            if face_k is not None:
                fusion([face_k])
    index = track_frames - 1
    frame = Frame(index=index, pts_time=None, image=image, qp=blocks, noise=noise)
    face, iou, score = _detect_and_align(frame, expected, detector, index, align_min_size)
    if face is not None and fusion is not None:
        face = fusion([face])[0]
    return Probe(name, cell.name, image.shape[:2], face, iou, score)


# --- methods -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One row: bicubic, or ARASFSR with a weights file."""

    name: str
    method: str  # "bicubic" | "arasfsr"
    weights: str | None = None
    options: tuple = ()  # (key, value) pairs of the enhance section, e.g. (("compression_aware", False),)


def _resolve_weights(path: str) -> Path:
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (ROOT / p).is_file():
        p = ROOT / p
    if not p.is_file():
        raise ConfigError(f"weights file not found: {path}")
    return p


def _parse_options(entry: str, text: str) -> tuple:
    """'key=value,key=value' (values as YAML) -> ((key, value), ...)."""
    import yaml

    options = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --weights entry {entry!r}: expected PATH@key=value[,key=value]")
        options.append((key.strip(), yaml.safe_load(value)))
    return tuple(options)


def parse_methods(entries: Sequence[str] | None) -> list[Method]:
    """'bicubic', 'path.safetensors' (name: the file's stem) or 'NAME=path.safetensors', each model
    optionally followed by '@key=value[,key=value]' enhance settings for its row (e.g.
    'plain=models/weights/arasfsr_paper.safetensors@compression_aware=false').
    None: bicubic + every models/weights/*.safetensors."""
    if entries is None:
        entries = ["bicubic"] + [str(p.relative_to(ROOT)) for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))]
    methods: list[Method] = []
    for entry in entries:
        entry = str(entry).strip()
        if entry.lower() == "bicubic":
            m = Method("bicubic", "bicubic")
        else:
            spec, at, settings = entry.rpartition("@")
            if not at or "=" not in settings:  # no '@key=value' part: the whole entry is the row
                spec, at, settings = entry, "", ""
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = Path(spec).stem, spec
            if not name or not path:
                raise ConfigError(f"bad --weights entry {entry!r}: expected bicubic, PATH or NAME=PATH")
            _resolve_weights(path)
            m = Method(name, "arasfsr", path, _parse_options(entry, settings) if at else ())
        if any(x.name == m.name for x in methods):
            raise ConfigError(f"--weights: two rows are named {m.name!r}; use NAME=PATH")
        methods.append(m)
    if not methods:
        raise ConfigError("--weights is empty")
    return methods


def make_enhancer(method: Method, output_size: int, device: str = "cpu"):
    from pipeline.enhance import Enhancer, EnhancerConfig

    from common.config import build

    weights = str(_resolve_weights(method.weights)) if method.weights else EnhancerConfig.weights
    settings = {"method": method.method, "weights": weights, "output_size": output_size, "device": device,
                **dict(method.options)}
    return Enhancer(build(EnhancerConfig, settings, where=f"--weights {method.name}"))


def detector_settings(overrides: Iterable[str] = ()):
    """The pipeline's default detect settings with PROBE_DETECT, then `key=value` overrides applied
    (values parsed as YAML, validated by the pipeline's config). Returns a DetectorConfig."""
    from pipeline.config import load_config

    sets = []
    for item in [*PROBE_DETECT, *overrides]:
        key, sep, value = str(item).partition("=")
        key = key.strip().removeprefix("detect.")
        if not sep or not key:
            raise ConfigError(f"bad --detect {item!r}: expected key=value, e.g. min_face_size=8")
        sets.append(f"detect.{key}={value}")
    return load_config(None, sets).detect.detector()


# --- scoring -----------------------------------------------------------------------------------


def auc_score(distances: np.ndarray, same: np.ndarray) -> float | None:
    """Area under the ROC curve for "same person" ranked by ascending distance (ties count 1/2);
    None when one class is empty."""
    from scipy.stats import rankdata

    d, y = np.asarray(distances, np.float64), np.asarray(same, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(-d)  # higher rank = smaller distance = more "same"
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def decisions(distances: np.ndarray, same: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(found, correct) per pair (any shape ending in pairs): the probe was detected (distance not NaN), and
    the decision "same person iff distance <= threshold" was right (False for a lost probe)."""
    d = np.asarray(distances, np.float64)
    found = np.isfinite(d)
    return found, found & ((np.where(found, d, np.inf) <= threshold) == np.asarray(same, bool))


def score_cell(distances: np.ndarray, same: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """Metrics of one (method, cell): distances NaN for lost probes."""
    d, y = np.asarray(distances, np.float64), np.asarray(same, bool)
    ok, correct = decisions(d, y, threshold)
    auc = auc_score(d[ok], y[ok])
    return {"pairs": int(len(d)), "lost": int((~ok).sum()),
            "auc": None if auc is None else round(auc, 4),
            "accuracy": round(float(correct[ok].mean()), 4) if ok.any() else None,
            "accuracy_all": round(float(correct.sum() / len(d)), 4) if len(d) else None}


def bootstrap_deltas(method_d: np.ndarray, base_d: np.ndarray, same: np.ndarray, *, threshold: float = THRESHOLD,
                     draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95 % intervals of a method's accuracy minus the base method's (points), per cell and of the mean over
    the cells: the pairs drawn with replacement `draws` times, the same draw for both methods and every cell
    (a paired bootstrap: the cells share their pairs, and a method is compared on the same probes as the base).

    `method_d`, `base_d`: cells x pairs distances, NaN for a probe lost by detection (lost for both: the
    detection is shared). Returns (cells x 2 [low, high], [low, high]).

    Example:
        >>> same = np.array([True, False] * 50)
        >>> right, wrong = np.where(same, 0.3, 0.9)[None], np.where(same, 0.9, 0.3)[None]
        >>> bootstrap_deltas(right, wrong, same)[1].tolist(), bootstrap_deltas(right, right, same)[1].tolist()
        ([100.0, 100.0], [0.0, 0.0])
    """
    n = same.size
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)

    def accuracy(d: np.ndarray) -> np.ndarray:  # draws x cells: score_cell's accuracy on each draw
        found, correct = decisions(d, same, threshold)
        return (counts @ correct.T) / np.maximum(counts @ found.T, 1.0)

    delta = 100.0 * (accuracy(method_d) - accuracy(base_d))
    return np.percentile(delta, [2.5, 97.5], axis=0).T, np.percentile(delta.mean(axis=1), [2.5, 97.5])


def _points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(100.0 * (a - b), 2)


# --- the run -----------------------------------------------------------------------------------


class _PhotoCache:
    """dlib boxes (for usability and shrinking) and gallery descriptors, each computed once."""

    def __init__(self, root: Path, reference) -> None:
        self.root, self.reference = root, reference
        self.boxes: dict[str, tuple[int, int, int, int] | None] = {}
        self.descriptors: dict[str, np.ndarray] = {}

    def read(self, photo: str) -> np.ndarray:
        img = cv2.imread(str(self.root / photo), cv2.IMREAD_COLOR)
        if img is None:
            raise SourceError(f"cannot read {self.root / photo}")
        return img

    def box(self, photo: str) -> tuple[int, int, int, int] | None:
        if photo not in self.boxes:
            self.boxes[photo] = self.reference.face_box(self.read(photo))
        return self.boxes[photo]

    def usable(self, photo: str) -> bool:
        return self.box(photo) is not None

    def descriptor(self, photo: str) -> np.ndarray:
        if photo not in self.descriptors:
            chip = self.reference.align_photo(self.read(photo), box=self.box(photo))
            self.descriptors[photo] = self.reference.embed(chip)
        return self.descriptors[photo]


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def run_benchmark(data: Path | str = DATA, *, pairs: int = DEFAULT_PAIRS, cells: Sequence[Cell] | None = None,
                  methods: Sequence[Method] | None = None, seed: int = 0, output_size: int = 160,
                  detect: Iterable[str] = (), device: str = "cpu", progress: bool = True,
                  batch_size: int = 16, track_frames: int = 1) -> dict:
    """Run the protocol (module docstring); returns the report (the --json content)."""
    from pipeline.detect import MTCNNDetector
    from pipeline.fuse import FuseConfig
    from pipeline.recognition import DlibEmbedder

    start = time.perf_counter()
    cells = list(cells) if cells is not None else parse_cells(FULL_CELLS)
    methods = list(methods) if methods is not None else parse_methods(None)
    detect = list(detect)
    det_config = detector_settings(detect)
    if not 8 <= output_size <= 1024:
        raise ConfigError(f"--output-size must be in [8, 1024], got {output_size}")
    if not 1 <= track_frames <= 64:
        raise ConfigError(f"--track-frames must be in [1, 64], got {track_frames}")
    fuse = FuseConfig(frames=track_frames)  # the pipeline's fuse settings, over as many frames as the track has
    root = Path(data)
    people = list_people(root)
    reference = DlibEmbedder(realign=False)  # gallery: align_photo gives dlib chips
    probe_embedder = DlibEmbedder(realign="canonical")
    photos = _PhotoCache(root, reference)
    pair_list = make_pairs(people, pairs, seed, usable=photos.usable)
    excluded = sorted(p for p, b in photos.boxes.items() if b is None)
    log.info("%d pairs (%d same, %d different) from %d people; %d of %d photos examined have no dlib "
             "face and are excluded", len(pair_list), sum(p.same for p in pair_list),
             sum(not p.same for p in pair_list), len(people), len(excluded), len(photos.boxes))

    galleries = sorted({p.gallery for p in pair_list})
    for photo in _progress(galleries, len(galleries), "gallery", progress):
        photos.descriptor(photo)
    gallery = np.stack([photos.descriptors[p.gallery] for p in pair_list])

    detector = MTCNNDetector(det_config)
    probe_photos = sorted({p.probe for p in pair_list})
    jobs = [(photo, cell) for cell in cells for photo in probe_photos]
    probes: dict[tuple[str, str], Probe] = {}
    for photo, cell in _progress(jobs, len(jobs), "probes", progress):
        probes[photo, cell.name] = make_probe(photos.read(photo), photos.box(photo), cell, detector,
                                              name=photo, seed=seed, track_frames=track_frames, fuse=fuse)
    found = [k for k, p in probes.items() if not p.lost]
    log.info("%d probe photos x %d cells: %d detected and aligned, %d lost", len(probe_photos), len(cells),
             len(found), len(probes) - len(found))

    same = np.array([p.same for p in pair_list])
    order = sorted(found, key=lambda k: probes[k].crop.shape[:2])  # equal sizes batch together
    results, method_info, distances = [], [], {}
    for method in methods:
        enhancer = make_enhancer(method, output_size, device)
        t0 = time.perf_counter()
        vectors: dict[tuple[str, str], np.ndarray] = {}
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for chunk in _progress(chunks, len(chunks), method.name, progress):
            faces = [probes[k].face for k in chunk]
            srs = [f.sr for f in enhancer(faces)]
            for k, v in zip(chunk, probe_embedder.embed_batch(srs)):
                vectors[k] = v
        seconds = time.perf_counter() - t0
        method_info.append({**dataclasses.asdict(method), "seconds": round(seconds, 1)})
        log.info("%s: %d faces enhanced and embedded in %.1f s", method.name, len(order), seconds)
        for cell in cells:
            d = np.array([np.linalg.norm(vectors[p.probe, cell.name] - g) if (p.probe, cell.name) in vectors
                          else np.nan for p, g in zip(pair_list, gallery)])
            distances.setdefault(method.name, []).append(d)
            results.append({"method": method.name, "cell": cell.name, "width": cell.width,
                            "camera": cell.camera.name, **score_cell(d, same)})
    _add_deltas(results)
    intervals = _add_intervals(results, distances, same, seed)
    report = {
        "settings": {
            "data": str(root), "seed": seed, "pairs_requested": pairs, "pairs": len(pair_list),
            "same_pairs": int(same.sum()), "different_pairs": int((~same).sum()),
            "people": len(people), "photos_examined": len(photos.boxes), "photos_excluded_no_dlib_face": len(excluded),
            "probe_photos": len(probe_photos), "gallery_photos": len(galleries), "output_size": output_size,
            "detector": dataclasses.asdict(det_config), "detect_overrides": detect,
            "iou_found": IOU_FOUND, "align_min_size": ALIGN_MIN_SIZE, "threshold": THRESHOLD,
            "track_frames": track_frames, "track_step_px": TRACK_STEP if track_frames > 1 else None,
            "fuse": dataclasses.asdict(fuse) if track_frames > 1 else None,
            "probes_fused": sum(p.face.fused > 1 for p in probes.values() if not p.lost),
            "descriptor": {"gallery": GALLERY_PATH, "probe": probe_descriptor_path()},
            "units": "auc, accuracy, accuracy_all: fractions; delta_*: method minus bicubic, points (x100); "
                     "*_ci95: [low, high] of a paired bootstrap over the pairs, points",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        "cells": [{"name": c.name, "width": c.width, "camera": c.camera.name} for c in cells],
        "methods": method_info,
        "results": results,
        "summary": summarize(results, [m.name for m in methods], intervals),
        "excluded_photos": excluded,
        "pair_list": [dataclasses.asdict(p) for p in pair_list],
    }
    return report


def probe_descriptor_path() -> str:
    from pipeline.recognition import DlibEmbedder

    return PROBE_PATH.format(box=DlibEmbedder.CANONICAL_BOX)


def _add_deltas(results: list[dict]) -> None:
    base = {r["cell"]: r for r in results if r["method"] == "bicubic"}
    for r in results:
        b = base.get(r["cell"])
        r["delta_accuracy"] = _points(r["accuracy"], b["accuracy"]) if b else None
        r["delta_auc"] = _points(r["auc"], b["auc"]) if b else None


def _add_intervals(results: list[dict], distances: dict[str, list[np.ndarray]], same: np.ndarray,
                   seed: int) -> dict[str, list[float]]:
    """Each result's `delta_accuracy_ci95` (`bootstrap_deltas`; None for bicubic or without a bicubic row);
    returns each method's interval of the mean difference over the cells."""
    means: dict[str, list[float]] = {}
    for r in results:
        r["delta_accuracy_ci95"] = None
    if "bicubic" not in distances:
        return means
    base = np.stack(distances["bicubic"])
    for name, rows in distances.items():
        if name == "bicubic":
            continue
        cells, mean = bootstrap_deltas(np.stack(rows), base, same, seed=seed)
        for r, (lo, hi) in zip((r for r in results if r["method"] == name), cells):
            r["delta_accuracy_ci95"] = [round(float(lo), 2), round(float(hi), 2)]
        means[name] = [round(float(v), 2) for v in mean]
    return means


def summarize(results: list[dict], methods: Sequence[str], intervals: dict[str, list[float]] | None = None) -> dict:
    """Per method: means over cells, the worst / best difference to bicubic (points), and the 95 % interval
    of the mean difference (`bootstrap_deltas`; None without one)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    out = {}
    for name in methods:
        rows = [r for r in results if r["method"] == name]
        deltas = [r["delta_accuracy"] for r in rows if r["delta_accuracy"] is not None]
        out[name] = {"mean_accuracy": mean(r["accuracy"] for r in rows),
                     "mean_accuracy_all": mean(r["accuracy_all"] for r in rows),
                     "mean_auc": mean(r["auc"] for r in rows),
                     "mean_delta_accuracy": round(float(np.mean(deltas)), 2) if deltas else None,
                     "mean_delta_accuracy_ci95": (intervals or {}).get(name),
                     "min_delta": min(deltas) if deltas else None,
                     "max_delta": max(deltas) if deltas else None,
                     "cells_better": sum(d > 0 for d in deltas), "cells_worse": sum(d < 0 for d in deltas),
                     "lost": sum(r["lost"] for r in rows)}
    return out


# --- outputs -----------------------------------------------------------------------------------


def to_markdown(report: dict) -> str:
    """One table: rows methods, columns cells; 'accuracy % (AUC) delta-to-bicubic', then a lost row."""
    cells = [c["name"] for c in report["cells"]]
    by = {(r["method"], r["cell"]): r for r in report["results"]}
    s = report["settings"]

    def fmt(r: dict) -> str:
        if r["accuracy"] is None:
            return "n/a"
        text = f"{100 * r['accuracy']:.1f} ({r['auc']:.3f})" if r["auc"] is not None else f"{100 * r['accuracy']:.1f}"
        if r["method"] != "bicubic" and r["delta_accuracy"] is not None:
            text += f" {r['delta_accuracy']:+.1f}"
        return text

    lines = [f"Identity: {s['pairs']} pairs ({s['same_pairs']} same / {s['different_pairs']} different), "
             f"accuracy % at dlib's {s['threshold']} over detected probes (AUC), +/-: points vs bicubic; "
             f"faces enhanced to {s['output_size']} px; probe descriptor: {s['descriptor']['probe']}.",
             "", "| method | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for m in report["methods"]:
        lines.append(f"| {m['name']} | " + " | ".join(fmt(by[m["name"], c]) for c in cells) + " |")
    first = report["methods"][0]["name"]
    lines.append("| lost | " + " | ".join(f"{by[first, c]['lost']}/{by[first, c]['pairs']}" for c in cells) + " |")
    means = [(name, row) for name, row in report["summary"].items() if row.get("mean_delta_accuracy_ci95")]
    if means:
        lines += ["", "Mean difference to bicubic over the cells, points, with its 95 % interval (paired bootstrap "
                  f"over the pairs, {BOOTSTRAP_DRAWS} draws; per cell in the JSON): " + "; ".join(
                      f"{name} {row['mean_delta_accuracy']:+.1f} [{row['mean_delta_accuracy_ci95'][0]:+.1f}, "
                      f"{row['mean_delta_accuracy_ci95'][1]:+.1f}]" for name, row in means) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path | str) -> None:
    """Accuracy vs face width per method, one panel per camera model (matplotlib, Agg)."""
    try:
        import matplotlib
    except ImportError:
        raise PipelineError("--plot needs matplotlib: pip install -e .[dev]") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cameras = list(dict.fromkeys(c["camera"] for c in report["cells"]))
    fig, axes = plt.subplots(1, len(cameras), figsize=(3.2 * len(cameras) + 0.8, 3.4), sharey=True, squeeze=False)
    for ax, cam in zip(axes[0], cameras):
        for m in report["methods"]:
            rows = sorted((r for r in report["results"] if r["method"] == m["name"] and r["camera"] == cam
                           and r["accuracy"] is not None), key=lambda r: r["width"])
            ax.plot([r["width"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label=m["name"])
        widths = sorted({c["width"] for c in report["cells"] if c["camera"] == cam})
        ax.set_xticks(widths)
        ax.set_title(cam)
        ax.set_xlabel("face width (px)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"accuracy % (dlib, {report['settings']['threshold']})")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(path: Path, write: Callable[[Path], None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from None


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="LFW-style folder <person>/<photo>.jpg")
    ap.add_argument("--pairs", type=int, default=None, help=f"number of pairs (default {DEFAULT_PAIRS}; "
                    f"--quick: {QUICK_PAIRS})")
    ap.add_argument("--cells", default=None, help="comma-separated <camera>@<width>, e.g. clean@16,jpeg50@16 "
                    "(default: the full grid of 12 cells)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_PAIRS} pairs and the cells {','.join(QUICK_CELLS)} (unless given)")
    ap.add_argument("--weights", nargs="+", default=None, metavar="ENTRY",
                    help="rows: bicubic, PATH.safetensors or NAME=PATH (default: bicubic + models/weights/*)")
    ap.add_argument("--detect", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="detector overrides on the pipeline defaults + min_face_size=12, e.g. min_face_size=8")
    ap.add_argument("--output-size", type=int, default=160)
    ap.add_argument("--track-frames", type=int, default=1, metavar="K",
                    help="each probe is the last frame of a K-frame track of the person moving a little, fused "
                         "with the earlier frames by the pipeline's fuse stage (default 1: the photo's one frame)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="for ARASFSR (auto, cpu, cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return cli.run(lambda: run(args, argv))


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    cells = parse_cells(args.cells if args.cells is not None else (QUICK_CELLS if args.quick else FULL_CELLS))
    pairs = args.pairs if args.pairs is not None else (QUICK_PAIRS if args.quick else DEFAULT_PAIRS)
    methods = parse_methods(args.weights)
    detector_settings(args.detect)  # fail early on a bad --detect
    if not args.data.is_dir():
        raise SourceError(f"identity data not found: {args.data} (LFW people, one folder per person; --data)")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    log.info("probe descriptor: %s", probe_descriptor_path())
    log.info("gallery descriptor: %s", GALLERY_PATH)
    report = run_benchmark(args.data, pairs=pairs, cells=cells, methods=methods, seed=args.seed,
                           output_size=args.output_size, detect=args.detect, device=args.device,
                           progress=not args.no_progress, track_frames=args.track_frames)
    report["settings"]["command"] = " ".join(["benchmarks/identity.py", *(argv if argv is not None else sys.argv[1:])])
    table = to_markdown(report)
    if args.json:
        _write(args.json, lambda p: p.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
    if args.markdown:
        _write(args.markdown, lambda p: p.write_text(table, encoding="utf-8"))
    if args.plot:
        _write(args.plot, lambda p: plot(report, p))
    s = report["settings"]
    print(table)
    print(f"{s['photos_excluded_no_dlib_face']} of {s['photos_examined']} photos examined had no dlib face "
          f"(excluded); wall time {s['wall_seconds']:.0f} s ({s['torch_threads']} torch thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
