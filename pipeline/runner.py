"""Runner: joins the stages with threads and bounded queues, and owns batching, metrics and shutdown.

    source (reader thread) -> detect -> track -> align -> select   (main thread)
        -> enhance (enhance thread) -> disk sink + recognition     (sink thread)

Track lifecycle: the tracker reports each track's end once (`TrackEnd`); the end goes down the same
queues as the faces, after the track's last face, and every stage with per-track state finishes the
track on it: select emits its best-N faces, the sink writes the track_end line, recognition writes
the final identity. When the input ends, the tracker ends every live track and they take the same path.

Back-pressure: when the enhancer falls behind, its bounded queue blocks the main thread, which stops
reading frames; a file source then simply waits (no frame is lost) and a live source drops its
oldest frames (counted in summary.json).

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
import os
import queue
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.align import Aligner
from pipeline.config import PipelineConfig
from pipeline.detect import MTCNNDetector
from pipeline.enhance import Enhancer
from pipeline.errors import SourceError
from pipeline.records import AlignedFace, EnhancedFace, Frame, TrackEnd
from pipeline.run_folder import DEMO_CLIP, RunFolder
from pipeline.select import Selector
from pipeline.sinks import DiskSink
from pipeline.source import open_source
from trackers import SortTracker

log = logging.getLogger(__name__)
_DONE = object()
#: Seconds one detector or enhancer call should take: about the longest a stop request waits for either.
CALL_S = 0.5

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


class StageTimer:
    """Seconds spent per stage, and how many items each stage handled (frames or faces)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.items: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float, items: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.items[stage] += items

    def summary(self) -> dict[str, dict[str, float]]:
        return {s: {"seconds": round(self.seconds[s], 3), "items": self.items[s],
                    "per_second": round(self.items[s] / self.seconds[s], 2)
                    if self.seconds[s] > 0 and self.items[s] else None}  # a wait has no rate
                for s in self.seconds}


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
        while len(out) < len(items) and not stop.is_set():
            start = end = len(out)
            weight = 0
            while end < len(items) and (end == start or weight + self.weight(items[end]) <= self.size):
                weight += self.weight(items[end])
                end += 1
            t0 = time.perf_counter()
            out += fn(items[start:end])
            seconds = time.perf_counter() - t0
            spent += seconds
            if weight:  # grow at most twofold: one quick call may be noise
                fit = int(weight * CALL_S / max(seconds, 1e-6))
                self.size = max(1, min(self.most, fit, 2 * self.size))
        return out, spent


class Runner:
    """Runs the whole pipeline on one source into one output folder; `run()` returns the summary."""

    def __init__(self, config: PipelineConfig, source: str, out_dir: str | Path | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.source_spec = source
        self.out_dir = Path(out_dir or config.output.dir)
        self.stop = stop or threading.Event()
        self.running = threading.Event()  # set once start-up is over and the stages run
        self._detect_pacer = Pacer(config.detect.batch)
        self.timer = StageTimer()
        self.counts: dict[str, int] = defaultdict(int)
        self.not_written: Counter[str] = Counter()  # the runner's share of NOT_WRITTEN_REASONS
        self.photos = False  # the source is a folder of unrelated photos
        self.track_ids: set[int] = set()
        self._error: BaseException | None = None
        self._torch_threads = torch.get_num_threads()  # torch's own count, for the threads set to 0
        self.source_error: SourceError | None = None

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
                    return _DONE

    def _put(self, q: queue.Queue, item) -> None:
        """Blocking put that gives up once another thread has failed (a full queue must not hang the run)."""
        while self._error is None:
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                pass

    def _enhance_loop(self, enhancer: Enhancer, inbox: queue.Queue, outbox: queue.Queue) -> None:
        """Items in: lists of AlignedFace and TrackEnd; out: the same lists with the faces enhanced.
        A batch's track ends go out after its faces: an end never overtakes a face of its track."""
        # Explicitly, also for 0: a new thread would otherwise inherit whatever count was set last.
        torch.set_num_threads(self.config.enhance.threads or self._torch_threads)
        batch_size = self.config.enhance.batch_size
        pacer = Pacer(batch_size, weight=enhancer.uses_model)
        done = False
        while not done:
            faces: list[AlignedFace] = []
            ends: list[TrackEnd] = []
            item = self._get(inbox)
            while True:  # gather what is waiting, up to a full batch, without waiting for more
                if item is _DONE:
                    done = True
                    break
                for x in item:
                    (ends if isinstance(x, TrackEnd) else faces).append(x)
                if len(faces) >= batch_size:
                    break
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
            enhanced = self._enhance_until_stopped(enhancer, pacer, faces)
            if enhanced or ends:
                self._put(outbox, [*enhanced, *ends])
        self._put(outbox, _DONE)

    def _enhance_until_stopped(self, enhancer: Enhancer, pacer: Pacer,
                               faces: list[AlignedFace]) -> list[EnhancedFace]:
        """The faces enhanced before a stop request; the rest are skipped, and counted."""
        enhanced, seconds = pacer.run(enhancer, faces, self.stop)
        if enhanced:
            self.timer.add("enhance", seconds, len(enhanced))
        self.counts["faces_skipped_at_stop"] += len(faces) - len(enhanced)
        return enhanced

    def _sink_loop(self, sink: DiskSink, matcher, inbox: queue.Queue) -> None:
        while (item := self._get(inbox)) is not _DONE:
            t0 = time.perf_counter()
            faces = 0
            for x in item:
                if isinstance(x, TrackEnd):
                    sink.end_track(x)
                    if matcher is not None:
                        matcher.end_track(x.track_id)
                    continue
                sink.write(x)
                if matcher is not None:
                    matcher.update(x)
                faces += 1
            self.timer.add("sink", time.perf_counter() - t0, faces)
            self.counts["faces_written"] += faces

    # -- main loop --------------------------------------------------------------------------------
    def _read_batch(self, src, size: int) -> list[Frame] | None:
        """Up to `size` frames: the first waits, the rest only if already queued. None at the end."""
        frames: list[Frame] = []
        while not frames:
            if self.stop.is_set():
                return None
            t0 = time.perf_counter()
            try:
                frame = src.read(timeout=0.5)
            except TimeoutError:
                continue
            finally:
                self.timer.add("wait_for_frames", time.perf_counter() - t0, 0)
            if frame is None:
                return None
            frames.append(frame)
        while len(frames) < size:
            try:
                frame = src.read(timeout=0 if src.is_live else None)
            except TimeoutError:
                break
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _read_batch_or_fail(self, src, size: int) -> list[Frame] | None:
        """A source that fails mid-run (a camera gone for good) ends the stream like EOF: what was read
        is still enhanced and written, summary.json records the error, and `run` raises it at the end."""
        try:
            return self._read_batch(src, size)
        except SourceError as exc:
            self.source_error = exc
            return None

    def run(self) -> dict[str, Any]:
        """Run to the end of the input (or a stop request); returns the summary. Raises UserError
        subclasses for bad input, and the source's error after writing what was read before it."""
        start = time.perf_counter()
        # torch's thread count is per thread once set: the detecting (this) thread and the enhance thread
        # each take their own (detect.threads, enhance.threads), and this thread gets its own back at the end.
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(self.config.detect.threads or self._torch_threads)
        try:
            with RunFolder(self.out_dir, overwrite=self.config.output.overwrite) as folder:
                summary = self._run_in(folder, start)
        finally:
            torch.set_num_threads(self._torch_threads)
        if self.source_error is not None:
            raise self.source_error
        return summary

    def _input(self, folder: RunFolder) -> str:
        """The source to open: `demo` is the demo clip, generated into the run folder."""
        if self.source_spec != "demo":
            return self.source_spec
        from pipeline.demo import make_demo_clip

        return str(make_demo_clip(folder.path / DEMO_CLIP))

    def _run_in(self, folder: RunFolder, start: float) -> dict[str, Any]:
        cfg = self.config
        source = self._input(folder)
        detector = MTCNNDetector(cfg.detect.detector())
        enhancer = Enhancer(cfg.enhance)
        aligner, selector = Aligner(cfg.align.min_size, cfg.align.max_size), Selector(cfg.select)
        matcher = self._make_matcher(detector)
        to_enhance: queue.Queue = queue.Queue(maxsize=cfg.runtime.queue_size)
        to_sink: queue.Queue = queue.Queue(maxsize=cfg.runtime.queue_size)
        sink = DiskSink(folder, cfg.enhance.output_size, save_comparison=cfg.output.save_comparison)
        with open_source(source, cfg.source) as src, sink:
            self.photos = src.folder_mode == "photos"
            # Unrelated photos: every face that could start a track is one, confirmed at once (there is
            # no second sighting to wait for), and ends with its photo.
            tracker = SortTracker(dataclasses.replace(cfg.track, min_hits=1) if self.photos else cfg.track)
            workers = [threading.Thread(target=self._guard, args=(self._enhance_loop, enhancer, to_enhance, to_sink),
                                        name="enhance", daemon=True),
                       threading.Thread(target=self._guard, args=(self._sink_loop, sink, matcher, to_sink),
                                        name="sink", daemon=True)]
            for w in workers:
                w.start()
            progress = self._progress(src)
            last_log = time.perf_counter()
            self.running.set()
            try:
                while (frames := self._read_batch_or_fail(src, cfg.detect.batch)) is not None:
                    if chosen := self._process(frames, detector, tracker, aligner, selector):
                        self._put(to_enhance, chosen)
                    if progress is not None:
                        progress.update(len(frames))
                        progress.set_postfix(faces=self.counts["faces_detected"], tracks=len(self.track_ids),
                                             refresh=False)
                    elif time.perf_counter() - last_log >= cfg.runtime.log_every:
                        last_log = time.perf_counter()
                        self._log_live(src, start)
                    if cfg.runtime.max_frames and self.counts["frames_processed"] >= cfg.runtime.max_frames:
                        break
                stopped = self.stop.is_set() and self._error is None
                if stopped and src.is_live and not src.stats.decoded and self.source_error is None:
                    # Not a normal end: the camera never answered, so the run has nothing to show for it.
                    self.source_error = SourceError(f"{src.name}: stopped before the source delivered any frame")
                tracker.finish()  # tracks still alive end like any other
                if ended := self._ended(tracker, selector):
                    self._put(to_enhance, ended)
            except BaseException as exc:  # make the workers give up too
                self._error = self._error or exc
                raise
            finally:
                self._put(to_enhance, _DONE)
                for w in workers:
                    w.join()
                if progress is not None:
                    progress.close()
                if matcher is not None:
                    matcher.close()
            if self._error is not None:
                raise self._error
            summary = self._summary(src, start, sink, enhancer,
                                    not_written={r: self.not_written[r] + tracker.dropped[r] + selector.skipped[r]
                                                 for r in NOT_WRITTEN_REASONS})
            sink.write_summary(summary)
        if cfg.output.report:
            from pipeline.report import write_report

            write_report(folder.path)
        return summary

    def _process(self, frames: list[Frame], detector, tracker, aligner, selector) -> list[AlignedFace | TrackEnd]:
        every = 1 if self.photos else self.config.detect.every  # no photo is skipped
        to_detect = [f for f in frames if f.index % every == 0]
        found, seconds = self._detect_pacer.run(detector.detect, [f.image for f in to_detect], self.stop)
        self.timer.add("detect", seconds, len(found))
        if len(found) < len(to_detect):  # stopped: the frames from the first one not detected are left
            frames = [f for f in frames if f.index < to_detect[len(found)].index]
        detections = {f.index: d for f, d in zip(to_detect, found)}
        chosen: list[AlignedFace | TrackEnd] = []
        for frame in frames:
            dets = detections.get(frame.index)
            if dets is None and self.config.detect.roi and tracker.num_tracks:
                t0 = time.perf_counter()
                dets = detector.detect_around(frame.image, tracker.expected_boxes(frame.index))
                self.timer.add("detect", time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            updates = tracker.update(frame.index, dets) if dets is not None else tracker.predict(frame.index)
            self.counts["faces_detected"] += len(dets or [])
            t1 = time.perf_counter()
            aligned = aligner(frame, updates)
            t2 = time.perf_counter()
            seen = [u for u in updates if u.detection is not None]
            eligible = sum(u.state in aligner.states for u in seen)
            self.not_written["unconfirmed_track"] += len(seen) - eligible
            self.not_written["unalignable"] += eligible - len(aligned)
            picked = selector(aligned)
            if self.photos:
                tracker.finish("photo")
            self.track_ids.update(f.track_id for f in picked)
            chosen.extend(picked)
            chosen.extend(self._ended(tracker, selector))
            t3 = time.perf_counter()
            self.timer.add("track", t1 - t0, 1)
            self.timer.add("align", t2 - t1, len(aligned))
            self.timer.add("select", t3 - t2, len(aligned))
            self.counts["faces_aligned"] += len(aligned)
            self.counts["frames_processed"] += 1
        return chosen

    def _ended(self, tracker, selector) -> list[AlignedFace | TrackEnd]:
        """The tracks the tracker ended since the last call: their best-N faces, then their ends."""
        ends = tracker.pop_ended()
        return [*selector.end_tracks(e.track_id for e in ends), *ends]

    def _make_matcher(self, detector):
        rec = self.config.recognition
        if not rec.gallery:
            return None
        from pipeline.recognition import build_matcher

        return build_matcher(rec, detector, self.out_dir)

    def _progress(self, src):
        if src.is_live or not self.config.runtime.progress:
            return None
        return tqdm(total=src.frame_count, unit="frame", desc=Path(src.name).name, dynamic_ncols=True)

    def _log_live(self, src, start: float) -> None:
        elapsed = time.perf_counter() - start
        log.info("%s: %d frames (%.1f fps), %d dropped, %d reconnects, %d faces, %d tracks", src.name,
                 self.counts["frames_processed"], self.counts["frames_processed"] / max(elapsed, 1e-9),
                 src.stats.dropped, src.stats.reconnects, self.counts["faces_detected"], len(self.track_ids))

    def _summary(self, src, start: float, sink: DiskSink, enhancer: Enhancer,
                 not_written: dict[str, int]) -> dict[str, Any]:
        wall = time.perf_counter() - start
        processed = self.counts["frames_processed"]
        return {
            # A worker's failure also sets stop, but then the run raises it instead of writing a summary.
            "source": src.name, "live": src.is_live, "interrupted": self.stop.is_set(),
            "frames_decoded": src.stats.decoded, "frames_processed": processed, "frames_dropped": src.stats.dropped,
            "frames_expected": src.frame_count, "truncated": src.truncated, "reconnects": src.stats.reconnects,
            "faces_detected": self.counts["faces_detected"], "faces_aligned": self.counts["faces_aligned"],
            "faces_written": self.counts["faces_written"], "faces_not_written": not_written,
            "faces_skipped_at_stop": self.counts["faces_skipped_at_stop"], "folder_mode": src.folder_mode,
            "tracks": len(sink.track_ids), "faces_bicubic_fallback": enhancer.fallbacks,
            "enhance_method": self.config.enhance.method, "output_size": self.config.enhance.output_size,
            "wall_time_s": round(wall, 3), "fps": round(processed / wall, 2) if wall > 0 else None,
            "stages": self.timer.summary(), "config": self.config.to_dict(),
            "error": str(self.source_error) if self.source_error else None,
        }


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
    from common.cli import EXIT_INTERRUPTED

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if not runner.running.is_set():
            raise KeyboardInterrupt
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
