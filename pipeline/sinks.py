"""Disk sink: writes the run folder (layout and line schema: `pipeline.run_folder`).

tracks.jsonl gets one face line per `write` and one track_end line per `end_track` (after the
track's faces); the images go to tracks/<track_id>/; summary.json is written by `write_summary`.

Crash safety: every image and summary.json is written to a temporary name in the same folder and
then renamed (`os.replace`), so a file either exists complete or not at all. A face's images are
written before its tracks.jsonl line, so every record points to files that exist. tracks.jsonl is
only ever appended to; lines already flushed stay valid.

Existing output and concurrent runs: the sink writes into a held `pipeline.run_folder.RunFolder`
(locked; a previous run refused, or with `overwrite=True` cleared of the files this program wrote,
never a user's). Given a path, the sink holds the folder itself from `open` to `close`; the runner
holds it for the whole run and hands it over. There is no resume.

Example:
    >>> import numpy as np, tempfile
    >>> from pipeline.records import AlignedFace, Detection, EnhancedFace, TrackEnd
    >>> det = Detection(np.array([10., 20., 42., 60.]), 0.99, np.zeros((5, 2)))
    >>> lr = AlignedFace(3, 7, np.zeros((32, 32, 3), np.uint8), np.eye(2, 3), 32, 0.8, det, 0.28)
    >>> with DiskSink(tempfile.mkdtemp(), output_size=128) as sink:
    ...     rec = sink.write(EnhancedFace(lr, np.zeros((128, 128, 3), np.uint8), scale=4.0))
    ...     end = sink.end_track(TrackEnd(3, frame_index=40, first_frame=5, last_frame=9, faces_seen=5,
    ...                                   reason="lost"))
    >>> rec["image"], end["faces_written"], end["best_frame"]
    ('tracks/3/7.png', 1, 7)
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.enhance import bicubic
from pipeline.errors import SinkError
from pipeline.files import atomic_write_bytes
from pipeline.records import EnhancedFace, TrackEnd
from pipeline.run_folder import SUMMARY_FILE, TRACKS_DIR, TRACKS_FILE, FaceRecord, RunFolder, TrackEndRecord

log = logging.getLogger(__name__)


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


def _encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode image of shape {image.shape} as PNG")
    return buf.tobytes()


class DiskSink:
    """Writes enhanced faces (images + tracks.jsonl), track ends and summary.json under `out_dir`.

    Args:
        out_dir: run folder; created if missing. A path is held (locked, previous run checked) from
            `open` to `close`; a RunFolder is one the caller holds, used as it is.
        output_size: the configured SR size S; every `face.sr` must be S x S x 3 uint8.
        save_comparison: also write each face's LR crop (`_lr.png`) and bicubic upscale
            (`_bicubic.png`) for the HTML report.
        overwrite: with a path: allow writing into a folder that already holds a run (the files it
            wrote are deleted first).

    Thread-safe: `write` and `end_track` may be called from several threads.
    """

    def __init__(self, out_dir: RunFolder | Path | str, output_size: int, *, save_comparison: bool = True,
                 overwrite: bool = False) -> None:
        self._holds_folder = not isinstance(out_dir, RunFolder)
        self.folder = RunFolder(out_dir, overwrite=overwrite) if self._holds_folder else out_dir
        self.out_dir = self.folder.path
        self.output_size = int(output_size)
        self.save_comparison = save_comparison
        self.count = 0
        self.track_ids: set[int] = set()
        self._open_tracks: dict[int, _Tally] = {}  # tracks with faces written and no end yet
        self._jsonl = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> DiskSink:
        """Hold `out_dir` (unless the caller does) and open tracks.jsonl for appending."""
        if self._holds_folder:
            self.folder.open()
        path = self.out_dir / TRACKS_FILE
        try:
            (self.out_dir / TRACKS_DIR).mkdir(exist_ok=True)
            # Append-only and unbuffered: each line goes to the OS in one write; never truncated.
            self._jsonl = open(path, "ab", buffering=0)
        except OSError as e:
            self.close()
            raise _sink_error(path, e) from None
        return self

    def close(self) -> None:
        """Close tracks.jsonl and release the folder if the sink holds it (idempotent)."""
        with self._lock:
            if self._jsonl is not None:
                try:
                    os.fsync(self._jsonl.fileno())
                except OSError:
                    pass  # e.g. /dev/full or a pipe: nothing more we can do at close
                self._jsonl.close()
                self._jsonl = None
        if self._holds_folder:
            self.folder.close()

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
        record = FaceRecord.of(face, s, a.pts_time if pts_time is None else pts_time, self.save_comparison)
        images = {record.image: face.sr}
        if self.save_comparison:
            images[record.lr_image] = a.crop
            images[record.bicubic_image] = bicubic(a.crop, s)  # the Enhancer's own baseline
        rec = record.to_dict()
        line = (json.dumps(rec, allow_nan=False, default=_jsonable) + "\n").encode()
        encoded = {name: _encode_png(img) for name, img in images.items()}
        with self._lock:
            if self._jsonl is None:
                raise RuntimeError("DiskSink is not open (use `with DiskSink(...) as sink`)")
            folder = self.out_dir / record.image.rsplit("/", 1)[0]
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _sink_error(folder, e) from None
            for name, data in encoded.items():
                atomic_write_bytes(self.out_dir / name, data)
            self._append_line(line)
            self.count += 1
            self.track_ids.add(record.track_id)
            self._open_tracks.setdefault(record.track_id, _Tally()).add(record)
        return rec

    def end_track(self, end: TrackEnd) -> dict | None:
        """Append the track_end line of a track that had faces written, forget the track, and return
        the line's record; None (nothing written) for a track without faces."""
        with self._lock:
            if self._jsonl is None:
                raise RuntimeError("DiskSink is not open (use `with DiskSink(...) as sink`)")
            tally = self._open_tracks.pop(int(end.track_id), None)
            if tally is None:
                return None
            rec = TrackEndRecord.of(end, tally.count, tally.best_quality, tally.best_frame).to_dict()
            self._append_line((json.dumps(rec, allow_nan=False) + "\n").encode())
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
        """Write the run folder's summary.json (see `write_summary`); return its path."""
        return write_summary(self.out_dir, summary)


class _Tally:
    """What a track_end line says about the faces written: how many, and the best one (highest
    quality, no quality lowest, earliest frame on ties: the face the report shows)."""

    def __init__(self) -> None:
        self.count = 0
        self.best_quality: float | None = None
        self.best_frame = -1

    @staticmethod
    def _rank(quality: float | None, frame_index: int) -> tuple[float, int]:
        return (-math.inf if quality is None else quality), -frame_index

    def add(self, record: FaceRecord) -> None:
        self.count += 1
        if self.count == 1 or self._rank(record.quality, record.frame_index) > \
                self._rank(self.best_quality, self.best_frame):
            self.best_quality, self.best_frame = record.quality, record.frame_index


def write_summary(folder: Path | str, summary: Mapping[str, Any]) -> Path:
    """Write `folder`/summary.json atomically (temp file + fsync + rename); return its path.

    Numpy scalars/arrays are converted; NaN/inf are not allowed (ValueError).
    """
    path = Path(folder) / SUMMARY_FILE
    text = json.dumps(dict(summary), indent=2, allow_nan=False, default=_jsonable) + "\n"
    atomic_write_bytes(path, text.encode(), fsync=True)
    return path
