"""pipeline.source against a REAL RTSP server (GStreamer, tests/rtsp_server.py): live reading,
drop-oldest, reconnect after the server is SIGKILLed and restarted, prompt close()."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from pipeline.errors import SourceError
from pipeline.records import Frame
from pipeline.source import SourceConfig, VideoSource, open_source
from rtsp_server import free_port


def next_frame(src: VideoSource, timeout: float = 15.0) -> Frame:
    frame = src.read(timeout=timeout)  # TimeoutError instead of a hang
    assert frame is not None, f"source ended: {src.stats}"
    return frame


def test_rtsp_reconnects_after_server_killed(rtsp_server, monkeypatch) -> None:
    converted = []  # frames turned into BGR arrays: only those read, not those dropped
    upright = VideoSource._upright
    monkeypatch.setattr(VideoSource, "_upright", lambda self, frame: converted.append(1) or upright(self, frame))
    t_start = time.monotonic()
    server = rtsp_server()
    # first_frame_timeout shorter than the outage: a source that has delivered reconnects whatever it says.
    cfg = SourceConfig(queue_size=8, backoff_initial=0.5, backoff_max=2.0, open_timeout=5, read_timeout=3,
                       first_frame_timeout=2.0)
    with open_source(server.url, cfg) as src:
        assert src.is_live and src.frame_count is None
        frames = [next_frame(src) for _ in range(20)]
        assert frames[0].image.shape == (360, 640, 3)
        assert src.fps and src.fps > 1

        time.sleep(1.0)  # a slow consumer: a live source drops the oldest frames, never blocks
        assert src.stats.dropped > 0
        frames += [next_frame(src) for _ in range(5)]
        assert all(isinstance(f.image, np.ndarray) for f in frames)
        assert len(converted) == src.stats.delivered == 25 < src.stats.decoded

        server.kill()  # camera loses power: no TEARDOWN, the TCP connection just dies
        time.sleep(3.0)
        decoded_before_restart = src.stats.decoded
        server.start()  # same port

        after: list[Frame] = []
        deadline = time.monotonic() + 30
        while len(after) < 15:
            f = next_frame(src, timeout=max(0.1, deadline - time.monotonic()))
            frames.append(f)
            if f.index >= decoded_before_restart:
                after.append(f)
        assert src.stats.reconnects >= 1
        assert after[0].image.shape == (360, 640, 3)

        # close() must not hang on a dead server while the reader is retrying.
        server.kill()
        time.sleep(0.5)
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 3.0

    indexes = [f.index for f in frames]
    assert all(b > a for a, b in zip(indexes, indexes[1:])), indexes
    # Only the first frame of each connection may lack a pts.
    assert sum(f.pts_time is None for f in frames) <= 1 + src.stats.reconnects
    assert all(isinstance(f.pts_time, float) for f in frames if f.pts_time is not None)
    assert time.monotonic() - t_start < 60


def test_rtsp_close_while_streaming_is_prompt(rtsp_server) -> None:
    server = rtsp_server()
    src = open_source(server.url, SourceConfig(queue_size=4, read_timeout=3))
    next_frame(src)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 3.0
    assert src.read(timeout=1) is None


def test_rtsp_unreachable_gives_up_after_attempts() -> None:
    """No server needed: nothing listens on the port, so every attempt is refused."""
    url = f"rtsp://127.0.0.1:{free_port()}/stream"
    cfg = SourceConfig(reconnect_attempts=2, backoff_initial=0.1, open_timeout=2, read_timeout=2)
    t0 = time.monotonic()
    with open_source(url, cfg) as src:
        with pytest.raises(SourceError) as e:
            src.read(timeout=20)
    assert url in str(e.value) and "3 attempt" in str(e.value) and "\n" not in str(e.value)
    assert src.stats.errors == 3
    assert time.monotonic() - t0 < 10


def test_rtsp_password_not_in_messages() -> None:
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/stream"
    with open_source(url, SourceConfig(reconnect_attempts=0, open_timeout=2)) as src:
        with pytest.raises(SourceError) as e:
            src.read(timeout=20)
    assert "s3cret" not in str(e.value) and "admin:***@127.0.0.1" in str(e.value)


def test_rtsp_stalled_server_times_out_and_reconnects(rtsp_server) -> None:
    """A server that stops sending (SIGSTOP) without closing the connection: the read timeout
    must fire and the source reconnect once the server answers again."""
    server = rtsp_server()
    cfg = SourceConfig(queue_size=4, backoff_initial=0.2, backoff_max=1.0, open_timeout=1.5, read_timeout=1.5)
    with open_source(server.url, cfg) as src:
        next_frame(src)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            time.sleep(4.0)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        decoded = src.stats.decoded
        deadline = time.monotonic() + 20
        while next_frame(src, timeout=max(0.1, deadline - time.monotonic())).index < decoded + 5:
            pass
        assert src.stats.reconnects >= 1
