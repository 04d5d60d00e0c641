"""The run folder: its layout, the schema of its files, and typed records to write and read them.

One run writes, under its output folder:

    tracks.jsonl                          one JSON line per written face ("type": "face") and, after a
                                          track's last face, one per ended track ("type": "track_end");
                                          appended and flushed line by line
    tracks/<track_id>/<frame_index>.png   the SR face, exactly output_size x output_size
    tracks/<track_id>/<frame_index>_lr.png, _bicubic.png   the LR crop and its bicubic upscale
                                          (only with save_comparison; used by the report)
    identities.jsonl                      with recognition: one line per identity decision of a track,
                                          the last one of each track with "final": true
    summary.json                          run totals
    index.html                            the static report (marked as ours by REPORT_GENERATOR)
    input/demo.mp4                        the generated clip of `--source demo`
    .lock                                 while a run holds the folder: its pid (see RunFolder)

A run holds its folder through `RunFolder` for its whole length: an exclusive lock (a second run on
the same folder is refused, naming the holder's pid), and the rule for a previous run: refused, or
with `overwrite` cleared, deleting only files this program wrote (a user's own files are kept, and a
user's file where the run would write is refused rather than replaced).

The writers (`pipeline.sinks.DiskSink`, `pipeline.recognition.GalleryMatcher`) build their lines from
`FaceRecord`, `TrackEndRecord` and `IdentityRecord`; `load_run` reads a folder back into the same
records, for the report and for anyone feeding the results to another system.

Example:
    >>> run = load_run("out/clip")  # doctest: +SKIP
    >>> for track_id, faces in run.tracks().items():  # doctest: +SKIP
    ...     end = run.track_ends.get(track_id)   # None while the track is still open
    ...     who = run.identities.get(track_id)   # None without recognition
    ...     print(track_id, len(faces), end and end.best_frame, who and who.identity)
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from common.cli import signals_deferred
from pipeline.errors import PipelineError, SinkError
from pipeline.files import is_temporary
from pipeline.records import EnhancedFace, TrackEnd

log = logging.getLogger(__name__)

TRACKS_FILE = "tracks.jsonl"
SUMMARY_FILE = "summary.json"
IDENTITIES_FILE = "identities.jsonl"
REPORT_FILE = "index.html"
TRACKS_DIR = "tracks"
INPUT_DIR = "input"
DEMO_CLIP = f"{INPUT_DIR}/demo.mp4"
LOCK_FILE = ".lock"
#: The report's <meta name="generator"> content: how an index.html is known to be ours.
REPORT_GENERATOR = "face-sr pipeline report"


def face_images(track_id: int, frame_index: int) -> tuple[str, str, str]:
    """Paths, relative to the run folder, of a face's SR, LR and bicubic PNGs.

    >>> face_images(3, 7)
    ('tracks/3/7.png', 'tracks/3/7_lr.png', 'tracks/3/7_bicubic.png')
    """
    stem = f"{TRACKS_DIR}/{int(track_id)}/{int(frame_index)}"
    return f"{stem}.png", f"{stem}_lr.png", f"{stem}_bicubic.png"


# -- schema ----------------------------------------------------------------------------------------

_NUM: dict = {"type": "number"}
_INT0: dict = {"type": "integer", "minimum": 0}
_IMAGE_PATTERN = r"^tracks/[0-9]+/[0-9]+(_lr|_bicubic)?\.png$"

#: JSON Schema (draft 2020-12) of a face line of tracks.jsonl. Extra fields are allowed.
TRACK_RECORD_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tracks.jsonl face record",
    "type": "object",
    "required": ["track_id", "frame_index", "pts_time", "bbox", "landmarks", "det_score",
                 "crop_size", "scale", "output_size", "image", "quality", "method"],
    "properties": {
        "type": {"type": "string", "pattern": "^face$"},
        "track_id": _INT0,
        "frame_index": _INT0,
        "pts_time": {"type": ["number", "null"]},
        "bbox": {"type": "array", "items": _NUM, "minItems": 4, "maxItems": 4},
        "landmarks": {"type": "array", "minItems": 5, "maxItems": 5,
                      "items": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2}},
        "det_score": {"type": "number", "minimum": 0, "maximum": 1},
        "crop_size": {"type": "integer", "minimum": 1},
        "scale": {"type": "number", "exclusiveMinimum": 0},
        "output_size": {"type": "integer", "minimum": 1},
        "image": {"type": "string", "pattern": _IMAGE_PATTERN},
        "lr_image": {"type": ["string", "null"], "pattern": _IMAGE_PATTERN},
        "bicubic_image": {"type": ["string", "null"], "pattern": _IMAGE_PATTERN},
        "quality": {"type": ["number", "null"]},
        "method": {"type": "string", "minLength": 1},
        "source_file": {"type": ["string", "null"]},
        "camera": {"type": ["string", "null"]},
        "qp": {"type": ["number", "null"], "minimum": 0},
        "noise": {"type": ["number", "null"], "minimum": 0},
        "fused": {"type": "integer", "minimum": 1},
        "strength": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    },
}

#: JSON Schema of a track_end line of tracks.jsonl.
TRACK_END_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tracks.jsonl track_end record",
    "type": "object",
    "required": ["type", "track_id", "frame_index", "first_frame", "last_frame", "faces_seen",
                 "faces_written", "best_quality", "best_frame", "reason"],
    "properties": {
        "type": {"type": "string", "pattern": "^track_end$"},
        "track_id": _INT0,
        "frame_index": _INT0,
        "first_frame": _INT0,
        "last_frame": _INT0,
        "faces_seen": _INT0,
        "faces_written": {"type": "integer", "minimum": 1},
        "best_quality": {"type": ["number", "null"]},
        "best_frame": _INT0,
        "reason": {"type": "string", "pattern": "^(lost|unconfirmed|stream_end|photo|worker_lost)$"},
        "camera": {"type": ["string", "null"]},
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
}


def _check(value: Any, schema: Mapping, where: str, errors: list[str]) -> None:
    """Check `value` against the subset of JSON Schema used in this module."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{where}: expected {'/'.join(types)}, got {value!r}")
            return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: empty string")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: wrong length {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{where}[{i}]", errors)
    if isinstance(value, dict):
        errors.extend(f"{where}: missing {k!r}" for k in schema.get("required", ()) if k not in value)
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}", errors)


def validate_record(rec: Any) -> None:
    """Raise ValueError listing every way `rec` breaks its schema: TRACK_END_SCHEMA for a line with
    "type": "track_end", else TRACK_RECORD_SCHEMA (plus consistency checks).

    No dependency on `jsonschema`: the schema subset used here is checked by hand.

    Example:
        >>> validate_record({"track_id": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: bad tracks.jsonl record: record: missing 'frame_index'; ...
    """
    errors: list[str] = []
    is_end = isinstance(rec, dict) and rec.get("type") == TrackEndRecord.type
    _check(rec, TRACK_END_SCHEMA if is_end else TRACK_RECORD_SCHEMA, "record", errors)
    if not errors and is_end:
        if not rec["first_frame"] <= rec["best_frame"] <= rec["last_frame"] <= rec["frame_index"]:
            errors.append("record: not first_frame <= best_frame <= last_frame <= frame_index")
        if rec["faces_written"] > rec["faces_seen"]:
            errors.append("record: faces_written > faces_seen")
    elif not errors:
        x1, y1, x2, y2 = rec["bbox"]
        if x2 < x1 or y2 < y1:
            errors.append(f"record.bbox: not x1 <= x2, y1 <= y2: {rec['bbox']}")
        expected = face_images(rec["track_id"], rec["frame_index"])[0]
        if rec["image"] != expected:
            errors.append(f"record.image: {rec['image']!r} != {expected!r}")
    if errors:
        shown = "; ".join(errors[:3]) + ("; ..." if len(errors) > 3 else "")
        raise ValueError(f"bad tracks.jsonl record: {shown}")


def _num(x: Any, digits: int) -> float | None:
    """Round to `digits`; non-finite or None -> None (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


# -- records ---------------------------------------------------------------------------------------

class _Line:
    """A JSON line: `to_dict` is what is written, `from_dict` checks a line read back."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    @classmethod
    def from_dict(cls, rec: Mapping[str, Any]):
        """Raises ValueError when `rec` breaks the schema."""
        validate_record(dict(rec))
        return cls(**{f.name: rec.get(f.name) for f in fields(cls)})


@dataclass
class FaceRecord(_Line):
    """A face line of tracks.jsonl: one written face; image paths are relative to the run folder."""

    type: ClassVar[str] = "face"
    track_id: int
    frame_index: int
    pts_time: float | None
    bbox: list[float]
    landmarks: list[list[float]]
    det_score: float
    crop_size: int
    scale: float
    output_size: int
    image: str
    lr_image: str | None
    bicubic_image: str | None
    quality: float | None
    method: str
    source_file: str | None = None  # the image's file name when the source is a folder of images
    camera: str | None = None  # the camera's id in a multi-camera run, None for a single source
    qp: float | None = None  # the H.264 quantiser of the face's blocks (common.qp); None: unknown
    noise: float | None = None  # the camera's noise sigma when the frame was decoded (common.noise); None: unknown
    fused: int = 1  # frames of the track the LR crop is the mean of (pipeline.fuse); 1: this frame's alone
    strength: float | None = None  # the share of the model's detail over bicubic; None: no model ran

    @classmethod
    def of(cls, face: EnhancedFace, output_size: int, pts_time: float | None, comparison: bool) -> FaceRecord:
        """The record of an enhanced face; `comparison`: its LR and bicubic PNGs are written too."""
        a = face.face
        image, lr_image, bicubic_image = face_images(a.track_id, a.frame_index)
        return cls(
            track_id=int(a.track_id), frame_index=int(a.frame_index), pts_time=_num(pts_time, 6),
            bbox=[_num(v, 2) for v in np.asarray(a.detection.box).reshape(4)],
            landmarks=[[_num(x, 2), _num(y, 2)] for x, y in np.asarray(a.detection.landmarks).reshape(5, 2)],
            det_score=_num(a.detection.score, 4), crop_size=int(a.crop_size), scale=_num(face.scale, 4),
            output_size=int(output_size), image=image, lr_image=lr_image if comparison else None,
            bicubic_image=bicubic_image if comparison else None, quality=_num(a.quality, 4), method=face.method,
            source_file=a.source_file, camera=a.camera or None, qp=_num(a.qp, 2), noise=_num(a.noise, 2),
            fused=int(a.fused), strength=_num(face.strength, 3))


@dataclass
class TrackEndRecord(_Line):
    """A track_end line of tracks.jsonl, written after the track's last face line.

    `first_frame` / `last_frame` / `faces_seen` / `reason` / `frame_index` come from the tracker's
    `TrackEnd` (frames with a matched detection, how many, why it ended, when); `faces_written` is the
    number of the track's face lines, `best_quality` / `best_frame` the best of them (first on ties).
    Tracks with no face written have no line.
    """

    type: ClassVar[str] = "track_end"
    track_id: int
    frame_index: int
    first_frame: int
    last_frame: int
    faces_seen: int
    faces_written: int
    best_quality: float | None
    best_frame: int
    reason: str
    camera: str | None = None  # the camera's id in a multi-camera run, None for a single source

    @classmethod
    def of(cls, end: TrackEnd, faces_written: int, best_quality: float | None, best_frame: int) -> TrackEndRecord:
        return cls(track_id=int(end.track_id), frame_index=int(end.frame_index), first_frame=int(end.first_frame),
                   last_frame=int(end.last_frame), faces_seen=int(end.faces_seen), faces_written=int(faces_written),
                   best_quality=_num(best_quality, 4), best_frame=int(best_frame), reason=end.reason,
                   camera=end.camera or None)


@dataclass
class IdentityRecord:
    """A line of identities.jsonl: a track's identity decision. `score` is the mean distance of the
    winning votes, `frames` the number of scored faces, `final` marks the decision written when the
    track ended; `candidate` is the name a final decision short of `min_votes` did not confirm."""

    track_id: int
    identity: str
    score: float | None = None
    votes: int | None = None
    frames: int | None = None
    frame_index: int | None = None
    final: bool = False
    candidate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        rec = asdict(self)
        if rec["candidate"] is None:
            del rec["candidate"]
        return rec

    @classmethod
    def from_dict(cls, rec: Mapping[str, Any]) -> IdentityRecord:
        """Raises ValueError (or TypeError, KeyError) on a malformed line."""
        names = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in rec.items() if k in names})
        if not isinstance(out.track_id, int) or not isinstance(out.identity, str):
            raise ValueError(f"bad identity record: {dict(rec)!r}")
        return out


@dataclass
class Run:
    """A run folder read back by `load_run`.

    `faces`: the face lines in file order; `track_ends`: the track_end line of each ended track;
    `identities`: the last identity decision of each track (the final one once the track ended);
    `summary`: summary.json ({} while the run is still going)."""

    folder: Path
    faces: list[FaceRecord]
    track_ends: dict[int, TrackEndRecord]
    identities: dict[int, IdentityRecord]
    summary: dict[str, Any]

    def tracks(self) -> dict[int, list[FaceRecord]]:
        """Faces grouped by track id (ascending), each track in frame order."""
        out: dict[int, list[FaceRecord]] = {}
        for f in sorted(self.faces, key=lambda f: (f.track_id, f.frame_index)):
            out.setdefault(f.track_id, []).append(f)
        return out


# -- reading ---------------------------------------------------------------------------------------

def _json_lines(path: Path):
    """(line number, parsed object) of each non-empty line; a line that is not JSON (e.g. torn by a
    crash) is skipped with a warning."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except ValueError:
                log.warning("%s:%d: malformed line skipped", path, n)


def read_tracks(path: Path | str) -> tuple[list[FaceRecord], dict[int, TrackEndRecord]]:
    """The face records and track ends of a tracks.jsonl; lines that break the schema are skipped with a
    warning. Lines without "type" (written before track ends existed) are faces."""
    path = Path(path)
    faces: list[FaceRecord] = []
    ends: dict[int, TrackEndRecord] = {}
    for n, rec in _json_lines(path):
        try:
            if isinstance(rec, dict) and rec.get("type") == TrackEndRecord.type:
                end = TrackEndRecord.from_dict(rec)
                ends[end.track_id] = end
            else:
                faces.append(FaceRecord.from_dict(rec))
        except ValueError as e:
            log.warning("%s:%d: %s; skipped", path, n, e)
    return faces, ends


def read_identities(path: Path | str) -> dict[int, IdentityRecord]:
    """The last identity decision per track from an identities.jsonl; malformed lines are skipped."""
    out: dict[int, IdentityRecord] = {}
    for n, rec in _json_lines(Path(path)):
        try:
            ident = IdentityRecord.from_dict(rec)
        except (ValueError, TypeError, AttributeError):
            log.warning("%s:%d: malformed identity line skipped", path, n)
            continue
        out[ident.track_id] = ident
    return out


def load_run(folder: Path | str) -> Run:
    """Read a run folder (see the module docstring) into typed records.

    Works on a finished run and on one still being written (a camera that runs): tracks.jsonl and
    identities.jsonl are read up to their last complete line. Raises PipelineError if `folder` has no
    tracks.jsonl.

    Example:
        >>> run = load_run("out/clip")  # doctest: +SKIP
        >>> [(e.first_frame, e.last_frame, e.faces_written) for e in run.track_ends.values()]  # doctest: +SKIP
        [(0, 29, 30)]
    """
    folder = Path(folder)
    tracks_path = folder / TRACKS_FILE
    if not tracks_path.is_file():
        raise PipelineError(f"no {TRACKS_FILE} in {folder}: not a run output folder")
    faces, ends = read_tracks(tracks_path)
    identities = read_identities(folder / IDENTITIES_FILE) if (folder / IDENTITIES_FILE).is_file() else {}
    summary: dict[str, Any] = {}
    if (folder / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s: unreadable, summary left out", folder / SUMMARY_FILE)
    return Run(folder, faces, ends, identities, summary)


# -- holding a folder ------------------------------------------------------------------------------

_FACE_IMAGE = re.compile(r"^[0-9]+(_lr|_bicubic)?\.png$")  # tracks/<track_id>/<name>


def _starts_with_json_object(path: Path, whole: bool) -> bool:
    """Whether the file (`whole`) or its first line is a JSON object; an empty first line counts
    (the tracks.jsonl of a run that wrote no face)."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 24) if whole else f.readline(1 << 20)
        return (not whole and not text.strip()) or isinstance(json.loads(text), dict)
    except (OSError, ValueError):
        return False


def _is_our_report(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return f'<meta name="generator" content="{REPORT_GENERATOR}">' in head


#: The run's files at the top of the folder, and how to tell that one there was written by this program
#: (a user's own file of the same name must be neither deleted nor replaced).
_OURS: dict[str, Callable[[Path], bool]] = {
    TRACKS_FILE: lambda p: _starts_with_json_object(p, whole=False),
    IDENTITIES_FILE: lambda p: _starts_with_json_object(p, whole=False),
    SUMMARY_FILE: lambda p: _starts_with_json_object(p, whole=True),
    REPORT_FILE: _is_our_report,
    DEMO_CLIP: lambda p: True,  # only ever written by --source demo
}


class RunFolder:
    """The output folder of one run, held for the run's whole length (`with RunFolder(path) as folder:`).

    Opening it creates the folder, takes an exclusive lock (`fcntl.flock` on `.lock`, which holds the
    holder's pid; the kernel releases it when the process ends, however it ends), then deals with a
    previous run: refused (SinkError listing what is there) unless `overwrite`, which deletes only the
    files this program wrote: tracks.jsonl, identities.jsonl, summary.json, index.html when it carries
    our generator tag, tracks/<id>/<frame>[_lr|_bicubic].png, input/demo.mp4 and leftover temporary
    files. A user's file where the run would write (say their own index.html) is refused, overwrite or
    not: the user must move it or choose another folder, rather than find it replaced; a user's files
    elsewhere in the folder (even inside tracks/) are never touched. Nothing is changed in the folder
    before the lock is held and the checks have passed.
    """

    def __init__(self, path: Path | str, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._lock_fd: int | None = None

    def open(self) -> RunFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from None
        try:
            # A Ctrl-C between creating .lock and recording it would leave the file behind: held back until
            # the lock is ours, it then raises here and close() removes the file.
            with signals_deferred():
                self._lock()
            self._take_over_previous_run()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock and remove the lock file (idempotent)."""
        with signals_deferred():
            if self._lock_fd is None:
                return
            # Unlinked while still locked: a run waiting on this file notices the change (see _lock).
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the lock ------------------------------------------------------------------------------
    def _lock(self) -> None:
        path = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise SinkError(f"cannot write {path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SinkError(f"output folder {self.path} is in use by another run ({self._holder(path)}); "
                                "wait for it to end or choose another output folder") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise SinkError(f"cannot lock {path}: {e.strerror or e}") from None
                log.warning("%s: this file system has no locks; a second run on the folder is not refused", path)
            # The holder we waited for may have removed the file after we opened it: our lock is then on
            # a file nobody else will see, so try again on the one at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    @staticmethod
    def _holder(path: Path) -> str:
        """'pid N' of the run holding the lock; it writes its pid just after locking, so wait a moment."""
        for _ in range(20):
            try:
                text = path.read_text().strip()
            except OSError:
                text = ""
            if text.isdigit():
                return f"pid {text}"
            time.sleep(0.05)
        return "pid unknown"

    # -- a previous run ------------------------------------------------------------------------
    def _take_over_previous_run(self) -> None:
        ours, foreign = self._previous_run()
        if foreign:
            raise SinkError(f"{foreign[0]} was not written by this program and would be replaced; "
                            "move it away or choose another output folder")
        if not ours:
            return
        names = sorted({p.relative_to(self.path).parts[0] for p in ours})
        if not self.overwrite:
            raise SinkError(f"output folder {self.path} already holds a run ({', '.join(names)}); "
                            "choose another output folder or allow overwrite")
        log.info("overwriting the previous run in %s (%s)", self.path, ", ".join(names))
        for p in ours:
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                raise SinkError(f"cannot remove old output {p}: {e.strerror or e}") from None
        for folder in sorted({p.parent for p in ours if p.parent != self.path}, reverse=True):
            for d in (folder, *folder.parents):  # tracks/<id>, tracks; input: only once empty
                if d == self.path or any(d.iterdir()):
                    break
                d.rmdir()

    def _previous_run(self) -> tuple[list[Path], list[Path]]:
        """(ours, foreign): files a run of this program wrote here, and a user's files at paths a run
        writes (a user's files elsewhere are neither)."""
        ours: list[Path] = []
        foreign: list[Path] = []
        for name, is_ours in _OURS.items():
            p = self.path / name
            if p.is_symlink() or (p.exists() and not p.is_file()):
                foreign.append(p)
            elif p.is_file():
                (ours if is_ours(p) else foreign).append(p)
        ours += [p for p in self.path.iterdir() if is_temporary(p) and p.is_file()]
        tracks = self.path / TRACKS_DIR
        if tracks.is_dir() and not tracks.is_symlink():
            for track in tracks.iterdir():
                if track.name.isdigit() and track.is_dir() and not track.is_symlink():
                    ours += [p for p in track.iterdir() if (_FACE_IMAGE.match(p.name) or is_temporary(p))
                             and p.is_file() and not p.is_symlink()]
        return ours, foreign
