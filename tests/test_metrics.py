"""Live metrics (pipeline/metrics.py): StageTimer's histograms, and real HTTP scrapes of a MetricsServer
fed by two cameras' live counters, parsed with prometheus_client's own parser."""
from __future__ import annotations

import doctest
import math
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pipeline.metrics
from common.cli import error_line
from pipeline.errors import ConfigError
from pipeline.metrics import COUNTERS, LATENCY_BUCKETS, CameraState, CameraStats, MetricsServer, StageTimer


@dataclass
class LiveCamera:
    """Stands in for a runner's live counters: mutated between scrapes, read by snapshot()."""

    camera: str
    source: str
    live: bool
    counts: dict[str, int]
    queue_depth: int = 0
    state: CameraState = CameraState.RUNNING
    timer: StageTimer = field(default_factory=StageTimer)
    noise: float | None = None

    def stats(self) -> CameraStats:
        return CameraStats(camera=self.camera, source=self.source, live=self.live, queue_depth=self.queue_depth,
                           state=self.state, timer=self.timer, noise=self.noise, **self.counts)


@pytest.fixture
def cameras() -> list[LiveCamera]:
    door = LiveCamera("door", "rtsp://***@10.0.0.5/stream1", True,
                      dict(frames_decoded=120, frames_processed=110, frames_dropped=10, reconnects=2,
                           faces_detected=37, faces_written=12, frames_detected_in_parts=90), queue_depth=3, noise=4.567)
    door.timer.add("detect", 0.4, 4)
    door.timer.add("detect", 0.02, 4)
    door.timer.add("enhance", 0.003, 8)
    lobby = LiveCamera("lobby", "lobby.mp4", False,
                       dict(frames_decoded=50, frames_processed=50, frames_dropped=0, reconnects=0,
                            faces_detected=5, faces_written=4, frames_detected_in_parts=0), state=CameraState.FINISHED)
    lobby.timer.add("detect", 1.5, 4)
    return [door, lobby]


@pytest.fixture
def server(cameras: list[LiveCamera]):
    with MetricsServer(0, lambda: [c.stats() for c in cameras]) as srv:
        yield srv


def scrape(url: str) -> dict[str, dict[frozenset, float]]:
    """sample name -> {frozenset(labels): value}"""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[name][frozenset(labels.items())]


def test_scrape_two_cameras(server: MetricsServer, cameras: list[LiveCamera]) -> None:
    assert server.host == "127.0.0.1" and server.port > 0
    samples = scrape(server.url)
    for cam in cameras:
        for key in COUNTERS:
            assert value(samples, f"facesr_{key}_total", camera=cam.camera) == cam.counts[key]
        assert value(samples, "facesr_queue_depth", camera=cam.camera) == cam.queue_depth
        assert value(samples, "facesr_camera_info", camera=cam.camera, source=cam.source,
                     live=str(cam.live).lower()) == 1
    assert value(samples, "facesr_frames_dropped_total", camera="door") == 10
    assert value(samples, "facesr_camera_up", camera="door") == 1
    assert value(samples, "facesr_camera_up", camera="lobby") == 0
    # one state at a time, every state listed
    states = {dict(k)["state"]: v for k, v in samples["facesr_camera_state"].items() if dict(k)["camera"] == "lobby"}
    assert states == {s.value: float(s is CameraState.FINISHED) for s in CameraState}
    # per (camera, stage): only the stages the camera's timer has seen
    counts = {(dict(k)["camera"], dict(k)["stage"]): v for k, v in samples["facesr_stage_seconds_count"].items()}
    assert counts == {("door", "detect"): 2, ("door", "enhance"): 1, ("lobby", "detect"): 1}
    if Path("/proc/self/stat").exists():  # the process collector reads /proc
        assert value(samples, "process_resident_memory_bytes") > 0


def test_scrape_follows_the_live_counters(server: MetricsServer, cameras: list[LiveCamera]) -> None:
    door = cameras[0]
    before = scrape(server.url)
    door.counts["frames_processed"] += 25
    door.counts["reconnects"] += 1
    door.queue_depth = 0
    door.state = CameraState.RECONNECTING
    door.timer.add("sink", 0.01, 3)
    after = scrape(server.url)
    assert value(before, "facesr_frames_processed_total", camera="door") == 110
    assert value(after, "facesr_frames_processed_total", camera="door") == 135
    assert value(after, "facesr_reconnects_total", camera="door") == 3
    assert value(after, "facesr_queue_depth", camera="door") == 0
    assert value(after, "facesr_camera_up", camera="door") == 0
    assert value(after, "facesr_camera_state", camera="door", state="reconnecting") == 1
    assert value(after, "facesr_camera_state", camera="door", state="running") == 0
    assert value(after, "facesr_stage_seconds_count", camera="door", stage="sink") == 1
    assert ("door", "sink") not in {(dict(k)["camera"], dict(k)["stage"])
                                    for k in before["facesr_stage_seconds_count"]}
    # the other camera did not move
    assert value(after, "facesr_frames_processed_total", camera="lobby") == 50
    # a camera that leaves the snapshot leaves the scrape
    cameras.pop()
    assert {dict(k)["camera"] for k in scrape(server.url)["facesr_frames_decoded_total"]} == {"door"}


def test_histogram_matches_the_timer_calls() -> None:
    timer = StageTimer()
    durations = [0.0004, 0.001, 0.003, 0.003, 0.7, 12.0, 45.0]  # 0.001: on a bound, counted in its bucket
    for d in durations:
        timer.add("detect", d, 1)
    h = timer.histogram("detect")
    assert h.count == len(durations) and h.sum == pytest.approx(sum(durations))
    assert [b for b, _ in h.buckets] == [*LATENCY_BUCKETS, math.inf]
    assert dict(h.buckets) == {b: sum(d <= b for d in durations) for b in (*LATENCY_BUCKETS, math.inf)}
    assert timer.histogram("never").count == 0 and timer.histogram("never").buckets[-1] == (math.inf, 0)

    cam = CameraStats("c", "clip.mp4", False, 0, 0, 0, 0, 0, 0, 0, CameraState.RUNNING, timer)
    with MetricsServer(0, lambda: [cam]) as srv:
        samples = scrape(srv.url)
    buckets = {float(dict(k)["le"]): v for k, v in samples["facesr_stage_seconds_bucket"].items()}
    assert buckets == {b: float(n) for b, n in h.buckets}
    assert value(samples, "facesr_stage_seconds_count", camera="c", stage="detect") == h.count
    assert value(samples, "facesr_stage_seconds_sum", camera="c", stage="detect") == pytest.approx(h.sum)


def test_summary_fields_are_the_scraped_numbers(server: MetricsServer, cameras: list[LiveCamera]) -> None:
    samples = scrape(server.url)
    for cam in cameras:
        fields = cam.stats().summary_fields()
        assert set(fields) == {"source", "live", *COUNTERS, "noise_sigma", "stages"}
        assert fields["source"] == cam.source and fields["live"] is cam.live
        for key in COUNTERS:
            assert value(samples, f"facesr_{key}_total", camera=cam.camera) == fields[key]
        if cam.noise is None:  # not measured (yet): no sample rather than a made-up 0
            assert fields["noise_sigma"] is None
            assert not any(dict(k)["camera"] == cam.camera for k in samples["facesr_camera_noise_sigma"])
        else:
            assert value(samples, "facesr_camera_noise_sigma", camera=cam.camera) == pytest.approx(cam.noise)
            assert fields["noise_sigma"] == round(cam.noise, 2)
        for stage, row in fields["stages"].items():
            assert value(samples, "facesr_stage_seconds_sum", camera=cam.camera, stage=stage) == pytest.approx(
                row["seconds"], abs=5e-4)


def test_port_in_use_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            MetricsServer(port, list).start()
    message = str(err.value)
    assert "\n" not in message and "--metrics-port" in message and str(port) in message and "in use" in message
    assert error_line(err.value).startswith("error: --metrics-port")
    # nor can a second server take a running server's port
    with MetricsServer(0, list) as first:
        with pytest.raises(ConfigError, match=f"--metrics-port {first.port}"):
            MetricsServer(first.port, list).start()
        assert scrape(first.url) is not None  # the first one still serves


@pytest.mark.parametrize("port", [-1, 65536, "9108", True])
def test_bad_port_value(port) -> None:
    with pytest.raises(ConfigError, match="--metrics-port must be a port number"):
        MetricsServer(port, list)


def test_stop_frees_the_port(server: MetricsServer) -> None:
    port, url = server.port, server.url
    scrape(url)
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    with MetricsServer(port, list) as again:  # a restarted process can listen there again
        assert again.port == port and "facesr_frames_decoded_total" not in scrape(again.url)
    server.stop()  # a second stop is harmless (the fixture's exit stops it again)


def test_stage_timer_summary_is_the_runners() -> None:
    from pipeline import runner

    calls = [("wait_for_frames", 0.5, 0), ("detect", 0.25, 4), ("detect", 0.5, 4), ("track", 0.0004, 1),
             ("enhance", 0.0, 0), ("enhance", 1.23456, 7)]
    ours, theirs = StageTimer(), runner.StageTimer()
    for call in calls:
        ours.add(*call)
        theirs.add(*call)
    assert ours.summary() == theirs.summary() == {
        "wait_for_frames": {"seconds": 0.5, "items": 0, "per_second": None},
        "detect": {"seconds": 0.75, "items": 8, "per_second": 10.67},
        "track": {"seconds": 0.0, "items": 1, "per_second": 2500.0},
        "enhance": {"seconds": 1.235, "items": 7, "per_second": 5.67},
    }
    assert dict(ours.seconds) == dict(theirs.seconds) and dict(ours.items) == dict(theirs.items)
    assert ours.stages() == ["wait_for_frames", "detect", "track", "enhance"]


def test_stage_timer_is_thread_safe() -> None:
    timer = StageTimer()
    n, per_thread = 4, 5000

    def work() -> None:
        for _ in range(per_thread):
            timer.add("detect", 0.002, 1)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h = timer.histogram("detect")
    assert timer.items["detect"] == h.count == n * per_thread
    assert dict(h.buckets)[0.0025] == n * per_thread and dict(h.buckets)[0.001] == 0


def test_module_docstring_example() -> None:
    assert doctest.testmod(pipeline.metrics).failed == 0
