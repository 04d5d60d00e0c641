"""Recognition stage: embed enhanced faces, match them against a gallery, vote per track.

- `Embedder`: aligned face (H x W x 3 uint8 BGR) -> 1-D float32 vector. Each embedder declares
  its `metric` ("euclidean" or "cosine" distance, lower = closer) and the `threshold` beyond which
  a face is "unknown", in its own convention (vectors are L2-normalised unless the model's
  convention says otherwise: dlib's descriptors are used raw, so dlib's 0.6 applies).
- `Gallery`: embeddings of known people, from images or a folder `<name>/*.jpg|jpeg|png`.
  It does not detect faces itself: `Gallery.from_folder` takes an `align` callable (gallery photo
  -> aligned face, or None when there is no face); the runner passes the project's
  detector + aligner. Without one, each photo is used as an already-aligned face.
- `GalleryMatcher`: scores each track's faces, votes across the track's frames and writes
  identity events to identities.jsonl (one flushed line per decision change, plus a final one when
  the track ends; line schema: `pipeline.run_folder.IdentityRecord`).
- `DlibEmbedder`: dlib's ResNet face descriptor (optional extra: `pip install -e .[recognition]`).
- `build_matcher`: what the runner calls (config section `recognition`).

Example (a toy embedder; real runs use DlibEmbedder):
    >>> import numpy as np
    >>> class Mean(Embedder):
    ...     input_size, threshold = 8, 0.1
    ...     def embed(self, face):
    ...         return l2_normalize(face.reshape(-1, 3).mean(0))
    >>> red, blue = np.full((8, 8, 3), (0, 0, 255), np.uint8), np.full((8, 8, 3), (255, 0, 0), np.uint8)
    >>> g = Gallery.from_images({"red": [red], "blue": [blue]}, Mean())
    >>> g.nearest(Mean().embed(red))
    ('red', 0.0)
"""
from __future__ import annotations

import importlib.util
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from pipeline.errors import ConfigError, PipelineError, SinkError
from pipeline.files import is_image_file
from pipeline.records import AlignedFace, EnhancedFace
from pipeline.run_folder import IDENTITIES_FILE, IdentityRecord

log = logging.getLogger(__name__)

Metric = Literal["euclidean", "cosine"]
UNKNOWN = "unknown"


def l2_normalize(v: np.ndarray) -> np.ndarray:
    """Scale the last axis to unit length (float32); zero vectors stay zero."""
    v = np.asarray(v, np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def face_distance(a: np.ndarray, b: np.ndarray, metric: Metric = "euclidean") -> np.ndarray:
    """Distances: `a` (D or N x D) against `b` (M x D) -> (M) or (N x M). Cosine needs unit vectors.

    "euclidean": ||a - b||; "cosine": 1 - a.b. Both: 0 = identical, lower = closer.

    Example:
        >>> face_distance(np.array([1., 0.]), np.array([[1., 0.], [0., 1.]]), "cosine")
        array([0., 1.], dtype=float32)
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if metric == "cosine":
        return 1.0 - a @ b.T
    if metric == "euclidean":
        return np.linalg.norm(a[..., None, :] - b, axis=-1)
    raise ValueError(f"unknown metric {metric!r}")


class Embedder(ABC):
    """Turns an aligned face (H x W x 3 uint8 BGR, any size) into a 1-D float32 vector.

    Attributes: `input_size` (side the model works at; the embedder resizes itself),
    `metric` and `threshold` (max distance for a match, in that metric, in the embedder's own
    convention). Vectors should be L2-normalised (required for "cosine"), unless the model's
    published threshold is defined on raw vectors (DlibEmbedder).
    """

    input_size: int = 112
    metric: Metric = "euclidean"
    threshold: float = 0.6

    @abstractmethod
    def embed(self, face: np.ndarray) -> np.ndarray:
        """One face -> vector (float32, shape (D,))."""

    def embed_batch(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Many faces -> N x D. Override when the model batches faster."""
        return np.stack([self.embed(f) for f in faces])


def _check_face(face: np.ndarray) -> np.ndarray:
    if not isinstance(face, np.ndarray) or face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        got = getattr(face, "shape", type(face).__name__)
        raise ValueError(f"expected an H x W x 3 uint8 BGR face image, got {got}")
    return face


@dataclass
class Gallery:
    """Known people: row i of `embeddings` belongs to `names[i]`, from `sources[i]`."""

    names: list[str]
    embeddings: np.ndarray
    sources: list[str] = field(default_factory=list)
    metric: Metric = "euclidean"

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("the face gallery is empty: no usable gallery image")
        if len(self.names) != len(self.embeddings):
            raise ValueError("names and embeddings differ in length")

    @property
    def identities(self) -> list[str]:
        """Sorted distinct names."""
        return sorted(set(self.names))

    @classmethod
    def from_images(cls, faces: Mapping[str, Iterable[np.ndarray]], embedder: Embedder) -> Gallery:
        """Build from aligned face images per name: {"alice": [img, ...], ...}."""
        names, imgs = [], []
        for name, group in faces.items():
            for img in group:
                names.append(name)
                imgs.append(_check_face(img))
        embs = embedder.embed_batch(imgs) if imgs else np.zeros((0, 0), np.float32)
        return cls(names, embs, [f"{n}[{i}]" for i, n in enumerate(names)], embedder.metric)

    @classmethod
    def from_folder(cls, folder: Path | str, embedder: Embedder,
                    align: Callable[[np.ndarray], np.ndarray | None] | None = None) -> Gallery:
        """Build from `folder/<name>/*.jpg|jpeg|png` (one sub-folder per person).

        `align(photo_bgr)` returns the aligned face to embed, or None when the photo has no face
        (skipped with a warning). Without `align`, photos must already be aligned face crops.
        Raises ConfigError when the folder is missing or no photo gives a face.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"gallery folder not found: {folder}")
        names, imgs, sources = [], [], []
        for person in sorted(p for p in folder.iterdir() if p.is_dir()):
            for path in sorted(p for p in person.iterdir() if is_image_file(p)):
                photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
                face = None if photo is None else (align(photo) if align else photo)
                if face is None:
                    log.warning("gallery: no %s in %s, skipped", "image" if photo is None else "face", path)
                    continue
                names.append(person.name)
                imgs.append(_check_face(face))
                sources.append(str(path))
        if not imgs:
            raise ConfigError(f"gallery folder {folder} has no usable <name>/*.jpg face photo")
        log.info("gallery: %d photos of %d people from %s", len(imgs), len(set(names)), folder)
        return cls(names, embedder.embed_batch(imgs), sources, embedder.metric)

    def nearest(self, embedding: np.ndarray) -> tuple[str, float]:
        """(name, distance) of the closest gallery image."""
        d = face_distance(embedding, self.embeddings, self.metric)
        i = int(np.argmin(d))
        return self.names[i], round(float(d[i]), 6)


@dataclass
class _TrackVotes:
    frames: int = 0  # faces seen
    scored: list[tuple[str, float]] = field(default_factory=list)  # (label, distance) per scored face
    decision: str | None = None
    last_frame: int = -1


class GalleryMatcher:
    """Per-track identity by majority vote of per-frame gallery matches.

    Each scored face votes for its nearest gallery name if the distance is <= threshold, else for
    "unknown". The track's identity is the label with most votes (ties: lower mean distance);
    `score` is the mean distance of the winning votes. An event is written to `out_path`
    (identities.jsonl, one flushed JSON line) whenever a track's identity changes, and a last one
    with `"final": true` from `end_track` (the runner calls it when the tracker ends the track) or
    `close` (for tracks still open):

        {"track_id": 3, "identity": "obama", "score": 0.31, "votes": 4, "frames": 5,
         "frame_index": 120, "final": false}

    (`frames` counts scored faces.) Args: `threshold` overrides the embedder's; `min_votes`: a
    decision is reported only once its label has that many votes (a final decision short of it is
    "unknown", with the unconfirmed name in "candidate"); `stride=n` scores every n-th face of a
    track (embedding is the slow part); `use="sr"` embeds the SR image, `"crop"` the LR crop;
    `overwrite` allows replacing an existing `out_path`. The file is created at the first event.

    Example:
        >>> with GalleryMatcher(gallery, embedder, "out/identities.jsonl") as m:  # doctest: +SKIP
        ...     for face in enhanced_faces:
        ...         event = m.update(face)  # dict when the track's identity changed, else None
    """

    def __init__(self, gallery: Gallery, embedder: Embedder, out_path: Path | str | None = None, *,
                 threshold: float | None = None, min_votes: int = 1, stride: int = 1,
                 use: Literal["sr", "crop"] = "sr", overwrite: bool = False) -> None:
        if gallery.metric != embedder.metric:
            raise ValueError(f"gallery metric {gallery.metric} != embedder metric {embedder.metric}")
        self.gallery, self.embedder = gallery, embedder
        self.threshold = embedder.threshold if threshold is None else float(threshold)
        self.min_votes, self.stride, self.use = max(1, int(min_votes)), max(1, int(stride)), use
        self.events: list[dict] = []
        self._tracks: dict[int, _TrackVotes] = {}
        self._file = None
        self.out_path = Path(out_path) if out_path is not None else None
        self._overwrite = overwrite
        if self.out_path is not None and self.out_path.exists() and not overwrite:
            raise SinkError(f"{self.out_path} already exists; "
                            "choose another output folder or allow overwrite")

    def __enter__(self) -> GalleryMatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, face: EnhancedFace | AlignedFace) -> dict | None:
        """Score one face of a track; return the event if the track's identity changed."""
        aligned = face.face if isinstance(face, EnhancedFace) else face
        image = face.sr if isinstance(face, EnhancedFace) and self.use == "sr" else aligned.crop
        t = self._tracks.setdefault(int(aligned.track_id), _TrackVotes())
        t.frames += 1
        if (t.frames - 1) % self.stride:
            return None
        name, dist = self.gallery.nearest(self.embedder.embed(image))
        t.scored.append((name if dist <= self.threshold else UNKNOWN, dist))
        t.last_frame = int(aligned.frame_index)
        event = self._event(int(aligned.track_id), t)
        if event["identity"] == t.decision or event["votes"] < self.min_votes:
            return None
        t.decision = event["identity"]
        self._emit(event)
        return event

    def decision(self, track_id: int) -> dict | None:
        """The track's current leading vote as an event (not written; `min_votes` not applied),
        or None if nothing was scored."""
        t = self._tracks.get(track_id)
        return self._event(track_id, t) if t and t.scored else None

    def end_track(self, track_id: int) -> dict | None:
        """Write and return the track's final event, and forget the track."""
        t = self._tracks.pop(track_id, None)
        if not t or not t.scored:
            return None
        event = self._event(track_id, t, final=True)
        if event["votes"] < self.min_votes and event["identity"] != UNKNOWN:
            event = {**event, "identity": UNKNOWN, "candidate": event["identity"]}
        self._emit(event)
        return event

    def close(self) -> None:
        """Finalise all open tracks and close identities.jsonl (idempotent)."""
        for track_id in sorted(self._tracks):
            self.end_track(track_id)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _event(self, track_id: int, t: _TrackVotes, final: bool = False) -> dict:
        by_label: dict[str, list[float]] = {}
        for label, dist in t.scored:
            by_label.setdefault(label, []).append(dist)
        label, dists = min(by_label.items(), key=lambda kv: (-len(kv[1]), float(np.mean(kv[1]))))
        return IdentityRecord(track_id=track_id, identity=label, score=round(float(np.mean(dists)), 4),
                              votes=len(dists), frames=len(t.scored), frame_index=t.last_frame,
                              final=final).to_dict()

    def _emit(self, event: dict) -> None:
        self.events.append(event)
        log.info("track %d: %s (score %.3f, %d/%d votes)", event["track_id"], event["identity"],
                 event["score"], event["votes"], event["frames"])
        if self.out_path is None:
            return
        try:
            if self._file is None:  # opened late: DiskSink.open may clear the folder after we start
                if self.out_path.exists() and not self._overwrite:
                    raise FileExistsError(17, "already exists")
                self._file = open(self.out_path, "w", encoding="utf-8")
            self._file.write(json.dumps(event) + "\n")
            self._file.flush()
        except OSError as e:
            raise SinkError(f"cannot write {self.out_path}: {e.strerror or e}") from None


# -- dlib ---------------------------------------------------------------------------------------

_INSTALL_HINT = "face recognition needs dlib: pip install -e .[recognition]"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"  # in face_recognition_models' models folder


def dlib_models_dir() -> Path:
    """Folder of the face_recognition_models weights, found without importing the package
    (its __init__ imports pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"face_recognition_models is not installed; {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibEmbedder(Embedder):
    """dlib's ResNet face descriptor (128-D; LFW 99.38%), CPU.

    dlib expects a 150 x 150 RGB chip framed like `dlib.get_face_chip`. With `realign=True`
    (default) the input face is re-framed that way: dlib's HOG detector (or, failing that, the box
    that fits pipeline.align's canonical frame) seeds dlib's 5-point landmark model, and
    `get_face_chip` warps the chip. This makes any "canonical framing" from the project's
    aligner work; plain resizing of a differently framed crop does not (measured: wrong names).
    `realign="canonical"` skips the HOG detector and always seeds the landmark model with that fixed
    box (`CANONICAL_BOX`): for faces known to be in pipeline.align's canonical frame (SR outputs)
    it is deterministic and frames every input alike, whatever the detector would have found on
    it. `realign=False` only resizes (for inputs that are already dlib chips).

    The fixed box, measured on 33 LFW faces aligned by the project (MTCNN + align_face, 160 px):
    dlib's HOG boxes on them average (0.17, 0.27, 0.79, 0.89) +- 0.03-0.07 of the side, and the
    landmarks seeded from `CANONICAL_BOX` land within 1-2 px (of 160) of the HOG-seeded ones;
    descriptor distance to the same photo's full-resolution `align_photo` reference: 0.124 with
    the fixed box, 0.119 / 0.123 with the HOG boxes' median / mean as fixed box, 0.098 with each
    face's own HOG box (which, on small or enhanced faces, is often not found at all).

    Vectors are dlib's raw descriptors (length about 1.4, not normalised) so that dlib's published
    rule applies unchanged: same person if the Euclidean distance is <= 0.6 (`threshold`).
    Measured (shared knn_examples; probes reduced to 48 px, then bicubic-upscaled): same person
    0.34-0.42, other people >= 0.66; at 24 px the same person drifts to 0.46-0.53.

    Example:
        >>> emb = DlibEmbedder()  # doctest: +SKIP
        >>> emb.embed(aligned_bgr).shape  # doctest: +SKIP
        (128,)
    """

    input_size = 150
    metric: Metric = "euclidean"
    threshold = 0.6
    # (x0, y0, x1, y1) as fractions of the side: the face box of pipeline.align's canonical frame
    CANONICAL_BOX = (0.2, 0.25, 0.8, 0.85)

    def __init__(self, model_dir: Path | str | None = None, *,
                 realign: bool | Literal["canonical"] = True, num_jitters: int = 0) -> None:
        if realign not in (True, False, "canonical"):
            raise ConfigError(f"DlibEmbedder realign must be True, False or 'canonical', got {realign!r}")
        try:
            import dlib
        except ImportError:
            raise PipelineError(f"dlib is not installed; {_INSTALL_HINT}") from None
        models = Path(model_dir) if model_dir is not None else dlib_models_dir()
        rec = models / RECOGNITION_MODEL
        shape = models / "shape_predictor_5_face_landmarks.dat"
        for path in (rec, shape):
            if not path.is_file():
                raise PipelineError(f"dlib model file not found: {path}; {_INSTALL_HINT}")
        self._dlib = dlib
        self._rec = dlib.face_recognition_model_v1(str(rec))
        self._shape = dlib.shape_predictor(str(shape))
        self._detector = dlib.get_frontal_face_detector()
        self.realign, self.num_jitters = realign, int(num_jitters)

    def chip(self, face: np.ndarray) -> np.ndarray:
        """Aligned BGR face -> dlib's 150 x 150 RGB chip."""
        rgb = np.ascontiguousarray(_check_face(face)[:, :, ::-1])
        if not self.realign:
            return cv2.resize(rgb, (150, 150), interpolation=cv2.INTER_AREA
                              if min(rgb.shape[:2]) > 150 else cv2.INTER_CUBIC)
        return self._cut(*self._landmarks(rgb))

    def _cut(self, rgb: np.ndarray, shape: Any) -> np.ndarray:
        """dlib's chip of an RGB image given its 5 landmarks."""
        return self._dlib.get_face_chip(rgb, shape, size=self.input_size, padding=0.25)

    def _landmarks(self, rgb: np.ndarray) -> tuple[np.ndarray, Any]:
        """The face as the landmark model sees it (at least 160 px) and dlib's 5 points on it."""
        h, w = rgb.shape[:2]
        if min(h, w) < 160:  # the HOG detector finds faces of >= 80 px
            f = 160 / min(h, w)
            rgb = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)
            h, w = rgb.shape[:2]
        found = self._detector(rgb, 0) if self.realign != "canonical" else ()
        x0, y0, x1, y1 = self.CANONICAL_BOX
        box = (max(found, key=lambda r: r.area()) if len(found) else
               self._dlib.rectangle(round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
        return rgb, self._shape(rgb, box)

    def chip_transform(self, face: np.ndarray) -> np.ndarray:
        """The 2 x 3 affine map from `chip(face)`'s pixels to the face's pixels (pixel centres).

        dlib does not expose the warp, so it is measured: the chip of an image whose channels
        are linear ramps of x and y, cut with the face's own landmarks, fitted by least squares
        (ramp rounding averages out over the chip's pixels; pixels outside the face are left
        out). For training against `chip` (models.identity)."""
        rgb = np.ascontiguousarray(_check_face(face)[:, :, ::-1])
        if not self.realign:
            raise ValueError("chip_transform needs realign=True or 'canonical'")
        h0, w0 = rgb.shape[:2]
        rgb, shape = self._landmarks(rgb)
        h, w = rgb.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w]
        ramp = np.dstack([xs * 255.0 / (w - 1), ys * 255.0 / (h - 1), np.full((h, w), 200.0)])
        chip = self._cut(np.rint(ramp).astype(np.uint8), shape)
        inside = chip[:, :, 2] == 200  # border pixels blend with dlib's zero fill
        v, u = np.nonzero(inside)
        # + 0.5: dlib truncates its interpolated values to integers (measured: 0.3 px otherwise)
        x = (chip[v, u, 0] + 0.5) * (w - 1) / 255.0
        y = (chip[v, u, 1] + 0.5) * (h - 1) / 255.0
        # back to the given face's pixels: (p + 0.5) * original / resized - 0.5
        x, y = (x + 0.5) * w0 / w - 0.5, (y + 0.5) * h0 / h - 0.5
        a = np.stack([u, v, np.ones_like(u)], axis=1).astype(np.float64)
        fit = np.linalg.lstsq(a, np.stack([x, y], axis=1), rcond=None)[0]
        return fit.T

    def face_box(self, photo: np.ndarray, upsample: int = 1,
                 max_side: int = 1000) -> tuple[int, int, int, int] | None:
        """dlib's HOG box of the largest face in a full BGR photo, or None when there is none.

        (x0, y0, x1, y1) in photo pixels, x1 and y1 exclusive (width = x1 - x0). Detection runs on
        a copy shrunk to `max_side` (speed)."""
        rgb = np.ascontiguousarray(_check_face(photo)[:, :, ::-1])
        f = min(1.0, max_side / max(rgb.shape[:2]))
        small = rgb if f == 1.0 else cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        found = self._detector(small, upsample)
        if not len(found):
            return None
        r = max(found, key=lambda r: r.area())
        return (round(r.left() / f), round(r.top() / f), round(r.right() / f) + 1, round(r.bottom() / f) + 1)

    def align_photo(self, photo: np.ndarray, upsample: int = 1, max_side: int = 1000,
                    box: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """Full BGR photo -> the largest face as a 150 x 150 BGR dlib chip, or None.

        A stand-in for the project's detector + aligner when building a gallery (`align=`).
        The face is `face_box(photo, upsample, max_side)` unless `box` (the same convention) is
        given; the landmarks are found on the full photo."""
        box = self.face_box(photo, upsample, max_side) if box is None else box
        if box is None:
            return None
        rgb = np.ascontiguousarray(_check_face(photo)[:, :, ::-1])
        rect = self._dlib.rectangle(int(box[0]), int(box[1]), int(box[2]) - 1, int(box[3]) - 1)
        chip = self._cut(rgb, self._shape(rgb, rect))
        return np.ascontiguousarray(chip[:, :, ::-1])

    def embed(self, face: np.ndarray) -> np.ndarray:
        return np.array(self._rec.compute_face_descriptor(self.chip(face), self.num_jitters), np.float32)

    def embed_batch(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        if not faces:
            return np.zeros((0, 128), np.float32)
        chips = [self.chip(f) for f in faces]
        vectors = self._rec.compute_face_descriptor(chips, self.num_jitters)
        return np.array([list(v) for v in vectors], np.float32)


def dlib_available() -> bool:
    """True if the optional `[recognition]` extra (dlib + face_recognition_models) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


class _RecognitionSettings(Protocol):
    gallery: str | None
    threshold: float
    min_votes: int


def build_matcher(settings: _RecognitionSettings, detector: Any, out_dir: Path | str,
                  embedder: Embedder | None = None) -> GalleryMatcher:
    """The runner's recognition stage: DlibEmbedder, the gallery folder `settings.gallery` aligned
    with the project's detector (`detector.detect([img]) -> [[Detection, ...]]`, largest face) and
    `pipeline.align.align_face`, and a matcher writing `out_dir/identities.jsonl`.

    The matcher may replace an old identities.jsonl: DiskSink guards the folder (it refuses or
    clears an old run before the first face, and the matcher creates the file at its first event).
    Raises PipelineError if dlib is missing, ConfigError for a bad gallery folder.
    """
    from pipeline.align import UnalignableFaceError, align_face

    embedder = embedder or DlibEmbedder()

    def align(photo: np.ndarray) -> np.ndarray | None:
        faces = detector.detect([photo])[0]
        if not faces:
            return None
        try:
            return align_face(photo, max(faces, key=lambda d: d.size), 0, 0, max_size=256).crop
        except UnalignableFaceError:
            return None

    gallery = Gallery.from_folder(settings.gallery, embedder, align=align)
    return GalleryMatcher(gallery, embedder, Path(out_dir) / IDENTITIES_FILE,
                          threshold=settings.threshold, min_votes=settings.min_votes, overwrite=True)

