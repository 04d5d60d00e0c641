"""Many cameras on a Ray cluster: `run_stream.py --cameras FILE --cluster auto|ray://HOST:PORT`.

    driver (run_stream.py)                          Ray cluster
    ClusterRunner ── step() ────────────────> CameraWorker actor, one per camera: decode -> detect
        │ <── faces, track ends, counters ──  -> track -> align -> select (the camera's CameraRun)
        ├── each face ──────────────────────> EnhanceService (Ray Serve deployment): @serve.batch
        │                                     gathers the faces of all cameras into model batches
        └── sink thread: each face's enhanced image, in its camera's order -> DIR/<camera>/ (DiskSink)

Both sides run the single-process code: a worker holds a CameraRun with only its input
(`CameraRun.open_input`) and runs the runner's `detect_and_process` on its frames; the driver holds
a CameraRun per camera with only its output (`open_sink`), into which it adds what every worker step
reports (`Step`: the counters' increments, the stage timings, the source's numbers). So summary.json
and the report of each camera, and DIR/summary.json and index.html, are written by the same code as
in one process, with the same schema. The driver pulls: one step in flight per camera, and a bounded
queue of faces waiting to be written; when the enhancer or the disk falls behind, the driver stops
asking and the workers stop reading (a file waits; a live camera drops its oldest frames).

Placement: Ray puts each worker where `cluster.camera_cpus` CPUs are free and each enhancer replica
where `cluster.enhance_cpus` CPUs and `cluster.enhance_gpus` GPUs are; a run that asks for more than
the cluster has is refused before anything starts (it would wait for ever). The project's code goes
to the workers with the job (`runtime_env()`: py_modules, given to ray.init): the nodes need its
dependencies only; a caller that connected already (a test) passes runtime_env() itself.

Faults: a worker that dies is restarted by Ray (up to `cluster.max_restarts` times, then its camera
fails alone). The new worker reopens the camera and waits to be told where to resume: a file after
the last frame the driver got from the old one, a live camera now; its track ids continue after the
ones written. The tracks the old worker had open end with reason "worker_lost" (the faces it held
back for selection died with it). summary.json counts the restarts (`worker_restarts`). A request to
the enhancer that fails (a replica died) is sent again, up to `cluster.enhance_retries` times
(`enhance_retries`): no face is lost.

Stopping (SIGINT/SIGTERM through `pipeline.runner.install_signal_handlers`): no new step starts; each
worker ends its tracks; the faces already sent to the enhancer are written for up to DRAIN_S seconds,
the others are skipped (`faces_skipped_at_stop`); then the summaries are written.

Example:
    >>> runner = ClusterRunner(cameras[0].config, cameras, "out/site", address="auto")  # doctest: +SKIP
    >>> runner.run()["faces_written"]  # doctest: +SKIP
    412
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import signal
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError

from common import memory
from common.redact import mask_secrets
from pipeline.cameras import Camera
from pipeline.config import PipelineConfig
from pipeline.detect import MTCNNDetector
from pipeline.enhance import Enhancer, EnhancerConfig
from pipeline.errors import ConfigError, SourceError
from pipeline.metrics import CameraState, StageTimer
from pipeline.records import AlignedFace, EnhancedFace, TrackEnd
from pipeline.run_folder import RunFolder
from pipeline.runner import IDLE_WAIT_S, QUEUE_END, CameraDone, CameraRun, Pacer, Runner, detect_and_process
from pipeline.source import SourceStats
from trackers import SortTracker

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: The project's packages, shipped to every actor of the job (and the weights in models/weights with them).
MODULES = [str(ROOT / name) for name in ("common", "models", "pipeline", "trackers")]
NAMESPACE = "facesr"  # the workers' names live here: camera-<id>-<run>
#: Wait before the first resend of a failed enhancer request, doubled for each next one.
RETRY_WAIT_S = 0.5
SERVE_LOGGING = {"log_level": "WARNING"}  # not a line per request
#: After a stop request, the longest the driver waits for faces already sent to the enhancer.
DRAIN_S = 3.0


def runtime_env() -> dict[str, Any]:
    """What every actor of the job gets: the project's code, and jemalloc preloaded as in run_stream.py
    (common/memory.py: glibc's heaps fragment under the detector; a worker runs as long as its camera)
    where the driver has it installed: a node is expected to have it at the same path (its absence there
    costs a warning line from the loader and the system allocator)."""
    return {"py_modules": MODULES, "env_vars": memory.jemalloc_env()}


#: The enhancer's answer per face: image, scale, method, strength, fell back to bicubic, seconds (its share).
Answer = tuple[np.ndarray, float, str, "float | None", bool, float]


# -- the worker side ------------------------------------------------------------------------------
@dataclass
class SourceView:
    """A worker's source as the driver's CameraRun reads it (`CameraRun.stats`, `write_summary`)."""

    name: str
    is_live: bool = False
    frame_count: int | None = None
    truncated: bool = False
    folder_mode: str | None = None
    queued: int = 0
    connected: bool = False
    noise: float | None = None  # the camera's noise sigma (common.noise), the worker's latest
    stats: SourceStats = field(default_factory=SourceStats)

    def add(self, news: SourceView) -> None:
        """Take the worker's latest view; its stats are increments since the previous one."""
        for f in dataclasses.fields(self):
            if f.name != "stats":
                setattr(self, f.name, getattr(news, f.name))
        for f in dataclasses.fields(SourceStats):
            setattr(self.stats, f.name, getattr(self.stats, f.name) + getattr(news.stats, f.name))


@dataclass
class Step:
    """What one call of a worker did: `items` for the sink (faces to enhance, track ends, the camera's
    done marker last once it ended) and its counters' increments since the previous call.
    `next_frame`: the frame after the last one processed, where a restarted worker resumes a file;
    `resume`: the worker was restarted and does nothing until told where to resume."""

    items: list
    next_frame: int
    counts: Counter
    not_written: Counter
    timer: StageTimer
    source: SourceView | None
    state: CameraState
    error: SourceError | None
    resume: bool = False


class CameraWorker:
    """Ray actor: one camera's input side (decode, detect, track, align, select)."""

    def __init__(self, camera: Camera) -> None:
        cfg = camera.config
        if cfg.detect.threads:  # else Ray's own setting: as many threads as CPUs reserved
            torch.set_num_threads(cfg.detect.threads)
        self.trimmer = memory.start_trimming()  # a worker process runs as long as its camera: RSS kept flat
        self.stack = ExitStack()
        self.cam = CameraRun(camera, Path(), time.perf_counter())
        self.cam.detector = MTCNNDetector(cfg.detect.detector())
        memory.freeze_long_lived()  # the model before the source: cheap full collections (common/memory.py)
        demo_dir = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="facesr-")))
        self.cam.open_input(self.stack, demo_dir, strict=False)
        self.pacer = Pacer(cfg.detect.batch)  # a step is one detector call of about CALL_S seconds
        self.reported = SourceStats()
        self.next_frame = 0
        self.finished = False
        with warnings.catch_warnings():  # Ray's property warns about Ray's own deprecated call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.waiting = ray.get_runtime_context().was_current_actor_reconstructed

    def resume(self, next_frame: int, first_track_id: int) -> None:
        """After a restart: a file goes on from `next_frame`, and track ids from `first_track_id`."""
        if self.cam.src is not None and not self.cam.src.is_live:
            self.next_frame = next_frame
        self.cam.tracker = SortTracker(self.cam.tracker.config, first_id=first_track_id)
        self.waiting = False

    def step(self, most: int | None = None) -> Step:
        """The frames decoded, up to one detector call (and `most`), through detect/track/align/select;
        at the end of the input (or when the camera failed) the camera's end, as `finish`."""
        cam = self.cam
        if self.waiting:
            return self._report([], resume=True)
        if cam.state is not CameraState.RUNNING:
            return self.finish(stopped=False)
        frames = cam.read(min(self.pacer.size, most or self.pacer.size), IDLE_WAIT_S)
        if frames is None:
            return self.finish(stopped=False)
        frames = [f for f in frames if f.index >= self.next_frame]  # a restarted file's frames already done
        if not frames:
            return self._report([])
        self.next_frame = frames[-1].index + 1
        items = detect_and_process({cam: frames}, {id(cam.detector): self.pacer}, cam.config.detect.batch,
                                   threading.Event())
        return self._report(items)

    def finish(self, stopped: bool) -> Step:
        """End the camera: its live tracks end, its source closes; the done marker comes last."""
        if self.finished:
            return self._report([])
        self.finished = True
        items = self.cam.finish(stopped)
        self.stack.close()
        return self._report(items)

    def _report(self, items: list, resume: bool = False) -> Step:
        cam = self.cam
        not_written = cam.not_written + cam.tracker.dropped + cam.selector.skipped
        for counter in (cam.not_written, cam.tracker.dropped, cam.selector.skipped):
            counter.clear()
        counts = Counter(cam.counts)
        cam.counts.clear()
        timer, cam.timer = cam.timer, StageTimer()
        view = None
        if cam.src is not None:
            src, now = cam.src, dataclasses.replace(cam.src.stats)
            delta = SourceStats(**{f.name: getattr(now, f.name) - getattr(self.reported, f.name)
                                   for f in dataclasses.fields(SourceStats)})
            view = SourceView(src.name, src.is_live, src.frame_count, src.truncated, src.folder_mode,
                              src.queued, src.connected, src.noise, delta)
            self.reported = now
        return Step(items, self.next_frame, counts, not_written, timer, view, cam.state, cam.error, resume)


def writable(face: AlignedFace) -> None:
    """Arrays from Ray's object store are read-only, and torch warns about (and may write into) them."""
    face.crop = face.crop.copy()


@serve.deployment
class EnhanceService:
    """Ray Serve deployment: one face per request; `@serve.batch` runs the faces of all cameras
    waiting at a replica through the model together (enhance.batch_size at most, waiting at most
    cluster.batch_wait_s for a batch to fill). Returns (sr, scale, method, seconds of its share)."""

    def __init__(self, config: EnhancerConfig, batch_wait_s: float) -> None:
        self.enhancer = Enhancer(config)
        self.threads = config.threads
        self.__call__.set_max_batch_size(config.batch_size)
        self.__call__.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch
    async def __call__(self, faces: list[AlignedFace]) -> list[Answer]:
        # In a thread: the replica's event loop keeps taking requests (the next batch) meanwhile.
        return await asyncio.to_thread(self._enhance, faces)

    def _enhance(self, faces: list[AlignedFace]) -> list[Answer]:
        if self.threads:
            torch.set_num_threads(self.threads)
        for face in faces:
            writable(face)
        t0 = time.perf_counter()
        out = self.enhancer(faces)
        share = (time.perf_counter() - t0) / len(faces)
        return [(e.sr, e.scale, e.method, e.strength, self.enhancer.fell_back(e), share) for e in out]


# -- the driver -----------------------------------------------------------------------------------
class ClusterRunner(Runner):
    """A Runner whose cameras run as Ray actors and whose enhancer is a Ray Serve deployment (see the
    module docstring). `address`: "auto" (the cluster in RAY_ADDRESS, else a local one started for the
    run) or ray://HOST:PORT. `run()` returns the summary of DIR/summary.json, as for many cameras."""

    def __init__(self, config: PipelineConfig, cameras: Sequence[Camera], out_dir: str | Path | None = None,
                 address: str = "auto", stop: threading.Event | None = None) -> None:
        super().__init__(config, list(cameras), out_dir, stop)
        if any(c.config.recognition.gallery for c in self.cameras_given):
            raise ConfigError("recognition.gallery: recognition does not run with --cluster yet; run without it")
        self.address = address
        self.run_id = f"{os.getpid()}-{time.time_ns() % 10**9}"  # names this run's actors and Serve app
        self.service = None
        self._drain_until: float | None = None  # set on a stop request
        self._next_track: dict[str, int] = defaultdict(lambda: 1)
        self._next_frame: dict[str, int] = defaultdict(int)
        # per camera: the tracks with faces sent to the sink and no end yet: id -> [first, last frame, faces]
        self._open: dict[str, dict[int, list[int]]] = defaultdict(dict)
        self._done: set[str] = set()

    def _run_in(self, folder: RunFolder, start: float) -> dict[str, Any]:
        with ExitStack() as stack:
            self._connect(stack)
            for camera in self.cameras_given:
                cam_folder = stack.enter_context(RunFolder(folder.path / camera.id,
                                                           overwrite=camera.config.output.overwrite))
                cam = CameraRun(camera, cam_folder.path, start)
                cam.open_sink(stack, cam_folder)
                cam.src = SourceView(mask_secrets(camera.source))
                self.cameras[camera.id] = cam
            self._check_resources()
            self.service = self._deploy(stack)
            workers = self._start_workers(stack)
            to_sink: queue.Queue = queue.Queue(maxsize=self.config.runtime.queue_size)
            sink = threading.Thread(target=self._guard, args=(self._sink, to_sink), name="sink", daemon=True)
            self._drive(lambda: self._pull(workers, to_sink), [sink], to_sink)
        return self._write_overview(folder, start)

    # -- start-up ---------------------------------------------------------------------------------
    def _connect(self, stack: ExitStack) -> None:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not a line per deployment step
        if ray.is_initialized():  # a caller's cluster (tests, a notebook): used as it is, left running
            return
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            ray.init(address=None if self.address == "auto" else self.address, namespace=NAMESPACE,
                     runtime_env=runtime_env(), logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--cluster {self.address}: cannot connect: {exc}") from None
        finally:
            for sig, handler in handlers.items():  # ours (install_signal_handlers), not Ray's
                signal.signal(sig, handler)
        stack.callback(ray.shutdown)

    def _check_resources(self) -> None:
        """Refuse a run the cluster cannot place (Ray would wait for ever), and a bad enhancer setting
        (here one error line, rather than a deployment failing on the cluster)."""
        c, cameras = self.config.cluster, len(self.cameras_given)
        have = ray.cluster_resources()
        replicas = f"{c.enhance_replicas} enhancer replicas x cluster.enhance_"
        need = {"CPU": (cameras * c.camera_cpus + c.enhance_replicas * c.enhance_cpus,
                        f"{cameras} cameras x cluster.camera_cpus ({c.camera_cpus:g}) + {replicas}cpus "
                        f"({c.enhance_cpus:g})"),
                "GPU": (c.enhance_replicas * c.enhance_gpus, f"{replicas}gpus ({c.enhance_gpus:g})")}
        for kind, (n, why) in need.items():
            if n > have.get(kind, 0) + 1e-9:
                raise ConfigError(f"the cluster has {have.get(kind, 0):g} {kind}s, the run asks for {n:g}: {why}; "
                                  "lower them or add nodes")
        # the weights load, or ConfigError (on torch: an ONNX export here would only slow the start down)
        Enhancer(dataclasses.replace(self.config.enhance, device="cpu", runtime="torch"))

    def _deploy(self, stack: ExitStack):
        cfg, c = self.config, self.config.cluster
        app = EnhanceService.options(
            num_replicas=c.enhance_replicas, max_ongoing_requests=2 * cfg.enhance.batch_size,
            ray_actor_options={"num_cpus": c.enhance_cpus, "num_gpus": c.enhance_gpus},
            # deleted only once the driver has every face back: nothing in flight to wait for (Serve's
            # defaults, 2 s loops up to 20 s, made each run's end seconds longer)
            graceful_shutdown_wait_loop_s=0.2, graceful_shutdown_timeout_s=5.0,
        ).bind(cfg.enhance, c.batch_wait_s)
        name = f"facesr-enhance-{self.run_id}"
        serve.start(proxy_location="Disabled", logging_config=SERVE_LOGGING)  # requests from the driver only
        try:
            handle = serve.run(app, name=name, route_prefix=None, logging_config=SERVE_LOGGING)
        finally:
            stack.callback(serve.delete, name)
        return handle

    def _start_workers(self, stack: ExitStack) -> dict[str, Any]:
        c = self.config.cluster
        actor = ray.remote(CameraWorker)
        workers = {}
        for camera in self.cameras_given:
            workers[camera.id] = actor.options(
                name=f"camera-{camera.id}-{self.run_id}", namespace=NAMESPACE, num_cpus=c.camera_cpus,
                max_restarts=c.max_restarts, max_task_retries=0).remote(camera)
            stack.callback(ray.kill, workers[camera.id])
        return workers

    # -- the driver's loop ------------------------------------------------------------------------
    def _pull(self, workers: dict[str, Any], to_sink: queue.Queue) -> None:
        """One call in flight per camera; each answer goes to the sink and the camera's next call
        starts, until every camera has ended or a stop request."""
        calls = {cam_id: self._next_call(self.cameras[cam_id], worker) for cam_id, worker in workers.items()}
        failures: Counter[str] = Counter()  # calls lost in a row per camera (its worker died)
        last_log = time.perf_counter()
        while calls and not self.stop.is_set():
            ready, _ = ray.wait(list(calls.values()), num_returns=1, timeout=IDLE_WAIT_S)
            for ref in ready:
                cam_id = next(k for k, v in calls.items() if v == ref)
                del calls[cam_id]
                following = self._answer(cam_id, workers[cam_id], ref, to_sink, failures)
                if following is not None:
                    calls[cam_id] = following
            if time.perf_counter() - last_log >= self.config.runtime.log_every:
                last_log = time.perf_counter()
                for cam_id in calls:
                    self.cameras[cam_id].log_live()
        if calls:
            self._stop_workers(calls, workers, to_sink)

    def _answer(self, cam_id: str, worker, ref, to_sink: queue.Queue, failures: Counter):
        """Handle one answer of a camera's worker; returns the camera's next call (None: it ended)."""
        cam = self.cameras[cam_id]
        try:
            step = ray.get(ref)
        except ActorUnavailableError:  # being restarted (or unreachable a moment): ask again
            time.sleep(0.1)
            return self._next_call(cam, worker)
        except RayActorError as exc:
            failures[cam_id] += 1
            if cam.counts["worker_restarts"] + failures[cam_id] > self.config.cluster.max_restarts:
                cam.error = SourceError(f"camera {cam_id}: its worker died and cannot be restarted "
                                        f"(cluster.max_restarts={self.config.cluster.max_restarts}): {exc}")
                cam.state = CameraState.FAILED
                log.error("%s", cam.error)
                self._end_open_tracks(cam_id, to_sink)
                self._send(cam_id, [CameraDone(cam_id)], to_sink)
                return None
            log.warning("camera %s: its worker died (%s); Ray restarts it", cam_id, type(exc).__name__)
            return self._next_call(cam, worker)  # reaches the restarted worker, which asks where to resume
        failures[cam_id] = 0
        self._absorb(cam, step)
        if step.resume:
            cam.counts["worker_restarts"] += 1
            log.warning("camera %s: worker restarted; resuming at frame %d", cam_id, self._next_frame[cam_id])
            self._end_open_tracks(cam_id, to_sink)
            worker.resume.remote(self._next_frame[cam_id], self._next_track[cam_id])
            return self._next_call(cam, worker)  # an actor runs one caller's calls in order: after resume
        self._send(cam_id, step.items, to_sink)
        return None if cam_id in self._done else self._next_call(cam, worker)

    def _next_call(self, cam: CameraRun, worker):
        """The camera's next step, or its end once it has processed runtime.max_frames frames."""
        left = cam.frames_left
        if left is None:
            return worker.step.remote()
        return worker.step.remote(left) if left > 0 else worker.finish.remote(False)

    def _absorb(self, cam: CameraRun, step: Step) -> None:
        """Add a step's counters to the driver's CameraRun (what summary.json and the metrics read)."""
        for key, n in step.counts.items():
            cam.counts[key] += n
        cam.not_written.update(step.not_written)
        cam.timer.merge(step.timer)
        self.timer.merge(step.timer)
        if step.source is not None:
            cam.src.add(step.source)
        cam.state, cam.error = step.state, step.error
        if not step.resume:  # a restarted worker has not started: where to resume stays the old one's
            self._next_frame[cam.id] = step.next_frame

    def _send(self, cam_id: str, items: list, to_sink: queue.Queue) -> None:
        """Items of a camera, in order, to the sink; each face is sent to the enhancer now (after a
        stop request: not, it is skipped)."""
        for item in items:
            if isinstance(item, AlignedFace):
                writable(item)  # the sink's bicubic comparison image goes through torch
                self._next_track[cam_id] = max(self._next_track[cam_id], item.track_id + 1)
                seen = self._open[cam_id].setdefault(item.track_id, [item.frame_index, item.frame_index, 0])
                seen[1], seen[2] = item.frame_index, seen[2] + 1
                response = None if self.stop.is_set() else self.service.remote(item)
                self._put(to_sink, (item, response))
                continue
            if isinstance(item, TrackEnd):
                self._open[cam_id].pop(item.track_id, None)
            elif isinstance(item, CameraDone):
                if cam_id in self._done:
                    continue
                self._done.add(cam_id)
            self._put(to_sink, item)

    def _end_open_tracks(self, cam_id: str, to_sink: queue.Queue) -> None:
        """The tracks of a worker that died: they end (reason worker_lost) after their faces sent."""
        ends = [TrackEnd(track_id, frame_index=last, first_frame=first, last_frame=last, faces_seen=n,
                         reason="worker_lost", camera=cam_id)
                for track_id, (first, last, n) in sorted(self._open[cam_id].items())]
        self._send(cam_id, ends, to_sink)

    def _stop_workers(self, calls: dict[str, Any], workers: dict[str, Any], to_sink: queue.Queue) -> None:
        """A stop request: the calls in flight are answered (each one detector call), then every
        camera still going ends its tracks; their faces not yet sent are skipped (and counted)."""
        self._drain_until = time.monotonic() + DRAIN_S
        finishing = {cam_id: workers[cam_id].finish.remote(True) for cam_id in calls}
        for cam_id in calls:
            for ref in (calls[cam_id], finishing[cam_id]):
                try:
                    step = ray.get(ref, timeout=max(0.1, self._drain_until - time.monotonic()))
                except (RayError, GetTimeoutError) as exc:
                    log.warning("camera %s: no answer from its worker while stopping (%s)", cam_id,
                                type(exc).__name__)
                    continue
                self._absorb(self.cameras[cam_id], step)
                self._send(cam_id, step.items, to_sink)
            self._end_open_tracks(cam_id, to_sink)
            if self.cameras[cam_id].state is CameraState.RUNNING:  # its worker did not answer
                self.cameras[cam_id].state = CameraState.FINISHED
            self._send(cam_id, [CameraDone(cam_id)], to_sink)

    # -- the sink thread --------------------------------------------------------------------------
    def _sink(self, inbox: queue.Queue) -> None:
        """Write the items in order: a face once its enhanced image is back (see `_enhanced`)."""
        while (item := self._get(inbox)) is not QUEUE_END:
            if isinstance(item, tuple):
                face, response = item
                item = self._enhanced(face, response)
                if item is None:
                    self.cameras[face.camera].counts["faces_skipped_at_stop"] += 1
                    continue
            self._write(item)

    def _enhanced(self, face: AlignedFace, response) -> EnhancedFace | None:
        """The face enhanced: its request's answer, sent again if it failed (cluster.enhance_retries
        times at most, waiting RETRY_WAIT_S, then twice as long each time); None for a face skipped at a
        stop (not sent, or not back within DRAIN_S)."""
        cam = self.cameras[face.camera]
        retries = 0
        while response is not None:
            try:
                sr, scale, method, strength, fell_back, seconds = response.result(timeout_s=IDLE_WAIT_S)
            except TimeoutError:
                if self._drain_until is not None and time.monotonic() > self._drain_until:
                    return None
                continue
            except (RayError, RayServeException) as exc:
                if retries >= self.config.cluster.enhance_retries:
                    raise RuntimeError(f"camera {face.camera}: the enhancer failed {retries + 1} times on a face "
                                       f"of track {face.track_id}: {exc}") from exc
                retries += 1
                cam.counts["enhance_retries"] += 1
                wait = RETRY_WAIT_S * 2 ** (retries - 1)  # time for Serve to replace a replica that died
                log.warning("camera %s: enhancer request failed (%s); sending it again in %.1f s", face.camera,
                            type(exc).__name__, wait)
                time.sleep(wait)
                response = self.service.remote(face)
                continue
            cam.timer.add("enhance", seconds, 1)
            self.timer.add("enhance", seconds, 1)
            cam.fallbacks += fell_back
            return EnhancedFace(face=face, sr=sr, scale=scale, method=method, strength=strength)
        return None
