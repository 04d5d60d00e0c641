"""Live metrics: per-stage timing (`StageTimer`), the per-camera snapshot (`CameraStats`) and a
Prometheus endpoint serving it (`MetricsServer`, behind `--metrics-port N`).

One set of counters: the runner keeps its counters and its StageTimer per camera as before; a
`snapshot()` callable turns them into `CameraStats` records, read by the endpoint on every scrape
and by summary.json at the end (`CameraStats.summary_fields`). Each counter series is named after
its summary.json key (`facesr_<key>_total`, from the one table `COUNTERS`), so a scrape and the
summary show the same numbers by construction; the stage histograms count the very calls whose
seconds and items the summary's `stages` adds up.

Example:
    >>> timer = StageTimer()
    >>> timer.add("detect", 0.2, 4)
    >>> timer.add("detect", 0.3, 4)
    >>> cam = CameraStats(camera="cam1", source="rtsp://***@10.0.0.5/stream1", live=True,
    ...                   frames_decoded=9, frames_processed=8, frames_dropped=1, reconnects=0,
    ...                   faces_detected=5, faces_written=3, queue_depth=2,
    ...                   state=CameraState.RUNNING, timer=timer)
    >>> fields = cam.summary_fields()   # what summary.json says about the camera
    >>> fields["frames_processed"], fields["stages"]["detect"]
    (8, {'seconds': 0.5, 'items': 8, 'per_second': 16.0})
    >>> h = timer.histogram("detect")   # what the endpoint says about the same calls
    >>> h.count, round(h.sum, 3), h.buckets[7:9]
    (2, 0.5, ((0.25, 1), (0.5, 2)))
    >>> with MetricsServer(0, lambda: [cam]) as server:  # doctest: +SKIP
    ...     urllib.request.urlopen(server.url).read()
    b'...facesr_frames_processed_total{camera="cam1"} 8.0...'
"""
from __future__ import annotations

import bisect
import collections
import errno
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the stage latency buckets: one set for a GPU (a batch in milliseconds)
#: and a CPU (a 1080p detector batch in seconds); the last bucket (+Inf) takes anything longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: The per-camera counters: summary.json key -> help text. The Prometheus series is
#: `facesr_<key>_total{camera=...}`; CameraStats has one field per key.
COUNTERS = {
    "frames_decoded": "Frames decoded from the source.",
    "frames_processed": "Frames that went through detection and tracking.",
    "frames_dropped": "Frames a live source dropped because the pipeline was behind.",
    "reconnects": "Times the source was reconnected.",
    "faces_detected": "Faces the detector found.",
    "faces_written": "Enhanced faces written to the output folder.",
    "frames_detected_in_parts": "Frames detected only where the picture changed and around the tracked faces "
                                "(detect.motion); the other frames processed were detected whole or predicted.",
}


class StageHistogram(NamedTuple):
    """A stage's calls by duration: `buckets` are (upper bound in seconds, calls that took at most
    that long), cumulative, the last bound math.inf; `sum`: their seconds; `count`: the calls."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class StageTimer:
    """Seconds spent per stage, and how many items each stage handled (frames or faces); each `add`
    is one call of the stage, also counted by its duration (`histogram`). Safe across threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.items: dict[str, int] = defaultdict(int)
        # per stage: calls per bucket (not cumulative), one slot per LATENCY_BUCKETS bound plus +Inf
        self._calls: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float, items: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.items[stage] += items
            self._calls[stage][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def merge(self, other: StageTimer) -> None:
        """Add `other`'s calls to this timer's (a camera worker's timings reach the driver this way)."""
        with other._lock:
            seconds, items = dict(other.seconds), dict(other.items)
            calls = {s: list(c) for s, c in other._calls.items()}
        with self._lock:
            for stage, n in calls.items():
                self.seconds[stage] += seconds[stage]
                self.items[stage] += items[stage]
                self._calls[stage] = [a + b for a, b in zip(self._calls[stage], n)]

    def __getstate__(self) -> dict:  # picklable: the lock and the defaultdicts' factories stay behind
        with self._lock:
            return {"seconds": dict(self.seconds), "items": dict(self.items),
                    "calls": {s: list(c) for s, c in self._calls.items()}}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.seconds.update(state["seconds"])
        self.items.update(state["items"])
        self._calls.update(state["calls"])

    def stages(self) -> list[str]:
        """The stages seen so far, in the order of their first call."""
        with self._lock:
            return list(self.seconds)

    def histogram(self, stage: str) -> StageHistogram:
        """The stage's calls by duration (all zero for a stage never called)."""
        with self._lock:
            calls = list(self._calls.get(stage, [0] * (len(LATENCY_BUCKETS) + 1)))
            total = self.seconds.get(stage, 0.0)
        cumulative, buckets = 0, []
        for bound, n in zip((*LATENCY_BUCKETS, math.inf), calls):
            cumulative += n
            buckets.append((bound, cumulative))
        return StageHistogram(tuple(buckets), total, cumulative)

    def summary(self) -> dict[str, dict[str, float]]:
        # Under the lock: a live scrape may read while the stages add (and add stages).
        with self._lock:
            return {s: {"seconds": round(self.seconds[s], 3), "items": self.items[s],
                        "per_second": round(self.items[s] / self.seconds[s], 2)
                        if self.seconds[s] > 0 and self.items[s] else None}  # a wait has no rate
                    for s in self.seconds}


class Latencies:
    """End-to-end seconds per face, from its frame decoded (`Frame.decoded_at`) to its images and
    tracks.jsonl line written: the latest MAX_SAMPLES of them, for percentiles. Safe across threads."""

    MAX_SAMPLES = 100_000  # a long live run keeps a bounded window

    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=self.MAX_SAMPLES)
        self._lock = threading.Lock()

    def add(self, decoded_at: float | None) -> None:
        if decoded_at is not None:
            with self._lock:
                self._samples.append(time.time() - decoded_at)

    def samples(self) -> list[float]:
        with self._lock:
            return list(self._samples)

    @staticmethod
    def summary(samples: list[float]) -> dict[str, float | int] | None:
        """{"faces", "p50", "p99", "max"} in seconds (nearest-rank percentiles); None without samples."""
        if not samples:
            return None
        ordered = sorted(samples)

        def rank(p: float) -> float:
            return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 4)

        return {"faces": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "max": round(ordered[-1], 4)}


class CameraState(str, Enum):
    """Where a camera is: STARTING until its first frame, RUNNING while it delivers, RECONNECTING
    while its source is retried, FAILED (given up on: an error), RETIRED (removed on purpose while
    the process runs on), FINISHED (its input ended, e.g. a file)."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    RETIRED = "retired"
    FINISHED = "finished"


@dataclass(frozen=True)
class CameraStats:
    """One camera's numbers at one moment: `camera` its id (the metrics' `camera` label), `source`
    its masked name (common.redact), `live` a camera rather than a file; the counters as in
    COUNTERS; `queue_depth`: items waiting between its stages now; `timer`: its live StageTimer."""

    camera: str
    source: str
    live: bool
    frames_decoded: int
    frames_processed: int
    frames_dropped: int
    reconnects: int
    faces_detected: int
    faces_written: int
    queue_depth: int
    state: CameraState
    timer: StageTimer
    noise: float | None = None  # the camera's noise sigma measured on its stream (common.noise); None: unknown
    frames_detected_in_parts: int = 0

    def summary_fields(self) -> dict[str, Any]:
        """The camera's summary.json fields (those a scrape shows too); `queue_depth` and `state`
        are live-only (at the end of a run the queues are empty and the state is known)."""
        return {"source": self.source, "live": self.live, **{key: getattr(self, key) for key in COUNTERS},
                "noise_sigma": None if self.noise is None else round(self.noise, 2), "stages": self.timer.summary()}


class _SnapshotCollector:
    """Prometheus collector that reads `snapshot()` once per scrape: no counters of its own."""

    def __init__(self, snapshot: Callable[[], Iterable[CameraStats]]) -> None:
        self.snapshot = snapshot

    @staticmethod
    def _families() -> dict[str, Metric]:
        families: dict[str, Metric] = {
            key: CounterMetricFamily(f"facesr_{key}", doc, labels=["camera"]) for key, doc in COUNTERS.items()}
        families["queue_depth"] = GaugeMetricFamily(
            "facesr_queue_depth", "Items waiting between the camera's stages.", labels=["camera"])
        families["up"] = GaugeMetricFamily(
            "facesr_camera_up", "1 while the camera delivers frames (state running), else 0.", labels=["camera"])
        families["state"] = GaugeMetricFamily(
            "facesr_camera_state", "1 for the camera's current state, 0 for the others.", labels=["camera", "state"])
        families["noise"] = GaugeMetricFamily(
            "facesr_camera_noise_sigma", "The camera's noise sigma (luma, 0-255) measured on its stream: the enhancer "
            "adds less of the model's detail on noisy cameras (enhance.noise_aware); absent until measured.",
            labels=["camera"])
        families["info"] = InfoMetricFamily(
            "facesr_camera", "The camera's source (credentials masked) and whether it is live.", labels=["camera"])
        families["stage"] = HistogramMetricFamily(
            "facesr_stage_seconds", "Seconds per call of a pipeline stage.", labels=["camera", "stage"])
        return families

    def describe(self) -> Iterable[Metric]:
        # Lets the registry learn the names without calling snapshot() before the run is up.
        return self._families().values()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        for cam in self.snapshot():
            label = [cam.camera]
            for key in COUNTERS:
                families[key].add_metric(label, getattr(cam, key))
            families["queue_depth"].add_metric(label, cam.queue_depth)
            families["up"].add_metric(label, int(cam.state is CameraState.RUNNING))
            if cam.noise is not None:
                families["noise"].add_metric(label, cam.noise)
            for state in CameraState:
                families["state"].add_metric([cam.camera, state.value], int(cam.state is state))
            families["info"].add_metric(label, {"source": cam.source, "live": str(cam.live).lower()})
            for stage in cam.timer.stages():
                h = cam.timer.histogram(stage)
                families["stage"].add_metric([cam.camera, stage], [(floatToGoString(b), n) for b, n in h.buckets],
                                             h.sum)
        return families.values()


class MetricsServer:
    """Serves the cameras' numbers in Prometheus text format at http://host:port/metrics (any path
    answers), in daemon threads, from start (or `with`) to stop. Port 0 takes a free port: `.port`
    is the one bound. A port that cannot be bound is a ConfigError naming `--metrics-port`."""

    def __init__(self, port: int, snapshot: Callable[[], Iterable[CameraStats]], host: str = "127.0.0.1") -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"must be a port number from 0 to 65535, got {port!r}", key="--metrics-port")
        self.host, self.requested_port = host, port
        self.registry = CollectorRegistry()
        self.registry.register(_SnapshotCollector(snapshot))
        ProcessCollector(registry=self.registry)  # this process's CPU seconds, memory, open files
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MetricsServer is not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        try:
            self._server, self._thread = start_wsgi_server(self.requested_port, addr=self.host,
                                                           registry=self.registry)
        except OSError as exc:
            where = f"{self.host}:{self.requested_port}"
            reason = ("is already in use (choose another port, or 0 for a free one)"
                      if exc.errno == errno.EADDRINUSE else f"cannot be listened on: {exc.strerror or exc}")
            raise ConfigError(f"{self.requested_port}: {where} {reason}", key="--metrics-port") from None
        log.info("metrics: %s", self.url)
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket (the port is free when this returns)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
