#!/usr/bin/env python3
"""A real RTSP test server (GStreamer gst-rtsp-server) serving a video file in a loop.

Two halves in one file:

* the server, run as a subprocess with the SYSTEM python (``/usr/bin/python3``), because the
  GStreamer bindings (python3-gi, gir1.2-gst-rtsp-server-1.0) are Debian packages that the venv
  cannot import. That half uses the standard library and ``gi`` only;
* ``RtspServer``, a helper for tests (any python) that starts, SIGKILLs and restarts that process.

Example (from a test)::

    with RtspServer(Path("clip.mp4")) as server:      # rtsp://127.0.0.1:<free port>/stream
        with open_source(server.url) as src:
            frame = src.read(timeout=10)
        server.kill()                                 # SIGKILL, like a camera losing power
        server.start()                                # same port

Command line: ``/usr/bin/python3 tests/rtsp_server.py VIDEO --port 8554 [--path /stream]``.
The server decodes the file once (at most ``--max-frames`` frames, kept in memory as I420),
then re-encodes it live with x264 (short GOP, so a client that reconnects gets a key frame
quickly) and prints ``READY <url>`` on stdout when it listens.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
_THIS = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------
# Helper side (runs in the test's python)
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)  # one probe per test session
def gst_unavailable_reason(python: str = SYSTEM_PYTHON) -> str | None:
    """None when `python` can import the GStreamer RTSP server bindings, else why not (for skips)."""
    if not Path(python).exists():
        return f"{python} not found (the GStreamer bindings are Debian packages for the system python)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('decodebin', 'videoconvert', 'appsrc', 'x264enc', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None];"
        "print(','.join(missing))"
    )
    try:
        res = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot probe GStreamer with {python}: {e}"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        return (f"GStreamer RTSP server bindings not importable by {python} ({last}); "
                "run .ci/install-system-deps.sh")
    if res.stdout.strip():
        return f"GStreamer elements missing: {res.stdout.strip()}; run .ci/install-system-deps.sh"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_test_video(path: Path, seconds: float = 4.0, size: tuple[int, int] = (640, 360),
                    fps: int = 25) -> Path:
    """Write a moving-pattern H.264 mp4 with PyAV (needs the venv's `av` and numpy)."""
    import av
    import numpy as np

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256,
                            np.full_like(xx, (7 * i) % 256)], -1).astype(np.uint8)
            out.mux(st.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        out.mux(st.encode(None))
    return path


class RtspServer:
    """Runs this file as an RTSP server subprocess under the system python; stop it by PID."""

    def __init__(self, video: Path, port: int | None = None, path: str = "/stream",
                 python: str = SYSTEM_PYTHON, max_frames: int = 300) -> None:
        self.video, self.port, self.path = Path(video), port or free_port(), path
        self.python, self.max_frames = python, max_frames
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart, same port) and wait until it listens; raises RuntimeError if not."""
        if self.proc and self.proc.poll() is None:
            return
        deadline = time.monotonic() + timeout
        while True:  # retried: after a SIGKILL the port can take a moment to be bindable again
            err = self._spawn(deadline)
            if err is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP test server did not start on port {self.port}: {err}")
            time.sleep(0.3)

    def _spawn(self, deadline: float) -> str | None:
        cmd = [self.python, str(_THIS), str(self.video), "--port", str(self.port),
               "--path", self.path, "--max-frames", str(self.max_frames), "--exit-on-stdin-eof"]
        # stdin is a pipe only so the server dies with us (EOF) if the test process is killed.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        # Wait for READY without blocking forever on readline: poll with select.
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    line = self.proc.stdout.readline()
                    if line.startswith("READY"):
                        return None
                    if line == "":  # process exited
                        break
                elif self.proc.poll() is not None:
                    break
        finally:
            sel.close()
        self._reap(signal.SIGKILL)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.proc = None
        return (err.strip().splitlines() or ["timed out waiting for READY"])[-1]

    def kill(self) -> None:
        """SIGKILL the server by PID (no RTSP TEARDOWN, sockets just vanish), then reap it."""
        self._reap(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        self._reap(signal.SIGTERM)

    def _reap(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f:
                f.close()
        self.proc = None

    def __enter__(self) -> "RtspServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# Server side (runs under /usr/bin/python3 with python3-gi; no venv imports here)
# ----------------------------------------------------------------------------------------------

def _decode_all(video: Path, max_frames: int):
    """Decode up to max_frames frames to I420 bytes; returns (frames, caps string, fps)."""
    from gi.repository import Gst

    pipe = Gst.parse_launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=I420 "
        "! appsink name=sink sync=false max-buffers=8")
    pipe.get_by_name("src").set_property("location", str(video))
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps = None
    try:
        while len(frames) < max_frames:
            sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
            if sample is None:  # EOS or stall
                break
            caps = caps or sample.get_caps()
            buf = sample.get_buffer()
            frames.append(buf.extract_dup(0, buf.get_size()))
        bus_msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if bus_msg is not None and not frames:
            raise SystemExit(f"cannot decode {video}: {bus_msg.parse_error()[0].message}")
    finally:
        pipe.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise SystemExit(f"no video frames decoded from {video}")
    s = caps.get_structure(0)
    ok, num, den = s.get_fraction("framerate")
    fps = num / den if ok and num > 0 and den > 0 else 25.0
    w, h = s.get_int("width")[1], s.get_int("height")[1]
    return frames, f"video/x-raw,format=I420,width={w},height={h},framerate={num if ok and num else 25}/{den if ok and num else 1}", fps


def serve(video: Path, port: int, path: str, max_frames: int, exit_on_stdin_eof: bool) -> int:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    frames, caps, fps = _decode_all(video, max_frames)
    period = 1.0 / fps
    gop = max(1, round(fps / 2))  # a key frame every 0.5 s: reconnecting clients start fast

    factory = GstRtspServer.RTSPMediaFactory()
    # threads=1: with x264's sliced threads (zerolatency's default) the P frames of this pipeline decode
    # corrupt (green bands: only every key frame was a usable picture); one thread encodes them right.
    factory.set_launch(
        "( appsrc name=src is-live=true format=time do-timestamp=true "
        "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast threads=1 "
        f"key-int-max={gop} bitrate=2000 ! rtph264pay name=pay0 pt=96 config-interval=-1 )")
    factory.set_shared(False)  # one pipeline per client; each starts at frame 0 with a key frame

    def on_media_configure(_factory, media) -> None:
        src = media.get_element().get_child_by_name("src")
        src.set_property("caps", Gst.Caps.from_string(caps))
        state = {"i": 0, "next": None}

        def on_need_data(appsrc, _length) -> None:
            # Paced here (appsrc's own thread) at the file's frame rate; do-timestamp stamps it.
            now = time.monotonic()
            nxt = state["next"] or now
            if nxt > now:
                time.sleep(nxt - now)
            state["next"] = max(nxt, now - period) + period
            data = frames[state["i"] % len(frames)]  # loop the file forever
            state["i"] += 1
            appsrc.emit("push-buffer", Gst.Buffer.new_wrapped(data))

        src.connect("need-data", on_need_data)

    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    if exit_on_stdin_eof:
        def on_stdin(fd: int, _cond) -> bool:
            if not os.read(fd, 4096):  # parent went away
                loop.quit()
                return False
            return True
        GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)

    print(f"READY rtsp://127.0.0.1:{port}{path} pid={os.getpid()} frames={len(frames)} fps={fps:.3f}",
          flush=True)
    loop.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="RTSP test server: serve a video file in a loop.")
    ap.add_argument("video", type=Path)
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--path", default="/stream")
    ap.add_argument("--max-frames", type=int, default=300, help="frames kept in memory and looped")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="quit when stdin closes")
    args = ap.parse_args(argv)
    if not args.video.is_file():
        print(f"video not found: {args.video}", file=sys.stderr)
        return 2
    return serve(args.video, args.port, args.path, args.max_frames, args.exit_on_stdin_eof)


if __name__ == "__main__":
    sys.exit(main())
