"""Disk sink: the run's output contract (DESIGN.md, "Contracts").

Layout written under `out_dir`:

    tracks.jsonl                          one JSON record per face, appended and flushed per line
    tracks/<track_id>/<frame_index>.png   the SR face, exactly output_size x output_size
    tracks/<track_id>/<frame_index>_lr.png, _bicubic.png   the LR crop and its bicubic upscale
                                          (only with save_comparison=True; used by the report)
    summary.json                          run totals, written atomically by `write_summary`

Crash safety: every image and summary.json is written to a temporary name in the same folder and
then renamed (`os.replace`), so a file either exists complete or not at all. A face's images are
written before its tracks.jsonl line, so every record points to files that exist. tracks.jsonl is
only ever appended to; lines already flushed stay valid.

Existing output: a new run into a folder that already holds a run (tracks.jsonl, summary.json,
identities.jsonl or tracks/) is refused with a SinkError, unless `overwrite=True`, which first
deletes those run outputs (and index.html); other files in the folder are left alone.
There is no resume.

Example:
    >>> import numpy as np, tempfile
    >>> from pipeline.records import AlignedFace, Detection, EnhancedFace
    >>> det = Detection(np.array([10., 20., 42., 60.]), 0.99, np.zeros((5, 2)))
    >>> lr = AlignedFace(3, 7, np.zeros((32, 32, 3), np.uint8), np.eye(2, 3), 32, 0.8, det, 0.28)
    >>> with DiskSink(tempfile.mkdtemp(), output_size=128) as sink:
    ...     rec = sink.write(EnhancedFace(lr, np.zeros((128, 128, 3), np.uint8), scale=4.0))
    >>> rec["image"]
    'tracks/3/7.png'
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import SinkError
from pipeline.records import EnhancedFace

log = logging.getLogger(__name__)

TRACKS_FILE = "tracks.jsonl"
SUMMARY_FILE = "summary.json"
IDENTITIES_FILE = "identities.jsonl"
REPORT_FILE = "index.html"
TRACKS_DIR = "tracks"
#: Everything a run writes; `overwrite=True` removes exactly these.
RUN_OUTPUTS = (TRACKS_FILE, SUMMARY_FILE, IDENTITIES_FILE, REPORT_FILE, TRACKS_DIR)

_NUM: dict = {"type": "number"}
_IMAGE_PATTERN = r"^tracks/[0-9]+/[0-9]+(_lr|_bicubic)?\.png$"

#: JSON Schema (draft 2020-12) of one tracks.jsonl line. Extra fields are allowed.
TRACK_RECORD_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tracks.jsonl record",
    "type": "object",
    "required": ["track_id", "frame_index", "pts_time", "bbox", "landmarks", "det_score",
                 "crop_size", "scale", "output_size", "image", "quality", "method"],
    "properties": {
        "track_id": {"type": "integer", "minimum": 0},
        "frame_index": {"type": "integer", "minimum": 0},
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
    """Raise ValueError listing every way `rec` breaks TRACK_RECORD_SCHEMA (plus consistency checks).

    No dependency on `jsonschema`: the schema subset used here is checked by hand.

    Example:
        >>> validate_record({"track_id": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: bad tracks.jsonl record: record: missing 'frame_index'; ...
    """
    errors: list[str] = []
    _check(rec, TRACK_RECORD_SCHEMA, "record", errors)
    if not errors:
        x1, y1, x2, y2 = rec["bbox"]
        if x2 < x1 or y2 < y1:
            errors.append(f"record.bbox: not x1 <= x2, y1 <= y2: {rec['bbox']}")
        expected = f"{TRACKS_DIR}/{rec['track_id']}/{rec['frame_index']}.png"
        if rec["image"] != expected:
            errors.append(f"record.image: {rec['image']!r} != {expected!r}")
    if errors:
        shown = "; ".join(errors[:3]) + ("; ..." if len(errors) > 3 else "")
        raise ValueError(f"bad tracks.jsonl record: {shown}")


def _jsonable(obj: Any) -> Any:
    """json.dumps `default=` hook: numpy scalars and arrays, paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _sink_error(path: Path | str, exc: OSError) -> SinkError:
    return SinkError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write_bytes(path: Path | str, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`.

    Either the old file (or none) or the complete new one is there afterwards, never a part.
    OSError (full disk, permissions) -> SinkError naming `path`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_bytes(p, b"hi"); p.read_bytes()
        b'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _sink_error(path, e) from None


def _encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode image of shape {image.shape} as PNG")
    return buf.tobytes()


def _num(x: Any, digits: int) -> float | None:
    """Round to `digits`; non-finite or None -> None (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


class DiskSink:
    """Writes enhanced faces (images + tracks.jsonl) and summary.json under `out_dir`.

    Args:
        out_dir: run folder; created if missing.
        output_size: the configured SR size S; every `face.sr` must be S x S x 3 uint8.
        save_comparison: also write each face's LR crop (`_lr.png`) and bicubic upscale
            (`_bicubic.png`) for the HTML report.
        overwrite: allow writing into a folder that already holds a run (its outputs are deleted).

    Thread-safe: `write` may be called from several threads.
    """

    def __init__(self, out_dir: Path | str, output_size: int, *, save_comparison: bool = True,
                 overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.output_size = int(output_size)
        self.save_comparison = save_comparison
        self.overwrite = overwrite
        self.count = 0
        self.track_ids: set[int] = set()
        self._jsonl = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> DiskSink:
        """Prepare `out_dir` (refuse or clear an old run) and open tracks.jsonl for appending."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _sink_error(self.out_dir, e) from None
        old = [n for n in (TRACKS_FILE, SUMMARY_FILE, IDENTITIES_FILE, TRACKS_DIR)
               if (self.out_dir / n).exists()]
        if old and not self.overwrite:
            raise SinkError(f"output folder {self.out_dir} already holds a run ({', '.join(old)}); "
                            "choose another output folder or allow overwrite")
        if old:
            log.info("overwriting the previous run in %s", self.out_dir)
        for name in RUN_OUTPUTS if self.overwrite else ():
            path = self.out_dir / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as e:
                raise SinkError(f"cannot remove old output {path}: {e.strerror or e}") from None
        path = self.out_dir / TRACKS_FILE
        try:
            (self.out_dir / TRACKS_DIR).mkdir(exist_ok=True)
            # Append-only and unbuffered: each line goes to the OS in one write; never truncated.
            self._jsonl = open(path, "ab", buffering=0)
        except OSError as e:
            raise _sink_error(path, e) from None
        return self

    def close(self) -> None:
        """Close tracks.jsonl (idempotent)."""
        with self._lock:
            if self._jsonl is not None:
                try:
                    os.fsync(self._jsonl.fileno())
                except OSError:
                    pass  # e.g. /dev/full or a pipe: nothing more we can do at close
                self._jsonl.close()
                self._jsonl = None

    def __enter__(self) -> DiskSink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    def write(self, face: EnhancedFace, pts_time: float | None = None) -> dict:
        """Write one face's images, then append and flush its tracks.jsonl line; return the record.

        `pts_time` overrides `face.face.pts_time` when given. Raises ValueError if `face.sr` is not
        output_size x output_size x 3 uint8 (a bug upstream) and SinkError on disk errors.
        """
        s = self.output_size
        if face.sr.shape != (s, s, 3) or face.sr.dtype != np.uint8:
            raise ValueError(f"SR image must be {s}x{s}x3 uint8, got {face.sr.shape} {face.sr.dtype}")
        a = face.face
        if pts_time is None:
            pts_time = a.pts_time
        rel = f"{TRACKS_DIR}/{int(a.track_id)}/{int(a.frame_index)}"
        images = {f"{rel}.png": face.sr}
        if self.save_comparison:
            images[f"{rel}_lr.png"] = a.crop
            images[f"{rel}_bicubic.png"] = cv2.resize(a.crop, (s, s), interpolation=cv2.INTER_CUBIC)
        rec = {
            "track_id": int(a.track_id),
            "frame_index": int(a.frame_index),
            "pts_time": _num(pts_time, 6),
            "bbox": [_num(v, 2) for v in np.asarray(a.detection.box).reshape(4)],
            "landmarks": [[_num(x, 2), _num(y, 2)]
                          for x, y in np.asarray(a.detection.landmarks).reshape(5, 2)],
            "det_score": _num(a.detection.score, 4),
            "crop_size": int(a.crop_size),
            "scale": _num(face.scale, 4),
            "output_size": s,
            "image": f"{rel}.png",
            "lr_image": f"{rel}_lr.png" if self.save_comparison else None,
            "bicubic_image": f"{rel}_bicubic.png" if self.save_comparison else None,
            "quality": _num(a.quality, 4),
            "method": face.method,
        }
        line = (json.dumps(rec, allow_nan=False, default=_jsonable) + "\n").encode()
        encoded = {name: _encode_png(img) for name, img in images.items()}
        with self._lock:
            if self._jsonl is None:
                raise RuntimeError("DiskSink is not open (use `with DiskSink(...) as sink`)")
            folder = self.out_dir / rel.rsplit("/", 1)[0]
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _sink_error(folder, e) from None
            for name, data in encoded.items():
                atomic_write_bytes(self.out_dir / name, data)
            self._append_line(line)
            self.count += 1
            self.track_ids.add(rec["track_id"])
        return rec

    def _append_line(self, line: bytes) -> None:
        """Append one line; on failure cut back any partial bytes so earlier lines stay valid."""
        f = self._jsonl
        start = f.seek(0, os.SEEK_END)
        try:
            written = f.write(line)
            if written != len(line):  # short write on a nearly full disk
                raise OSError(28, os.strerror(28))
        except OSError as e:
            try:
                f.truncate(start)  # only our own partial line, never earlier data
            except OSError:
                pass
            raise _sink_error(self.out_dir / TRACKS_FILE, e) from None

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write summary.json atomically (temp file + fsync + rename); return its path.

        Numpy scalars/arrays are converted; NaN/inf are not allowed (ValueError).
        """
        path = self.out_dir / SUMMARY_FILE
        text = json.dumps(dict(summary), indent=2, allow_nan=False, default=_jsonable) + "\n"
        atomic_write_bytes(path, text.encode(), fsync=True)
        return path
