"""Runner: joins the stages with threads and bounded queues, and owns batching, metrics and shutdown.

    source (reader thread) -> detect -> track -> align -> fuse -> select   (main thread; many cameras: more threads)
        -> enhance (enhance thread) -> disk sink + recognition     (sink thread)

Many cameras (`pipeline.cameras`) run in the same threads: one reader thread per camera, and
`detect.workers` detecting threads (the main thread and helpers; one per core by default), each taking
a share of the cameras at a time (`CameraScheduler`) and from each what it has decoded (up to a
detector batch: a busy camera cannot starve the others); the frames a thread holds of cameras with the
same detection settings go through the detector together, faces of all cameras through the enhancer
together; each camera has its own
tracker, selector, sink and counters (`CameraRun`), and writes DIR/<camera id>/. A camera whose
source fails (never reachable, gone for good) ends alone, its summary saying why; the others go on.
When a camera's input ends, a done marker follows its last face down the queues, and the sink then
writes that camera's summary.json and report at once.

Track lifecycle: the tracker reports each track's end once (`TrackEnd`); the end goes down the same
queues as the faces, after the track's last face, and every stage with per-track state finishes the
track on it: select emits its best-N faces, the sink writes the track_end line, recognition writes
the final identity. When the input ends, the tracker ends every live track and they take the same path.

Back-pressure: when the enhancer falls behind, its bounded queue blocks the main thread, which stops
reading frames; a file source then simply waits (no frame is lost) and a live source drops its
oldest frames (counted in summary.json, per camera).

Stopping (SIGINT/SIGTERM, see `install_signal_handlers`): the reading stops, the faces already
enhanced are written, the backlog waiting for the enhancer is skipped (counted in summary.json as
`faces_skipped_at_stop`), every track still open ends, summary.json and the report are written; it
takes one detector call and one enhancer call at most (each sized to about CALL_S, see Pacer). A
second signal exits at once; what is on disk stays valid (see pipeline.sinks). A signal during
start-up aborts the run.

The output folder is held (locked, a previous run refused or cleared) before anything is loaded or
written, for the whole run (`pipeline.run_folder.RunFolder`); `source="demo"` generates the demo
clip inside it (input/demo.mp4).

Example:
    >>> from pipeline.config import load_config
    >>> summary = Runner(load_config("configs/default.yaml"), "clip.mp4", "out/clip").run()  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common import memory
from common.redact import mask_secrets
from pipeline.align import Aligner
from pipeline.cameras import Camera
from pipeline.config import PipelineConfig
from pipeline.detect import ROI_PAD, MTCNNDetector
from pipeline.enhance import Enhancer
from pipeline.errors import ConfigError, SourceError
from pipeline.fuse import TemporalFusion
from pipeline.metrics import CameraState, CameraStats, Latencies, StageTimer
from pipeline.motion import MOTION_PAD, MotionMask, grow, merge_regions, worth_searching
from pipeline.records import AlignedFace, EnhancedFace, Frame, TrackEnd
from pipeline.run_folder import DEMO_CLIP, RunFolder
from pipeline.select import Selector
from pipeline.sinks import DiskSink, write_summary
from pipeline.source import open_source
from trackers import SortTracker

log = logging.getLogger(__name__)
QUEUE_END = object()
#: Seconds one detector or enhancer call should take: about the longest a stop request waits for either.
CALL_S = 0.5
#: When no camera has a frame decoded, the reading waits this long (shared among the cameras) before looking again.
IDLE_WAIT_S = 0.5
#: A multi-camera run's DIR/summary.json: these totals over the cameras, and these fields of each camera.
OVERVIEW_TOTALS = ("frames_decoded", "frames_processed", "frames_dropped", "reconnects", "faces_detected",
                   "faces_written", "tracks", "worker_restarts", "enhance_retries", "frames_detected_in_parts")
OVERVIEW_CAMERA = ("state", "source", "live", "error", *OVERVIEW_TOTALS, "fps", "noise_sigma")

#: Why detected faces were not written (summary.json "faces_not_written"): each detection is counted once,
#: so faces_detected = faces_written + the sum of these (for a run that was not cut short).
NOT_WRITTEN_REASONS = (
    "below_score",         # detection score under track.low_thresh, or under select.min_score
    "low_score_no_track",  # score under track.high_thresh: may keep a confirmed track alive, never starts one
    "unconfirmed_track",   # seen before its track was confirmed (track.min_hits), or its track never was
    "unalignable",         # landmarks too degenerate to align
    "too_small",           # box under select.min_face_size
    "not_selected",        # left out by select.every_k / select.best_n
    "invalid_box",         # non-finite box or score from the detector
)


class Pacer:
    """Splits a stage's work into calls of about CALL_S seconds, sized from the calls so far, so that a
    stop request waits for one call at most: a batch of four 1080p frames through MTCNN or 32 faces
    through ARASFSR takes ten seconds and more on a CPU and cannot be cut short, while a GPU does a
    full batch in that time (then calls hold `most` items, as before).

    `weight(item)`: the item's share of a call's cost, 1 by default; 0 for an item that costs next to
    nothing (a face that needs no model), which never makes a call longer.

    Example:
        >>> pacer = Pacer(most=32)
        >>> out, seconds = pacer.run(lambda xs: [x * 2 for x in xs], [1, 2, 3], threading.Event())
        >>> out, pacer.size  # 1 item, then 2; quick calls: the next may hold twice as many
        ([2, 4, 6], 4)
    """

    def __init__(self, most: int, weight: Callable[[Any], int] = lambda item: 1) -> None:
        self.most, self.weight = most, weight
        self.size = 1  # weight of the next call; the first call is the smallest, it measures the rate

    def run(self, fn: Callable[[list], list], items: list, stop: threading.Event) -> tuple[list, float]:
        """fn's results over `items` (fn: a list in, one result per item out) and the seconds spent.
        Once `stop` is set no further call starts: the results then cover a prefix of `items`."""
        out: list = []
        spent = 0.0
        weights = [self.weight(item) for item in items]
        rest = sum(weights)  # weight of the items not yet in a call
        while len(out) < len(items) and not stop.is_set():
            start = end = len(out)
            # Equal shares: 4 items where a call may hold 3 go as 2 + 2, not 3 + 1. Fewer distinct batch shapes:
            # the detector's pyramid tensors change size with them (BENCHMARKS.md, "A live camera").
            share = math.ceil(rest / math.ceil(rest / self.size)) if rest else self.size
            weight = 0
            while end < len(items) and (end == start or weight + weights[end] <= share):
                weight += weights[end]
                end += 1
            t0 = time.perf_counter()
            out += fn(items[start:end])
            seconds = time.perf_counter() - t0
            spent += seconds
            rest -= weight
            if weight:  # grow at most twofold: one quick call may be noise
                fit = int(weight * CALL_S / max(seconds, 1e-6))
                self.size = max(1, min(self.most, fit, 2 * self.size))
        return out, spent


@dataclass(frozen=True)
class CameraDone:
    """Goes down the queues after a camera's last face and track end: the sink then writes its summary."""

    camera: str


@dataclass(frozen=True)
class FramesDone:
    """Goes down the queues after the faces and track ends of `frames` frames a detecting thread has processed:
    the sink then moves the progress bar. The bar so counts frames whose faces are written, not frames read:
    the enhancer is often the slower stage, and a bar of frames read reached 98 % of a clip in 2 s, then
    stood for the 13 s the enhancer still needed (45 frames, 172 faces, default preset, 2 cores)."""

    frames: int


class CameraRun:
    """One camera's share of a run: its source, tracker, selector, sink, recognition and counters.
    The detector and enhancer are the run's, shared with the other cameras of the same settings."""

    def __init__(self, camera: Camera, path: Path, started: float) -> None:
        self.id, self.config, self.source_spec, self.path = camera.id, camera.config, camera.source, path
        self.started = started
        self.timer = StageTimer()
        self.latency = Latencies()
        self.counts: dict[str, int] = defaultdict(int)
        self.not_written: Counter[str] = Counter()  # the runner's share of NOT_WRITTEN_REASONS
        self.track_ids: set[int] = set()
        self.photos = False  # the source is a folder of unrelated photos
        self.error: SourceError | None = None
        self.state = CameraState.STARTING  # then RUNNING, and FINISHED (also when stopped) or FAILED
        self.fallbacks = 0  # faces written with bicubic because the model's output was not finite
        self.summary: dict[str, Any] | None = None
        self.src = self.sink = self.matcher = self.detector = self.enhancer = None
        self.aligner = Aligner(self.config.align.min_size, self.config.align.max_size)
        self.fusion = TemporalFusion(self.config.fuse)
        self.selector = Selector(self.config.select)
        self.tracker = SortTracker(self.config.track)
        detect = self.config.detect
        self.motion = MotionMask(detect.motion_threshold, detect.motion_ignore) if detect.motion else None
        self._since_full = self.config.detect.motion_full_every  # detections since the last whole frame

    @property
    def source_name(self) -> str:
        """The source as it may be shown or written: credentials masked (the opened source's own name)."""
        return self.src.name if self.src is not None else mask_secrets(self.source_spec)

    @property
    def name(self) -> str:
        """The camera as messages name it: its id, or the (masked) source of a single-source run."""
        return self.id or self.source_name

    def open(self, stack: ExitStack, folder: RunFolder, detector: MTCNNDetector, enhancer: Enhancer,
             strict: bool) -> None:
        """Open the source and the sink. A source that cannot be opened raises when `strict` (a
        single-source run); otherwise this camera fails alone (its folder gets a summary saying why)."""
        self.detector, self.enhancer = detector, enhancer
        self.matcher = self._make_matcher(detector)
        if self.matcher is not None:
            stack.callback(self.matcher.close)
        self.open_input(stack, folder.path, strict)
        self.open_sink(stack, folder)

    def open_input(self, stack: ExitStack, demo_dir: Path, strict: bool) -> None:
        """Open the source (`demo`: the demo clip, generated into `demo_dir`); see `open`."""
        try:
            self.src = stack.enter_context(open_source(self._input(demo_dir), self.config.source))
        except SourceError as exc:
            if strict:
                raise
            self.error, self.state = exc, CameraState.FAILED
            log.error("camera %s: %s", self.id, exc)
            return
        self.photos = self.src.folder_mode == "photos"
        # Unrelated photos: every face that could start a track is one, confirmed at once (there is
        # no second sighting to wait for), and ends with its photo.
        if self.photos:
            self.tracker = SortTracker(dataclasses.replace(self.config.track, min_hits=1))
        self.state = CameraState.RUNNING

    def open_sink(self, stack: ExitStack, folder: RunFolder) -> None:
        cfg = self.config
        self.sink = stack.enter_context(DiskSink(folder, cfg.enhance.output_size,
                                                 save_comparison=cfg.output.save_comparison))

    def _make_matcher(self, detector):
        rec = self.config.recognition
        if not rec.gallery:
            return None
        from pipeline.recognition import build_matcher

        return build_matcher(rec, detector, self.path)

    def _input(self, demo_dir: Path) -> str:
        """The source to open: `demo` is the demo clip, generated into `demo_dir` (the camera's folder)."""
        if self.source_spec != "demo":
            return self.source_spec
        from pipeline.demo import make_demo_clip

        return str(make_demo_clip(demo_dir / DEMO_CLIP))

    def read(self, most: int, wait: float) -> list[Frame] | None:
        """Up to `most` frames: the first waits up to `wait` s, the rest only if already decoded (a
        file's next frames come at once). [] if none came in time; None at the end of the source, and
        once it fails (a camera gone for good): `error` then says why, and what was read is kept."""
        t0 = time.perf_counter()
        try:
            frame = self.src.read(timeout=wait)
        except TimeoutError:
            return []
        except SourceError as exc:
            self.error = exc
            return None
        finally:
            self.timer.add("wait_for_frames", time.perf_counter() - t0, 0)
        frames: list[Frame] = []
        while frame is not None:
            frames.append(frame)
            if len(frames) >= most:
                break
            try:
                frame = self.src.read(timeout=0 if self.src.is_live else None)
            except (TimeoutError, SourceError):  # a failure comes again on the next read
                break
        return frames or None

    @property
    def frames_left(self) -> int | None:
        """Frames this camera may still process under runtime.max_frames; None without a limit."""
        most = self.config.runtime.max_frames
        return max(0, most - self.counts["frames_processed"]) if most else None

    @property
    def detect_every(self) -> int:
        return 1 if self.photos else self.config.detect.every  # no photo is skipped

    def changed_parts(self, frame: Frame) -> np.ndarray | None:
        """For a frame due for detection (in order, each once): with detect.motion, the boxes where the
        picture changed (N x 4 xyxy, maybe none), to be searched with the tracks' faces (`search_regions`);
        None when the whole frame is to be detected: without detect.motion, photos, every motion_full_every-th
        detection (the first included), and when searching the parts would cost more than motion_max_area of
        a whole detection (pipeline.motion.worth_searching: a pan, the lights, many people).
        The tracks' boxes counted are those expected before the frames detected with this one are tracked."""
        if self.motion is None or self.photos:
            return None
        cfg = self.config.detect
        changed = self.motion.update(frame.image, frame.noise)
        height, width = frame.image.shape[:2]
        scale = self.detector.detection_size(height, width)[1] / width
        self._since_full += 1
        if self._since_full >= cfg.motion_full_every or not worth_searching(
                self.search_regions(frame, changed), height, width, scale, cfg.motion_max_area):
            self._since_full = 0
            return None
        return changed

    def search_regions(self, frame: Frame, changed: np.ndarray) -> np.ndarray:
        """The parts of `frame` to detect: where it changed (`changed_parts`) and where the live tracks' faces
        are expected, padded and merged (pipeline.motion)."""
        height, width = frame.image.shape[:2]
        least = 3.0 * self.config.detect.min_face_size  # a part holds three of the smallest faces searched
        boxes = np.concatenate([grow(changed, MOTION_PAD, least),
                                grow(self.tracker.expected_boxes(frame.index), ROI_PAD, least)])
        return merge_regions(boxes, height, width)

    def process(self, frames: list[Frame], detections: dict[int, list],
                changed: dict[int, np.ndarray] | None = None) -> list[AlignedFace | TrackEnd]:
        """Track, align, fuse and select the faces of `frames` (in order), given the detections of those
        frames that were detected and the changed parts of those to be detected there (`changed_parts`);
        returns the faces to enhance and the track ends, tagged with the camera."""
        chosen: list[AlignedFace | TrackEnd] = []
        tracker, aligner, selector = self.tracker, self.aligner, self.selector
        changed = changed or {}
        for frame in frames:
            dets = detections.get(frame.index)
            if dets is None and frame.index in changed:
                t0 = time.perf_counter()
                dets = self.detector.detect_regions(frame.image, self.search_regions(frame, changed[frame.index]))
                self.counts["frames_detected_in_parts"] += 1
                self.timer.add("detect", time.perf_counter() - t0, 1)
            elif dets is None and self.config.detect.roi and tracker.num_tracks:
                t0 = time.perf_counter()
                dets = self.detector.detect_around(frame.image, tracker.expected_boxes(frame.index))
                self.timer.add("detect", time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            updates = tracker.update(frame.index, dets) if dets is not None else tracker.predict(frame.index)
            self.counts["faces_detected"] += len(dets or [])
            t1 = time.perf_counter()
            aligned = self.fusion(aligner(frame, updates))  # the fusion's time counts as alignment's
            t2 = time.perf_counter()
            seen = [u for u in updates if u.detection is not None]
            eligible = sum(u.state in aligner.states for u in seen)
            self.not_written["unconfirmed_track"] += len(seen) - eligible
            self.not_written["unalignable"] += eligible - len(aligned)
            picked = selector(aligned)
            if self.photos:
                tracker.finish("photo")
            self.track_ids.update(f.track_id for f in picked)
            for face in picked:
                face.camera = self.id
            chosen.extend(picked)
            chosen.extend(self.ended())
            t3 = time.perf_counter()
            self.timer.add("track", t1 - t0, 1)
            self.timer.add("align", t2 - t1, len(aligned))
            self.timer.add("select", t3 - t2, len(aligned))
            self.counts["faces_aligned"] += len(aligned)
            self.counts["frames_processed"] += 1
        return chosen

    def ended(self) -> list[AlignedFace | TrackEnd]:
        """The tracks the tracker ended since the last call: their best-N faces, then their ends."""
        ends = [dataclasses.replace(e, camera=self.id) for e in self.tracker.pop_ended()]
        self.fusion.end_tracks(e.track_id for e in ends)
        faces = self.selector.end_tracks(e.track_id for e in ends)
        for face in faces:
            face.camera = self.id
        return [*faces, *ends]

    def finish(self, stopped: bool) -> list:
        """End the camera's reading (its input ended, it failed, or the run stops): every live track
        ends; returns what must still go down the queues, the camera's done marker last."""
        if stopped and self.src is not None and self.src.is_live and not self.src.stats.decoded \
                and self.error is None:
            # Not a normal end: the camera never answered, so the run has nothing to show for it.
            self.error = SourceError(f"{self.name}: stopped before the source delivered any frame")
        self.state = CameraState.FAILED if self.error is not None else CameraState.FINISHED
        self.tracker.finish()  # tracks still alive end like any other
        return [*self.ended(), CameraDone(self.id)]

    def write(self, item: EnhancedFace | TrackEnd) -> None:
        """The sink's part: an enhanced face (images, its tracks.jsonl line, recognition, its
        latency) or a track's end."""
        t0 = time.perf_counter()
        if isinstance(item, TrackEnd):
            self.sink.end_track(item)
            if self.matcher is not None:
                self.matcher.end_track(item.track_id)
            return
        self.sink.write(item)
        if self.matcher is not None:
            self.matcher.update(item)
        self.counts["faces_written"] += 1
        self.counts["faces_fused"] += item.face.fused > 1
        self.latency.add(item.face.decoded_at)
        self.timer.add("sink", time.perf_counter() - t0, 1)

    def write_summary(self, interrupted: bool) -> dict[str, Any]:
        """summary.json of the camera (and its report): called by the sink once its last face is written."""
        cfg, src = self.config, self.src
        wall = time.perf_counter() - self.started
        processed = self.counts["frames_processed"]
        not_written = {r: self.not_written[r] + self.tracker.dropped[r] + self.selector.skipped[r]
                       for r in NOT_WRITTEN_REASONS}
        stats = self.stats().summary_fields()  # the numbers the metrics endpoint serves
        self.summary = {
            **({"camera": self.id, "state": self.state.value} if self.id else {}),
            "source": stats.pop("source"), "live": stats.pop("live"), "interrupted": interrupted,
            **{k: v for k, v in stats.items() if k != "stages"},
            "frames_expected": src.frame_count if src else None, "truncated": src.truncated if src else False,
            "faces_aligned": self.counts["faces_aligned"], "faces_not_written": not_written,
            "faces_fused": self.counts["faces_fused"],  # written as the mean of several frames (pipeline.fuse)
            "faces_skipped_at_stop": self.counts["faces_skipped_at_stop"],
            # pipeline.cluster: times the camera's worker was restarted, enhancer calls retried (0 in one process)
            "worker_restarts": self.counts["worker_restarts"], "enhance_retries": self.counts["enhance_retries"],
            "folder_mode": src.folder_mode if src else None,
            "tracks": len(self.sink.track_ids), "faces_bicubic_fallback": self.fallbacks,
            "enhance_method": cfg.enhance.method, "output_size": cfg.enhance.output_size,
            "wall_time_s": round(wall, 3), "fps": round(processed / wall, 2) if wall > 0 else None,
            "face_latency_s": Latencies.summary(self.latency.samples()),
            "stages": stats["stages"], "config": cfg.to_dict(),
            "error": str(self.error) if self.error else None,
        }
        self.sink.write_summary(self.summary)
        if cfg.output.report:
            from pipeline.report import write_report

            write_report(self.path)
        return self.summary

    def stats(self) -> CameraStats:
        """The camera's numbers now: what the metrics endpoint serves, and summary.json's counters."""
        src = self.src
        state = self.state
        if state is CameraState.RUNNING and src.is_live and not src.connected:
            state = CameraState.RECONNECTING if src.stats.decoded else CameraState.STARTING
        return CameraStats(
            camera=self.id or "default", source=self.source_name,
            live=bool(src and src.is_live),
            frames_decoded=src.stats.decoded if src else 0, frames_processed=self.counts["frames_processed"],
            frames_dropped=src.stats.dropped if src else 0, reconnects=src.stats.reconnects if src else 0,
            faces_detected=self.counts["faces_detected"], faces_written=self.counts["faces_written"],
            queue_depth=src.queued if src else 0, state=state, timer=self.timer, noise=src.noise if src else None,
            frames_detected_in_parts=self.counts["frames_detected_in_parts"])

    def log_live(self) -> None:
        elapsed = time.perf_counter() - self.started
        stats = self.src.stats
        log.info("%s: %d frames (%.1f fps), %d dropped, %d reconnects, %d faces, %d tracks", self.name,
                 self.counts["frames_processed"], self.counts["frames_processed"] / max(elapsed, 1e-9),
                 stats.dropped, stats.reconnects, self.counts["faces_detected"], len(self.track_ids))


def detect_and_process(batch: dict[CameraRun, list[Frame]], pacers: dict[int, Pacer], most: int,
                       stop: threading.Event, timer: StageTimer | None = None) -> list:
    """Detect the frames due for detection, all cameras of the same detector in the same calls (the
    detector groups frames by size), then each camera's frames through its tracker, in order; returns
    the faces to enhance and the track ends. `pacers`: the calls' sizes per detector (kept from call to
    call, at most `most` frames); `timer`: the run's, which counts the calls whole (each camera's timer
    its share). Once `stop` is set no detector call starts: each camera's frames from the first one
    not detected are left. Shared by the runner and a camera worker (pipeline.cluster)."""
    due: dict[CameraRun, list[Frame]] = {}
    changed: dict[CameraRun, dict[int, np.ndarray]] = defaultdict(dict)  # detected where they changed (motion)
    for cam, frames in batch.items():
        due[cam] = []
        for f in frames:
            if f.index % cam.detect_every == 0:
                parts = cam.changed_parts(f)
                if parts is None:
                    due[cam].append(f)
                else:
                    changed[cam][f.index] = parts
    by_detector: dict[int, list[CameraRun]] = defaultdict(list)
    for cam in batch:
        by_detector[id(cam.detector)].append(cam)
    detections: dict[tuple[str, int], list] = {}
    for key, cams in by_detector.items():
        items = [(cam, f) for cam in cams for f in due[cam]]
        if not items:
            continue
        pacer = pacers.setdefault(key, Pacer(most))
        found, seconds = pacer.run(cams[0].detector.detect, [f.image for _, f in items], stop)
        if timer is not None:
            timer.add("detect", seconds, len(found))
        for (cam, frame), dets in zip(items, found):
            detections[(cam.id, frame.index)] = dets
        for cam, n in Counter(cam for cam, _ in items[:len(found)]).items():
            cam.timer.add("detect", seconds * n / len(found), n)
    chosen: list = []
    for cam, frames in batch.items():
        missing = [f.index for f in due[cam] if (cam.id, f.index) not in detections]
        if missing:  # stopped: the frames from the first one not detected are left
            frames = [f for f in frames if f.index < missing[0]]
        chosen += cam.process(frames, {i: d for (c, i), d in detections.items() if c == cam.id}, changed[cam])
    return chosen


class CameraScheduler:
    """Hands the running cameras to the threads that detect. A claim takes up to `share` cameras that no
    other thread holds, in turn from where the last claim stopped (no camera starves), those `ready` (with
    frames decoded) first; a camera stays held until released, so one thread at a time reads, detects and
    tracks it, and its frames keep their order. Safe from any thread.

    Example:
        >>> s = CameraScheduler(["a", "b", "c"], share=2)
        >>> s.claim(0), s.claim(0)
        (['a', 'b'], ['c'])
        >>> s.release(["a", "b"], ended=["b"]); s.claim(0), s.active
        (['a'], ['a', 'c'])
    """

    def __init__(self, cameras: Sequence, share: int, ready: Callable[[Any], bool] = lambda cam: True) -> None:
        self.active = list(cameras)
        self.share, self.ready = max(1, share), ready
        self._held: set[int] = set()  # ids: cameras need not be hashable
        self._turn = 0
        self._cond = threading.Condition()

    def claim(self, timeout: float) -> list | None:
        """Cameras for the calling thread; [] if every active one stays held for `timeout` s; None once
        no camera is active (the threads then end)."""
        with self._cond:
            while True:
                if not self.active:
                    return None
                start = self._turn % len(self.active)
                free = [c for c in self.active[start:] + self.active[:start] if id(c) not in self._held]
                if free:
                    break
                if not self._cond.wait(timeout):
                    return []
            free.sort(key=lambda c: not self.ready(c))  # stable: round-robin order within each group
            picked = free[:self.share]
            self._held.update(map(id, picked))
            self._turn = start + len(picked)
            return picked

    def release(self, cameras: Sequence, ended: Sequence = ()) -> None:
        """Give `cameras` back; those `ended` leave the rotation."""
        with self._cond:
            self._held.difference_update(map(id, cameras))
            for cam in ended:
                self.active.remove(cam)
            self._cond.notify_all()


class Runner:
    """Runs the whole pipeline on one source, or on the cameras of a cameras file, into one output
    folder; `run()` returns the summary (a multi-camera run's: the aggregate of DIR/summary.json).

    `source`: a source spec (one camera: its outputs at the folder's top level), or a list of
    `pipeline.cameras.Camera` (DIR/<camera id>/ each, DIR/summary.json and DIR/index.html over all);
    `config` is then the settings the cameras share (`pipeline.cameras.SHARED`), e.g. the first camera's.
    """

    def __init__(self, config: PipelineConfig, source: str | Sequence[Camera], out_dir: str | Path | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.multi = not isinstance(source, (str, Path))
        self.cameras_given = list(source) if self.multi else [Camera("", str(source), config)]
        if self.multi and not self.cameras_given:
            raise ConfigError("a multi-camera run needs at least one camera")
        self.out_dir = Path(out_dir or config.output.dir)
        self.stop = stop or threading.Event()
        self.running = threading.Event()  # set once start-up is over and the stages run
        self.timer = StageTimer()  # the shared stages' calls, whole (each camera's timer has its share)
        self.cameras: dict[str, CameraRun] = {}
        self._log_lock = threading.Lock()
        self._bar = None  # the progress bar of a run on files (`_progress`), moved by the sink thread only
        self._last_log = 0.0
        self._error: BaseException | None = None
        self._torch_threads = torch.get_num_threads()  # torch's own count, for the threads set to 0

    # -- worker threads ---------------------------------------------------------------------------
    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self._error = exc
            self.stop.set()

    def _get(self, q: queue.Queue):
        """Blocking get that gives up (as if the stream ended) once another thread has failed."""
        while True:
            try:
                return q.get(timeout=0.5)
            except queue.Empty:
                if self._error is not None:
                    return QUEUE_END

    def _put(self, q: queue.Queue, item) -> None:
        """Blocking put that gives up once another thread has failed (a full queue must not hang the run)."""
        while self._error is None:
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                pass

    def _enhance_loop(self, inbox: queue.Queue, outbox: queue.Queue) -> None:
        """Items in: lists of AlignedFace, TrackEnd, camera-done and frames-done markers; out: the same lists
        with the faces enhanced. A batch's other items go out after its faces, in order: an end never overtakes
        a face of its track, nor a camera's done marker a face of the camera, nor frames done their faces."""
        # Explicitly, also for 0: a new thread would otherwise inherit whatever count was set last.
        torch.set_num_threads(self.config.enhance.threads or self._torch_threads)
        batch_size = self.config.enhance.batch_size
        pacer = Pacer(batch_size, weight=lambda face: self.cameras[face.camera].enhancer.uses_model(face))
        done = False
        while not done:
            faces: list[AlignedFace] = []
            others: list = []
            item = self._get(inbox)
            while True:  # gather what is waiting, up to a full batch, without waiting for more
                if item is QUEUE_END:
                    done = True
                    break
                for x in item:
                    (faces if isinstance(x, AlignedFace) else others).append(x)
                if len(faces) >= batch_size:
                    break
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
            enhanced = self._enhance_until_stopped(pacer, faces)
            if enhanced or others:
                self._put(outbox, [*enhanced, *others])
        self._put(outbox, QUEUE_END)

    def _enhance(self, faces: list[AlignedFace]) -> list[EnhancedFace]:
        """Faces of any cameras through their cameras' enhancers (one call per enhancer), in order."""
        out: list[EnhancedFace | None] = [None] * len(faces)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, face in enumerate(faces):
            groups[id(self.cameras[face.camera].enhancer)].append(i)
        for members in groups.values():
            enhancer = self.cameras[faces[members[0]].camera].enhancer
            for i, result in zip(members, enhancer([faces[i] for i in members])):
                out[i] = result
        return out  # type: ignore[return-value]

    def _enhance_until_stopped(self, pacer: Pacer, faces: list[AlignedFace]) -> list[EnhancedFace]:
        """The faces enhanced before a stop request; the rest are skipped, and counted."""
        enhanced, seconds = pacer.run(self._enhance, faces, self.stop)
        if enhanced:
            self.timer.add("enhance", seconds, len(enhanced))
            for cam, n in Counter(e.face.camera for e in enhanced).items():
                self.cameras[cam].timer.add("enhance", seconds * n / len(enhanced), n)
        for e in enhanced:
            cam = self.cameras[e.face.camera]
            cam.fallbacks += cam.enhancer.fell_back(e)
        for face in faces[len(enhanced):]:
            self.cameras[face.camera].counts["faces_skipped_at_stop"] += 1
        return enhanced

    def _sink_loop(self, inbox: queue.Queue) -> None:
        while (item := self._get(inbox)) is not QUEUE_END:
            for x in item:
                self._write(x)

    def _write(self, item: EnhancedFace | TrackEnd | CameraDone | FramesDone) -> None:
        """An item at the end of the queues: written by its camera (a done marker: its summary; frames done:
        the progress bar)."""
        if isinstance(item, CameraDone):
            self.cameras[item.camera].write_summary(self.stop.is_set())
            return
        if isinstance(item, FramesDone):
            self._advance(item.frames)
            return
        t0 = time.perf_counter()
        self.cameras[item.camera if isinstance(item, TrackEnd) else item.face.camera].write(item)
        if isinstance(item, EnhancedFace):
            self.timer.add("sink", time.perf_counter() - t0, 1)

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run to the end of the input (or a stop request); returns the summary. Raises UserError
        subclasses for bad input; a single-source run raises the source's error after writing what
        was read before it (a camera of a multi-camera run fails alone: see `failed`)."""
        start = time.perf_counter()
        # The detecting (this) thread sets detect.threads and the enhance thread enhance.threads when it starts;
        # this thread gets its own count back at the end. Caveat, measured with torch 2.13 (OpenMP): a count set
        # in one thread also changes the others' (the last set wins), so a non-zero enhance.threads applies to
        # detection too; ONNX Runtime's enhancer (the CPU default) has a pool of its own and is not affected.
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(self.config.detect.threads or self._torch_threads)
        try:
            with RunFolder(self.out_dir, overwrite=self.config.output.overwrite) as folder:
                summary = self._run_in(folder, start)
        finally:
            torch.set_num_threads(self._torch_threads)
        if not self.multi:
            cam = self.cameras[""]
            if cam.error is not None:
                raise cam.error
        return summary

    @property
    def failed(self) -> list[str]:
        """Ids of the cameras that failed (never reachable, broken, gone for good)."""
        return [c.id for c in self.cameras.values() if c.state is CameraState.FAILED]

    def snapshot(self) -> list[CameraStats]:
        """Every camera's numbers now (for `pipeline.metrics.MetricsServer`); safe from any thread."""
        return [cam.stats() for cam in list(self.cameras.values())]

    def _run_in(self, folder: RunFolder, start: float) -> dict[str, Any]:
        cfg = self.config
        with ExitStack() as stack:
            self._open_cameras(stack, folder, start)
            to_enhance: queue.Queue = queue.Queue(maxsize=cfg.runtime.queue_size)
            to_sink: queue.Queue = queue.Queue(maxsize=cfg.runtime.queue_size)
            workers = [threading.Thread(target=self._guard, args=(self._enhance_loop, to_enhance, to_sink),
                                        name="enhance", daemon=True),
                       threading.Thread(target=self._guard, args=(self._sink_loop, to_sink),
                                        name="sink", daemon=True)]
            self._bar = self._progress()

            def read() -> None:
                for cam in self.cameras.values():
                    if cam.state is CameraState.FAILED:  # never opened: nothing to read, its summary says why
                        self._put(to_enhance, cam.finish(stopped=False))
                self._loop(to_enhance)

            try:
                self._drive(read, workers, to_enhance)
            finally:
                if self._bar is not None:
                    self._bar.close()
        if not self.multi:
            return self.cameras[""].summary
        return self._write_overview(folder, start)

    def _drive(self, body: Callable[[], None], threads: list[threading.Thread], first: queue.Queue) -> None:
        """Start `threads` (the stages downstream), run `body` (the reading) in this thread, then end the
        queue `first` and join them, also after a failure anywhere (the threads then give up); raise it."""
        for t in threads:
            t.start()
        self.running.set()
        try:
            body()
        except BaseException as exc:  # make the threads give up too
            self._error = self._error or exc
            raise
        finally:
            self._put(first, QUEUE_END)
            for t in threads:
                t.join()
        if self._error is not None:
            raise self._error

    def _open_cameras(self, stack: ExitStack, folder: RunFolder, start: float) -> None:
        """Every camera's folder, source and sink; one detector per detection settings (sharing the
        networks) and one enhancer per enhancement settings (sharing a model per weights file)."""
        detectors: dict[str, MTCNNDetector] = {}
        enhancers: dict[str, Enhancer] = {}
        models: dict = {}
        parts: dict[str, tuple[RunFolder, MTCNNDetector, Enhancer]] = {}
        for camera in self.cameras_given:  # folders and models first, then the sources (memory.freeze_long_lived)
            cfg = camera.config
            cam_folder = folder
            if self.multi:  # each camera's folder is held and checked like a run folder of its own
                cam_folder = stack.enter_context(RunFolder(folder.path / camera.id, overwrite=cfg.output.overwrite))
            dkey, ekey = repr(cfg.detect.detector()), repr(cfg.enhance)
            if dkey not in detectors:
                detectors[dkey] = (next(iter(detectors.values())).reconfigured(cfg.detect.detector())
                                   if detectors else MTCNNDetector(cfg.detect.detector()))
            if ekey not in enhancers:
                enhancers[ekey] = Enhancer(cfg.enhance, models=models)
            parts[camera.id] = cam_folder, detectors[dkey], enhancers[ekey]
        memory.freeze_long_lived()
        for camera in self.cameras_given:
            cam_folder, detector, enhancer = parts[camera.id]
            cam = CameraRun(camera, cam_folder.path, start)
            self.cameras[camera.id] = cam
            cam.open(stack, cam_folder, detector, enhancer, strict=not self.multi)

    def _loop(self, to_enhance: queue.Queue) -> None:
        """Detect, track, align and select the cameras' frames, and queue the faces: `detect.workers` threads
        (this one and helpers), each taking a share of the cameras at a time (`CameraScheduler`)."""
        cfg = self.config
        running = [c for c in self.cameras.values() if c.state is CameraState.RUNNING]
        workers = max(1, min(cfg.detect.workers or os.cpu_count() or 1, len(running)))
        if workers > 1:
            # detect.threads are the detecting threads' together (torch's default: one per core). torch's count
            # is the process's (the last thread to set it sets it for all, measured): set once, here. Two
            # threads of one torch thread each detect 1.7x the frames per second of one thread of two
            # (BENCHMARKS.md, "Many cameras"): MTCNN's Python steps run while the other thread's convolutions do.
            torch.set_num_threads(max(1, (cfg.detect.threads or self._torch_threads) // workers))
        sched = CameraScheduler(running, share=-(-len(running) // workers),
                                ready=lambda cam: cam.src.queued > 0 or not cam.src.reading)
        self._last_log = time.perf_counter()
        helpers = [threading.Thread(target=self._guard, args=(self._detect_loop, sched, to_enhance),
                                    name=f"detect-{k}", daemon=True) for k in range(1, workers)]
        for t in helpers:
            t.start()
        try:
            self._detect_loop(sched, to_enhance)
        finally:
            for t in helpers:
                t.join()
        for cam in sched.active:  # stopped
            self._put(to_enhance, cam.finish(stopped=True))

    def _detect_loop(self, sched: CameraScheduler, to_enhance: queue.Queue) -> None:
        """One detecting thread: claim cameras, take from each what it has decoded (up to a detector batch: a
        busy camera cannot starve the others), detect them together, queue the faces, release the cameras."""
        cfg = self.config
        pacers: dict[int, Pacer] = {}  # this thread's call sizes (its calls run beside the other threads')
        while not self.stop.is_set():
            cams = sched.claim(IDLE_WAIT_S)
            if cams is None:  # every camera has ended
                return
            batch: dict[CameraRun, list[Frame]] = {}
            ended: list[CameraRun] = []
            try:
                for cam in cams:
                    frames = cam.read(self._most(cam), 0.0)
                    if frames is None:
                        ended.append(cam)
                    elif frames:
                        batch[cam] = frames
                if cams and not batch and not ended:  # nothing decoded: wait on one camera rather than spin
                    frames = cams[0].read(self._most(cams[0]), IDLE_WAIT_S / len(cams))
                    if frames is None:
                        ended.append(cams[0])
                    elif frames:
                        batch[cams[0]] = frames
                if batch:
                    items = detect_and_process(batch, pacers, cfg.detect.batch, self.stop, self.timer)
                    if self._bar is not None:
                        items.append(FramesDone(sum(len(f) for f in batch.values())))
                    self._put(to_enhance, items)
                ended += [cam for cam in batch if cam.frames_left == 0]
                for cam in ended:
                    self._put(to_enhance, cam.finish(stopped=False))
            finally:
                sched.release(cams, ended)
            if self._bar is None:
                self._log_live(sched)

    def _most(self, cam: CameraRun) -> int:
        """Frames to take from `cam` now: a detector batch, and no more than runtime.max_frames leaves."""
        left = cam.frames_left
        return self.config.detect.batch if left is None else max(1, min(self.config.detect.batch, left))

    def _log_live(self, sched: CameraScheduler) -> None:
        """Every runtime.log_every s a status line per live camera (a run without a progress bar)."""
        with self._log_lock:
            if time.perf_counter() - self._last_log >= self.config.runtime.log_every:
                self._last_log = time.perf_counter()
                for cam in list(sched.active):
                    cam.log_live()

    def _advance(self, frames: int) -> None:
        """The progress bar by `frames` frames written (sink thread)."""
        self._bar.update(frames)
        self._bar.set_postfix(written=sum(c.counts["faces_written"] for c in self.cameras.values()),
                              tracks=sum(len(c.track_ids) for c in self.cameras.values()), refresh=False)

    def _progress(self):
        cams = [c for c in self.cameras.values() if c.src is not None]
        if not self.config.runtime.progress or not cams or any(c.src.is_live for c in cams):
            return None
        counts = [c.src.frame_count for c in cams]
        total = None if None in counts else sum(counts)
        if self.config.runtime.max_frames and total is not None:
            total = sum(min(n, self.config.runtime.max_frames) for n in counts)
        name = Path(cams[0].src.name).name if not self.multi else f"{len(self.cameras)} cameras"
        return tqdm(total=total, unit="frame", desc=name, dynamic_ncols=True)

    def _write_overview(self, folder: RunFolder, start: float) -> dict[str, Any]:
        """DIR/summary.json over all cameras (each camera's own is DIR/<id>/summary.json) and DIR/index.html."""
        wall = time.perf_counter() - start
        cams = {c.id: c.summary for c in self.cameras.values()}
        totals = {k: sum(s[k] for s in cams.values()) for k in OVERVIEW_TOTALS}
        summary = {
            "cameras": {i: {k: s.get(k) for k in OVERVIEW_CAMERA} for i, s in cams.items()},
            "failed": self.failed, "interrupted": self.stop.is_set(), **totals,
            "faces_written_per_s": round(totals["faces_written"] / wall, 3) if wall > 0 else None,
            "wall_time_s": round(wall, 3),
            "face_latency_s": Latencies.summary([x for c in self.cameras.values() for x in c.latency.samples()]),
            "stages": self.timer.summary(),
        }
        write_summary(folder.path, summary)
        if self.config.output.report:
            from pipeline.report import write_cameras_report

            write_cameras_report(folder.path, summary)
        return summary


def install_signal_handlers(runner: Runner) -> None:
    """SIGINT / SIGTERM for a command-line run (main thread only).

    During start-up (loading models, opening the source) a signal aborts: KeyboardInterrupt, which the
    CLI reports as one line (exit 130); nothing has been written but the held folder, released on the
    way out. Once the run is going, the first signal sets `runner.stop` (see the module docstring: it
    ends within about a second plus one detector batch), and a second one exits the process at once
    with EXIT_INTERRUPTED: no summary, no report, but every tracks.jsonl line already written is
    complete and its images exist (images are renamed into place before their line is appended in
    one write), as after a kill; the folder's lock dies with the process.
    """
    from common.cli import EXIT_INTERRUPTED, interrupt

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if not runner.running.is_set():
            interrupt()
        if runner.stop.is_set():
            # os._exit: no cleanup can hold us up (a model call, a thread join, interpreter shutdown).
            os.write(2, f"error: {name} again: stopped at once; the records written so far are valid, "
                        "summary.json and index.html were not written\n".encode())
            os._exit(EXIT_INTERRUPTED)
        log.warning("%s received: stopping (the faces already enhanced are written, the rest skipped); "
                    "send it again to exit at once", name)
        runner.stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
